"""The Platform link's pure-ish parts: the upstream EventBuffer, pacing, invalid-input reactions,
source registration entries and the ``state.replay`` frames (PRO-07, PRO-20, PRO-22, PRO-28)."""

from __future__ import annotations

import uuid
from collections import deque
from datetime import UTC, datetime

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.config.schema import Mode, OrchestratorConfig, PlatformConfig, ServerConfig
from kici.domain.config.sources import SecretKind, SecretRef, SourceConfig, SourceProvider
from kici.domain.execution.states import CheckMode, RunStatus
from kici.domain.protocol import (
    ActorApiKey,
    ActorPlatformOperator,
    ActorServiceAccount,
    ActorSystem,
    ActorUser,
    DashboardErrorCode,
    DashboardErrorFrame,
    DecodeError,
    Direction,
    Heartbeat,
    JobSnapshot,
    Message,
    RunCancelResponse,
    RunSnapshot,
    RunState,
    SourceEntry,
    decode,
    encode,
)
from kici.domain.protocol import SourceProvider as WireProvider
from kici.domain.protocol import SourceSubtype as WireSubtype
from kici.domain.ratelimit import Allow, RateLimitConfig, WsRateLimiter
from kici.domain.store import RunRecord
from kici.services.connection import Ignore, Reply
from kici.services.orchestrator.platform_link import (
    LinkSettings,
    PlatformInputPolicy,
    actor_name,
    links_to_platform,
    source_entries,
)
from kici.services.orchestrator.upstream import (
    EventBuffer,
    Pacer,
    execution_status,
    replay_frames,
    run_snapshot,
)

SMALL = 8


def frame(n: int) -> Message:
    return Heartbeat(timestamp=n)


# --- the EventBuffer (PRO-07) --------------------------------------------------------------------------

ops = st.lists(st.sampled_from(["put", "pop", "requeue"]), max_size=120)


@pytest.mark.feature("PRO-07", "PRO-22")
@given(ops)
def test_the_event_buffer_keeps_the_newest_frames_in_order_and_counts_the_rest(steps: list[str]) -> None:
    buffer = EventBuffer(SMALL)
    model: deque[int] = deque()
    dropped = 0
    taken: int | None = None
    for index, op in enumerate(steps):
        if op == "put":
            if len(model) >= SMALL:
                model.popleft()
                dropped += 1
            model.append(index)
            buffer.put(frame(index))
        elif op == "pop":
            popped = buffer.pop()
            expected = model.popleft() if model else None
            assert (popped.timestamp if isinstance(popped, Heartbeat) else None) == expected
            taken = expected
        elif taken is not None:
            if len(model) >= SMALL:
                dropped += 1
            else:
                model.appendleft(taken)
            buffer.requeue(frame(taken))
            taken = None
        assert len(buffer) <= SMALL
        assert [m.timestamp for m in buffer if isinstance(m, Heartbeat)] == list(model)
        assert buffer.dropped == dropped
    buffer.reset_dropped()
    assert buffer.dropped == 0


@pytest.mark.feature("PRO-07")
async def test_get_waits_for_a_frame() -> None:
    buffer = EventBuffer(4)
    got: list[Message] = []

    async def consumer() -> None:
        got.append(await buffer.get())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        buffer.put(frame(1))
    assert got == [frame(1)]


# --- pacing --------------------------------------------------------------------------------------------


@pytest.mark.feature("PRO-22")
@given(st.lists(st.integers(min_value=1, max_value=400_000), min_size=1, max_size=600))
def test_paced_frames_never_trip_the_platforms_rate_limiter(sizes: list[int]) -> None:
    async def main() -> float:
        pacer = Pacer()
        limiter = WsRateLimiter(RateLimitConfig())
        for size in sizes:
            await pacer.wait(size)
            assert isinstance(limiter.check(size, False, trio.current_time() * 1000.0), Allow)
        return trio.current_time()

    elapsed = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    frames_per_s = 100 * 0.8
    assert elapsed >= (len(sizes) - 200 * 0.8) / frames_per_s - 0.01


@pytest.mark.feature("PRO-22")
def test_direct_frames_are_charged_without_waiting() -> None:
    async def main() -> float:
        pacer = Pacer(RateLimitConfig(message_capacity=10, messages_per_s=10), share=1.0)
        for _ in range(10):
            pacer.charge(100)
        await pacer.wait(100)
        return trio.current_time()

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) >= 0.099


# --- invalid input from the Platform (20 §2) ------------------------------------------------------------


def decode_error(text: str) -> DecodeError:
    with pytest.raises(DecodeError) as caught:
        decode(Direction.PLATFORM_TO_ORCH, text)
    return caught.value


@pytest.mark.feature("PRO-28")
def test_only_dashboard_requests_with_a_request_id_get_an_error_frame() -> None:
    policy = PlatformInputPolicy(orch_version="9.9")
    assert isinstance(policy.reaction(decode_error("{nope")), Ignore)
    assert isinstance(policy.reaction(decode_error('{"type": "no.such", "requestId": "r"}')), Ignore)
    assert isinstance(
        policy.reaction(decode_error('{"type": "webhook.relay.start", "messageId": 1}')), Ignore
    )
    assert isinstance(policy.reaction(decode_error('{"type": "dashboard.nope"}')), Ignore)

    unknown = policy.reaction(decode_error('{"type": "dashboard.nope", "requestId": "r1"}'))
    assert isinstance(unknown, Reply)
    assert isinstance(unknown.message, DashboardErrorFrame)
    assert (unknown.message.code, unknown.message.orch_version) == (
        DashboardErrorCode.UNSUPPORTED_REQUEST_TYPE,
        "9.9",
    )
    invalid = policy.reaction(decode_error('{"type": "run.cancel.request", "requestId": "r2"}'))
    assert isinstance(invalid, Reply)
    assert isinstance(invalid.message, RunCancelResponse)
    assert (invalid.message.request_id, invalid.message.code) == ("r2", DashboardErrorCode.INVALID_PAYLOAD)
    assert encode(invalid.message).startswith('{"type":"run.cancel.response"')


@pytest.mark.feature("PRO-28")
def test_the_actor_names_who_acted() -> None:
    assert actor_name(ActorUser(sub="u1")) == "user:u1"
    assert actor_name(ActorApiKey(key_id="k1", owner_sub="u1")) == "api_key:k1"
    assert actor_name(ActorServiceAccount(id="sa")) == "service_account:sa"
    assert actor_name(ActorPlatformOperator(sub="op", reason="support ticket 42")) == "platform_operator:op"
    assert actor_name(ActorSystem()) == "system"


# --- registration and settings (PRO-20) -----------------------------------------------------------------


def source(name: str, provider: SourceProvider, *, enabled: bool = True) -> SourceConfig:
    key = "github:1" if provider is SourceProvider.GITHUB else f"generic:__default__:{name}"
    return SourceConfig(
        name=name,
        provider=provider,
        routing_key=key,
        enabled=enabled,
        secrets=(SecretRef(SecretKind.VALUE, "s"),),
    )


@pytest.mark.feature("PRO-20")
def test_every_enabled_source_is_registered_with_its_wire_provider() -> None:
    entries = source_entries(
        [
            source("gh", SourceProvider.GITHUB),
            source("hook", SourceProvider.GENERIC),
            source("forge", SourceProvider.UNIVERSAL_GIT),
            source("dir", SourceProvider.LOCAL),
            source("off", SourceProvider.GENERIC, enabled=False),
        ]
    )
    assert entries == [
        SourceEntry(
            provider=WireProvider.GITHUB, routing_key="github:1", name="gh", subtype=WireSubtype.GITHUB_APP
        ),
        SourceEntry(
            provider=WireProvider.GENERIC,
            routing_key="generic:__default__:hook",
            name="hook",
            subtype=WireSubtype.GENERIC_WEBHOOK,
        ),
        SourceEntry(
            provider=WireProvider.GENERIC,
            routing_key="generic:__default__:forge",
            name="forge",
            subtype=WireSubtype.UNIVERSAL_GIT,
        ),
        SourceEntry(
            provider=WireProvider.GENERIC,
            routing_key="generic:__default__:dir",
            name="dir",
            subtype=WireSubtype.LOCAL,
        ),
    ]
    assert source_entries([]) == []


@pytest.mark.feature("PRO-20")
def test_platform_and_hybrid_modes_link_and_need_url_and_token() -> None:
    linked = OrchestratorConfig(
        server=ServerConfig(mode=Mode.HYBRID), platform=PlatformConfig(url="wss://p.example/ws", token="t0k")
    )
    assert links_to_platform(linked)
    assert not links_to_platform(OrchestratorConfig(server=ServerConfig(mode=Mode.INDEPENDENT)))
    settings = LinkSettings.from_config(linked, "orch-1")
    assert (settings.url, settings.token, settings.instance_id, settings.mode.value) == (
        "wss://p.example/ws",
        "t0k",
        "orch-1",
        "hybrid",
    )
    assert "t0k" not in repr(settings)
    with pytest.raises(ValueError, match=r"platform\.url"):
        LinkSettings.from_config(OrchestratorConfig(server=ServerConfig(mode=Mode.PLATFORM)))


# --- state.replay frames --------------------------------------------------------------------------------


def snapshot(jobs: int) -> RunSnapshot:
    return RunSnapshot(
        run_id=str(uuid.uuid4()),
        workflow_name="ci",
        status=RunState.HELD,
        started_at=int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000),
        job_count=jobs,
        jobs=[
            JobSnapshot(job_id=str(uuid.uuid4()), job_name=f"job-{n}", status="queued") for n in range(jobs)
        ],
    )


@pytest.mark.feature("PRO-20")
@given(
    st.lists(st.integers(min_value=0, max_value=40), max_size=25),
    st.integers(min_value=400, max_value=20_000),
)
def test_replay_frames_carry_every_run_once_in_order_within_the_size(jobs: list[int], limit: int) -> None:
    snapshots = [snapshot(n) for n in jobs]
    frames = replay_frames(snapshots, now_ms=1, new_id=lambda: str(uuid.uuid4()), max_bytes=limit)
    assert [run for f in frames for run in f.runs] == snapshots
    assert frames
    for f in frames:
        assert len(encode(f).encode()) <= limit + 200 or len(f.runs) == 1
        assert f.runs or len(frames) == 1
    assert len({f.message_id for f in frames}) == len(frames)


@pytest.mark.feature("PRO-22")
def test_held_is_reported_live_as_pending_and_replayed_as_held() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    run = RunRecord(
        run_id=uuid.uuid4(),
        workflow_name="deploy",
        status=RunStatus.HELD,
        check_mode=CheckMode.APPLY,
        drift_detected=False,
        is_test_run=False,
        created_at=now,
        updated_at=now,
        event="push",
    )
    live = execution_status(run, 0, message_id="m1", now_ms=5)
    assert (live.status, live.started_at, live.trigger_event, live.job_count) == (
        RunState.PENDING,
        int(now.timestamp() * 1000),
        "push",
        0,
    )
    assert run_snapshot(run, []).status is RunState.HELD
