"""The runner's special modes (10 §4, §9): generator evaluation, ``__init__`` values, re-evaluation.

Each test writes a workflow into a temporary workspace and drives the real runner process through
``runner_client`` and the plain-process sandbox, as ``kici run local --sandbox none`` does.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from kici.adapters.sandbox.process import ProcessSandbox
from kici.domain.dynamic import lock_job_from_generated
from kici.domain.lockfile import LockStaticMatrix
from kici.domain.runner_ipc import (
    DynamicRequest,
    Execute,
    ExecuteRequest,
    InitResult,
    JobComplete,
    LogLine,
    RunnerMessage,
    StepComplete,
    StepStart,
    decode_parent_message,
    decode_runner_message,
    encode,
)
from kici.domain.sandbox_env import sandbox_env
from kici.services.runner_client import RunnerCallbacks, open_runner

WORKFLOW = ".kici/workflows/ci.py"
HEADER = """\
from kici.sdk import workflow, job, step, push, dynamic_job, dynamic_group
"""


@dataclass
class Run:
    result: JobComplete
    events: list[RunnerMessage] = field(default_factory=list)

    def lines(self, index: int) -> list[str]:
        return [e.line for e in self.events if isinstance(e, LogLine) and e.step_index == index]

    def starts(self) -> list[tuple[int, str]]:
        return [(e.step_index, e.step_name) for e in self.events if isinstance(e, StepStart)]

    def completes(self) -> list[tuple[int, str]]:
        return [(e.step_index, e.status) for e in self.events if isinstance(e, StepComplete)]


def write(workspace: Path, body: str) -> None:
    path = workspace / WORKFLOW
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + textwrap.dedent(body), encoding="utf-8")


async def execute(workspace: Path, job_name: str = "", **request: Any) -> Run:
    events: list[RunnerMessage] = []

    async def record(message: Any) -> None:
        events.append(message)

    callbacks = RunnerCallbacks(on_step_start=record, on_log_line=record, on_step_complete=record)
    with trio.fail_after(60):
        async with open_runner(
            ProcessSandbox(), workspace=str(workspace), env=sandbox_env(os.environ, {}), callbacks=callbacks
        ) as client:
            result = await client.execute(
                ExecuteRequest(
                    workflow_file=WORKFLOW,
                    job_name=job_name,
                    workspace=str(workspace),
                    event={"type": "push", "target_branch": "main"},
                    **request,
                )
            )
    return Run(result, events)


def evaluation(index: int, **extra: Any) -> dict[str, Any]:
    return {"mode": "dynamic", "dynamic": DynamicRequest(index=index, **extra)}


@pytest.mark.feature("EXE-19", "SDK-20")
async def test_generator_output_is_lock_json_and_its_logs_are_step_evaluate(tmp_path: Path) -> None:
    write(
        tmp_path,
        """
        def gen(g):
            g.log.info("event %s on %s", g.event.type, g.ctx.workflow.name)
            print("printed")
            g.sh("echo from-sh")
            return [job(f"build-{x}", runs_on="linux-*", run=lambda ctx: None, matrix=lambda m: [m.job.name])
                    for x in ("a", "b")]

        ci = workflow("ci", on=push(), jobs=[job("lint", runs_on="x", run=lambda ctx: None), gen])
        """,
    )
    run = await execute(tmp_path, **evaluation(1))
    assert run.result.status == "success"
    assert run.result.dynamic_complete is True
    assert run.starts() == [(0, "evaluate")]
    assert run.completes() == [(0, "success")]
    assert run.lines(0) == [
        "[info] event push on ci",
        "printed",
        "from-sh",
        "[kici] DynamicJobFn generated 2 job(s): build-a, build-b",
    ]
    jobs = [lock_job_from_generated(raw) for raw in run.result.dynamic_jobs or ()]
    assert [j.name for j in jobs] == ["build-a", "build-b"]
    assert jobs[0].matrix == LockStaticMatrix(values=("build-a",)), "a matrix function is resolved"
    assert [r.name for r in run.result.step_results] == ["evaluate"]


@pytest.mark.feature("EXE-19")
@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("raise ValueError('no services')", "DynamicJobFn failed: ValueError: no services"),
        ("return 'nope'", "DynamicJobFn must return a list of jobs, got str"),
        (
            "return [job(runs_on='x', run=lambda ctx: None)]",
            "DynamicJobFn output[0] has no name: generated jobs need job('name', ...)",
        ),
        ("return [job('a', runs_on='x')]", "DynamicJobFn output[0] is not a job with steps"),
        (
            "return [job('a', runs_on='x', run=lambda ctx: None) for _ in range(2)]",
            "Duplicate job name 'a' in DynamicJobFn output",
        ),
        (
            "return [job(f'j{i}', runs_on='x', run=lambda ctx: None) for i in range(101)]",
            "DynamicJobFn generated 101 jobs, exceeding the limit of 100",
        ),
        ("return g.kici.infrastructure.list()", "agent API not available here"),
        ("g.sh('sleep 30')", "DynamicJobFn timed out after 300ms"),
    ],
)
async def test_generator_failures(tmp_path: Path, body: str, error: str) -> None:
    write(tmp_path, f"def gen(g):\n    {body}\n\nci = workflow('ci', on=push(), jobs=[gen])\n")
    run = await execute(tmp_path, grace_period_s=0.1, **evaluation(0, timeout_ms=300))
    assert run.result.status == "failed"
    assert run.result.dynamic_failed is True
    assert run.result.dynamic_jobs is None
    assert run.result.error is not None
    assert error in run.result.error
    assert run.completes() == [(0, "failed")]


@pytest.mark.feature("EXE-20", "SDK-32")
async def test_result_aware_generator_reads_the_needs_view(tmp_path: Path) -> None:
    write(
        tmp_path,
        """
        def gen(g):
            names = [f"deploy-{s}" for s in g.needs["discover"].result.services]
            names += [f"after-{n.name}-{n.status}" for n in g.needs.tests]
            return [job(n, runs_on="x", run=lambda ctx: None) for n in names]

        ci = workflow("ci", on=push(), jobs=[dynamic_job("deploys", needs=["discover"], generate=gen)])
        """,
    )
    needs = {
        "discover": {"name": "discover", "result": {"services": ["api", "web"]}, "status": "success"},
        "tests": [{"name": "t (a)", "result": {}, "status": "failed"}],
    }
    run = await execute(tmp_path, **evaluation(0, needs=needs, result_aware=True, group="deploys"))
    assert run.result.status == "success", run.result.error
    names = [raw["name"] for raw in run.result.dynamic_jobs or ()]
    assert names == ["deploy-api", "deploy-web", "after-t (a)-failed"]


@pytest.mark.feature("EXE-34", "SDK-18", "SDK-21")
async def test_init_evaluates_the_dynamic_values_of_a_job(tmp_path: Path) -> None:
    write(
        tmp_path,
        """
        def dims(m):
            m.log.info("job %s of %s", m.job.name, m.workflow.name)
            return {"os": ["linux"], "py": (3, 4)}

        pkg = job("pkg", runs_on="x", run=lambda ctx: None, matrix=dims,
                  env=lambda event: {"BRANCH": event.target_branch},
                  environments=["base", lambda event: None, lambda event: "prod"],
                  concurrency_group=lambda event: "cg-" + event.type)
        plain = job("plain", runs_on="x", run=lambda ctx: None, matrix=lambda m: [])
        bad = job("bad", runs_on="x", run=lambda ctx: None, matrix=lambda m: {"os": "linux"})
        ci = workflow("ci", on=push(), jobs=[pkg, plain, bad])
        """,
    )
    run = await execute(tmp_path, "pkg", mode="init")
    assert run.result.status == "success", run.result.error
    assert run.result.init_complete is True
    assert run.result.init_result == InitResult(
        matrix_values={"os": ["linux"], "py": [3, 4]},
        env={"BRANCH": "main"},
        environment_names=("base", "prod"),
        concurrency_group="cg-push",
    )
    assert run.lines(0) == ["[info] job pkg of ci"]
    empty = await execute(tmp_path, "plain", mode="init")
    assert empty.result.init_result == InitResult(matrix_values=[])
    bad = await execute(tmp_path, "bad", mode="init")
    assert bad.result.status == "failed"
    assert bad.result.init_failed is True
    assert bad.result.error == (
        "job 'bad': matrix function returned matrix dimension 'os' must be a list of values, got str"
    )


GENERATED = """
def gen(g):
    names = open("names.txt").read().split()
    return [job(n, runs_on="x", run=lambda ctx, n=n: print("running", n)) for n in names]

ci = workflow("ci", on=push(), jobs=[gen])
"""


@pytest.mark.feature("EXE-19")
async def test_a_generated_job_is_found_again_by_re_evaluation(tmp_path: Path) -> None:
    write(tmp_path, GENERATED)
    (tmp_path / "names.txt").write_text("a b", encoding="utf-8")
    origin = DynamicRequest(index=0, expected_job_names=("a", "b"))
    same = await execute(tmp_path, "b", dynamic=origin)
    assert same.result.status == "success"
    assert same.lines(0) == ["running b"]
    assert same.result.generated_job_names == ("a", "b")
    assert same.result.dropped_jobs is None

    (tmp_path / "names.txt").write_text("b c", encoding="utf-8")
    drifted = await execute(tmp_path, "b", dynamic=origin)
    assert drifted.result.status == "success"
    assert drifted.result.dropped_jobs == ("a",)
    assert drifted.result.generated_job_names == ("b", "c")
    assert drifted.lines(-1) == [
        "[kici] warning: determinism drift: re-evaluation generated different jobs (dropped: a; added: c); "
        "job 'b' runs with its re-evaluated steps"
    ]

    gone = await execute(tmp_path, "a", dynamic=origin)
    assert gone.result.status == "failed"
    assert gone.result.error == (
        "determinism drift: job 'a' is not generated by re-evaluation (expected: a, b; re-evaluated: b, c)"
    )
    assert gone.result.step_results == ()


@pytest.mark.feature("EXE-19", "SEC-15")
async def test_secrets_in_generated_jobs_are_masked(tmp_path: Path) -> None:
    write(
        tmp_path,
        """
        def gen(g):
            print("token s3cr3t-value")
            return [job("a", runs_on="x", run=lambda ctx: None, env={"TOKEN": "s3cr3t-value"})]

        ci = workflow("ci", on=push(), jobs=[gen])
        """,
    )
    run = await execute(tmp_path, secrets={"T": "s3cr3t-value"}, **evaluation(0))
    assert run.lines(0)[0] == "token ***"
    assert (run.result.dynamic_jobs or ())[0]["env"] == {"TOKEN": "***"}


@pytest.mark.feature("EXE-34")
async def test_init_values_have_their_own_timeout(tmp_path: Path) -> None:
    write(
        tmp_path,
        """
        slow = job("slow", runs_on="x", run=lambda ctx: None, matrix=lambda m: m.sh("sleep 30"))
        ci = workflow("ci", on=push(), jobs=[slow])
        """,
    )
    run = await execute(tmp_path, "slow", mode="init", init_timeout_ms=300)
    assert run.result.status == "failed"
    assert run.result.error == "job 'slow': matrix timed out after 300ms"


@pytest.mark.feature("EXE-19", "EXE-34", "ISO-02")
def test_evaluation_messages_round_trip() -> None:
    request = Execute(
        request=ExecuteRequest(
            workflow_file=WORKFLOW,
            job_name="__dynamic__ci__0",
            workspace="/workspace",
            mode="dynamic",
            dynamic=DynamicRequest(
                index=0, group="g", result_aware=True, timeout_ms=5, needs={"a": {"name": "a"}}
            ),
            init_timeout_ms=7,
        )
    )
    assert decode_parent_message(encode(request)) == request
    complete = JobComplete(
        status="success",
        dynamic_jobs=({"name": "x", "needs": []},),
        dynamic_complete=True,
        generated_job_names=("x",),
        dropped_jobs=("y",),
        init_result=InitResult(matrix_values={"os": ["a"]}, env={"K": "v"}, concurrency_group="g"),
        init_complete=True,
    )
    assert decode_runner_message(encode(complete)) == complete
    assert b'"mode"' not in encode(
        Execute(request=ExecuteRequest(workflow_file="f", job_name="j", workspace="w"))
    )
