"""What a step can see of the agent (ISO-04, ISO-07, SEC-10): nothing of its token, config or secrets.

The agent runs with its token in its own environment (``KICI_AGENT_TOKEN``) and in a config file; a
step then prints its environment and ``cat``s the config file's path, which it is given through the
job env. Under bwrap the file does not exist in the sandbox and the token is in neither output. The
agent's masker is *not* told the agent token here, so its absence proves isolation, not masking. The
same job under the plain process sandbox shows the file (the difference bwrap makes) while the
environment stays clean (the ISO-04 allowlist applies to every sandbox).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kici.adapters.sandbox.bwrap import BwrapSandbox, probe
from kici.adapters.sandbox.process import ProcessSandbox
from kici.domain.protocol import JobState
from kici.testing.agent_outbound import RecordingOutbound
from tests.unit.test_agent_jobs_helpers import (
    API_KEY,
    TOKEN,
    Project,
    dispatch_for,
    lines_of,
    project,
    run_one,
    running_manager,
)

__all__ = ["project"]

AGENT_TOKEN = "kat_" + "5e" * 32
BWRAP_PROBLEM = probe()


def agent_files(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    config = tmp_path / "agent" / "agent.yaml"
    config.parent.mkdir()
    config.write_text(f"connection:\n  token: {AGENT_TOKEN}\n")
    host_env = {**os.environ, "KICI_AGENT_TOKEN": AGENT_TOKEN, "KICI_AGENT_CONFIG": str(config)}
    return config, host_env


@pytest.mark.feature("ISO-04", "ISO-07", "SEC-10", "ISO-01")
@pytest.mark.skipif(BWRAP_PROBLEM is not None, reason=f"bwrap unusable here: {BWRAP_PROBLEM}")
async def test_under_bwrap_a_step_cannot_read_the_agent_token(project: Project, tmp_path: Path) -> None:
    config, host_env = agent_files(tmp_path)
    outbound = RecordingOutbound()
    dispatch = dispatch_for(
        project, "isolation", secrets={"API_KEY": API_KEY}, config={"env": {"AGENT_CONFIG": str(config)}}
    )
    async with running_manager(
        tmp_path / "work", outbound, sandbox=BwrapSandbox(), host_env=host_env
    ) as manager:
        status = await run_one(manager, outbound, dispatch)

    assert status.state is JobState.SUCCESS, status.data
    lines = lines_of(outbound, dispatch.job_id)
    assert "config not readable" in lines
    assert f"AGENT_CONFIG={config}" in lines
    assert "HOME=/tmp" in lines
    assert not any(line.startswith(("KICI_AGENT", "API_KEY=")) for line in lines)
    for text in outbound.texts():
        assert AGENT_TOKEN not in text
        assert TOKEN not in text
        assert API_KEY not in text


@pytest.mark.feature("ISO-04", "ISO-06")
async def test_the_process_sandbox_hides_the_environment_but_not_files(
    project: Project, tmp_path: Path
) -> None:
    config, host_env = agent_files(tmp_path)
    outbound = RecordingOutbound()
    dispatch = dispatch_for(project, "isolation", config={"env": {"AGENT_CONFIG": str(config)}})
    async with running_manager(
        tmp_path / "work", outbound, sandbox=ProcessSandbox(), host_env=host_env
    ) as manager:
        status = await run_one(manager, outbound, dispatch)

    assert status.state is JobState.SUCCESS, status.data
    lines = lines_of(outbound, dispatch.job_id)
    assert not any(line.startswith("KICI_AGENT") for line in lines)
    assert f"  token: {AGENT_TOKEN}" in lines
