"""Errors raised by the SDK at definition time and by the StepContext at run time.

Standard library only (D1): the sandboxed runner imports this module on every job start.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

_SHELL_TAIL_LINES = 20


class KiciDefinitionError(ValueError):
    """A workflow object was built with invalid options.

    ``code`` is the validation code of 00 §4 (e.g. ``"E201"``) so the compiler can report it as a
    diagnostic; ``location`` is the ``SourceLocation`` of the factory call so the message points at the
    user's ``file:line`` rather than at SDK internals.
    """

    def __init__(self, message: str, *, code: str | None = None, location: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.location = location

    def __str__(self) -> str:
        """``file:line:col: error [CODE]: message``, the compiler's diagnostic shape."""
        head = "error"
        if self.code:
            head += f" [{self.code}]"
        file = getattr(self.location, "file", None)
        if file is None:
            return f"{head}: {self.message}"
        line = getattr(self.location, "line", None)
        column = getattr(self.location, "column", None)
        where = f"{file}:{line}:{column}" if column else f"{file}:{line}"
        return f"{where}: {head}: {self.message}"


class KiciUsageError(RuntimeError):
    """The SDK was used in a way that cannot work at run time (e.g. a blocking call on the trio thread)."""


class StepCancelled(Exception):
    """The job is being cancelled; raised by any ``ctx`` call once cancellation has started."""


class ShellError(Exception):
    """``ctx.sh(..., check=True)`` saw a non-zero exit.

    ``str()`` ends with the last output lines because that is what a CI user needs to see in a failed step
    summary without opening the full log.
    """

    def __init__(
        self,
        cmd: str | Iterable[str],
        exit_code: int,
        stdout: str = "",
        stderr: str = "",
        *,
        timeout_s: float | None = None,
    ) -> None:
        self.cmd = cmd if isinstance(cmd, str) else list(cmd)
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        self.timeout_s = timeout_s
        super().__init__(self._render())

    def _render(self) -> str:
        shown = self.cmd if isinstance(self.cmd, str) else " ".join(self.cmd)
        if self.timeout_s is not None:
            text = f"Command timed out after {self.timeout_s:g}s: {shown}"
        else:
            text = f"Command failed with exit code {self.exit_code}: {shown}"
        tail = _tail_lines(self.stdout, self.stderr)
        if tail:
            text += "\n" + "\n".join(tail)
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_shell_error, (self.cmd, self.exit_code, self.stdout, self.stderr, self.timeout_s))


def _rebuild_shell_error(
    cmd: str | list[str], exit_code: int, stdout: str, stderr: str, timeout_s: float | None
) -> ShellError:
    return ShellError(cmd, exit_code, stdout, stderr, timeout_s=timeout_s)


def _tail_lines(stdout: str, stderr: str) -> list[str]:
    lines = [line for line in stdout.splitlines() if line]
    lines += [line for line in stderr.splitlines() if line]
    return lines[-_SHELL_TAIL_LINES:]


class SecretNotFoundError(KeyError):
    """A step asked for a secret the job lacks; the message lists the available names, never values."""

    def __init__(self, key: str, available: Iterable[str] = ()) -> None:
        self.key = key
        self.available = sorted(available)
        shown = ", ".join(self.available) if self.available else "(none)"
        self.message = f"Secret '{key}' not found. Available secrets: {shown}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.key, self.available))


class OutputsNotReady(LookupError):
    """A ``.result`` proxy or ``ctx.outputs_of`` was read before the step produced its outputs."""

    def __init__(self, step_name: str, message: str | None = None) -> None:
        self.step_name = step_name
        super().__init__(message or f"Step '{step_name}' has not produced outputs yet")


class OutputValidationError(ValueError):
    """A step's return value does not fit its ``outputs`` schema (or is not JSON-serializable)."""

    def __init__(self, step_name: str, detail: str) -> None:
        self.step_name = step_name
        self.detail = detail
        super().__init__(f"Step '{step_name}' returned invalid outputs: {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.step_name, self.detail))


class WaitForTimeoutError(TimeoutError):
    """``wait_for`` reached its deadline without success and no ``on_timeout`` was given."""

    def __init__(self, step_name: str, elapsed_ms: int, attempts: int) -> None:
        self.step_name = step_name
        self.elapsed_ms = elapsed_ms
        self.attempts = attempts
        super().__init__(f"wait_for '{step_name}' timed out after {elapsed_ms} ms ({attempts} attempts)")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.step_name, self.elapsed_ms, self.attempts))


__all__ = [
    "KiciDefinitionError",
    "KiciUsageError",
    "OutputValidationError",
    "OutputsNotReady",
    "SecretNotFoundError",
    "ShellError",
    "StepCancelled",
    "WaitForTimeoutError",
]


class InputValidationError(ValueError):
    """A dispatch or schedule input value does not fit its declared descriptor (SDK-12).

    Raised when ``kici run local --input`` text cannot be coerced and when a run's inputs are checked, so
    the message names the input: ``input 'retries': expected integer, got 'abc'``.
    """

    def __init__(self, name: str, detail: str) -> None:
        self.name = name
        self.detail = detail
        super().__init__(f"input '{name}': {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.detail))


__all__ += ["InputValidationError"]
