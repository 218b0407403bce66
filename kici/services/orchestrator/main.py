"""``kici-orchestrator``: the orchestrator's composition root and console script (OPS-01/03/09/17).

``kici-orchestrator [--config FILE]`` loads and validates the config (every problem printed, exit 2),
resolves the data directory, opens PostgreSQL (the configured URL, else the embedded server in
``<data dir>/pg18``) and migrates it, builds the stores, the sources' provider registry and the
execution services, then runs under one nursery:

* the HTTP/WebSocket server (webhooks, ``/api/v1``, ``/ws``, ``/health``, ``/ready``, ``/metrics``);
* the execution services (dispatcher, agent hub, timers, startup sweep);
* in ``platform`` and ``hybrid`` mode (50 §1) the Platform link (:mod:`.platform_link`): relayed
  webhooks, upstream telemetry fed by the tracker's observer, dashboard requests. In ``platform``
  mode the direct ``/webhooks`` route answers 403 (webhooks come only through the relay); in
  ``hybrid`` mode both paths take webhooks and the delivery dedup makes a delivery that carries its
  own id (GitHub's, an idempotency key) count once whichever way it came. The mode is read at
  start: a reload that changes it is logged and waits for a restart; a reload that changes
  ``platform.url`` / ``platform.token`` reconnects the link, one that changes ``sources:`` registers
  them again;
* SIGHUP hot reload: validate, then swap; restart-only fields keep their value and are logged; a
  changed ``sources:`` section rebuilds the provider registry;
* SIGTERM / SIGINT: the ordered shutdown of 50 §11 (OPS-17) -- stop intake (webhooks and the API
  answer 503, ``/ready`` 503), close the Platform link (1000; relayed webhooks being processed get a
  short grace), stop the execution services (agents are closed with 1001 and their jobs wait for
  the next boot's sweep), stop the HTTP server (open connections get a grace period), close the
  pool, stop the embedded PostgreSQL -- and exit 0. A fatal error takes the same path and exits 1.

The admin token of the REST API: ``KICI_BOOTSTRAP_ADMIN_TOKEN`` when set; otherwise the first boot
generates ``kadm_<64 hex>``, prints ``KICI Admin Token: <token>`` once on stderr (not through the
logger, which masks secrets) and keeps only its SHA-256 in ``<data dir>/admin-token.sha256``.

``kici-orchestrator agent-token create [--labels a,b] [--config FILE]`` prints a new agent token
``kat_<64 hex>`` once (only its SHA-256 is stored). With the embedded database it works whether
or not the orchestrator is running: a running server is used and left running.

Listening: ``server.host`` (``KICI_SERVER_HOST``, default every interface) and ``server.port``;
port 0 binds a free port. The bound address is logged as ``orchestrator listening`` with ``url``.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import click
import structlog
import trio

from kici.adapters.clock import SystemClock
from kici.adapters.config_file import ConfigFileError
from kici.adapters.postgres import embedded
from kici.adapters.postgres.agent_store import PgAgentStore
from kici.adapters.postgres.database import Database
from kici.adapters.postgres.execution_store import PgExecutionStore
from kici.adapters.postgres.log_store import PgLogStore
from kici.adapters.postgres.queue_store import PgDispatchQueue
from kici.adapters.postgres.registration_store import PgRegistrationStore
from kici.adapters.postgres.runtime import EMBEDDED_DBNAME, open_postgres
from kici.adapters.postgres.webhook_store import PgWebhookStore
from kici.adapters.ws.client import connect
from kici.adapters.ws.server import serve
from kici.domain.config import ConfigError, HostFacts, Tier, resolve_data_dir
from kici.domain.config.reload import ReloadPlan
from kici.domain.config.schema import Mode, OrchestratorConfig
from kici.domain.config.sources import SecretKind
from kici.domain.store import AgentType, NewAgentToken
from kici.domain.webhooks.lock_cache import LockCache
from kici.services.config_reload import (
    ConfigHolder,
    ConfigReloader,
    OnApplied,
    load_orchestrator,
    reload_on_sighup,
    threaded,
)
from kici.services.lifecycle import Lifecycle, Part
from kici.services.orchestrator.api import AdminAuth, ApiState, PgRunQueries, token_digest
from kici.services.orchestrator.app import AppParts, Intake, build_app
from kici.services.orchestrator.execution import ExecutionSettings, Stores, build_execution
from kici.services.orchestrator.ingress import IngressState
from kici.services.orchestrator.logging import MASKER, configure_logging
from kici.services.orchestrator.metrics import OrchestratorMetrics, instrument_execution, state_refresher
from kici.services.orchestrator.pipeline import PipelineDeps
from kici.services.orchestrator.platform_link import (
    LinkParts,
    LinkSettings,
    PlatformLink,
    build_platform_link,
    links_to_platform,
)
from kici.services.orchestrator.sources import RegistryDispatchSources, SourceBook, build_source_book
from kici.services.orchestrator.tracker import NO_OBSERVER
from kici.services.orchestrator.upstream import PgReplayQueries, UpstreamForwarder

_log = structlog.get_logger("kici.orchestrator")

EXIT_CONFIG = 2
EXIT_FATAL = 1
ADMIN_TOKEN_FILE = "admin-token.sha256"
ADMIN_TOKEN_PREFIX = "kadm_"
AGENT_TOKEN_PREFIX = "kat_"
PLATFORM_STOP_S = 15.0


# --- startup pieces -----------------------------------------------------------------------------


def _load(config_path: str | None) -> OrchestratorConfig:
    """The validated config, or every problem on stderr and exit 2."""
    try:
        loaded = load_orchestrator(config_path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)
    except ConfigFileError as exc:
        click.echo(f"Configuration file error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    for warning in loaded.warnings:
        click.echo(f"config warning: {warning.render()}", err=True)
    return loaded.config


def _data_dir(config: OrchestratorConfig) -> Path:
    host = HostFacts(
        is_root=os.geteuid() == 0, home=str(Path.home()), xdg_data_home=os.environ.get("XDG_DATA_HOME")
    )
    path = Path(str(resolve_data_dir(config.paths.data_dir, Tier.ORCHESTRATOR, host)))
    path.mkdir(parents=True, exist_ok=True)
    return path


def register_secrets(config: OrchestratorConfig) -> None:
    """Teach the log masker every secret the config holds as a value."""
    MASKER.add(config.secrets.bootstrap_admin_token, config.secrets.key, config.platform.token)
    MASKER.add(config.cluster.join_token)
    if config.database.url and "@" in config.database.url:
        credentials = config.database.url.split("://", 1)[-1].rsplit("@", 1)[0]
        MASKER.add(credentials.partition(":")[2] or None)
    for source in config.sources:
        for ref in source.secrets:
            if ref.kind is SecretKind.VALUE:
                MASKER.add(ref.ref)
            elif ref.kind is SecretKind.ENV:
                MASKER.add(os.environ.get(ref.ref))


def admin_auth(config: OrchestratorConfig, data_dir: Path) -> AdminAuth:
    """The admin token digests (see the module docstring); a first boot prints the new token once."""
    if config.secrets.bootstrap_admin_token:
        return AdminAuth(frozenset({token_digest(config.secrets.bootstrap_admin_token)}))
    path = data_dir / ADMIN_TOKEN_FILE
    if path.is_file():
        return AdminAuth(frozenset({path.read_text(encoding="utf-8").strip()}))
    token = ADMIN_TOKEN_PREFIX + secrets.token_hex(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(token_digest(token) + "\n")
    click.echo(f"KICI Admin Token: {token}", err=True)
    return AdminAuth(frozenset({token_digest(token)}))


def _stores(db: Database) -> Stores:
    return Stores(
        execution=PgExecutionStore(db),
        queue=PgDispatchQueue(db),
        webhooks=PgWebhookStore(db),
        agents=PgAgentStore(db),
        logs=PgLogStore(db),
    )


@attrs.define
class Live:
    """What a reload swaps: the source book and the admin auth (read per request), and the Platform
    link that must hear about new sources or credentials."""

    book: SourceBook
    auth: AdminAuth
    link: PlatformLink | None = None
    instance_id: str | None = None


# --- the service --------------------------------------------------------------------------------


def _on_reload(
    live: Live, data_dir: Path, metrics: OrchestratorMetrics, holder: ConfigHolder[OrchestratorConfig]
) -> OnApplied[OrchestratorConfig]:
    async def applied(plan: ReloadPlan[OrchestratorConfig], old: OrchestratorConfig) -> None:
        new = plan.apply
        register_secrets(new)
        if new.sources != old.sources:
            live.book = build_source_book(new.sources)
            _log.info("sources reloaded", sources=[s.name for s in new.sources])
            if live.link is not None:
                live.link.sources_changed()
        if new.secrets.bootstrap_admin_token != old.secrets.bootstrap_admin_token:
            live.auth = admin_auth(new, data_dir)
        if new.server.mode != old.server.mode:
            _log.warning(
                "server.mode changed; the Platform link and the direct route follow it after a restart",
                old=old.server.mode.value,
                new=new.server.mode.value,
            )
        elif live.link is not None and links_to_platform(new):
            live.link.reconfigure(LinkSettings.from_config(new, live.instance_id))
        metrics.config_version.set(holder.version)

    return applied


async def run_orchestrator(
    config: OrchestratorConfig, config_path: str | None, data_dir: Path, instance_id: str | None = None
) -> None:
    """Run until SIGTERM/SIGINT; see the module docstring for the order of things.

    ``instance_id`` is how this process names itself to the Platform (``source.register``) and in
    forwarded job statuses.
    """
    life = Lifecycle()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for signum in signals:
                    life.terminate(int(signum))

            nursery.start_soon(watch)
            with life.scope:
                await _serve(config, config_path, data_dir, life, instance_id)
            nursery.cancel_scope.cancel()
    _log.info("orchestrator stopped")


async def _serve(
    config: OrchestratorConfig,
    config_path: str | None,
    data_dir: Path,
    life: Lifecycle,
    instance_id: str | None = None,
) -> None:
    clock = SystemClock()
    started_at = clock.monotonic()
    metrics = OrchestratorMetrics()
    holder = ConfigHolder(config)
    metrics.config_version.set(holder.version)
    instance_id = instance_id or config.cluster.instance_id
    live = Live(build_source_book(config.sources), admin_auth(config, data_dir), instance_id=instance_id)
    linked = links_to_platform(config)
    reloader = ConfigReloader(
        holder,
        threaded(lambda: load_orchestrator(config_path)),
        on_applied=[_on_reload(live, data_dir, metrics, holder)],
    )
    async with open_postgres(config.database.url, data_dir) as pg:
        stores = _stores(pg.database)
        forwarder = (
            UpstreamForwarder(
                execution=stores.execution,
                replay=PgReplayQueries(pg.database),
                clock=clock,
                orchestrator_id=instance_id,
                replay_window_hours=config.platform.replay_window_hours,
            )
            if linked
            else None
        )
        services = build_execution(
            ExecutionSettings.from_config(config),
            stores,
            db_url_for_listener=pg.conninfo,
            clock=clock,
            source_resolver=RegistryDispatchSources(lambda: live.book),
            observer=forwarder or NO_OBSERVER,
        )
        instrument_execution(metrics, services.hub, services.scheduler)
        lock_cache = LockCache(
            lambda: clock.monotonic() * 1000,
            max_entries=config.lockfile_cache.max_entries,
            ttl_ms=config.lockfile_cache.ttl_ms,
            on_transient_error=lambda key, exc: _log.warning("lock fetch failed", key=key, error=str(exc)),
        )
        pipeline = PipelineDeps(
            registry=lambda: live.book.registry,
            execution=stores.execution,
            webhooks=stores.webhooks,
            lock_cache=lock_cache,
            clock=clock,
            wake=services.dispatcher.wake,
            settle=services.tracker.settle,
            metrics=metrics,
            registrations=PgRegistrationStore(pg.database),
        )
        queries = PgRunQueries(pg.database)

        refresh = state_refresher(
            queries,
            stores.queue.depth,
            services.hub.connected_count,
            since=clock.now(),
            reload_counts=lambda: reloader.counts,
        )

        async def ready() -> bool:
            await pg.database.run(lambda conn: conn.execute("SELECT 1").fetchone())
            return True

        intake = Intake()
        ingress = IngressState(
            book=lambda: live.book,
            pipeline=pipeline,
            clock=clock,
            metrics=metrics,
            direct_enabled=config.server.mode is not Mode.PLATFORM,
        )
        if forwarder is not None:
            live.link = build_platform_link(
                LinkParts(
                    settings=LinkSettings.from_config(config, instance_id),
                    forwarder=forwarder,
                    ingress=ingress,
                    cancel_run=services.tracker.cancel_run,
                    book=lambda: live.book,
                    connector=connect,
                )
            )
        app = build_app(
            AppParts(
                ingress=ingress,
                api=ApiState(
                    execution=stores.execution,
                    logs=stores.logs,
                    queries=queries,
                    cancel_run=services.tracker.cancel_run,
                    auth=lambda: live.auth,
                    book=lambda: live.book,
                    lock_cache=lock_cache,
                    clock=clock,
                    wake=services.dispatcher.wake,
                    settle=services.tracker.settle,
                ),
                hub_serve=services.hub.serve,
                ready=ready,
                metrics=metrics,
                refresh_metrics=refresh,
                clock=clock,
                started_at=started_at,
                intake=intake,
            )
        )
        execution_part, http_part, reload_part = Part("execution"), Part("http"), Part("reload")
        platform_part = Part("platform")
        link = live.link

        async def reloads(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            async with trio.open_nursery() as inner:
                await inner.start(reloader.run)
                await inner.start(reload_on_sighup, reloader)
                task_status.started()

        async with trio.open_nursery() as nursery:
            await nursery.start(execution_part.run, services.run)
            bound = await nursery.start(
                http_part.run, functools.partial(serve, app, host=config.server.host, port=config.server.port)
            )
            if link is not None:
                await nursery.start(platform_part.run, link.run)
            await nursery.start(reload_part.run, reloads)
            life.up = True
            _log.info(
                "orchestrator listening",
                url=bound.url(),
                mode=config.server.mode.value,
                sources=[s.name for s in config.sources],
                platform=config.platform.url if link is not None else None,
            )
            await life.stop.wait()
            intake.open = False
            await reload_part.stop()
            if link is not None:
                link.stop()
                with trio.move_on_after(PLATFORM_STOP_S):
                    await platform_part.done.wait()
                await platform_part.stop()
            await execution_part.stop()
            await http_part.stop()


# --- agent tokens -------------------------------------------------------------------------------


@asynccontextmanager
async def _agent_store(config: OrchestratorConfig, data_dir: Path) -> AsyncIterator[PgAgentStore]:
    """The agent store; a running embedded server is adopted and left running."""
    pgdata = embedded.pgdata_for(data_dir)
    if not config.database.url and embedded.is_running(pgdata):
        server = await trio.to_thread.run_sync(embedded.start, pgdata)
        async with Database.open(server.conninfo(EMBEDDED_DBNAME), min_size=1, max_size=1) as db:
            yield PgAgentStore(db)
        return
    async with open_postgres(config.database.url, data_dir, min_size=1, max_size=1) as pg:
        yield PgAgentStore(pg.database)


async def create_agent_token(config: OrchestratorConfig, data_dir: Path, labels: tuple[str, ...]) -> str:
    token = AGENT_TOKEN_PREFIX + secrets.token_hex(32)
    async with _agent_store(config, data_dir) as store:
        await store.create_agent_token(
            NewAgentToken(
                token_hash=token_digest(token),
                token_prefix=token[:12],
                agent_type=AgentType.STATIC,
                created_by=f"cli:{socket.gethostname()}",
                created_at=SystemClock().now(),
                labels=json.dumps(list(labels)) if labels else None,
            )
        )
    return token


# --- console script -----------------------------------------------------------------------------


def _start(config_path: str | None) -> None:
    config = _load(config_path)
    instance = config.cluster.instance_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    configure_logging(level=config.logging.level.value, fmt=config.logging.format.value, instance=instance)
    register_secrets(config)
    data_dir = _data_dir(config)
    try:
        trio.run(run_orchestrator, config, config_path, data_dir, instance)
    except Exception:
        _log.exception("orchestrator failed")
        sys.exit(EXIT_FATAL)


@click.group(invoke_without_command=True)
@click.option(
    "--config", "config_path", default=None, help="YAML config file (else KICI_CONFIG, else /etc/kici)."
)
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """Run the kici orchestrator."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path
    if ctx.invoked_subcommand is None:
        _start(config_path)


@main.group("agent-token")
def agent_token() -> None:
    """Manage agent tokens."""


@agent_token.command("create")
@click.option("--labels", default="", help="Comma-separated labels the token may register with.")
@click.option("--config", "config_path", default=None, help="YAML config file.")
@click.pass_context
def agent_token_create(ctx: click.Context, labels: str, config_path: str | None) -> None:
    """Create an agent token and print it once."""
    config = _load(config_path or ctx.obj.get("config_path"))
    configure_logging(level="warn", fmt=config.logging.format.value)
    data_dir = _data_dir(config)
    wanted = tuple(label.strip() for label in labels.split(",") if label.strip())
    token = trio.run(create_agent_token, config, data_dir, wanted)
    click.echo(token)


__all__ = ["admin_auth", "create_agent_token", "main", "register_secrets", "run_orchestrator"]


if __name__ == "__main__":
    main()
