"""Loading a tier's config from disk and env, and hot reload on SIGHUP (OPS-03, CFG-07, CFG-08).

``load_orchestrator`` / ``load_agent`` read the YAML file (``--config`` > ``KICI_CONFIG`` > the
default path) and the process environment and validate them in the pure domain. The
:class:`ConfigReloader` owns the current config in a :class:`ConfigHolder`:

* ``trigger_reload(source)`` debounces: every trigger restarts a 500 ms quiet timer, and one reload
  runs when it expires, however many triggers came in between (several ``systemctl reload``s, a
  SIGHUP burst from a config-management run);
* ``execute_reload(source)`` loads and validates the new config, then swaps it in atomically (one
  reference assignment; readers take ``holder.current`` once and see either the old or the new
  config, never a mix). A second call while one runs answers ``Reload already in progress``. An
  invalid config is rejected and logged and the old one stays, by identity. Restart-only fields keep
  their old values (``plan_reload``) and are logged;
* ``reload_on_sighup`` turns SIGHUP into ``trigger_reload("sighup")``.

Nothing in a reload can crash the daemon: load failures and failing ``on_applied`` callbacks are
logged and counted, never raised.
"""

import os
import signal
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Generic

import attrs
import structlog
import trio

from kici.adapters.config_file import ConfigFileError, read_config_file
from kici.domain.config.layering import Tier
from kici.domain.config.location import locate_config
from kici.domain.config.problems import ConfigError, Problem
from kici.domain.config.reload import ReloadPlan, plan_reload
from kici.domain.config.schema import AgentConfig, ConfigT, OrchestratorConfig
from kici.domain.config.validate import Loaded, load_agent_config, load_orchestrator_config

log = structlog.get_logger("kici.config")

DEBOUNCE_SECONDS = 0.5
IN_PROGRESS = "Reload already in progress"
TRIGGER_BUFFER = 64


def load_orchestrator(
    cli_path: str | None = None, environ: Mapping[str, str] | None = None
) -> Loaded[OrchestratorConfig]:
    """The orchestrator's config from its file and env; raises ConfigFileError or ConfigError."""
    env = dict(os.environ if environ is None else environ)
    document = read_config_file(locate_config(Tier.ORCHESTRATOR, cli_path, env))
    return load_orchestrator_config(document.tree, env, yaml=document.source)


def load_agent(cli_path: str | None = None, environ: Mapping[str, str] | None = None) -> Loaded[AgentConfig]:
    """The agent's config from its file and env; raises ConfigFileError or ConfigError."""
    env = dict(os.environ if environ is None else environ)
    document = read_config_file(locate_config(Tier.AGENT, cli_path, env))
    return load_agent_config(document.tree, env, yaml=document.source)


class ConfigHolder(Generic[ConfigT]):
    """The current config of a process; ``version`` counts swaps, starting at 1."""

    def __init__(self, config: ConfigT) -> None:
        self._config = config
        self._version = 1

    @property
    def current(self) -> ConfigT:
        return self._config

    @property
    def version(self) -> int:
        return self._version

    def swap(self, config: ConfigT) -> int:
        self._config = config
        self._version += 1
        return self._version


@attrs.frozen
class ReloadResult:
    """What one reload did, as the admin API and ``kici-admin config reload`` report it (CFG-08)."""

    success: bool
    version: int | None = None
    errors: tuple[str, ...] = ()
    restart_required: tuple[str, ...] = ()
    fields_changed: tuple[str, ...] = ()


Loader = Callable[[], Awaitable[Loaded[ConfigT]]]
OnApplied = Callable[[ReloadPlan[ConfigT], ConfigT], Awaitable[None]]


def threaded(load: Callable[[], Loaded[ConfigT]]) -> Loader[ConfigT]:
    """An async loader running a blocking one (file read + validation) in a worker thread."""

    async def run() -> Loaded[ConfigT]:
        return await trio.to_thread.run_sync(load)

    return run


def _log_warnings(warnings: Sequence[Problem]) -> None:
    for warning in warnings:
        log.warning("config warning", problem=warning.render())


class ConfigReloader(Generic[ConfigT]):
    """Debounced, mutually exclusive, validate-then-swap reloads of one :class:`ConfigHolder`.

    ``on_applied`` callbacks run after each swap with the plan and the previous config, in order
    (scaler reload, Platform reconnect ...); one failing callback is logged and the others still run.
    ``counts`` holds ``config_reload_total`` by ``(source, attempted|success|failed)``.
    """

    def __init__(
        self,
        holder: ConfigHolder[ConfigT],
        load: Loader[ConfigT],
        *,
        on_applied: Sequence[OnApplied[ConfigT]] = (),
        debounce_seconds: float = DEBOUNCE_SECONDS,
    ) -> None:
        self.holder = holder
        self._load = load
        self._on_applied = tuple(on_applied)
        self._debounce = debounce_seconds
        self._send, self._receive = trio.open_memory_channel[str](TRIGGER_BUFFER)
        self._busy = False
        self._finished = trio.Event()
        self.completed = 0
        self.last_result: ReloadResult | None = None
        self.counts: Counter[tuple[str, str]] = Counter()

    def trigger_reload(self, source: str) -> None:
        """Ask for a reload after 500 ms of quiet; safe to call from any trio task, never blocks."""
        try:
            self._send.send_nowait(source)
        except trio.WouldBlock:
            log.debug("config reload already queued", source=source)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The debouncer: one reload per burst of triggers, the timer restarting on each trigger."""
        task_status.started()
        async for source in self._receive:
            latest = source
            while True:
                with trio.move_on_after(self._debounce) as quiet:
                    latest = await self._receive.receive()
                if quiet.cancelled_caught:
                    break
            await self.execute_reload(latest)

    async def execute_reload(self, source: str) -> ReloadResult:
        """Load, validate and swap now; refused while another reload runs."""
        if self._busy:
            return ReloadResult(success=False, errors=(IN_PROGRESS,))
        self._busy = True
        try:
            result = await self._reload(source)
        finally:
            self._busy = False
        self.completed += 1
        self.last_result = result
        self._finished.set()
        self._finished = trio.Event()
        return result

    async def wait_for_reloads(self, count: int) -> ReloadResult | None:
        """Wait until ``count`` reloads have finished since start; returns the latest result."""
        while self.completed < count:
            await self._finished.wait()
        return self.last_result

    async def _reload(self, source: str) -> ReloadResult:
        self.counts[source, "attempted"] += 1
        try:
            loaded = await self._load()
        except ConfigError as exc:
            return self._rejected(source, [p.render() for p in exc.problems])
        except ConfigFileError as exc:
            return self._rejected(source, [str(exc)])
        except Exception as exc:
            log.exception("config reload failed unexpectedly", source=source)
            return self._rejected(source, [f"{type(exc).__name__}: {exc}"])
        _log_warnings(loaded.warnings)
        old = self.holder.current
        plan = plan_reload(old, loaded.config)
        if plan.restart_message is not None:
            log.warning(plan.restart_message, source=source, fields=list(plan.restart_required_changed))
        version = self.holder.swap(plan.apply)
        self.counts[source, "success"] += 1
        log.info("config reloaded", source=source, version=version, fields_changed=list(plan.applied_changes))
        for callback in self._on_applied:
            try:
                await callback(plan, old)
            except Exception:
                log.exception("config reload callback failed", source=source, callback=repr(callback))
        return ReloadResult(
            success=True,
            version=version,
            restart_required=plan.restart_required_changed,
            fields_changed=plan.applied_changes,
        )

    def _rejected(self, source: str, errors: list[str]) -> ReloadResult:
        self.counts[source, "failed"] += 1
        log.error("config reload rejected; keeping the current config", source=source, errors=errors)
        return ReloadResult(success=False, version=self.holder.version, errors=tuple(errors))


async def reload_on_sighup(
    reloader: ConfigReloader[ConfigT], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Trigger a (debounced) reload on every SIGHUP; ``ExecReload=/bin/kill -HUP $MAINPID`` lands here."""
    with trio.open_signal_receiver(signal.SIGHUP) as batches:
        task_status.started()
        async for _ in batches:
            reloader.trigger_reload("sighup")


__all__ = [
    "DEBOUNCE_SECONDS",
    "IN_PROGRESS",
    "ConfigHolder",
    "ConfigReloader",
    "ReloadResult",
    "load_agent",
    "load_orchestrator",
    "reload_on_sighup",
    "threaded",
]
