"""The ``StepContext`` handed to every step and hook callable (00 §1.9).

Standard library only (D1). The context is a thin, user-facing facade: everything that touches processes,
the IPC channel or job-wide state goes through a ``StepRuntime`` supplied by the runner
(``kici.services.runner``), so this module stays importable anywhere (compiler, tests, IDEs) and a context
is never serialized — it is rebuilt in the runner for each step (ISO-01).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Protocol

from kici.sdk.errors import KiciUsageError, SecretNotFoundError, StepCancelled

OutcomeStatus = Literal["cancelled", "success", "failed"]


@dataclass(frozen=True)
class ShellResult:
    """What ``ctx.sh`` returns; ``str(result)`` is stdout without its trailing newline for easy chaining."""

    stdout: str
    stderr: str
    exit_code: int
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def __str__(self) -> str:
        return self.stdout.rstrip("\n")


@dataclass(frozen=True)
class Outcome:
    """What a hook sees about the job it observes (10 §5)."""

    status: OutcomeStatus
    reason: str | None = None
    failed_step: str | None = None
    step_outputs: Mapping[str, Any] = field(default_factory=dict)
    duration_ms: int = 0


@dataclass(frozen=True)
class NeedInfo:
    """One upstream job as seen through ``ctx.needs``."""

    result: Any
    status: str
    name: str = ""


@dataclass(frozen=True)
class WorkflowInfo:
    name: str


@dataclass(frozen=True)
class JobInfo:
    name: str
    runs_on: Any = None


class StepRuntime(Protocol):
    """The runner's side of a context: I/O, cancellation and job-wide mutable state.

    Kept as a protocol so ``kici.sdk`` never imports the runner and tests can drive a context with a fake.
    """

    @property
    def cancelled(self) -> bool: ...

    def run_shell(
        self,
        argv: Sequence[str],
        *,
        display: str,
        cwd: str | None,
        env: Mapping[str, str] | None,
        input: str | bytes | None,
        timeout: float | None,
        quiet: bool,
    ) -> ShellResult: ...

    def log(self, text: str) -> None: ...

    def env_snapshot(self) -> Mapping[str, str]: ...

    def set_env(self, key: str, value: str) -> None: ...

    def add_path(self, directory: str) -> None: ...

    def outputs_of(self, step_or_fn: Any) -> Mapping[str, Any]: ...

    def job_outputs(self, job: Any) -> Any: ...

    def set_secret_output(self, key: str, value: str) -> None: ...

    def secret_accessed(self, key: str) -> None: ...

    def emit(self, name: str, payload: Any, target_repos: Sequence[str] | None) -> Any: ...


def format_command(cmd: str, fmt: Mapping[str, Any]) -> str:
    """Apply the ``ctx.sh`` quoting rule: every ``{name}`` becomes a shell-quoted word.

    Sequences (list/tuple) expand to several quoted words, which is what a user splicing a file list expects.
    Literal braces are written doubled, as with ``str.format``. Without ``fmt`` the command is verbatim, so
    shell syntax such as ``${VAR}`` needs no escaping in the common case.
    """
    if not fmt:
        return cmd
    quoted = {name: _quote_value(value) for name, value in fmt.items()}
    try:
        return cmd.format_map(quoted)
    except (KeyError, IndexError) as exc:
        raise KiciUsageError(f"ctx.sh: placeholder {exc} has no keyword argument") from None
    except ValueError as exc:
        raise KiciUsageError(f"ctx.sh: bad placeholder ({exc}); write literal braces doubled") from None


class _Quoted(str):
    """A pre-quoted value; format specs and conversions are refused so quoting cannot be undone."""

    __slots__ = ()

    def __format__(self, spec: str) -> str:
        if spec:
            raise KiciUsageError("ctx.sh: format specs are not allowed on quoted placeholders")
        return str(self)


def _quote_value(value: Any) -> _Quoted:
    if isinstance(value, (list, tuple)):
        return _Quoted(" ".join(shlex.quote(str(item)) for item in value))
    return _Quoted(shlex.quote(str(value)))


def build_argv(cmd: str | Sequence[str], shell: str, fmt: Mapping[str, Any]) -> tuple[list[str], str]:
    """The argv ``ctx.sh`` executes and the text it shows for it."""
    if isinstance(cmd, str):
        text = format_command(cmd, fmt)
        return [shell, "-c", "set -euo pipefail; " + text], text
    if fmt:
        raise KiciUsageError("ctx.sh: keyword placeholders apply only to string commands")
    argv = [str(part) for part in cmd]
    if not argv:
        raise KiciUsageError("ctx.sh: empty command")
    return argv, shlex.join(argv)


def _on_trio_thread() -> bool:
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


class StepLog:
    """``ctx.log``: %-style messages to the step log (masked by the runner like every other line)."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self._emit = emit

    def _write(self, level: str, msg: object, args: tuple[Any, ...]) -> None:
        text = str(msg) % args if args else str(msg)
        for line in text.splitlines() or [""]:
            self._emit(f"[{level}] {line}")

    def debug(self, msg: object, *args: Any) -> None:
        self._write("debug", msg, args)

    def info(self, msg: object, *args: Any) -> None:
        self._write("info", msg, args)

    def warn(self, msg: object, *args: Any) -> None:
        self._write("warn", msg, args)

    warning = warn

    def error(self, msg: object, *args: Any) -> None:
        self._write("error", msg, args)


class Secrets:
    """``ctx.secrets``: read access to the job's secrets; every read is recorded for the audit trail."""

    def __init__(self, values: Mapping[str, str], runtime: StepRuntime, meta: Mapping[str, Any]) -> None:
        self._values = dict(values)
        self._runtime = runtime
        self._meta = dict(meta)

    def get(self, key: str) -> str:
        if key not in self._values:
            raise SecretNotFoundError(key, self._values)
        self._runtime.secret_accessed(key)
        return self._values[key]

    def has(self, key: str) -> bool:
        return key in self._values

    def list(self) -> list[str]:
        return sorted(self._values)

    def get_meta(self, key: str) -> Any:
        if key not in self._values:
            raise SecretNotFoundError(key, self._values)
        return self._meta.get(key)

    def expose(self, key: str, env_var: str | None = None) -> str:
        """Put a secret into this and later steps' env: the opt-in, as secrets never enter env implicitly."""
        value = self.get(key)
        self._runtime.set_env(env_var or key, value)
        return value


class Matrix(Mapping[str, Any]):
    """``ctx.matrix``: ``.value`` for a 1-D matrix, ``.os`` / ``["os"]`` for named dimensions."""

    def __init__(self, values: Mapping[str, Any] | None) -> None:
        self._values = dict(values or {})

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"matrix has no dimension '{name}'") from None

    def __repr__(self) -> str:
        return f"Matrix({self._values!r})"


class _Aio:
    """Awaitable twins of the blocking ``ctx`` methods, for ``async def`` steps (needs trio)."""

    def __init__(self, ctx: StepContext) -> None:
        self._ctx = ctx

    async def sh(self, cmd: str | Sequence[str], **kwargs: Any) -> ShellResult:
        import trio  # noqa: PLC0415 - only async steps pay for trio (D1)

        return await trio.to_thread.run_sync(
            lambda: self._ctx._sh_blocking(cmd, **kwargs), abandon_on_cancel=False
        )


class StepContext:
    """The object every step and hook receives.

    Blocking I/O (``sh``) refuses to run on the trio thread of an ``async def`` step so a stray blocking call
    cannot freeze the event loop silently; ``ctx.aio.sh`` is the awaitable twin. Once cancellation has
    started every member that does work (``sh``, ``set_env``, ``add_path``, ``set_secret_output``, ``emit``)
    raises ``StepCancelled``; pure reads (``log``, ``env``, ``secrets``) keep working so a step's own
    ``except``/``finally`` can still report what it was doing. Remote-only members of 00 §1.9
    (``kici.oidc``, ``kici.inventory``, ``attest_provenance``) are not offered by this runner.
    """

    def __init__(
        self,
        runtime: StepRuntime,
        *,
        workspace: Path,
        workflow_name: str,
        job_name: str,
        step_name: str,
        matrix: Mapping[str, Any] | None = None,
        event: Any = None,
        secrets: Mapping[str, str] | None = None,
        secret_meta: Mapping[str, Any] | None = None,
        dispatch_inputs: Mapping[str, Any] | None = None,
        needs: Mapping[str, Any] | None = None,
        runs_on: Any = None,
        outcome: Outcome | None = None,
        provider: str | None = None,
        raw_payload: Any = None,
        is_test_run: bool = False,
        environment: str | None = None,
        fanout: Any = None,
        host: str | None = None,
        agent: Any = None,
        workflow_repo: Any = None,
        source_repo: Any = None,
    ) -> None:
        self._runtime = runtime
        self.workspace = workspace
        self.workflow = WorkflowInfo(workflow_name)
        self.job = JobInfo(job_name, runs_on)
        self.step_name = step_name
        self.matrix = Matrix(matrix)
        self.event = event
        self.secrets = Secrets(secrets or {}, runtime, secret_meta or {})
        self.dispatch_inputs: Mapping[str, Any] = dict(dispatch_inputs or {})
        self.inputs = self.dispatch_inputs
        self.needs: Mapping[str, Any] = dict(needs or {})
        self.outcome = outcome
        self.provider = provider
        self.raw_payload = raw_payload
        self.is_test_run = is_test_run
        self.environment = environment
        self.fanout = fanout
        self.host = host
        self.agent = agent
        self.workflow_repo = workflow_repo
        self.source_repo = source_repo
        self.log = StepLog(self._log)
        self.aio = _Aio(self)

    def _log(self, text: str) -> None:
        self._runtime.log(text)

    @property
    def cancelled(self) -> bool:
        return self._runtime.cancelled

    def raise_if_cancelled(self) -> None:
        if self._runtime.cancelled:
            raise StepCancelled("the job is being cancelled")

    @property
    def env(self) -> Mapping[str, str]:
        """A read-only view of the environment later ``ctx.sh`` calls get (job env + deltas so far)."""
        return MappingProxyType(dict(self._runtime.env_snapshot()))

    def set_env(self, key: str, value: str) -> None:
        self.raise_if_cancelled()
        self._runtime.set_env(str(key), str(value))

    def add_path(self, directory: str | Path) -> None:
        self.raise_if_cancelled()
        self._runtime.add_path(str(directory))

    def sh(
        self,
        cmd: str | Sequence[str],
        *,
        check: bool = True,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        input: str | bytes | None = None,
        timeout: float | None = None,
        quiet: bool = False,
        shell: str = "bash",
        **fmt: Any,
    ) -> ShellResult:
        if _on_trio_thread():
            raise KiciUsageError("use await ctx.aio.sh(...) in async steps")
        return self._sh_blocking(
            cmd, check=check, cwd=cwd, env=env, input=input, timeout=timeout, quiet=quiet, shell=shell, **fmt
        )

    def _sh_blocking(
        self,
        cmd: str | Sequence[str],
        *,
        check: bool = True,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        input: str | bytes | None = None,
        timeout: float | None = None,
        quiet: bool = False,
        shell: str = "bash",
        **fmt: Any,
    ) -> ShellResult:
        from kici.sdk.errors import ShellError  # noqa: PLC0415 - keeps the import graph flat

        self.raise_if_cancelled()
        argv, display = build_argv(cmd, shell, fmt)
        result = self._runtime.run_shell(
            argv,
            display=display,
            cwd=None if cwd is None else str(cwd),
            env=env,
            input=input,
            timeout=timeout,
            quiet=quiet,
        )
        self.raise_if_cancelled()
        if check and not result.ok:
            raise ShellError(display, result.exit_code, result.stdout, result.stderr)
        return result

    def outputs_of(self, step_or_fn: Any) -> Mapping[str, Any]:
        return self._runtime.outputs_of(step_or_fn)

    def job_outputs(self, job: Any) -> Any:
        return self._runtime.job_outputs(job)

    def set_secret_output(self, key: str, value: str) -> None:
        self.raise_if_cancelled()
        self._runtime.set_secret_output(str(key), str(value))

    def emit(self, name_or_def: Any, payload: Any = None, target_repos: Sequence[str] | None = None) -> Any:
        self.raise_if_cancelled()
        name = name_or_def if isinstance(name_or_def, str) else getattr(name_or_def, "name", str(name_or_def))
        return self._runtime.emit(name, payload, target_repos)


__all__ = [
    "JobInfo",
    "Matrix",
    "NeedInfo",
    "Outcome",
    "Secrets",
    "ShellResult",
    "StepContext",
    "StepLog",
    "StepRuntime",
    "WorkflowInfo",
    "build_argv",
    "format_command",
]
