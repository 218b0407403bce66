"""The orchestrator's HTTP/WebSocket app: quart-trio routes over the services (OPS-09).

Routes: ``POST /webhooks/{provider}/{routing_key}`` (:mod:`.ingress`), ``/api/v1/...``
(:mod:`.api`), ``/ws`` (agents: the execution services' hub), and the unauthenticated operations
endpoints of 50 §12:

* ``GET /health`` 200 ``{status: "ok", timestamp, uptime}`` while the process serves (uptime in
  seconds);
* ``GET /ready`` 200 ``{ready: true}`` when the database answers, else 503; also 503 once shutdown
  began, so a load balancer stops sending work first;
* ``GET /metrics`` the Prometheus text exposition (:mod:`.metrics`), state gauges refreshed per
  scrape.

The app-wide body ceiling is the largest webhook limit (25 MiB); routes enforce their own lower
limits. Intake stops before anything else at shutdown: webhooks and submissions are answered 503
with ``Retry-After`` (the sender retries against a healthy node) while agents finish their
connections.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import structlog
from quart import Response, request
from quart_trio import QuartTrio

from kici.adapters.clock import Clock
from kici.adapters.ws.server import accept_websocket, create_app
from kici.domain.config.sources import GITHUB_MAX_PAYLOAD_BYTES
from kici.domain.ports import WsConnection
from kici.services.orchestrator.api import ApiState, register_api
from kici.services.orchestrator.ingress import IngressState, json_response, register_ingress
from kici.services.orchestrator.metrics import CONTENT_TYPE, OrchestratorMetrics, Refresher

_log = structlog.get_logger(__name__)

INTAKE_PREFIXES = ("/webhooks/", "/api/")
_APP_BODY_CEILING = GITHUB_MAX_PAYLOAD_BYTES + 64 * 1024


@attrs.define
class Intake:
    """Whether new work is accepted; cleared first at shutdown."""

    open: bool = True


@attrs.frozen(kw_only=True)
class AppParts:
    ingress: IngressState
    api: ApiState
    hub_serve: Callable[[WsConnection, str], Awaitable[None]]
    ready: Callable[[], Awaitable[bool]]
    metrics: OrchestratorMetrics
    refresh_metrics: Refresher
    clock: Clock
    started_at: float
    intake: Intake = attrs.field(factory=Intake)


def build_app(parts: AppParts) -> QuartTrio:
    app = create_app("kici.orchestrator", max_body_bytes=_APP_BODY_CEILING)
    register_ingress(app, parts.ingress)
    register_api(app, parts.api)

    @app.before_request
    async def stop_intake_when_closing() -> Response | None:
        if not parts.intake.open and request.path.startswith(INTAKE_PREFIXES):
            return json_response(503, {"error": "shutting down"}, {"retry-after": "5"})
        return None

    @app.get("/health")
    async def health() -> Response:
        body = {
            "status": "ok",
            "timestamp": parts.clock.now().isoformat(),
            "uptime": round(parts.clock.monotonic() - parts.started_at, 3),
        }
        return json_response(200, body)

    @app.get("/ready")
    async def ready() -> Response:
        if not parts.intake.open:
            return json_response(503, {"ready": False, "reason": "shutting down"})
        try:
            ok = await parts.ready()
        except Exception as exc:
            _log.warning("readiness check failed", error=str(exc))
            ok = False
        if not ok:
            return json_response(503, {"ready": False, "reason": "database unreachable"})
        return json_response(200, {"ready": True})

    @app.get("/metrics")
    async def metrics() -> Response:
        try:
            await parts.refresh_metrics(parts.metrics)
        except Exception as exc:
            _log.warning("metrics refresh failed; serving the last values", error=str(exc))
        return Response(parts.metrics.render(), status=200, content_type=CONTENT_TYPE)

    @app.websocket("/ws")
    async def agents() -> Any:
        conn = await accept_websocket()
        await parts.hub_serve(conn, conn.remote_addr.host)

    return app


__all__ = ["INTAKE_PREFIXES", "AppParts", "Intake", "build_app"]
