"""Run-time helpers of the SDK: idempotent work, waits, fan-out rules, typed inputs, events."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from kici.sdk import (
    Applied,
    Fanout,
    I,
    InputValidationError,
    KiciDefinitionError,
    RuleContext,
    Skipped,
    Succeeded,
    TimedOut,
    WaitForTimeoutError,
    check_step,
    define_dispatch_inputs,
    define_event,
    idempotent,
    idempotent_step,
    is_event_type,
    only_on_fanout_index,
    only_on_first_host,
    only_on_last_host,
    rule,
    wait_for,
    wait_for_step,
)
from kici.sdk.inputs import coerce, validate_inputs


class Clock:
    """A fake monotonic clock: ``sleep`` advances it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class FakeLog:
    lines: list[str] = field(default_factory=list)

    def info(self, message: str) -> None:
        self.lines.append(message)


@dataclass
class FakeCtx:
    log: FakeLog = field(default_factory=FakeLog)
    dispatch_inputs: dict[str, Any] = field(default_factory=dict)


@pytest.mark.feature("SDK-28")
def test_idempotent_applies_only_drift() -> None:
    applied: list[Any] = []
    assert idempotent(lambda: None, applied.append, when_in_sync=lambda: "ok") == Skipped("ok")
    assert idempotent(lambda: None, applied.append) == Skipped(None)
    assert applied == []
    outcome = idempotent(lambda: {"fqdn": "a"}, lambda d: applied.append(d) or "made", summarize=str)
    assert outcome == Applied({"fqdn": "a"}, "made")
    assert applied == [{"fqdn": "a"}]
    assert idempotent(dict, lambda d: "applied") == Applied({}, "applied")


@pytest.mark.feature("SDK-28")
def test_idempotent_step_always_applies_and_logs() -> None:
    made = idempotent_step(
        "ensure-dns",
        check=lambda ctx: {"fqdn": "api"},
        apply=lambda ctx, drift: {"created": drift["fqdn"]},
        summarize=lambda drift: f"create A {drift['fqdn']}",
    )
    assert made.check is None
    assert made.name == "ensure-dns"
    ctx = FakeCtx()
    assert made.run(ctx) == {"created": "api"}
    assert ctx.log.lines == ["ensure-dns: applying create A api"]
    in_sync = idempotent_step(
        "noop", check=lambda ctx: None, apply=lambda ctx, d: 1, when_in_sync=lambda ctx: 2
    )
    assert in_sync.run(FakeCtx()) == 2


@pytest.mark.feature("SDK-28")
def test_check_step_carries_the_check_facet() -> None:
    made = check_step(
        "ensure-dns",
        check=lambda ctx: None,
        apply=lambda ctx, drift: {},
        summarize=lambda d: "x",
        when_in_sync=lambda ctx: {"created": False},
        continue_on_error=True,
        timeout=60,
    )
    assert made.check is not None
    assert made.summarize is not None
    assert made.when_in_sync is not None
    assert made.continue_on_error is True
    assert made.timeout == 60


@pytest.mark.feature("SDK-29")
def test_wait_for_polls_until_a_value() -> None:
    clock = Clock()
    answers = iter([None, ConnectionError("refused"), False, 200])

    def check() -> Any:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    outcome = wait_for(
        check, interval=5, timeout=60, on_success=lambda v: v * 2, clock=clock, sleep=clock.sleep
    )
    assert outcome == Succeeded(200, 15_000, 4, 400)
    assert clock.sleeps == [5, 5, 5]


@pytest.mark.feature("SDK-29")
def test_wait_for_checks_the_deadline_before_each_poll() -> None:
    clock = Clock()
    polls: list[float] = []
    with pytest.raises(WaitForTimeoutError) as info:
        wait_for(lambda: polls.append(clock.now), interval=4, timeout=10, clock=clock, sleep=clock.sleep)
    assert polls == [0, 4, 8]
    assert clock.sleeps == [4, 4, 2]
    assert (info.value.step_name, info.value.elapsed_ms, info.value.attempts) == ("waitFor", 10_000, 3)
    late = Clock()
    outcome = wait_for(
        lambda: 1, initial_delay=10, timeout=5, on_timeout=lambda: "gave up", clock=late, sleep=late.sleep
    )
    assert outcome == TimedOut(10_000, 0, "gave up")


@pytest.mark.feature("SDK-29")
def test_wait_for_can_propagate_errors() -> None:
    clock = Clock()

    def broken() -> None:
        raise ValueError("bad probe")

    with pytest.raises(ValueError, match="bad probe"):
        wait_for(broken, swallow_errors=False, clock=clock, sleep=clock.sleep)
    with pytest.raises(KiciDefinitionError, match="interval must be > 0 seconds"):
        wait_for(broken, interval=0)


@pytest.mark.feature("SDK-29")
def test_wait_for_step_passes_ctx_when_the_check_takes_it() -> None:
    seen: list[Any] = []
    ctx = FakeCtx()
    with_ctx = wait_for_step(
        "healthy", check=lambda c: seen.append(c) or True, on_success=lambda v: {"ok": v}
    )
    assert with_ctx.name == "healthy"
    assert with_ctx.run(ctx) == {"ok": True}
    assert seen == [ctx]
    bare = wait_for_step("up", check=lambda: "yes", timeout=1)
    assert bare.run(ctx) is None


@pytest.mark.feature("SDK-40", "SDK-16")
def test_fan_out_rules() -> None:
    first, last, second = only_on_first_host(), only_on_last_host(), only_on_fanout_index(1)
    for index, expected in ((0, (True, False, False)), (1, (False, False, True)), (2, (False, True, False))):
        ctx = RuleContext(fanout=Fanout(index, 3))
        assert tuple(r.evaluate(ctx)[0] for r in (first, last, second)) == expected
    assert only_on_first_host().evaluate(RuleContext())[0]
    assert only_on_last_host().evaluate(object())[0]
    with pytest.raises(KiciDefinitionError, match="index must be an int >= 0"):
        only_on_fanout_index(-1)


@pytest.mark.feature("SDK-16")
def test_rules_without_check_pass_and_async_checks_do_not() -> None:
    assert rule("always").evaluate(RuleContext()) == (True, None)

    async def remote(ctx: Any) -> bool:
        await asyncio.sleep(0)
        return True

    passed, error = rule("remote", remote).evaluate(RuleContext())
    assert not passed
    assert error == "rule 'remote': checks must be synchronous functions"


@pytest.mark.feature("SDK-12")
def test_dispatch_inputs_read_view_and_coercion() -> None:
    inputs = define_dispatch_inputs(region=I.enum("eu", "us", default="eu"), retries=I.integer(optional=True))
    view = inputs.read(FakeCtx(dispatch_inputs={"region": "us"}))
    assert view.region == "us"
    assert view.retries is None
    assert dict(view) == {"region": "us", "retries": None}
    with pytest.raises(AttributeError, match="no input named 'zone'"):
        _ = view.zone
    assert [coerce(I.boolean(), t) for t in ("true", "YES", "1", "false", "no", "0")] == [True] * 3 + [
        False
    ] * 3
    assert coerce(I.number(), "2.5") == 2.5
    assert coerce(I.number(nullable=True), "null") is None
    assert coerce(I.string(nullable=True), "null") == "null"
    with pytest.raises(InputValidationError, match=r"^input 'region': expected one of eu, us, got 'mars'$"):
        coerce(inputs.fields["region"], "mars", name="region")
    assert validate_inputs(inputs.fields, {}) == {"region": "eu"}
    with pytest.raises(InputValidationError, match="input 'zone': unknown input"):
        validate_inputs(inputs.fields, {"zone": "a"})
    with pytest.raises(InputValidationError, match="input 'n': is required"):
        validate_inputs({"n": I.integer()}, {})
    with pytest.raises(InputValidationError, match=r"expected a string matching /\^v/"):
        validate_inputs({"tag": I.string(pattern="^v")}, {"tag": "1.0"})


@pytest.mark.feature("SDK-14")
def test_events() -> None:
    patched = define_event("fleet-patched", {"hosts": list[str], "mode": str})
    assert patched.name == "fleet-patched"

    @dataclass
    class Event:
        type: str

    assert is_event_type(Event("push"), "push")
    assert not is_event_type(Event("push"), "tag")
    with pytest.raises(ValueError, match="unknown event type 'pushed'"):
        is_event_type(Event("push"), "pushed")
