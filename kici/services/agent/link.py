"""The agent's link to its orchestrator: handshake, outbound buffering, replay, liveness, reconnect.

One `AgentLink` lives as long as the agent process. Each connection runs through the shared machinery
(``kici.services.connection.run_connection``: reader, writer, heartbeats) under the reconnect loop of
``kici.services.supervisor.Supervisor`` (backoff 1 s·1.5ⁿ with jitter, capped, unlimited attempts).

**Handshake** (20-protocol.md §5.2). ``auth.request{token, protocolVersion}`` when a token is configured,
then ``agent.register`` with the labels, ``maxConcurrency``, host facts and ``inFlightJobs`` (the jobs
still running plus the jobs whose status is still waiting in the pinned outbox), then ``register.ack``.
Each answer is awaited for at most 10 s; a missing one closes the connection (4002) and reconnects.
A ``job.dispatch`` or ``job.cancel`` that overtakes ``register.ack`` is held and handed to the job
manager right after the ack, so its ``job.ack`` is not dropped for arriving before registration: kici's
orchestrator dispatches only after the ack, but a cancel of a job reclaimed during the reconciliation
can still overtake it, and another orchestrator may route earlier.
``auth.failure`` (any reason) or a close with 4010 stops the link for good: `run` returns a refused
`LinkExit` and the daemon exits non-zero, because retrying a rejected token only hammers the server.

**Outbound** (20 §9, PRO-07/PRO-14). The link implements `ports.Outbound`. Nothing a job sends is
written by the job's task: every frame lands in one of the link's stores and a per-connection *pump*
task writes them, in this order on each round:

1. direct frames (``job.ack``, ``job.reject``, ``agent.status``...): queued only while registered,
   dropped otherwise, as the spec says;
2. the event ring (``log.chunk``, ``job.heartbeat``; 5 000, oldest evicted and counted) merged with
   the pinned outbox (``job.status``/``step.status``: latest per job / per job and step, never evicted)
   by enqueue sequence, so a step's log chunks still precede the status that ended it;
3. agent operational lines as ``agent.log`` batches of at most 50 lines, at the latest 100 ms after the
   first pending line (ring of 10 000 lines).

So a frame goes out at once while registered and is kept while not, and because the pump only runs
after ``register.ack`` the first round after a reconnect *is* the §9 replay. Before it, the gap marker
(``--- Orchestrator offline for Ss. Replaying E buffered events and L buffered log lines. ... ---``) is
sent as an ``agent.log`` line and also prepended to the first replayed ``log.chunk`` of each affected
step (kici-py, 20 §19). The first registration of the process sends no marker unless something was
lost: operational lines logged while starting up are not an outage. A frame the pump took but could
not hand to the connection before it closed is put back where it came from. ``config.ack`` follows the
gap marker rather than the replay: it carries nothing the replay depends on.

**Status in transit.** A status handed to a socket that turns out to be black-holed would be lost, and
its job failed by the orchestrator's recovery timer although it finished. So statuses written since the
last proof of delivery are kept aside; a WebSocket pong for a ping sent after they were fully written
proves the orchestrator received them. On close, unproven ones go back to the pinned outbox (unless a
newer status for the same key is there) and are replayed, and their jobs are listed in
``inFlightJobs``. A duplicate status is harmless to the orchestrator (late or repeated statuses are
ignored); a lost one is not. Without a ping-capable transport this retention is off.

**Noticing a dead orchestrator.** The orchestrator sends nothing periodic to agents, so the connection's
inbound-silence monitor (which would close every idle link after 180 s) is turned off on this side.
Instead, when the transport can ping (`SupportsPing`: the WebSocket client and the in-memory pair), the
link pings every 30 s (the heartbeat interval) and counts a pong, or any inbound frame, as a sign of
life; past 90 s without one it logs the link unhealthy, past 180 s it closes with 4004 and reconnects.
A healthy idle orchestrator answers every ping (hypercorn does so in its protocol layer), so an idle link
is never torn down, while a black hole is noticed within the stale threshold. Thresholds are settings.

**agent.status.** Sent after registration and whenever the job manager's ``active`` count differs from
the last count reported, checked on every pump round and at least once a second (the `Jobs` port has
no change notification).
"""

from __future__ import annotations

import enum
import random
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Final, Protocol, runtime_checkable

import attrs
import structlog
import trio

from kici.domain.backoff import DEFAULT_MAX_DELAY_MS
from kici.domain.buffers import (
    AGENT_EVENT_BUFFER_SIZE,
    AGENT_LOG_BUFFER_SIZE,
    PINNED_OUTBOX_MAX_KEYS,
    REPLAY_BATCH_LINES,
    PinKey,
    PinnedOutbox,
    RingBuffer,
    Sequenced,
    batches,
    gap_marker,
)
from kici.domain.liveness import DEFAULT_THRESHOLDS, Liveness, LivenessThresholds, classify_liveness
from kici.domain.ports import ConnectionClosed, WsConnectError, WsConnection, WsConnector
from kici.domain.protocol import (
    PROTOCOL_VERSION,
    AgentAuthRequest,
    AgentLog,
    AgentStatus,
    AuthFailure,
    AuthSuccess,
    CloseCode,
    ConfigAck,
    Direction,
    ErrorMessage,
    Heartbeat,
    InFlightJob,
    JobCancel,
    JobDispatch,
    JobHeartbeat,
    JobStatus,
    LogChunk,
    Message,
    RateLimitWarning,
    RegisterAck,
    StepStatus,
)
from kici.services.agent.identity import AgentIdentity
from kici.services.agent.ports import Jobs
from kici.services.connection import (
    LOG_AND_IGNORE,
    ConnectionEnd,
    HandlerBase,
    Session,
    WallClock,
    run_connection,
    wall_clock_ms,
)
from kici.services.supervisor import ExitReason, Jitter, ReconnectObserver, Supervisor

_log = structlog.get_logger("kici.agent.link")

AUTH_TIMEOUT_REASON: Final = "No auth.success in time"
REGISTER_TIMEOUT_REASON: Final = "No register.ack in time"
PONG_TIMEOUT_REASON: Final = "No pong from the orchestrator"
STOP_REASON: Final = "Agent shutting down"
PING_FAILED_REASON: Final = "Ping failed"
REFUSED_REASON: Final = "Authentication failed"
AUTH_FIX: Final = (
    "check KICI_AGENT_TOKEN (kat_ followed by 64 hex digits): it must exist on this orchestrator, not be "
    "revoked or expired, and allow the agent's labels (a label-scoped token must list every label but "
    "kici:os/arch/host, the automatic kici:role:* ones included, or set KICI_ROLES to the roles it lists, "
    "empty for none); create one with `kici-orchestrator agent-token create`, then restart the agent"
)

BufferedMessage = LogChunk | JobHeartbeat | JobStatus | StepStatus
StatusMessage = JobStatus | StepStatus


@runtime_checkable
class SupportsPing(Protocol):
    """A connection that can send a transport-level ping and wait for its pong.

    ``ping`` raises ``ConnectionClosed`` once the connection is closed; it may wait forever on a
    black-holed peer (the caller bounds it).
    """

    async def ping(self) -> None: ...


# --- the link's state machine, as data -----------------------------------------------------------


class LinkState(enum.StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    AUTHENTICATING = "authenticating"
    REGISTERING = "registering"
    REGISTERED = "registered"
    STOPPED = "stopped"


class LinkEvent(enum.StrEnum):
    CONNECT = "connect"
    OPENED_WITH_TOKEN = "opened-with-token"
    OPENED = "opened"
    AUTH_SUCCESS = "auth-success"
    REGISTER_ACK = "register-ack"
    CLOSED = "closed"
    REFUSED = "refused"
    STOP = "stop"


_LIVE: Final = (
    LinkState.CONNECTING,
    LinkState.AUTHENTICATING,
    LinkState.REGISTERING,
    LinkState.REGISTERED,
)

TRANSITIONS: Final[Mapping[tuple[LinkState, LinkEvent], LinkState]] = {
    (LinkState.DISCONNECTED, LinkEvent.CONNECT): LinkState.CONNECTING,
    (LinkState.CONNECTING, LinkEvent.OPENED_WITH_TOKEN): LinkState.AUTHENTICATING,
    (LinkState.CONNECTING, LinkEvent.OPENED): LinkState.REGISTERING,
    (LinkState.AUTHENTICATING, LinkEvent.AUTH_SUCCESS): LinkState.REGISTERING,
    (LinkState.REGISTERING, LinkEvent.REGISTER_ACK): LinkState.REGISTERED,
    (LinkState.REGISTERED, LinkEvent.REGISTER_ACK): LinkState.REGISTERED,
    **{(state, LinkEvent.CLOSED): LinkState.DISCONNECTED for state in _LIVE},
    **{(state, LinkEvent.REFUSED): LinkState.STOPPED for state in (*_LIVE, LinkState.DISCONNECTED)},
    **{(state, LinkEvent.STOP): LinkState.STOPPED for state in (*_LIVE, LinkState.DISCONNECTED)},
}
"""``disconnected → connecting → authenticating (token) → registering → registered`` (20 §5.2); a pair
missing from the table is an event that does not apply in that state and is ignored."""


def next_state(state: LinkState, event: LinkEvent) -> LinkState | None:
    return TRANSITIONS.get((state, event))


# --- settings and results ------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class LinkSettings:
    """Spec defaults (20 §17, §9, §10); tests shrink the intervals."""

    token: str | None = attrs.field(default=None, repr=False)
    heartbeat_interval_s: float = 30.0
    max_reconnect_delay_ms: float = DEFAULT_MAX_DELAY_MS
    handshake_timeout_s: float = 10.0
    event_buffer_size: int = AGENT_EVENT_BUFFER_SIZE
    log_buffer_lines: int = AGENT_LOG_BUFFER_SIZE
    pinned_max_keys: int = PINNED_OUTBOX_MAX_KEYS
    log_batch_lines: int = REPLAY_BATCH_LINES
    log_batch_interval_s: float = 0.1
    probe_interval_s: float = 30.0
    liveness: LivenessThresholds = DEFAULT_THRESHOLDS
    status_poll_s: float = 1.0
    outbox_frames: int = 64
    """Frames handed to a connection ahead of its writer; what is still there at a close is lost (its
    statuses excepted, see the module docstring), so it stays small."""


@attrs.frozen
class LinkExit:
    """Why `AgentLink.run` returned: stopped on purpose, or refused by the orchestrator for good."""

    refused: bool
    reason: str = ""
    code: int | None = None


# --- outbound bookkeeping ------------------------------------------------------------------------


@attrs.frozen
class _Line:
    text: str
    timestamp_ms: int
    at: float


class _Origin(enum.Enum):
    DIRECT = enum.auto()
    EVENT = enum.auto()
    PINNED = enum.auto()
    LINES = enum.auto()
    REPORT = enum.auto()


@attrs.frozen
class _Outgoing:
    """One frame the pump is about to write, and where to put it back if it cannot."""

    message: Message
    origin: _Origin
    seq: int = 0
    lines: tuple[_Line, ...] = ()


def pin_key(message: StatusMessage) -> PinKey:
    """What a status coalesces on: its job, or its job and step."""
    if isinstance(message, StepStatus):
        return PinKey.for_step(message.job_id, message.step_index)
    return PinKey.for_job(message.job_id)


def _with_marker(entries: list[Sequenced[BufferedMessage]], marker: str) -> list[Sequenced[BufferedMessage]]:
    """The first ``log.chunk`` of each step gets the gap marker as its first line."""
    seen: set[tuple[str, int]] = set()
    out: list[Sequenced[BufferedMessage]] = []
    for entry in entries:
        item = entry.item
        if isinstance(item, LogChunk) and (item.job_id, item.step_index) not in seen:
            seen.add((item.job_id, item.step_index))
            out.append(Sequenced(entry.seq, attrs.evolve(item, lines=[marker, *item.lines])))
        else:
            out.append(entry)
    return out


def _message_id() -> str:
    return str(uuid.uuid4())


class _Handler(HandlerBase):
    """The per-connection handler: everything happens on the link, in the connection's reader task."""

    def __init__(self, link: AgentLink, nursery: trio.Nursery, ping: SupportsPing | None) -> None:
        self._link = link
        self._nursery = nursery
        self._ping = ping

    async def on_open(self, session: Session) -> None:
        await self._link._opened(session, self._nursery, self._ping)

    async def on_message(self, session: Session, message: Message) -> None:
        await self._link._received(session, message, self._nursery)


class AgentLink:
    """The agent's one link to its orchestrator; see the module docstring."""

    def __init__(
        self,
        identity: AgentIdentity,
        settings: LinkSettings,
        connect: WsConnector,
        *,
        jitter: Jitter = random.random,
        clock: WallClock = wall_clock_ms,
        observer: ReconnectObserver | None = None,
    ) -> None:
        self.identity = identity
        self.settings = settings
        self._connector = connect
        self._clock = clock
        self._events: RingBuffer[Sequenced[BufferedMessage]] = RingBuffer(settings.event_buffer_size)
        self._pinned: PinnedOutbox[StatusMessage] = PinnedOutbox(settings.pinned_max_keys)
        self._lines: RingBuffer[_Line] = RingBuffer(settings.log_buffer_lines)
        self._direct: deque[Message] = deque()
        self._early: list[JobDispatch | JobCancel] = []
        self._in_transit: dict[PinKey, Sequenced[StatusMessage]] = {}
        self._seq = 0
        self._handed_seq = 0
        self._track_transit = False
        self._flush_lines_now = False
        self._reported_active: float | None = None
        self._wake = trio.Event()
        self._state = LinkState.DISCONNECTED
        self._session: Session | None = None
        self._jobs: Jobs | None = None
        self._disconnected_at: int | None = None
        self._refusal: str | None = None
        self._started_at: float | None = None
        self.registrations = 0
        self._supervisor = Supervisor(
            self._connect,
            self._run_session,
            max_delay_ms=settings.max_reconnect_delay_ms,
            jitter=jitter,
            name="agent",
            observer=observer,
        )

    # --- observation ---------------------------------------------------------------------------

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def supervisor(self) -> Supervisor:
        return self._supervisor

    @property
    def connected(self) -> bool:
        return self._state is LinkState.REGISTERED

    @property
    def disconnected_at(self) -> int | None:
        """Wall-clock ms of the close that started the current outage (None while none is pending)."""
        return self._disconnected_at

    @property
    def buffered(self) -> tuple[int, int, int]:
        """Events, pinned statuses and operational lines waiting to be written."""
        return len(self._events), len(self._pinned), len(self._lines)

    # --- running -------------------------------------------------------------------------------

    async def run(self, jobs: Jobs) -> LinkExit:
        """Keep the link up until `stop` or a refusal; dispatches and cancels go to ``jobs``."""
        self._jobs = jobs
        self._started_at = trio.current_time()
        outcome = await self._supervisor.run()
        if self._refusal is not None:
            return LinkExit(True, self._refusal, int(CloseCode.AGENT_AUTH_FAILED))
        if outcome.reason is ExitReason.REFUSED:
            self._fire(LinkEvent.REFUSED)
            self._refused_log(outcome.detail, outcome.code)
            return LinkExit(True, outcome.detail, outcome.code)
        self._fire(LinkEvent.STOP)
        return LinkExit(False, outcome.detail, outcome.code)

    def stop(self) -> None:
        """Close with 1000 and never reconnect; `run` returns. Call `flush` first to send what is pending."""
        self._fire(LinkEvent.STOP)
        self._supervisor.stop(STOP_REASON)

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every pending frame has been written to the socket; False when ``timeout_s`` ran out.

        Pending operational lines go out without waiting for their batch interval. With nothing
        pending it returns at once, connected or not; pending frames while the link is down wait for a
        reconnect within the timeout.
        """
        self._flush_lines_now = True
        self._wake.set()
        with trio.move_on_after(timeout_s):
            while not self._all_written():  # noqa: ASYNC110 - the writer exposes no drained event
                await trio.sleep(0.02)
            return True
        return False

    def reregister(self) -> None:
        """Send ``agent.register`` again on the live connection (new labels or concurrency)."""
        if self._state is LinkState.REGISTERED:
            self._direct.append(self._register_message())
            self._wake.set()

    # --- Outbound (ports.Outbound) -------------------------------------------------------------

    def send(self, message: LogChunk | JobHeartbeat) -> None:
        self._events.add(Sequenced(self._next_seq(), message))
        self._wake.set()

    def send_pinned(self, message: JobStatus | StepStatus) -> None:
        seq = self._next_seq()
        if not self._pinned.put(pin_key(message), message, seq):
            _log.warning("pinned outbox full; status kept in the event ring", job_id=message.job_id)
            self._events.add(Sequenced(seq, message))
        self._wake.set()

    def send_direct(self, message: Message) -> None:
        if self._state is not LinkState.REGISTERED:
            _log.debug("direct frame dropped while not registered", type=message.TYPE)
            return
        self._direct.append(message)
        self._wake.set()

    def stream_log(self, line: str) -> None:
        self._lines.add(_Line(line, self._clock(), trio.current_time()))
        self._wake.set()

    # --- connection lifecycle ------------------------------------------------------------------

    def _fire(self, event: LinkEvent) -> bool:
        state = next_state(self._state, event)
        if state is None:
            return False
        self._state = state
        return True

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[WsConnection]:
        self._fire(LinkEvent.CONNECT)
        try:
            async with self._connector() as conn:
                yield conn
        except WsConnectError:
            self._fire(LinkEvent.CLOSED)
            raise

    async def _run_session(self, conn: WsConnection) -> ConnectionEnd:
        ping = conn if isinstance(conn, SupportsPing) else None
        try:
            async with trio.open_nursery() as nursery:
                end = await run_connection(
                    conn,
                    _Handler(self, nursery, ping),
                    direction=Direction.ORCH_TO_AGENT,
                    policy=LOG_AND_IGNORE,
                    heartbeat_interval=self.settings.heartbeat_interval_s,
                    liveness=None,
                    clock=self._clock,
                    outbox_frames=self.settings.outbox_frames,
                )
                nursery.cancel_scope.cancel()
        finally:
            self._closed()
        return end

    async def _opened(self, session: Session, nursery: trio.Nursery, ping: SupportsPing | None) -> None:
        self._session = session
        self._track_transit = ping is not None
        if ping is not None:
            nursery.start_soon(self._probe, session, ping)
        token = self.settings.token
        if token:
            self._fire(LinkEvent.OPENED_WITH_TOKEN)
            await session.send(AgentAuthRequest(token=token, protocol_version=PROTOCOL_VERSION))
            session.arm_timer(self.settings.handshake_timeout_s, CloseCode.AUTH_TIMEOUT, AUTH_TIMEOUT_REASON)
        else:
            self._fire(LinkEvent.OPENED)
            await self._send_register(session)

    async def _send_register(self, session: Session) -> None:
        await session.send(self._register_message())
        session.arm_timer(self.settings.handshake_timeout_s, CloseCode.AUTH_TIMEOUT, REGISTER_TIMEOUT_REASON)

    def _register_message(self) -> Message:
        jobs = self._jobs
        in_flight: dict[str, InFlightJob] = {}
        if jobs is not None:
            for job in jobs.in_flight():
                in_flight.setdefault(job.job_id, job)
        # A held status names its own job and run: one unsent when the link dropped is listed too.
        for held in sorted(self._pinned.held(), key=lambda entry: entry.item.job_id):
            status = held.item
            in_flight.setdefault(status.job_id, InFlightJob(job_id=status.job_id, run_id=status.run_id))
        concurrency = jobs.max_concurrency if jobs is not None else 1
        return self.identity.register_message(_message_id(), concurrency, in_flight.values())

    def _closed(self) -> None:
        was_registered = self._state is LinkState.REGISTERED
        self._fire(LinkEvent.CLOSED)
        self._session = None
        if was_registered and self._disconnected_at is None:
            self._disconnected_at = self._clock()
        for key, entry in sorted(self._in_transit.items(), key=lambda pair: pair[1].seq):
            self._restore_pinned(key, entry)
        self._in_transit.clear()
        if self._direct:
            _log.info("direct frames dropped at disconnect", count=len(self._direct))
            self._direct.clear()
        self._early.clear()
        self._flush_lines_now = False

    def _restore_pinned(self, key: PinKey, entry: Sequenced[StatusMessage]) -> None:
        held = self._pinned.get(key)
        if held is not None and held.seq > entry.seq:
            return
        if not self._pinned.put(key, entry.item, entry.seq):
            self._events.add(Sequenced(entry.seq, entry.item))

    # --- inbound -------------------------------------------------------------------------------

    async def _received(self, session: Session, message: Message, nursery: trio.Nursery) -> None:
        match message:
            case AuthSuccess():
                if self._fire(LinkEvent.AUTH_SUCCESS):
                    session.disarm_timer()
                    await self._send_register(session)
            case AuthFailure():
                self._refuse(message.reason)
            case RegisterAck():
                if self._state is LinkState.REGISTERED:
                    _log.info("re-registered", agent_id=message.agent_id, labels=message.labels)
                elif self._fire(LinkEvent.REGISTER_ACK):
                    session.disarm_timer()
                    self._registered(session, message, nursery)
            case JobDispatch() | JobCancel() if self._state is LinkState.REGISTERED:
                self._to_jobs(message)
            case JobDispatch() | JobCancel() if self._state is LinkState.REGISTERING:
                _log.info("job frame before register.ack held until registration", type=message.TYPE)
                self._early.append(message)
            case RateLimitWarning():
                _log.warning("orchestrator rate-limits this agent", retry_after_ms=message.retry_after_ms)
            case ErrorMessage():
                _log.warning("orchestrator reported an error", code=message.code, detail=message.message)
            case Heartbeat():
                return
            case _:
                _log.info("orchestrator frame ignored", type=message.TYPE, state=self._state.value)

    def _to_jobs(self, message: JobDispatch | JobCancel) -> None:
        jobs = self._jobs
        if jobs is None:
            return
        with structlog.contextvars.bound_contextvars(run_id=message.run_id, job_id=message.job_id):
            try:
                if isinstance(message, JobDispatch):
                    jobs.offer(message)
                else:
                    jobs.cancel(message)
            except Exception:
                _log.exception("the job manager failed on an orchestrator frame", type=message.TYPE)

    def _refuse(self, reason: str) -> None:
        self._refusal = reason
        self._fire(LinkEvent.REFUSED)
        self._refused_log(reason, None)
        self._supervisor.stop(REFUSED_REASON)

    def _refused_log(self, reason: str, code: int | None) -> None:
        _log.error(
            "orchestrator refused this agent; not reconnecting",
            agent_id=self.identity.agent_id,
            reason=reason,
            close_code=code,
            fix=AUTH_FIX,
        )

    def _registered(self, session: Session, ack: RegisterAck, nursery: trio.Nursery) -> None:
        events, pinned, lines = self.buffered
        dropped_events, dropped_lines = self._events.dropped, self._lines.dropped
        marker = gap_marker(
            now_ms=self._clock(),
            disconnected_at_ms=self._disconnected_at,
            buffered_events=events + pinned,
            buffered_lines=lines,
            dropped_events=dropped_events,
            dropped_lines=dropped_lines,
        )
        if self.registrations == 0 and not (dropped_events or dropped_lines):
            marker = None
        if marker is not None:
            self._direct.append(self._agent_log([marker]))
            for entry in _with_marker(self._events.flush(), marker):
                self._events.add(entry)
        self._direct.append(ConfigAck(message_id=_message_id(), agent_id=self.identity.agent_id))
        self._events.reset_dropped()
        self._lines.reset_dropped()
        self._disconnected_at = None
        self._flush_lines_now = True
        self._reported_active = None
        self.registrations += 1
        self._supervisor.registered()
        session.start_heartbeats()
        nursery.start_soon(self._pump, session)
        early, self._early = self._early, []
        for message in early:
            self._to_jobs(message)
        _log.info(
            "registered with the orchestrator",
            agent_id=ack.agent_id,
            labels=ack.labels,
            scaler_managed=ack.scaler_managed,
            pending_dispatch=ack.pending_dispatch,
            replay_events=events,
            replay_statuses=pinned,
            replay_lines=lines,
            dropped_events=dropped_events,
            dropped_lines=dropped_lines,
            gap_marker=marker is not None,
        )

    def _agent_log(self, lines: list[str], timestamp: int | None = None) -> AgentLog:
        return AgentLog(
            message_id=_message_id(),
            agent_id=self.identity.agent_id,
            lines=lines,
            timestamp=self._clock() if timestamp is None else timestamp,
        )

    # --- the pump ------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _lines_due(self, now: float) -> bool:
        if not len(self._lines):
            return False
        if self._flush_lines_now or len(self._lines) >= self.settings.log_batch_lines:
            return True
        first = next(iter(self._lines))
        return now >= first.at + self.settings.log_batch_interval_s

    def _take(self, now: float) -> list[_Outgoing]:
        """Everything ready to go, in writing order (see the module docstring)."""
        out = [_Outgoing(message, _Origin.DIRECT) for message in self._direct]
        self._direct.clear()
        merged: list[tuple[int, _Origin, BufferedMessage]] = [
            (entry.seq, _Origin.EVENT, entry.item) for entry in self._events.flush()
        ]
        merged += [(entry.seq, _Origin.PINNED, entry.item) for entry in self._pinned.flush()]
        merged.sort(key=lambda triple: triple[0])
        out += [_Outgoing(message, origin, seq) for seq, origin, message in merged]
        if self._lines_due(now):
            for batch in batches(self._lines.flush(), self.settings.log_batch_lines):
                out.append(
                    _Outgoing(
                        self._agent_log([line.text for line in batch], batch[0].timestamp_ms),
                        _Origin.LINES,
                        lines=tuple(batch),
                    )
                )
            self._flush_lines_now = False
        report = self._status_report()
        if report is not None:
            out.append(_Outgoing(report, _Origin.REPORT))
        return out

    def _status_report(self) -> AgentStatus | None:
        jobs = self._jobs
        if jobs is None or jobs.active == self._reported_active:
            return None
        self._reported_active = jobs.active
        uptime = None if self._started_at is None else round(trio.current_time() - self._started_at, 3)
        return AgentStatus(
            message_id=_message_id(),
            agent_id=self.identity.agent_id,
            active_jobs=jobs.active,
            uptime_seconds=uptime,
        )

    def _put_back(self, pending: Iterable[_Outgoing]) -> None:
        """Frames taken but not handed over: back into their stores, ahead of anything newer."""
        events: list[Sequenced[BufferedMessage]] = []
        lines: list[_Line] = []
        for item in pending:
            message = item.message
            if item.origin is _Origin.EVENT and isinstance(message, BufferedMessage):
                events.append(Sequenced(item.seq, message))
            elif item.origin is _Origin.PINNED and isinstance(message, StatusMessage):
                self._restore_pinned(pin_key(message), Sequenced(item.seq, message))
            elif item.origin is _Origin.LINES:
                lines.extend(item.lines)
            elif item.origin is _Origin.REPORT:
                self._reported_active = None
        if events:
            newer = self._events.flush()
            for entry in (*events, *newer):
                self._events.add(entry)
        if lines:
            newer_lines = self._lines.flush()
            for line in (*lines, *newer_lines):
                self._lines.add(line)

    def _handed(self, item: _Outgoing) -> None:
        message = item.message
        if item.origin in (_Origin.EVENT, _Origin.PINNED):
            self._handed_seq = max(self._handed_seq, item.seq)
        if self._track_transit and item.origin is not _Origin.DIRECT and isinstance(message, StatusMessage):
            key = pin_key(message)
            held = self._in_transit.get(key)
            if held is None or held.seq < item.seq:
                self._in_transit[key] = Sequenced(item.seq, message)
        if isinstance(message, AgentStatus):
            self._reported_active = message.active_jobs

    async def _pump(self, session: Session) -> None:
        while True:
            self._wake = trio.Event()
            pending = self._take(trio.current_time())
            for index, item in enumerate(pending):
                try:
                    await session.send(item.message)
                except ConnectionClosed:
                    self._put_back(pending[index:])
                    return
                except trio.Cancelled:
                    self._put_back(pending[index:])
                    raise
                self._handed(item)
            if pending:
                continue
            deadline = trio.current_time() + self.settings.status_poll_s
            if len(self._lines):
                first = next(iter(self._lines))
                deadline = min(deadline, first.at + self.settings.log_batch_interval_s)
            with trio.move_on_at(deadline):
                await self._wake.wait()

    def _all_written(self) -> bool:
        session = self._session
        return (
            not self._direct
            and not len(self._events)
            and not len(self._pinned)
            and not len(self._lines)
            and (session is None or session.unsent_bytes == 0)
        )

    # --- liveness ------------------------------------------------------------------------------

    def _confirmed(self, mark: int) -> None:
        """A pong proved the orchestrator received everything written up to sequence ``mark``."""
        for key in [key for key, entry in self._in_transit.items() if entry.seq <= mark]:
            del self._in_transit[key]

    async def _probe(self, session: Session, ping: SupportsPing) -> None:
        interval = self.settings.probe_interval_s
        thresholds = self.settings.liveness
        last_pong = trio.current_time()

        async def pinger() -> None:
            nonlocal last_pong
            while True:
                started = trio.current_time()
                mark = self._handed_seq if session.unsent_bytes == 0 else None
                try:
                    await ping.ping()
                except ConnectionClosed:
                    return
                except Exception:
                    _log.exception("ping failed; reconnecting")
                    session.close(CloseCode.INTERNAL_ERROR, PING_FAILED_REASON, flush=False)
                    return
                last_pong = trio.current_time()
                if mark is not None:
                    self._confirmed(mark)
                await trio.sleep_until(started + interval)

        state = Liveness.OK
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pinger)
            while True:
                alive = max(last_pong, session.last_inbound)
                current = classify_liveness((trio.current_time() - alive) * 1000.0, thresholds)
                if current is not state:
                    state = current
                    level = _log.info if current is Liveness.OK else _log.warning
                    level("orchestrator link liveness", liveness=current.value)
                if current is Liveness.STALE:
                    session.close(CloseCode.HEARTBEAT_TIMEOUT, PONG_TIMEOUT_REASON, flush=False)
                    nursery.cancel_scope.cancel()
                    return
                healthy = current is Liveness.OK
                threshold = thresholds.unhealthy_after_ms if healthy else thresholds.stale_after_ms
                await trio.sleep_until(alive + (threshold + 1.0) / 1000.0)


__all__ = [
    "AUTH_FIX",
    "PONG_TIMEOUT_REASON",
    "REGISTER_TIMEOUT_REASON",
    "TRANSITIONS",
    "AgentLink",
    "LinkEvent",
    "LinkExit",
    "LinkSettings",
    "LinkState",
    "SupportsPing",
    "next_state",
    "pin_key",
]
