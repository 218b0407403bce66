"""Lock invariants of the compiler over generated SDK objects (00 §2.7 L1, L6, L7, L8; 00 §1.11 S6).

Workflows are built from SDK objects drawn by hypothesis and translated by the
compiler's builder; L1 (byte-identical output whatever the discovery order) is
checked on generated workflow *files* compiled the way the child does.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kici.domain.lockfile import (
    TERMINAL_JOB_STATUSES,
    LockJob,
    LockParallelStep,
    LockStep,
    LockWorkflow,
    NeedsEntry,
    NeedsGroupEntry,
    dump_lock,
    is_uuid,
    parse_lock,
    trigger_type,
    validate_lock,
)
from kici.sdk import Need, Retry, job, parallel, pr, push, schedule, step, tag, workflow
from kici.sdk.jobs import Job
from kici.sdk.workflow import Workflow
from kici.services.compiler.build import LoadedWorkflow, Problems, WorkflowBuilder, build_lock
from kici.services.compiler.child import compile_tree
from kici.services.compiler.sources import RepoFiles

_ROOT = Path(tempfile.mkdtemp(prefix="kici-compiler-props-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
_ENTRY = _ROOT / ".kici" / "workflows" / "gen.py"
_ENTRY.parent.mkdir(parents=True, exist_ok=True)
_ENTRY.write_text("from kici.sdk import workflow\n", encoding="utf-8")


def noop(ctx: object) -> None:
    return None


def seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else value


durations = st.one_of(
    st.integers(min_value=1, max_value=10**6),
    st.floats(min_value=0.001, max_value=1e6, allow_nan=False, allow_infinity=False),
    st.timedeltas(min_value=timedelta(milliseconds=1), max_value=timedelta(days=30)),
)
maybe_duration = st.none() | durations
whens = (
    st.none()
    | st.sampled_from(["on-success", "always", "on-skip", "on-failure"])
    | st.lists(st.sampled_from(TERMINAL_JOB_STATUSES), min_size=1, max_size=6)
)


@st.composite
def retries(draw: st.DrawFn) -> Retry:
    delay = draw(st.floats(min_value=0, max_value=100, allow_nan=False))
    max_delay = draw(st.none() | st.floats(min_value=delay, max_value=1000, allow_nan=False))
    backoff: Literal["exponential", "fixed"] = draw(st.sampled_from(["exponential", "fixed"]))
    return Retry(draw(st.integers(1, 5)), delay=delay, backoff=backoff, max_delay=max_delay)


STEP_NAMES = st.none() | st.sampled_from(["build", "test", "lint", "ship"])


@st.composite
def plain_steps(draw: st.DrawFn, used: set[str]) -> Any:
    name = draw(STEP_NAMES)
    if name in used:
        name = None
    if name is not None:
        used.add(name)
    timeout = draw(maybe_duration)
    retry = draw(st.none() | retries())
    if name is None and timeout is None and retry is None and draw(st.booleans()):
        return noop
    return step(name, noop, timeout=timeout, retry=retry)


@st.composite
def step_lists(draw: st.DrawFn) -> list[Any]:
    used: set[str] = set()
    entries: list[Any] = []
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.integers(0, 3)) == 0:
            children = [draw(plain_steps(used)) for _ in range(draw(st.integers(1, 3)))]
            entries.append(parallel(children, name=draw(st.none() | st.just(f"group-{len(entries)}"))))
        else:
            entries.append(draw(plain_steps(used)))
    return entries


@st.composite
def workflows(draw: st.DrawFn) -> tuple[Workflow, dict[str, Any]]:
    """A valid workflow and the durations/triggers it was built from, for the assertions."""
    names = draw(st.lists(st.none() | st.sampled_from("abcdefgh"), min_size=1, max_size=6))
    seen: set[str] = set()
    jobs: list[Job] = []
    timeouts: list[float | timedelta | None] = []
    for index, drawn_name in enumerate(names):
        name = None if drawn_name in seen else drawn_name
        if name is not None:
            seen.add(name)
        needs: list[Any] = []
        for target in (
            draw(st.lists(st.integers(0, max(index - 1, 0)), max_size=3, unique=True)) if index else []
        ):
            upstream = jobs[target]
            when = draw(whens)
            by_name = upstream.name is not None and draw(st.booleans())
            ref: Any = upstream.name if by_name else upstream
            needs.append(ref if when is None else Need(ref, when=when))
        timeout = draw(maybe_duration)
        timeouts.append(timeout)
        matrix = draw(st.none() | st.lists(st.integers(0, 9), min_size=1, max_size=4, unique=True))
        jobs.append(
            job(name, runs_on="linux", steps=draw(step_lists()), needs=needs, timeout=timeout, matrix=matrix)
        )
    triggers = draw(
        st.lists(
            st.sampled_from(["push", "push-tags", "pr", "tag", "schedule"]),
            max_size=5,
        )
    )
    factories: dict[str, Callable[[], Any]] = {
        "push": lambda: push(branches="main"),
        "push-tags": lambda: push(branches="main", tags=["v*"]),
        "pr": lambda: pr(target="main"),
        "tag": lambda: tag(patterns="v*"),
        "schedule": lambda: schedule(cron="0 3 * * *"),
    }
    wf_timeout = draw(maybe_duration)
    wf = workflow("gen", jobs=jobs, on=[factories[t]() for t in triggers], timeout=wf_timeout)
    return wf, {"job_timeouts": timeouts, "workflow_timeout": wf_timeout, "triggers": triggers}


def build(wf: Workflow) -> LockWorkflow:
    files = RepoFiles(_ROOT)
    problems = Problems(files)
    built = WorkflowBuilder(LoadedWorkflow(wf, "#gen", _ENTRY), files, problems).build()
    assert problems.items == []
    return built


def _steps(entries: tuple[LockStep | LockParallelStep, ...]) -> list[LockStep]:
    flat: list[LockStep] = []
    for entry in entries:
        flat.extend(entry.children if isinstance(entry, LockParallelStep) else (entry,))
    return flat


@pytest.mark.feature("LOCK-03", "LOCK-04", "LOCK-09")
@given(workflows())
def test_generated_locks_validate_and_round_trip(drawn: tuple[Workflow, dict[str, Any]]) -> None:
    wf, _ = drawn
    lock = build_lock([build(wf)], None)
    assert validate_lock(lock) == []
    assert parse_lock(dump_lock(lock)) == lock
    assert dump_lock(parse_lock(dump_lock(lock))) == dump_lock(lock)


@pytest.mark.feature("LOCK-03")
@given(workflows())
def test_l7_needs_are_names_with_terminal_run_on(drawn: tuple[Workflow, dict[str, Any]]) -> None:
    wf, _ = drawn
    built = build(wf)
    names = {j.name for j in built.jobs if isinstance(j, LockJob)}
    for lock_job in built.jobs:
        assert isinstance(lock_job, LockJob)
        assert not is_uuid(lock_job.name)
        for need in lock_job.needs:
            assert not isinstance(need, NeedsGroupEntry)
            name = need.name if isinstance(need, NeedsEntry) else need
            assert not is_uuid(name)
            assert name in names
            if isinstance(need, NeedsEntry):
                assert need.run_on
                assert set(need.run_on) <= set(TERMINAL_JOB_STATUSES)


@pytest.mark.feature("LOCK-03", "LOCK-04")
@given(workflows())
def test_l8_durations_are_rounded_milliseconds(drawn: tuple[Workflow, dict[str, Any]]) -> None:
    wf, meta = drawn
    built = build(wf)
    expected_wf = meta["workflow_timeout"]
    assert built.timeout == (None if expected_wf is None else round(seconds(expected_wf) * 1000))
    lock_jobs = [j for j in built.jobs if isinstance(j, LockJob)]
    for lock_job, sdk_job, timeout in zip(lock_jobs, wf.jobs, meta["job_timeouts"], strict=True):
        assert lock_job.timeout == (None if timeout is None else round(seconds(timeout) * 1000))
        assert isinstance(sdk_job, Job)
        sdk_steps = [s for e in sdk_job.steps for s in (e.steps if hasattr(e, "steps") else (e,))]
        for lock_step, sdk_step in zip(_steps(lock_job.steps), sdk_steps, strict=True):
            want = None if sdk_step.timeout is None else round(sdk_step.timeout * 1000)
            assert lock_step.timeout == want
            if sdk_step.retry is None:
                assert lock_step.retry is None
            else:
                assert lock_step.retry is not None
                assert lock_step.retry.delay_ms == round(sdk_step.retry.delay * 1000)
                assert sdk_step.retry.max_delay is not None
                assert lock_step.retry.max_delay_ms == round(sdk_step.retry.max_delay * 1000)


@pytest.mark.feature("LOCK-03")
@given(workflows())
def test_l6_push_with_tags_is_two_triggers(drawn: tuple[Workflow, dict[str, Any]]) -> None:
    wf, meta = drawn
    built = build(wf)
    expected: list[str] = []
    for kind in meta["triggers"]:
        expected.extend(["push", "tag"] if kind == "push-tags" else [kind.split("-")[0]])
    assert [trigger_type(t) for t in built.triggers] == expected


@pytest.mark.feature("LOCK-04")
@given(workflows())
def test_step_counters_are_one_to_k(drawn: tuple[Workflow, dict[str, Any]]) -> None:
    wf, _ = drawn
    for lock_job, sdk_job in zip(build(wf).jobs, wf.jobs, strict=True):
        assert isinstance(lock_job, LockJob)
        assert isinstance(sdk_job, Job)
        sdk_steps = [s for e in sdk_job.steps for s in (e.steps if hasattr(e, "steps") else (e,))]
        auto = [s.name for s, sdk in zip(_steps(lock_job.steps), sdk_steps, strict=True) if sdk.name is None]
        assert auto == [f"step-{i}" for i in range(1, len(auto) + 1)]
        groups = [e.name for e in lock_job.steps if isinstance(e, LockParallelStep)]
        sdk_groups = [e for e in sdk_job.steps if hasattr(e, "steps")]
        for ordinal, (name, group) in enumerate(zip(groups, sdk_groups, strict=True)):
            assert name == (group.name if group.name is not None else f"parallel-{ordinal}")


# --- L1 on files ---------------------------------------------------------------------------------

TEMPLATE = """\
from datetime import timedelta
from kici.sdk import job, push, step, workflow

first = job(runs_on="linux", steps=[step(lambda ctx: None, timeout={timeout})], matrix={matrix})
second = job("second", runs_on=["linux", "kici:os:*"], needs=[first], run=lambda ctx: None)
{export} = workflow("{name}", on=push(branches="main", tags={tags}), jobs=[first, second], timeout={timeout})
extra = [workflow("{name}-extra", jobs=[job(runs_on="x", run=print)])]
"""


@st.composite
def trees(draw: st.DrawFn) -> dict[str, str]:
    stems = draw(
        st.lists(st.text("abcxyz_", max_size=6).map(lambda t: "w" + t), min_size=1, max_size=4, unique=True)
    )
    files: dict[str, str] = {}
    for index, stem in enumerate(stems):
        name = f"wf{index}"
        files[f"{stem}.py"] = TEMPLATE.format(
            timeout=draw(st.sampled_from(["1", "0.5", "timedelta(minutes=3)", "1.0005"])),
            matrix=draw(st.sampled_from(["None", "[1, 2]", "{'b': [1], 'a': ['x', 'y']}"])),
            export=draw(st.sampled_from(["ci", "zz", "aa"])),
            name=name,
            tags=draw(st.sampled_from(["None", "['v*']"])),
        )
    files["_helper.py"] = "VALUE = 1\n"
    return files


def _compile(root: Path, files: dict[str, str], order: list[str]) -> tuple[str, list[str]]:
    workflows_dir = root / ".kici" / "workflows"
    workflows_dir.mkdir(parents=True)
    for step_index, name in enumerate(order):
        path = workflows_dir / name
        path.write_text(files[name], encoding="utf-8")
        os.utime(path, ns=(step_index * 10**9, step_index * 10**9))
    lock, diagnostics = compile_tree(root / ".kici", root)
    assert lock is not None, [d.format() for d in diagnostics]
    return dump_lock(lock), [d.format() for d in diagnostics]


@pytest.mark.feature("LOCK-09", "CLI-06")
@settings(max_examples=25)
@given(trees(), st.randoms(use_true_random=False))
def test_l1_same_tree_any_order_is_byte_identical(files: dict[str, str], rng: Any) -> None:
    order = sorted(files)
    shuffled = list(order)
    rng.shuffle(shuffled)
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as two:
        first, first_diagnostics = _compile(Path(one), files, order)
        again, _ = _compile(Path(one) / "again", files, order)
        second, second_diagnostics = _compile(Path(two), files, list(reversed(shuffled)))
    assert first == again == second
    assert first_diagnostics == second_diagnostics
    lock = parse_lock(first)
    stems = [n for n in order if not n.startswith("_")]
    assert [w.source.file for w in lock.workflows] == [
        f".kici/workflows/{s}" for s in stems for _ in range(2)
    ]
    assert all(w.source.export.endswith("[0]") for w in lock.workflows[1::2])
