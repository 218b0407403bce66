"""Which config file is read (CFG-01) and where a tier keeps its data (OPS-15)."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from kici.domain.config.datadir import HostFacts, resolve_data_dir
from kici.domain.config.layering import Tier
from kici.domain.config.location import ConfigLocation, locate_config


@pytest.mark.feature("CFG-01", "OPS-01")
def test_config_file_order() -> None:
    env = {"KICI_CONFIG": "/srv/kici.yaml"}
    assert locate_config(Tier.ORCHESTRATOR, "/cli.yaml", env) == ConfigLocation("/cli.yaml", explicit=True)
    assert locate_config(Tier.ORCHESTRATOR, None, env) == ConfigLocation("/srv/kici.yaml", explicit=True)
    assert locate_config(Tier.ORCHESTRATOR, None, {"KICI_CONFIG": ""}) == ConfigLocation(
        "/etc/kici/orchestrator.yaml", explicit=False
    )
    assert locate_config(Tier.AGENT, None, {}) == ConfigLocation("/etc/kici/agent.yaml", explicit=False)


USER = HostFacts(is_root=False, home="/home/ci")


@pytest.mark.feature("OPS-15")
@pytest.mark.parametrize(
    ("configured", "tier", "host", "expected"),
    [
        ("/data/kici", Tier.ORCHESTRATOR, USER, "/data/kici"),
        (None, Tier.ORCHESTRATOR, HostFacts(is_root=True, home="/root"), "/var/lib/kici/orchestrator"),
        (None, Tier.AGENT, HostFacts(is_root=True, home="/root"), "/var/lib/kici/agent"),
        (None, Tier.ORCHESTRATOR, USER, "/home/ci/.local/share/kici/orchestrator"),
        (None, Tier.AGENT, HostFacts(False, "/home/ci", "/xdg"), "/xdg/kici/agent"),
        (None, Tier.AGENT, HostFacts(False, "/home/ci", "relative"), "/home/ci/.local/share/kici/agent"),
        ("", Tier.AGENT, USER, "/home/ci/.local/share/kici/agent"),
    ],
)
def test_data_dir_resolution(configured: str | None, tier: Tier, host: HostFacts, expected: str) -> None:
    assert resolve_data_dir(configured, tier, host) == PurePosixPath(expected)
