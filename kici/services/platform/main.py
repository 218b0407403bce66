"""``kici-platform``: the Platform's composition root and console script.

``kici-platform [--config FILE]`` loads and validates the config (every problem printed, exit 2),
opens the Platform's own PostgreSQL (the configured URL, else the embedded server in
``<data dir>/pg18``) and migrates it, then serves until SIGTERM/SIGINT:

* ``POST /webhooks/{provider}/{routing_key}`` (:mod:`.ingress`): the relay to orchestrators;
* ``/ws`` (:mod:`.hub`): the orchestrators' endpoint;
* ``GET /health`` 200 ``{status: "ok", timestamp, uptime, orchestrators}``; ``GET /ready`` 200 when the
  database answers, else 503 (also 503 once shutdown began);
* in the background: the revocation listener (NOTIFY from ``admin api-key revoke``, with a re-check of
  every live key after each (re)connect) and the periodic revocation sweep.

Shutdown (OPS-17): stop intake (webhooks answered 503 + ``Retry-After``, ``/ready`` 503), close the
orchestrator connections with 1001 (they reconnect elsewhere or later), stop the HTTP server, stop
the background tasks, close the pool, stop the embedded PostgreSQL; exit 0. A fatal error takes the
same path and exits 1. The bound address is logged as ``platform listening`` (``url``, ``wsUrl``).

``kici-platform admin ...`` manages tenancy in the same database (embedded: a running daemon's server
is used and left running, else one is started for the command):

* ``org create NAME`` / ``org list``;
* ``api-key create --org ORG [--name LABEL]`` prints the key once (only its SHA-256 is stored);
  ``api-key list [--org ORG]``; ``api-key revoke KEY_ID`` (a running daemon closes the key's live
  connections with 4010 at once);
* ``routing-key add KEY --org ORG`` / ``routing-key list [--org ORG]`` / ``routing-key remove KEY``;
* ``delivery list [--org ORG] [--limit N]``: the recorded webhook deliveries, newest first;
* ``users ...`` from :mod:`kici.services.platform.admin_users` when that module is present.

``ORG`` is an org's id or name. List commands print one line per item, or JSON with ``--json``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import secrets
import signal
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
import click
import structlog
import trio
from quart import Response, request
from quart_trio import QuartTrio

from kici.adapters.clock import Clock, SystemClock
from kici.adapters.config_file import ConfigFileError
from kici.adapters.postgres.listener import Listener, Notification
from kici.adapters.postgres.platform_accounts_store import PgPlatformAccountsStore
from kici.adapters.postgres.platform_store import (
    API_KEY_REVOKED_CHANNEL,
    PgPlatformStore,
    open_platform_postgres,
)
from kici.adapters.postgres.platform_telemetry_store import PgPlatformTelemetryStore
from kici.adapters.ws.server import accept_websocket, create_app, serve
from kici.domain.config.problems import ConfigError
from kici.domain.liveness import LivenessThresholds
from kici.domain.store import StoreError
from kici.domain.tenancy import (
    Org,
    OrgNotFoundError,
    TenancyError,
    api_key_hash,
    api_key_prefix,
    delivery_summary,
    new_api_key,
)
from kici.services.lifecycle import Lifecycle, Part
from kici.services.orchestrator.logging import MASKER, configure_logging
from kici.services.platform.accounts import Accounts
from kici.services.platform.config import PlatformConfig, data_dir_of, load_platform_config
from kici.services.platform.dashboard import DashboardDeps, register_dashboard
from kici.services.platform.hub import HubSettings, OrchestratorHub
from kici.services.platform.ingress import (
    Answer,
    IngressSettings,
    IngressState,
    json_response,
    register_ingress,
)
from kici.services.platform.ports import PlatformStore, TelemetrySink
from kici.services.platform.telemetry import Broadcaster, PlatformTelemetry

_log = structlog.get_logger("kici.platform")

T = TypeVar("T")
EXIT_CONFIG = 2
EXIT_FATAL = 1
BODY_CEILING_SLACK = 64 * 1024
USERS_MODULE = "kici.services.platform.admin_users"

Extension = Callable[[QuartTrio, OrchestratorHub, PlatformStore], None]
"""Mounts more routes on the app (the dashboard API, the browser WebSocket) over the same services."""


# --- the app --------------------------------------------------------------------------------------


@attrs.define
class Intake:
    """Whether webhooks are accepted; cleared first at shutdown."""

    open: bool = True


@attrs.frozen(kw_only=True)
class AppParts:
    hub: OrchestratorHub
    ingress: IngressState
    ready: Callable[[], Awaitable[bool]]
    clock: Clock
    started_at: float
    intake: Intake = attrs.field(factory=Intake)
    extensions: Sequence[Extension] = ()


def build_app(parts: AppParts) -> QuartTrio:
    app = create_app(
        "kici.platform", max_body_bytes=parts.ingress.settings.max_body_bytes + BODY_CEILING_SLACK
    )
    register_ingress(app, parts.ingress)
    retry_after = parts.ingress.settings.retry_after_s

    @app.before_request
    async def stop_intake_when_closing() -> Response | None:
        if not parts.intake.open and request.path.startswith("/webhooks/"):
            body = {"accepted": False, "reason": "shutting down", "retryAfter": retry_after}
            return json_response(Answer(503, body, {"retry-after": str(retry_after)}))
        return None

    @app.get("/health")
    async def health() -> Response:
        body = {
            "status": "ok",
            "timestamp": parts.clock.now().isoformat(),
            "uptime": round(parts.clock.monotonic() - parts.started_at, 3),
            "orchestrators": parts.hub.connected_count(),
        }
        return json_response(Answer(200, body))

    @app.get("/ready")
    async def ready() -> Response:
        if not parts.intake.open:
            return json_response(Answer(503, {"ready": False, "reason": "shutting down"}))
        try:
            ok = await parts.ready()
        except Exception as exc:
            _log.warning("readiness check failed", error=str(exc))
            ok = False
        if not ok:
            return json_response(Answer(503, {"ready": False, "reason": "database unreachable"}))
        return json_response(Answer(200, {"ready": True}))

    @app.websocket("/ws")
    async def orchestrators() -> None:
        conn = await accept_websocket()
        await parts.hub.serve(conn, conn.remote_addr.host)

    for extend in parts.extensions:
        extend(app, parts.hub, parts.ingress.store)
    return app


def hub_settings(config: PlatformConfig) -> HubSettings:
    links = config.orchestrators
    return HubSettings(
        auth_timeout_s=links.auth_timeout_ms / 1000,
        liveness=LivenessThresholds(
            unhealthy_after_ms=links.unhealthy_after_ms, stale_after_ms=links.stale_after_ms
        ),
        public_url=config.server.public_url,
        request_timeout_s=links.request_timeout_ms / 1000,
    )


def ingress_settings(config: PlatformConfig) -> IngressSettings:
    hooks = config.webhooks
    return IngressSettings(
        max_body_bytes=hooks.max_body_bytes,
        ack_budget_s=hooks.ack_timeout_ms / 1000,
        retry_after_s=hooks.retry_after_s,
        unknown_source_ttl_s=hooks.unknown_source_cache_ms / 1000,
    )


# --- the service ----------------------------------------------------------------------------------


async def run_platform(
    config: PlatformConfig,
    data_dir: Path,
    *,
    telemetry: TelemetrySink | None = None,
    extensions: Sequence[Extension] = (),
) -> None:
    """Run until SIGTERM/SIGINT; see the module docstring for the order of things."""
    life = Lifecycle()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for signum in signals:
                    life.terminate(int(signum))

            nursery.start_soon(watch)
            with life.scope:
                await _serve(config, data_dir, life, telemetry, extensions)
            nursery.cancel_scope.cancel()
    _log.info("platform stopped")


async def _serve(
    config: PlatformConfig,
    data_dir: Path,
    life: Lifecycle,
    telemetry: TelemetrySink | None,
    extensions: Sequence[Extension],
) -> None:
    clock = SystemClock()
    started_at = clock.monotonic()
    async with open_platform_postgres(config.database.url, data_dir) as pg:
        store = PgPlatformStore(pg.database)
        telemetry_store = PgPlatformTelemetryStore(pg.database)
        broadcaster = Broadcaster()
        sink = PlatformTelemetry(telemetry_store, broadcaster) if telemetry is None else telemetry
        hub = OrchestratorHub(store=store, telemetry=sink, settings=hub_settings(config), clock=clock)
        dashboard = DashboardDeps(
            accounts=Accounts(PgPlatformAccountsStore(pg.database), now=clock.now),
            telemetry=telemetry_store,
            broadcaster=broadcaster,
            hub=hub,
            request_timeout_s=config.orchestrators.request_timeout_ms / 1000,
        )

        def mount_dashboard(app: QuartTrio, _hub: OrchestratorHub, _store: PlatformStore) -> None:
            register_dashboard(app, dashboard)

        ingress = IngressState(hub=hub, store=store, settings=ingress_settings(config), clock=clock)

        async def ready() -> bool:
            await pg.database.run(lambda conn: conn.execute("SELECT 1").fetchone())
            return True

        intake = Intake()
        app = build_app(
            AppParts(
                hub=hub,
                ingress=ingress,
                ready=ready,
                clock=clock,
                started_at=started_at,
                intake=intake,
                extensions=(mount_dashboard, *extensions),
            )
        )

        async def on_revoked(notification: Notification) -> None:
            hub.key_revoked(notification.payload)

        async def catch_up() -> None:
            await hub.sweep_revoked()

        listener = Listener(pg.conninfo, [API_KEY_REVOKED_CHANNEL], on_revoked, catch_up)
        sweep_s = config.orchestrators.revocation_sweep_ms / 1000

        async def background(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            async with trio.open_nursery() as inner:
                await inner.start(listener.run)
                await inner.start(hub.run_revocation_sweeps, sweep_s)
                task_status.started()

        background_part, http_part = Part("revocations"), Part("http")
        async with trio.open_nursery() as nursery:
            await nursery.start(background_part.run, background)
            bound = await nursery.start(
                http_part.run, functools.partial(serve, app, host=config.server.host, port=config.server.port)
            )
            life.up = True
            _log.info(
                "platform listening",
                url=bound.url(),
                ws_url=bound.url("/ws", websocket=True),
                data_dir=str(data_dir),
            )
            await life.stop.wait()
            intake.open = False
            hub.close_all()
            await http_part.stop()
            await background_part.stop()


# --- admin commands -------------------------------------------------------------------------------


def _load(config_path: str | None) -> PlatformConfig:
    """The validated config, or every problem on stderr and exit 2."""
    try:
        return load_platform_config(config_path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)
    except ConfigFileError as exc:
        click.echo(f"Configuration file error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)


def _config_path(ctx: click.Context) -> str | None:
    obj = ctx.find_object(dict) or {}
    path = obj.get("config_path")
    return path if isinstance(path, str) else None


def run_admin(ctx: click.Context, work: Callable[[PgPlatformStore], Awaitable[T]]) -> T:
    """Run one admin operation against the Platform database; tenancy and store errors exit 1."""
    config = _load(_config_path(ctx))

    async def operate() -> T:
        async with open_platform_postgres(
            config.database.url, data_dir_of(config), min_size=1, max_size=1, leave_running=True
        ) as pg:
            return await work(PgPlatformStore(pg.database))

    try:
        return trio.run(operate)
    except (TenancyError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None


async def _org(store: PgPlatformStore, ref: str) -> Org:
    org = await store.find_org(ref)
    if org is None:
        raise OrgNotFoundError(ref)
    return org


def _emit(as_json: bool, value: Any, lines: Sequence[str]) -> None:
    if as_json:
        click.echo(json.dumps(value, indent=1))
    else:
        for line in lines:
            click.echo(line)


def _stamp(value: Any) -> str | None:
    return None if value is None else value.isoformat()


@click.group(invoke_without_command=True)
@click.option(
    "--config",
    "config_path",
    default=None,
    help="YAML config file (else KICI_PLATFORM_CONFIG, else /etc/kici/platform.yaml).",
)
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Run the kici Platform (webhook relay and orchestrator endpoint)."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path
    if ctx.invoked_subcommand is None:
        _start(config_path)


@main.group()
@click.option("--config", "config_path", default=None, help="YAML config file.")
@click.pass_context
def admin(ctx: click.Context, config_path: str | None) -> None:
    """Manage organizations, API keys, routing keys and deliveries."""
    ctx.ensure_object(dict)
    if config_path:
        ctx.obj["config_path"] = config_path


@admin.group("org")
def org_group() -> None:
    """Organizations (tenants)."""


@org_group.command("create")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def org_create(ctx: click.Context, name: str, as_json: bool) -> None:
    """Create an organization."""
    org = run_admin(ctx, lambda store: store.create_org(name, SystemClock().now()))
    _emit(as_json, {"id": org.id, "name": org.name}, [f"{org.id} {org.name}"])


@org_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def org_list(ctx: click.Context, as_json: bool) -> None:
    """List organizations."""
    orgs = run_admin(ctx, lambda store: store.list_orgs())
    value = [{"id": o.id, "name": o.name, "createdAt": o.created_at.isoformat()} for o in orgs]
    _emit(as_json, value, [f"{o.id} {o.name}" for o in orgs])


@admin.group("api-key")
def api_key_group() -> None:
    """Orchestrator API keys (only their SHA-256 is stored)."""


@api_key_group.command("create")
@click.option("--org", "org_ref", required=True, help="Organization id or name.")
@click.option("--name", default="", help="A label for the key.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def api_key_create(ctx: click.Context, org_ref: str, name: str, as_json: bool) -> None:
    """Create an API key and print it once."""
    key = new_api_key(secrets.token_bytes(32))

    async def work(store: PgPlatformStore) -> Any:
        org = await _org(store, org_ref)
        return await store.create_api_key(
            org.id, name, api_key_hash(key), api_key_prefix(key), SystemClock().now()
        )

    record = run_admin(ctx, work)
    if as_json:
        value = {
            "id": record.id,
            "orgId": record.org_id,
            "name": record.name,
            "prefix": record.prefix,
            "key": key,
        }
        click.echo(json.dumps(value, indent=1))
        return
    click.echo(f"API key {record.id} for organization {record.org_id} (shown once, store it now):", err=True)
    click.echo(key)


@api_key_group.command("list")
@click.option("--org", "org_ref", default=None, help="Only this organization's keys.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def api_key_list(ctx: click.Context, org_ref: str | None, as_json: bool) -> None:
    """List API keys (never the keys themselves)."""

    async def work(store: PgPlatformStore) -> Any:
        org_id = None if org_ref is None else (await _org(store, org_ref)).id
        return await store.list_api_keys(org_id)

    keys = run_admin(ctx, work)
    value = [
        {
            "id": k.id,
            "orgId": k.org_id,
            "name": k.name,
            "prefix": k.prefix,
            "createdAt": k.created_at.isoformat(),
            "lastUsedAt": _stamp(k.last_used_at),
            "revokedAt": _stamp(k.revoked_at),
        }
        for k in keys
    ]
    lines = [
        f"{k.id} {k.org_id} {k.prefix}… {'active' if k.active else 'revoked'} {k.name}".rstrip() for k in keys
    ]
    _emit(as_json, value, lines)


@api_key_group.command("revoke")
@click.argument("key_id")
@click.pass_context
def api_key_revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke an API key; its live connections are closed (4010)."""
    key = run_admin(ctx, lambda store: store.revoke_api_key(key_id, SystemClock().now()))
    click.echo(f"revoked {key.id}")


@admin.group("routing-key")
def routing_key_group() -> None:
    """Routing keys: which organization's orchestrators may receive a source's webhooks."""


@routing_key_group.command("add")
@click.argument("routing_key")
@click.option("--org", "org_ref", required=True, help="Organization id or name.")
@click.pass_context
def routing_key_add(ctx: click.Context, routing_key: str, org_ref: str) -> None:
    """Assign a routing key to an organization."""

    async def work(store: PgPlatformStore) -> Any:
        org = await _org(store, org_ref)
        return await store.add_routing_key(org.id, routing_key, SystemClock().now())

    assignment = run_admin(ctx, work)
    click.echo(f"{assignment.routing_key} -> {assignment.org_id}")


@routing_key_group.command("list")
@click.option("--org", "org_ref", default=None, help="Only this organization's keys.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def routing_key_list(ctx: click.Context, org_ref: str | None, as_json: bool) -> None:
    """List routing keys and their organizations."""

    async def work(store: PgPlatformStore) -> Any:
        org_id = None if org_ref is None else (await _org(store, org_ref)).id
        return await store.list_routing_keys(org_id)

    keys = run_admin(ctx, work)
    value = [
        {"routingKey": k.routing_key, "orgId": k.org_id, "createdAt": k.created_at.isoformat()} for k in keys
    ]
    _emit(as_json, value, [f"{k.routing_key} {k.org_id}" for k in keys])


@routing_key_group.command("remove")
@click.argument("routing_key")
@click.pass_context
def routing_key_remove(ctx: click.Context, routing_key: str) -> None:
    """Unassign a routing key (its webhooks are answered 404 from then on)."""
    assignment = run_admin(ctx, lambda store: store.remove_routing_key(routing_key))
    click.echo(f"removed {assignment.routing_key} from {assignment.org_id}")


@admin.group("delivery")
def delivery_group() -> None:
    """The record of relayed webhooks."""


@delivery_group.command("list")
@click.option("--org", "org_ref", default=None, help="Only this organization's deliveries.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def delivery_list(ctx: click.Context, org_ref: str | None, limit: int, as_json: bool) -> None:
    """List recorded deliveries, newest first."""

    async def work(store: PgPlatformStore) -> Any:
        org_id = None if org_ref is None else (await _org(store, org_ref)).id
        return await store.list_deliveries(org_id, limit)

    deliveries = run_admin(ctx, work)
    lines = [
        f"{d.received_at.isoformat()} {d.status.value} {d.http_status} {d.routing_key} {d.delivery_id}"
        for d in deliveries
    ]
    _emit(as_json, [delivery_summary(d) for d in deliveries], lines)


def _mount_users() -> None:
    """The ``users`` group of :mod:`.admin_users`, written separately; absent until that module exists."""
    if importlib.util.find_spec(USERS_MODULE) is not None:
        admin.add_command(importlib.import_module(USERS_MODULE).users_group, "users")


_mount_users()


# --- console script -------------------------------------------------------------------------------


def _start(config_path: str | None) -> None:
    config = _load(config_path)
    instance = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    configure_logging(
        level=config.logging.level, fmt=config.logging.format, service="platform", instance=instance
    )
    if config.database.url and "@" in config.database.url:
        credentials = config.database.url.split("://", 1)[-1].rsplit("@", 1)[0]
        MASKER.add(credentials.partition(":")[2] or None)
    data_dir = data_dir_of(config)
    try:
        trio.run(run_platform, config, data_dir)
    except Exception:
        _log.exception("platform failed")
        sys.exit(EXIT_FATAL)


__all__ = [
    "AppParts",
    "Extension",
    "Intake",
    "admin",
    "build_app",
    "hub_settings",
    "ingress_settings",
    "main",
    "run_admin",
    "run_platform",
]


if __name__ == "__main__":
    main()
