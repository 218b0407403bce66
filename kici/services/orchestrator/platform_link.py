"""The orchestrator's outbound link to the Platform (PRO-20, PRO-21, PRO-22, PRO-28; 20 §5.1, 20a §6.4).

In platform and hybrid mode the orchestrator dials the Platform (``platform.url``) and keeps that
connection up for its whole life; everything the Platform asks of it and everything it reports
travels over it.

Handshake (20 §5.1), per connection::

    open                -> auth.request{token, protocolVersion: 1, capabilities}
    auth.success        -> heartbeat every 30 s; source.register (every enabled source's routing key,
                           also when there is none), then the pump replays the EventBuffer
    source.register.ack -> orch.capabilities.update and state.replay, both through the EventBuffer
    auth.failure        -> close 1000 and try again with backoff, for ever; the buffer is kept

The supervisor (:mod:`kici.services.supervisor`) reconnects with ``delay_ms(attempt, 60 s, jitter)``
and resets the attempt count at ``auth.success``. Unlike an agent, this link never gives up: a close
code that would stop an agent for good (4010) is retried like 4001, because an operator fixing the
org API key must not have to restart every orchestrator (20 §15).

Relayed webhooks (PRO-21, HOOK-05): ``webhook.relay.start`` + ``webhook.relay.chunk`` frames are
reassembled strictly per connection (:mod:`kici.domain.relay`, 30 s TTL); any stream violation is
answered ``webhook.ack{rejected_misconfigured}``. A complete body is judged exactly as the direct
ingress judges it (:func:`.ingress.check_size` and :func:`.ingress.admit`: the source's size limit,
rate window, the signature checked here with the source's own secrets -- the Platform holds none --
and the body's shape), then:

* verdict ``accepted``: the delivery is recorded (an ``event_log`` row ``received``, source
  ``relay``), ``webhook.ack{accepted}`` is sent, and only then the pipeline runs, outside the
  connection, so a slow lock fetch never eats the Platform's 5 s budget (30 §2: "the verdict is ACKed
  within the 5 s ACK budget before processing"). A crash between the ack and the end of processing
  leaves that row at ``received`` for an operator to redeliver;
* a refusal becomes the verdict the Platform maps to the HTTP answer of the direct route:

  ========================================  ===============================================
  direct ingress                            ``webhook.ack`` result
  ========================================  ===============================================
  401 bad or missing signature              ``rejected_signature``
  404 unknown or disabled source            ``rejected_unknown_source``
  500 secret unreadable / bad config        ``rejected_misconfigured``
  413 above the source's limit, 429 rate    ``rejected_misconfigured`` (500: the sender retries)
  400 malformed body or headers             ``accepted`` with reason ``not processed: ...``
  200 filtered event                        ``accepted`` with reason ``filtered: ...``
  ========================================  ===============================================

  A malformed body was signed by the sender, so retrying it cannot help: it is acknowledged and
  dropped (logged and counted) rather than retried. The recording itself failing (database down)
  is ``rejected_misconfigured``, so the provider redelivers later.

Dashboard requests (PRO-28) are answered with exactly one frame carrying the ``requestId``:
``run.cancel.request`` cancels through the tracker; every other request type, and an invalid one, is
answered with the structured error (``unsupported_request_type`` / ``invalid_payload``), never a
crash. ``capabilities.supportedDashboardRequests`` lists only the types answered here, so the
Platform's pre-flight answers 501 itself for the others. Each request is logged with its actor
(the access log of 20a §6.6; there is no access-log table yet).

Frames from the Platform follow the §2 receiver row: bad JSON is logged and ignored; an unknown or
invalid frame is logged and ignored unless it is a dashboard request with a ``requestId``. The
Platform sends no heartbeats, so this side runs no liveness monitor (the Platform watches ours).

Telemetry (PRO-22) comes from :class:`.upstream.UpstreamForwarder` through its EventBuffer; the pump
writes it paced (:class:`.upstream.Pacer`). ``webhook.ack``, ``source.register`` and dashboard
responses are sent directly on the connection they belong to and dropped when it is gone (20 §9).
"""

from __future__ import annotations

import enum
import functools
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Final

import attrs
import structlog
import trio

import kici
from kici.domain.config.schema import Mode, OrchestratorConfig
from kici.domain.config.sources import SourceConfig
from kici.domain.config.sources import SourceProvider as ConfigProvider
from kici.domain.ports import ConnectionClosed, WsConnection
from kici.domain.protocol import (
    DASHBOARD_REQUEST_CLASSES,
    PROTOCOL_VERSION,
    Ack,
    ActorApiKey,
    ActorPlatformOperator,
    ActorPrincipal,
    ActorServiceAccount,
    ActorUser,
    AuthFailure,
    AuthRequest,
    CloseCode,
    DashboardErrorCode,
    DashboardRequest,
    DecodeError,
    DecodeErrorKind,
    Direction,
    EncodeError,
    InvalidMessage,
    Message,
    Nack,
    OrchCapabilities,
    OrchCapabilitiesUpdate,
    OrchMode,
    OrchRole,
    PlatformAuthSuccess,
    RateLimitWarning,
    RunCancelRequest,
    RunCancelResponse,
    SourceEntry,
    SourceProvider,
    SourceRegister,
    SourceRegisterAck,
    SourceSubtype,
    WebhookAck,
    WebhookRelayChunk,
    WebhookRelayStart,
    WebhookResult,
    close_reaction,
    encode,
    error_response,
)
from kici.domain.relay import RelayComplete, RelayIgnored, RelayPending, RelayReassembler, RelayRejected
from kici.domain.store import EventLogEntry, EventLogStatus, EventSource
from kici.domain.webhooks.models import WebhookInfo, lower_headers
from kici.domain.webhooks.verification import GITHUB_SIGNATURE_HEADER, resolve_client_ip
from kici.services.connection import (
    ConnectionEnd,
    HandlerBase,
    Ignore,
    Reaction,
    Reply,
    Session,
    WallClock,
    run_connection,
    wall_clock_ms,
)
from kici.services.orchestrator.ingress import IngressState, Rejection, admit, check_size, count_rejection
from kici.services.orchestrator.pipeline import process_webhook
from kici.services.orchestrator.sources import SourceBook, org_of
from kici.services.orchestrator.tracker import CancelOutcome, CancelResult
from kici.services.orchestrator.upstream import Pacer, UpstreamForwarder
from kici.services.supervisor import STOP_REASON, Jitter, Supervisor

_log = structlog.get_logger(__name__)

LINK_NAME: Final = "platform"
AUTH_FAILED_REASON: Final = "Authentication failed"
SETTINGS_CHANGED_REASON: Final = "Platform settings changed"
RELAY_SWEEP_S: Final = 1.0
MAX_OPEN_RELAYS: Final = 64
"""Relay streams one connection may hold open at once (each up to 25 MiB); more are refused."""
PROCESSING_SLOTS: Final = 4
DRAIN_TIMEOUT_S: Final = 10.0
DASHBOARD_CANCEL_REASON: Final = "Cancelled from the dashboard"

Connector = Callable[[str], AbstractAsyncContextManager[WsConnection]]
"""Opens a client connection to a URL (``kici.adapters.ws.client.connect``)."""
Canceller = Callable[..., Awaitable[CancelResult]]
RunsCreated = Callable[[Sequence[uuid.UUID]], None]

_RELAY_RESULTS: Final = {
    401: WebhookResult.REJECTED_SIGNATURE,
    404: WebhookResult.REJECTED_UNKNOWN_SOURCE,
    400: WebhookResult.ACCEPTED,
}
_WIRE_SOURCES: Final = {
    ConfigProvider.GITHUB: (SourceProvider.GITHUB, SourceSubtype.GITHUB_APP),
    ConfigProvider.GENERIC: (SourceProvider.GENERIC, SourceSubtype.GENERIC_WEBHOOK),
    ConfigProvider.UNIVERSAL_GIT: (SourceProvider.GENERIC, SourceSubtype.UNIVERSAL_GIT),
    ConfigProvider.LOCAL: (SourceProvider.GENERIC, SourceSubtype.LOCAL),
}


def _new_id() -> str:
    return str(uuid.uuid4())


# --- settings and registration ----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class LinkSettings:
    """What one connection generation uses; a change of ``url`` or ``token`` reconnects."""

    url: str
    token: str = attrs.field(repr=False)
    mode: OrchMode = OrchMode.PLATFORM
    instance_id: str | None = None
    cluster_name: str | None = None
    address: str | None = None
    version: str = kici.__version__
    queue_timeout_ms: int | None = None
    heartbeat_interval_s: float = 30.0
    auth_timeout_s: float = 10.0
    max_reconnect_delay_ms: float = 60_000.0

    @classmethod
    def from_config(cls, config: OrchestratorConfig, instance_id: str | None = None) -> LinkSettings:
        if not config.platform.url or not config.platform.token:
            raise ValueError("the Platform link needs platform.url and platform.token")
        return cls(
            url=config.platform.url,
            token=config.platform.token,
            mode=OrchMode(config.server.mode.value),
            instance_id=instance_id or config.cluster.instance_id,
            cluster_name=config.cluster.name,
            address=config.cluster.address,
            queue_timeout_ms=config.queue.timeout_ms,
        )

    def same_connection(self, other: LinkSettings) -> bool:
        return (self.url, self.token) == (other.url, other.token)


def links_to_platform(config: OrchestratorConfig) -> bool:
    """Platform and hybrid mode run the link (50 §1)."""
    return config.server.mode in (Mode.PLATFORM, Mode.HYBRID)


def source_entries(sources: Sequence[SourceConfig]) -> list[SourceEntry]:
    """``source.register.sources``: every enabled source; universal-git and local report ``generic``."""
    entries = []
    for source in sources:
        if not source.enabled:
            continue
        provider, subtype = _WIRE_SOURCES[source.provider]
        entries.append(
            SourceEntry(provider=provider, routing_key=source.routing_key, name=source.name, subtype=subtype)
        )
    return entries


HANDLED_DASHBOARD_REQUESTS: Final = (RunCancelRequest.TYPE,)


def capabilities() -> OrchCapabilities:
    return OrchCapabilities(
        orch_role=OrchRole.COORDINATOR, supported_dashboard_requests=sorted(HANDLED_DASHBOARD_REQUESTS)
    )


# --- invalid input (20 §2, "orchestrator <- Platform") ---------------------------------------------


def _is_request_type(type_: str) -> bool:
    return type_ in DASHBOARD_REQUEST_CLASSES or type_.startswith("dashboard.")


@attrs.frozen
class PlatformInputPolicy:
    """Log and ignore, except a dashboard request with a ``requestId``: that gets its error frame."""

    orch_version: str = kici.__version__

    def reaction(self, error: DecodeError) -> Reaction:
        if error.kind is DecodeErrorKind.BAD_JSON or not error.request_id or not error.type:
            return Ignore()
        if not _is_request_type(error.type):
            return Ignore()
        if error.kind is DecodeErrorKind.UNKNOWN_TYPE:
            code, text = DashboardErrorCode.UNSUPPORTED_REQUEST_TYPE, f"unsupported request type {error.type}"
        else:
            code, text = DashboardErrorCode.INVALID_PAYLOAD, f"invalid payload: {error.detail}"
        try:
            return Reply(error_response(error.type, error.request_id, text, code, self.orch_version))
        except InvalidMessage:
            return Ignore()


# --- dashboard requests -----------------------------------------------------------------------------


def actor_name(actor: ActorPrincipal) -> str:
    """Who a dashboard request acts for, as ``cancelled_by`` and the access log record it."""
    match actor:
        case ActorUser(sub=sub):
            return f"user:{sub}"
        case ActorApiKey(key_id=key_id):
            return f"api_key:{key_id}"
        case ActorServiceAccount(id=account):
            return f"service_account:{account}"
        case ActorPlatformOperator(sub=sub):
            return f"platform_operator:{sub}"
        case _:
            return "system"


class DashboardRequests:
    """Answers dashboard requests relayed by the Platform; see the module docstring."""

    def __init__(self, cancel_run: Canceller, *, orch_version: str = kici.__version__) -> None:
        self._cancel_run = cancel_run
        self._orch_version = orch_version

    async def answer(self, request: DashboardRequest) -> Message:
        """The one response frame for ``request``; never raises."""
        type_ = request.TYPE
        actor = actor_name(request.actor)
        _log.info("dashboard request", request_type=type_, request_id=request.request_id, actor=actor)
        try:
            if isinstance(request, RunCancelRequest):
                return await self._cancel(request, actor)
        except Exception:
            _log.exception("dashboard request failed", request_type=type_, request_id=request.request_id)
            return error_response(
                type_,
                request.request_id,
                "internal error",
                DashboardErrorCode.INTERNAL_ERROR,
                self._orch_version,
            )
        return error_response(
            type_,
            request.request_id,
            f"{type_} is not supported by this orchestrator",
            DashboardErrorCode.UNSUPPORTED_REQUEST_TYPE,
            self._orch_version,
        )

    async def _cancel(self, request: RunCancelRequest, actor: str) -> Message:
        try:
            run_id = uuid.UUID(request.run_id)
        except ValueError:
            return error_response(
                request.TYPE,
                request.request_id,
                f"invalid run id {request.run_id[:80]!r}",
                DashboardErrorCode.INVALID_PAYLOAD,
                self._orch_version,
            )
        result = await self._cancel_run(
            run_id,
            force=request.force is True,
            reason=DASHBOARD_CANCEL_REASON,
            cancelled_by=f"dashboard:{actor}",
        )
        if result.outcome is CancelOutcome.NOT_FOUND:
            return RunCancelResponse(request_id=request.request_id, error="Run not found")
        if result.outcome is CancelOutcome.ALREADY_TERMINAL:
            status = result.run_status.value if result.run_status else "finished"
            return RunCancelResponse(request_id=request.request_id, error=f"Run already {status}")
        return RunCancelResponse(request_id=request.request_id, cancelled_jobs=result.jobs_cancelled)


# --- relayed webhooks --------------------------------------------------------------------------------


@attrs.frozen
class RelayDecision:
    """A relayed body's verdict; ``info`` is set when the delivery goes to the pipeline."""

    result: WebhookResult
    reason: str | None = None
    info: WebhookInfo | None = None


class RelayedWebhooks:
    """Judges, acknowledges and processes reassembled relays (see the module docstring)."""

    def __init__(
        self,
        ingress: IngressState,
        *,
        runs_created: RunsCreated | None = None,
        processing_slots: int = PROCESSING_SLOTS,
    ) -> None:
        self._ingress = ingress
        self._pipeline = attrs.evolve(ingress.pipeline, event_source=EventSource.RELAY)
        self._runs_created = runs_created
        self._slots = trio.CapacityLimiter(processing_slots)

    @staticmethod
    def _headers(start: WebhookRelayStart, source: SourceConfig) -> dict[str, str]:
        """The start's headers with the signature the Platform lifted out folded back in; a GitHub
        delivery also gets its event and delivery headers back from the start's own fields."""
        headers = lower_headers(dict(start.headers))
        if start.signature_header is not None:
            name = start.signature_header_name or (
                GITHUB_SIGNATURE_HEADER if source.is_github else source.signature_header
            )
            if name:
                headers.setdefault(name.lower(), start.signature_header)
        if source.is_github:
            headers.setdefault("x-github-event", start.event)
            headers.setdefault("x-github-delivery", start.delivery_id)
        return headers

    def _source(self, routing_key: str) -> SourceConfig:
        source = self._ingress.book().by_routing_key(routing_key)
        if source is None or not source.enabled:
            raise Rejection(404, "unknown_source", "unknown or disabled webhook source")
        return source

    async def judge(self, start: WebhookRelayStart, body: bytes) -> RelayDecision:
        """The verdict for ``body`` as the direct ingress would reach it; never raises."""
        where = {"routing_key": start.routing_key, "delivery_id": start.delivery_id, "via": "relay"}
        try:
            source = self._source(start.routing_key)
            check_size(source, len(body))
            headers = self._headers(start, source)
            info = await admit(
                self._ingress,
                source,
                body,
                headers,
                client_ip=resolve_client_ip(headers, start.client_ip),
                request_id=start.request_id or start.message_id,
                delivery_fallback=lambda: start.delivery_id,
            )
        except Rejection as rejection:
            count_rejection(self._ingress, rejection, **where)
            result = _RELAY_RESULTS.get(rejection.status, WebhookResult.REJECTED_MISCONFIGURED)
            if result is WebhookResult.ACCEPTED:
                return RelayDecision(result, f"not processed: {rejection}")
            return RelayDecision(result, str(rejection))
        except Exception as exc:
            _log.exception("relayed webhook could not be judged", **where)
            return RelayDecision(
                WebhookResult.REJECTED_MISCONFIGURED, f"verification failed ({type(exc).__name__})"
            )
        if info is None:
            return RelayDecision(WebhookResult.ACCEPTED, "filtered: the source does not admit this event")
        if self._ingress.metrics is not None:
            self._ingress.metrics.webhooks_received.labels(source=source.name, event=info.event).inc()
        return RelayDecision(WebhookResult.ACCEPTED, info=info)

    async def _record(self, info: WebhookInfo) -> bool:
        """The ``received`` row that must exist before the ack (see the module docstring)."""
        try:
            await self._pipeline.webhooks.record_delivery(
                EventLogEntry(
                    org_id=org_of(info.routing_key),
                    delivery_id=info.delivery_id,
                    status=EventLogStatus.RECEIVED,
                    received_at=self._pipeline.clock.now(),
                    routing_key=info.routing_key,
                    event=info.event,
                    action=info.action,
                    source=EventSource.RELAY,
                    provider=info.provider.value,
                )
            )
        except Exception as exc:
            _log.error("relayed delivery not recorded", delivery_id=info.delivery_id, error=str(exc))
            return False
        return True

    async def handle(
        self, complete: RelayComplete[WebhookRelayStart], reply: Callable[[Message], Awaitable[bool]]
    ) -> None:
        """Judge, record, acknowledge, then process; ``reply`` writes on the relay's connection."""
        start = complete.meta
        decision = await self.judge(start, complete.body)
        if decision.info is not None and not await self._record(decision.info):
            decision = RelayDecision(
                WebhookResult.REJECTED_MISCONFIGURED, "the delivery could not be recorded"
            )
        ack = WebhookAck(
            message_id=start.message_id,
            delivery_id=start.delivery_id,
            result=decision.result,
            reason=decision.reason,
        )
        if not await reply(ack):
            _log.warning(
                "webhook.ack not sent: the Platform connection is gone", delivery_id=start.delivery_id
            )
        _log.info(
            "relayed webhook judged",
            delivery_id=start.delivery_id,
            routing_key=start.routing_key,
            result=decision.result.value,
            reason=decision.reason,
            size=len(complete.body),
        )
        if decision.info is None:
            return
        async with self._slots:
            result = await process_webhook(decision.info, self._pipeline)
        if result.run_ids and self._runs_created is not None:
            self._runs_created(result.run_ids)


# --- the link ---------------------------------------------------------------------------------------


class LinkState(enum.StrEnum):
    CONNECTING = "connecting"
    AUTHENTICATING = "authenticating"
    AUTHENTICATED = "authenticated"
    STOPPED = "stopped"


class _Connection(HandlerBase):
    """One Platform connection's handler: handshake, relay buffers, requests, the pump."""

    def __init__(self, link: PlatformLink, nursery: trio.Nursery) -> None:
        self._link = link
        self._nursery = nursery
        self._relays: RelayReassembler[WebhookRelayStart] = RelayReassembler()
        self._deliveries: dict[str, str] = {}
        self._replayed = False
        self.authenticated = False

    # --- handshake ------------------------------------------------------------------------------

    async def on_open(self, session: Session) -> None:
        link = self._link
        link.state = LinkState.AUTHENTICATING
        link.auth_attempts += 1
        session.arm_timer(link.settings.auth_timeout_s, CloseCode.AUTH_TIMEOUT, "Auth timeout")
        await session.send(
            AuthRequest(
                token=link.settings.token, protocol_version=PROTOCOL_VERSION, capabilities=capabilities()
            )
        )

    async def on_message(self, session: Session, message: Message) -> None:
        try:
            await self._dispatch(session, message)
        except ConnectionClosed:
            raise
        except Exception:
            _log.exception("frame from the Platform not handled", type=message.TYPE)

    async def _dispatch(self, session: Session, message: Message) -> None:
        if isinstance(message, PlatformAuthSuccess):
            await self._authenticated(session, message)
        elif isinstance(message, AuthFailure):
            self._refused(session, message)
        elif not self.authenticated:
            _log.warning("frame before auth.success ignored", type=message.TYPE)
        elif isinstance(message, WebhookRelayStart):
            await self._relay_start(session, message)
        elif isinstance(message, WebhookRelayChunk):
            await self._relay_chunk(session, message)
        elif isinstance(message, DashboardRequest):
            self._nursery.start_soon(self._answer, session, message)
        elif isinstance(message, SourceRegisterAck):
            self._registered(message)
        elif isinstance(message, RateLimitWarning):
            _log.warning("the Platform's rate limiter dropped a frame", retry_after_ms=message.retry_after_ms)
        elif isinstance(message, Ack | Nack):
            _log.debug("platform ack", type=message.TYPE, message_id=message.message_id)
        else:
            _log.info("frame from the Platform not used by this orchestrator", type=message.TYPE)

    async def _authenticated(self, session: Session, message: PlatformAuthSuccess) -> None:
        if self.authenticated:
            return
        link = self._link
        session.disarm_timer()
        self.authenticated = True
        link.state = LinkState.AUTHENTICATED
        link.registered()
        _log.info(
            "platform link authenticated",
            connection_id=message.connection_id,
            org_id=message.org_id,
            url=link.settings.url,
        )
        session.start_heartbeats()
        await link.send_direct(session, link.source_register())
        self._nursery.start_soon(link.pump, session)

    def _refused(self, session: Session, message: AuthFailure) -> None:
        session.disarm_timer()
        self._link.last_auth_failure = message.reason
        _log.error("the Platform refused the orchestrator's credentials; retrying", reason=message.reason)
        session.close(CloseCode.NORMAL, AUTH_FAILED_REASON)

    def _registered(self, message: SourceRegisterAck) -> None:
        """The first ack of a connection is followed by capabilities and ``state.replay``; the ack
        of a later re-registration (sources reloaded) only reports the verdicts."""
        _log.info(
            "sources registered with the Platform",
            accepted=[a.routing_key for a in message.accepted],
            rejected=[r.routing_key for r in message.rejected],
        )
        for rejected in message.rejected:
            _log.warning(
                "the Platform rejected a source", routing_key=rejected.routing_key, reason=rejected.reason
            )
        if self._replayed:
            return
        self._replayed = True
        link = self._link
        link.forwarder.buffer.put(OrchCapabilitiesUpdate(capabilities=capabilities()))
        self._nursery.start_soon(link.replay)

    async def _answer(self, session: Session, request: DashboardRequest) -> None:
        response = await self._link.dashboard.answer(request)
        await self._link.send_direct(session, response)

    # --- relays ---------------------------------------------------------------------------------

    async def _reject(self, session: Session, rejected: RelayRejected, delivery_id: str | None) -> None:
        _log.warning(
            "webhook relay rejected",
            message_id=rejected.message_id,
            violation=rejected.violation.value,
            detail=rejected.detail,
        )
        ack = WebhookAck(
            message_id=rejected.message_id,
            delivery_id=delivery_id or rejected.message_id,
            result=WebhookResult.REJECTED_MISCONFIGURED,
            reason=rejected.detail,
        )
        await self._link.send_direct(session, ack)

    async def _relay_start(self, session: Session, start: WebhookRelayStart) -> None:
        if start.message_id not in self._relays and len(self._relays) >= MAX_OPEN_RELAYS:
            ack = WebhookAck(
                message_id=start.message_id,
                delivery_id=start.delivery_id,
                result=WebhookResult.REJECTED_MISCONFIGURED,
                reason=f"too many relays in progress (at most {MAX_OPEN_RELAYS})",
            )
            await self._link.send_direct(session, ack)
            return
        outcome = self._relays.start(start.message_id, start.total_size, start.chunk_count, start, _now_ms())
        if isinstance(outcome, RelayRejected):
            await self._reject(session, outcome, self._deliveries.pop(start.message_id, start.delivery_id))
        elif isinstance(outcome, RelayPending):
            self._deliveries[start.message_id] = start.delivery_id

    async def _relay_chunk(self, session: Session, chunk: WebhookRelayChunk) -> None:
        outcome = self._relays.chunk(chunk.message_id, chunk.sequence, chunk.data, chunk.final, _now_ms())
        if isinstance(outcome, RelayComplete):
            self._deliveries.pop(chunk.message_id, None)
            link = self._link
            link.spawn(link.webhooks.handle, outcome, lambda ack: link.send_direct(session, ack))
        elif isinstance(outcome, RelayRejected):
            await self._reject(session, outcome, self._deliveries.pop(chunk.message_id, None))
        elif isinstance(outcome, RelayIgnored):
            _log.info("relay frame after its verdict ignored", message_id=chunk.message_id)

    async def sweep_relays(self, session: Session) -> None:
        """Expire relay streams older than the TTL (each answered ``rejected_misconfigured``)."""
        while True:
            await trio.sleep(RELAY_SWEEP_S)
            for rejected in self._relays.expire(_now_ms()):
                await self._reject(session, rejected, self._deliveries.pop(rejected.message_id, None))


def _now_ms() -> float:
    return trio.current_time() * 1000.0


class PlatformLink:
    """The link; ``await nursery.start(link.run)``, ``link.stop()`` at shutdown (see the module doc)."""

    def __init__(
        self,
        settings: LinkSettings,
        *,
        forwarder: UpstreamForwarder,
        webhooks: RelayedWebhooks,
        dashboard: DashboardRequests,
        book: Callable[[], SourceBook],
        connector: Connector,
        wall_clock: WallClock = wall_clock_ms,
        jitter: Jitter = random.random,
        pacer: Pacer | None = None,
    ) -> None:
        self.settings = settings
        self.forwarder = forwarder
        self.webhooks = webhooks
        self.dashboard = dashboard
        self._book = book
        self._connector = connector
        self._wall_clock = wall_clock
        self._jitter = jitter
        self._pacer = pacer or Pacer()
        self._policy = PlatformInputPolicy()
        self._supervisor: Supervisor | None = None
        self._session: Session | None = None
        self._nursery: trio.Nursery | None = None
        self._stopping = False
        self._busy = 0
        self._idle = trio.Event()
        self._disconnected_at_ms: int | None = None
        self.state = LinkState.CONNECTING
        self.auth_attempts = 0
        self.connections = 0
        self.last_auth_failure: str | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the link up until :meth:`stop`; relayed webhooks in progress then get a short grace."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.forwarder.run)
            task_status.started()
            while not self._stopping:
                settings = self.settings
                self._supervisor = Supervisor(
                    functools.partial(self._connector, settings.url),
                    self._run_session,
                    max_delay_ms=settings.max_reconnect_delay_ms,
                    jitter=self._jitter,
                    name=LINK_NAME,
                )
                await self._supervisor.run()
            self.state = LinkState.STOPPED
            with trio.move_on_after(DRAIN_TIMEOUT_S):
                while self._busy:
                    await self._idle.wait()
            nursery.cancel_scope.cancel()

    def stop(self) -> None:
        """Close the connection with 1000 and stop reconnecting."""
        self._stopping = True
        self._end_generation(STOP_REASON)

    def reconfigure(self, settings: LinkSettings) -> None:
        """New settings; a changed URL or token reconnects now (OPS-03 "Platform reconnect")."""
        old, self.settings = self.settings, settings
        if not old.same_connection(settings):
            _log.info("platform link settings changed; reconnecting", url=settings.url)
            self._end_generation(SETTINGS_CHANGED_REASON)

    def _end_generation(self, reason: str) -> None:
        """End the current supervisor: its connection closes with 1000 and ``reason``; `run` then
        starts the next generation with the current settings, unless stopping."""
        if self._supervisor is not None:
            self._supervisor.stop(reason)

    def sources_changed(self) -> None:
        """Register the current sources again on the live connection (after a reload changed them)."""
        session = self._session
        if session is not None and self._nursery is not None and self.state is LinkState.AUTHENTICATED:
            self._nursery.start_soon(self.send_direct, session, self.source_register())

    def registered(self) -> None:
        if self._supervisor is not None:
            self._supervisor.registered()

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the link's nursery, outliving the connection (relay processing)."""
        if self._nursery is None:
            raise RuntimeError("PlatformLink.run has not started")
        self._busy += 1
        self._idle = trio.Event()
        self._nursery.start_soon(self._tracked, fn, args)

    async def _tracked(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        try:
            await fn(*args)
        except Exception:
            _log.exception("platform link task failed")
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    # --- one connection ------------------------------------------------------------------------

    async def _run_session(self, conn: WsConnection) -> ConnectionEnd:
        self.connections += 1
        end: ConnectionEnd | None = None
        try:
            async with trio.open_nursery() as nursery:
                handler = _Connection(self, nursery)

                async def connection(
                    *, task_status: trio.TaskStatus[Session] = trio.TASK_STATUS_IGNORED
                ) -> None:
                    nonlocal end
                    try:
                        end = await run_connection(
                            conn,
                            handler,
                            direction=Direction.PLATFORM_TO_ORCH,
                            policy=self._policy,
                            heartbeat_interval=self.settings.heartbeat_interval_s,
                            liveness=None,
                            clock=self._wall_clock,
                            task_status=task_status,
                        )
                    except Exception:
                        _log.exception("platform connection failed")
                        end = ConnectionEnd(CloseCode.INTERNAL_ERROR, "Internal error", by_peer=False)
                    finally:
                        nursery.cancel_scope.cancel()

                session = await nursery.start(connection)
                self._session = session
                nursery.start_soon(handler.sweep_relays, session)
        finally:
            self._disconnected()
        if end is None:
            end = ConnectionEnd(CloseCode.INTERNAL_ERROR, "Internal error", by_peer=False)
        if not close_reaction(end.code).reconnect:
            _log.error(
                "the Platform closed the link with a final code; retrying anyway",
                close_code=end.code,
                close_reason=end.reason,
            )
            end = ConnectionEnd(CloseCode.UNAUTHORIZED, end.reason, end.by_peer)
        return end

    def _disconnected(self) -> None:
        """The connection ended, also when the supervisor cancelled the session to stop the link."""
        self._session = None
        self._disconnected_at_ms = self._wall_clock()
        if not self._stopping:
            self.state = LinkState.CONNECTING

    def source_register(self) -> SourceRegister:
        s = self.settings
        return SourceRegister(
            message_id=_new_id(),
            sources=source_entries(self._book().sources),
            instance_id=s.instance_id,
            cluster_name=s.cluster_name,
            address=s.address,
            version=s.version,
            mode=s.mode,
            queue_timeout_ms=s.queue_timeout_ms,
        )

    async def send_direct(self, session: Session, message: Message) -> bool:
        """Write ``message`` now on ``session`` (never buffered); False when that connection is gone."""
        try:
            size = len(encode(message).encode("utf-8"))
            await session.send(message)
        except ConnectionClosed:
            return False
        except EncodeError as exc:
            _log.error("frame not encodable, dropped", type=message.TYPE, error=str(exc))
            return False
        self._pacer.charge(size)
        return True

    async def pump(self, session: Session) -> None:
        """Replay, then keep writing, the EventBuffer on ``session`` (paced); a frame not written stays."""
        buffer = self.forwarder.buffer
        if len(buffer) or buffer.dropped:
            offline = self._disconnected_at_ms
            _log.info(
                "replaying buffered telemetry to the Platform",
                buffered=len(buffer),
                dropped=buffer.dropped,
                offline_s=None if offline is None else round((self._wall_clock() - offline) / 1000),
            )
            buffer.reset_dropped()
        while True:
            message = await buffer.get()
            sent = False
            try:
                text = encode(message)
                await self._pacer.wait(len(text.encode("utf-8")))
                await session.send(message)
                sent = True
            except EncodeError as exc:
                sent = True
                _log.error("telemetry frame not encodable, dropped", type=message.TYPE, error=str(exc))
            except ConnectionClosed:
                return
            finally:
                if not sent:
                    buffer.requeue(message)

    async def replay(self) -> None:
        """``state.replay`` after ``source.register.ack`` (through the EventBuffer)."""
        try:
            count = await self.forwarder.queue_replay()
        except Exception as exc:
            _log.error("state.replay not sent", error=str(exc))
            return
        _log.info("state.replay queued", runs=count)


@attrs.frozen(kw_only=True)
class LinkParts:
    """What :func:`build_platform_link` wires (the composition root passes its real parts)."""

    settings: LinkSettings
    forwarder: UpstreamForwarder
    ingress: IngressState
    cancel_run: Canceller
    book: Callable[[], SourceBook]
    connector: Connector
    jitter: Jitter = random.random


def build_platform_link(parts: LinkParts) -> PlatformLink:
    forwarder = parts.forwarder

    def runs_created(run_ids: Sequence[uuid.UUID]) -> None:
        for run_id in run_ids:
            forwarder.run_changed(run_id)

    return PlatformLink(
        parts.settings,
        forwarder=forwarder,
        webhooks=RelayedWebhooks(parts.ingress, runs_created=runs_created),
        dashboard=DashboardRequests(parts.cancel_run),
        book=parts.book,
        connector=parts.connector,
        jitter=parts.jitter,
    )


__all__ = [
    "HANDLED_DASHBOARD_REQUESTS",
    "Connector",
    "DashboardRequests",
    "LinkParts",
    "LinkSettings",
    "LinkState",
    "PlatformInputPolicy",
    "PlatformLink",
    "RelayDecision",
    "RelayedWebhooks",
    "actor_name",
    "build_platform_link",
    "capabilities",
    "links_to_platform",
    "source_entries",
]
