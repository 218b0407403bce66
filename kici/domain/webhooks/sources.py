"""A generic webhook source (a ``generic_webhook_sources`` row) as the webhook domain reads it.

One table holds three kinds of source, told apart by ``kind``: plain generic webhooks (any JSON
sender), universal-git (a git forge whose payload shape comes from a preset or a custom mapping)
and local (a directory of repositories on the orchestrator's host). They share the ingress
rules of 30 §2 and the ``generic:<orgId>:<sourceId>`` routing key.

Defaults where the spec gives none: ``rate_limit_rpm`` 60 (one push a second, sustained, is
more than any repository produces; a burst above it is a misbehaving sender) and no event
filter (``allowed_events`` empty admits every event).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final

import attrs

DEFAULT_MAX_PAYLOAD_BYTES: Final = 1_048_576
DEFAULT_RATE_LIMIT_RPM: Final = 60
DEFAULT_DEDUP_WINDOW_SECONDS: Final = 300
DEFAULT_STRIPPED_HEADERS: Final = (
    "authorization",
    "cookie",
    "set-cookie",
    "proxy-authorization",
    "x-api-key",
    "x-auth-token",
)
"""Headers never copied into an event: they carry the sender's credentials."""


class SourceKind(StrEnum):
    GENERIC = "generic"
    UNIVERSAL_GIT = "universal-git"
    LOCAL = "local"


def _positive(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1, got {value}")


def _str_tuple(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value)


def _lower_tuple(value: Any) -> tuple[str, ...]:
    return tuple(str(v).lower() for v in value)


@attrs.frozen(kw_only=True)
class GenericSource:
    """Ingress and normalization settings of one source; ``verification_config`` is the raw stored JSON."""

    org_id: str
    source_id: str
    name: str
    kind: SourceKind = SourceKind.GENERIC
    enabled: bool = True
    verification_method: str = "none"
    verification_config: Any = attrs.field(default=None, repr=False)
    max_payload_bytes: int = attrs.field(default=DEFAULT_MAX_PAYLOAD_BYTES, validator=_positive)
    rate_limit_rpm: int = attrs.field(default=DEFAULT_RATE_LIMIT_RPM, validator=_positive)
    dedup_window_seconds: int = attrs.field(default=DEFAULT_DEDUP_WINDOW_SECONDS, validator=_positive)
    allowed_events: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    event_type_header: str | None = None
    event_type_path: str | None = None
    idempotency_header: str | None = None
    idempotency_path: str | None = None
    stripped_headers: tuple[str, ...] = attrs.field(default=DEFAULT_STRIPPED_HEADERS, converter=_lower_tuple)

    @property
    def routing_key(self) -> str:
        return f"generic:{self.org_id}:{self.source_id}"


def forwardable_headers(headers: Mapping[str, str], source: GenericSource) -> dict[str, str]:
    """The lower-cased request headers minus the source's stripped list, safe to store with an event."""
    stripped = frozenset(source.stripped_headers)
    return {name.lower(): value for name, value in headers.items() if name.lower() not in stripped}


__all__ = [
    "DEFAULT_DEDUP_WINDOW_SECONDS",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "DEFAULT_RATE_LIMIT_RPM",
    "DEFAULT_STRIPPED_HEADERS",
    "GenericSource",
    "SourceKind",
    "forwardable_headers",
]
