"""``POST /webhooks/{provider}/{routing_key}``: webhooks straight from the sender (independent, hybrid).

Without a Platform in front of the orchestrator, this route does the Platform's part of 30 §2 and
the orchestrator's verdict in one request. ``{routing_key}`` is the source's routing key
(``github:12345``, ``generic:__default__:app``) or its name; ``{provider}`` must be the source's
provider. In platform mode direct webhooks are refused (50 §1: "webhooks only through the Platform WS
relay"): the route stays mounted and answers 403 ``{rejected, reason}``, so a sender pointed at the
wrong URL learns why. The answer, first decisive step wins:

====  ===============================================================  ================================
step  condition                                                        response
====  ===============================================================  ================================
0     platform mode (direct webhooks disabled)                         403 ``{rejected, reason}``
1     no such source, provider mismatch, source disabled               404 ``{rejected, reason}``
2     body above the source's limit (25 MiB GitHub, else ≤ 10 MiB)     413 ``{rejected, reason, maxBytes}``
3     non-GitHub source over ``rate_limit_rpm`` in 60 s                429 + ``Retry-After``
4     ``verify_inbound``: signature / unknown / misconfigured          401 / 404 / 500
5     body or required headers malformed (GitHub: JSON object,         400 ``{rejected, reason}``
      ``x-github-event``, ``x-github-delivery``; local: JSON object
      and ``x-event-type``; universal-git: JSON object)
6     generic / universal-git event not admitted (no event header,     200 ``{accepted, status: filtered}``
      ``allowedEvents``)
7     the pipeline: replayed delivery                                  200 ``{accepted, duplicate}``
8     the pipeline: processed / received / lock missing / corrupt      202 ``{accepted, deliveryId, ...}``
9     the pipeline failed                                              500 ``{accepted: false, ...}``
====  ===============================================================  ================================

Steps 0 to 2 answer before the body was read in full, so their answers carry ``connection: close``.
Nothing is written before step 7: the signature is checked over the raw bytes before the body is
even parsed, so a forged or malformed request leaves no trace but a metric and a log line. Delivery
ids: GitHub's ``x-github-delivery``; for the other providers ``<routing_key>:<id>`` with the id from
the idempotency key, the forge's delivery header, else a fresh uuid4 (30 §2 step 8). The
idempotency window of step 6 of 30 §2 is the dedup window here (24 h), which is stricter.

Steps 2 to 6 are :func:`check_size` and :func:`admit`, which the Platform relay
(:mod:`.platform_link`) runs on a reassembled body too, so a webhook is judged the same whichever
way it arrived; only the way the answer travels differs (an HTTP status here, a ``webhook.ack``
verdict there).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
import structlog
from quart import Quart, Response, request

from kici.adapters.clock import Clock
from kici.domain.config.sources import SourceConfig, SourceProvider
from kici.domain.store import EventLogStatus
from kici.domain.webhooks.ingress import RateWindow, idempotency_key
from kici.domain.webhooks.models import ProviderType, RelayVerdict, WebhookInfo, lower_headers
from kici.domain.webhooks.normalizers.generic import EVENT_TYPE_HEADER, GenericNormalizer, parse_generic_body
from kici.domain.webhooks.verification import InboundVerdict, resolve_client_ip, verify_inbound
from kici.services.orchestrator.metrics import OrchestratorMetrics
from kici.services.orchestrator.pipeline import PipelineDeps, process_webhook, webhook_summary
from kici.services.orchestrator.sources import SecretReadError, SourceBook

_log = structlog.get_logger(__name__)

ROUTE: Final = "/webhooks/<provider>/<routing_key>"
_VERDICT_STATUS: Final = {
    RelayVerdict.REJECTED_SIGNATURE: (401, "signature"),
    RelayVerdict.REJECTED_UNKNOWN_SOURCE: (404, "unknown_source"),
    RelayVerdict.REJECTED_MISCONFIGURED: (500, "misconfigured"),
}
_PROVIDER_TYPES: Final = {
    SourceProvider.GITHUB: ProviderType.GITHUB,
    SourceProvider.LOCAL: ProviderType.LOCAL,
}


class Rejection(Exception):
    """A request refused before the pipeline: HTTP status, metric reason and the JSON body."""

    def __init__(self, status: int, reason: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.body = {"rejected": True, "reason": message, **extra}
        self.headers: dict[str, str] = {}


@attrs.define
class IngressState:
    """What the route needs; ``book`` is read per request (sources are swapped on reload)."""

    book: Callable[[], SourceBook]
    pipeline: PipelineDeps
    clock: Clock
    metrics: OrchestratorMetrics | None = None
    windows: dict[str, RateWindow] = attrs.field(factory=dict)
    new_id: Callable[[], str] = lambda: str(uuid.uuid4())
    direct_enabled: bool = True
    """False in platform mode: the route refuses every webhook (403)."""


def json_response(status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body), status=status, headers=dict(headers or {}), content_type="application/json"
    )


async def read_limited(limit: int) -> bytes | None:
    """The request body, or ``None`` once it is known to exceed ``limit`` (memory stays bounded).

    The rest of a refused body is never read, so the answer closes the connection: a client that
    kept it alive would otherwise send its next request behind bytes the server will not consume.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.body:
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _json_object(body: bytes) -> Mapping[str, Any] | None:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _too_large(source: SourceConfig) -> Rejection:
    return Rejection(413, "too_large", "payload too large", maxBytes=source.max_payload_bytes)


def check_size(source: SourceConfig, size: int) -> None:
    """Step 2 for a body already in memory (the relay's reassembled bytes)."""
    if size > source.max_payload_bytes:
        raise _too_large(source)


def _body_unread(rejection: Rejection) -> Rejection:
    """A refusal answered before the body was read in full must close the connection.

    hypercorn keeps a keep-alive connection open after the answer when the rest of the body has not
    arrived yet; the client then sends that rest and its next request, which the server never
    answers. ``connection: close`` tells the client not to reuse the connection.
    """
    rejection.headers["connection"] = "close"
    return rejection


async def _body(source: SourceConfig) -> bytes:
    body = await read_limited(source.max_payload_bytes)
    if body is None:
        raise _body_unread(_too_large(source))
    return body


def _direct_allowed(state: IngressState) -> None:
    if not state.direct_enabled:
        raise _body_unread(
            Rejection(
                403,
                "direct_disabled",
                "direct webhooks are disabled in platform mode; deliver them through the Platform",
            )
        )


def _find(state: IngressState, provider: str, key: str) -> SourceConfig:
    source = state.book().find(provider, key)
    if source is None or not source.enabled:
        raise _body_unread(Rejection(404, "unknown_source", "unknown or disabled webhook source"))
    return source


def _rate_limit(state: IngressState, source: SourceConfig) -> None:
    if source.is_github:
        return
    limit = source.generic_source().rate_limit_rpm
    window = state.windows.get(source.routing_key, RateWindow())
    window, retry_after = window.admit(state.clock.monotonic() * 1000, limit)
    state.windows[source.routing_key] = window
    if retry_after is not None:
        rejection = Rejection(429, "rate_limited", "rate limit exceeded", retryAfter=retry_after)
        rejection.headers["retry-after"] = str(retry_after)
        raise rejection


async def _verify(
    state: IngressState, source: SourceConfig, body: bytes, headers: Mapping[str, str], client_ip: str | None
) -> None:
    try:
        candidates = await state.book().inbound(source)
    except SecretReadError as exc:
        raise Rejection(500, "misconfigured", "the webhook secret could not be read") from exc
    verdicts: list[InboundVerdict] = [
        verify_inbound(
            source.routing_key, body, headers, sig_name=None, sig_value=None, client_ip=client_ip, source=c
        )
        for c in candidates
    ]
    accepted = next((v for v in verdicts if v.accepted), None)
    if accepted is not None:
        return
    verdict = verdicts[0]
    status, reason = _VERDICT_STATUS[verdict.verdict]
    raise Rejection(status, reason, verdict.reason)


def _github_info(
    source: SourceConfig, body: bytes, headers: Mapping[str, str], request_id: str
) -> WebhookInfo:
    payload = _json_object(body)
    if payload is None:
        raise Rejection(400, "malformed", "the body is not a JSON object")
    event = headers.get("x-github-event")
    delivery = headers.get("x-github-delivery")
    if not event or not delivery:
        raise Rejection(400, "malformed", "x-github-event and x-github-delivery are required")
    action = payload.get("action")
    return WebhookInfo(
        routing_key=source.routing_key,
        delivery_id=delivery,
        event=event,
        action=action if isinstance(action, str) else None,
        provider=ProviderType.GITHUB,
        payload=payload,
        request_id=request_id,
    )


def _generic_info(
    state: IngressState,
    source: SourceConfig,
    body: bytes,
    headers: Mapping[str, str],
    request_id: str,
    *,
    delivery_fallback: Callable[[], str],
) -> WebhookInfo | None:
    """``None`` when the event is filtered out (step 6)."""
    bundle = state.book().registry.get(source.routing_key)
    if bundle is None:
        raise Rejection(404, "unknown_source", "unknown or disabled webhook source")
    normalizer = bundle.normalizer
    payload: Mapping[str, Any] | None
    if source.provider is SourceProvider.GENERIC:
        payload = parse_generic_body(body, headers.get("content-type"))
        event = (
            normalizer.event_name(headers, payload)
            if isinstance(normalizer, GenericNormalizer)
            else normalizer.extract_event_type(headers)
        )
    else:
        payload = _json_object(body)
        if payload is None:
            raise Rejection(400, "malformed", "the body is not a JSON object")
        event = normalizer.extract_event_type(headers)
        if event is None and source.provider is SourceProvider.LOCAL:
            raise Rejection(400, "malformed", f"local webhooks name their event in {EVENT_TYPE_HEADER}")
    if event is None or (source.allowed_events and event not in source.allowed_events):
        return None
    key = idempotency_key(source.generic_source(), headers, payload)
    delivery = key or normalizer.extract_delivery_id(headers) or delivery_fallback()
    action = payload.get("action")
    return WebhookInfo(
        routing_key=source.routing_key,
        delivery_id=f"{source.routing_key}:{delivery}",
        event=event,
        action=action if isinstance(action, str) and source.provider is not SourceProvider.GENERIC else None,
        provider=_PROVIDER_TYPES.get(source.provider, ProviderType.GENERIC),
        payload=payload,
        request_id=request_id,
    )


async def admit(
    state: IngressState,
    source: SourceConfig,
    body: bytes,
    headers: Mapping[str, str],
    *,
    client_ip: str | None,
    request_id: str,
    delivery_fallback: Callable[[], str] | None = None,
) -> WebhookInfo | None:
    """Steps 3 to 6 for a body within the source's limit; raises :class:`Rejection`.

    ``headers`` are lower-cased; ``client_ip`` is what the IP allow-list checks. The result is the
    delivery for the pipeline, or ``None`` when the event is filtered out (step 6).
    ``delivery_fallback`` names a non-GitHub delivery that carries no id of its own (default: a
    fresh uuid4; the relay passes the Platform's delivery id, so its retries deduplicate).
    """
    _rate_limit(state, source)
    await _verify(state, source, body, headers, client_ip)
    if source.is_github:
        return _github_info(source, body, headers, request_id)
    return _generic_info(
        state, source, body, headers, request_id, delivery_fallback=delivery_fallback or state.new_id
    )


def count_rejection(state: IngressState, rejection: Rejection, **where: Any) -> None:
    """The metric and the log line of a refused webhook (whichever way it came)."""
    if state.metrics is not None:
        state.metrics.webhooks_rejected.labels(reason=rejection.reason).inc()
    _log.warning("webhook rejected", status=rejection.status, reason=str(rejection), **where)


async def handle_webhook(state: IngressState, provider: str, routing_key: str) -> Response:
    """The route body; see the module docstring for the decision table."""
    request_id = request.headers.get("x-request-id") or state.new_id()
    metrics = state.metrics
    try:
        _direct_allowed(state)
        source = _find(state, provider, routing_key)
        body = await _body(source)
        headers = lower_headers(dict(request.headers))
        client_ip = resolve_client_ip(headers, request.remote_addr)
        info = await admit(state, source, body, headers, client_ip=client_ip, request_id=request_id)
    except Rejection as rejection:
        count_rejection(state, rejection, provider=provider, source=routing_key, request_id=request_id)
        return json_response(rejection.status, rejection.body, rejection.headers)
    if info is None:
        return json_response(200, {"accepted": True, "status": "filtered"})
    if metrics is not None:
        metrics.webhooks_received.labels(source=source.name, event=info.event).inc()
    result = await process_webhook(info, state.pipeline)
    if result.status is EventLogStatus.DUPLICATE:
        return json_response(200, {"accepted": True, "duplicate": True, "deliveryId": info.delivery_id})
    if result.status is EventLogStatus.FAILED:
        body_failed = {"accepted": False, "deliveryId": info.delivery_id, "reason": "processing failed"}
        return json_response(500, body_failed)
    return json_response(202, {"accepted": True, "deliveryId": info.delivery_id, **webhook_summary(result)})


def register_ingress(app: Quart, state: IngressState) -> None:
    """Mount the webhook route on ``app``."""

    async def webhook(provider: str, routing_key: str) -> Response:
        return await handle_webhook(state, provider, routing_key)

    app.add_url_rule(ROUTE, "webhook", webhook, methods=["POST"])


__all__ = [
    "ROUTE",
    "IngressState",
    "Rejection",
    "admit",
    "check_size",
    "count_rejection",
    "handle_webhook",
    "json_response",
    "read_limited",
    "register_ingress",
]
