"""The runner's generated-job JSON is the compiler's lock job (10 §9 "serialize to LockJob[]").

The runner cannot use the compiler's attrs translation (D1) and writes the lock JSON itself; here
the same SDK jobs go both ways — the compiler's ``WorkflowBuilder`` and the runner's serializer
finished by :func:`kici.domain.dynamic.lock_job_from_generated` — and must give equal lock models.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from kici.domain.dynamic import lock_job_from_generated
from kici.domain.lockfile import (
    ExactLabelMatcher,
    FrozenDict,
    LockEnvironment,
    LockJob,
    LockSourceLocation,
    LockStaticMatrix,
    LockStep,
)
from kici.sdk import job
from kici.sdk.discovery import discover_workflows, load_workflow_module
from kici.sdk.naming import job_names
from kici.services.compiler.build import LoadedWorkflow, Problems, WorkflowBuilder
from kici.services.compiler.sources import RepoFiles
from kici.services.runner.serialize import JobSerializer, Resolved

pytestmark = pytest.mark.feature("EXE-19", "SDK-20")

WORKFLOW = """\
import re
from datetime import timedelta
from kici.sdk import (All, Approval, Container, Hook, Init, Mise, Need, Retry, RunsOn, RunsOnAll,
                      dynamic_group, job, parallel, push, rule, skip, step, team, user, workflow)

def noop(ctx):
    return None

checked = step("checked", run=lambda ctx, drift: None, check=lambda ctx: None, summarize=lambda d: "x",
               when_in_sync=lambda ctx: None,
               approval=Approval(when="drift", approvers=[user("cto")], reason="prod", timeout=600))
first = job(runs_on="linux", run=noop)
full = job(
    "full",
    runs_on=RunsOn(["linux", "gpu-*", re.compile("^x86", re.I)], exclude=["slow"], pick="any"),
    needs=[first, Need("first-named", when="always"), dynamic_group("g", when="on-skip")],
    steps=[
        noop,
        step("out", noop, outputs={"version": str}, timeout=timedelta(seconds=1.5)),
        parallel([step(noop), step("p", noop, continue_on_error=False)], max_parallel=1, fail_fast=False),
        step(noop, retry=Retry(3, delay=0.25, backoff="fixed", max_delay=2), on_cancel=noop,
             cleanup=Hook(noop, timeout=5), rules=[rule("always"), skip("never", lambda r: False)],
             cache={"key": "k", "paths": ["a"]}),
        checked,
    ],
    description="all options",
    matrix={"os": ["linux", "mac"], "py": [3.11, 3.12]},
    include=[{"os": "win", "py": 3.12}],
    exclude=[{"os": "mac"}],
    max_parallel=2,
    fail_fast=False,
    checkout=False,
    container=Container("python:3.12", env={"A": "1"}),
    environments=["staging", "prod"],
    env={"K": "v"},
    on_cancel=noop, cleanup=noop, on_success=noop, on_failure=noop, before_step=noop, after_step=noop,
    grace_period=2.5,
    timeout=timedelta(minutes=2),
    resources={"memory": "2g", "cpus": 1},
    init=[Init("make setup", timeout=30, env={"X": "y"}), "mise", Mise(cache=False, timeout=5)],
    cache=[{"key": "k", "paths": ["~/.cache"], "restore_keys": ["k-"]}],
    approval=[team("leads")],
    rules=[rule("r0"), rule("r1")],
)
named = job("first-named", runs_on="linux", run=noop, init=False, container="alpine", concurrency_group="cg",
            matrix=[1, 2])
fan = job("fan", runs_on_all=RunsOnAll(include=[All("a", "b"), All(re.compile("c"))], exclude=["d"]),
          on_unreachable="skip", include_uninitialized=True, run=noop, init=Mise(timeout=7, shell="zsh"))

wf = workflow("wf", on=push(), jobs=[first, full, named, fan])
"""


def load(root: Path) -> tuple[object, Path]:
    entry = root / ".kici" / "workflows" / "ci.py"
    entry.parent.mkdir(parents=True)
    entry.write_text(textwrap.dedent(WORKFLOW), encoding="utf-8")
    module = load_workflow_module(entry, root / ".kici", root)
    ((_, wf),) = discover_workflows(module)
    return wf, entry


def test_the_runner_writes_the_lock_job_the_compiler_builds(tmp_path: Path) -> None:
    wf, entry = load(tmp_path)
    files = RepoFiles(tmp_path)
    problems = Problems(files)
    builder = WorkflowBuilder(LoadedWorkflow(wf, "#wf", entry), files, problems)  # type: ignore[arg-type]
    named = job_names(wf)  # type: ignore[arg-type]
    serializer = JobSerializer(
        workflow_file=".kici/workflows/ci.py", workspace=tmp_path, names={id(j): n for n, j in named}
    )
    compared = 0
    for position, entry_job in enumerate(wf.jobs):  # type: ignore[attr-defined]
        name = next(n for n, j in named if j is entry_job)
        compiled = builder.job(name, entry_job)
        written = serializer.job(name, entry_job, position, Resolved())
        assert lock_job_from_generated(json.loads(json.dumps(written))) == compiled, name
        compared += 1
    assert problems.items == []
    assert compared == 4
    full = builder.job("full", wf.jobs[1])  # type: ignore[attr-defined]
    locations = [s.source_location for s in full.steps if isinstance(s, LockStep)]
    assert len(locations) == 4
    assert all(isinstance(loc, LockSourceLocation) for loc in locations), (
        "steps inside the repo keep their place"
    )
    assert {loc.file for loc in locations if loc is not None} == {".kici/workflows/ci.py"}


def test_dynamic_values_are_written_as_the_static_values_they_evaluated_to(tmp_path: Path) -> None:
    generated = job(
        "gen",
        runs_on="linux",
        run=lambda ctx: None,
        matrix=lambda m: ["a"],
        env=lambda event: {"A": "b"},
        environments=["staging", lambda event: "prod"],
        concurrency_group=lambda event: None,
    )
    resolved = Resolved(
        matrix=("a", "b"),
        env={"A": "b"},
        environments=("staging", "prod"),
        concurrency_group=None,
        dynamic=frozenset({"matrix", "env", "environments", "concurrency_group"}),
    )
    serializer = JobSerializer(workflow_file=".kici/workflows/ci.py", workspace=tmp_path, names={})
    written = serializer.job("gen", generated, 0, resolved)
    lock = lock_job_from_generated(json.loads(json.dumps(written)))
    assert isinstance(lock, LockJob)
    assert lock.matrix == LockStaticMatrix(values=("a", "b"))
    assert lock.env == FrozenDict({"A": "b"})
    assert not lock.dynamic_env
    assert lock.environments == (
        LockEnvironment(value="staging", dynamic=False),
        LockEnvironment(value="prod", dynamic=False),
    )
    assert lock.concurrency_group == "staging", "an unset group defaults to the first environment"
    assert lock.runs_on == (ExactLabelMatcher(value="linux"),)


def test_job_objects_in_needs_are_named_by_the_output_they_belong_to(tmp_path: Path) -> None:
    upstream = job("build-a", runs_on="x", run=lambda ctx: None)
    downstream = job("test-a", runs_on="x", run=lambda ctx: None, needs=[upstream])
    serializer = JobSerializer(
        workflow_file="w.py", workspace=tmp_path, names={id(upstream): "build-a", id(downstream): "test-a"}
    )
    assert serializer.job("test-a", downstream, 1, Resolved())["needs"] == ["build-a"]
