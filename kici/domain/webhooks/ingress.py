"""Direct ingress of generic, universal-git and local webhooks: the decision table of 30 §2 (HOOK-04).

``POST /webhook/{org}/generic/{source}`` is answered in nine steps, first decisive step wins:

====  ==========================================================  ======================================
step  condition                                                   response
====  ==========================================================  ======================================
1     source unknown or disabled                                  404 ``{rejected, reason}``
2     body larger than the source's ``max_payload_bytes``         413 ``{rejected, reason, maxBytes}``
3     more than ``rate_limit_rpm`` requests in 60 s (per source)  429 + ``Retry-After`` (seconds)
4     verification config unusable (method other than ``none``)   500 ``{rejected, reason}``
5     verification fails                                          401 ``{rejected, reason}``
6     idempotency key seen within ``dedup_window_seconds``        200 ``{accepted, duplicate}``
7     local: non-JSON body / no ``x-event-type``                  400 ``{rejected, reason}``
7     generic: event not in ``allowed_events``                    200 ``{accepted, status: filtered}``
8     delivery id already in dedup                                200 ``{accepted, duplicate}``
9     run the pipeline, then mark dedup and idempotency           202 ``{accepted, deliveryId}`` / 500
====  ==========================================================  ======================================

The table is split where the caller must look something up: :func:`admit` runs steps 1-5 and
computes the keys (no lookup happens for a request that is going to be refused),
:func:`classify` runs steps 6-8 given the two dedup answers, :func:`completed` and
:func:`failed` give step 9's answer. Every function is pure: the rate window is a value the
caller keeps per source, and the fallback delivery id (a uuid4) is passed in.

Choices where the spec is silent:

* The body limit is the smaller of the source's ``max_payload_bytes`` and the route's hard limit
  of 10 MiB, and ``maxBytes`` reports that effective limit.
* Requests refused by the rate limit are not counted in the window (a sender that backs off as
  told gets through once the oldest request ages out); ``Retry-After`` is at least 1 s.
* A universal-git delivery without its event header is ``filtered``: nothing can match it.
* The idempotency body path is read as JSONPath (``$.id`` or ``id``); numbers count as keys.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

import attrs

from kici.domain.providers import WebhookNormalizer
from kici.domain.webhooks.models import ProviderType, WebhookInfo
from kici.domain.webhooks.normalizers.generic import (
    DEFAULT_EVENT_NAME,
    EVENT_TYPE_HEADER,
    GenericNormalizer,
    parse_generic_body,
    scalar_at,
)
from kici.domain.webhooks.sources import GenericSource, SourceKind
from kici.domain.webhooks.verification import (
    InvalidVerificationConfigError,
    check_generic,
    parse_verification,
    resolve_client_ip,
)

DIRECT_INGRESS_MAX_BYTES: Final = 10 * 1024 * 1024
RATE_WINDOW_MS: Final = 60_000
IDEMPOTENCY_HEADERS: Final = ("x-idempotency-key", "x-delivery-id")


def _lower(headers: Mapping[str, str]) -> Mapping[str, str]:
    return {name.lower(): value for name, value in headers.items()}


@attrs.frozen
class IngressResponse:
    """The HTTP answer: status, JSON body and extra headers."""

    status: int
    body: Mapping[str, Any] = attrs.field(factory=dict)
    headers: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class IngressRequest:
    """The raw request; ``peer_ip`` is the socket's address (used when no forwarding header names one)."""

    body: bytes = attrs.field(repr=False)
    headers: Mapping[str, str] = attrs.field(converter=_lower)
    peer_ip: str | None = None


@attrs.frozen
class RateWindow:
    """One source's requests in the last minute (ms timestamps, oldest first)."""

    hits: tuple[float, ...] = ()

    def admit(self, now_ms: float, limit: int) -> tuple[RateWindow, int | None]:
        """The next window and ``None`` if admitted, else the unchanged window and ``Retry-After`` seconds."""
        live = tuple(t for t in self.hits if now_ms - t < RATE_WINDOW_MS)
        if len(live) >= limit:
            wait_ms = live[0] + RATE_WINDOW_MS - now_ms
            return RateWindow(live), max(1, math.ceil(wait_ms / 1000))
        return RateWindow((*live, now_ms)), None


@attrs.frozen(kw_only=True)
class Admitted:
    """A request that passed steps 1-5, with what steps 6-9 and the pipeline need."""

    source: GenericSource
    payload: Mapping[str, Any] | None
    event: str | None
    idempotency_key: str | None
    delivery_id: str
    rejection: IngressResponse | None = None

    def webhook_info(self, request_id: str | None = None) -> WebhookInfo:
        """The pipeline's input for this delivery."""
        local = self.source.kind is SourceKind.LOCAL
        return WebhookInfo(
            routing_key=self.source.routing_key,
            delivery_id=self.delivery_id,
            event=self.event or DEFAULT_EVENT_NAME,
            action=None,
            provider=ProviderType.LOCAL if local else ProviderType.GENERIC,
            payload=self.payload or {},
            request_id=request_id,
        )


def _rejected(status: int, reason: str, **extra: Any) -> IngressResponse:
    return IngressResponse(status, {"rejected": True, "reason": reason, **extra})


def idempotency_key(
    source: GenericSource, headers: Mapping[str, str], payload: Mapping[str, Any] | None
) -> str | None:
    """Configured header, configured body path, ``x-idempotency-key``, ``x-delivery-id``: first found."""
    if source.idempotency_header and headers.get(source.idempotency_header.lower()):
        return headers[source.idempotency_header.lower()]
    if source.idempotency_path and payload is not None:
        found = scalar_at(source.idempotency_path, payload)
        if found is not None:
            return found
    return next((headers[name] for name in IDEMPOTENCY_HEADERS if headers.get(name)), None)


def _json_object(body: bytes) -> Mapping[str, Any] | None:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _event_and_payload(
    source: GenericSource, normalizer: WebhookNormalizer, request: IngressRequest
) -> tuple[str | None, Mapping[str, Any] | None, IngressResponse | None]:
    headers = request.headers
    event: str | None
    if source.kind is SourceKind.LOCAL:
        local_payload = _json_object(request.body)
        if local_payload is None:
            return None, None, _rejected(400, "local webhooks carry a JSON object body")
        event = headers.get(EVENT_TYPE_HEADER)
        if not event:
            reason = f"local webhooks name their event in {EVENT_TYPE_HEADER}"
            return None, local_payload, _rejected(400, reason)
        return event, local_payload, None
    payload = parse_generic_body(request.body, headers.get("content-type"))
    if isinstance(normalizer, GenericNormalizer):
        event = normalizer.event_name(headers, payload)
    else:
        event = normalizer.extract_event_type(headers)
    if event is None:
        return None, payload, IngressResponse(200, {"accepted": True, "status": "filtered"})
    allowed = source.allowed_events
    if allowed and event not in allowed:
        return event, payload, IngressResponse(200, {"accepted": True, "status": "filtered"})
    return event, payload, None


def admit(
    source: GenericSource | None,
    request: IngressRequest,
    normalizer: WebhookNormalizer,
    *,
    window: RateWindow,
    now_ms: float,
    fallback_id: str,
) -> tuple[IngressResponse | Admitted, RateWindow]:
    """Steps 1-5; the window comes back updated when the request counted against the rate limit."""
    if source is None or not source.enabled:
        return _rejected(404, "unknown or disabled webhook source"), window
    limit = min(source.max_payload_bytes, DIRECT_INGRESS_MAX_BYTES)
    if len(request.body) > limit:
        return _rejected(413, "payload too large", maxBytes=limit), window
    window, retry_after = window.admit(now_ms, source.rate_limit_rpm)
    if retry_after is not None:
        response = _rejected(429, "rate limit exceeded", retryAfter=retry_after)
        return attrs.evolve(response, headers={"retry-after": str(retry_after)}), window
    try:
        verification = parse_verification(source.verification_method, source.verification_config)
    except InvalidVerificationConfigError as exc:
        return _rejected(500, f"source verification is misconfigured: {exc}"), window
    ip = resolve_client_ip(request.headers, request.peer_ip)
    if not check_generic(verification, request.body, request.headers, ip):
        return _rejected(401, "webhook verification failed"), window
    event, payload, rejection = _event_and_payload(source, normalizer, request)
    key = idempotency_key(source, request.headers, payload)
    extracted = normalizer.extract_delivery_id(request.headers)
    delivery_id = f"{source.routing_key}:{key or extracted or fallback_id}"
    admitted = Admitted(
        source=source,
        payload=payload,
        event=event,
        idempotency_key=key,
        delivery_id=delivery_id,
        rejection=rejection,
    )
    return admitted, window


def classify(
    admitted: Admitted, *, idempotency_seen: bool, delivery_seen: bool
) -> IngressResponse | Admitted:
    """Steps 6-8: an answer, or ``admitted`` itself when the pipeline must run (step 9)."""
    if admitted.idempotency_key is not None and idempotency_seen:
        return IngressResponse(200, {"accepted": True, "duplicate": True})
    if admitted.rejection is not None:
        return admitted.rejection
    if delivery_seen:
        return IngressResponse(200, {"accepted": True, "duplicate": True})
    return admitted


def completed(admitted: Admitted) -> IngressResponse:
    """Step 9 after the pipeline ran; the caller then marks the delivery id and idempotency key."""
    return IngressResponse(202, {"accepted": True, "deliveryId": admitted.delivery_id})


def failed(admitted: Admitted) -> IngressResponse:
    """Step 9 when the pipeline raised: 500 so the sender retries (nothing was marked)."""
    return IngressResponse(
        500, {"accepted": False, "deliveryId": admitted.delivery_id, "reason": "processing failed"}
    )


__all__ = [
    "DIRECT_INGRESS_MAX_BYTES",
    "IDEMPOTENCY_HEADERS",
    "RATE_WINDOW_MS",
    "Admitted",
    "IngressRequest",
    "IngressResponse",
    "RateWindow",
    "admit",
    "classify",
    "completed",
    "failed",
    "idempotency_key",
]
