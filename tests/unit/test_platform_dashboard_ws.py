"""The browser stream ``/ws/browser`` (PRO-30) over real parts, and the bounded fan-out behind it.

A trio-websocket client plays the browser against hypercorn; telemetry enters through the Platform's
sink (or a fake orchestrator connection) into PostgreSQL. The harness is ``test_platform_dashboard``'s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
import trio

from kici.adapters.ws.client import connect
from kici.domain.liveness import LivenessThresholds
from kici.domain.ports import ConnectionClosed, WsConnection
from kici.domain.protocol import (
    AuthFailure,
    AuthRefresh,
    AuthSuccess,
    BrowserAuthRequest,
    BrowserJobStatus,
    BrowserStepStatus,
    Direction,
    ErrorMessage,
    EventLogPayloadChunk,
    EventLogPayloadFetch,
    JobNew,
    JobState,
    LogGap,
    LogLines,
    LogSubscribe,
    LogUnsubscribe,
    Message,
    Ping,
    Pong,
    RunEvent,
    RunNew,
    RunState,
    RunStatus,
    SourceService,
    StatusSubscribe,
    StatusUnsubscribe,
    StepState,
    SubscriptionScope,
    decode,
    encode,
)
from kici.services.platform.telemetry import Broadcaster, Dropped, LogEvent, Subscription
from kici.testing.fake_orchestrator import open_fake_orchestrator
from kici.testing.postgres import PgTestDatabase
from tests.unit.test_platform_dashboard import (
    Platform,
    job_status,
    log_chunk,
    platform,
    run_status,
    running_platform,
    seed,
    step_status,
)

pytestmark = pytest.mark.pg

__all__ = ["platform"]  # the shared fixture, imported so pytest finds it here

M = TypeVar("M", bound=Message)
WITHIN = 5.0


async def receive(conn: WsConnection) -> Message:
    with trio.fail_after(WITHIN):
        return decode(Direction.PLATFORM_TO_BROWSER, await conn.receive())


async def expect(conn: WsConnection, kind: type[M]) -> M:
    message = await receive(conn)
    assert isinstance(message, kind), message
    return message


async def send(conn: WsConnection, message: Message) -> None:
    await conn.send(encode(message))


async def closed(conn: WsConnection) -> ConnectionClosed:
    """Read until the server closes; returns the close (frames before it are skipped)."""
    with trio.fail_after(WITHIN):
        while True:
            try:
                await conn.receive()
            except ConnectionClosed as exc:
                return exc


async def settled(conn: WsConnection) -> None:
    """Nothing is pending for the browser: a ping's pong is the next frame (frames are sent in order)."""
    await send(conn, Ping())
    assert await receive(conn) == Pong()


@asynccontextmanager
async def browser(platform: Platform, who: str | None = None) -> AsyncIterator[WsConnection]:
    """A browser connection, authenticated as ``who`` when given."""
    async with connect(platform.browser_url) as conn:
        if who is not None:
            await send(conn, BrowserAuthRequest(token=platform.tokens[who]))
            success = await expect(conn, AuthSuccess)
            assert success.connection_id
        yield conn


# --- the handshake -------------------------------------------------------------------------------


@pytest.mark.feature("PRO-30")
async def test_auth_with_a_dashboard_token_then_ping_pong(platform: Platform) -> None:
    async with browser(platform, "alice") as conn:
        await send(conn, Ping())
        await expect(conn, Pong)
        await send(conn, AuthRefresh(token=platform.tokens["alice"]))
        await expect(conn, AuthSuccess)


@pytest.mark.feature("PRO-30")
@pytest.mark.parametrize("first", ["unknown token", "revoked token", "subscribe before auth"])
async def test_refused_handshakes_close_4001(platform: Platform, first: str) -> None:
    await platform.accounts.revoke_token(platform.token_ids["bob"])
    messages: dict[str, Message] = {
        "unknown token": BrowserAuthRequest(token="kdt_" + "1" * 64),
        "revoked token": BrowserAuthRequest(token=platform.tokens["bob"]),
        "subscribe before auth": StatusSubscribe(scope=SubscriptionScope.ORG, org_id=platform.orgs["acme"]),
    }
    async with browser(platform) as conn:
        await send(conn, messages[first])
        failure = await expect(conn, AuthFailure)
        assert failure.reason in {"Invalid or expired token", "Authentication required"}
        assert (await closed(conn)).code == 4001


@pytest.mark.feature("PRO-30")
async def test_no_auth_within_the_deadline_closes_4002(pg_platform_database: PgTestDatabase) -> None:
    async with running_platform(pg_platform_database.conninfo, browser_auth_timeout_s=0.2) as platform:
        async with browser(platform) as conn:
            end = await closed(conn)
        assert (end.code, end.reason) == (4002, "Auth timeout")


@pytest.mark.feature("PRO-30")
async def test_a_refresh_with_another_users_token_is_refused(platform: Platform) -> None:
    async with browser(platform, "alice") as conn:
        await send(conn, AuthRefresh(token=platform.tokens["carol"]))
        await expect(conn, AuthFailure)
        assert (await closed(conn)).code == 4001


@pytest.mark.feature("PRO-30")
async def test_malformed_frames_are_answered_and_the_stream_goes_on(platform: Platform) -> None:
    async with browser(platform, "alice") as conn:
        for text in ("{not json", '{"type": "no.such.type"}', '{"type": "log.subscribe", "runId": 1}'):
            await conn.send(text)
            error = await expect(conn, ErrorMessage)
            assert error.code == "INVALID_MESSAGE"
        await send(conn, EventLogPayloadFetch(request_id="q1", org_id=platform.orgs["acme"], delivery_id="d"))
        chunk = await expect(conn, EventLogPayloadChunk)
        assert (chunk.request_id, chunk.is_last, chunk.error is not None) == ("q1", True, True)


# --- live logs -----------------------------------------------------------------------------------


@pytest.mark.feature("PRO-30")
async def test_log_subscription_sends_stored_lines_then_live_ones(platform: Platform) -> None:
    await seed(platform, "acme", "r1")
    org = platform.orgs["acme"]
    async with browser(platform, "alice") as conn:
        await send(conn, LogSubscribe(run_id="r1", job_id="r1-j", step_index=0))
        backlog = await expect(conn, LogLines)
        assert (backlog.lines, backlog.line_count) == (["hello", "world"], 2)
        await platform.sink.record(org, "c", log_chunk("r1", "r1-j", 0, ["live 1"]))
        live = await expect(conn, LogLines)
        assert (live.run_id, live.job_id, live.step_index) == ("r1", "r1-j", 0)
        assert (live.lines, live.line_count) == (["live 1"], 3)
        await platform.sink.record(org, "c", log_chunk("r1", "r1-j", 1, ["another step"]))
        await platform.sink.record(org, "c", log_chunk("r1", "r1-j", 0, ["live 2", "live 3"]))
        assert (await expect(conn, LogLines)).lines == ["live 2", "live 3"], "only the subscribed step"
        await send(conn, LogUnsubscribe(run_id="r1", job_id="r1-j", step_index=0))
        await settled(conn)
        await platform.sink.record(org, "c", log_chunk("r1", "r1-j", 0, ["after unsubscribe"]))
        await settled(conn)
    assert platform.broadcaster.subscriber_count() == 0


@pytest.mark.feature("PRO-30")
async def test_live_lines_from_an_orchestrator_connection_reach_the_browser(platform: Platform) -> None:
    await seed(platform, "acme", "r1")
    async with (
        browser(platform, "bob") as conn,
        open_fake_orchestrator(platform.orch_url, api_key=platform.api_keys["acme"]) as orch,
    ):
        await send(conn, LogSubscribe(run_id="r1", job_id="r1-j", step_index=0, after_line_count=2))
        await settled(conn)
        for n in range(3):
            await orch.send(log_chunk("r1", "r1-j", 0, [f"streamed {n}"]))
            got = await expect(conn, LogLines)
            assert (got.lines, got.line_count) == ([f"streamed {n}"], 3 + n)


@pytest.mark.feature("PRO-30")
async def test_resuming_after_a_line_count_skips_what_the_browser_has(platform: Platform) -> None:
    org = platform.orgs["acme"]
    await seed(platform, "acme", "r1")
    await platform.sink.record(org, "c", log_chunk("r1", "r1-j", 0, ["third", "fourth"]))
    async with browser(platform, "alice") as conn:
        await send(conn, LogSubscribe(run_id="r1", job_id="r1-j", step_index=0, after_line_count=3))
        got = await expect(conn, LogLines)
        assert (got.lines, got.line_count) == (["fourth"], 4)
        await platform.sink.record(org, "c", log_chunk("r1", "r1-j", 0, ["fifth"]))
        assert (await expect(conn, LogLines)).line_count == 5


@pytest.mark.feature("PRO-30")
async def test_a_slow_browser_gets_a_gap_notice_not_a_stalled_platform(
    pg_platform_database: PgTestDatabase,
) -> None:
    fanout = Broadcaster(log_queue_lines=2)
    async with running_platform(pg_platform_database.conninfo, broadcaster=fanout) as platform:
        await seed(platform, "acme", "r1")
        org = platform.orgs["acme"]
        async with browser(platform, "alice") as conn:
            await send(conn, LogSubscribe(run_id="r1", job_id="r1-j", step_index=0, after_line_count=2))
            await settled(conn)
            for n in range(3, 8):  # no checkpoint between: the pump cannot drain in between
                fanout.publish_log(org, LogEvent("r1", "r1-j", 0, (f"l{n}",), n))
            first = await expect(conn, LogLines)
            second = await expect(conn, LogLines)
            gap = await expect(conn, LogGap)
            assert [first.lines, second.lines] == [["l3"], ["l4"]]
            assert (gap.run_id, gap.job_id, gap.step_index, gap.dropped_line_count) == ("r1", "r1-j", 0, 3)
            fanout.publish_log(org, LogEvent("r1", "r1-j", 0, ("l8",), 8))
            after = await expect(conn, LogLines)
            assert (after.lines, after.line_count) == (["l8"], 8)


# --- status --------------------------------------------------------------------------------------


@pytest.mark.feature("PRO-30")
async def test_status_subscription_streams_changes_and_never_regressions(platform: Platform) -> None:
    org = platform.orgs["acme"]
    async with browser(platform, "bob") as conn:
        await send(conn, StatusSubscribe(scope=SubscriptionScope.ORG, org_id=org))
        await settled(conn)
        await platform.sink.record(
            org, "c", run_status("r1", RunState.RUNNING, 2_000, job_count=1, sha="abc")
        )
        new = await expect(conn, RunNew)
        assert (new.run_id, new.status, new.job_count, new.org_id, new.extra) == (
            "r1",
            RunState.RUNNING,
            1,
            org,
            {"sha": "abc"},
        )
        await platform.sink.record(org, "c", job_status("r1", "j1", JobState.RUNNING, 2_100))
        assert (await expect(conn, JobNew)).job_id == "j1"
        await platform.sink.record(org, "c", step_status("r1", "j1", 0, StepState.SUCCESS, 2_200))
        step = await expect(conn, BrowserStepStatus)
        assert (step.step_index, step.extra["state"], step.extra["stepName"]) == (0, "success", "step 0")
        await platform.sink.record(org, "c", job_status("r1", "j1", JobState.SUCCESS, 2_300))
        assert (await expect(conn, BrowserJobStatus)).status is JobState.SUCCESS
        await platform.sink.record(org, "c", run_status("r1", RunState.SUCCESS, 3_000, completed_at=3_000))
        await platform.sink.record(org, "c", run_status("r1", RunState.RUNNING, 2_500))
        await platform.sink.record(org, "c", run_status("r1", RunState.SUCCESS, 3_000))
        event = RunEvent(
            run_id="r1", event_type="note", timestamp_ms=3_100, source_service=SourceService.ORCHESTRATOR
        )
        await platform.sink.record(org, "c", event)
        done = await expect(conn, RunStatus)
        assert (done.status, done.completed_at) == (RunState.SUCCESS, 3_000)
        assert await expect(conn, RunEvent) == event, "the late 'running' and the repeat sent nothing"
        await send(conn, StatusUnsubscribe())
        await settled(conn)
        await platform.sink.record(org, "c", run_status("r2", RunState.RUNNING, 4_000))
        await settled(conn)


# --- tenants -------------------------------------------------------------------------------------


@pytest.mark.feature("PRO-30")
async def test_a_member_cannot_subscribe_to_another_orgs_runs_or_status(platform: Platform) -> None:
    await seed(platform, "globex", "g-run")
    globex = platform.orgs["globex"]
    async with browser(platform, "alice") as conn:
        await send(conn, LogSubscribe(run_id="g-run", job_id="g-run-j", step_index=0))
        theirs = await expect(conn, ErrorMessage)
        await send(conn, LogSubscribe(run_id="nobodys", job_id="j", step_index=0))
        nobodys = await expect(conn, ErrorMessage)
        assert theirs.code == nobodys.code == "NOT_FOUND"
        await send(conn, StatusSubscribe(scope=SubscriptionScope.ORG, org_id=globex))
        assert (await expect(conn, ErrorMessage)).code == "NOT_FOUND"
        await platform.sink.record(globex, "c", log_chunk("g-run", "g-run-j", 0, ["secret"]))
        await platform.sink.record(globex, "c", run_status("g-run", RunState.FAILED, 9_000))
        await settled(conn)
        assert platform.broadcaster.subscriber_count() == 0


@pytest.mark.feature("PRO-30")
async def test_log_stream_org_comes_from_membership_not_the_wire(platform: Platform) -> None:
    await seed(platform, "acme", "same")
    await seed(platform, "globex", "same")
    async with browser(platform, "alice") as conn:
        await send(conn, LogSubscribe(run_id="same", job_id="same-j", step_index=0))
        assert (await expect(conn, LogLines)).lines == ["hello", "world"]
        await platform.sink.record(
            platform.orgs["globex"], "c", log_chunk("same", "same-j", 0, ["globex only"])
        )
        await platform.sink.record(platform.orgs["acme"], "c", log_chunk("same", "same-j", 0, ["acme line"]))
        assert (await expect(conn, LogLines)).lines == ["acme line"]
    async with browser(platform, "dave") as conn:
        await send(conn, LogSubscribe(run_id="same", job_id="same-j", step_index=0))
        assert (await expect(conn, ErrorMessage)).code == "AMBIGUOUS_RUN"


@pytest.mark.feature("PRO-30")
async def test_subscribing_with_a_revoked_token_ends_the_connection(platform: Platform) -> None:
    await seed(platform, "acme", "r1")
    async with browser(platform, "alice") as conn:
        await platform.accounts.revoke_token(platform.token_ids["alice"])
        await send(conn, LogSubscribe(run_id="r1", job_id="r1-j", step_index=0))
        await expect(conn, AuthFailure)
        assert (await closed(conn)).code == 4001


@pytest.mark.feature("PRO-30")
async def test_open_streams_are_cut_once_their_token_is_revoked(pg_platform_database: PgTestDatabase) -> None:
    async with running_platform(pg_platform_database.conninfo, browser_reauth_interval_s=0.1) as platform:
        org = platform.orgs["acme"]
        async with browser(platform, "alice") as conn:
            await send(conn, StatusSubscribe(scope=SubscriptionScope.ORG, org_id=org))
            await settled(conn)
            await platform.accounts.revoke_token(platform.token_ids["alice"])
            failure = await expect(conn, AuthFailure)
            assert failure.reason == "Invalid or expired token"
            assert (await closed(conn)).code == 4001
        await platform.sink.record(org, "c", run_status("r", RunState.RUNNING, 1_000))
        assert platform.broadcaster.subscriber_count() == 0


@pytest.mark.feature("PRO-30")
async def test_a_silent_browser_is_closed_4004(pg_platform_database: PgTestDatabase) -> None:
    thresholds = LivenessThresholds(unhealthy_after_ms=100, stale_after_ms=200)
    async with (
        running_platform(pg_platform_database.conninfo, browser_liveness=thresholds) as platform,
        browser(platform, "alice") as conn,
    ):
        assert (await closed(conn)).code == 4004


# --- the bounded queues --------------------------------------------------------------------------


def _lines(item: Any) -> int:
    return len(item)


@pytest.mark.feature("PRO-30")
async def test_subscription_drops_in_order_and_never_blocks_the_publisher() -> None:
    sub: Subscription[tuple[str, ...]] = Subscription(3, _lines)
    assert sub.offer(("a", "b"))
    assert not sub.offer(("c", "d"))
    assert sub.offer(("e",)), "a smaller batch still fits"
    assert not sub.offer(("f",))
    assert sub.offer(()) is True
    assert await sub.get() == [("a", "b"), Dropped(2), ("e",), Dropped(1), ()]
    assert sub.dropped_total == 3
    assert sub.offer(("g", "h", "i"))
    assert await sub.get() == [("g", "h", "i")]
    sub.close()
    assert not sub.offer(("late",))
    with pytest.raises(trio.EndOfChannel):
        await sub.get()


@pytest.mark.feature("PRO-30")
async def test_broadcaster_fans_out_per_topic_and_forgets_closed_subscriptions() -> None:
    fanout = Broadcaster(log_queue_lines=100, status_queue_messages=1)
    event = LogEvent("r", "j", 0, ("x",), 1)
    with (
        fanout.log_subscription("org", "r", "j", 0) as mine,
        fanout.log_subscription("other-org", "r", "j", 0) as theirs,
        fanout.status_subscription("org") as status,
    ):
        assert fanout.subscriber_count() == 3
        for _ in range(1_000):
            fanout.publish_log("org", event)
            fanout.publish_status("org", Pong())
        assert len(await mine.get()) == 100 + 1
        assert await status.get() == [Pong(), Dropped(999)]
        with trio.move_on_after(0.05):
            await theirs.get()
            pytest.fail("another org's subscriber received a line")
    assert fanout.subscriber_count() == 0
    assert mine.closed
