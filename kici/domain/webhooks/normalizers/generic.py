"""Generic webhooks (any sender of JSON, a form or text) -> :class:`SimulatedEvent` (HOOK-08).

A generic source is not a git provider: its events name no repository and no commit, so the
event has type ``generic_webhook``, target ``__generic__``, no repository, lock ref ``HEAD`` and
no credentials. It reaches workflows through ``generic_webhook`` triggers (and cross-source
dispatch), which is why the event payload carries the reserved keys ``source`` (the source's
name) and ``eventType`` (the event name) on top of the body, overriding body keys of that name
(30 §5.4).

The event name is, first found: the source's own event header, the source's body path
(``a.b`` or ``$.a.b``), ``x-event-type``, else ``default`` — which means "no name" and leaves
the event's ``action`` empty.

Choices where the spec is silent:

* A JSON body that is not an object (an array, a number) becomes ``{"value": …}``, like a scalar.
* Form fields that repeat keep every value, as a list; a field given once is a string.
* A body that is neither JSON nor a form is kept as text (``{"body": …}``, invalid UTF-8
  replaced), so a plain-text sender can still trigger a workflow.
* A number at the event path is used as its decimal text; anything else there is ignored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import parse_qs

from kici.domain.events import SimulatedEvent
from kici.domain.jsonpath import JsonPathError, find
from kici.domain.providers import Credentials
from kici.domain.webhooks.models import HEAD_REF, ProviderType
from kici.domain.webhooks.sources import GenericSource
from kici.domain.webhooks.verification import DEFAULT_HMAC_HEADER, verify_hmac_value

GENERIC_TARGET_BRANCH: Final = "__generic__"
DEFAULT_EVENT_NAME: Final = "default"
EVENT_TYPE_HEADER: Final = "x-event-type"
DELIVERY_HEADERS: Final = ("x-delivery-id", "x-request-id", "x-idempotency-key")
_FORM: Final = "application/x-www-form-urlencoded"


def parse_generic_body(body: bytes, content_type: str | None = None) -> dict[str, Any]:
    """The payload of a generic webhook body (see the module docstring); never raises."""
    try:
        decoded = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        pass
    else:
        return decoded if isinstance(decoded, dict) else {"value": decoded}
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type == _FORM:
        fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
        return {key: values[0] if len(values) == 1 else values for key, values in fields.items()}
    return {"body": body.decode("utf-8", errors="replace")}


def _scalar_text(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def scalar_at(path: str, payload: Mapping[str, Any]) -> str | None:
    """The first non-empty string or number at ``path``, as text; an invalid path finds nothing."""
    try:
        found = find(path, payload)
    except JsonPathError:
        return None
    return next((t for t in map(_scalar_text, found) if t is not None), None)


def delivery_id_from(headers: Mapping[str, str], names: tuple[str, ...] = DELIVERY_HEADERS) -> str | None:
    """The first non-empty header of ``names``."""
    return next((headers[n] for n in names if headers.get(n)), None)


class GenericNormalizer:
    """The :class:`~kici.domain.providers.WebhookNormalizer` of one generic source."""

    def __init__(self, source: GenericSource) -> None:
        self.source = source

    @property
    def provider(self) -> ProviderType:
        return ProviderType.GENERIC

    def extract_routing_key(self, headers: Mapping[str, str], payload: Mapping[str, Any]) -> str | None:
        """A generic source is addressed by its URL; its key is its own."""
        return self.source.routing_key

    def extract_delivery_id(self, headers: Mapping[str, str]) -> str | None:
        return delivery_id_from(headers)

    def extract_event_type(self, headers: Mapping[str, str]) -> str | None:
        """The event name as far as headers tell (``None``: a body path decides, see :meth:`event_name`)."""
        own = self.source.event_type_header
        if own and headers.get(own.lower()):
            return headers[own.lower()]
        if self.source.event_type_path:
            return None
        return headers.get(EVENT_TYPE_HEADER) or None

    def event_name(self, headers: Mapping[str, str], payload: Mapping[str, Any]) -> str:
        own = self.source.event_type_header
        if own and headers.get(own.lower()):
            return headers[own.lower()]
        if self.source.event_type_path:
            found = scalar_at(self.source.event_type_path, payload)
            if found is not None:
                return found
        return headers.get(EVENT_TYPE_HEADER) or DEFAULT_EVENT_NAME

    def verify_signature(self, body: bytes, headers: Mapping[str, str], secret: str | bytes) -> bool:
        return verify_hmac_value(body, headers.get(DEFAULT_HMAC_HEADER), secret)

    def normalize_event(
        self, event: str, action: str | None, payload: Mapping[str, Any]
    ) -> SimulatedEvent | None:
        name = event or DEFAULT_EVENT_NAME
        return SimulatedEvent(
            type="generic_webhook",
            action=None if name == DEFAULT_EVENT_NAME else name,
            payload={**payload, "source": self.source.name, "eventType": name},
            target_branch=GENERIC_TARGET_BRANCH,
            provider=ProviderType.GENERIC.value,
        )

    def extract_repo_identifier(self, payload: Mapping[str, Any]) -> str | None:
        return None

    def extract_ref(self, event: str, payload: Mapping[str, Any]) -> str:
        return HEAD_REF

    def extract_credentials(self, payload: Mapping[str, Any]) -> Credentials:
        return {}

    def extract_default_branch(self, payload: Mapping[str, Any]) -> str | None:
        return None


__all__ = [
    "DEFAULT_EVENT_NAME",
    "DELIVERY_HEADERS",
    "EVENT_TYPE_HEADER",
    "GENERIC_TARGET_BRANCH",
    "GenericNormalizer",
    "delivery_id_from",
    "parse_generic_body",
    "scalar_at",
]
