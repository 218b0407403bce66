"""The Platform's ports: where its telemetry goes and where tenancy lives.

* `TelemetrySink` receives every upstream telemetry frame of an authenticated orchestrator connection
  (PRO-22), stamped with the connection's org: the tenant comes from the API key the connection
  authenticated with, never from a field of the frame. It is implemented next to the dashboard's
  storage (``kici.services.platform.telemetry``); until that exists the composition root uses
  `NoopTelemetrySink`. A sink must accept every type in `TELEMETRY_TYPES` (ignoring the ones it does
  not store); an exception it raises is logged and the frame dropped, the connection stays up.
* `PlatformStore` is tenancy and the delivery record (``kici.adapters.postgres.platform_store`` in
  production; an in-memory fake passing the same contract suite in ``kici.testing.fake_orchestrator``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Final, Protocol

from kici.domain.protocol import (
    ExecutionEvent,
    ExecutionStatus,
    JobContext,
    JobStatusForward,
    LogChunk,
    Message,
    RunEvent,
    StateReplay,
    StepStatusForward,
)
from kici.domain.tenancy import (
    ApiKey,
    DeliveryRecord,
    KeyIdentity,
    NewDelivery,
    Org,
    RoutingKeyAssignment,
)

TELEMETRY_TYPES: Final[tuple[type[Message], ...]] = (
    ExecutionStatus,
    ExecutionEvent,
    JobStatusForward,
    StepStatusForward,
    LogChunk,
    StateReplay,
    RunEvent,
    JobContext,
)
"""The upstream frames handed to the sink, in the order of 20a §6.4."""


class TelemetrySink(Protocol):
    async def record(self, org_id: str, connection_id: str, message: Message) -> None:
        """Store (or drop) one telemetry frame of ``org_id``'s orchestrator connection ``connection_id``."""
        ...


class NoopTelemetrySink:
    """Drops every frame: the default until the dashboard's sink is wired in."""

    async def record(self, org_id: str, connection_id: str, message: Message) -> None:
        return None


class PlatformStore(Protocol):
    """Orgs, API keys, routing keys and deliveries. Every method may raise ``StoreUnavailableError``."""

    async def create_org(self, name: str, now: datetime) -> Org:
        """Raises `InvalidOrgNameError`, `OrgExistsError`."""
        ...

    async def list_orgs(self) -> list[Org]:
        """By name."""
        ...

    async def find_org(self, ref: str) -> Org | None:
        """By id, else by name."""
        ...

    async def create_api_key(
        self, org_id: str, name: str, key_hash: str, prefix: str, now: datetime
    ) -> ApiKey:
        """Raises `OrgNotFoundError`."""
        ...

    async def list_api_keys(self, org_id: str | None = None) -> list[ApiKey]:
        """Oldest first; all orgs when ``org_id`` is None."""
        ...

    async def revoke_api_key(self, key_id: str, now: datetime) -> ApiKey:
        """Revoke (idempotent: an already revoked key keeps its time) and tell the running daemons.

        Raises `ApiKeyNotFoundError`.
        """
        ...

    async def find_active_key(self, key_hash: str) -> KeyIdentity | None:
        """The org of the unrevoked key with this hash."""
        ...

    async def touch_api_key(self, key_id: str, now: datetime) -> None:
        """Stamp ``last_used_at`` (best effort)."""
        ...

    async def active_key_ids(self, key_ids: Collection[str]) -> frozenset[str]:
        """Which of ``key_ids`` exist and are not revoked."""
        ...

    async def add_routing_key(self, org_id: str, routing_key: str, now: datetime) -> RoutingKeyAssignment:
        """Assign a key (again to the same org: no change). Raises `BadRoutingKeyError`,
        `OrgNotFoundError`, `RoutingKeyTakenError`."""
        ...

    async def list_routing_keys(self, org_id: str | None = None) -> list[RoutingKeyAssignment]:
        """By key."""
        ...

    async def remove_routing_key(self, routing_key: str) -> RoutingKeyAssignment:
        """Raises `RoutingKeyNotFoundError`."""
        ...

    async def routing_key_owners(self, routing_keys: Collection[str]) -> Mapping[str, str]:
        """Key -> owner org id, for the keys that have an owner."""
        ...

    async def record_delivery(self, delivery: NewDelivery) -> None: ...

    async def list_deliveries(self, org_id: str | None = None, limit: int = 100) -> list[DeliveryRecord]:
        """Newest first."""
        ...


__all__ = ["TELEMETRY_TYPES", "NoopTelemetrySink", "PlatformStore", "TelemetrySink"]
