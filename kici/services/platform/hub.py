"""The orchestrator hub: the Platform's ``/ws`` endpoint for orchestrators (20 §5.1, 20a §6.4; PRO-20..22).

One call of :meth:`OrchestratorHub.serve` per connection runs the shared connection machinery
(``kici.services.connection``: reader, writer, the rate limiter on every frame before any auth phase,
the liveness monitor closing 4004 after 180 s of silence) with this module's handler:

``auth.request`` within 5 s (else 4002) -> protocol version gate (``auth.failure`` + 4005) -> SHA-256 of
the API key looked up among the unrevoked keys (miss: ``auth.failure`` + 4001) -> ``auth.success
{connectionId, orgId}``. The key's org is the connection's tenant for its whole life; no ``orgId``
field of any later frame is ever used to attribute or route anything.

Then ``source.register`` (a full set, replacing the connection's previous one): each routing key is
accepted iff the tenant owns it (`judge_sources`), and the ack lists the other orchestrators of the
same org as ``peers``. Accepted keys make the connection a relay target: webhooks for a key go to the
connections registered for it, round-robin (`relay_webhook`); several orchestrators of one org may
share a key (an HA pair, a cross-arch pool: CLU-01). Telemetry frames go to the `TelemetrySink` with
the connection's org; ``webhook.ack`` and dashboard responses resolve the pending request they answer.

Invalid input (the §2 table has no Platform row; these follow the orchestrator's rules for agents):
before authentication any bad frame closes 4003, and a well-formed first frame that is not
``auth.request`` gets ``auth.failure`` + 4001. After it, bad JSON and schema-invalid frames close
4003, while a well-formed frame of a type this Platform does not know is logged and ignored, so a
newer orchestrator's additions do not cut its link.

Revocation (PRO-36): `key_revoked` closes every live connection of the key with 4010 at once (the
daemon calls it on the store's NOTIFY); `sweep_revoked` re-checks all live keys (after a listener
reconnect, and periodically as a safety net).

Choices where the spec is silent: a relay goes to one connection at a time; a connection that drops
mid-relay makes the next one (round-robin order) get the webhook, within the same 5 s budget; the
budget ending is a timeout whatever the attempts. A key ``source.register`` asks for twice is judged
once. Two different ``clusterId`` registering one routing key are allowed but logged as a warning
(50 §1: one cluster per routing key).
"""

from __future__ import annotations

import enum
import itertools
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Final

import attrs
import structlog
import trio

from kici.adapters.clock import Clock, SystemClock
from kici.domain.liveness import Liveness, LivenessThresholds
from kici.domain.ports import ConnectionClosed, WsConnection
from kici.domain.protocol import (
    AcceptedSource,
    AuthFailure,
    AuthRequest,
    CloseCode,
    DashboardErrorFrame,
    DashboardRequest,
    DashboardResponse,
    Direction,
    Heartbeat,
    LogResponse,
    Message,
    OrchCapabilities,
    OrchCapabilitiesUpdate,
    PlatformAuthSuccess,
    RejectedSource,
    RelayPeer,
    SourceDeregister,
    SourceDeregisterAck,
    SourceRegister,
    SourceRegisterAck,
    WebhookAck,
    WebhookRelayChunk,
    WebhookRelayStart,
    check_protocol_version,
    dashboard_request_supported,
    response_type_for,
)
from kici.domain.ratelimit import RateLimitConfig, WsRateLimiter
from kici.domain.relay import RelaySplit, split_body
from kici.domain.tenancy import KeyIdentity, api_key_hash, judge_sources
from kici.services.connection import (
    CloseWith,
    DecodeErrorTable,
    HandlerBase,
    Ignore,
    Session,
    run_connection,
)
from kici.services.correlator import (
    WEBHOOK_RELAY,
    Correlator,
    Disconnected,
    RequestKind,
    RequestTimeout,
)
from kici.services.platform.ports import TELEMETRY_TYPES, PlatformStore, TelemetrySink

_log = structlog.get_logger(__name__)

AUTH_TIMEOUT_REASON: Final = "Auth timeout"
INVALID_KEY_REASON: Final = "Invalid API key"
EXPECTED_AUTH_REASON: Final = "Expected auth.request"
REVOKED_REASON: Final = "API key revoked"
SHUTDOWN_REASON: Final = "Server shutting down"
UNAVAILABLE_REASON: Final = "Platform temporarily unavailable"

BEFORE_AUTH: Final = DecodeErrorTable(
    bad_json=CloseWith(CloseCode.INVALID_MESSAGE, "Malformed JSON"),
    unknown_type=CloseWith(CloseCode.INVALID_MESSAGE, "Invalid message format"),
    invalid=CloseWith(CloseCode.INVALID_MESSAGE, "Invalid message format"),
)
"""Anything undecodable before ``auth.request`` closes 4003."""

AUTHENTICATED: Final = DecodeErrorTable(
    bad_json=CloseWith(CloseCode.INVALID_MESSAGE, "Malformed JSON"),
    unknown_type=Ignore(),
    invalid=CloseWith(CloseCode.INVALID_MESSAGE, "Invalid message format"),
)
"""After it: bad JSON and invalid frames close 4003; unknown types are ignored (forward compatibility)."""


class NoOrchestratorError(Exception):
    """No connected orchestrator of the org can take the request."""

    def __init__(
        self, org_id: str, detail: str = "no orchestrator of this organization is connected"
    ) -> None:
        super().__init__(detail)
        self.org_id = org_id


class OrchestratorGoneError(NoOrchestratorError):
    """The orchestrator's connection closed while the request waited for its answer."""

    def __init__(self, org_id: str) -> None:
        super().__init__(org_id, "the orchestrator disconnected before answering")


class UnsupportedRequestError(Exception):
    """Every candidate orchestrator's manifest leaves this dashboard request type out (HTTP 501, PRO-28)."""

    def __init__(self, request_type: str) -> None:
        super().__init__(f"no connected orchestrator supports {request_type}")
        self.request_type = request_type


@attrs.frozen(kw_only=True)
class HubSettings:
    auth_timeout_s: float = 5.0
    liveness: LivenessThresholds = attrs.field(factory=LivenessThresholds)
    rate_limit: RateLimitConfig = attrs.field(factory=RateLimitConfig)
    public_url: str | None = None
    """Base URL git hosts reach the Platform at; sent back as each accepted source's ``webhookUrl``."""
    request_timeout_s: float = 10.0


@attrs.define(eq=False)
class OrchestratorLink:
    """An authenticated orchestrator connection; ``org_id`` is fixed by its API key."""

    connection_id: str
    org_id: str
    key_id: str
    session: Session
    remote: str
    capabilities: OrchCapabilities | None = None
    routing_keys: tuple[str, ...] = ()
    instance_id: str | None = None
    cluster_id: str | None = None
    cluster_name: str | None = None
    address: str | None = None
    version: str | None = None
    correlator: Correlator[Message] = attrs.field(factory=Correlator)
    closing: bool = False

    def peer(self) -> RelayPeer:
        role = None if self.capabilities is None else self.capabilities.orch_role
        return RelayPeer(
            connection_id=self.connection_id,
            instance_id=self.instance_id,
            address=self.address,
            routing_keys=list(self.routing_keys),
            orch_role=role,
        )


@attrs.frozen(kw_only=True)
class RelayRequest:
    """A webhook to relay: the raw body and what the relay start carries besides it."""

    routing_key: str
    delivery_id: str
    event: str
    action: str | None = None
    signature_header_name: str | None = None
    signature_header: str | None = None
    client_ip: str | None = None
    headers: dict[str, str] = attrs.field(factory=dict)
    body: bytes = attrs.field(repr=lambda body: f"<{len(body)} bytes>")
    request_id: str | None = None


class RelayOutcome(enum.StrEnum):
    ANSWERED = "answered"
    NO_ORCHESTRATOR = "no_orchestrator"
    TIMEOUT = "timeout"


@attrs.frozen(kw_only=True)
class RelayResult:
    outcome: RelayOutcome
    ack: WebhookAck | None = None
    connection_id: str | None = None
    attempts: int = 0


class OrchestratorHub:
    """Serves orchestrator connections and routes webhooks and dashboard requests to them."""

    def __init__(
        self,
        *,
        store: PlatformStore,
        telemetry: TelemetrySink,
        settings: HubSettings | None = None,
        clock: Clock | None = None,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self._store = store
        self._telemetry = telemetry
        self.settings = settings or HubSettings()
        self._clock = clock or SystemClock()
        self._new_id = new_id
        self._links: dict[str, OrchestratorLink] = {}
        self._routes: dict[str, list[OrchestratorLink]] = {}
        self._turns: dict[str, itertools.count[int]] = {}
        self._epochs: dict[str, int] = {}
        self._revoked: set[str] = set()
        self._sessions: set[Session] = set()
        self._closing = False

    # --- views ------------------------------------------------------------------------------------

    def links(self, org_id: str | None = None) -> list[OrchestratorLink]:
        """The live authenticated connections (of one org), oldest first."""
        return [
            link
            for link in self._links.values()
            if not link.closing and (org_id is None or link.org_id == org_id)
        ]

    def connected_count(self) -> int:
        return len(self.links())

    def registration_epoch(self, routing_key: str) -> int:
        """Grows whenever a connection registers ``routing_key``: cached answers about it are stale then."""
        return self._epochs.get(routing_key, 0)

    def routes(self, routing_key: str, org_id: str) -> list[OrchestratorLink]:
        """The connections of ``org_id`` registered for ``routing_key``, rotated one step per call."""
        candidates = [
            link for link in self._routes.get(routing_key, ()) if link.org_id == org_id and not link.closing
        ]
        return self._rotate(f"key:{routing_key}", candidates)

    def _rotate(self, turn_key: str, items: list[OrchestratorLink]) -> list[OrchestratorLink]:
        if len(items) < 2:
            return items
        turn = next(self._turns.setdefault(turn_key, itertools.count())) % len(items)
        return items[turn:] + items[:turn]

    # --- connections ------------------------------------------------------------------------------

    async def serve(self, conn: WsConnection, remote_addr: str) -> None:
        """Run one orchestrator connection until it closes, then forget it."""
        handler = _OrchestratorConnection(self, remote_addr)
        try:
            end = await run_connection(
                conn,
                handler,
                direction=Direction.ORCH_TO_PLATFORM,
                policy=BEFORE_AUTH,
                rate_limiter=WsRateLimiter(self.settings.rate_limit),
                liveness=self.settings.liveness,
            )
            _log.info(
                "orchestrator connection closed",
                remote=remote_addr,
                code=end.code,
                reason=end.reason,
                by_peer=end.by_peer,
                connection_id=None if handler.link is None else handler.link.connection_id,
            )
        except Exception:
            _log.exception("orchestrator connection failed", remote=remote_addr)
        finally:
            if handler.session is not None:
                self._sessions.discard(handler.session)
            if handler.link is not None:
                self._detach(handler.link)

    def close_all(self) -> None:
        """Shutdown: no new connections, every open one closed with 1001 (orchestrators reconnect)."""
        self._closing = True
        for session in list(self._sessions):
            session.close(CloseCode.GOING_AWAY, SHUTDOWN_REASON)

    def _attach(self, identity: KeyIdentity, session: Session, remote: str) -> OrchestratorLink | None:
        if identity.key_id in self._revoked:
            return None
        link = OrchestratorLink(
            connection_id=self._new_id(),
            org_id=identity.org_id,
            key_id=identity.key_id,
            session=session,
            remote=remote,
        )
        self._links[link.connection_id] = link
        return link

    def _detach(self, link: OrchestratorLink) -> None:
        link.closing = True
        self._links.pop(link.connection_id, None)
        self._set_routes(link, ())
        failed = link.correlator.fail_all()
        if failed:
            _log.info("pending requests failed by disconnect", connection_id=link.connection_id, count=failed)

    def _set_routes(self, link: OrchestratorLink, keys: Sequence[str]) -> None:
        for key in link.routing_keys:
            holders = self._routes.get(key, [])
            if link in holders:
                holders.remove(link)
            if not holders:
                self._routes.pop(key, None)
        link.routing_keys = tuple(keys)
        for key in link.routing_keys:
            self._routes.setdefault(key, []).append(link)
            self._epochs[key] = self._epochs.get(key, 0) + 1

    # --- revocation -------------------------------------------------------------------------------

    def key_revoked(self, key_id: str) -> int:
        """Close every live connection of ``key_id`` with 4010; returns how many."""
        self._revoked.add(key_id)
        closed = 0
        for link in list(self._links.values()):
            if link.key_id == key_id and not link.closing:
                link.closing = True
                self._set_routes(link, ())
                link.session.close(CloseCode.AGENT_AUTH_FAILED, REVOKED_REASON)
                closed += 1
        if closed:
            _log.warning("API key revoked: connections closed", key_id=key_id, connections=closed)
        return closed

    async def sweep_revoked(self) -> int:
        """Close the connections whose key is no longer active in the store; returns how many."""
        keys = {link.key_id for link in self._links.values() if not link.closing}
        if not keys:
            return 0
        active = await self._store.active_key_ids(keys)
        return sum(self.key_revoked(key) for key in keys - active)

    async def run_revocation_sweeps(
        self, interval_s: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """`sweep_revoked` every ``interval_s`` seconds until cancelled; failures are logged."""
        task_status.started()
        while True:
            await trio.sleep(interval_s)
            try:
                await self.sweep_revoked()
            except Exception:
                _log.exception("revocation sweep failed")

    # --- handshake and frames, called by the connection handler -----------------------------------

    async def authenticate(self, request: AuthRequest) -> KeyIdentity | None:
        return await self._store.find_active_key(api_key_hash(request.token))

    async def touch(self, key_id: str) -> None:
        try:
            await self._store.touch_api_key(key_id, self._clock.now())
        except Exception:
            _log.warning("could not stamp API key last_used_at", key_id=key_id)

    async def register_sources(self, link: OrchestratorLink, message: SourceRegister) -> None:
        requested = [source.routing_key for source in message.sources]
        owners = await self._store.routing_key_owners(requested)
        verdicts = judge_sources(link.org_id, requested, owners)
        link.instance_id = message.instance_id
        link.cluster_id = message.cluster_id
        link.cluster_name = message.cluster_name
        link.address = message.address
        link.version = message.version
        self._set_routes(link, verdicts.accepted)
        self._warn_split_clusters(link)
        providers = {source.routing_key: source.provider.value for source in reversed(message.sources)}
        peers = [other.peer() for other in self.links(link.org_id) if other is not link]
        ack = SourceRegisterAck(
            message_id=message.message_id,
            accepted=[
                AcceptedSource(routing_key=key, webhook_url=self.webhook_url(providers[key], key))
                for key in verdicts.accepted
            ],
            rejected=[RejectedSource(routing_key=key, reason=reason) for key, reason in verdicts.rejected],
            peers=peers or None,
        )
        await link.session.send(ack)
        _log.info(
            "sources registered",
            connection_id=link.connection_id,
            org_id=link.org_id,
            accepted=list(verdicts.accepted),
            rejected=[key for key, _ in verdicts.rejected],
        )

    def webhook_url(self, provider: str, routing_key: str) -> str | None:
        base = self.settings.public_url
        return None if base is None else f"{base.rstrip('/')}/webhooks/{provider}/{routing_key}"

    def _warn_split_clusters(self, link: OrchestratorLink) -> None:
        if link.cluster_id is None:
            return
        for key in link.routing_keys:
            others = {
                other.cluster_id
                for other in self._routes.get(key, ())
                if other is not link and other.cluster_id not in (None, link.cluster_id)
            }
            if others:
                _log.warning(
                    "two clusters registered one routing key",
                    routing_key=key,
                    org_id=link.org_id,
                    cluster_ids=sorted({link.cluster_id, *(c for c in others if c is not None)}),
                )

    async def deregister_sources(self, link: OrchestratorLink, message: SourceDeregister) -> None:
        drop = set(message.routing_keys)
        removed = [key for key in link.routing_keys if key in drop]
        self._set_routes(link, [key for key in link.routing_keys if key not in drop])
        await link.session.send(SourceDeregisterAck(message_id=message.message_id, removed=removed))

    async def telemetry(self, link: OrchestratorLink, message: Message) -> None:
        try:
            await self._telemetry.record(link.org_id, link.connection_id, message)
        except Exception:
            _log.exception(
                "telemetry sink failed; frame dropped", connection_id=link.connection_id, type=message.TYPE
            )

    # --- relaying webhooks ------------------------------------------------------------------------

    async def relay_webhook(self, org_id: str, webhook: RelayRequest, *, budget_s: float) -> RelayResult:
        """Relay ``webhook`` to one of the org's orchestrators registered for its routing key.

        The whole exchange (start, chunks, ``webhook.ack``) runs within ``budget_s`` seconds; a
        connection that closes mid-relay hands the webhook to the next one in round-robin order.
        """
        deadline = trio.current_time() + budget_s
        split = split_body(webhook.body)
        attempts = 0
        for link in self.routes(webhook.routing_key, org_id):
            if link.closing:
                continue
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                return RelayResult(outcome=RelayOutcome.TIMEOUT, attempts=attempts)
            attempts += 1
            message_id = self._new_id()
            send = partial(self._send_relay, link, self._relay_start(webhook, split, message_id), split)
            with trio.move_on_at(deadline):
                try:
                    ack = await link.correlator.request(WEBHOOK_RELAY, message_id, send, timeout_s=remaining)
                except (Disconnected, ConnectionClosed):
                    _log.info(
                        "orchestrator dropped during relay; trying the next",
                        connection_id=link.connection_id,
                        delivery_id=webhook.delivery_id,
                    )
                    continue
                except RequestTimeout:
                    return RelayResult(outcome=RelayOutcome.TIMEOUT, attempts=attempts)
                assert isinstance(ack, WebhookAck)
                return RelayResult(
                    outcome=RelayOutcome.ANSWERED,
                    ack=ack,
                    connection_id=link.connection_id,
                    attempts=attempts,
                )
            return RelayResult(outcome=RelayOutcome.TIMEOUT, attempts=attempts)
        return RelayResult(outcome=RelayOutcome.NO_ORCHESTRATOR, attempts=attempts)

    @staticmethod
    def _relay_start(webhook: RelayRequest, split: RelaySplit, message_id: str) -> WebhookRelayStart:
        return WebhookRelayStart(
            message_id=message_id,
            routing_key=webhook.routing_key,
            delivery_id=webhook.delivery_id,
            event=webhook.event,
            action=webhook.action,
            signature_header_name=webhook.signature_header_name,
            signature_header=webhook.signature_header,
            client_ip=webhook.client_ip,
            headers=webhook.headers,
            total_size=split.total_size,
            chunk_count=split.chunk_count,
            request_id=webhook.request_id,
        )

    @staticmethod
    async def _send_relay(link: OrchestratorLink, start: WebhookRelayStart, split: RelaySplit) -> None:
        await link.session.send(start)
        for chunk in split.chunks:
            await link.session.send(
                WebhookRelayChunk(
                    message_id=start.message_id, sequence=chunk.sequence, data=chunk.data, final=chunk.final
                )
            )

    # --- dashboard requests -----------------------------------------------------------------------

    async def request(
        self,
        org_id: str,
        message: DashboardRequest,
        timeout_s: float | None = None,
        *,
        connection_id: str | None = None,
    ) -> Message:
        """Send a dashboard request to one of ``org_id``'s orchestrators and return its response frame.

        Connections are tried round-robin; one whose manifest lists ``supportedDashboardRequests``
        without this type is skipped (no manifest: forwarded). ``connection_id`` pins the connection.
        Raises `NoOrchestratorError` (none connected, or it disconnected before answering:
        `OrchestratorGoneError`), `UnsupportedRequestError`, ``trio.TooSlowError`` after ``timeout_s``
        (default 10 s). The response may carry ``error``/``code``: mapping those is the caller's.
        """
        request_type = message.wire_type()
        answer = response_type_for(request_type)
        if answer is None:
            raise ValueError(f"{request_type} is answered by a stream of frames, not by one response")
        candidates = [
            link
            for link in self.links(org_id)
            if connection_id is None or link.connection_id == connection_id
        ]
        if not candidates:
            raise NoOrchestratorError(org_id)
        able = [
            link
            for link in self._rotate(f"org:{org_id}", candidates)
            if dashboard_request_supported(link.capabilities, request_type) is not False
        ]
        if not able:
            raise UnsupportedRequestError(request_type)
        link = able[0]
        limit = self.settings.request_timeout_s if timeout_s is None else timeout_s
        kind = RequestKind(request_type, frozenset({answer, f"{request_type}.response"}), limit)
        try:
            return await link.correlator.request(
                kind, message.request_id, partial(link.session.send, message), timeout_s=limit
            )
        except RequestTimeout:
            raise trio.TooSlowError(f"{request_type} not answered within {limit:g}s") from None
        except (Disconnected, ConnectionClosed):
            raise OrchestratorGoneError(org_id) from None


class _Phase(enum.Enum):
    AUTH = enum.auto()
    READY = enum.auto()


_RESPONSES: Final = (WebhookAck, DashboardResponse, DashboardErrorFrame, LogResponse)


class _OrchestratorConnection(HandlerBase):
    """The per-connection handler; it runs in the connection's reader task, one frame at a time."""

    def __init__(self, hub: OrchestratorHub, remote: str) -> None:
        self._hub = hub
        self._remote = remote
        self._phase = _Phase.AUTH
        self.session: Session | None = None
        self.link: OrchestratorLink | None = None

    async def on_open(self, session: Session) -> None:
        self.session = session
        if self._hub._closing:
            session.close(CloseCode.GOING_AWAY, SHUTDOWN_REASON)
            return
        self._hub._sessions.add(session)
        session.arm_timer(self._hub.settings.auth_timeout_s, CloseCode.AUTH_TIMEOUT, AUTH_TIMEOUT_REASON)

    def on_liveness(self, session: Session, liveness: Liveness) -> None:
        connection_id = None if self.link is None else self.link.connection_id
        if liveness is Liveness.OK:
            _log.info("orchestrator link healthy again", connection_id=connection_id, remote=self._remote)
        else:
            _log.warning(
                "orchestrator link silent",
                connection_id=connection_id,
                remote=self._remote,
                liveness=liveness.value,
            )

    async def on_message(self, session: Session, message: Message) -> None:
        if self._phase is _Phase.AUTH:
            await self._authenticate(session, message)
            return
        link = self.link
        assert link is not None
        with structlog.contextvars.bound_contextvars(connection_id=link.connection_id, org_id=link.org_id):
            await self._route(link, message)

    def _refuse(self, session: Session, code: CloseCode, reason: str) -> None:
        _log.warning("orchestrator refused", remote=self._remote, code=int(code), reason=reason)
        session.try_send(AuthFailure(reason=reason))
        session.close(code, reason)

    async def _authenticate(self, session: Session, message: Message) -> None:
        if not isinstance(message, AuthRequest):
            self._refuse(session, CloseCode.UNAUTHORIZED, EXPECTED_AUTH_REASON)
            return
        verdict = check_protocol_version(message.protocol_version)
        if not verdict.accepted:
            self._refuse(session, CloseCode.PROTOCOL_ERROR, verdict.reason or "Unsupported protocol version")
            return
        try:
            identity = await self._hub.authenticate(message)
        except Exception:
            _log.exception("API key lookup failed", remote=self._remote)
            self._refuse(session, CloseCode.INTERNAL_ERROR, UNAVAILABLE_REASON)
            return
        link = None if identity is None else self._hub._attach(identity, session, self._remote)
        if identity is None or link is None:
            self._refuse(session, CloseCode.UNAUTHORIZED, INVALID_KEY_REASON)
            return
        self.link = link
        link.capabilities = message.capabilities
        session.disarm_timer()
        session.policy = AUTHENTICATED
        self._phase = _Phase.READY
        await session.send(PlatformAuthSuccess(connection_id=link.connection_id, org_id=link.org_id))
        _log.info(
            "orchestrator authenticated",
            connection_id=link.connection_id,
            org_id=link.org_id,
            key_id=link.key_id,
            remote=self._remote,
        )
        await self._hub.touch(link.key_id)

    async def _route(self, link: OrchestratorLink, message: Message) -> None:
        hub = self._hub
        match message:
            case Heartbeat():
                return
            case SourceRegister():
                await hub.register_sources(link, message)
            case SourceDeregister():
                await hub.deregister_sources(link, message)
            case OrchCapabilitiesUpdate():
                link.capabilities = message.capabilities
            case _ if isinstance(message, TELEMETRY_TYPES):
                await hub.telemetry(link, message)
            case _ if isinstance(message, _RESPONSES):
                if not link.correlator.resolve_message(message):
                    _log.info("response for no pending request ignored", type=message.wire_type())
            case AuthRequest():
                _log.info("repeated auth.request ignored")
            case _:
                _log.debug("orchestrator frame not served here, ignored", type=message.wire_type())


__all__ = [
    "AUTHENTICATED",
    "BEFORE_AUTH",
    "HubSettings",
    "NoOrchestratorError",
    "OrchestratorGoneError",
    "OrchestratorHub",
    "OrchestratorLink",
    "RelayOutcome",
    "RelayRequest",
    "RelayResult",
    "UnsupportedRequestError",
]
