"""The Platform daemon's configuration: defaults, file, ``KICI_PLATFORM_*`` overrides and clear errors."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from kici.adapters.config_file import ConfigFileError, parse_config_text
from kici.domain.config.problems import ConfigError
from kici.services.platform.config import (
    DEFAULT_CONFIG_FILE,
    PlatformConfig,
    build_config,
    load_platform_config,
    locate,
    resolve_data_dir,
)

YAML = """\
server:
  host: 127.0.0.1
  port: 4100
  publicUrl: https://hooks.example.com/
database:
  url: postgresql://kici:pw@db/platform
dataDir: /srv/kici-platform
webhooks:
  maxBodyBytes: 1048576
  ackTimeoutMs: 2500
orchestrators:
  staleAfterMs: 60000
  unhealthyAfterMs: 30000
logging:
  format: json
"""


def problems_of(error: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return [problem.render() for problem in error.value.problems]


@pytest.mark.feature("OPS-01")
def test_defaults_follow_the_spec() -> None:
    config = build_config(None, {})
    assert config == PlatformConfig()
    assert (config.server.host, config.server.port, config.database.url) == ("0.0.0.0", 3000, None)
    assert config.webhooks.max_body_bytes == 26_214_400
    assert (config.webhooks.ack_timeout_ms, config.webhooks.retry_after_s) == (5_000, 5)
    links = config.orchestrators
    assert (links.auth_timeout_ms, links.unhealthy_after_ms, links.stale_after_ms) == (5_000, 90_000, 180_000)
    assert links.request_timeout_ms == 10_000


@pytest.mark.feature("OPS-01", "CFG-04")
def test_the_file_is_read_and_the_environment_wins() -> None:
    document = parse_config_text(YAML, "platform.yaml")
    env = {
        "KICI_PLATFORM_PORT": "0",
        "KICI_PLATFORM_ACK_TIMEOUT_MS": " 4000 ",
        "KICI_PLATFORM_LOG_LEVEL": "DEBUG",
        "KICI_PLATFORM_DATABASE_URL": "",
        "KICI_PLATFORM_URL": "wss://platform.example/ws",
        "KICI_PLATFORM_TOKEN": "korg_x",
        "KICI_DATABASE_URL": "postgresql://orchestrator/db",
    }
    config = build_config(document.tree, env, document.source)
    assert (config.server.host, config.server.port) == ("127.0.0.1", 0)
    assert config.server.public_url == "https://hooks.example.com"
    assert config.database.url == "postgresql://kici:pw@db/platform"
    assert config.data_dir == "/srv/kici-platform"
    assert (config.webhooks.max_body_bytes, config.webhooks.ack_timeout_ms) == (1_048_576, 4_000)
    assert (config.orchestrators.unhealthy_after_ms, config.orchestrators.stale_after_ms) == (30_000, 60_000)
    assert (config.logging.level, config.logging.format) == ("debug", "json")


@pytest.mark.feature("OPS-01", "CFG-04")
def test_every_problem_is_reported_at_once_naming_where_it_was_set() -> None:
    text = """\
server:
  port: "80"
  hots: x
webhooks:
  maxBodyBytes: 26214401
logging: verbose
databse:
  url: x
"""
    document = parse_config_text(text, "platform.yaml")
    env = {
        "KICI_PLATFORM_ACK_TIMEOUT_MS": "soon",
        "KICI_PLATFORM_PROT": "1",
        "KICI_PLATFORM_DATABASE_URL": "mysql://x",
    }
    with pytest.raises(ConfigError) as error:
        build_config(document.tree, env, document.source)
    rendered = "\n".join(problems_of(error))
    assert 'platform.yaml:2 server.port: expected an integer from 0 to 65535, got "80"' in rendered
    assert "platform.yaml:3 server.hots: unknown setting. did you mean server.host?" in rendered
    assert "platform.yaml:5 webhooks.maxBodyBytes: expected an integer from 1 to 26214400" in rendered
    assert "platform.yaml:6 logging: expected a mapping" in rendered
    assert "platform.yaml:7 databse: unknown setting. did you mean database" in rendered
    assert "KICI_PLATFORM_ACK_TIMEOUT_MS: expected an integer" in rendered
    assert "KICI_PLATFORM_PROT: unknown variable. did you mean KICI_PLATFORM_PORT?" in rendered
    assert "KICI_PLATFORM_DATABASE_URL: expected a URL starting with postgresql:// or postgres://" in rendered
    assert len(error.value.problems) == 8


@pytest.mark.feature("OPS-01")
def test_a_link_must_turn_unhealthy_before_it_is_stale() -> None:
    with pytest.raises(ConfigError) as error:
        build_config(None, {"KICI_PLATFORM_UNHEALTHY_MS": "5000", "KICI_PLATFORM_STALE_MS": "4000"})
    assert "orchestrators.unhealthyAfterMs" in problems_of(error)[0]


@pytest.mark.feature("OPS-01")
def test_the_file_is_located_and_a_named_file_must_exist(tmp_path: Path) -> None:
    assert locate(None, {}).path == DEFAULT_CONFIG_FILE
    assert not locate(None, {}).explicit
    assert locate(None, {"KICI_PLATFORM_CONFIG": "/x.yaml"}).explicit
    assert locate("/cli.yaml", {"KICI_PLATFORM_CONFIG": "/x.yaml"}).path == "/cli.yaml"
    with pytest.raises(ConfigFileError, match="file not found"):
        load_platform_config(str(tmp_path / "missing.yaml"), {})
    path = tmp_path / "platform.yaml"
    path.write_text("server:\n  port: 4242\n")
    assert load_platform_config(None, {"KICI_PLATFORM_CONFIG": str(path)}).server.port == 4242


@pytest.mark.feature("OPS-15")
def test_the_data_dir_is_per_tier() -> None:
    assert resolve_data_dir("/d", is_root=True, home="/root", xdg_data_home=None) == PurePosixPath("/d")
    root = resolve_data_dir(None, is_root=True, home="/root", xdg_data_home=None)
    assert root == PurePosixPath("/var/lib/kici/platform")
    user = resolve_data_dir(None, is_root=False, home="/home/u", xdg_data_home="relative")
    assert user == PurePosixPath("/home/u/.local/share/kici/platform")
    xdg = resolve_data_dir(None, is_root=False, home="/home/u", xdg_data_home="/xdg")
    assert xdg == PurePosixPath("/xdg/kici/platform")
