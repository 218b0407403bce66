"""What a webhook is once it reached the orchestrator, and how its routing key is read (HOOK-01).

The relay verdict (:data:`RelayVerdict`) and the delivery-log status (:data:`EventLogStatus`) are
defined once, where their wire and storage formats live (``kici.domain.protocol.platform`` and
``kici.domain.store``); they are re-exported here so webhook code has one place to import from.

Routing keys name the source a webhook belongs to: ``github:<appId>`` (a GitHub App),
``generic:<orgId>:<sourceId>`` (generic, universal-git and local sources), ``remote:<orgId>`` and
``<type>:default`` (the fallback bundle of a provider type). A key is parsed strictly because it
selects whose secrets verify the body: an ambiguous key must be refused, not guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final

import attrs

from kici.domain.protocol.platform import WebhookResult
from kici.domain.store import EventLogStatus

RelayVerdict = WebhookResult
"""``accepted | rejected_signature | rejected_unknown_source | rejected_misconfigured``."""

HEAD_REF: Final = "HEAD"
"""The lock ref of events that name no commit: the repository's default branch tip."""

LOCK_FILE_PATH: Final = ".kici/kici.lock.json"
MAX_LOCK_FILE_BYTES: Final = 5 * 1024 * 1024
"""A lock above this size is refused unread: compiled locks are kilobytes, 5 MiB is abuse."""

DEFAULT_ORG_ID: Final = "__default__"

_ZERO_SHA: Final = re.compile(r"0{40}|0{64}")
_FULL_SHA: Final = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")
_KEY_PART: Final = re.compile(r"[^:\s]+")


class ProviderType(StrEnum):
    """The provider an event came from, as reported on events and runs (universal-git reports ``generic``)."""

    GITHUB = "github"
    GITLAB = "gitlab"
    BITBUCKET = "bitbucket"
    GENERIC = "generic"
    LOCAL = "local"


class RoutingKeyKind(StrEnum):
    GITHUB = "github"
    GENERIC = "generic"
    REMOTE = "remote"
    DEFAULT = "default"


class InvalidRoutingKeyError(ValueError):
    """The text is not one of the four routing-key forms."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"invalid routing key {key!r}: {reason}")
        self.key = key
        self.reason = reason


@attrs.frozen
class RoutingKey:
    """A parsed routing key; ``type`` is the text before the first ``:`` (the registry's fallback prefix)."""

    text: str
    kind: RoutingKeyKind
    type: str
    app_id: str | None = None
    org_id: str | None = None
    source_id: str | None = None

    def __str__(self) -> str:
        return self.text


def _part(key: str, value: str, what: str) -> str:
    if not _KEY_PART.fullmatch(value):
        raise InvalidRoutingKeyError(key, f"{what} must be non-empty without ':' or spaces")
    return value


def parse_routing_key(key: str) -> RoutingKey:
    """Read ``key``; raises :class:`InvalidRoutingKeyError`.

    ``<type>:default`` wins over the type-specific forms, so ``github:default`` is the GitHub
    fallback bundle, not an App whose id is ``default``.
    """
    parts = key.split(":")
    head = parts[0]
    if len(parts) == 2 and parts[1] == "default":
        return RoutingKey(key, RoutingKeyKind.DEFAULT, _part(key, head, "the provider type"))
    if head == "github" and len(parts) == 2:
        return RoutingKey(key, RoutingKeyKind.GITHUB, head, app_id=_part(key, parts[1], "the App id"))
    if head == "generic" and len(parts) == 3:
        org, source = _part(key, parts[1], "the org id"), _part(key, parts[2], "the source id")
        return RoutingKey(key, RoutingKeyKind.GENERIC, head, org_id=org, source_id=source)
    if head == "remote" and len(parts) == 2:
        return RoutingKey(key, RoutingKeyKind.REMOTE, head, org_id=_part(key, parts[1], "the org id"))
    raise InvalidRoutingKeyError(
        key, "expected github:<appId>, generic:<orgId>:<sourceId>, remote:<orgId> or <type>:default"
    )


def routing_key_type(key: str) -> str:
    """The registry prefix of ``key`` (text before the first ``:``), also for keys that do not parse."""
    return key.partition(":")[0]


@attrs.frozen(kw_only=True)
class WebhookInfo:
    """A verified delivery, as the pipeline receives it (from the relay or from direct ingress)."""

    routing_key: str
    delivery_id: str
    event: str
    action: str | None
    provider: ProviderType
    payload: Mapping[str, Any] = attrs.field(factory=dict, hash=False)
    request_id: str | None = None


def is_zero_sha(value: str | None) -> bool:
    """The all-zero object id a push carries for a created or deleted ref."""
    return value is not None and _ZERO_SHA.fullmatch(value) is not None


def is_full_sha(value: str | None) -> bool:
    """A complete commit id (SHA-1 or SHA-256), which names one immutable tree."""
    return value is not None and _FULL_SHA.fullmatch(value) is not None


def lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Header names lower-cased, as every normalizer expects; a later duplicate wins."""
    return {name.lower(): value for name, value in headers.items()}


__all__ = [
    "DEFAULT_ORG_ID",
    "HEAD_REF",
    "LOCK_FILE_PATH",
    "MAX_LOCK_FILE_BYTES",
    "EventLogStatus",
    "InvalidRoutingKeyError",
    "ProviderType",
    "RelayVerdict",
    "RoutingKey",
    "RoutingKeyKind",
    "WebhookInfo",
    "is_full_sha",
    "is_zero_sha",
    "lower_headers",
    "parse_routing_key",
    "routing_key_type",
]
