"""The agent's link against a scripted orchestrator over a real WebSocket on loopback: the handshake and
register fields, permanent stop on refusal, the dispatch gate, cancel routing, garbage tolerance, and the
outbound buffers replayed after a reconnect with the gap marker (PRO-06..11, PRO-14..16, EXE-36).

The module also holds the harness the other ``test_agent_link_*`` suites use: `ScriptedOrchestrator`
(the orchestrator side, scripted per test; it serves real trio-websocket connections through
``serve_hub`` and in-memory ones alike) and `running_link` (an `AgentLink` with a `FakeJobs`).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import attrs
import pytest
import trio
from structlog.testing import capture_logs

from kici.adapters.ws.client import connect
from kici.domain.liveness import LivenessThresholds
from kici.domain.ports import ConnectionClosed, RemoteAddress, WsConnection, WsConnector
from kici.domain.protocol import (
    AgentAuthRequest,
    AgentLog,
    AgentRegister,
    AgentStatus,
    AuthFailure,
    AuthSuccess,
    CloseCode,
    ConfigAck,
    DecodeError,
    Direction,
    Heartbeat,
    InFlightJob,
    JobAck,
    JobCancel,
    JobDispatch,
    JobHeartbeat,
    JobReject,
    JobState,
    JobStatus,
    LogChunk,
    Message,
    RegisterAck,
    RejectReason,
    StepState,
    StepStatus,
    decode,
    encode,
)
from kici.services.agent.identity import AgentIdentity, HostFacts, register_labels
from kici.services.agent.link import AUTH_FIX, AgentLink, LinkExit, LinkSettings, LinkState
from kici.testing.fake_agent import serve_hub
from kici.testing.fake_jobs import FakeJobs

M = TypeVar("M", bound=Message)

WAIT_S = 10.0
TOKEN = "kat_" + "ab" * 32
FACTS = HostFacts(
    hostname="Build-1",
    system="Linux",
    machine="x86_64",
    os_release="6.1.0",
    os_version="#1 SMP",
    total_memory_mb=2048,
    cpu_count=2,
    python_version="3.11.9",
    running_as_user="ci",
    running_as_uid=1000,
)
IDENTITY = AgentIdentity(
    agent_id="agent-1", labels=register_labels(["linux", "GPU"], FACTS), facts=FACTS, properties={"rack": "b"}
)
FAST = LinkSettings(
    token=TOKEN,
    heartbeat_interval_s=0.2,
    max_reconnect_delay_ms=50,
    handshake_timeout_s=1.0,
    probe_interval_s=0.1,
    liveness=LivenessThresholds(unhealthy_after_ms=300, stale_after_ms=600),
    log_batch_interval_s=0.02,
)


# --- the scripted orchestrator ------------------------------------------------------------------


class OrchConn:
    """One agent connection as the scripted orchestrator sees it: every frame, in order."""

    def __init__(self, conn: WsConnection, orch: ScriptedOrchestrator) -> None:
        self.conn = conn
        self.orch = orch
        self.frames: list[Message] = []
        self.closed: ConnectionClosed | None = None
        self._changed = trio.Event()

    async def read_loop(self) -> None:
        try:
            while True:
                text = await self.conn.receive()
                try:
                    message = decode(Direction.AGENT_TO_ORCH, text)
                except DecodeError as exc:
                    raise AssertionError(f"the agent sent an undecodable frame: {text!r}") from exc
                self.frames.append(message)
                self._touch()
                await self.orch.react(self, message)
        except ConnectionClosed as exc:
            self.closed = exc
        finally:
            self._touch()

    def _touch(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def of(self, kind: type[M]) -> list[M]:
        return [frame for frame in self.frames if isinstance(frame, kind)]

    def without_heartbeats(self) -> list[Message]:
        return [frame for frame in self.frames if not isinstance(frame, Heartbeat)]

    async def wait_for(
        self,
        kind: type[M],
        where: Callable[[M], bool] | None = None,
        *,
        count: int = 1,
        within: float = WAIT_S,
    ) -> M:
        """The ``count``-th frame of ``kind`` (matching ``where``), waiting for it."""
        with trio.fail_after(within):
            while True:
                found = [f for f in self.of(kind) if where is None or where(f)]
                if len(found) >= count:
                    return found[count - 1]
                if self.closed is not None:
                    raise AssertionError(f"closed ({self.closed}) before {count} x {kind.TYPE} arrived")
                await self._changed.wait()

    async def wait_closed(self, within: float = WAIT_S) -> ConnectionClosed:
        with trio.fail_after(within):
            while self.closed is None:
                await self._changed.wait()
        return self.closed

    async def send(self, message: Message) -> None:
        await self.conn.send(encode(message))

    async def send_text(self, text: str) -> None:
        await self.conn.send(text)

    async def close(self, code: int = 1001, reason: str = "going away") -> None:
        await self.conn.close(code, reason)


@attrs.define
class ScriptedOrchestrator:
    """The orchestrator side of 20 §5.2, answering the handshake as configured.

    ``auth``: ``accept`` (auth.success), ``reject`` (auth.failure + 4010) or ``ignore`` (the test answers).
    ``ack_register``: answer ``agent.register`` with ``register.ack`` (else the test does).
    """

    auth: str = "accept"
    ack_register: bool = True
    reject_reason: str = "Invalid or expired token"
    connections: list[OrchConn] = attrs.field(factory=list)
    _changed: trio.Event = attrs.field(factory=trio.Event)

    async def serve(self, conn: WsConnection, remote_addr: str) -> None:
        orch_conn = OrchConn(conn, self)
        self.connections.append(orch_conn)
        self._changed.set()
        self._changed = trio.Event()
        await orch_conn.read_loop()

    async def react(self, conn: OrchConn, message: Message) -> None:
        if isinstance(message, AgentAuthRequest):
            if self.auth == "accept":
                await conn.send(AuthSuccess(connection_id=str(uuid.uuid4())))
            elif self.auth == "reject":
                await conn.send(AuthFailure(reason=self.reject_reason))
                await conn.close(CloseCode.AGENT_AUTH_FAILED, self.reject_reason)
        elif isinstance(message, AgentRegister) and self.ack_register:
            await conn.send(register_ack(message))

    async def connection(self, index: int, within: float = WAIT_S) -> OrchConn:
        with trio.fail_after(within):
            while len(self.connections) <= index:
                await self._changed.wait()
        return self.connections[index]


def register_ack(register: AgentRegister) -> RegisterAck:
    return RegisterAck(agent_id=register.agent_id, labels=register.labels)


@asynccontextmanager
async def scripted(**options: object) -> AsyncIterator[tuple[ScriptedOrchestrator, str]]:
    orch = ScriptedOrchestrator(**options)  # type: ignore[arg-type]
    async with serve_hub(orch, graceful_timeout=0.5) as url:
        yield orch, url


# --- the link under test ------------------------------------------------------------------------


@attrs.define
class Running:
    link: AgentLink
    jobs: FakeJobs
    exit: LinkExit | None = None
    done: trio.Event = attrs.field(factory=trio.Event)

    async def wait_exit(self, within: float = WAIT_S) -> LinkExit:
        with trio.fail_after(within):
            await self.done.wait()
        assert self.exit is not None
        return self.exit


class WallClock:
    """A settable epoch-ms clock for gap-marker arithmetic."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self.ms = start_ms

    def __call__(self) -> int:
        return self.ms


@asynccontextmanager
async def running_link(
    connector: WsConnector,
    *,
    settings: LinkSettings = FAST,
    identity: AgentIdentity = IDENTITY,
    max_concurrency: int = 1,
    clock: Callable[[], int] | None = None,
    jitter: Callable[[], float] = lambda: 0.0,
) -> AsyncIterator[Running]:
    extra = {} if clock is None else {"clock": clock}
    link = AgentLink(identity, settings, connector, jitter=jitter, **extra)  # type: ignore[arg-type]
    jobs = FakeJobs(link, agent_id=identity.agent_id, max_concurrency=max_concurrency, **extra)  # type: ignore[arg-type]
    running = Running(link, jobs)

    async def run() -> None:
        try:
            running.exit = await link.run(jobs)
        finally:
            running.done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        try:
            yield running
        finally:
            link.stop()


@attrs.frozen
class TextOnly:
    """A connection seen through the bare ``WsConnection`` port, without ``ping``.

    The link then runs without its pong probe and keeps no statuses in transit (link.py), so what it
    replays does not depend on when a pong happens to arrive; the liveness tests cover the pinging
    transport the daemon uses.
    """

    conn: WsConnection

    @property
    def remote_addr(self) -> RemoteAddress:
        return self.conn.remote_addr

    async def send(self, text: str) -> None:
        await self.conn.send(text)

    async def receive(self) -> str:
        return await self.conn.receive()

    async def close(self, code: int, reason: str = "") -> None:
        await self.conn.close(code, reason)


def ws(url: str) -> WsConnector:
    @asynccontextmanager
    async def open_connection() -> AsyncIterator[WsConnection]:
        async with connect(url) as conn:
            yield TextOnly(conn)

    return open_connection


def dispatch(job_id: str | None = None, run_id: str = "run-1") -> JobDispatch:
    return JobDispatch(
        message_id=str(uuid.uuid4()),
        run_id=run_id,
        job_id=job_id or str(uuid.uuid4()),
        repo_url="file:///repos/app.git",
        ref="refs/heads/main",
        sha="0" * 40,
        lock_file_url="",
        job_config={"workflow": "ci"},
        timestamp=1,
    )


async def wait_state(link: AgentLink, state: LinkState, within: float = WAIT_S) -> None:
    with trio.fail_after(within):
        while link.state is not state:  # noqa: ASYNC110 - the link exposes its state, not an event
            await trio.sleep(0.005)


# --- handshake ----------------------------------------------------------------------------------


@pytest.mark.feature("PRO-08", "PRO-09", "PRO-11", "PRO-15", "OPS-04")
async def test_handshake_sends_token_then_register_with_automatic_labels_and_host_facts() -> None:
    async with scripted() as (orch, url), running_link(ws(url), max_concurrency=3) as running:
        conn = await orch.connection(0)
        register = await conn.wait_for(AgentRegister)
        await conn.wait_for(ConfigAck)
        await conn.wait_for(Heartbeat, count=2)
        frames = conn.without_heartbeats()
        assert frames[0] == AgentAuthRequest(token=TOKEN, protocol_version=1)
        assert frames[1] is register
        assert register.agent_id == "agent-1"
        assert register.labels == [
            "gpu",
            "kici:arch:amd64",
            "kici:arch:x64",
            "kici:host:build-1",
            "kici:os:linux",
            "kici:role:builder",
            "kici:role:init-runner",
            "linux",
        ]
        assert register.max_concurrency == 3
        assert (register.platform, register.arch, register.hostname) == ("linux", "x64", "Build-1")
        assert (register.running_as_user, register.running_as_uid) == ("ci", 1000)
        assert (register.python_version, register.cpu_count, register.total_memory_mb) == ("3.11.9", 2, 2048)
        assert register.os_release == "6.1.0"
        assert register.version
        assert register.properties == {"rack": "b"}
        assert register.in_flight_jobs is None
        first_heartbeat = conn.frames.index(conn.of(Heartbeat)[0])
        assert first_heartbeat > conn.frames.index(register)
        status = await conn.wait_for(AgentStatus)
        assert (status.agent_id, status.active_jobs) == ("agent-1", 0)
        assert running.link.state is LinkState.REGISTERED
        assert running.link.registrations == 1


@pytest.mark.feature("PRO-09")
async def test_without_a_token_the_agent_registers_at_once() -> None:
    async with (
        scripted() as (orch, url),
        running_link(ws(url), settings=attrs.evolve(FAST, token=None)) as running,
    ):
        conn = await orch.connection(0)
        await conn.wait_for(ConfigAck)
        assert isinstance(conn.frames[0], AgentRegister)
        assert not conn.of(AgentAuthRequest)
        assert running.link.connected


@pytest.mark.feature("PRO-08", "PRO-36", "PRO-03")
async def test_auth_failure_stops_for_good_with_a_clear_log_line() -> None:
    with capture_logs() as logs:
        async with scripted(auth="reject") as (orch, url), running_link(ws(url)) as running:
            outcome = await running.wait_exit()
            await trio.sleep(0.3)
            assert len(orch.connections) == 1
    assert outcome == LinkExit(True, "Invalid or expired token", int(CloseCode.AGENT_AUTH_FAILED))
    assert running.link.state is LinkState.STOPPED
    assert running.link.supervisor.delays_ms == []
    refusal = [
        entry for entry in logs if entry["event"] == "orchestrator refused this agent; not reconnecting"
    ]
    assert refusal
    assert refusal[0]["reason"] == "Invalid or expired token"
    assert refusal[0]["fix"] == AUTH_FIX
    assert "KICI_AGENT_TOKEN" in AUTH_FIX
    assert not conn_frames_of(orch, AgentRegister)


def conn_frames_of(orch: ScriptedOrchestrator, kind: type[M]) -> list[M]:
    return [frame for conn in orch.connections for frame in conn.of(kind)]


@pytest.mark.feature("PRO-36", "PRO-03")
async def test_a_4010_close_after_registration_stops_for_good() -> None:
    async with scripted() as (orch, url), running_link(ws(url)) as running:
        conn = await orch.connection(0)
        await conn.wait_for(ConfigAck)
        await conn.close(CloseCode.AGENT_AUTH_FAILED, "Token revoked")
        outcome = await running.wait_exit()
        await trio.sleep(0.3)
        assert len(orch.connections) == 1
    assert outcome == LinkExit(True, "Token revoked", int(CloseCode.AGENT_AUTH_FAILED))


@pytest.mark.feature("PRO-09", "PRO-03")
async def test_no_register_ack_in_time_drops_the_connection_and_reconnects() -> None:
    settings = attrs.evolve(FAST, handshake_timeout_s=0.3)
    async with (
        scripted(ack_register=False) as (orch, url),
        running_link(ws(url), settings=settings) as running,
    ):
        first = await orch.connection(0)
        await first.wait_for(AgentRegister)
        await first.wait_closed()
        second = await orch.connection(1)
        await second.wait_for(AgentRegister)
        assert running.link.state is not LinkState.REGISTERED
        assert running.link.supervisor.delays_ms


@pytest.mark.feature("PRO-06")
async def test_a_server_close_reconnects_and_registers_again() -> None:
    async with scripted() as (orch, url), running_link(ws(url)) as running:
        first = await orch.connection(0)
        await first.wait_for(ConfigAck)
        await first.close(1001, "restarting")
        second = await orch.connection(1)
        await second.wait_for(ConfigAck)
        assert running.link.registrations == 2
        assert running.link.supervisor.delays_ms == [50.0]
        assert running.link.supervisor.attempt == 0


@pytest.mark.feature("PRO-09")
async def test_stop_closes_1000_and_never_reconnects() -> None:
    async with scripted() as (orch, url), running_link(ws(url)) as running:
        conn = await orch.connection(0)
        await conn.wait_for(ConfigAck)
        running.link.stop()
        outcome = await running.wait_exit()
        await conn.wait_closed()
        await trio.sleep(0.2)
        assert len(orch.connections) == 1
    assert running.link.supervisor.delays_ms == []
    assert outcome == LinkExit(False, "Agent shutting down", 1000)
    assert running.link.state is LinkState.STOPPED


@pytest.mark.feature("PRO-09")
async def test_reregister_sends_the_new_labels_on_the_live_connection() -> None:
    async with scripted() as (orch, url), running_link(ws(url)) as running:
        conn = await orch.connection(0)
        await conn.wait_for(ConfigAck)
        running.link.identity = attrs.evolve(IDENTITY, labels=("kici:os:linux", "linux", "new"))
        running.link.reregister()
        again = await conn.wait_for(AgentRegister, count=2)
        assert again.labels == ["kici:os:linux", "linux", "new"]
        assert len(orch.connections) == 1


# --- dispatch, cancel, garbage ------------------------------------------------------------------


@pytest.mark.feature("PRO-10", "EXE-36")
async def test_dispatch_is_acked_before_anything_else_about_the_job() -> None:
    async with scripted() as (orch, url), running_link(ws(url)) as running:
        conn = await orch.connection(0)
        await conn.wait_for(ConfigAck)
        job = dispatch()
        mark = len(conn.frames)
        await conn.send(job)
        await conn.wait_for(JobStatus)
        assert running.jobs.offers == [job]
        after = [f for f in conn.frames[mark:] if not isinstance(f, Heartbeat | AgentStatus)]
        assert isinstance(after[0], JobAck)
        assert (after[0].job_id, after[0].run_id) == (job.job_id, job.run_id)
        assert isinstance(after[1], JobStatus)
        assert after[1].state is JobState.RUNNING
        status = await conn.wait_for(AgentStatus, lambda s: s.active_jobs == 1)
        assert status.agent_id == "agent-1"


@pytest.mark.feature("PRO-10", "PRO-09")
async def test_a_dispatch_that_overtakes_register_ack_is_held_until_registration() -> None:
    async with scripted(ack_register=False) as (orch, url), running_link(ws(url)) as running:
        conn = await orch.connection(0)
        register = await conn.wait_for(AgentRegister)
        job = dispatch()
        await conn.send(job)
        await trio.sleep(0.05)
        assert running.jobs.offers == []
        await conn.send(register_ack(register))
        ack = await conn.wait_for(JobAck)
        assert ack.job_id == job.job_id
        assert running.jobs.offers == [job]
        assert conn.frames.index(ack) > conn.frames.index(conn.of(ConfigAck)[0])


@pytest.mark.feature("PRO-10", "EXE-36", "PRO-11")
async def test_busy_and_draining_dispatches_are_rejected() -> None:
    async with scripted() as (orch, url), running_link(ws(url)) as running:
        conn = await orch.connection(0)
        await conn.wait_for(ConfigAck)
        first, second, third = dispatch(), dispatch(), dispatch()
        await conn.send(first)
        await conn.wait_for(JobAck)
        await conn.send(second)
        busy = await conn.wait_for(JobReject)
        assert (busy.job_id, busy.reason) == (second.job_id, RejectReason.BUSY)
        await conn.wait_for(AgentStatus, lambda s: s.active_jobs == 1)
        running.jobs.drain()
        running.jobs.finish(first)
        await conn.wait_for(AgentStatus, lambda s: s.active_jobs == 0)
        await conn.send(third)
        draining = await conn.wait_for(JobReject, count=2)
        assert (draining.job_id, draining.reason) == (third.job_id, RejectReason.DRAINING)


@pytest.mark.feature("EXE-13", "PRO-11")
async def test_job_cancel_is_routed_to_the_job_manager() -> None:
    async with scripted() as (orch, url), running_link(ws(url)) as running:
        conn = await orch.connection(0)
        await conn.wait_for(ConfigAck)
        job = dispatch()
        await conn.send(job)
        await conn.wait_for(JobAck)
        cancel = JobCancel(message_id="c1", run_id=job.run_id, job_id=job.job_id, reason="user", force=True)
        await conn.send(cancel)
        with trio.fail_after(WAIT_S):
            assert await running.jobs.wait_for_cancel() == cancel


@pytest.mark.feature("PRO-01", "PRO-03")
async def test_garbage_from_the_orchestrator_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kici.services.connection")
    async with scripted() as (orch, url), running_link(ws(url)) as running:
        conn = await orch.connection(0)
        await conn.wait_for(ConfigAck)
        await conn.send_text("{not json")
        await conn.send_text(json.dumps({"type": "no.such.type"}))
        await conn.send_text(json.dumps({"type": "job.dispatch", "runId": 1}))
        await conn.send(AgentStatus(message_id="m", agent_id="x", active_jobs=0))
        job = dispatch()
        await conn.send(job)
        await conn.wait_for(JobAck)
        assert running.jobs.offers == [job]
        assert conn.closed is None
        assert len(orch.connections) == 1
    kinds = [r.getMessage() for r in caplog.records if "invalid inbound frame" in r.getMessage()]
    assert len(kinds) == 4
    assert any("kind=bad_json" in k for k in kinds)
    assert any("kind=unknown_type" in k for k in kinds)
    assert any("kind=invalid" in k for k in kinds)


# --- outbound buffering and replay --------------------------------------------------------------


@pytest.mark.feature("PRO-11")
async def test_operational_lines_go_out_as_agent_log_batches_of_at_most_50() -> None:
    async with scripted() as (orch, url), running_link(ws(url)) as running:
        conn = await orch.connection(0)
        await conn.wait_for(ConfigAck)
        for n in range(120):
            running.jobs.line(f"line {n}")
        with trio.fail_after(WAIT_S):
            while sum(len(batch.lines) for batch in conn.of(AgentLog)) < 120:  # noqa: ASYNC110
                await trio.sleep(0.01)
        sent = conn.of(AgentLog)
        assert all(len(batch.lines) <= 50 for batch in sent)
        assert [line for batch in sent for line in batch.lines] == [f"line {n}" for n in range(120)]


@pytest.mark.feature("PRO-14")
async def test_lines_logged_before_the_first_registration_go_out_without_a_gap_marker() -> None:
    async with scripted(auth="ignore") as (orch, url), running_link(ws(url)) as running:
        conn = await orch.connection(0)
        await conn.wait_for(AgentAuthRequest)
        running.jobs.line("cleaned 2 stale job directories")
        await _register(conn)
        batch = await conn.wait_for(AgentLog)
        assert batch.lines == ["cleaned 2 stale job directories"]
        assert len(conn.of(AgentLog)) == 1


async def _hold_disconnected(orch: ScriptedOrchestrator, index: int) -> OrchConn:
    """The agent's next connection, parked before auth.success (the agent buffers like it is offline)."""
    orch.auth = "ignore"
    conn = await orch.connection(index)
    await conn.wait_for(AgentAuthRequest)
    return conn


async def _register(conn: OrchConn) -> AgentRegister:
    await conn.send(AuthSuccess(connection_id="c"))
    register = await conn.wait_for(AgentRegister)
    await conn.send(register_ack(register))
    await conn.wait_for(ConfigAck)
    return register


@pytest.mark.feature("PRO-14", "PRO-16", "PRO-09", "EXE-27")
async def test_statuses_and_logs_from_an_outage_are_replayed_after_register_ack() -> None:
    clock = WallClock()
    async with scripted() as (orch, url), running_link(ws(url), clock=clock) as running:
        first = await orch.connection(0)
        await first.wait_for(ConfigAck)
        job = dispatch()
        await first.send(job)
        await first.wait_for(JobStatus)
        await first.close(1001, "orchestrator restarting")
        second = await _hold_disconnected(orch, 1)
        assert running.link.disconnected_at == clock.ms
        jobs = running.jobs
        jobs.step(job, 0, "build", StepState.RUNNING)
        chunk = jobs.log(job, 0, ["compiling"])
        done = jobs.step(job, 0, "build", StepState.SUCCESS, {"durationMs": 5})
        jobs.heartbeat(job)
        jobs.finish(job, JobState.SUCCESS)
        jobs.line("agent: job finished while offline")
        clock.ms += 7_600
        mark = len(second.frames)
        register = await _register(second)
        assert register.in_flight_jobs == [InFlightJob(job_id=job.job_id, run_id=job.run_id)]
        await second.wait_for(AgentLog, count=2)
        replay = [f for f in second.frames[mark:] if not isinstance(f, Heartbeat | AgentStatus)]
    marker = "--- Orchestrator offline for 8s. Replaying 4 buffered events and 1 buffered log lines. ---"
    assert replay[0] is register
    assert isinstance(replay[1], AgentLog)
    assert replay[1].lines == [marker]
    assert isinstance(replay[2], ConfigAck)
    log_chunk, step, heartbeat, final = replay[3:7]
    assert isinstance(log_chunk, LogChunk)
    assert log_chunk.lines == [marker, "compiling"]
    assert log_chunk.timestamp == chunk.timestamp
    assert step == done
    assert isinstance(heartbeat, JobHeartbeat)
    assert isinstance(final, JobStatus)
    assert final.state is JobState.SUCCESS
    assert not [f for f in replay if isinstance(f, StepStatus) and f.state is StepState.RUNNING]
    assert isinstance(replay[7], AgentLog)
    assert replay[7].lines == ["agent: job finished while offline"]
    assert running.link.disconnected_at is None
    assert running.link.buffered == (0, 0, 0)


@pytest.mark.feature("PRO-07", "PRO-14")
async def test_ring_overflow_is_counted_in_the_gap_marker_and_each_step_chunk() -> None:
    clock = WallClock()
    settings = attrs.evolve(FAST, event_buffer_size=3, log_buffer_lines=2)
    async with scripted() as (orch, url), running_link(ws(url), settings=settings, clock=clock) as running:
        first = await orch.connection(0)
        await first.wait_for(ConfigAck)
        job = dispatch()
        await first.send(job)
        await first.wait_for(JobStatus)
        await first.close(1001, "bye")
        second = await _hold_disconnected(orch, 1)
        jobs = running.jobs
        jobs.log(job, 0, ["s0 a"])
        jobs.log(job, 0, ["s0 b"])
        jobs.log(job, 1, ["s1 a"])
        jobs.log(job, 1, ["s1 b"])
        jobs.log(job, 0, ["s0 c"])
        for n in range(4):
            jobs.line(f"op {n}")
        jobs.finish(job)
        clock.ms += 12_400
        mark = len(second.frames)
        await _register(second)
        await second.wait_for(JobStatus, lambda s: s.state is JobState.SUCCESS)
        await second.wait_for(AgentLog, count=2)
        replay = [f for f in second.frames[mark:] if not isinstance(f, Heartbeat | AgentStatus)]
        marker = (
            "--- Orchestrator offline for 12s. Replaying 4 buffered events and 2 buffered log lines."
            " 2 events dropped due to buffer overflow. 2 log lines dropped due to buffer overflow. ---"
        )
        assert replay[1] == AgentLog(
            message_id=replay[1].message_id, agent_id="agent-1", lines=[marker], timestamp=clock.ms
        )
        chunks = [f.lines for f in replay if isinstance(f, LogChunk)]
        assert chunks == [[marker, "s1 a"], ["s1 b"], [marker, "s0 c"]]
        lines = [f.lines for f in replay[2:] if isinstance(f, AgentLog)]
        assert lines == [["op 2", "op 3"]]
        # A second, clean outage reports no drops any more.
        await second.close(1001, "again")
        third = await _hold_disconnected(orch, 2)
        running.jobs.line("after")
        mark = len(third.frames)
        await _register(third)
        gap = await third.wait_for(AgentLog)
        assert gap.lines == [
            "--- Orchestrator offline for 0s. Replaying 0 buffered events and 1 buffered log lines. ---"
        ]


@pytest.mark.feature("PRO-09", "PRO-16")
async def test_running_jobs_are_reported_in_flight_on_re_register() -> None:
    async with scripted() as (orch, url), running_link(ws(url), max_concurrency=2):
        first = await orch.connection(0)
        await first.wait_for(ConfigAck)
        one, two = dispatch(run_id="r1"), dispatch(run_id="r2")
        await first.send(one)
        await first.send(two)
        await first.wait_for(JobAck, count=2)
        await first.close(1001, "restart")
        second = await orch.connection(1)
        register = await second.wait_for(AgentRegister)
        await second.wait_for(ConfigAck)
    assert sorted((j.run_id, j.job_id) for j in register.in_flight_jobs or []) == sorted(
        [(one.run_id, one.job_id), (two.run_id, two.job_id)]
    )


@pytest.mark.feature("PRO-11", "PRO-14")
async def test_flush_waits_until_pending_frames_are_written() -> None:
    async with scripted() as (orch, url), running_link(ws(url)) as running:
        conn = await orch.connection(0)
        await conn.wait_for(ConfigAck)
        job = dispatch()
        await conn.send(job)
        await conn.wait_for(JobStatus)
        running.jobs.finish(job, JobState.FAILED, {"error": {"message": "boom"}})
        running.jobs.line("bye")
        assert await running.link.flush(WAIT_S)
        await conn.wait_for(JobStatus, lambda s: s.state is JobState.FAILED)
        await conn.wait_for(AgentLog, lambda log: log.lines == ["bye"])


@pytest.mark.feature("PRO-07")
async def test_flush_gives_up_while_offline() -> None:
    async with scripted(auth="ignore") as (orch, url), running_link(ws(url)) as running:
        await (await orch.connection(0)).wait_for(AgentAuthRequest)
        running.jobs.line("nobody hears this")
        assert not await running.link.flush(0.1)
        assert running.link.state is LinkState.AUTHENTICATING
        assert running.link.buffered == (0, 0, 1)
