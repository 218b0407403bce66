"""``kici.domain.dynamic`` by example: generated jobs into lock jobs, acceptance, guard texts, views."""

from __future__ import annotations

import re
from typing import Any

import pytest

from kici.domain.dynamic import (
    DRIFT_DROPPED_REASON,
    DynamicEvalError,
    GuardOutcome,
    GuardVerdict,
    MatrixExpansionError,
    NeedView,
    determinism_guard,
    eval_job_name,
    expand_dynamic_matrix,
    freeze_snapshot,
    group_tag,
    init_job_name,
    lock_job_from_generated,
    needs_view,
    needs_view_json,
    parse_generated_jobs,
)
from kici.domain.lockfile import (
    ExactLabelMatcher,
    FrozenDict,
    LockJob,
    LockRunsOnAll,
    LockStaticMatrix,
    LockStep,
    NeedsEntry,
    RegexLabelMatcher,
)

pytestmark = pytest.mark.feature("EXE-19", "SDK-20")


def raw(name: str, *needs: Any, **extra: Any) -> dict[str, Any]:
    return {
        "_type": "static",
        "name": name,
        "runsOn": [{"kind": "label", "value": "linux"}],
        "runsOnPick": "deterministic",
        "needs": list(needs),
        "steps": [{"name": "step-1", "hasOutputs": False}],
        **extra,
    }


def test_special_job_names() -> None:
    assert eval_job_name("ci", 2) == "__dynamic__ci__2"
    assert init_job_name("pkg-test") == "__init__pkg-test"
    assert group_tag(3, "deploys") == "deploys"
    assert group_tag(3, None) == "__dynamic__3"


def test_labels_are_finished_with_the_compiler_rule() -> None:
    job = lock_job_from_generated(
        raw(
            "x",
            runsOn=[
                {"kind": "label", "value": "linux"},
                {"kind": "label", "value": "gpu-*"},
                {"kind": "pattern", "source": "^x86", "flags": int(re.IGNORECASE | re.UNICODE)},
            ],
            excludeLabels=[{"kind": "label", "value": "slow"}],
        )
    )
    assert job.runs_on is not None
    assert job.runs_on[0] == ExactLabelMatcher(value="linux")
    assert isinstance(job.runs_on[1], RegexLabelMatcher)
    assert re.search(job.runs_on[1].source, "gpu-a100")
    assert job.runs_on[2] == RegexLabelMatcher(source="^x86", flags="i")
    assert job.exclude_labels == (ExactLabelMatcher(value="slow"),)


def test_runs_on_all_groups_are_finished() -> None:
    data = raw("fan")
    del data["runsOn"], data["runsOnPick"]
    data["runsOnAll"] = {
        "include": [[{"kind": "label", "value": "a"}], [{"kind": "label", "value": "b"}]],
        "exclude": [{"kind": "label", "value": "c"}],
    }
    job = lock_job_from_generated(data)
    assert job.runs_on_all == LockRunsOnAll(
        include=((ExactLabelMatcher(value="a"),), (ExactLabelMatcher(value="b"),)),
        exclude=(ExactLabelMatcher(value="c"),),
    )


@pytest.mark.parametrize(
    ("label", "why"),
    [
        ({"kind": "pattern", "source": "(a+)+", "flags": 0}, "ReDoS"),
        ({"kind": "pattern", "source": "(", "flags": 0}, "invalid runs_on label"),
        ({"kind": "pattern", "source": "x", "flags": int(re.VERBOSE)}, "unsupported flags"),
        ({"kind": "exact", "value": "x"}, "invalid runs_on label"),
        ("linux", "invalid runs_on label"),
    ],
)
def test_bad_labels_fail_the_evaluation(label: Any, why: str) -> None:
    with pytest.raises(DynamicEvalError, match=why):
        lock_job_from_generated(raw("x", runsOn=[label]))


def test_a_job_the_lock_cannot_hold_fails_the_evaluation() -> None:
    with pytest.raises(DynamicEvalError, match=r"job 'x' is not a valid job: .*steps"):
        lock_job_from_generated({**raw("x"), "steps": "nope"})
    with pytest.raises(DynamicEvalError, match="must be jobs, got str"):
        lock_job_from_generated("x")


def test_generated_jobs_parse_with_needs_matrix_and_env() -> None:
    jobs = parse_generated_jobs(
        [
            raw("a", matrix={"_type": "static", "values": ["x", "y"]}, env={"K": "v"}),
            raw("b", "a", {"name": "lint", "runOn": ["success", "skipped"]}),
        ],
        existing={"lint", "__dynamic__ci__1"},
        upstreams={"lint"},
    )
    assert [job.name for job in jobs] == ["a", "b"]
    assert jobs[0].matrix == LockStaticMatrix(values=("x", "y"))
    assert jobs[0].env == FrozenDict({"K": "v"})
    assert jobs[1].needs == ("a", NeedsEntry(name="lint", run_on=("success", "skipped")))
    assert jobs[0].steps == (LockStep(name="step-1", has_outputs=False),)


@pytest.mark.parametrize(
    ("jobs", "message"),
    [
        ([raw(f"j{i}") for i in range(101)], "DynamicJobFn generated 101 jobs, exceeding the limit of 100"),
        ([raw("a"), raw("b"), raw("a")], "Duplicate job name 'a' in DynamicJobFn output"),
        ([raw("lint")], "DynamicJobFn generated job 'lint', but the workflow already has a job of that name"),
        (
            [raw("a", {"group": "g", "runOn": ["success"]})],
            "Job 'a' in DynamicJobFn output needs dynamic group 'g': generated jobs may only need jobs by "
            "name, never a DynamicJobFn",
        ),
        ([raw("a", "nowhere")], "Job 'a' in DynamicJobFn output needs unknown job 'nowhere'"),
    ],
)
def test_generated_jobs_the_run_cannot_take(jobs: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(DynamicEvalError) as caught:
        parse_generated_jobs(jobs, existing={"lint"}, upstreams={"lint"})
    assert str(caught.value) == message


def test_guard_messages() -> None:
    assert determinism_guard(["a", "b"], ["b", "a"], "a") == GuardOutcome(GuardVerdict.OK)
    assert determinism_guard(["a", "b"], ["a", "c"], "a") == GuardOutcome(
        GuardVerdict.WARN,
        ("b",),
        ("c",),
        "determinism drift: re-evaluation generated different jobs (dropped: b; added: c); "
        "job 'a' runs with its re-evaluated steps",
    )
    assert determinism_guard(["a", "b"], [], "a") == GuardOutcome(
        GuardVerdict.FAIL,
        message="determinism drift: job 'a' is not generated by re-evaluation "
        "(expected: a, b; re-evaluated: none)",
    )
    assert DRIFT_DROPPED_REASON == "determinism drift: job dropped by re-evaluation on executing agent"


@pytest.mark.feature("EXE-20")
def test_needs_view_of_a_snapshot() -> None:
    snapshot = freeze_snapshot(
        {
            "discover": {"step-1": {"services": ["api"]}},
            "build": {"compile": {"v": 1}, "pack": {}},
            "t (a)": {"step-1": {"ok": True}},
            "t (b)": None,
            "deploy-x": {},
        },
        {
            "discover": "success",
            "build": "success",
            "t (a)": "success",
            "t (b)": "failed",
            "deploy-x": "skipped",
        },
        groups={"deploys": ["deploy-x"]},
        fanouts={"t": ["t (a)", "t (b)"]},
        flat={"discover", "t"},
    )
    view = needs_view(snapshot)
    assert view["discover"] == NeedView("discover", FrozenDict({"services": ("api",)}), "success")
    assert view["build"] == NeedView(
        "build", FrozenDict({"compile": FrozenDict({"v": 1}), "pack": FrozenDict()}), "success"
    )
    assert view["t"] == (
        NeedView("t (a)", FrozenDict({"ok": True}), "success"),
        NeedView("t (b)", FrozenDict(), "failed"),
    )
    assert view["deploys"] == (NeedView("deploy-x", FrozenDict(), "skipped"),)
    as_json = needs_view_json(snapshot)
    assert as_json["discover"] == {"name": "discover", "result": {"services": ["api"]}, "status": "success"}
    assert as_json["t"][1] == {"name": "t (b)", "result": {}, "status": "failed"}


@pytest.mark.feature("SDK-18", "EXE-34")
def test_dynamic_matrix_expansion_messages() -> None:
    with pytest.raises(MatrixExpansionError) as empty:
        expand_dynamic_matrix("pkg", [])
    assert str(empty.value) == (
        "matrix_expansion: dynamic matrix of job 'pkg' produced no combinations (a matrix needs 1 to 256)"
    )
    with pytest.raises(MatrixExpansionError, match="would generate 257 jobs, exceeding the limit of 256"):
        expand_dynamic_matrix("pkg", list(range(257)))
    with pytest.raises(MatrixExpansionError, match="produces the job 'pkg \\(1\\)' twice"):
        expand_dynamic_matrix("pkg", [1, 1.0])
    with pytest.raises(MatrixExpansionError, match="is invalid"):
        expand_dynamic_matrix("pkg", "abc")  # type: ignore[arg-type]
    children = expand_dynamic_matrix("pkg", {"os": ["linux"], "py": [3]}, include=[{"os": "mac", "py": 3}])
    assert [c.name for c in children] == ["pkg (linux, 3)", "pkg (mac, 3)"]


def test_parsed_jobs_are_lock_jobs() -> None:
    (job,) = parse_generated_jobs([raw("only")], existing=set(), upstreams=set())
    assert isinstance(job, LockJob)
