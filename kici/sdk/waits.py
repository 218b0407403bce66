"""Polling waits (SDK-29): ``wait_for`` inside a step, ``wait_for_step`` as a step of its own.

A poll succeeds when ``check()`` returns anything but ``None`` or ``False``; with
``swallow_errors`` (the default) an exception counts as "not yet", so a health
endpoint that refuses connections while a service starts is simply polled again.
The deadline is checked before each poll, so no poll starts after ``timeout``.
Without ``on_timeout`` a timeout raises ``WaitForTimeoutError``, failing the step.

Both are blocking: they belong in ``def`` steps, which the runner runs in worker
threads. ``clock`` and ``sleep`` are parameters so tests (and a runner that owns
time) can drive the loop without waiting.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kici.sdk.checks import Seconds, as_seconds, check_bool, check_callable, check_optional_callable
from kici.sdk.errors import WaitForTimeoutError
from kici.sdk.location import caller_location
from kici.sdk.steps import Step


@dataclass(frozen=True)
class Succeeded:
    value: Any
    elapsed_ms: int
    attempts: int
    result: Any = None


@dataclass(frozen=True)
class TimedOut:
    elapsed_ms: int
    attempts: int
    result: Any = None


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def wait_for(
    check: Callable[[], Any],
    *,
    interval: Seconds | Any = 2,
    timeout: Seconds | Any = 60,
    initial_delay: Seconds | Any = 0,
    on_success: Callable[[Any], Any] | None = None,
    on_timeout: Callable[[], Any] | None = None,
    swallow_errors: bool = True,
    name: str = "waitFor",
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Succeeded | TimedOut:
    location = caller_location()
    check_callable(check, f"wait_for('{name}'): check", location)
    interval = as_seconds(interval, f"wait_for('{name}'): interval", location)
    timeout = as_seconds(timeout, f"wait_for('{name}'): timeout", location)
    initial_delay = as_seconds(initial_delay, f"wait_for('{name}'): initial_delay", location, allow_zero=True)
    check_optional_callable(on_success, f"wait_for('{name}'): on_success", location)
    check_optional_callable(on_timeout, f"wait_for('{name}'): on_timeout", location)
    check_bool(swallow_errors, f"wait_for('{name}'): swallow_errors", location)

    start = clock()
    if initial_delay:
        sleep(initial_delay)
    attempts = 0
    while clock() - start < timeout:
        attempts += 1
        try:
            value = check()
        except Exception:
            if not swallow_errors:
                raise
            value = None
        if value is not None and value is not False:
            result = on_success(value) if on_success is not None else None
            return Succeeded(value, _ms(clock() - start), attempts, result)
        remaining = timeout - (clock() - start)
        if remaining <= 0:
            break
        sleep(min(interval, remaining))
    elapsed_ms = _ms(clock() - start)
    if on_timeout is not None:
        return TimedOut(elapsed_ms, attempts, on_timeout())
    raise WaitForTimeoutError(name, elapsed_ms, attempts)


def _takes_ctx(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(p.kind in positional or p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)


def wait_for_step(
    name: str,
    check: Callable[..., Any],
    *,
    interval: Seconds | Any = 2,
    timeout: Seconds | Any = 60,
    initial_delay: Seconds | Any = 0,
    on_success: Callable[[Any], Any] | None = None,
    on_timeout: Callable[[], Any] | None = None,
    swallow_errors: bool = True,
    **options: Any,
) -> Step:
    """A step that polls ``check`` (which may take ``ctx`` or nothing).

    Its outputs are what ``on_success`` / ``on_timeout`` return (``None`` without
    them); ``options`` are further ``step()`` options. ``timeout`` is the polling
    budget, which also bounds the step (the runner's default step cap still applies).
    """
    location = caller_location()
    check_callable(check, f"wait_for_step('{name}'): check", location)
    owner = f"wait_for_step('{name}')"
    every = as_seconds(interval, f"{owner}: interval", location)
    budget = as_seconds(timeout, f"{owner}: timeout", location)
    delay = as_seconds(initial_delay, f"{owner}: initial_delay", location, allow_zero=True)
    check_optional_callable(on_success, f"{owner}: on_success", location)
    check_optional_callable(on_timeout, f"{owner}: on_timeout", location)
    check_bool(swallow_errors, f"{owner}: swallow_errors", location)
    with_ctx = _takes_ctx(check)

    def run(ctx: Any) -> Any:
        outcome = wait_for(
            functools.partial(check, ctx) if with_ctx else check,
            interval=every,
            timeout=budget,
            initial_delay=delay,
            on_success=on_success,
            on_timeout=on_timeout,
            swallow_errors=swallow_errors,
            name=name,
        )
        return outcome.result

    return Step(name, run, **options, location=location)
