"""Request/response correlation under MockClock (PRO-12): resolve by id, per-kind timeouts, fail all on
close, unknown ids ignored; a hypothesis run checks that every request ends exactly once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.protocol import (
    AgentApiResponse,
    ApprovalOutcome,
    CacheUploadResponse,
    EventEmitResponse,
    Message,
    StepApprovalResolved,
    WebhookAck,
)
from kici.services.correlator import (
    AGENT_API,
    CACHE_UPLOAD,
    DASHBOARD_TIMEOUT_S,
    EVENT_EMIT,
    REQUEST_KINDS,
    STEP_APPROVAL,
    WEBHOOK_RELAY,
    Correlator,
    Disconnected,
    DuplicateRequestError,
    RequestKind,
    RequestTimeout,
    dashboard_kind,
    response_id,
)

pytestmark = pytest.mark.feature("PRO-12")


async def _nothing() -> None:
    await trio.lowlevel.checkpoint()


def _emit_response(request_id: str) -> EventEmitResponse:
    return EventEmitResponse(request_id=request_id, delivery_id=f"d-{request_id}")


async def _request_in_background(
    nursery: trio.Nursery,
    correlator: Correlator[Message],
    kind: RequestKind,
    request_id: str,
    outcomes: dict[str, object],
    *,
    send: Callable[[], Awaitable[None]] = _nothing,
) -> None:
    async def run() -> None:
        try:
            outcomes[request_id] = await correlator.request(kind, request_id, send)
        except (RequestTimeout, Disconnected) as exc:
            outcomes[request_id] = exc

    nursery.start_soon(run)
    await trio.testing.wait_all_tasks_blocked()


def test_the_table_holds_the_spec_timeouts() -> None:
    expected = {
        "cache.upload.request": 30.0,
        "provenance.upload.request": 30.0,
        "cache.user.restore.request": 30.0,
        "cache.user.save.request": 30.0,
        "event.emit": 5.0,
        "agent.api.request": 15.0,
        "job.concurrency.report": 30.0,
        "step.approval-request": None,
        "job.reroute": 15.0,
        "peer.config.reload": 15.0,
        "webhook.relay.start": 5.0,
    }
    assert {kind: row.timeout_s for kind, row in REQUEST_KINDS.items()} == expected
    assert dashboard_kind("dashboard.runs.list").response_types == {"dashboard.runs.list.response"}
    assert dashboard_kind("dashboard.runs.list").timeout_s == DASHBOARD_TIMEOUT_S == 10.0
    with pytest.raises(ValueError, match="timeout_s"):
        RequestKind("x", frozenset({"y"}), 0)


async def test_resolve_by_id_wakes_the_matching_request(autojump_clock: trio.testing.MockClock) -> None:
    correlator: Correlator[Message] = Correlator()
    outcomes: dict[str, object] = {}
    async with trio.open_nursery() as nursery:
        for request_id in ("a", "b"):
            await _request_in_background(nursery, correlator, EVENT_EMIT, request_id, outcomes)
        assert len(correlator) == 2
        assert "a" in correlator
        assert correlator.resolve("b", _emit_response("b"))
        assert not correlator.resolve("b", _emit_response("b"))
        assert correlator.resolve("a", _emit_response("a"))
    assert outcomes == {"a": _emit_response("a"), "b": _emit_response("b")}
    assert len(correlator) == 0


async def test_timeout_follows_the_kind_and_forgets_the_id(autojump_clock: trio.testing.MockClock) -> None:
    correlator: Correlator[Message] = Correlator()
    began = trio.current_time()
    with pytest.raises(RequestTimeout) as raised:
        await correlator.request(EVENT_EMIT, "r1", _nothing)
    assert trio.current_time() - began == pytest.approx(5.0)
    assert (raised.value.kind, raised.value.request_id, raised.value.timeout_s) == ("event.emit", "r1", 5.0)
    assert "r1" not in correlator
    assert not correlator.resolve("r1", _emit_response("r1"))

    began = trio.current_time()
    with pytest.raises(RequestTimeout):
        await correlator.request(AGENT_API, "r2", _nothing)
    assert trio.current_time() - began == pytest.approx(15.0)

    began = trio.current_time()
    with pytest.raises(RequestTimeout):
        await correlator.request(CACHE_UPLOAD, "r3", _nothing, timeout_s=0.5)
    assert trio.current_time() - began == pytest.approx(0.5)


async def test_fail_all_raises_disconnected_everywhere(autojump_clock: trio.testing.MockClock) -> None:
    correlator: Correlator[Message] = Correlator()
    outcomes: dict[str, object] = {}
    async with trio.open_nursery() as nursery:
        for request_id, kind in (("x", EVENT_EMIT), ("y", STEP_APPROVAL), ("z", WEBHOOK_RELAY)):
            await _request_in_background(nursery, correlator, kind, request_id, outcomes)
        assert correlator.fail_all() == 3
        assert correlator.fail_all() == 0
    assert set(outcomes) == {"x", "y", "z"}
    for outcome in outcomes.values():
        assert isinstance(outcome, Disconnected)
        assert outcome.reason == "WebSocket disconnected"
    assert len(correlator) == 0


async def test_approval_waits_without_limit(autojump_clock: trio.testing.MockClock) -> None:
    correlator: Correlator[Message] = Correlator()
    outcomes: dict[str, object] = {}
    resolved = StepApprovalResolved(
        request_id="ap", run_id="r", job_id="j", step_index=0, outcome=ApprovalOutcome.APPROVED
    )
    async with trio.open_nursery() as nursery:
        await _request_in_background(nursery, correlator, STEP_APPROVAL, "ap", outcomes)
        await trio.sleep(7 * 24 * 3600)
        assert outcomes == {}
        assert correlator.resolve_message(resolved)
    assert outcomes == {"ap": resolved}


async def test_an_answer_that_beats_send_is_not_lost(autojump_clock: trio.testing.MockClock) -> None:
    correlator: Correlator[Message] = Correlator()

    async def send_and_get_answered_at_once() -> None:
        assert correlator.resolve("fast", _emit_response("fast"))
        await trio.lowlevel.checkpoint()

    assert await correlator.request(EVENT_EMIT, "fast", send_and_get_answered_at_once) == _emit_response(
        "fast"
    )


async def test_a_failing_send_propagates_and_forgets_the_id(autojump_clock: trio.testing.MockClock) -> None:
    correlator: Correlator[Message] = Correlator()

    async def broken() -> None:
        raise ConnectionError("socket gone")

    with pytest.raises(ConnectionError):
        await correlator.request(EVENT_EMIT, "e", broken)
    assert "e" not in correlator


async def test_duplicate_ids_are_refused(autojump_clock: trio.testing.MockClock) -> None:
    correlator: Correlator[Message] = Correlator()
    outcomes: dict[str, object] = {}
    async with trio.open_nursery() as nursery:
        await _request_in_background(nursery, correlator, EVENT_EMIT, "dup", outcomes)
        with pytest.raises(DuplicateRequestError):
            await correlator.request(EVENT_EMIT, "dup", _nothing)
        correlator.resolve("dup", _emit_response("dup"))
    assert outcomes == {"dup": _emit_response("dup")}


async def test_resolve_message_matches_type_and_id(autojump_clock: trio.testing.MockClock) -> None:
    correlator: Correlator[Message] = Correlator()
    outcomes: dict[str, object] = {}
    async with trio.open_nursery() as nursery:
        await _request_in_background(nursery, correlator, AGENT_API, "api", outcomes)
        await _request_in_background(nursery, correlator, WEBHOOK_RELAY, "relay", outcomes)
        assert not correlator.resolve_message(CacheUploadResponse(request_id="api", upload_url="u"))
        assert not correlator.resolve_message(AgentApiResponse(request_id="unknown", result={}))
        assert correlator.resolve_message(AgentApiResponse(request_id="api", result={"ok": True}))
        ack = WebhookAck(message_id="relay", delivery_id="d")
        assert correlator.resolve_message(ack)
    assert outcomes == {"api": AgentApiResponse(request_id="api", result={"ok": True}), "relay": ack}


def test_response_id_prefers_request_id() -> None:
    assert response_id(_emit_response("q")) == "q"
    assert response_id(WebhookAck(message_id="m", delivery_id="d")) == "m"


@st.composite
def _scripts(draw: st.DrawFn) -> list[tuple[str, int, float]]:
    """Per request: (action, request index, virtual delay) with action resolve | late | close | none."""
    count = draw(st.integers(1, 8))
    return [
        (draw(st.sampled_from(["resolve", "late", "close", "none"])), index, draw(st.floats(0, 9)))
        for index in range(count)
    ]


@given(_scripts())
def test_every_request_ends_exactly_once(script: list[tuple[str, int, float]]) -> None:
    """Whatever answers, timeouts and closes interleave, each request ends once, with one outcome."""

    async def main() -> None:
        correlator: Correlator[Message] = Correlator()
        outcomes: dict[str, list[object]] = {}

        async def request(index: int) -> None:
            request_id = f"r{index}"
            try:
                result: object = await correlator.request(EVENT_EMIT, request_id, _nothing)
            except (RequestTimeout, Disconnected) as exc:
                result = type(exc)
            outcomes.setdefault(request_id, []).append(result)

        async def act(action: str, index: int, delay: float) -> None:
            if action == "resolve":
                await trio.sleep(min(delay, 4.0))
                correlator.resolve(f"r{index}", _emit_response(f"r{index}"))
            elif action == "late":
                await trio.sleep(5.001 + delay)
                assert not correlator.resolve(f"r{index}", _emit_response(f"r{index}"))
            elif action == "close":
                await trio.sleep(min(delay, 4.0))
                correlator.fail_all()

        async with trio.open_nursery() as nursery:
            for _, index, _ in script:
                nursery.start_soon(request, index)
            await trio.testing.wait_all_tasks_blocked()
            for action, index, delay in script:
                nursery.start_soon(act, action, index, delay)
        assert sorted(outcomes) == sorted(f"r{index}" for _, index, _ in script)
        assert all(len(results) == 1 for results in outcomes.values())
        for results in outcomes.values():
            assert results[0] in (RequestTimeout, Disconnected) or isinstance(results[0], EventEmitResponse)
        assert len(correlator) == 0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
