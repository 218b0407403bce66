"""Tenancy rules of the Platform: organizations, their orchestrator API keys, the routing keys they own,
and the record each relayed webhook leaves (20 §5.1, 30 §2).

The module is pure (stdlib, attrs and ``kici.domain`` only: no I/O, no clock, no randomness; callers
pass ``now`` and random bytes in), so the PostgreSQL adapter and the tests share its models.

Why these rules:

* An org's identity on the wire is the API key its orchestrators authenticate with. Only the SHA-256
  hex of a key is stored, so a database leak yields no usable key; the key itself is shown once, when
  it is created. ``korg_`` + 64 hex digits (32 random bytes) makes a leaked key recognisable in logs
  and secret scanners, like the agent's ``kat_`` tokens.
* A routing key has exactly one owner org. An orchestrator may register only the keys its org owns
  (`judge_sources`), so a webhook for one tenant can never be relayed to another tenant's
  orchestrator. The rejection reason is the same for a key nobody owns and for a key another org
  owns: telling them apart would let a tenant probe which keys exist.
* Routing keys must have one of the four forms of 30 §1 (``github:<appId>``,
  ``generic:<orgId>:<sourceId>``, ``remote:<orgId>``, ``<type>:default``): the key selects whose
  secrets verify the body at the orchestrator, so an ambiguous key is refused, not guessed at.

Choices where the spec is silent:

* Org names follow the cluster-name rule of 50 §1 (lowercase letters, digits and inner hyphens,
  1-63 characters): they are typed in commands and URLs.
* Org ids are opaque strings chosen by the store (UUIDs); commands accept an org's id or its name.
* A delivery is recorded for every webhook whose routing key is known, whatever its outcome; webhooks
  for unknown keys (404) and oversized bodies (413) are not, so a scan of random URLs cannot fill the
  table.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final

import attrs

from kici.domain.webhooks.models import InvalidRoutingKeyError, parse_routing_key

ORG_NAME_PATTERN: Final = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
API_KEY_PREFIX: Final = "korg_"
API_KEY_RANDOM_BYTES: Final = 32
API_KEY_SHOWN_CHARS: Final = 12
_API_KEY: Final = re.compile(re.escape(API_KEY_PREFIX) + r"[0-9a-f]{64}")

NOT_OWNED_REASON: Final = "routing key is not assigned to this organization"


class TenancyError(Exception):
    """A tenancy operation refused; the message is fit for an operator's terminal."""


class InvalidOrgNameError(TenancyError):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"invalid organization name {name!r}: use 1-63 lowercase letters, digits and inner hyphens"
        )
        self.name = name


class OrgExistsError(TenancyError):
    def __init__(self, name: str) -> None:
        super().__init__(f"an organization named {name!r} already exists")
        self.name = name


class OrgNotFoundError(TenancyError):
    def __init__(self, ref: str) -> None:
        super().__init__(f"no organization with id or name {ref!r}")
        self.ref = ref


class ApiKeyNotFoundError(TenancyError):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"no API key with id {key_id!r}")
        self.key_id = key_id


class BadRoutingKeyError(TenancyError):
    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"invalid routing key {key!r}: {reason}")
        self.key = key
        self.reason = reason


class RoutingKeyTakenError(TenancyError):
    def __init__(self, key: str, owner_org_id: str) -> None:
        super().__init__(f"routing key {key!r} is already assigned to organization {owner_org_id}")
        self.key = key
        self.owner_org_id = owner_org_id


class RoutingKeyNotFoundError(TenancyError):
    def __init__(self, key: str) -> None:
        super().__init__(f"routing key {key!r} is not assigned to any organization")
        self.key = key


# --- rules --------------------------------------------------------------------------------------


def check_org_name(name: str) -> str:
    """``name`` if it is a valid org name; raises `InvalidOrgNameError`."""
    if ORG_NAME_PATTERN.fullmatch(name) is None:
        raise InvalidOrgNameError(name)
    return name


def check_routing_key(key: str) -> str:
    """``key`` if it has one of the four routing-key forms; raises `BadRoutingKeyError`."""
    try:
        parse_routing_key(key)
    except InvalidRoutingKeyError as exc:
        raise BadRoutingKeyError(key, exc.reason) from None
    return key


def new_api_key(random: bytes) -> str:
    """A fresh API key from 32 random bytes supplied by the caller."""
    if len(random) != API_KEY_RANDOM_BYTES:
        raise ValueError(f"an API key needs {API_KEY_RANDOM_BYTES} random bytes, got {len(random)}")
    return API_KEY_PREFIX + random.hex()


def is_api_key(text: str) -> bool:
    """Whether ``text`` has the shape of a key `new_api_key` makes (a hint for operators, not a check)."""
    return _API_KEY.fullmatch(text) is not None


def api_key_hash(key: str) -> str:
    """What ``api_keys.key_hash`` stores and the handshake looks up: SHA-256 hex of the key's UTF-8 bytes."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def api_key_prefix(key: str) -> str:
    """The first characters of a key, kept to tell keys apart in listings."""
    return key[:API_KEY_SHOWN_CHARS]


@attrs.frozen
class SourceVerdicts:
    """The answer to one ``source.register``: accepted keys in request order, rejected ones with reasons."""

    accepted: tuple[str, ...]
    rejected: tuple[tuple[str, str], ...]


def judge_sources(org_id: str, requested: Iterable[str], owners: Mapping[str, str]) -> SourceVerdicts:
    """Which requested routing keys an orchestrator of ``org_id`` may register.

    ``owners`` maps routing keys to their owner org (keys without an owner are absent). A key is
    accepted iff it is well-formed and owned by ``org_id``; a key requested twice is judged once.
    """
    accepted: list[str] = []
    rejected: list[tuple[str, str]] = []
    seen: set[str] = set()
    for key in requested:
        if key in seen:
            continue
        seen.add(key)
        try:
            check_routing_key(key)
        except BadRoutingKeyError as exc:
            rejected.append((key, f"invalid routing key: {exc.reason}"))
            continue
        if owners.get(key) == org_id:
            accepted.append(key)
        else:
            rejected.append((key, NOT_OWNED_REASON))
    return SourceVerdicts(tuple(accepted), tuple(rejected))


# --- records ------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Org:
    id: str
    name: str
    created_at: datetime


@attrs.frozen(kw_only=True)
class ApiKey:
    """An API key as stored: never the key itself."""

    id: str
    org_id: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@attrs.frozen(kw_only=True)
class IssuedApiKey:
    """A key just created: its record and the secret, which exists nowhere else once shown."""

    record: ApiKey
    secret: str = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class KeyIdentity:
    """Who an active API key authenticates: the tenant of a connection for its lifetime."""

    key_id: str
    org_id: str
    org_name: str


@attrs.frozen(kw_only=True)
class RoutingKeyAssignment:
    routing_key: str
    org_id: str
    created_at: datetime


class DeliveryStatus(enum.StrEnum):
    """How a relayed webhook ended; the four verdicts of ``webhook.ack`` plus the Platform's two failures."""

    ACCEPTED = "accepted"
    REJECTED_SIGNATURE = "rejected_signature"
    REJECTED_UNKNOWN_SOURCE = "rejected_unknown_source"
    REJECTED_MISCONFIGURED = "rejected_misconfigured"
    NO_ORCHESTRATOR = "no_orchestrator"
    ACK_TIMEOUT = "ack_timeout"


@attrs.frozen(kw_only=True)
class NewDelivery:
    """One webhook the Platform took for a known routing key, as it is recorded."""

    id: str
    org_id: str
    routing_key: str
    provider: str
    delivery_id: str
    event: str
    headers: Mapping[str, str] = attrs.field(hash=False)
    body_sha256: str
    body_size: int
    status: DeliveryStatus
    reason: str | None
    http_status: int
    connection_id: str | None
    received_at: datetime
    completed_at: datetime


DeliveryRecord = NewDelivery
"""A recorded delivery reads back with the fields it was written with."""


def delivery_summary(delivery: NewDelivery) -> dict[str, Any]:
    """A delivery as JSON for listings (the headers are left out: they are long and rarely needed)."""
    return {
        "id": delivery.id,
        "orgId": delivery.org_id,
        "routingKey": delivery.routing_key,
        "provider": delivery.provider,
        "deliveryId": delivery.delivery_id,
        "event": delivery.event,
        "bodySha256": delivery.body_sha256,
        "bodySize": delivery.body_size,
        "status": delivery.status.value,
        "reason": delivery.reason,
        "httpStatus": delivery.http_status,
        "connectionId": delivery.connection_id,
        "receivedAt": delivery.received_at.isoformat(),
        "completedAt": delivery.completed_at.isoformat(),
    }


__all__ = [
    "API_KEY_PREFIX",
    "NOT_OWNED_REASON",
    "ApiKey",
    "ApiKeyNotFoundError",
    "BadRoutingKeyError",
    "DeliveryRecord",
    "DeliveryStatus",
    "InvalidOrgNameError",
    "IssuedApiKey",
    "KeyIdentity",
    "NewDelivery",
    "Org",
    "OrgExistsError",
    "OrgNotFoundError",
    "RoutingKeyAssignment",
    "RoutingKeyNotFoundError",
    "RoutingKeyTakenError",
    "SourceVerdicts",
    "TenancyError",
    "api_key_hash",
    "api_key_prefix",
    "check_org_name",
    "check_routing_key",
    "delivery_summary",
    "is_api_key",
    "judge_sources",
    "new_api_key",
]
