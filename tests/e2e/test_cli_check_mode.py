"""``kici run local --check [--fail-on-drift]`` with a ``check_step`` workflow, through the real runner.

The workflow converges a file in the job's checkout to the content a secret asks for; the secret
comes from ``.kici/secrets.yaml`` (overriding ``.kici/.env.local``), so the same run also proves
that file reaches ``ctx.secrets`` and stays masked. Jobs run in bubblewrap when it is usable here,
else with ``--sandbox none``. Nothing asserts on wall-clock time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from kici.adapters.sandbox.bwrap import probe

pytestmark = [pytest.mark.e2e, pytest.mark.feature("CLI-09", "EXE-09", "SDK-28")]

SANDBOX = [] if probe() is None else ["--sandbox", "none"]
TIMEOUT_S = 120
SECRET = "motd-Value-7731"

WORKFLOW = """\
from kici.sdk import check_step, job, push, step, workflow


def motd_drift(ctx):
    wanted = ctx.secrets.get("MOTD")
    ctx.log.info("wanted motd: %s", wanted)
    path = ctx.workspace / "motd.txt"
    current = path.read_text() if path.exists() else None
    return None if current == wanted else {"from": current, "to": "secret"}


def write_motd(ctx, drift):
    (ctx.workspace / "motd.txt").write_text(ctx.secrets.get("MOTD"))
    ctx.log.info("APPLIED motd")
    return {"changed": True}


def always_fine(ctx):
    return None


def plain(ctx):
    ctx.log.info("PLAIN step ran")


converge = job(
    "converge",
    runs_on="kici:os:linux",
    steps=[
        step("prepare", plain),
        check_step(
            "motd",
            check=motd_drift,
            apply=write_motd,
            summarize=lambda drift: f"motd {drift['from']!r} -> {drift['to']}",
        ),
        check_step(
            "hostname",
            check=always_fine,
            apply=write_motd,
            summarize=lambda drift: "never",
            when_in_sync=lambda ctx: {"changed": False},
        ),
    ],
)

converge_wf = workflow("converge", on=push(), jobs=[converge])
"""


class Kici:
    def __init__(self, root: Path, runs: Path) -> None:
        self.root = root
        self.env = {**os.environ, "KICI_RUN_DIR": str(runs), "NO_COLOR": "1"}
        self.env.pop("KICI_DEBUG", None)

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kici", *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )

    def run_local(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self("run", "local", "push", *args, *SANDBOX)

    def git(self, *args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
            cwd=self.root,
            check=True,
            capture_output=True,
        )


@pytest.fixture(scope="module")
def kici(tmp_path_factory: pytest.TempPathFactory) -> Kici:
    base = tmp_path_factory.mktemp("check-mode")
    tool = Kici(base / "repo", base / "runs")
    workflows = tool.root / ".kici" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "converge.py").write_text(WORKFLOW, encoding="utf-8")
    (tool.root / ".gitignore").write_text(".kici/.env.local\n.kici/secrets.yaml\n", encoding="utf-8")
    (tool.root / ".kici" / ".env.local").write_text("MOTD=from-env-local\n", encoding="utf-8")
    (tool.root / ".kici" / "secrets.yaml").write_text(
        textwrap.dedent(f"""\
            # local secrets (not committed)
            env:
              MOTD: "{SECRET}"
            """),
        encoding="utf-8",
    )
    tool.git("init", "-q", "-b", "main")
    assert tool("compile").returncode == 0
    tool.git("add", "-A")
    tool.git("commit", "-qm", "converge")
    return tool


def steps_of(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    document = json.loads(result.stdout)
    (workflow,) = document["workflows"]
    (job,) = workflow["jobs"]
    return {step["name"]: step for step in job["steps"]}


def outcomes(result: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str | None]]:
    return {name: (step["status"], step.get("outcome")) for name, step in steps_of(result).items()}


def test_apply_mode_runs_everything_and_applies_the_drift(kici: Kici) -> None:
    result = kici.run_local("--json")
    assert result.returncode == 0, result.stderr
    assert outcomes(result) == {
        "prepare": ("success", None),
        "motd": ("success", "applied"),
        "hostname": ("skipped", "in sync"),
    }
    assert "APPLIED motd" in result.stderr
    assert "PLAIN step ran" in result.stderr
    document = json.loads(result.stdout)
    assert "runMode" not in document


def test_check_mode_only_checks_and_exits_0(kici: Kici) -> None:
    result = kici.run_local("--check", "--json")
    assert result.returncode == 0, result.stderr
    assert outcomes(result) == {
        "prepare": ("skipped", "no check"),
        "motd": ("success", "would change"),
        "hostname": ("skipped", "in sync"),
    }
    document = json.loads(result.stdout)
    assert (document["success"], document["runMode"], document["drift"]) == (True, "check", True)
    assert "APPLIED" not in result.stderr, "check mode never calls apply"
    assert "PLAIN step ran" not in result.stderr, "plain steps are skipped"
    assert "Step 'prepare' skipped: no check in check mode" in result.stderr


@pytest.mark.feature("CLI-11")
def test_secrets_yaml_wins_over_env_local_and_is_masked(kici: Kici) -> None:
    result = kici.run_local("--check")
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "wanted motd: ***" in output
    assert SECRET not in output
    assert "from-env-local" not in output, "the lower-precedence value was not used, so never shown"
    overridden = kici.run_local("--check", "--env", "MOTD=from-the-flag")
    assert "wanted motd: ***" in overridden.stdout
    assert "from-the-flag" not in overridden.stdout + overridden.stderr


def test_summary_shows_outcomes_and_the_check_verdict(kici: Kici) -> None:
    result = kici.run_local("--check")
    assert result.returncode == 0, result.stderr
    summary = result.stdout[result.stdout.index("Summary:") :]
    assert "○ prepare (skipped" in summary
    assert "[no check]" in summary
    assert "[would change]" in summary
    assert "[in sync]" in summary
    assert "Check mode: 1 step would change (nothing was applied)." in summary


def test_fail_on_drift_exits_2_when_something_would_change(kici: Kici) -> None:
    result = kici.run_local("--check", "--fail-on-drift")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Drift detected in check mode (--fail-on-drift)" in result.stdout
    assert "Step 'prepare' skipped: no check in check-fail-on-drift mode" in result.stdout
    as_json = kici.run_local("--check", "--fail-on-drift", "--json")
    assert as_json.returncode == 2
    document = json.loads(as_json.stdout)
    assert (document["success"], document["runMode"], document["drift"]) == (
        False,
        "check-fail-on-drift",
        True,
    )
    assert document["workflows"][0]["jobs"][0]["status"] == "success"


def test_fail_on_drift_exits_0_when_in_sync(kici: Kici) -> None:
    (kici.root / "motd.txt").write_text(SECRET, encoding="utf-8")
    try:
        result = kici.run_local("--check", "--fail-on-drift", "--json")
    finally:
        (kici.root / "motd.txt").unlink()
    assert result.returncode == 0, result.stderr
    assert outcomes(result)["motd"] == ("skipped", "in sync")
    assert json.loads(result.stdout)["drift"] is False


def test_fail_on_drift_needs_check(kici: Kici) -> None:
    result = kici.run_local("--fail-on-drift")
    assert result.returncode == 2
    assert "--fail-on-drift needs --check" in result.stderr
