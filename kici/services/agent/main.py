"""``kici-agent``: the agent daemon's composition root and console script (OPS-04, issue 5).

``kici-agent [--config FILE]`` loads the agent config (``--config`` > ``KICI_CONFIG`` >
``/etc/kici/agent.yaml`` if present, overlaid by ``KICI_*`` env: ``KICI_ORCHESTRATOR_URL``,
``KICI_AGENT_TOKEN``, ``KICI_AGENT_ID``, ``KICI_LABELS``, ``KICI_MAX_CONCURRENT_JOBS``, ``KICI_SANDBOX``...),
picks the sandbox, and runs one nursery tree: the job manager and the link to the orchestrator
(``link.py``), plus config reload.

Startup errors print what is wrong, where it was set and how to fix it, and exit 2: an invalid config
(every problem at once, e.g. a missing ``KICI_ORCHESTRATOR_URL`` or a malformed token), a label in the
reserved ``kici:`` namespace or an unknown role, an execution mode this build cannot run (ISO-11 picks
it: ``KICI_EXECUTION_MODE``, else firecracker for ``KICI_SCALER_MANAGED=1``, else bare-metal), or a
missing or unusable bubblewrap while sandboxing is on.

Choices where the spec is silent or where the house plan wins:

* Sandbox: bubblewrap by default (``KICI_SANDBOX`` defaults to true, ARCHITECTURE.md: never run untrusted
  code unsandboxed unless configured); ``KICI_SANDBOX=false`` picks the plain-process sandbox and logs a
  warning. ``KICI_EXECUTION_MODE=container|firecracker`` (or ``KICI_SCALER_MANAGED=1`` without a mode) is
  refused at startup: no such backend exists yet. A job whose dispatch asks for a container fails with
  the reason, for the same cause.
* No ``KICI_AGENT_TOKEN`` is allowed (20 §17: unset = unauthenticated, for orchestrators with
  ``KICI_AGENT_AUTH=none``) and logged as a warning; an orchestrator in token mode then refuses the agent
  and the refusal line says how to fix it.
* The agent id is ``KICI_AGENT_ID``, else ``<hostname>-<uuid8>`` generated once and kept in
  ``<data dir>/agent-id`` so a restarted agent keeps its identity. Jobs work under ``<data dir>/work``.
* Exit codes: 0 after SIGTERM/SIGINT/drain, 2 for startup errors, 3 when the orchestrator refused the
  agent for good (``auth.failure`` or close 4010: a bad, revoked or expired token), 1 for a crash.

Signals (the lifecycle table `LIFECYCLE`):

* SIGTERM / SIGINT: stop taking jobs, give running jobs ``SHUTDOWN_GRACE_S`` (10 s) to finish, then the
  job manager stops the rest and reports them; the pending statuses are flushed (``FLUSH_TIMEOUT_S``),
  the link closes with 1000, exit 0. A second SIGTERM/SIGINT stops at once.
* SIGUSR1: drain mode: dispatches are rejected with ``draining``, running jobs finish, then the same
  flush and exit 0. A SIGTERM during a drain turns it into the shutdown above.
* SIGHUP: reload the config (debounced, validate then swap; ``kici.services.config_reload``). An
  invalid file keeps the old config and logs the problems. Reloadable changes are applied: the log
  level, and the job settings, which new jobs and the capacity gate use; a ``maxConcurrentJobs`` change
  also re-registers the agent on its live connection so the orchestrator routes by it. Restart-only
  fields (orchestrator URL, token, agent id, labels, roles: ``kici.domain.config.reload``) are logged
  and kept; should labels become reloadable there, a changed set re-registers the agent the same way.
"""

from __future__ import annotations

import enum
import functools
import os
import random
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

import attrs
import click
import structlog
import trio

from kici.adapters.config_file import ConfigFileError
from kici.adapters.sandbox.bwrap import BwrapSandbox, bwrap_path, probe
from kici.adapters.sandbox.process import ProcessSandbox
from kici.adapters.ws.client import connect
from kici.adapters.ws.frames import DEFAULT_CLOSE_TIMEOUT_S
from kici.domain.config import ConfigError, HostFacts, Tier, resolve_data_dir
from kici.domain.config.reload import ReloadPlan
from kici.domain.config.schema import AgentConfig, ExecutionMode
from kici.domain.execution_mode import AgentExecution, ModeSource, select_execution_mode
from kici.domain.ports import Sandbox, WsConnector
from kici.services.agent import identity as agent_identity
from kici.services.agent.identity import AgentIdentity, InvalidIdentityError, register_labels
from kici.services.agent.job_runner import JobSettings
from kici.services.agent.jobs import JobManager
from kici.services.agent.link import AgentLink, LinkSettings
from kici.services.agent.ports import Jobs, Outbound
from kici.services.config_reload import (
    ConfigHolder,
    ConfigReloader,
    OnApplied,
    load_agent,
    reload_on_sighup,
    threaded,
)
from kici.services.orchestrator.logging import MASKER, configure_logging
from kici.services.supervisor import Jitter

_log = structlog.get_logger("kici.agent")

EXIT_OK: Final = 0
EXIT_FATAL: Final = 1
EXIT_CONFIG: Final = 2
EXIT_REFUSED: Final = 3
SHUTDOWN_GRACE_S: Final = 10.0
FLUSH_TIMEOUT_S: Final = 5.0
AGENT_ID_FILE: Final = "agent-id"
WORK_DIR: Final = "work"


class StartupError(Exception):
    """The agent cannot start; the message says what, where and how to fix it."""

    def __init__(self, what: str, where: str, fix: str) -> None:
        super().__init__(f"kici-agent cannot start: {what}\n  where: {where}\n  fix: {fix}")
        self.what = what
        self.where = where
        self.fix = fix


@runtime_checkable
class AgentJobs(Jobs, Protocol):
    """The job manager as the daemon drives it (``kici.services.agent.jobs.JobManager``)."""

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...

    def drain(self) -> None: ...

    async def wait_idle(self) -> None: ...

    async def shutdown(self, grace_s: float) -> object: ...


@runtime_checkable
class Reconfigurable(Protocol):
    """A job manager that takes reloaded settings while running (new jobs and the capacity gate)."""

    def reconfigure(self, settings: JobSettings) -> None: ...


JobsFactory = Callable[[AgentConfig, str, Outbound, Sandbox, Path], AgentJobs]


# --- startup pieces -----------------------------------------------------------------------------


def load_config(config_path: str | None, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """The validated config, or a `StartupError` listing every problem."""
    try:
        loaded = load_agent(config_path, environ)
    except ConfigError as exc:
        raise StartupError(
            "the configuration is invalid",
            f"--config {config_path}" if config_path else "KICI_* environment and the default config file",
            "correct each problem listed:\n    " + "\n    ".join(p.render() for p in exc.problems),
        ) from None
    except ConfigFileError as exc:
        raise StartupError(
            f"the config file cannot be read ({exc.problem})",
            f"{exc.path}" + (f":{exc.line}" if exc.line is not None else ""),
            "fix the file or point --config / KICI_CONFIG at the right one",
        ) from None
    for warning in loaded.warnings:
        click.echo(f"config warning: {warning.render()}", err=True)
    return loaded.config


def data_dir_of(config: AgentConfig, environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    host = HostFacts(is_root=os.geteuid() == 0, home=str(Path.home()), xdg_data_home=env.get("XDG_DATA_HOME"))
    path = Path(str(resolve_data_dir(config.paths.data_dir, Tier.AGENT, host)))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(
            f"the data directory {path} cannot be created ({exc.strerror or exc})",
            "KICI_DATA_DIR (dataDir)" if config.paths.data_dir else "the default data directory",
            "set KICI_DATA_DIR to a directory the agent's user can write",
        ) from None
    return path


def resolve_agent_id(config: AgentConfig, data_dir: Path, hostname: str) -> str:
    """``KICI_AGENT_ID``, else the id kept in the data dir, else a new ``<hostname>-<uuid8>`` (kept)."""
    if config.connection.agent_id:
        return config.connection.agent_id
    path = data_dir / AGENT_ID_FILE
    if path.is_file():
        kept = path.read_text(encoding="utf-8").strip()
        if kept:
            return kept
    agent_id = f"{hostname}-{uuid.uuid4().hex[:8]}"
    path.write_text(agent_id + "\n", encoding="utf-8")
    return agent_id


def choose_sandbox(
    config: AgentConfig,
    *,
    which: Callable[[], str | None] = bwrap_path,
    check: Callable[[str], str | None] = probe,
) -> Sandbox:
    """The backend the ISO-11 rules pick without a dispatch (``kici.domain.execution_mode``): bubblewrap,
    or the plain process with ``KICI_SANDBOX=false`` (with a warning). Container and firecracker have no
    backend in this build: selecting them is a startup error naming the setting that selected them."""
    choice = select_execution_mode(AgentExecution.from_config(config))
    if choice.mode is not ExecutionMode.BARE_METAL:
        where = (
            "KICI_EXECUTION_MODE (executionMode)"
            if choice.source is ModeSource.CONFIGURED
            else "KICI_SCALER_MANAGED (scaler.managed), with no KICI_EXECUTION_MODE"
        )
        raise StartupError(
            f"execution mode {choice.mode.value!r} is not available in this build",
            where,
            "set KICI_EXECUTION_MODE=bare-metal (steps then run under bubblewrap, or as plain processes "
            "with KICI_SANDBOX=false)",
        )
    if not choice.sandbox:
        _log.warning(
            "sandbox disabled (KICI_SANDBOX=false): steps run as plain processes of the agent's user, "
            "isolated only by a clean environment"
        )
        return ProcessSandbox()
    path = which()
    if path is None:
        raise StartupError(
            "Bubblewrap (bwrap) not found",
            "KICI_SANDBOX (sandbox.enabled) is true, the default",
            "install bubblewrap (e.g. `apt-get install bubblewrap`) or set KICI_SANDBOX=false to run steps "
            "without isolation",
        )
    problem = check(path)
    if problem is not None:
        raise StartupError(
            f"bubblewrap cannot sandbox steps here: {problem}",
            f"KICI_SANDBOX (sandbox.enabled) is true; bwrap at {path}",
            "allow unprivileged user namespaces (e.g. sysctl kernel.unprivileged_userns_clone=1) or set "
            "KICI_SANDBOX=false to run steps without isolation",
        )
    return BwrapSandbox(path)


def build_identity(config: AgentConfig, agent_id: str, facts: agent_identity.HostFacts) -> AgentIdentity:
    try:
        labels = register_labels(config.identity.labels, facts, config.identity.roles)
    except InvalidIdentityError as exc:
        raise StartupError(
            str(exc), "KICI_LABELS (labels) / KICI_ROLES (roles)", "remove or rename them"
        ) from None
    return AgentIdentity(
        agent_id=agent_id, labels=labels, facts=facts, properties=dict(config.identity.properties)
    )


def link_settings(config: AgentConfig) -> LinkSettings:
    connection = config.connection
    heartbeat_s = connection.heartbeat_interval_ms / 1000.0
    return LinkSettings(
        token=connection.token,
        heartbeat_interval_s=heartbeat_s,
        probe_interval_s=heartbeat_s,
        max_reconnect_delay_ms=float(connection.max_reconnect_delay_ms),
        event_buffer_size=connection.event_buffer_size,
        log_buffer_lines=connection.log_buffer_lines,
    )


# --- the transport ------------------------------------------------------------------------------


def orchestrator_connector(url: str, *, close_timeout: float = DEFAULT_CLOSE_TIMEOUT_S) -> WsConnector:
    """Opens ``url`` with the real client, whose ``ping`` drives the link's liveness probe
    (`link.SupportsPing`); ``close_timeout`` bounds a closing handshake."""
    return functools.partial(connect, url, close_timeout=close_timeout)


# --- the lifecycle ------------------------------------------------------------------------------


class Phase(enum.StrEnum):
    RUNNING = "running"
    DRAINING = "draining"
    STOPPING = "stopping"
    FORCED = "forced"


class Cue(enum.StrEnum):
    DRAIN = "drain"
    TERMINATE = "terminate"


LIFECYCLE: Final[Mapping[tuple[Phase, Cue], Phase]] = {
    (Phase.RUNNING, Cue.DRAIN): Phase.DRAINING,
    (Phase.RUNNING, Cue.TERMINATE): Phase.STOPPING,
    (Phase.DRAINING, Cue.TERMINATE): Phase.STOPPING,
    (Phase.STOPPING, Cue.TERMINATE): Phase.FORCED,
}
"""What each signal does in each phase; a missing pair (a second SIGUSR1) changes nothing."""

CUES: Final[Mapping[int, Cue]] = {
    signal.SIGUSR1: Cue.DRAIN,
    signal.SIGTERM: Cue.TERMINATE,
    signal.SIGINT: Cue.TERMINATE,
}


@attrs.define
class Lifecycle:
    """Drain and shutdown of a running agent; `cue` is called for every signal."""

    link: AgentLink
    jobs: AgentJobs
    grace_s: float = SHUTDOWN_GRACE_S
    flush_s: float = FLUSH_TIMEOUT_S
    phase: Phase = Phase.RUNNING

    def cue(self, cue: Cue, nursery: trio.Nursery) -> None:
        phase = LIFECYCLE.get((self.phase, cue))
        if phase is None:
            return
        self.phase = phase
        if phase is Phase.DRAINING:
            nursery.start_soon(self._drain)
        elif phase is Phase.STOPPING:
            nursery.start_soon(self._stop)
        else:
            _log.warning("second termination signal; stopping now without flushing")
            self.link.stop()

    async def _drain(self) -> None:
        self.jobs.drain()
        _log.info("drain mode: new jobs are refused, running jobs finish", active_jobs=self.jobs.active)
        await self.jobs.wait_idle()
        if self.phase is Phase.DRAINING:
            await self._finish("drained")

    async def _stop(self) -> None:
        self.jobs.drain()
        _log.info("shutting down", active_jobs=self.jobs.active, grace_s=self.grace_s)
        await self.jobs.shutdown(self.grace_s)
        await self._finish("stopped")

    async def _finish(self, how: str) -> None:
        flushed = await self.link.flush(self.flush_s)
        _log.info("agent exiting", how=how, outbound_flushed=flushed)
        self.link.stop()


def _on_reload(
    link: AgentLink, jobs: AgentJobs, facts: agent_identity.HostFacts, log_format: str
) -> OnApplied[AgentConfig]:
    async def applied(plan: ReloadPlan[AgentConfig], old: AgentConfig) -> None:
        new = plan.apply
        MASKER.add(new.connection.token, new.execution.github_token)
        if new.logging.level != old.logging.level:
            configure_logging(
                level=new.logging.level.value,
                fmt=log_format,
                service="agent",
                instance=link.identity.agent_id,
            )
        reregister = False
        try:
            labels = register_labels(new.identity.labels, facts, new.identity.roles)
        except InvalidIdentityError as exc:
            _log.error("reloaded labels rejected; keeping the current ones", problem=str(exc))
            labels = link.identity.labels
        if labels != link.identity.labels:
            link.identity = attrs.evolve(link.identity, labels=labels)
            reregister = True
        agent_id = link.identity.agent_id
        settings = JobSettings.from_config(new, agent_id)
        if settings != JobSettings.from_config(old, agent_id):
            if isinstance(jobs, Reconfigurable):
                jobs.reconfigure(settings)
                reregister = reregister or settings.max_concurrency != old.execution.max_concurrent_jobs
            else:
                _log.warning("job settings changed; the job manager applies them after a restart")
        if reregister:
            _log.info(
                "re-registering", labels=list(link.identity.labels), max_concurrency=jobs.max_concurrency
            )
            link.reregister()

    return applied


async def _watch_signals(signals: AsyncIterator[int], life: Lifecycle, nursery: trio.Nursery) -> None:
    async for signum in signals:
        cue = CUES.get(signum)
        if cue is not None:
            _log.info("signal received", signal=signal.Signals(signum).name, phase=life.phase.value)
            life.cue(cue, nursery)


async def run_agent(
    config: AgentConfig,
    *,
    agent_id: str,
    data_dir: Path,
    sandbox: Sandbox,
    make_jobs: JobsFactory,
    config_path: str | None = None,
    facts: agent_identity.HostFacts | None = None,
    connector: WsConnector | None = None,
    jitter: Jitter = random.random,
    log_format: str = "auto",
) -> int:
    """Run the daemon until a signal ends it or the orchestrator refuses it; returns the exit code."""
    host = facts if facts is not None else agent_identity.gather_host_facts()
    url = config.connection.orchestrator_url
    if connector is None:
        if not url:
            raise StartupError(
                "no orchestrator URL", "KICI_ORCHESTRATOR_URL", "set it, e.g. ws://host:4000/ws"
            )
        connector = orchestrator_connector(url)
    link = AgentLink(build_identity(config, agent_id, host), link_settings(config), connector, jitter=jitter)
    work_dir = data_dir / WORK_DIR
    work_dir.mkdir(parents=True, exist_ok=True)
    jobs = make_jobs(config, agent_id, link, sandbox, work_dir)
    life = Lifecycle(link, jobs)
    reloader = ConfigReloader(
        ConfigHolder(config),
        threaded(lambda: load_agent(config_path)),
        on_applied=[_on_reload(link, jobs, host, log_format)],
    )
    with trio.open_signal_receiver(*CUES) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(jobs.run)
            await nursery.start(reloader.run)
            await nursery.start(reload_on_sighup, reloader)
            nursery.start_soon(_watch_signals, signals, life, nursery)
            _log.info(
                "agent started",
                agent_id=agent_id,
                orchestrator_url=url,
                labels=list(link.identity.labels),
                max_concurrency=jobs.max_concurrency,
                sandbox=sandbox.name,
                authenticated=bool(config.connection.token),
            )
            if not config.connection.token:
                _log.warning(
                    "no KICI_AGENT_TOKEN: connecting unauthenticated, which only an orchestrator with "
                    "KICI_AGENT_AUTH=none accepts"
                )
            outcome = await link.run(jobs)
            if outcome.refused:
                jobs.drain()
                await jobs.shutdown(0.0)
            nursery.cancel_scope.cancel()
    return EXIT_REFUSED if outcome.refused else EXIT_OK


def default_jobs(
    config: AgentConfig, agent_id: str, outbound: Outbound, sandbox: Sandbox, work_dir: Path
) -> AgentJobs:
    """The real job manager (``kici.services.agent.jobs``)."""
    return JobManager(JobSettings.from_config(config, agent_id), outbound, sandbox, work_dir)


# --- console script -----------------------------------------------------------------------------


def start(config_path: str | None, make_jobs: JobsFactory = default_jobs) -> int:
    """Everything ``kici-agent`` does; returns the process exit code."""
    try:
        config = load_config(config_path)
        data_dir = data_dir_of(config)
        facts = agent_identity.gather_host_facts()
        agent_id = resolve_agent_id(config, data_dir, facts.hostname)
        MASKER.add(config.connection.token, config.execution.github_token)
        log_format = config.logging.format.value
        configure_logging(
            level=config.logging.level.value, fmt=log_format, service="agent", instance=agent_id
        )
        sandbox = choose_sandbox(config)
        build_identity(config, agent_id, facts)
    except StartupError as exc:
        click.echo(str(exc), err=True)
        return EXIT_CONFIG
    try:
        return trio.run(
            lambda: run_agent(
                config,
                agent_id=agent_id,
                data_dir=data_dir,
                sandbox=sandbox,
                make_jobs=make_jobs,
                config_path=config_path,
                facts=facts,
                log_format=log_format,
            )
        )
    except Exception:
        _log.exception("agent failed")
        return EXIT_FATAL


@click.command()
@click.option(
    "--config",
    "config_path",
    default=None,
    help="YAML config file (else KICI_CONFIG, else /etc/kici/agent.yaml).",
)
def main(config_path: str | None) -> None:
    """Run a kici agent: connect to the orchestrator and run the jobs it dispatches."""
    sys.exit(start(config_path))


__all__ = [
    "CUES",
    "EXIT_CONFIG",
    "EXIT_FATAL",
    "EXIT_OK",
    "EXIT_REFUSED",
    "LIFECYCLE",
    "AgentJobs",
    "Cue",
    "Lifecycle",
    "Phase",
    "Reconfigurable",
    "StartupError",
    "build_identity",
    "choose_sandbox",
    "data_dir_of",
    "link_settings",
    "load_config",
    "main",
    "orchestrator_connector",
    "resolve_agent_id",
    "run_agent",
    "start",
]


if __name__ == "__main__":
    main()
