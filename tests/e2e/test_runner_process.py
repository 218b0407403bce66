"""The real runner process, driven through ``runner_client`` over both sandbox adapters.

Each test writes a small workflow file into a temporary workspace, starts ``python -m kici.services.runner``
through the process or the bwrap adapter and checks what comes back over IPC. Timings are kept short
(sub-second timeouts and grace periods); nothing asserts on wall-clock time.
"""

from __future__ import annotations

import base64
import os
import signal
import textwrap
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from kici.adapters.sandbox.bwrap import BwrapSandbox, probe
from kici.adapters.sandbox.process import ProcessSandbox
from kici.domain.events import SimulatedEvent
from kici.domain.lockfile.hashing import workflow_content_hash
from kici.domain.runner_ipc import (
    ExecuteRequest,
    JobComplete,
    LogLine,
    RunnerMessage,
    StepComplete,
    StepStart,
    event_to_json,
)
from kici.domain.sandbox_env import sandbox_env
from kici.services.runner_client import RunnerCallbacks, RunnerClient, open_runner

pytestmark = pytest.mark.e2e

BWRAP_PROBLEM = probe()
ADAPTERS = [
    pytest.param("process", id="process"),
    pytest.param(
        "bwrap",
        id="bwrap",
        marks=pytest.mark.skipif(BWRAP_PROBLEM is not None, reason=f"bwrap unusable: {BWRAP_PROBLEM}"),
    ),
]
WORKFLOW = ".kici/workflows/ci.py"
HEADER = """\
import os, sys, time, base64, logging
from pathlib import Path
from kici.sdk import workflow, job, step, push, parallel, Retry, Hook, rule

def mark(text):
    def hook(ctx):
        with open("trace.txt", "a") as f:
            status = ctx.outcome.status if ctx.outcome else "-"
            f.write(f"{text}:{status}\\n")
    return hook
"""

OnEvent = Callable[[RunnerClient, RunnerMessage], Awaitable[None]]


@dataclass
class Run:
    result: JobComplete
    events: list[RunnerMessage] = field(default_factory=list)
    workspace: Path = Path()

    def lines(self, index: int | None = None) -> list[str]:
        return [
            e.line for e in self.events if isinstance(e, LogLine) and (index is None or e.step_index == index)
        ]

    def index_of(self, name: str) -> int:
        return next(e.step_index for e in self.events if isinstance(e, StepStart) and e.step_name == name)

    def complete(self, name: str) -> StepComplete:
        index = self.index_of(name)
        return next(e for e in self.events if isinstance(e, StepComplete) and e.step_index == index)

    def statuses(self) -> dict[str, str]:
        return {r.name: r.status for r in self.result.step_results}

    def trace(self) -> list[str]:
        path = self.workspace / "trace.txt"
        return path.read_text().split() if path.exists() else []


def write_workflow(workspace: Path, body: str) -> str:
    source = HEADER + textwrap.dedent(body)
    path = workspace / WORKFLOW
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    return source


async def run_job(
    workspace: Path,
    job_name: str,
    *,
    adapter: str = "process",
    on_event: OnEvent | None = None,
    **request: Any,
) -> Run:
    sandbox = ProcessSandbox() if adapter == "process" else BwrapSandbox()
    events: list[RunnerMessage] = []
    holder: dict[str, RunnerClient] = {}

    async def record(message: Any) -> None:
        events.append(message)
        if on_event is not None:
            await on_event(holder["client"], message)

    callbacks = RunnerCallbacks(on_step_start=record, on_log_line=record, on_step_complete=record)
    env = sandbox_env(os.environ, {"HOME": "/tmp"})
    inside = "/workspace" if adapter == "bwrap" else str(workspace)
    with trio.fail_after(60):
        async with open_runner(sandbox, workspace=str(workspace), env=env, callbacks=callbacks) as client:
            holder["client"] = client
            result = await client.execute(
                ExecuteRequest(workflow_file=WORKFLOW, job_name=job_name, workspace=inside, **request)
            )
    return Run(result, events, workspace)


@pytest.mark.feature("EXE-22", "SDK-32", "SDK-33", "ISO-02", "ISO-03")
@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_outputs_chain_from_step_to_step(tmp_path: Path, adapter: str) -> None:
    write_workflow(
        tmp_path,
        """
        @step("build", outputs={"version": str})
        def build(ctx):
            ctx.sh("echo building {name}", name="it's here")
            return {"version": "1.2.3"}

        def use(ctx):
            return {"seen": ctx.sh("echo v=" + build.result.version).stdout.strip(),
                    "same": ctx.outputs_of(build)["version"]}

        ci = workflow("ci", on=push(), jobs=[job("main", runs_on="linux", steps=[build, use])])
        """,
    )
    run = await run_job(tmp_path, "main", adapter=adapter)
    assert run.result.status == "success"
    assert run.result.outputs == {
        "build": {"version": "1.2.3"},
        "step-1": {"seen": "v=1.2.3", "same": "1.2.3"},
    }
    assert "building it's here" in run.lines(run.index_of("build"))
    assert run.complete("build").outputs == {"version": "1.2.3"}


@pytest.mark.feature("EXE-07", "SDK-24")
async def test_failing_step_and_continue_on_error(tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        """
        ci = workflow("ci", on=push(), jobs=[job("main", runs_on="linux", steps=[
            step("ok", lambda ctx: None),
            step("soft", lambda ctx: ctx.sh("echo oops; exit 3"), continue_on_error=True),
            step("after", lambda ctx: None),
            step("hard", lambda ctx: ctx.sh("exit 4")),
            step("never", lambda ctx: None),
        ])])
        """,
    )
    run = await run_job(tmp_path, "main")
    assert run.statuses() == {
        "ok": "success",
        "soft": "failed",
        "after": "success",
        "hard": "failed",
        "never": "skipped",
    }
    assert run.result.status == "failed"
    assert run.result.error is not None
    assert run.result.error.startswith("Step 'hard' failed: Command failed with exit code 4")
    soft = run.complete("soft")
    assert soft.error is not None
    assert soft.error.exit_code == 3
    assert "oops" in soft.error.message


@pytest.mark.feature("EXE-07", "SDK-25")
async def test_retry_until_success(tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        """
        def flaky(ctx):
            p = Path("count.txt")
            n = int(p.read_text()) if p.exists() else 0
            p.write_text(str(n + 1))
            if n < 2:
                raise RuntimeError(f"attempt {n + 1} failed")
            return {"attempts": n + 1}

        def never_retry(ctx):
            raise ValueError("permanent")

        ci = workflow("ci", on=push(), jobs=[
            job("main", runs_on="linux", steps=[step("flaky", flaky, retry=Retry(3, delay=0.05))]),
            job("filtered", runs_on="linux", steps=[
                step("once", never_retry,
                     retry=Retry(5, delay=0.05, retry_if=lambda e: not isinstance(e, ValueError)))
            ]),
        ])
        """,
    )
    run = await run_job(tmp_path, "main")
    assert run.result.status == "success"
    assert run.result.outputs == {"flaky": {"attempts": 3}}
    assert sum("retrying in" in line for line in run.lines()) == 2

    filtered = await run_job(tmp_path, "filtered")
    assert filtered.statuses() == {"once": "failed"}
    assert not any("retrying in" in line for line in filtered.lines())


@pytest.mark.feature("EXE-07", "SDK-24")
async def test_step_timeout_kills_the_command(tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        """
        ci = workflow("ci", on=push(), jobs=[job("main", runs_on="linux", steps=[
            step("slow", lambda ctx: ctx.sh("sleep 30; echo never"), timeout=0.3),
        ])])
        """,
    )
    run = await run_job(tmp_path, "main", grace_period_s=0.2)
    assert run.statuses() == {"slow": "failed"}
    error = run.complete("slow").error
    assert error is not None
    assert error.message == "Step 'slow' timed out after 300ms"
    assert "never" not in run.lines()


@pytest.mark.feature("EXE-06", "SDK-24")
async def test_job_timeout_fails_the_job_and_skips_hooks(tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        """
        ci = workflow("ci", on=push(), jobs=[job("main", runs_on="linux", cleanup=mark("cleanup"), steps=[
            step("slow", lambda ctx: ctx.sh("sleep 30")),
            step("next", lambda ctx: None),
        ])])
        """,
    )
    run = await run_job(tmp_path, "main", job_timeout_ms=300, grace_period_s=0.2)
    assert run.result.status == "failed"
    assert run.result.error == "job_timeout: job exceeded its timeout of 300ms"
    assert run.statuses() == {"slow": "failed", "next": "skipped"}
    assert run.trace() == []


@pytest.mark.feature("EXE-11", "SDK-23")
@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_hook_order_on_success_and_failure(tmp_path: Path, adapter: str) -> None:
    write_workflow(
        tmp_path,
        """
        hooks = dict(before_step=mark("before"), after_step=mark("after"), on_success=mark("onSuccess"),
                     on_failure=mark("onFailure"), cleanup=mark("cleanup"), on_cancel=mark("onCancel"))
        ci = workflow("ci", on=push(), jobs=[
            job("good", runs_on="linux", steps=[step("a", lambda ctx: None), step("b", lambda ctx: None)],
                **hooks),
            job("bad", runs_on="linux", steps=[step("a", lambda ctx: 1 / 0), step("b", lambda ctx: None)],
                **hooks),
        ])
        """,
    )
    good = await run_job(tmp_path, "good", adapter=adapter)
    assert good.result.status == "success"
    assert good.trace() == [
        "before:-",
        "after:-",
        "before:-",
        "after:-",
        "onSuccess:success",
        "cleanup:success",
    ]

    (tmp_path / "trace.txt").unlink()
    bad = await run_job(tmp_path, "bad", adapter=adapter)
    assert bad.result.status == "failed"
    assert bad.statuses() == {"a": "failed", "b": "skipped"}
    assert bad.trace() == ["before:-", "after:-", "onFailure:failed", "cleanup:failed"]


@pytest.mark.feature("EXE-11", "SDK-23")
async def test_failing_hooks_fold_into_the_job_status(tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        """
        def boom(ctx):
            raise RuntimeError("hook broke")

        ci = workflow("ci", on=push(), jobs=[job("main", runs_on="linux",
            before_step=boom, on_success=boom, cleanup=mark("cleanup"),
            steps=[step("a", lambda ctx: None)])])
        """,
    )
    run = await run_job(tmp_path, "main")
    assert run.statuses() == {"a": "success"}
    assert run.result.status == "failed"
    assert run.result.error == "Hook onSuccess failed: RuntimeError: hook broke"
    assert run.trace() == ["cleanup:failed"]
    assert any("beforeStep hook failed" in line and "hooks are observers" in line for line in run.lines())


async def _abort_when_started(force: bool) -> OnEvent:
    async def on_event(client: RunnerClient, message: RunnerMessage) -> None:
        if isinstance(message, LogLine) and message.line == "started":
            await client.abort(force=force, reason="user cancelled")

    return on_event


CANCEL_WORKFLOW = """
ci = workflow("ci", on=push(), jobs=[job("main", runs_on="linux",
    on_cancel=mark("onCancel"), cleanup=mark("cleanup"), on_success=mark("onSuccess"),
    steps=[
        step("slow", lambda ctx: ctx.sh("echo started; sleep 30"),
             on_cancel=mark("stepOnCancel"), cleanup=mark("stepCleanup")),
        step("next", lambda ctx: None),
    ])])
"""


@pytest.mark.feature("EXE-13", "EXE-11", "ISO-10")
@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_graceful_abort_runs_cancel_hooks(tmp_path: Path, adapter: str) -> None:
    write_workflow(tmp_path, CANCEL_WORKFLOW)
    run = await run_job(
        tmp_path, "main", adapter=adapter, on_event=await _abort_when_started(False), grace_period_s=0.3
    )
    assert run.result.status == "cancelled"
    assert run.result.error == "user cancelled"
    assert run.statuses() == {"slow": "cancelled", "next": "cancelled"}
    assert run.trace() == [
        "stepOnCancel:cancelled",
        "stepCleanup:cancelled",
        "onCancel:cancelled",
        "cleanup:cancelled",
    ]


@pytest.mark.feature("EXE-13", "ISO-10")
async def test_force_abort_runs_no_hooks(tmp_path: Path) -> None:
    write_workflow(tmp_path, CANCEL_WORKFLOW)
    run = await run_job(tmp_path, "main", on_event=await _abort_when_started(True), grace_period_s=5)
    assert run.result.status == "cancelled"
    assert run.trace() == []


@pytest.mark.feature("EXE-13")
async def test_sigterm_takes_the_graceful_path(tmp_path: Path) -> None:
    write_workflow(tmp_path, CANCEL_WORKFLOW)

    async def on_event(client: RunnerClient, message: RunnerMessage) -> None:
        if isinstance(message, LogLine) and message.line == "started":
            os.kill(client.pid, signal.SIGTERM)

    run = await run_job(tmp_path, "main", on_event=on_event, grace_period_s=0.3)
    assert run.result.status == "cancelled"
    assert run.result.error == "received SIGTERM"
    assert run.trace()[-2:] == ["onCancel:cancelled", "cleanup:cancelled"]


@pytest.mark.feature("EXE-13", "EXE-11")
async def test_failing_cancel_hook_turns_cancelled_into_failed(tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        """
        def boom(ctx):
            raise RuntimeError("no")

        ci = workflow("ci", on=push(), jobs=[job("main", runs_on="linux",
            on_cancel=boom, cleanup=mark("cleanup"),
            steps=[step("slow", lambda ctx: ctx.sh("echo started; sleep 30"))])])
        """,
    )
    run = await run_job(tmp_path, "main", on_event=await _abort_when_started(False), grace_period_s=0.3)
    assert run.result.status == "failed"
    assert run.result.error == "cancelled (onCancel hook failed: RuntimeError: no)"
    assert run.trace() == ["cleanup:failed"]


@pytest.mark.feature("SEC-15", "SDK-31", "EXE-10")
@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_secret_is_masked_in_every_line(tmp_path: Path, adapter: str) -> None:
    write_workflow(
        tmp_path,
        """
        def leak(ctx):
            token = ctx.secrets.get("TOKEN")
            ctx.sh("echo shell: $T; echo err: $T >&2", env={"T": token})
            print("print:", token)
            sys.stderr.write("stderr: " + token + "\\n")
            ctx.log.info("log: %s", token)
            logging.getLogger("x").warning("logging: %s", token)
            print("b64:", base64.b64encode(token.encode()).decode())
            ctx.set_secret_output("DERIVED", "derived-" + token)
            print("derived-" + token)
            return {"value": token}

        def fail(ctx):
            raise RuntimeError("bad " + ctx.secrets.get("TOKEN"))

        ci = workflow("ci", on=push(), jobs=[job("main", runs_on="linux",
            steps=[step("leak", leak), step("fail", fail)])])
        """,
    )
    secret = "s3cr3t-Value"
    run = await run_job(tmp_path, "main", adapter=adapter, secrets={"TOKEN": secret})
    lines = run.lines()
    assert len(lines) >= 7
    encoded = base64.b64encode(secret.encode()).decode()
    public = attrs.evolve(run.result, secret_outputs=None)
    for text in [*lines, str(public), *(str(e) for e in run.events)]:
        assert secret not in text
        assert encoded not in text
    assert "shell: ***" in lines
    assert "print: ***" in lines
    assert run.complete("leak").secrets_accessed == ("TOKEN",)
    assert run.result.secret_outputs == {"DERIVED": "derived-" + secret}
    assert run.result.error is not None
    assert "bad ***" in run.result.error


@pytest.mark.feature("EXE-23", "SDK-33")
async def test_env_and_path_chaining(tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        """
        def first(ctx):
            ctx.set_env("FROM_API", "one")
            ctx.sh('echo "FROM_FILE=two=2" >> "$KICI_ENV"; mkdir -p bin; echo "$PWD/bin" >> "$KICI_PATH"')
            ctx.sh('printf "#!/bin/sh\\\\necho tool-ran\\\\n" > bin/mytool; chmod +x bin/mytool')
            ctx.set_env("TOKEN", "overwritten")

        def second(ctx):
            out = ctx.sh('echo "$FROM_API $FROM_FILE ${TOKEN:-unset} $JOB"; mytool').stdout.split()
            return {"seen": out, "env": ctx.env["FROM_API"]}

        ci = workflow("ci", on=push(), jobs=[job("main", runs_on="linux", steps=[first, second])])
        """,
    )
    run = await run_job(tmp_path, "main", secrets={"TOKEN": "operator-secret"}, env={"JOB": "x"})
    assert run.result.status == "success", (run.result, run.lines())
    assert run.result.outputs == {
        "step-2": {"seen": ["one", "two=2", "unset", "x", "tool-ran"], "env": "one"}
    }
    assert any("set_env('TOKEN') ignored" in line for line in run.lines())


@pytest.mark.feature("EXE-08")
async def test_parallel_group_fail_fast_and_window(tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        """
        ci = workflow("ci", on=push(), jobs=[
            job("ff", runs_on="linux", steps=[
                parallel([step("a", lambda ctx: ctx.sh("sleep 10")), step("b", lambda ctx: ctx.sh("exit 1")),
                          step("c", lambda ctx: None)], max_parallel=2),
                step("z", lambda ctx: None),
            ]),
            job("ok", runs_on="linux", steps=[
                parallel([step("a", lambda ctx: {"v": 1}), step("b", lambda ctx: ctx.sh("exit 1"),
                          continue_on_error=True)], name="group"),
                step("z", lambda ctx: {"a": ctx.outputs_of("a")["v"]}),
            ]),
        ])
        """,
    )
    run = await run_job(tmp_path, "ff", grace_period_s=0.2)
    assert run.statuses() == {"a": "cancelled", "b": "failed", "c": "cancelled", "z": "skipped"}
    pending = [e for e in run.events if isinstance(e, StepStart) and e.state == "pending"]
    assert [(e.step_name, e.group_id) for e in pending] == [("c", "parallel-0")]

    ok = await run_job(tmp_path, "ok")
    assert ok.statuses() == {"a": "success", "b": "failed", "z": "success"}
    assert ok.result.outputs is not None
    assert ok.result.outputs["z"] == {"a": 1}


@pytest.mark.feature("SDK-04", "SDK-33")
async def test_async_step_and_aio_facade(tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        """
        async def fetch(ctx):
            result = await ctx.aio.sh("echo from-async")
            try:
                ctx.sh("true")
            except Exception as exc:
                blocked = type(exc).__name__
            return {"out": str(result), "blocked": blocked}

        ci = workflow("ci", on=push(), jobs=[job("main", runs_on="linux", steps=[step("fetch", fetch)])])
        """,
    )
    run = await run_job(tmp_path, "main")
    assert run.result.status == "success"
    assert run.result.outputs == {"fetch": {"out": "from-async", "blocked": "KiciUsageError"}}


@pytest.mark.feature("EXE-22", "SDK-32", "SDK-33")
async def test_matrix_needs_and_upstream_outputs(tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        """
        build = job("build", runs_on="linux", steps=[step("compile", lambda ctx: {"artifact": "a.tar"})])

        def deploy(ctx):
            return {"os": ctx.matrix.os, "artifact": build.result.compile.artifact,
                    "status": ctx.needs["build"].status, "job": ctx.job.name, "wf": ctx.workflow.name,
                    "branch": ctx.event.target_branch}

        ci = workflow("ci", on=push(), jobs=[build, job("deploy", runs_on="linux", needs=[build],
            matrix={"os": ["linux", "mac"]}, steps=[step("go", deploy, outputs={"os": str, "artifact": str,
            "status": str, "job": str, "wf": str, "branch": str})])])
        """,
    )
    run = await run_job(
        tmp_path,
        "deploy",
        matrix={"os": "mac"},
        job_display_name="deploy (mac)",
        upstream_job_outputs={"build": {"compile": {"artifact": "a.tar"}}},
        upstream_job_statuses={"build": "success"},
        event=event_to_json(SimulatedEvent(type="push", target_branch="main", changed_files=("a.py",))),
    )
    assert run.result.status == "success", run.result
    assert run.result.outputs == {
        "go": {
            "os": "mac",
            "artifact": "a.tar",
            "status": "success",
            "job": "deploy (mac)",
            "wf": "ci",
            "branch": "main",
        }
    }


@pytest.mark.feature("EXE-22", "SDK-32")
async def test_outputs_schema_mismatch_fails_the_step(tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        """
        ci = workflow("ci", on=push(), jobs=[job("main", runs_on="linux", steps=[
            step("typed", lambda ctx: {"n": "not-an-int"}, outputs={"n": int}),
        ])])
        """,
    )
    run = await run_job(tmp_path, "main")
    assert run.statuses() == {"typed": "failed"}
    error = run.complete("typed").error
    assert error is not None
    assert "outputs.n: expected int, got str" in error.message


@pytest.mark.feature("EXE-06")
async def test_job_rules_skip_every_step_but_succeed(tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        """
        ci = workflow("ci", on=push(), jobs=[job("main", runs_on="linux", cleanup=mark("cleanup"),
            rules=[rule("on main", lambda ctx: ctx.event.target_branch == "main")],
            steps=[step("a", lambda ctx: None), step("b", lambda ctx: None)])])
        """,
    )
    run = await run_job(tmp_path, "main", event={"type": "push", "target_branch": "dev"})
    assert run.result.status == "success"
    assert run.statuses() == {"a": "skipped", "b": "skipped"}
    assert run.result.rule_results is not None
    assert [(r.label, r.passed) for r in run.result.rule_results] == [("on main", False)]
    assert run.trace() == []


@pytest.mark.feature("EXE-06", "EXE-07")
async def test_step_rule_skips_only_that_step(tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        """
        ci = workflow("ci", on=push(), jobs=[job("main", runs_on="linux", steps=[
            step("gated", lambda ctx: None, rules=[rule("never", lambda ctx: False)]),
            step("b", lambda ctx: None)])])
        """,
    )
    run = await run_job(tmp_path, "main")
    assert run.result.status == "success"
    assert run.statuses() == {"gated": "skipped", "b": "success"}
    assert "[kici] Step 'gated' skipped: rule 'never' did not pass" in run.lines()


@pytest.mark.feature("EXE-06")
async def test_content_hash_is_checked_before_import(tmp_path: Path) -> None:
    source = write_workflow(
        tmp_path,
        """
        Path("imported.txt").write_text("yes")
        ci = workflow("ci", on=push(), jobs=[
            job("main", runs_on="linux", steps=[step("a", lambda ctx: None)])])
        """,
    )
    good = await run_job(tmp_path, "main", content_hash=workflow_content_hash(source, None))
    assert good.result.status == "success"
    (tmp_path / "imported.txt").unlink()

    stale = await run_job(tmp_path, "main", content_hash="0" * 64)
    assert stale.result.status == "failed"
    assert stale.result.error is not None
    assert stale.result.error.startswith(
        "lock file is out of date (workflow source changed without regenerating the lock file)"
    )
    assert not (tmp_path / "imported.txt").exists()


@pytest.mark.feature("EXE-06", "ISO-03")
async def test_runner_crash_is_reported_with_stderr_tail(tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        """
        def die(ctx):
            os.write(2, b"fatal: the runner is going down\\n")
            os._exit(3)

        ci = workflow("ci", on=push(), jobs=[job("main", runs_on="linux", steps=[step("die", die)])])
        """,
    )
    run = await run_job(tmp_path, "main")
    assert run.result.status == "failed"
    assert run.result.error is not None
    assert run.result.error.startswith("Workflow runner crashed:")
    assert "fatal: the runner is going down" in run.result.error


@pytest.mark.feature("EXE-06")
async def test_unknown_job_fails_cleanly(tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        """
        ci = workflow("ci", on=push(), jobs=[
            job("main", runs_on="linux", steps=[step("a", lambda ctx: None)])])
        """,
    )
    run = await run_job(tmp_path, "nope")
    assert run.result.status == "failed"
    assert run.result.error == "job 'nope' not found in workflow 'ci' (jobs: main)"


@pytest.mark.feature("EXE-13", "ISO-02")
async def test_abort_before_execute_reports_cancelled_without_running_anything(tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        """
        Path("imported.txt").write_text("yes")
        ci = workflow("ci", on=push(), jobs=[
            job("main", runs_on="linux", steps=[step("a", lambda ctx: None)])])
        """,
    )
    env = sandbox_env(os.environ)
    with trio.fail_after(30):
        async with open_runner(ProcessSandbox(), workspace=str(tmp_path), env=env) as client:
            await client.abort(reason="changed my mind")
            result = await client.execute(
                ExecuteRequest(workflow_file=WORKFLOW, job_name="main", workspace=str(tmp_path))
            )
    assert (result.status, result.error, result.step_results) == ("cancelled", "changed my mind", ())
    assert not (tmp_path / "imported.txt").exists()
