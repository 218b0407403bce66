"""L5 and L7 and orchestrator re-validation (LOCK-12): valid locks pass, each single violation is reported."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kici.domain.lockfile import (
    ExactLabelMatcher,
    LockFile,
    LockFileParseError,
    LockJob,
    LockRunsOnAll,
    NeedsEntry,
    RegexLabelMatcher,
    dump_lock,
    format_path,
    load_lock,
    validate_lock,
)
from tests.strategies.lockfile import lock_files

pytestmark = pytest.mark.feature("LOCK-12", "LOCK-03")

UNSAFE = ("(a+)+", "(a*)*", "(.*a)*", "([a-z]+)*x", "[")


def _with_job(lock: LockFile, w: int, j: int, job: LockJob) -> LockFile:
    workflow = lock.workflows[w]
    jobs = (*workflow.jobs[:j], job, *workflow.jobs[j + 1 :])
    workflows = (*lock.workflows[:w], attrs.evolve(workflow, jobs=jobs), *lock.workflows[w + 1 :])
    return attrs.evolve(lock, workflows=workflows)


def _static_job_sites(lock: LockFile) -> list[tuple[int, int]]:
    return [
        (w, j)
        for w, workflow in enumerate(lock.workflows)
        for j, job in enumerate(workflow.jobs)
        if isinstance(job, LockJob)
    ]


@given(lock_files())
def test_valid_locks_have_no_issues_and_load(lock: LockFile) -> None:
    assert validate_lock(lock) == []
    assert load_lock(dump_lock(lock)) == lock


@given(lock_files(), st.data())
def test_l5_targeting_violations_are_reported_on_the_job(lock: LockFile, data: st.DataObject) -> None:
    sites = _static_job_sites(lock)
    assume(sites)
    w, j = data.draw(st.sampled_from(sites))
    job = lock.workflows[w].jobs[j]
    assert isinstance(job, LockJob)
    fan_out = LockRunsOnAll(include=((ExactLabelMatcher(value="linux"),),))
    single = (ExactLabelMatcher(value="linux"),)
    how = data.draw(st.sampled_from(["both", "neither", "pick-mismatch", "unsafe-regex"]))
    if how == "both":
        broken = attrs.evolve(job, runs_on=single, runs_on_pick="any", runs_on_all=fan_out)
    elif how == "neither":
        broken = attrs.evolve(job, runs_on=None, runs_on_pick=None, exclude_labels=None, runs_on_all=None)
    elif how == "pick-mismatch":
        broken = attrs.evolve(job, runs_on_pick=None if job.runs_on is not None else "deterministic")
    else:
        bad = RegexLabelMatcher(source=data.draw(st.sampled_from(UNSAFE)), flags="")
        if job.runs_on is not None:
            broken = attrs.evolve(job, runs_on=(*job.runs_on, bad))
        else:
            assert job.runs_on_all is not None
            broken = attrs.evolve(job, runs_on_all=attrs.evolve(job.runs_on_all, exclude=(bad,)))
    issues = validate_lock(_with_job(lock, w, j, broken))
    job_path = format_path(("workflows", w, "jobs", j))
    assert issues
    assert all(issue.path.startswith(job_path) for issue in issues)
    with pytest.raises(LockFileParseError):
        load_lock(dump_lock(_with_job(lock, w, j, broken)))


@given(lock_files(), st.data())
def test_l7_needs_violations_are_reported_on_the_need(lock: LockFile, data: st.DataObject) -> None:
    sites = _static_job_sites(lock)
    assume(sites)
    w, j = data.draw(st.sampled_from(sites))
    job = lock.workflows[w].jobs[j]
    assert isinstance(job, LockJob)
    uuid = str(data.draw(st.uuids()))
    bad = data.draw(
        st.sampled_from(
            [
                uuid,
                uuid.upper(),
                NeedsEntry(name=uuid, run_on=("success",)),
                NeedsEntry(name=job.name, run_on=()),
                NeedsEntry(name=job.name, run_on=("success", "finished")),
                "no-such-job-anywhere",
                job.name,
            ]
        )
    )
    issues = validate_lock(_with_job(lock, w, j, attrs.evolve(job, needs=(*job.needs, bad))))
    need_path = format_path(("workflows", w, "jobs", j, "needs", len(job.needs)))
    assert any(issue.path.startswith(need_path) for issue in issues)
