"""Shared set-up of the agent job tests (no tests here): a real repository behind a real git server.

One session-wide project: ``.kici/workflows/ci.py`` compiled by ``kici.services.compiler`` into
``.kici/kici.lock.json``, both committed to a bare repository served by ``git http-backend`` that
demands ``Authorization: Basic x-access-token:<TOKEN>``. Dispatches are built the way the
orchestrator builds them (``runs.build_run`` for the rows' ``config``, then what the dispatcher adds:
``jobName``, ``baseJobName``, ``matrixValues``), so the agent runs exactly what it would be sent.
"""

from __future__ import annotations

import os
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from kici.adapters.sandbox.process import ProcessSandbox
from kici.domain.event_args import EventOptions, simulate_event
from kici.domain.lockfile import LockFile, thaw_json
from kici.domain.ports import Sandbox
from kici.domain.protocol import JobDispatch, JobState, JobStatus, LogChunk, StepStatus
from kici.services.agent.job_runner import JobSettings
from kici.services.agent.jobs import JobManager
from kici.services.compiler import compile_project, write_lock
from kici.services.orchestrator.runs import RunContext, build_run
from kici.testing.agent_outbound import RecordingOutbound
from kici.testing.git_http import GitHttpServer, commit_files, create_repo

TOKEN = "ghs_CloneToken0123456789abcdef"
API_KEY = "sk-live-Zq8yW1xV4"
DB_PASSWORD = "pw-Hunter2-Correct"
TIMEOUT_S = 60
TERMINAL = frozenset({JobState.SUCCESS, JobState.FAILED, JobState.CANCELLED})

WORKFLOW = """
import base64
import os

from kici.sdk import dynamic_job, job, parallel, push, step, workflow

LINUX = "kici:os:linux"


@step("compile", outputs={"version": str})
def compile_(ctx):
    for i in range(120):
        print(f"compile line {i}")
    ctx.set_env("GREETING", "hello-from-compile")
    return {"version": "1.2.3"}


def use(ctx):
    ctx.sh('echo "greeting=$GREETING level=$JOB_LEVEL"')
    return {"seen": compile_.result.version}


build = job(
    "build",
    runs_on=LINUX,
    env={"JOB_LEVEL": "from-lock"},
    steps=[
        compile_,
        parallel([step("left", lambda ctx: print("left")), step("right", lambda ctx: print("right"))]),
        step("use", use),
    ],
)

fails = job("fails", runs_on=LINUX, steps=[
    step("ok", lambda ctx: print("fine")),
    step("bad", lambda ctx: ctx.sh("echo about to fail; exit 3")),
    step("never", lambda ctx: print("never printed")),
])

def show(ctx):
    print(f"flavor={ctx.matrix.flavor} index={ctx.fanout.index} total={ctx.fanout.total}")


matrix = job("matrix", runs_on=LINUX, matrix={"flavor": ["a", "b"]}, steps=[step("show", show)])


def read(ctx):
    version = ctx.needs["build"].result["compile"]["version"]
    print(f"upstream version {version} status {ctx.needs['build'].status}")
    return {"got": version}


consume = job("consume", runs_on=LINUX, needs=[build], steps=[step("read", read)])


def leak(ctx):
    value = ctx.secrets.get("API_KEY")
    print(f"plain {value}")
    print("b64 " + base64.b64encode(value.encode()).decode())
    ctx.sh("echo shell " + value)
    return {"echo": value}


def leak_error(ctx):
    raise RuntimeError("boom " + ctx.secrets.get("DB_PASSWORD"))


secretive = job("secretive", runs_on=LINUX, steps=[step("leak", leak), step("leak-error", leak_error)])


def mark(text):
    def hook(ctx):
        print(f"hook {text} {ctx.outcome.status if ctx.outcome else '-'}")
    return hook


slow = job("slow", runs_on=LINUX, on_cancel=mark("on_cancel"), cleanup=mark("cleanup"), steps=[
    step("wait", lambda ctx: ctx.sh("echo started; sleep 61.25")),
    step("after", lambda ctx: print("after")),
])

crash = job("crash", runs_on=LINUX, steps=[step("die", lambda ctx: os.kill(os.getpid(), 9))])


def peek(ctx):
    ctx.sh('cat "$AGENT_CONFIG" || echo "config not readable"; env | sort', check=False)


isolation = job("isolation", runs_on=LINUX, steps=[step("peek", peek)])

stubborn = job(
    "stubborn",
    runs_on=LINUX,
    on_cancel=lambda ctx: ctx.sh("echo hook-started; sleep 62.5"),
    steps=[step("wait", lambda ctx: ctx.sh("echo started; sleep 61.75"))],
)


def two(g):
    return [job(f"gen-{n}", runs_on=LINUX, run=lambda ctx, n=n: print(f"generated {n}")) for n in "ab"]


ci = workflow("ci", on=push(), jobs=[
    build, fails, matrix, consume, secretive, slow, crash, isolation, stubborn, dynamic_job("gens", two),
])
"""


@attrs.frozen
class Project:
    root: Path
    url: str
    sha: str
    lock: LockFile
    server: GitHttpServer


def build_project(base: Path) -> tuple[Path, str, LockFile]:
    """Compile the workflow and commit it with its lock; returns (served root, commit, lock)."""
    source = base / "src"
    kici_dir = source / ".kici"
    (kici_dir / "workflows").mkdir(parents=True)
    workflow_text = textwrap.dedent(WORKFLOW)
    (kici_dir / "workflows" / "ci.py").write_text(workflow_text)
    result = compile_project(kici_dir, source)
    assert result.ok, [d.message for d in result.diagnostics]
    assert result.lock is not None
    lock_path = write_lock(kici_dir, result.lock)
    served = base / "served"
    bare = create_repo(served, "acme/app")
    sha = commit_files(
        bare,
        "main",
        {".kici/workflows/ci.py": workflow_text, ".kici/kici.lock.json": lock_path.read_text()},
        message="ci",
    )
    return served, sha, result.lock


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    served, sha, lock = build_project(tmp_path_factory.mktemp("agent-project"))
    with GitHttpServer(served, credentials=("x-access-token", TOKEN)) as server:
        yield Project(served, server.url_for("acme/app"), sha, lock, server)


def dispatch_for(project: Project, job_name: str, **changes: Any) -> JobDispatch:
    """The ``job.dispatch`` the orchestrator would send for row ``job_name`` of workflow ``ci``.

    ``config`` entries in ``changes`` are merged into ``jobConfig``; everything else replaces a field.
    """
    event = simulate_event("push", EventOptions(current_branch="main", sha=project.sha))
    ctx = RunContext(
        event=event,
        event_name="push",
        repo_url=project.url,
        ref="refs/heads/main",
        sha=project.sha,
        provider="universal-git",
    )
    run_id = uuid.uuid4()
    _, jobs = build_run(project.lock.workflows[0], ctx, run_id=run_id, now=datetime.now(UTC))
    base = job_name.split(" (", maxsplit=1)[0]
    row = next(j for j in jobs if j.spec.name == base)
    config = thaw_json(row.config)
    assert isinstance(config, dict)
    matrix = thaw_json(row.matrix_values.get(job_name)) if row.matrix_values else None
    config.update(jobName=job_name, baseJobName=base if matrix is not None else None, matrixValues=matrix)
    config.update(changes.pop("config", {}))
    fields: dict[str, Any] = {
        "message_id": str(uuid.uuid4()),
        "run_id": str(run_id),
        "job_id": str(uuid.uuid4()),
        "repo_url": project.url,
        "ref": "refs/heads/main",
        "sha": project.sha,
        "lock_file_url": "",
        "job_config": config,
        "timestamp": 0,
        "token": TOKEN,
    }
    fields.update(changes)
    return JobDispatch(**fields)


def settings(**changes: Any) -> JobSettings:
    """Spec timings shrunk so cancel paths finish in well under a second of waiting."""
    values: dict[str, Any] = {
        "agent_id": "agent-test",
        "job_heartbeat_interval_ms": 60_000,
        "default_grace_s": 0.5,
        "hook_timeout_s": 5.0,
        "abort_wait_s": 1.0,
        "term_wait_s": 1.0,
        "timeout_margin_s": 1.0,
    }
    values.update(changes)
    return JobSettings(**values)


@asynccontextmanager
async def running_manager(
    work_dir: Path,
    outbound: RecordingOutbound,
    *,
    sandbox: Sandbox | None = None,
    host_env: dict[str, str] | None = None,
    **changes: Any,
) -> AsyncIterator[JobManager]:
    manager = JobManager(
        settings(**changes),
        outbound,
        sandbox or ProcessSandbox(),
        work_dir,
        host_env=dict(os.environ) if host_env is None else host_env,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        yield manager
        nursery.cancel_scope.cancel()


async def terminal(outbound: RecordingOutbound, job_id: str) -> JobStatus:
    with trio.fail_after(TIMEOUT_S):
        return await outbound.wait_for(JobStatus, lambda m: m.job_id == job_id and m.state in TERMINAL)


async def run_one(manager: JobManager, outbound: RecordingOutbound, dispatch: JobDispatch) -> JobStatus:
    """Offer ``dispatch``, wait for its terminal status and for its cleanup."""
    manager.offer(dispatch)
    status = await terminal(outbound, dispatch.job_id)
    with trio.fail_after(TIMEOUT_S):
        await manager.wait_idle()
    return status


def lines_of(outbound: RecordingOutbound, job_id: str, step_index: int | None = None) -> list[str]:
    return [
        line
        for chunk in outbound.of(LogChunk)
        if chunk.job_id == job_id and (step_index is None or chunk.step_index == step_index)
        for line in chunk.lines
    ]


def steps_of(outbound: RecordingOutbound, job_id: str) -> dict[str, str]:
    """The last state of each step (by name) the job reported."""
    states: dict[str, str] = {}
    for message in outbound.of(StepStatus):
        if message.job_id == job_id:
            states[message.step_name] = message.state.value
    return states


__all__ = [
    "API_KEY",
    "DB_PASSWORD",
    "TOKEN",
    "Project",
    "dispatch_for",
    "lines_of",
    "project",
    "run_one",
    "running_manager",
    "settings",
    "steps_of",
    "terminal",
]
