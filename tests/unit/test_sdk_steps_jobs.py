"""Forms of ``step()``, ``job()`` and ``workflow()``, their normalization, locations and warnings."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest

from kici.sdk import (
    All,
    CacheSpec,
    Container,
    DynamicGroupNeed,
    Hook,
    Job,
    KiciDefinitionError,
    Need,
    Parallel,
    Retry,
    RunsOn,
    RunsOnAll,
    Step,
    Workflow,
    dynamic_group,
    dynamic_job,
    job,
    parallel,
    push,
    step,
    validate_dag,
    workflow,
)
from kici.sdk.dag import DagNode, DuplicateDagNodeError
from kici.sdk.naming import step_entries


def work(ctx: Any) -> None:
    return None


async def async_work(ctx: Any) -> None:
    return None


def line_of(marker: str) -> int:
    """Line number in this file of the unique comment ``# <marker>``."""
    with open(__file__, encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if text.rstrip().endswith(f"# {marker}") and "line_of(" not in text:
                return number
    raise AssertionError(marker)


@step
def bare_decorated(ctx: Any) -> None:
    return None


@step(timeout=5)
def decorated_without_name(ctx: Any) -> None:
    return None


@step("build", outputs={"version": str}, retry=2)  # BUILD
def build(ctx: Any) -> dict[str, str]:
    return {"version": "1"}


@pytest.mark.feature("SDK-03")
def test_step_forms_and_names() -> None:
    assert step(work).name is None
    assert step(run=work).name is None
    assert step("x", work).name == "x"
    assert step("x", run=work).run is work
    assert bare_decorated.name == "bare-decorated"
    assert decorated_without_name.name == "decorated-without-name"
    assert decorated_without_name.timeout == 5
    assert isinstance(build, Step)
    assert build.name == "build"
    assert build.retry is not None
    assert build.retry.max_attempts == 2
    assert build.outputs == {"version": str}


@pytest.mark.feature("SDK-03")
def test_steps_record_the_callers_file_line_and_column() -> None:
    made = step("x", work)  # STEP-CALL
    assert made.location.file == __file__
    assert made.location.line == line_of("STEP-CALL")
    assert made.location.column == len("    made = ") + 1
    assert build.location.line == line_of("BUILD")
    assert build.location.column == 2


@pytest.mark.feature("SDK-03")
def test_bare_callables_become_unnamed_steps_at_their_def_line() -> None:
    built = job("j", runs_on="linux", steps=[work, step("named", work), async_work])
    names = [entry.name for entry in step_entries(built)]
    assert names == ["step-1", "named", "step-2"]
    first = built.steps[0]
    assert isinstance(first, Step)
    assert first.run is work
    assert first.location.line == work.__code__.co_firstlineno


@pytest.mark.feature("SDK-04")
def test_sync_and_async_callables_are_both_accepted_everywhere() -> None:
    built = job(
        "j",
        runs_on="linux",
        steps=[step("a", async_work), step("b", work)],
        on_success=async_work,
        cleanup=Hook(run=async_work, timeout=60),
    )
    assert built.on_success is not None
    assert built.on_success.run is async_work
    assert built.on_success.timeout == 300
    assert built.cleanup is not None
    assert built.cleanup.timeout == 60


@pytest.mark.feature("SDK-02")
def test_job_forms() -> None:
    named = job("lint", runs_on="linux", steps=[work])
    unnamed = job(runs_on="linux", steps=[work])
    single = job("one", runs_on="linux", run=work)
    assert named.name == "lint"
    assert unnamed.name is None
    assert re.fullmatch(r"[0-9a-f]{32}", unnamed.uid)
    assert unnamed.uid != named.uid
    assert single.run is work
    assert [e.name for e in step_entries(single)] == ["step-1"]

    @job("deploy", runs_on="deploy-pool")
    def deploy(ctx: Any) -> None:
        return None

    @job(runs_on="deploy-pool")
    def ship_it(ctx: Any) -> None:
        return None

    assert isinstance(deploy, Job)
    assert deploy.name == "deploy"
    assert deploy.run is not None
    assert deploy.run.__name__ == "deploy"
    assert ship_it.name == "ship-it"


@pytest.mark.feature("SDK-02")
def test_an_unapplied_job_decorator_in_a_workflow_is_an_error() -> None:
    forgotten = job("forgot", runs_on="linux")
    with pytest.raises(KiciDefinitionError, match=r"job\('forgot'\) has no steps"):
        workflow("w", jobs=[forgotten])


@pytest.mark.feature("SDK-03")
def test_an_unapplied_step_decorator_in_a_job_is_an_error() -> None:
    with pytest.raises(KiciDefinitionError, match=r"step\('x'\) was given no function"):
        job("j", runs_on="linux", steps=[step("x")])


@pytest.mark.feature("SDK-38", "SDK-24", "SDK-30", "SDK-26")
def test_job_options_are_normalized() -> None:
    built = job(
        "j",
        runs_on="linux",
        run=work,
        environment="production",
        env={"A": "1"},
        container="python:3.11",
        resources={"memory": "2g", "cpus": 1},
        timeout=timedelta(minutes=15),
        grace_period=0,
        cache={"key": "uv-v1", "paths": ["~/.cache/uv"], "restore_keys": "uv-"},
        init=["mise", "auto"],
        checkout=False,
        description="d",
    )
    assert built.environments == ("production",)
    assert isinstance(built.container, Container)
    assert built.container.image == "python:3.11"
    assert built.resources is not None
    assert built.resources.requests == built.resources.limits
    assert built.timeout == 900.0
    assert built.grace_period == 0
    assert built.cache[0].restore_keys == ("uv-",)
    assert isinstance(built.cache[0], CacheSpec)
    assert built.init == ("mise", "auto")
    dynamic_env = job(
        "k", runs_on="linux", run=work, env=lambda event: {"T": "x"}, environments=[lambda e: "p"]
    )
    assert callable(dynamic_env.env)
    assert callable(dynamic_env.environments[0])


@pytest.mark.feature("SDK-05")
def test_runs_on_forms() -> None:
    pattern = re.compile(r"-canary$", re.I)
    assert job("a", runs_on="linux", run=work).runs_on.labels == ("linux",)  # type: ignore[union-attr]
    assert job("b", runs_on=["linux", "py"], run=work).runs_on.labels == ("linux", "py")  # type: ignore[union-attr]
    from_dict = job("c", runs_on={"labels": ["linux"], "exclude": [pattern], "pick": "any"}, run=work).runs_on
    assert isinstance(from_dict, RunsOn)
    assert from_dict.exclude == (pattern,)
    assert from_dict.pick == "any"
    explicit = RunsOn(["kici:host:deploy-*"], pick="deterministic")
    assert job("d", runs_on=explicit, run=work).runs_on is explicit
    with pytest.raises(KiciDefinitionError, match="runs_on pick must be one of deterministic, any"):
        job("e", runs_on={"labels": ["x"], "pick": "random"}, run=work)


@pytest.mark.feature("SDK-06")
def test_runs_on_all_forms() -> None:
    listed = job("p", runs_on_all=["role:web", "!kici:host:web-canary-*"], run=work).runs_on_all
    assert isinstance(listed, RunsOnAll)
    assert [group.labels for group in listed.include] == [("role:web",)]
    assert listed.exclude == ("kici:host:web-canary-*",)
    explicit = RunsOnAll(include=[All("role:web", "zone:a"), ["role:db"]], exclude=["maint"])
    built = job("q", runs_on_all=explicit, run=work).runs_on_all
    assert built is explicit
    assert [group.labels for group in explicit.include] == [("role:web", "zone:a"), ("role:db",)]


@pytest.mark.feature("SDK-07")
def test_needs_forms() -> None:
    lint = job("lint", runs_on="linux", run=work)
    built = job(
        "x",
        runs_on="linux",
        run=work,
        needs=[lint, "build", Need("test", when="always"), dynamic_group("deploys", when="on-skip")],
    )
    first, second, third, fourth = built.needs
    assert isinstance(first, Need)
    assert first.target is lint
    assert first.run_on == ("success",)
    assert isinstance(second, Need)
    assert second.target == "build"
    assert isinstance(third, Need)
    assert len(third.run_on) == 6
    assert isinstance(fourth, DynamicGroupNeed)
    assert fourth.run_on == ("success", "skipped")
    with pytest.raises(KiciDefinitionError) as info:
        job("y", runs_on="linux", run=work, needs=[dynamic_job("g", lambda g: [])])
    assert info.value.code == "E217"


@pytest.mark.feature("SDK-19", "SDK-06")
def test_ignored_fan_out_options_warn() -> None:
    built = job(
        "w",
        runs_on="linux",
        on_unreachable="skip",
        include_uninitialized=True,
        max_parallel=2,
        fail_fast=True,
        steps=[step("a", work), step("a", work), parallel([work])],
    )
    assert [w.code for w in built.warnings] == ["W002", "W003", "W004", "W005", "W006"]
    assert all(str(w).startswith(f"{__file__}:") for w in built.warnings)
    fanned = job("m", runs_on="linux", matrix={"py": ["3.11"]}, max_parallel=1, fail_fast=False, run=work)
    assert fanned.warnings == ()
    hosts = job("h", runs_on_all="role:web", on_unreachable="skip", max_parallel=1, run=work)
    assert hosts.warnings == ()


@pytest.mark.feature("SDK-22", "SDK-24")
def test_parallel_groups() -> None:
    group = parallel([step("lint", work), work], fail_fast=False, max_parallel=1, name="checks")
    assert isinstance(group, Parallel)
    assert group.name == "checks"
    assert group.fail_fast is False
    assert group.max_parallel == 1
    assert isinstance(group.steps[1], Step)
    assert group.steps[1].name is None
    soft = step("unit", work, continue_on_error=True, timeout=30, retry=Retry(3, backoff="fixed"))
    assert soft.continue_on_error is True
    assert soft.retry is not None
    assert soft.retry.delay == 1


@pytest.mark.feature("SDK-01", "SDK-09")
def test_workflow_normalization_and_errors() -> None:
    built = workflow("ci", on=push(branches="main"), jobs=[job("j", runs_on="linux", run=work)], timeout=1800)
    assert isinstance(built, Workflow)
    assert len(built.triggers) == 1
    assert built.timeout == 1800
    generator = dynamic_job("g", lambda g: [])
    assert workflow("w", jobs=[generator, lambda g: []]).jobs[0] is generator
    with pytest.raises(KiciDefinitionError, match="jobs must list at least one job"):
        workflow("w", jobs=[])
    with pytest.raises(KiciDefinitionError, match=r"jobs= takes jobs"):
        workflow("w", jobs=[step("s", work)])
    with pytest.raises(KiciDefinitionError) as info:
        workflow("w", on="push", jobs=[job("j", runs_on="linux", run=work)])
    assert info.value.code == "E208"


@pytest.mark.feature("SDK-20")
def test_dynamic_job_forms() -> None:
    def generate(g: Any) -> list[Job]:
        return []

    tagged = dynamic_job("deploys", generate)
    aware = dynamic_job("deploys", needs=["discover"], generate=generate)
    assert tagged.group == "deploys"
    assert not tagged.result_aware
    assert tagged.needs == ()
    assert aware.result_aware
    assert isinstance(aware.needs[0], Need)
    assert tagged("ctx") == []
    with pytest.raises(KiciDefinitionError, match="pass the generator once"):
        dynamic_job("g", generate, generate=generate)
    with pytest.raises(KiciDefinitionError, match="a generator function is required"):
        dynamic_job("g")


@pytest.mark.feature("SDK-08")
def test_validate_dag_refuses_duplicate_ids() -> None:
    with pytest.raises(DuplicateDagNodeError):
        validate_dag([DagNode("a"), DagNode("a")])


@pytest.mark.feature("SDK-03")
def test_calls_from_code_without_source_are_ordinary_calls() -> None:
    namespace: dict[str, Any] = {"step": step}
    exec(compile("def f(ctx): pass\nmade = step(f)\n", "<generated>", "exec"), namespace)
    assert namespace["made"].name is None
    assert namespace["made"].location.file == "<generated>"


@pytest.mark.feature("SDK-23")
def test_hooks_at_every_level_become_hook_objects() -> None:
    made = step("s", work, on_cancel=work, cleanup=Hook(run=work, timeout=timedelta(seconds=90)))
    assert made.on_cancel is not None
    assert made.on_cancel.timeout == 300
    assert made.cleanup is not None
    assert made.cleanup.timeout == 90.0
    hooks = {
        name: Hook(run=work, timeout=i + 1) for i, name in enumerate(("on_cancel", "cleanup", "on_success"))
    }
    built = job("j", runs_on="linux", run=work, before_step=work, after_step=work, on_failure=work, **hooks)
    assert all(
        isinstance(getattr(built, n), Hook) for n in ("before_step", "after_step", "on_failure", *hooks)
    )
    flow = workflow("w", jobs=[built], on_cancel=work, cleanup=work, on_success=work, on_failure=work)
    assert all(
        isinstance(getattr(flow, n), Hook) for n in ("on_cancel", "cleanup", "on_success", "on_failure")
    )
    with pytest.raises(KiciDefinitionError, match=r"on_failure must be a callable or Hook"):
        job("j", runs_on="linux", run=work, on_failure="notify")
    with pytest.raises(KiciDefinitionError, match=r"Hook\.timeout must be > 0 seconds"):
        Hook(run=work, timeout=0)
