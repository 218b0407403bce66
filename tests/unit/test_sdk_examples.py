"""The example workflows of 00 §1.10 import and build with the SDK, with the shapes they describe."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from kici.sdk import DynamicGroupNeed, DynamicJob, Job, Need, Parallel, Step, Workflow
from kici.sdk.discovery import discover_workflows, load_workflow_module, workflow_files
from kici.sdk.naming import job_names, step_entries

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
REPO = FIXTURES.parent.parent


@pytest.fixture
def loaded() -> Iterator[dict[str, ModuleType]]:
    modules = {path.stem: load_workflow_module(path, FIXTURES, REPO) for path in workflow_files(FIXTURES)}
    yield modules
    for name in list(sys.modules):
        if name.startswith("kici_workflows."):
            del sys.modules[name]


def flows(module: ModuleType) -> dict[str, Workflow]:
    return {wf.name: wf for _, wf in discover_workflows(module)}


def jobs_of(flow: Workflow) -> dict[str, Job]:
    return dict(job_names(flow))


def steps_of(job: Job) -> list[str]:
    return [entry.name for entry in step_entries(job)]


@pytest.mark.feature("SDK-01", "SDK-02", "SDK-03", "SDK-09", "SDK-16", "SDK-17", "SDK-23", "SDK-32")
def test_ci_example(loaded: dict[str, ModuleType]) -> None:
    ci = flows(loaded["ci"])["ci"]
    assert [t.kind for t in ci.triggers] == ["pr", "push"]
    assert ci.timeout == 1800
    jobs = jobs_of(ci)
    assert list(jobs) == ["lint", "test", "deploy"]
    assert steps_of(jobs["lint"]) == ["install", "ruff"]
    assert steps_of(jobs["test"]) == ["step-1", "pytest"]
    assert jobs["test"].matrix == {"python": ("3.11", "3.12", "3.13")}
    assert jobs["test"].max_parallel == 2
    assert steps_of(jobs["deploy"]) == ["build", "upload"]
    deploy = jobs["deploy"]
    assert deploy.environments == ("production",)
    assert deploy.grace_period == 30
    assert deploy.on_failure is not None
    assert deploy.cleanup is not None
    assert deploy.cleanup.timeout == 60
    assert [r.label for r in ci.rules] == ["docs only"]
    assert ci.rules[0].negate
    assert all(not job.warnings for job in jobs.values())


@pytest.mark.feature("SDK-05", "SDK-11", "SDK-12", "SDK-28", "SDK-29", "SDK-30", "SDK-35", "SDK-04")
def test_deploy_example(loaded: dict[str, ModuleType]) -> None:
    deploy = flows(loaded["deploy"])["deploy"]
    assert [t.kind for t in deploy.triggers] == ["push", "dispatch"]
    assert deploy.concurrency is not None
    assert deploy.concurrency.cancel_in_progress
    release = jobs_of(deploy)["release"]
    assert steps_of(release) == ["ensure-dns", "rollout", "healthy"]
    ensure_dns = release.steps[0]
    assert isinstance(ensure_dns, Step)
    assert ensure_dns.check is not None
    assert ensure_dns.summarize is not None
    assert release.runs_on is not None
    assert release.runs_on.labels == ("linux", "kici:host:deploy-*")
    assert callable(release.environments[0])
    assert callable(release.env)
    assert release.approval is not None
    assert release.approval.approvers[0].team == "leads"


@pytest.mark.feature("SDK-18", "SDK-20", "SDK-22", "SDK-07")
def test_monorepo_example(loaded: dict[str, ModuleType]) -> None:
    monorepo = flows(loaded["monorepo"])["monorepo"]
    assert monorepo.hash_files == ("Makefile",)
    jobs = jobs_of(monorepo)
    assert list(jobs) == ["discover", "checks", "pkg-test", "report"]
    group = jobs["checks"].steps[0]
    assert isinstance(group, Parallel)
    assert group.max_parallel == 2
    assert [entry.name for entry in step_entries(jobs["checks"])[0].children] == ["lint", "types", "unit"]
    assert callable(jobs["pkg-test"].matrix)
    generator = monorepo.jobs[3]
    assert isinstance(generator, DynamicJob)
    assert generator.result_aware
    assert generator.group == "deploys"
    needs = jobs["report"].needs
    assert isinstance(needs[1], Need)
    assert len(needs[1].run_on) == 6
    assert isinstance(needs[2], DynamicGroupNeed)
    assert needs[2].run_on == ("success", "skipped")


@pytest.mark.feature("SDK-06", "SDK-13", "SDK-14", "SDK-19", "SDK-40")
def test_fleet_example(loaded: dict[str, ModuleType]) -> None:
    found = flows(loaded["fleet"])
    assert list(found) == ["fleet-nightly", "fleet-audit"]
    nightly = found["fleet-nightly"]
    (schedule,) = nightly.triggers
    assert schedule.kind == "schedule"
    assert schedule.timezone == "Europe/Berlin"
    patch = jobs_of(nightly)["patch"]
    assert patch.runs_on_all is not None
    assert patch.runs_on_all.exclude == ("kici:host:web-canary-*",)
    assert patch.on_unreachable == "skip"
    assert patch.max_parallel == 1
    assert patch.warnings == ()
    assert [r.label for r in patch.steps[0].rules] == ["only on first host"]  # type: ignore[union-attr]
    assert [t.kind for t in found["fleet-audit"].triggers] == ["kici_event", "workflow_complete"]
