"""One test per definition-time error code (00 §4): the code, the message shape, and the caller's line.

Each case builds the offending object inside a one-line lambda, so the error's location
must be that lambda's line in this file: the user's call, not an SDK frame.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from kici.sdk import (
    All,
    Approval,
    CacheSpec,
    I,
    Init,
    KiciDefinitionError,
    Registry,
    Resources,
    Retry,
    RunsOnAll,
    Spec,
    check_step,
    fixture,
    generic_webhook,
    job,
    kici_event,
    lifecycle,
    parallel,
    pr,
    push,
    release,
    schedule,
    step,
    webhook,
    workflow,
)
from kici.sdk.needs import Need


def work(ctx: Any) -> None:
    return None


def raised(code: str, make: Callable[[], object], message: str) -> KiciDefinitionError:
    """Run ``make``; check the code, the message (a regex, fully matched) and the location."""
    with pytest.raises(KiciDefinitionError) as info:
        make()
    error = info.value
    assert error.code == code
    assert re.fullmatch(message, error.message), error.message
    location = error.location
    assert (location.file, location.line) == (make.__code__.co_filename, make.__code__.co_firstlineno)
    assert location.column >= 1
    assert str(error) == f"{location.file}:{location.line}:{location.column}: error [{code}]: {error.message}"
    return error


@pytest.mark.feature("SDK-02")
def test_e201_run_and_steps() -> None:
    raised(
        "E201",
        lambda: job("x", runs_on="a", run=work, steps=[work]),
        re.escape('job() cannot have both "run" and "steps" -- use one or the other'),
    )


@pytest.mark.feature("SDK-05", "SDK-06")
def test_e202_runs_on_and_runs_on_all() -> None:
    raised(
        "E202",
        lambda: job("x", runs_on="a", runs_on_all="b", run=work),
        re.escape("job('x'): runsOn and runsOnAll are mutually exclusive"),
    )
    raised("E202", lambda: job("x", run=work), re.escape("job('x'): one of runsOn or runsOnAll is required"))
    raised("E202", lambda: job(run=work), re.escape("job(<unnamed>): one of runsOn or runsOnAll is required"))


@pytest.mark.feature("SDK-30")
def test_e203_environment_and_environments() -> None:
    raised(
        "E203",
        lambda: job("x", runs_on="a", run=work, environment="prod", environments=["stg"]),
        re.escape("job('x'): environment and environments are mutually exclusive — use one"),
    )


@pytest.mark.feature("SDK-38")
def test_e204_init_without_a_command() -> None:
    raised(
        "E204",
        lambda: job("x", runs_on="a", run=work, init=["mise", Init(run="  ")]),
        re.escape("job('x'): init[1].run must be a non-empty command"),
    )


@pytest.mark.feature("SDK-28")
def test_e205_check_without_summarize() -> None:
    raised(
        "E205",
        lambda: step("x", work, check=work),
        re.escape("step('x'): summarize is required when check is set"),
    )
    raised(
        "E205",
        lambda: check_step("y", check=work, apply=work),
        re.escape("step('y'): summarize is required when check is set"),
    )


@pytest.mark.feature("SDK-35")
def test_e206_drift_approval_needs_a_check_facet_on_a_step() -> None:
    drift = Approval(when="drift")
    raised(
        "E206",
        lambda: step("x", work, approval=drift),
        re.escape("step('x'): approval.when \"drift\" requires a check facet"),
    )
    raised(
        "E206",
        lambda: job("x", runs_on="a", run=work, approval=drift),
        re.escape('approval.when "drift" is only valid on steps (found at job scope)'),
    )
    raised(
        "E206",
        lambda: workflow("w", jobs=[job("x", runs_on="a", run=work)], approval=drift),
        re.escape('approval.when "drift" is only valid on steps (found at workflow scope)'),
    )


@pytest.mark.feature("SDK-01")
def test_e207_registries_and_install_env() -> None:
    raised(
        "E207",
        lambda: Registry(url="ftp://x", token_secret="prod:TOKEN"),
        re.escape("registry URL must be an http(s) URL (got: 'ftp://x')"),
    )
    raised(
        "E207",
        lambda: Registry(url="https://pypi.example.com/simple", token_secret="TOKEN"),
        re.escape("tokenSecret must use qualified <environment>:<secret-name> syntax (got: 'TOKEN')"),
    )
    jobs = [job("x", runs_on="a", run=work)]
    one = Registry(url="https://a.example.com/simple", token_secret="prod:A")
    two = Registry(url="https://b.example.com/simple", token_secret="prod:B")
    raised(
        "E207",
        lambda: workflow("w", jobs=jobs, registries=[one, two]),
        re.escape("only one registry may be unscoped (the primary index), got 2"),
    )
    raised(
        "E207",
        lambda: workflow("w", jobs=jobs, install_env=["prod:A", "B"]),
        re.escape("install_env[1] must use qualified <environment>:<secret-name> syntax (got: 'B')"),
    )


@pytest.mark.feature("SDK-01")
def test_e207_duplicate_scope_points_at_the_second_registry() -> None:
    first = Registry(url="https://a.example.com/simple", token_secret="prod:A", scope="acme")

    def second() -> Registry:
        return Registry(url="https://b.example.com/simple", token_secret="prod:B", scope="acme")

    registry = second()
    with pytest.raises(KiciDefinitionError) as info:
        workflow("w", jobs=[job("x", runs_on="a", run=work)], registries=[first, registry])
    assert info.value.code == "E207"
    assert info.value.message == "duplicate registry scope 'acme'"
    assert info.value.location.line == second.__code__.co_firstlineno + 1


@pytest.mark.feature("SDK-13", "SDK-14", "SDK-15", "SDK-10")
def test_e208_required_trigger_options() -> None:
    raised("E208", lambda: schedule(cron=" "), re.escape("schedule() requires a non-empty cron expression"))
    raised("E208", lambda: kici_event(name=""), re.escape("kiciEvent() requires a non-empty name"))
    raised("E208", lambda: lifecycle(events=[]), re.escape("lifecycle() requires a non-empty events array"))
    raised("E208", lambda: webhook(events=[]), re.escape("webhook() requires a non-empty events array"))
    raised(
        "E208", lambda: generic_webhook(source=""), re.escape("genericWebhook() requires a non-empty source")
    )


@pytest.mark.feature("SDK-09", "SDK-10")
def test_e208_values_outside_their_literal_union_name_the_allowed_set() -> None:
    raised(
        "E208",
        lambda: pr(events=["opened", "merged"]),
        r"pr\(\): unknown event 'merged' \(allowed: opened, synchronize, reopened, closed, assigned, .*\)",
    )
    raised(
        "E208",
        lambda: release(actions="shipped"),
        re.escape(
            "release(): unknown action 'shipped' "
            "(allowed: published, unpublished, created, edited, deleted, prereleased, released)"
        ),
    )


@pytest.mark.feature("SDK-13")
def test_e209_invalid_cron() -> None:
    raised(
        "E209",
        lambda: schedule(cron="61 * * * *"),
        re.escape("schedule(): invalid cron '61 * * * *': minute field: 61 is out of range 0-59"),
    )


@pytest.mark.feature("SDK-13")
def test_e210_unknown_timezone() -> None:
    raised(
        "E210",
        lambda: schedule(cron="0 3 * * *", timezone="Mars/Olympus"),
        re.escape("schedule(): unknown timezone 'Mars/Olympus'"),
    )
    assert schedule(cron="0 3 * * *", timezone="Europe/Berlin").timezone == "Europe/Berlin"


@pytest.mark.feature("SDK-05")
def test_e211_required_and_excluded_label() -> None:
    raised(
        "E211",
        lambda: job(
            "x", runs_on={"labels": ["Linux", "gpu", "x*"], "exclude": ["gpu", "linux", "x*"]}, run=work
        ),
        re.escape('Job "x": labels and exclude overlap on [Linux, gpu]. ')
        + re.escape("A label cannot be both required and excluded."),
    )


@pytest.mark.feature("SDK-05", "SDK-09")
def test_e212_regexes_the_lock_cannot_express() -> None:
    raised(
        "E212",
        lambda: job("x", runs_on=re.compile("^gpu-", re.VERBOSE), run=work),
        r"job 'x' runsOn: regex /\^gpu-/ uses unsupported flags re\.VERBOSE \(allowed: re\.I, re\.M, re\.S\)",
    )
    raised(
        "E212",
        lambda: job("x", runs_on=re.compile(b"gpu"), run=work),
        re.escape("job 'x' runsOn: regex b'gpu' must be a str pattern, not bytes"),
    )
    raised(
        "E212",
        lambda: push(branches=[re.compile("main", re.ASCII)]),
        r"push\(\) branches: regex /main/ uses unsupported flags re\.ASCII .*",
    )
    raised(
        "E212",
        lambda: job("x", runs_on_all=RunsOnAll([All()]), run=work),
        re.escape("job 'x' runsOnAll: every include group needs at least one label"),
    )


@pytest.mark.feature("SDK-19", "SDK-22")
def test_e213_max_parallel_below_one() -> None:
    raised(
        "E213",
        lambda: job("x", runs_on="a", matrix=[1, 2], max_parallel=0, run=work),
        re.escape("job 'x': maxParallel must be >= 1"),
    )
    raised(
        "E213",
        lambda: parallel([work, work], max_parallel=0, name="checks"),
        re.escape("parallel('checks'): maxParallel must be >= 1"),
    )


@pytest.mark.feature("SDK-22")
def test_e214_parallel_group_shapes() -> None:
    raised("E214", lambda: parallel([]), re.escape("job step: empty parallel group not allowed"))
    inner = parallel([work, work])
    raised(
        "E214",
        lambda: parallel([inner, work]),
        re.escape("job step: nested parallel groups are not supported"),
    )
    raised(
        "E214",
        lambda: parallel([step("a", work), step("a", work)]),
        re.escape("job step: duplicate step name 'a' in parallel group"),
    )


@pytest.mark.feature("SDK-38")
def test_e215_invalid_resources() -> None:
    raised(
        "E215",
        lambda: job("x", runs_on="a", run=work, resources={"memory": "2 tb", "cpus": 0}),
        re.escape(
            'Job "x": invalid resources -- resources.cpus must be in (0, 256], got 0; '
            "resources.memory must look like 512m, 2g or 1.5G, got '2 tb'"
        ),
    )
    big = Resources(requests=Spec(cpus=4), limits=Spec(cpus=2))
    raised(
        "E215",
        lambda: job("x", runs_on="a", run=work, resources=big),
        re.escape('Job "x": invalid resources -- requests.cpus (4) exceeds limits.cpus (2)'),
    )


@pytest.mark.feature("SDK-12", "SDK-13")
def test_e216_schedule_inputs_and_unsupported_descriptors() -> None:
    raised(
        "E216",
        lambda: schedule(cron="0 3 * * *", inputs={"mode": I.string()}),
        re.escape("schedule(): input 'mode' needs a default or optional=True"),
    )
    raised(
        "E216",
        lambda: I.boolean(default="yes"),
        re.escape("I.boolean(): unsupported input descriptor -- ")
        + re.escape("default 'yes' does not fit: expected boolean, got 'yes'"),
    )
    raised(
        "E216",
        lambda: I.enum(description="no values"),
        re.escape("I.enum(): unsupported input descriptor -- enum needs at least one value"),
    )


@pytest.mark.feature("SDK-07")
def test_e217_invalid_when() -> None:
    raised(
        "E217",
        lambda: Need("build", when="sometimes"),
        re.escape("needs 'build': when must be on-success/always/on-skip/on-failure ")
        + re.escape("or a non-empty list of terminal statuses"),
    )


@pytest.mark.feature("SDK-36")
def test_e218_fixture_ids() -> None:
    raised("E218", lambda: fixture("", "push"), re.escape("Fixture ID must be a non-empty string"))
    raised(
        "E218",
        lambda: fixture("main push", "push"),
        re.escape('Fixture ID must not contain whitespace: "main push"'),
    )


@pytest.mark.feature("SDK-32")
def test_e219_bad_outputs_schema() -> None:
    raised(
        "E219",
        lambda: step("x", work, outputs={"version": "str"}),
        re.escape(
            "step('x'): outputs field 'version' must map to a type such as str or list[str], got 'str'"
        ),
    )
    raised(
        "E219",
        lambda: step("x", work, outputs=["version"]),
        re.escape("step('x'): outputs must be an attrs class, a dataclass or a dict of field name to type, ")
        + re.escape("got ['version']"),
    )


@pytest.mark.feature("SDK-25", "SDK-26")
def test_e220_retry_and_cache() -> None:
    raised("E220", lambda: step("x", work, retry=0), re.escape("retry.max_attempts must be >= 1 (got 0)"))
    raised("E220", lambda: CacheSpec(key="", paths=["x"]), re.escape("cache key must be non-empty"))
    raised("E220", lambda: CacheSpec(key="k", paths=[]), re.escape("cache paths must be non-empty"))
    raised(
        "E220",
        lambda: step("x", work, cache={"key": "k", "paths": ["/etc"]}),
        re.escape("cache paths must be repo-relative or start with ~ (got '/etc')"),
    )
    raised(
        "E220",
        lambda: Retry(max_attempts=3, delay=10, max_delay=5),
        re.escape("retry.max_delay (5) must be >= retry.delay (10)"),
    )


@pytest.mark.feature("SDK-06", "SDK-24")
def test_e220_other_literal_unions_and_durations() -> None:
    raised(
        "E220",
        lambda: job("x", runs_on_all="role:web", on_unreachable="wait", run=work),
        re.escape("job('x'): on_unreachable must be one of hold, skip, fail (got 'wait')"),
    )
    raised(
        "E220",
        lambda: step("x", work, timeout=-1),
        re.escape("step('x'): timeout must be > 0 seconds, got -1"),
    )
    raised(
        "E220",
        lambda: job("x", runs_on="a", run=work, grace_period=True),
        re.escape("job('x'): grace_period must be seconds (int, float or timedelta), got True"),
    )
