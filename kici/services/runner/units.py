"""Running one unit (a step attempt or a hook) on a worker thread, under a deadline and a cancel token.

Sync callables run on a daemon thread so the main thread stays free to react to aborts and deadlines.
``async def`` callables run on their own ``trio.run`` in that thread; trio is imported only then, so a
job without async steps never pays for it (D1). Cancelling the token cancels the trio scope and kills the
unit's shell processes; a unit stuck in pure Python that ignores cancellation is abandoned after the grace
period (its thread is a daemon and dies with the runner).
"""

from __future__ import annotations

import contextvars
import inspect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kici.sdk.errors import ShellError, StepCancelled
from kici.sdk.outputs import outputs_bound
from kici.services.runner.cancel import CancelToken
from kici.services.runner.capture import Capture, current_step_index
from kici.services.runner.outputs import OutputStore

_ABANDON_SLACK_S = 2.0
SIGNAL_SLICE_S = 0.1
"""The main thread never blocks longer than this: a process-directed SIGTERM may be delivered to any
thread, and Python runs its handler only when the main thread next gets control."""

TIMEOUT = "timeout"
JOB_TIMEOUT = "job_timeout"
CANCEL = "cancel"


@dataclass(frozen=True)
class UnitOutcome:
    """``status`` is success, failed or cancelled; ``kind`` says why a unit was cut short."""

    status: str
    value: Any = None
    error: str | None = None
    exception: BaseException | None = None
    exit_code: int | None = None
    kind: str | None = None
    duration_ms: int = 0


def _run_async(
    fn: Callable[..., Any], args: tuple[Any, ...], token: CancelToken, awaitable: Any = None
) -> Any:
    import trio  # noqa: PLC0415 - async steps only (D1)

    async def main() -> Any:
        with trio.CancelScope() as scope:
            trio_token = trio.lowlevel.current_trio_token()
            token.add_callback(lambda: trio_token.run_sync_soon(scope.cancel))
            if awaitable is not None:
                return await awaitable
            return await fn(*args)
        raise StepCancelled(token.reason or "cancelled")

    return trio.run(main)


def call_maybe_async(fn: Callable[..., Any], args: tuple[Any, ...], token: CancelToken) -> Any:
    """Call ``fn``; a coroutine function (or a returned awaitable) runs to completion on its own trio loop."""
    if inspect.iscoroutinefunction(fn):
        return _run_async(fn, args, token)
    value = fn(*args)
    if inspect.isawaitable(value):
        return _run_async(fn, args, token, awaitable=value)
    return value


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, ShellError):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_unit(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    *,
    index: int,
    token: CancelToken,
    timeout_s: float | None,
    job_deadline: float | None,
    capture: Capture,
    outputs: OutputStore,
    timeout_message: str,
    job_timeout_message: str,
) -> UnitOutcome:
    """Run ``fn(*args)`` and wait for it, its deadline, or its token; see the module docstring."""
    started = time.monotonic()
    if token.cancelled:
        return _outcome({}, token, True, 0)
    done = threading.Event()
    wake = threading.Event()
    box: dict[str, Any] = {}

    def target() -> None:
        current_step_index.set(index)
        try:
            with outputs_bound(outputs):
                box["value"] = call_maybe_async(fn, args, token)
        except BaseException as exc:
            box["error"] = exc
        finally:
            capture.flush_index(index)
            done.set()
            wake.set()

    context = contextvars.copy_context()
    token.add_callback(wake.set)
    threading.Thread(target=context.run, args=(target,), daemon=True, name=f"kici-unit-{index}").start()

    deadlines = []
    if timeout_s is not None:
        deadlines.append((started + timeout_s, TIMEOUT))
    if job_deadline is not None:
        deadlines.append((job_deadline, JOB_TIMEOUT))
    deadline, deadline_kind = min(deadlines) if deadlines else (None, None)
    while not wake.is_set():
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            message = timeout_message if deadline_kind == TIMEOUT else job_timeout_message
            token.cancel(message, kind=deadline_kind or TIMEOUT)
            break
        wake.wait(SIGNAL_SLICE_S if remaining is None else min(remaining, SIGNAL_SLICE_S))
    if token.wait(0) and not done.is_set():
        done.wait(token.grace_s + _ABANDON_SLACK_S)
    duration_ms = round((time.monotonic() - started) * 1000)
    return _outcome(box, token, done.is_set(), duration_ms)


def _outcome(box: dict[str, Any], token: CancelToken, finished: bool, duration_ms: int) -> UnitOutcome:
    if token.cancelled:
        kind = token.kind or CANCEL
        if kind == CANCEL:
            return UnitOutcome("cancelled", error=token.reason, kind=CANCEL, duration_ms=duration_ms)
        return UnitOutcome("failed", error=token.reason, kind=kind, duration_ms=duration_ms)
    if not finished:
        return UnitOutcome("failed", error="unit did not finish", duration_ms=duration_ms)
    error = box.get("error")
    if error is None:
        return UnitOutcome("success", value=box.get("value"), duration_ms=duration_ms)
    exit_code = error.exit_code if isinstance(error, ShellError) else None
    return UnitOutcome(
        "failed", error=describe_error(error), exception=error, exit_code=exit_code, duration_ms=duration_ms
    )


__all__ = [
    "CANCEL",
    "JOB_TIMEOUT",
    "TIMEOUT",
    "UnitOutcome",
    "call_maybe_async",
    "describe_error",
    "run_unit",
]
