"""Test doubles for the Platform's orchestrator endpoint: a protocol-level fake orchestrator and an
in-memory Platform store.

`FakeOrchestrator` is a real WebSocket client speaking the orchestrator side of 20 §5.1 / 20a §6.4,
scripted by the test: ``open_fake_orchestrator(url, api_key=..., sources=[...])`` connects, sends
``auth.request`` and ``source.register`` and yields the fake, whose reader task collects every frame
the Platform sends. Relayed webhooks are reassembled with the orchestrator's own strict reassembly
(``kici.domain.relay``) and answered with ``webhook.ack`` by the ``verdict`` callback (``None``: no
answer, for timeout tests); stream violations are answered ``rejected_misconfigured`` as the spec
says. Dashboard requests are answered by the ``dashboard`` callback. The test can also misbehave
(``send_text`` of garbage, silence, ``disconnect``). It verifies nothing about signatures: what the
orchestrator decides is the test's script.

`MemoryPlatformStore` implements ``kici.services.platform.ports.PlatformStore`` with dicts; the
contract suite (``tests/contract/test_platform_store.py``) runs it and the PostgreSQL store through
the same cases. ``revoked_listeners`` stand in for the NOTIFY a revocation sends.

`serve_app` runs a quart-trio app on loopback (a free port) for the duration of a block.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial
from typing import TypeVar

import attrs
import trio
from quart_trio import QuartTrio

from kici.adapters.ws.client import connect
from kici.adapters.ws.server import BoundServer, serve
from kici.domain.ports import ConnectionClosed, WsConnection
from kici.domain.protocol import (
    PROTOCOL_VERSION,
    AuthFailure,
    AuthRequest,
    DashboardRequest,
    DecodeError,
    Direction,
    Heartbeat,
    Message,
    OrchCapabilities,
    PlatformAuthSuccess,
    SourceEntry,
    SourceProvider,
    SourceRegister,
    SourceRegisterAck,
    SourceSubtype,
    WebhookAck,
    WebhookRelayChunk,
    WebhookRelayStart,
    WebhookResult,
    decode,
    encode,
)
from kici.domain.relay import RelayComplete, RelayOutcome, RelayReassembler, RelayRejected
from kici.domain.tenancy import (
    ApiKey,
    ApiKeyNotFoundError,
    DeliveryRecord,
    KeyIdentity,
    NewDelivery,
    Org,
    OrgExistsError,
    OrgNotFoundError,
    RoutingKeyAssignment,
    RoutingKeyNotFoundError,
    RoutingKeyTakenError,
    check_org_name,
    check_routing_key,
)

M = TypeVar("M", bound=Message)

DEFAULT_TIMEOUT_S = 10.0


def now_ms() -> int:
    return int(time.time() * 1000)


# --- the fake orchestrator ------------------------------------------------------------------------


@attrs.frozen
class ReceivedRelay:
    """A relayed webhook as the fake reassembled it."""

    start: WebhookRelayStart
    body: bytes = attrs.field(repr=lambda body: f"<{len(body)} bytes>")


Verdict = tuple[WebhookResult | None, str | None]
VerdictFn = Callable[[ReceivedRelay], Verdict | None]
DashboardFn = Callable[[DashboardRequest], Message | None]


def accept_all(_relay: ReceivedRelay) -> Verdict:
    return WebhookResult.ACCEPTED, "signature verified"


def never_answer(_relay: ReceivedRelay) -> None:
    return None


def source(
    routing_key: str, provider: SourceProvider = SourceProvider.GITHUB, name: str | None = None
) -> SourceEntry:
    """A ``source.register`` entry for ``routing_key``."""
    subtype = SourceSubtype.GITHUB_APP if provider is SourceProvider.GITHUB else SourceSubtype.GENERIC_WEBHOOK
    return SourceEntry(provider=provider, routing_key=routing_key, name=name or routing_key, subtype=subtype)


class OrchestratorRefusedError(Exception):
    """The Platform refused the handshake (``auth.failure``) or closed the connection during it."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"refused ({code}: {reason})")
        self.code = code
        self.reason = reason


class FakeOrchestrator:
    """One scripted orchestrator connection; see the module docstring."""

    def __init__(
        self,
        conn: WsConnection,
        *,
        api_key: str,
        sources: Sequence[SourceEntry] = (),
        verdict: VerdictFn = accept_all,
        dashboard: DashboardFn | None = None,
        capabilities: OrchCapabilities | None = None,
        instance_id: str | None = None,
        cluster_id: str | None = None,
    ) -> None:
        self.conn = conn
        self.api_key = api_key
        self.sources = list(sources)
        self.verdict = verdict
        self.dashboard = dashboard
        self.capabilities = capabilities
        self.instance_id = instance_id
        self.cluster_id = cluster_id
        self.inbox: list[Message] = []
        self.relays: list[ReceivedRelay] = []
        self.relay_errors: list[RelayRejected] = []
        self.dashboard_requests: list[DashboardRequest] = []
        self.undecodable: list[str] = []
        self.closed: ConnectionClosed | None = None
        self.connection_id: str | None = None
        self.org_id: str | None = None
        self._reassembler: RelayReassembler[WebhookRelayStart] = RelayReassembler()
        self._arrived = trio.Event()
        self._closed_event = trio.Event()

    # --- reading --------------------------------------------------------------------------------

    async def read_loop(self) -> None:
        try:
            while True:
                text = await self.conn.receive()
                try:
                    message = decode(Direction.PLATFORM_TO_ORCH, text)
                except DecodeError:
                    self.undecodable.append(text)
                    continue
                await self._handle(message)
                self._arrived.set()
                self._arrived = trio.Event()
        except ConnectionClosed as exc:
            self.closed = exc
        finally:
            self._closed_event.set()
            self._arrived.set()

    async def _handle(self, message: Message) -> None:
        now = trio.current_time() * 1000
        outcome: RelayOutcome[WebhookRelayStart]
        if isinstance(message, WebhookRelayStart):
            outcome = self._reassembler.start(
                message.message_id, message.total_size, message.chunk_count, message, now
            )
        elif isinstance(message, WebhookRelayChunk):
            outcome = self._reassembler.chunk(
                message.message_id, message.sequence, message.data, message.final, now
            )
        elif isinstance(message, DashboardRequest):
            self.dashboard_requests.append(message)
            answer = None if self.dashboard is None else self.dashboard(message)
            if answer is not None:
                await self.send(answer)
            return
        else:
            self.inbox.append(message)
            return
        if isinstance(outcome, RelayComplete):
            relay = ReceivedRelay(outcome.meta, outcome.body)
            self.relays.append(relay)
            answer_of = self.verdict(relay)
            if answer_of is not None:
                result, reason = answer_of
                await self.ack(relay.start.message_id, relay.start.delivery_id, result, reason)
        elif isinstance(outcome, RelayRejected):
            self.relay_errors.append(outcome)
            await self.ack(
                outcome.message_id, outcome.message_id, WebhookResult.REJECTED_MISCONFIGURED, outcome.detail
            )

    async def expect(
        self, kind: type[M], where: Callable[[M], bool] | None = None, *, within: float = DEFAULT_TIMEOUT_S
    ) -> M:
        """Take the first received ``kind`` message (matching ``where``) out of the inbox, waiting for it."""
        with trio.fail_after(within):
            while True:
                for index, message in enumerate(self.inbox):
                    if isinstance(message, kind) and (where is None or where(message)):
                        del self.inbox[index]
                        return message
                if self.closed is not None:
                    raise OrchestratorRefusedError(self.closed.code, self.closed.reason)
                await self._arrived.wait()

    async def wait_for_relays(self, count: int, *, within: float = DEFAULT_TIMEOUT_S) -> list[ReceivedRelay]:
        with trio.fail_after(within):
            while len(self.relays) < count:
                await self._arrived.wait()
        return self.relays

    async def wait_closed(self, *, within: float = DEFAULT_TIMEOUT_S) -> ConnectionClosed:
        """Wait until the Platform (or the network) ends the connection; returns its close."""
        with trio.fail_after(within):
            await self._closed_event.wait()
        assert self.closed is not None
        return self.closed

    # --- handshake ------------------------------------------------------------------------------

    async def send_auth(self, token: str | None = None, *, protocol_version: int = PROTOCOL_VERSION) -> None:
        await self.send(
            AuthRequest(
                token=token or self.api_key, protocol_version=protocol_version, capabilities=self.capabilities
            )
        )

    async def send_register(self, sources: Iterable[SourceEntry] | None = None) -> str:
        message_id = str(uuid.uuid4())
        await self.send(
            SourceRegister(
                message_id=message_id,
                sources=list(self.sources if sources is None else sources),
                instance_id=self.instance_id,
                cluster_id=self.cluster_id,
            )
        )
        return message_id

    async def authenticate(self, *, within: float = DEFAULT_TIMEOUT_S) -> PlatformAuthSuccess:
        """Send ``auth.request`` and wait for the answer; raises `OrchestratorRefusedError` on refusal."""
        await self.send_auth()
        with trio.fail_after(within):
            while True:
                failures = [m for m in self.inbox if isinstance(m, AuthFailure)]
                if failures:
                    code = None if self.closed is None else self.closed.code
                    raise OrchestratorRefusedError(code, failures[0].reason)
                if any(isinstance(m, PlatformAuthSuccess) for m in self.inbox):
                    success = await self.expect(PlatformAuthSuccess)
                    self.connection_id = success.connection_id
                    self.org_id = success.org_id
                    return success
                if self.closed is not None:
                    raise OrchestratorRefusedError(self.closed.code, self.closed.reason)
                await self._arrived.wait()

    async def register(
        self, sources: Iterable[SourceEntry] | None = None, *, within: float = DEFAULT_TIMEOUT_S
    ) -> SourceRegisterAck:
        message_id = await self.send_register(sources)
        return await self.expect(SourceRegisterAck, lambda ack: ack.message_id == message_id, within=within)

    # --- sending --------------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        await self.conn.send(encode(message))

    async def send_text(self, text: str) -> None:
        await self.conn.send(text)

    async def heartbeat(self) -> None:
        await self.send(Heartbeat(timestamp=now_ms()))

    async def ack(
        self, message_id: str, delivery_id: str, result: WebhookResult | None, reason: str | None = None
    ) -> None:
        await self.send(
            WebhookAck(message_id=message_id, delivery_id=delivery_id, result=result, reason=reason)
        )

    async def disconnect(self, code: int = 1000, reason: str = "") -> None:
        await self.conn.close(code, reason)


async def _heartbeats(fake: FakeOrchestrator, interval: float) -> None:
    while fake.closed is None:
        await trio.sleep(interval)
        try:
            await fake.heartbeat()
        except ConnectionClosed:
            return


@asynccontextmanager
async def run_fake_orchestrator(
    conn: WsConnection,
    *,
    api_key: str,
    sources: Sequence[SourceEntry] = (),
    handshake: bool = True,
    heartbeat_interval: float | None = None,
    verdict: VerdictFn = accept_all,
    dashboard: DashboardFn | None = None,
    capabilities: OrchCapabilities | None = None,
    instance_id: str | None = None,
    cluster_id: str | None = None,
) -> AsyncIterator[FakeOrchestrator]:
    """Drive ``conn`` (any ``WsConnection``) as an orchestrator; by default authenticate and register."""
    refused: OrchestratorRefusedError | None = None
    async with trio.open_nursery() as nursery:
        fake = FakeOrchestrator(
            conn,
            api_key=api_key,
            sources=sources,
            verdict=verdict,
            dashboard=dashboard,
            capabilities=capabilities,
            instance_id=instance_id,
            cluster_id=cluster_id,
        )
        nursery.start_soon(fake.read_loop)
        if handshake:
            try:
                await fake.authenticate()
                await fake.register()
            except OrchestratorRefusedError as exc:
                refused = exc
                nursery.cancel_scope.cancel()
        if refused is None:
            if heartbeat_interval is not None:
                nursery.start_soon(_heartbeats, fake, heartbeat_interval)
            try:
                yield fake
            finally:
                nursery.cancel_scope.cancel()
    if refused is not None:
        raise refused


@asynccontextmanager
async def open_fake_orchestrator(
    url: str, *, api_key: str, **options: object
) -> AsyncIterator[FakeOrchestrator]:
    """Connect to the Platform's ``/ws`` at ``url`` and run a fake orchestrator on it (leaving closes 1000).

    ``options`` are those of `run_fake_orchestrator`.
    """
    async with connect(url) as conn, run_fake_orchestrator(conn, api_key=api_key, **options) as fake:  # type: ignore[arg-type]
        yield fake


@asynccontextmanager
async def serve_app(app: QuartTrio, *, graceful_timeout: float = 1.0) -> AsyncIterator[BoundServer]:
    """Serve ``app`` on 127.0.0.1 (a free port) for the block."""
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(partial(serve, app, graceful_timeout=graceful_timeout))
        try:
            yield bound
        finally:
            nursery.cancel_scope.cancel()


# --- the in-memory store --------------------------------------------------------------------------


class MemoryPlatformStore:
    """``PlatformStore`` in memory; see the module docstring."""

    def __init__(self) -> None:
        self.orgs: dict[str, Org] = {}
        self.keys: dict[str, ApiKey] = {}
        self.hashes: dict[str, str] = {}
        self.routing: dict[str, RoutingKeyAssignment] = {}
        self.deliveries: list[DeliveryRecord] = []
        self.revoked_listeners: list[Callable[[str], object]] = []

    async def create_org(self, name: str, now: datetime) -> Org:
        await trio.lowlevel.checkpoint()
        check_org_name(name)
        if any(org.name == name for org in self.orgs.values()):
            raise OrgExistsError(name)
        org = Org(id=str(uuid.uuid4()), name=name, created_at=now)
        self.orgs[org.id] = org
        return org

    async def list_orgs(self) -> list[Org]:
        await trio.lowlevel.checkpoint()
        return sorted(self.orgs.values(), key=lambda org: org.name)

    async def find_org(self, ref: str) -> Org | None:
        await trio.lowlevel.checkpoint()
        return self.orgs.get(ref) or next((org for org in self.orgs.values() if org.name == ref), None)

    async def create_api_key(
        self, org_id: str, name: str, key_hash: str, prefix: str, now: datetime
    ) -> ApiKey:
        await trio.lowlevel.checkpoint()
        if org_id not in self.orgs:
            raise OrgNotFoundError(org_id)
        if key_hash in self.hashes:
            raise ValueError("duplicate key hash")
        key = ApiKey(id=str(uuid.uuid4()), org_id=org_id, name=name, prefix=prefix, created_at=now)
        self.keys[key.id] = key
        self.hashes[key_hash] = key.id
        return key

    async def list_api_keys(self, org_id: str | None = None) -> list[ApiKey]:
        await trio.lowlevel.checkpoint()
        keys = [k for k in self.keys.values() if org_id is None or k.org_id == org_id]
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    async def revoke_api_key(self, key_id: str, now: datetime) -> ApiKey:
        await trio.lowlevel.checkpoint()
        key = self.keys.get(key_id)
        if key is None:
            raise ApiKeyNotFoundError(key_id)
        if key.revoked_at is None:
            key = self.keys[key_id] = attrs.evolve(key, revoked_at=now)
        for listener in self.revoked_listeners:
            listener(key_id)
        return key

    async def find_active_key(self, key_hash: str) -> KeyIdentity | None:
        await trio.lowlevel.checkpoint()
        key = self.keys.get(self.hashes.get(key_hash, ""))
        if key is None or not key.active:
            return None
        return KeyIdentity(key_id=key.id, org_id=key.org_id, org_name=self.orgs[key.org_id].name)

    async def touch_api_key(self, key_id: str, now: datetime) -> None:
        await trio.lowlevel.checkpoint()
        key = self.keys.get(key_id)
        if key is not None:
            self.keys[key_id] = attrs.evolve(key, last_used_at=now)

    async def active_key_ids(self, key_ids: Collection[str]) -> frozenset[str]:
        await trio.lowlevel.checkpoint()
        return frozenset(k for k in key_ids if k in self.keys and self.keys[k].active)

    async def add_routing_key(self, org_id: str, routing_key: str, now: datetime) -> RoutingKeyAssignment:
        await trio.lowlevel.checkpoint()
        check_routing_key(routing_key)
        if org_id not in self.orgs:
            raise OrgNotFoundError(org_id)
        held = self.routing.get(routing_key)
        if held is not None:
            if held.org_id != org_id:
                raise RoutingKeyTakenError(routing_key, held.org_id)
            return held
        assignment = RoutingKeyAssignment(routing_key=routing_key, org_id=org_id, created_at=now)
        self.routing[routing_key] = assignment
        return assignment

    async def list_routing_keys(self, org_id: str | None = None) -> list[RoutingKeyAssignment]:
        await trio.lowlevel.checkpoint()
        keys = [a for a in self.routing.values() if org_id is None or a.org_id == org_id]
        return sorted(keys, key=lambda a: a.routing_key)

    async def remove_routing_key(self, routing_key: str) -> RoutingKeyAssignment:
        await trio.lowlevel.checkpoint()
        held = self.routing.pop(routing_key, None)
        if held is None:
            raise RoutingKeyNotFoundError(routing_key)
        return held

    async def routing_key_owners(self, routing_keys: Collection[str]) -> Mapping[str, str]:
        await trio.lowlevel.checkpoint()
        return {k: self.routing[k].org_id for k in routing_keys if k in self.routing}

    async def record_delivery(self, delivery: NewDelivery) -> None:
        await trio.lowlevel.checkpoint()
        if delivery.org_id not in self.orgs:
            raise OrgNotFoundError(delivery.org_id)
        self.deliveries.append(delivery)

    async def list_deliveries(self, org_id: str | None = None, limit: int = 100) -> list[DeliveryRecord]:
        await trio.lowlevel.checkpoint()
        found = [d for d in self.deliveries if org_id is None or d.org_id == org_id]
        found.sort(key=lambda d: (d.received_at, d.id), reverse=True)
        return found[: max(0, limit)]


__all__ = [
    "FakeOrchestrator",
    "MemoryPlatformStore",
    "OrchestratorRefusedError",
    "ReceivedRelay",
    "Verdict",
    "accept_all",
    "never_answer",
    "open_fake_orchestrator",
    "run_fake_orchestrator",
    "serve_app",
    "source",
]
