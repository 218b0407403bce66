"""``POST /webhooks/{provider}/{routing_key}``: the Platform's webhook ingress (30 §2, PRO-21, HOOK-05).

The Platform holds no webhook secrets: it relays the raw body bytes unchanged, in 64 KiB chunks, to
an orchestrator registered for the routing key, and answers the git host with that orchestrator's
verification verdict. First decisive step wins:

====  ======================================================  =============================================
step  condition                                               answer
====  ======================================================  =============================================
1     declared ``Content-Length`` above the body limit        413 (``connection: close``)
2     routing key unknown (no owner org), or a bad provider   404 ``{accepted: false, reason}``; the
      name; the Platform database unreachable                 database unreachable: 503 + ``Retry-After``
3     body above the limit while it streams in                413 (``connection: close``)
4     the orchestrators said ``rejected_unknown_source`` for  404 (negative cache, until the key is
      this key less than ``unknownSourceCacheMs`` ago         registered again or the entry expires)
5     no orchestrator of the owner org registered the key     503 + ``Retry-After`` (git host redelivers)
6     no ``webhook.ack`` within the 5 s budget                503 + ``Retry-After``
7     ``webhook.ack``: accepted (or no result)                200 ``{accepted: true, deliveryId}``
8     rejected_signature / rejected_unknown_source /          401 / 404 / 500 ``{accepted: false, result,
      rejected_misconfigured                                  reason}``
====  ======================================================  =============================================

From step 4 on the delivery is recorded (``deliveries``: routing key, headers with credentials
redacted, body SHA-256 and size, status, reason, HTTP status), before the answer is sent, so a
webhook the Platform could not hand over is never lost silently: the git host holds the body and
retries, and the operator sees the attempt (``kici-platform admin delivery list``).

The spec disagrees with itself on the failure statuses: 20 §11 and 20a §6.4 answer 500 to an
ACK timeout and to an offline orchestrator, 30 §2 and §4 answer ``503 + Retry-After: 5`` to both.
kici follows 30 §2 (the ingress section, and the issue's "answer so the git host retries"): 503 says
"try again later" and ``Retry-After`` tells when, where 500 says the request itself is broken. An
accepted delivery is 200 as 30 §2 says (the verdict, not the processing, is what the ACK reports).

What the relay start carries, since the Platform knows neither the source's configuration nor its
secrets (choices where the spec is silent):

* ``headers``: every request header lower-cased, minus connection-level ones (``host``, ``cookie``,
  ``content-length``, hop-by-hop headers); "only what verification needs" cannot be decided without the
  source's configuration (a generic source may name any header), so the orchestrator picks.
* ``signatureHeaderName`` / ``signatureHeader``: the first present of the known signature headers,
  lifted out of ``headers`` (the orchestrator folds it back in before verifying).
* ``event``: the first present of the forges' event headers, else ``""`` (a generic source may take
  its event from the body, which only the orchestrator parses); ``action`` is null for the same reason.
* ``deliveryId``: the forge's delivery header, else a fresh UUID.
* ``clientIp``: the first ``x-forwarded-for`` hop, else ``x-real-ip``, else the peer address.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs
import structlog
import trio
from quart import Quart, Response, request

from kici.adapters.clock import Clock
from kici.domain.protocol import WebhookAck, WebhookResult
from kici.domain.tenancy import DeliveryStatus, NewDelivery
from kici.domain.webhooks.normalizers.generic import DELIVERY_HEADERS as GENERIC_DELIVERY_HEADERS
from kici.domain.webhooks.normalizers.generic import EVENT_TYPE_HEADER
from kici.domain.webhooks.normalizers.universal_git import DELIVERY_HEADERS as FORGE_DELIVERY_HEADERS
from kici.domain.webhooks.verification import DEFAULT_HMAC_HEADER, GITHUB_SIGNATURE_HEADER, resolve_client_ip
from kici.services.platform.hub import OrchestratorHub, RelayOutcome, RelayRequest, RelayResult
from kici.services.platform.ports import PlatformStore

_log = structlog.get_logger(__name__)

ROUTE: Final = "/webhooks/<provider>/<routing_key>"
PROVIDER_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
EVENT_HEADERS: Final = (
    "x-github-event",
    "x-gitea-event",
    "x-gogs-event",
    "x-gitlab-event",
    EVENT_TYPE_HEADER,
)
SIGNATURE_HEADERS: Final = (
    GITHUB_SIGNATURE_HEADER,
    "x-gitea-signature",
    "x-gogs-signature",
    "x-gitlab-token",
    DEFAULT_HMAC_HEADER,
)
DELIVERY_ID_HEADERS: Final = tuple(dict.fromkeys((*FORGE_DELIVERY_HEADERS, *GENERIC_DELIVERY_HEADERS)))
NOT_RELAYED: Final = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
        "cookie",
        "expect",
    }
)
REDACTED: Final = "[redacted]"
_CREDENTIAL_HEADER: Final = re.compile(r"authorization|token|secret|password|cookie|api-key|apikey", re.I)


@attrs.frozen(kw_only=True)
class IngressSettings:
    max_body_bytes: int
    ack_budget_s: float = 5.0
    retry_after_s: int = 5
    unknown_source_ttl_s: float = 60.0


@attrs.frozen
class Answer:
    """An HTTP answer: status, JSON body, extra headers."""

    status: int
    body: Mapping[str, Any]
    headers: Mapping[str, str] = attrs.field(factory=dict)


# --- pure pieces ----------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class LiftedHeaders:
    """What the relay start carries, derived from the request headers."""

    headers: dict[str, str]
    signature_name: str | None
    signature_value: str | None
    event: str
    delivery_id: str | None


def lift_headers(raw: Mapping[str, str]) -> LiftedHeaders:
    """Lower-case ``raw``, drop connection-level headers, lift the signature, read event and delivery id."""
    headers = {name.lower(): value for name, value in raw.items() if name.lower() not in NOT_RELAYED}
    signature_name = next((name for name in SIGNATURE_HEADERS if headers.get(name)), None)
    signature_value = None if signature_name is None else headers.pop(signature_name)
    event = next((headers[name] for name in EVENT_HEADERS if headers.get(name)), "")
    delivery_id = next((headers[name] for name in DELIVERY_ID_HEADERS if headers.get(name)), None)
    return LiftedHeaders(
        headers=headers,
        signature_name=signature_name,
        signature_value=signature_value,
        event=event,
        delivery_id=delivery_id,
    )


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers fit to store: values of credential-bearing headers replaced."""
    return {name: REDACTED if _CREDENTIAL_HEADER.search(name) else value for name, value in headers.items()}


_VERDICT_STATUS: Final = {
    WebhookResult.ACCEPTED: (DeliveryStatus.ACCEPTED, 200),
    WebhookResult.REJECTED_SIGNATURE: (DeliveryStatus.REJECTED_SIGNATURE, 401),
    WebhookResult.REJECTED_UNKNOWN_SOURCE: (DeliveryStatus.REJECTED_UNKNOWN_SOURCE, 404),
    WebhookResult.REJECTED_MISCONFIGURED: (DeliveryStatus.REJECTED_MISCONFIGURED, 500),
}
"""``webhook.ack`` result -> delivery status and HTTP status (20a §6.4, 30 §2)."""


def answer_for(
    result: RelayResult, delivery_id: str, retry_after_s: int
) -> tuple[DeliveryStatus, str | None, Answer]:
    """How a relay ended -> the delivery's status and reason, and the git host's answer."""
    if result.outcome is RelayOutcome.ANSWERED and result.ack is not None:
        return verdict_answer(result.ack, delivery_id)
    if result.outcome is RelayOutcome.TIMEOUT:
        status, reason = DeliveryStatus.ACK_TIMEOUT, "no verdict from the orchestrator within the ACK budget"
    else:
        status, reason = DeliveryStatus.NO_ORCHESTRATOR, "no orchestrator is connected for this routing key"
    body = {"accepted": False, "deliveryId": delivery_id, "reason": reason, "retryAfter": retry_after_s}
    return status, reason, Answer(503, body, {"retry-after": str(retry_after_s)})


def verdict_answer(ack: WebhookAck, delivery_id: str) -> tuple[DeliveryStatus, str | None, Answer]:
    """The orchestrator's verdict as an answer; an ack without a result counts as accepted."""
    result = ack.result or WebhookResult.ACCEPTED
    status, http_status = _VERDICT_STATUS[result]
    if result is WebhookResult.ACCEPTED:
        return status, ack.reason, Answer(http_status, {"accepted": True, "deliveryId": delivery_id})
    body = {"accepted": False, "deliveryId": delivery_id, "result": result.value, "reason": ack.reason}
    return status, ack.reason, Answer(http_status, body)


# --- the route ------------------------------------------------------------------------------------


@attrs.define
class IngressState:
    hub: OrchestratorHub
    store: PlatformStore
    settings: IngressSettings
    clock: Clock
    new_id: Callable[[], str] = lambda: str(uuid.uuid4())
    unknown: dict[str, tuple[float, int]] = attrs.field(factory=dict)
    """Negative cache: routing key -> (expiry on trio's clock, the hub's registration epoch then)."""

    def cached_unknown(self, routing_key: str) -> bool:
        entry = self.unknown.get(routing_key)
        if entry is None:
            return False
        expires, epoch = entry
        if trio.current_time() >= expires or epoch != self.hub.registration_epoch(routing_key):
            del self.unknown[routing_key]
            return False
        return True

    def remember_unknown(self, routing_key: str) -> None:
        ttl = self.settings.unknown_source_ttl_s
        if ttl > 0:
            self.unknown[routing_key] = (trio.current_time() + ttl, self.hub.registration_epoch(routing_key))


def json_response(answer: Answer) -> Response:
    return Response(
        json.dumps(answer.body),
        status=answer.status,
        headers=dict(answer.headers),
        content_type="application/json",
    )


def _too_large(limit: int) -> Answer:
    body = {"accepted": False, "reason": "payload too large", "maxBytes": limit}
    return Answer(413, body, {"connection": "close"})


def _unavailable(retry_after_s: int) -> Answer:
    body = {
        "accepted": False,
        "reason": "the Platform cannot reach its database",
        "retryAfter": retry_after_s,
    }
    return Answer(503, body, {"retry-after": str(retry_after_s)})


async def _read_body(limit: int) -> bytes | None:
    """The body, or ``None`` once it exceeds ``limit`` (the rest is never read)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.body:
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def handle_webhook(state: IngressState, provider: str, routing_key: str) -> Answer:
    """The route body; see the module docstring for the decision table."""
    limit = state.settings.max_body_bytes
    declared = request.content_length
    if declared is not None and declared > limit:
        return _too_large(limit)
    org_id = None
    if PROVIDER_PATTERN.fullmatch(provider) is not None:
        try:
            owners = await state.store.routing_key_owners([routing_key])
        except Exception:
            _log.exception("routing key lookup failed", routing_key=routing_key)
            return _unavailable(state.settings.retry_after_s)
        org_id = owners.get(routing_key)
    if org_id is None:
        return Answer(404, {"accepted": False, "reason": "unknown routing key"})
    body = await _read_body(limit)
    if body is None:
        return _too_large(limit)
    received_at = state.clock.now()
    lifted = lift_headers(dict(request.headers))
    delivery_id = lifted.delivery_id or state.new_id()
    request_id = request.headers.get("x-request-id") or state.new_id()
    with structlog.contextvars.bound_contextvars(
        request_id=request_id, routing_key=routing_key, delivery_id=delivery_id, org_id=org_id
    ):
        connection_id: str | None = None
        reason: str | None
        if state.cached_unknown(routing_key):
            reason = "the orchestrators do not know this source (cached verdict)"
            status = DeliveryStatus.REJECTED_UNKNOWN_SOURCE
            result_body = {
                "accepted": False,
                "deliveryId": delivery_id,
                "result": status.value,
                "reason": reason,
            }
            answer = Answer(404, result_body)
        else:
            result = await state.hub.relay_webhook(
                org_id,
                RelayRequest(
                    routing_key=routing_key,
                    delivery_id=delivery_id,
                    event=lifted.event,
                    signature_header_name=lifted.signature_name,
                    signature_header=lifted.signature_value,
                    client_ip=resolve_client_ip(lifted.headers, request.remote_addr),
                    headers=lifted.headers,
                    body=body,
                    request_id=request_id,
                ),
                budget_s=state.settings.ack_budget_s,
            )
            connection_id = result.connection_id
            status, reason, answer = answer_for(result, delivery_id, state.settings.retry_after_s)
            if status is DeliveryStatus.REJECTED_UNKNOWN_SOURCE:
                state.remember_unknown(routing_key)
        delivery = NewDelivery(
            id=str(uuid.uuid4()),
            org_id=org_id,
            routing_key=routing_key,
            provider=provider,
            delivery_id=delivery_id,
            event=lifted.event,
            headers=redact_headers(lifted.headers),
            body_sha256=hashlib.sha256(body).hexdigest(),
            body_size=len(body),
            status=status,
            reason=reason,
            http_status=answer.status,
            connection_id=connection_id,
            received_at=received_at,
            completed_at=state.clock.now(),
        )
        try:
            await state.store.record_delivery(delivery)
        except Exception:
            _log.exception("could not record the delivery", status=status.value, body_size=len(body))
        log = _log.info if answer.status < 500 else _log.warning
        log("webhook relayed", status=status.value, http_status=answer.status, connection_id=connection_id)
        return answer


def register_ingress(app: Quart, state: IngressState) -> None:
    """Mount the webhook route on ``app``."""

    async def webhook(provider: str, routing_key: str) -> Response:
        return json_response(await handle_webhook(state, provider, routing_key))

    app.add_url_rule(ROUTE, "webhook", webhook, methods=["POST"])


__all__ = [
    "ROUTE",
    "Answer",
    "IngressSettings",
    "IngressState",
    "LiftedHeaders",
    "answer_for",
    "handle_webhook",
    "lift_headers",
    "redact_headers",
    "register_ingress",
    "verdict_answer",
]
