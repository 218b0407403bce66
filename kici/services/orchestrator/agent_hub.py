"""The agent hub: the orchestrator's ``/ws`` endpoint for agents (spec 20 §5.2, §2, §7, §10, §13).

One call of :meth:`AgentHub.serve` per connection runs the shared connection machinery
(``kici.services.connection``: reader, writer, rate limiter on every frame before any auth phase,
liveness monitor closing 4004) with this module's handler, which walks the handshake:

``auth.request`` within 5 s (token mode) -> version gate (4005) -> token looked up by its SHA-256
(unknown, revoked, expired: ``auth.failure`` + 4010) -> ``auth.success`` -> ``agent.register`` within
10 s -> register gates -> registry -> ``inFlightJobs`` reconciled -> ``register.ack`` -> routable.
A new connection enters the registry unroutable and becomes routable only once its ``register.ack``
is queued: the dispatcher writes through the same outbox, so no ``job.dispatch`` can overtake the ack
(20 §5.2: dispatching follows the ack).

After registration the handler routes frames: acks and rejects to the dispatcher, statuses, steps,
logs and job heartbeats to the tracker. When the connection ends the agent leaves routing; its
unanswered dispatches are requeued and its jobs go ``recovering`` (static agents), unless a newer
connection of the same agent already replaced this one (connection generations, 20 §19).

Choices where the spec is silent: a malformed frame before registration is treated like one after it
(4003, with an ``error`` reply for a well-formed JSON object); frames the orchestrator does not serve
yet (cache, events, agent API, approvals) are logged and ignored, and the agent's own request timeout
answers it; a connection replaced by a newer one of the same agent is closed with 1000.

Metrics (PRO-37), when `AgentHub.metrics` is set: connections opened and closed (by close code),
handshake failures (by `HandshakeFailure`, timeouts included), and the jobs that enter recovery when
an agent drops or are reclaimed when it registers again, counted as the recovery book's difference
around the tracker call. Recoveries restored at boot are not entries of this process and not counted.
"""

from __future__ import annotations

import enum
import hashlib
import json
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

import attrs
import structlog
import trio

from kici.adapters.clock import Clock
from kici.domain.config.schema import AgentAuth
from kici.domain.labels import AgentSlot, normalise
from kici.domain.liveness import Liveness, LivenessThresholds
from kici.domain.ports import WsConnection
from kici.domain.protocol import (
    AgentAuthRequest,
    AgentLog,
    AgentRegister,
    AgentStatus,
    AuthFailure,
    AuthSuccess,
    CloseCode,
    ConfigAck,
    Direction,
    ErrorMessage,
    Heartbeat,
    JobAck,
    JobHeartbeat,
    JobReject,
    JobStatus,
    LogChunk,
    Message,
    RegisterAck,
    StepStatus,
    check_protocol_version,
)
from kici.domain.ratelimit import RateLimitConfig, WsRateLimiter
from kici.domain.store import AgentRecord, AgentStore, AgentTokenRecord, AgentType
from kici.domain.store import AgentStatus as StoredAgentStatus
from kici.services.connection import ORCHESTRATOR_FROM_AGENT, HandlerBase, Session, run_connection
from kici.services.orchestrator.metrics import CLOSE_CODE_ERROR, HandshakeFailure, OrchestratorMetrics

if TYPE_CHECKING:
    from kici.services.orchestrator.dispatcher import Dispatcher
    from kici.services.orchestrator.tracker import Tracker

_log = structlog.get_logger(__name__)

PRIVILEGED_ROOT_LABEL: Final = "kici:privileged:root"
SELF_REPORTED_PREFIXES: Final = ("kici:os:", "kici:arch:", "kici:host:")
"""The automatic labels a label-scoped token tolerates without listing them (20 §5.2 gate 1): facts
about the host. The agent's automatic ``kici:role:*`` labels are deliberately not among them, as the
gate lists exactly these three: a role is a capability that privileged work is routed by
(``kici:role:builder`` builds the dependency and source tarballs other jobs restore, ``init-runner``
brings hosts up), so a scoped token grants a role only by listing its label. An agent on a token
without roles sets ``KICI_ROLES`` to the roles the token lists (empty: none)."""
BOOTSTRAP_PREFIX: Final = "bootstrap:"

AUTH_TIMEOUT_REASON: Final = "Auth timeout"
REGISTER_TIMEOUT_REASON: Final = "Registration timeout"
INVALID_TOKEN_REASON: Final = "Invalid or expired token"
TOKEN_STATE_REASON: Final = "Token state error"
SHUTDOWN_REASON: Final = "Server shutting down"

_HANDSHAKE_TIMEOUTS: Final = {
    AUTH_TIMEOUT_REASON: HandshakeFailure.AUTH_TIMEOUT,
    REGISTER_TIMEOUT_REASON: HandshakeFailure.REGISTER_TIMEOUT,
}


def token_hash(token: str) -> str:
    """How ``agent_tokens.token_hash`` stores a token: the SHA-256 hex of its UTF-8 bytes."""
    return hashlib.sha256(token.encode()).hexdigest()


@attrs.frozen(kw_only=True)
class HubSettings:
    agent_auth: AgentAuth = AgentAuth.TOKEN
    auth_timeout_s: float = 5.0
    register_timeout_s: float = 10.0
    liveness: LivenessThresholds = attrs.field(factory=LivenessThresholds)
    rate_limit: RateLimitConfig = attrs.field(factory=RateLimitConfig)


@attrs.define(eq=False)
class ConnectedAgent:
    """A registered agent connection: what routing, capacity accounting and job control need.

    ``jobs`` are the job ids holding one of its slots (dispatched and not yet terminal).
    ``routable`` is False until its ``register.ack`` is queued, and turns False again when it must get
    no more work (draining, or an unanswered dispatch).
    """

    agent_id: str
    generation: int
    session: Session
    labels: tuple[str, ...]
    mandatory: tuple[str, ...] = ()
    max_concurrency: int = 1
    token_id: uuid.UUID | None = None
    jobs: set[str] = attrs.field(factory=set)
    routable: bool = True

    def slot(self) -> AgentSlot:
        return AgentSlot(self.agent_id, self.labels, len(self.jobs), self.max_concurrency, self.mandatory)

    @property
    def free_slots(self) -> int:
        return max(0, self.max_concurrency - len(self.jobs))


class AgentRegistry:
    """The connected agents of this node, by agent id (one live connection each)."""

    def __init__(self) -> None:
        self._agents: dict[str, ConnectedAgent] = {}

    def __len__(self) -> int:
        return len(self._agents)

    def get(self, agent_id: str | None) -> ConnectedAgent | None:
        return None if agent_id is None else self._agents.get(agent_id)

    def add(self, agent: ConnectedAgent) -> ConnectedAgent | None:
        """Register ``agent``; returns the connection it replaced, if any."""
        previous = self._agents.get(agent.agent_id)
        self._agents[agent.agent_id] = agent
        return None if previous is agent else previous

    def remove(self, agent: ConnectedAgent) -> bool:
        """Unregister ``agent`` unless a newer connection of the same agent holds the id."""
        current = self._agents.get(agent.agent_id)
        if current is None or current.generation != agent.generation:
            return False
        del self._agents[agent.agent_id]
        return True

    def routable_slots(self) -> tuple[AgentSlot, ...]:
        """Agents that can take a job now, least loaded first (ties by id), as an immutable snapshot."""
        free = [a for a in self._agents.values() if a.routable and a.free_slots > 0]
        free.sort(key=lambda a: (len(a.jobs) / a.max_concurrency, a.agent_id))
        return tuple(a.slot() for a in free)

    def holder_of(self, job_id: str) -> ConnectedAgent | None:
        for agent in self._agents.values():
            if job_id in agent.jobs:
                return agent
        return None

    def release(self, job_id: str) -> ConnectedAgent | None:
        """Free the slot ``job_id`` holds, wherever it is; returns the agent it was on."""
        holder = self.holder_of(job_id)
        if holder is not None:
            holder.jobs.discard(job_id)
        return holder


class _Phase(enum.Enum):
    AUTH = enum.auto()
    REGISTER = enum.auto()
    REGISTERED = enum.auto()


class RegistrationRefused(Exception):
    """A handshake gate refused the agent: send ``reply`` (if any) and close with ``code``."""

    def __init__(
        self, code: CloseCode, reason: str, failure: HandshakeFailure, reply: Message | None = None
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.failure = failure
        self.reply = reply


def _parse_label_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    value = json.loads(text)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("not a JSON list of strings")
    return value


def token_labels(token: AgentTokenRecord | None) -> set[str] | None:
    """The labels a token authorizes (None: unscoped); a malformed column refuses the agent."""
    if token is None:
        return None
    try:
        labels = _parse_label_list(token.labels)
    except ValueError:
        raise RegistrationRefused(
            CloseCode.AGENT_AUTH_FAILED,
            TOKEN_STATE_REASON,
            HandshakeFailure.TOKEN_STATE,
            AuthFailure(reason=TOKEN_STATE_REASON),
        ) from None
    return None if labels is None else set(normalise(labels))


def mandatory_labels(token: AgentTokenRecord | None, labels: Iterable[str]) -> tuple[str, ...]:
    """Taint labels (ISO-14): the token's mandatory labels (malformed: none) plus privileged root."""
    mandatory: set[str] = set()
    if token is not None:
        try:
            mandatory.update(_parse_label_list(token.mandatory_labels) or ())
        except ValueError:
            _log.warning("malformed mandatory_labels ignored", token_id=str(token.token_id))
    if PRIVILEGED_ROOT_LABEL in labels:
        mandatory.add(PRIVILEGED_ROOT_LABEL)
    return normalise(mandatory)


def register_gates(
    register: AgentRegister, token: AgentTokenRecord | None, holder_token: uuid.UUID | None
) -> None:
    """The register gates of 20 §5.2, in order; raises :class:`RegistrationRefused` for the first that fails.

    ``holder_token`` is the token of another live connection already registered under the agent id.
    """
    labels = normalise(register.labels)
    if PRIVILEGED_ROOT_LABEL in labels and register.running_as_uid != 0:
        raise RegistrationRefused(
            CloseCode.AGENT_AUTH_FAILED,
            "Privileged-root label requires an agent running as uid 0",
            HandshakeFailure.PRIVILEGED_ROOT,
        )
    allowed = token_labels(token)
    if allowed is not None:
        extras = [
            label for label in labels if label not in allowed and not label.startswith(SELF_REPORTED_PREFIXES)
        ]
        if extras:
            raise RegistrationRefused(
                CloseCode.AGENT_AUTH_FAILED,
                f"Labels not authorized by token: {', '.join(extras)}",
                HandshakeFailure.LABELS,
            )
    if (
        token is not None
        and token.agent_type is AgentType.EPHEMERAL
        and register.agent_id not in (token.created_by, token.created_by.removeprefix(BOOTSTRAP_PREFIX))
    ):
        raise RegistrationRefused(
            CloseCode.AGENT_AUTH_FAILED,
            "Agent id does not match its ephemeral token",
            HandshakeFailure.EPHEMERAL_ID,
        )
    if token is not None and holder_token is not None and holder_token != token.token_id:
        raise RegistrationRefused(
            CloseCode.INVALID_MESSAGE, "Agent id is held by another token", HandshakeFailure.TOKEN_CONFLICT
        )


class AgentHub:
    """Serves agent connections; see the module docstring."""

    def __init__(
        self,
        *,
        agents: AgentStore,
        registry: AgentRegistry,
        tracker: Tracker,
        dispatcher: Dispatcher,
        clock: Clock,
        settings: HubSettings,
    ) -> None:
        self._agents = agents
        self.registry = registry
        self._tracker = tracker
        self._dispatcher = dispatcher
        self._clock = clock
        self._settings = settings
        self._ready = trio.Event()
        self._closing = False
        self._sessions: set[Session] = set()
        self.metrics: OrchestratorMetrics | None = None
        if settings.agent_auth is AgentAuth.NONE:
            _log.warning("agent authentication is DISABLED (agent_auth=none): any client may register")

    def connected_count(self) -> int:
        return len(self.registry)

    def recovering_count(self) -> int:
        """Jobs waiting in a recovery window now (the recovery book is the truth)."""
        return len(self._tracker.book.recovering())

    def _recovering_ids(self) -> set[str]:
        return {entry.job.job_id for entry in self._tracker.book.recovering()}

    def _handshake_failed(self, failure: HandshakeFailure) -> None:
        if self.metrics is not None:
            self.metrics.agent_handshake_failures.labels(reason=failure.value).inc()

    def open(self) -> None:
        """Let registrations through (called once the startup sweep settled the recovery book)."""
        self._ready.set()

    def close_all(self) -> None:
        """Ordered shutdown: ask every open connection to close with 1001.

        Their jobs are deliberately left ``dispatched``: the next boot's sweep gives each a full
        recovery window, which a deadline stamped now would shorten by the downtime.
        """
        self._closing = True
        for session in list(self._sessions):
            session.close(CloseCode.GOING_AWAY, SHUTDOWN_REASON)

    async def serve(self, conn: WsConnection, remote_addr: str) -> None:
        """Run one agent connection until it closes, then its disconnect handling."""
        handler = _AgentConnection(self, remote_addr)
        metrics = self.metrics
        if metrics is not None:
            metrics.agent_connections_opened.inc()
        close_code = CLOSE_CODE_ERROR
        try:
            end = await run_connection(
                conn,
                handler,
                direction=Direction.AGENT_TO_ORCH,
                policy=ORCHESTRATOR_FROM_AGENT,
                rate_limiter=WsRateLimiter(self._settings.rate_limit),
                liveness=self._settings.liveness,
            )
            close_code = str(end.code)
            _log.info("agent connection closed", remote=remote_addr, code=end.code, reason=end.reason)
            timeout = _HANDSHAKE_TIMEOUTS.get(end.reason)
            if handler.agent is None and end.code == CloseCode.AUTH_TIMEOUT and timeout is not None:
                self._handshake_failed(timeout)
        except Exception:
            _log.exception("agent connection failed", remote=remote_addr)
        finally:
            if handler.session is not None:
                self._sessions.discard(handler.session)
            if metrics is not None:
                metrics.agent_connections_closed.labels(code=close_code).inc()
        if handler.agent is not None:
            await self.disconnected(handler.agent)

    async def disconnected(self, agent: ConnectedAgent) -> None:
        """``agent``'s connection is gone: out of routing, its work requeued or recovering."""
        if not self.registry.remove(agent):
            _log.info("late close of a replaced connection ignored", agent_id=agent.agent_id)
            return
        if self._closing:
            return
        try:
            await self._agents.set_agent_status(
                agent.agent_id, StoredAgentStatus.DISCONNECTED, self._clock.now()
            )
            await self._dispatcher.agent_gone(agent)
            before = self._recovering_ids()
            await self._tracker.agent_disconnected(agent)
            if self.metrics is not None:
                self.metrics.jobs_recovering_entered.inc(len(self._recovering_ids() - before))
        except Exception:
            _log.exception("disconnect handling failed; the startup sweep of the next boot covers it")

    # --- handshake steps, called by the connection handler ---------------------------------------

    async def authenticate(self, request: AgentAuthRequest) -> AgentTokenRecord:
        verdict = check_protocol_version(request.protocol_version)
        if not verdict.accepted:
            reason = verdict.reason or "Unsupported protocol version"
            raise RegistrationRefused(
                CloseCode.PROTOCOL_ERROR,
                reason,
                HandshakeFailure.PROTOCOL_VERSION,
                AuthFailure(reason=reason),
            )
        now = self._clock.now()
        token = await self._agents.find_agent_token(token_hash(request.token), now)
        if token is None:
            raise RegistrationRefused(
                CloseCode.AGENT_AUTH_FAILED,
                INVALID_TOKEN_REASON,
                HandshakeFailure.INVALID_TOKEN,
                AuthFailure(reason=INVALID_TOKEN_REASON),
            )
        try:
            await self._agents.touch_agent_token(token.token_id, now)
        except Exception:
            _log.warning("could not stamp token last_seen_at", token_id=str(token.token_id))
        return token

    async def register(
        self,
        session: Session,
        register: AgentRegister,
        token: AgentTokenRecord | None,
        current: ConnectedAgent | None,
    ) -> ConnectedAgent:
        """Gates, registry, agent row, ``inFlightJobs`` reconciliation, ``register.ack``, then routing."""
        await self._ready.wait()
        held = self.registry.get(register.agent_id)
        holder_token = held.token_id if held is not None and held.session is not session else None
        register_gates(register, token, holder_token)
        now = self._clock.now()
        if (
            current is None
            and token is not None
            and token.created_by.startswith(BOOTSTRAP_PREFIX)
            and not await self._agents.consume_agent_token(token.token_id, now)
        ):
            raise RegistrationRefused(
                CloseCode.AGENT_AUTH_FAILED, "Bootstrap token already used", HandshakeFailure.BOOTSTRAP_USED
            )
        labels = normalise(register.labels)
        if current is not None and current.agent_id == register.agent_id:
            agent = current
            agent.labels = labels
            agent.max_concurrency = register.concurrency
            agent.mandatory = mandatory_labels(token, labels)
        else:
            if current is not None:
                await self.disconnected(current)
            agent = ConnectedAgent(
                agent_id=register.agent_id,
                generation=self._tracker.connect(register.agent_id),
                session=session,
                labels=labels,
                mandatory=mandatory_labels(token, labels),
                max_concurrency=register.concurrency,
                token_id=None if token is None else token.token_id,
                routable=False,
            )
            replaced = self.registry.add(agent)
            if replaced is not None:
                replaced.session.close(CloseCode.NORMAL, "Superseded by a newer connection")
        recovering = self._recovering_ids()
        cancels = await self._tracker.reconcile(agent, register.in_flight_jobs or ())
        if self.metrics is not None:
            self.metrics.jobs_reclaimed.inc(len(recovering & agent.jobs))
        await self._agents.upsert_agent(
            AgentRecord(
                agent_id=agent.agent_id,
                status=StoredAgentStatus.CONNECTED,
                registered_at=now,
                last_seen_at=now,
                labels=labels,
                max_concurrency=agent.max_concurrency,
                active_jobs=len(agent.jobs),
                token_id=agent.token_id,
                platform=register.platform,
                arch=register.arch,
                version=register.version,
                hostname=register.hostname,
            )
        )
        await session.send(RegisterAck(agent_id=agent.agent_id, labels=list(labels)))
        if agent is not current:
            agent.routable = True
        for cancel in cancels:
            await session.send(cancel)
        _log.info(
            "agent registered",
            agent_id=agent.agent_id,
            labels=list(labels),
            max_concurrency=agent.max_concurrency,
            in_flight=len(register.in_flight_jobs or ()),
        )
        self._dispatcher.wake()
        return agent

    async def route(self, agent: ConnectedAgent, message: Message) -> None:
        """A frame of a registered agent, handled with ``agent_id`` / ``run_id`` bound for the logs."""
        run_id = getattr(message, "run_id", None)
        with structlog.contextvars.bound_contextvars(agent_id=agent.agent_id, run_id=run_id):
            await self._route(agent, message)

    async def _route(self, agent: ConnectedAgent, message: Message) -> None:
        match message:
            case Heartbeat():
                return
            case JobAck():
                await self._dispatcher.agent_answered(agent, message.job_id, ack=True)
            case JobReject():
                await self._dispatcher.agent_answered(agent, message.job_id, ack=False, reason=message.reason)
            case JobStatus():
                await self._tracker.on_job_status(agent, message)
            case StepStatus():
                await self._tracker.on_step_status(agent, message)
            case LogChunk():
                await self._tracker.on_log_chunk(agent, message)
            case JobHeartbeat():
                await self._tracker.on_job_heartbeat(agent, message)
            case AgentLog():
                for line in message.lines:
                    _log.info("agent log", agent_id=agent.agent_id, line=line)
            case AgentStatus() | ConfigAck():
                _log.debug("agent report", agent_id=agent.agent_id, type=message.TYPE)
            case _:
                _log.info("agent frame not served here, ignored", agent_id=agent.agent_id, type=message.TYPE)


class _AgentConnection(HandlerBase):
    """The per-connection handler; it runs in the connection's reader task, one frame at a time."""

    def __init__(self, hub: AgentHub, remote_addr: str) -> None:
        self._hub = hub
        self._remote = remote_addr
        self._phase = _Phase.AUTH
        self._token: AgentTokenRecord | None = None
        self.session: Session | None = None
        self.agent: ConnectedAgent | None = None

    async def on_open(self, session: Session) -> None:
        self.session = session
        if self._hub._closing:
            session.close(CloseCode.GOING_AWAY, SHUTDOWN_REASON)
            return
        self._hub._sessions.add(session)
        settings = self._hub._settings
        if settings.agent_auth is AgentAuth.TOKEN:
            session.arm_timer(settings.auth_timeout_s, CloseCode.AUTH_TIMEOUT, AUTH_TIMEOUT_REASON)
        else:
            self._phase = _Phase.REGISTER
            session.arm_timer(settings.register_timeout_s, CloseCode.AUTH_TIMEOUT, REGISTER_TIMEOUT_REASON)

    async def on_message(self, session: Session, message: Message) -> None:
        try:
            await self._handle(session, message)
        except RegistrationRefused as refused:
            self._hub._handshake_failed(refused.failure)
            _log.warning(
                "agent refused",
                remote=self._remote,
                agent_id=None if self.agent is None else self.agent.agent_id,
                code=int(refused.code),
                reason=refused.reason,
            )
            if refused.reply is not None:
                session.try_send(refused.reply)
            session.close(refused.code, refused.reason)

    def on_liveness(self, session: Session, liveness: Liveness) -> None:
        agent_id = None if self.agent is None else self.agent.agent_id
        if liveness is Liveness.OK:
            _log.info("agent link healthy again", agent_id=agent_id, remote=self._remote)
        else:
            _log.warning("agent link silent", agent_id=agent_id, remote=self._remote, liveness=liveness.value)

    async def _handle(self, session: Session, message: Message) -> None:
        if self._phase is _Phase.AUTH:
            if not isinstance(message, AgentAuthRequest):
                reason = "Expected auth.request"
                raise RegistrationRefused(
                    CloseCode.AGENT_AUTH_FAILED,
                    reason,
                    HandshakeFailure.UNEXPECTED_MESSAGE,
                    AuthFailure(reason=reason),
                )
            self._token = await self._hub.authenticate(message)
            await session.send(AuthSuccess(connection_id=str(uuid.uuid4())))
            self._phase = _Phase.REGISTER
            settings = self._hub._settings
            session.arm_timer(settings.register_timeout_s, CloseCode.AUTH_TIMEOUT, REGISTER_TIMEOUT_REASON)
            return
        if isinstance(message, AgentRegister):
            session.disarm_timer()
            self.agent = await self._hub.register(session, message, self._token, self.agent)
            self._phase = _Phase.REGISTERED
            return
        if self._phase is _Phase.REGISTER or self.agent is None:
            reason = "Expected agent.register"
            raise RegistrationRefused(
                CloseCode.INVALID_MESSAGE,
                reason,
                HandshakeFailure.UNEXPECTED_MESSAGE,
                ErrorMessage(code="INVALID_MESSAGE", message=reason),
            )
        await self._hub.route(self.agent, message)
