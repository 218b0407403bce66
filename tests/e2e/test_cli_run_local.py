"""``kici init && kici compile && kici run local push`` as a user runs them: real processes, real git.

Each test works in a fresh temporary git repository and calls the real ``kici`` entry point in a
child interpreter. Jobs run through the real runner in the default sandbox (bubblewrap) when it is
usable here, else with ``--sandbox none``; the tests that are about the sandbox itself skip with a
reason instead. Nothing asserts on wall-clock time: waits are bounded only to fail instead of hang.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from kici.adapters.sandbox.bwrap import probe

pytestmark = pytest.mark.e2e

BWRAP_PROBLEM = probe()
needs_bwrap = pytest.mark.skipif(BWRAP_PROBLEM is not None, reason=f"bwrap unusable here: {BWRAP_PROBLEM}")
SANDBOX = [] if BWRAP_PROBLEM is None else ["--sandbox", "none"]
TIMEOUT_S = 120
SECRET = "s3cr3t-Value-42"


class Kici:
    """Runs ``kici`` in one project directory with a private run directory."""

    def __init__(self, root: Path, runs: Path) -> None:
        self.root = root
        self.runs = runs
        self.env = {**os.environ, "KICI_RUN_DIR": str(runs), "NO_COLOR": "1"}
        self.env.pop("KICI_DEBUG", None)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "kici.cli.main", *args]

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )

    def run_local(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self("run", "local", *args, *SANDBOX)

    def write(self, relative: str, text: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")

    def git(self, *args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
            cwd=self.root,
            check=True,
            capture_output=True,
        )


@pytest.fixture(scope="module")
def scaffold(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``kici init && kici compile`` in a fresh repository, committed; built once per module."""
    base = tmp_path_factory.mktemp("scaffold")
    tool = Kici(base / "repo", base / "runs")
    tool.root.mkdir()
    tool.git("init", "-q", "-b", "main")
    init = tool("init")
    assert init.returncode == 0, init.stderr
    assert init.stderr.startswith("kici v")
    compiled = tool("compile")
    assert compiled.returncode == 0, compiled.stderr
    assert "✓ Compiled workflows → .kici/kici.lock.json (2 workflows)" in compiled.stdout
    tool.git("add", "-A")
    tool.git("commit", "-qm", "kici init")
    return tool.root


@pytest.fixture
def kici(scaffold: Path, tmp_path: Path) -> Kici:
    """A private copy of the scaffolded repository."""
    root = tmp_path / "repo"
    shutil.copytree(scaffold, root, symlinks=True)
    return Kici(root, tmp_path / "runs")


def document(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    parsed = json.loads(result.stdout)
    assert isinstance(parsed, dict)
    return parsed


def jobs_of(doc: dict[str, Any], workflow: str) -> dict[str, dict[str, Any]]:
    found = next(w for w in doc["workflows"] if w["name"] == workflow)
    return {job["name"]: job for job in found["jobs"]}


@pytest.mark.feature("CLI-01", "CLI-02", "CLI-03", "CLI-08")
def test_init_compile_and_run_the_scaffold(kici: Kici) -> None:
    run = kici.run_local("push")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "[hello] Hello, world!" in run.stdout
    assert "✓ hello-world (success" in run.stdout
    assert run.stderr.startswith("kici v")
    as_json = kici.run_local("push", "--json")
    assert as_json.returncode == 0
    doc = document(as_json)
    assert doc["success"] is True
    hello = jobs_of(doc, "hello-world")["hello"]
    assert hello["status"] == "success"
    assert [s["name"] for s in hello["steps"]] == ["greet", "show-workspace"]
    assert not any(kici.runs.iterdir()), "successful checkouts are removed"
    pr = kici.run_local("pr:open", "--json")
    assert pr.returncode == 0, pr.stderr
    checks = jobs_of(document(pr), "pr-checks")
    assert {name: job["status"] for name, job in checks.items()} == {
        "checks": "success",
        "tests (3.11)": "success",
        "tests (3.12)": "success",
    }
    assert checks["tests (3.12)"]["matrixValues"] == {"python": "3.12"}


@pytest.mark.feature("CLI-03", "CLI-05", "CLI-07")
def test_compile_check_locked_validate_and_preview(kici: Kici) -> None:
    lock = (kici.root / ".kici" / "kici.lock.json").read_text(encoding="utf-8")
    assert kici("compile", "--locked").returncode == 0
    preview = kici("preview", "push")
    assert preview.returncode == 0
    assert "🔍 DRY RUN - No commands will be executed" in preview.stdout
    assert "✓ hello-world: matched trigger 1 (push)" in preview.stdout
    assert "✗ pr-checks: skipped" in preview.stdout
    kici.write(
        ".kici/workflows/hello_world.py",
        (kici.root / ".kici/workflows/hello_world.py")
        .read_text(encoding="utf-8")
        .replace("on=push()", 'on=push(branches="main")'),
    )
    check = kici("compile", "--check")
    assert check.returncode == 0
    assert "✓ Workflows are valid (2 workflows)" in check.stdout
    assert (kici.root / ".kici" / "kici.lock.json").read_text(encoding="utf-8") == lock, (
        "--check never writes"
    )
    stale = kici("compile", "--locked")
    assert stale.returncode == 1
    assert 'workflow "hello-world": source edited' in stale.stderr
    assert kici("validate").returncode == 1
    kici.write(
        ".kici/workflows/broken.py",
        "from kici.sdk import job\nbad = job('x', runs_on='a', run=print, steps=[print])\n",
    )
    broken = kici("compile")
    assert broken.returncode == 1
    assert ".kici/workflows/broken.py:2:" in broken.stderr
    assert "error [E" in broken.stderr


FAILING = """\
from kici.sdk import job, push, step, workflow

LINUX = "kici:os:linux"
build = job("build", runs_on=LINUX, steps=[step("compile", lambda ctx: ctx.sh("echo compiling; exit 3"))])
after = job("after", runs_on=LINUX, needs=[build], steps=[step("x", lambda ctx: ctx.sh("echo after"))])
other = job("other", runs_on=LINUX, steps=[step("y", lambda ctx: ctx.sh("echo other"))])
failing = workflow("failing", on=push(), jobs=[build, after, other])

slow = job("slow", runs_on="kici:os:linux", steps=[step("nap", lambda ctx: ctx.sh("sleep 30"), timeout=0.5)])
timing_out = workflow("timing-out", on=push(), jobs=[slow])
"""


@pytest.mark.feature("CLI-08", "EXE-16")
def test_a_failing_step_fails_the_run_and_stops_later_jobs(kici: Kici) -> None:
    kici.write(".kici/workflows/failing.py", FAILING)
    run = kici.run_local("push", "--workflow", "failing", "--concurrency", "1", "--json")
    assert run.returncode == 1, run.stderr
    jobs = jobs_of(document(run), "failing")
    assert jobs["build"]["status"] == "failure"
    assert jobs["build"]["steps"][0]["error"].startswith("Command failed with exit code 3")
    assert jobs["after"]["status"] == "skipped"
    assert jobs["other"]["status"] == "cancelled"
    kept = Path(jobs["build"]["checkoutDir"])
    assert (kept / ".kici" / "workflows" / "failing.py").is_file(), "the overlay carried the uncommitted file"
    going = kici.run_local("push", "--workflow", "failing", "--concurrency", "1", "--keep-going", "--json")
    assert going.returncode == 1
    jobs = jobs_of(document(going), "failing")
    assert (jobs["after"]["status"], jobs["other"]["status"]) == ("skipped", "success")
    plain = kici.run_local("push", "--workflow", "failing", "--concurrency", "1")
    assert "[build] compiling" in plain.stdout
    assert "✗ failing (failure" in plain.stdout


@pytest.mark.feature("CLI-08")
def test_a_step_timeout_fails_the_job(kici: Kici) -> None:
    kici.write(".kici/workflows/failing.py", FAILING)
    run = kici.run_local("push", "--workflow", "timing-out", "--json")
    assert run.returncode == 1
    step = jobs_of(document(run), "timing-out")["slow"]["steps"][0]
    assert step["status"] == "failed"
    assert "timed out after 500ms" in step["error"]


SLEEPY = """\
from kici.sdk import job, push, step, workflow


def cleanup(ctx):
    ctx.log.info("cleanup hook ran: %s", ctx.outcome.status)


def on_cancel(ctx):
    ctx.log.info("on_cancel hook ran")


nap = job("nap", runs_on="kici:os:linux", steps=[step("sleep", lambda ctx: ctx.sh("echo napping; sleep 60"))],
          cleanup=cleanup, on_cancel=on_cancel)
later = job("later", runs_on="kici:os:linux", needs=[nap],
            steps=[step("x", lambda ctx: ctx.sh("echo later"))])
sleepy = workflow("sleepy", on=push(), jobs=[nap, later])
"""


@pytest.mark.feature("CLI-08", "EXE-14")
def test_ctrl_c_cancels_gracefully_and_runs_cleanup_hooks(kici: Kici) -> None:
    kici.write(".kici/workflows/sleepy.py", SLEEPY)
    lines: list[str] = []
    napping = threading.Event()
    with subprocess.Popen(
        kici.argv("run", "local", "push", "--workflow", "sleepy", *SANDBOX),
        cwd=kici.root,
        env=kici.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as process:

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line)
                if "napping" in line:
                    napping.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            assert napping.wait(TIMEOUT_S), "the step never started:\n" + "".join(lines)
            process.send_signal(signal.SIGINT)
            code = process.wait(TIMEOUT_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        reader.join(TIMEOUT_S)
    output = "".join(lines)
    assert code == 130, output
    assert "[nap] [info] on_cancel hook ran" in output
    assert "[nap] [info] cleanup hook ran: cancelled" in output
    assert "⊘ later (cancelled)" in output
    assert "Interrupted (Ctrl-C)." in output
    assert "later\n" not in output.replace("[later]", "")


LEAKY = """\
import base64
from kici.sdk import job, push, step, workflow


def leak(ctx):
    token = ctx.secrets.get("TOKEN")
    ctx.sh("echo shell: $T", env={"T": token})
    print("print:", token)
    ctx.log.info("log: %s", token)
    ctx.log.info("b64: %s", base64.b64encode(token.encode()).decode())
    ctx.log.info("override: %s", ctx.secrets.get("FROM_FLAG"))
    raise RuntimeError("failing with " + token)


leak_job = job("leak", runs_on="kici:os:linux", steps=[step("leak", leak)])
leaky = workflow("leaky", on=push(), jobs=[leak_job])
"""


@pytest.mark.feature("CLI-11", "CLI-08")
def test_secrets_never_appear_in_any_output(kici: Kici) -> None:
    kici.write(".kici/workflows/leaky.py", LEAKY)
    kici.write(".kici/.secrets", f"TOKEN={SECRET}\nFROM_FLAG=overridden-by-flag\n")
    flag = "flag-secret-9876"
    for extra in ([], ["--json"]):
        run = kici.run_local("push", "--workflow", "leaky", "--env", f"FROM_FLAG={flag}", *extra)
        assert run.returncode == 1
        for text in (run.stdout, run.stderr):
            assert SECRET not in text
            assert flag not in text
            assert "overridden-by-flag" not in text
        combined = run.stdout + run.stderr
        assert "shell: ***" in combined
        assert "print: ***" in combined
        assert "log: ***" in combined
        assert "override: ***" in combined
        assert "failing with ***" in combined


ESCAPE = """\
from kici.sdk import job, push, step, workflow

OUTSIDE = {outside!r}


def peek(ctx):
    with open(OUTSIDE, encoding="utf-8") as handle:
        ctx.log.info("read: %s", handle.read().strip())


peek_job = job("peek", runs_on="kici:os:linux", steps=[step("peek", peek)])
escape = workflow("escape", on=push(), jobs=[peek_job])
"""


@needs_bwrap
@pytest.mark.feature("CLI-08")
def test_bwrap_confines_steps_to_their_workspace(kici: Kici, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("host-only data\n", encoding="utf-8")
    kici.write(".kici/workflows/escape.py", ESCAPE.format(outside=str(outside)))
    confined = kici("run", "local", "push", "--workflow", "escape", "--json")
    assert confined.returncode == 1
    step = jobs_of(document(confined), "escape")["peek"]["steps"][0]
    assert step["status"] == "failed"
    assert "No such file or directory" in step["error"] or "Permission denied" in step["error"]
    assert "host-only data" not in confined.stdout + confined.stderr
    unconfined = kici("run", "local", "push", "--workflow", "escape", "--sandbox", "none")
    assert unconfined.returncode == 0, "the same step reads the file without the sandbox"
    assert "read: host-only data" in unconfined.stdout


@pytest.mark.feature("CLI-08")
def test_uncommitted_edits_run_and_nothing_matched_is_not_an_error(kici: Kici) -> None:
    path = kici.root / ".kici" / "workflows" / "hello_world.py"
    path.write_text(
        path.read_text(encoding="utf-8").replace("Hello, world!", "Hello, edited world!"), encoding="utf-8"
    )
    run = kici.run_local("push", "--quiet")
    assert run.returncode == 0, run.stderr
    assert run.stderr == "", "--quiet prints no banner"
    assert "✓ hello-world (success" in run.stdout
    assert "[hello]" not in run.stdout
    logs = kici.run_local("push")
    assert "[hello] Hello, edited world!" in logs.stdout
    nothing = kici.run_local("tag")
    assert nothing.returncode == 0
    assert "No workflows matched the event." in nothing.stdout
    empty = kici.run_local("tag", "--json")
    assert document(empty) == {"success": True, "workflows": []}


@pytest.mark.feature("CLI-04")
def test_compile_watch_recompiles_on_change_and_stops_on_ctrl_c(kici: Kici) -> None:
    compiled = threading.Semaphore(0)
    lines: list[str] = []
    with subprocess.Popen(
        kici.argv("compile", "--watch"),
        cwd=kici.root,
        env=kici.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as process:

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line)
                if "watching for changes" in line:
                    compiled.release()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            assert compiled.acquire(timeout=TIMEOUT_S), "no first compile:\n" + "".join(lines)
            lock = kici.root / ".kici" / "kici.lock.json"
            lock.unlink()
            path = kici.root / ".kici" / "workflows" / "hello_world.py"
            path.write_text(path.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
            assert compiled.acquire(timeout=TIMEOUT_S), "no recompile after an edit:\n" + "".join(lines)
            assert lock.is_file(), "the watch rewrote the lock"
            process.send_signal(signal.SIGINT)
            code = process.wait(TIMEOUT_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        reader.join(TIMEOUT_S)
    assert code == 0
