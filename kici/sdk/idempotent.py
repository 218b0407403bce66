"""Idempotent work (SDK-28): check what would change, apply only the drift.

* ``check_step(name, check=, apply=, summarize=, ...)`` is a step with a check facet;
  the runner honours the run mode (``apply`` / ``check`` / ``check-fail-on-drift``):
  in check mode it calls only ``check`` and reports ``would change`` or ``in sync``.
* ``idempotent_step(name, check=, apply=, ...)`` always applies: it is a plain step
  (skipped with ``no check`` in check mode) whose function runs :func:`idempotent`.
* ``idempotent(check, apply, ...)`` is the same logic called inside any step. It
  takes zero-argument ``check()`` and one-argument ``apply(drift)`` because the
  calling step already holds ``ctx`` and closes over it.

A check returns ``None`` when everything is in sync; anything else is the drift,
handed to ``apply`` and ``summarize`` unchanged. This is the rule the runner applies
to ``check_step`` too, so both kinds of step agree on what "in sync" means.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kici.sdk.checks import Seconds, check_callable, check_optional_callable
from kici.sdk.location import caller_location
from kici.sdk.steps import Step


@dataclass(frozen=True)
class Applied:
    drift: Any
    result: Any


@dataclass(frozen=True)
class Skipped:
    result: Any


def idempotent(
    check: Callable[[], Any],
    apply: Callable[[Any], Any],
    *,
    when_in_sync: Callable[[], Any] | None = None,
    summarize: Callable[[Any], str] | None = None,
    name: str = "idempotent",
    log: Callable[[str], None] | None = None,
) -> Applied | Skipped:
    """Run ``apply(drift)`` only when ``check()`` reports drift.

    ``summarize(drift)`` and ``name`` only feed ``log`` (e.g. ``ctx.log.info``), so the
    step log says what was changed and why.
    """
    drift = check()
    if drift is None:
        if log is not None:
            log(f"{name}: in sync")
        return Skipped(when_in_sync() if when_in_sync is not None else None)
    if log is not None:
        log(f"{name}: applying {summarize(drift) if summarize is not None else 'changes'}")
    return Applied(drift, apply(drift))


def check_step(
    name: str,
    *,
    check: Callable[[Any], Any],
    apply: Callable[[Any, Any], Any],
    summarize: Callable[[Any], str] | None = None,
    when_in_sync: Callable[[Any], Any] | None = None,
    continue_on_error: bool | None = None,
    timeout: Seconds | Any = None,
    **options: Any,
) -> Step:
    """A step with a check facet: ``check(ctx)`` -> drift, ``apply(ctx, drift)`` -> outputs.

    ``options`` are further ``step()`` options (``outputs``, ``retry``, ``approval``,
    ``drift``, ``rules``, ...). ``summarize`` is required (E205).
    """
    return Step(
        name,
        apply,
        check=check,
        summarize=summarize,
        when_in_sync=when_in_sync,
        continue_on_error=continue_on_error,
        timeout=timeout,
        **options,
        location=caller_location(),
    )


def idempotent_step(
    name: str,
    *,
    check: Callable[[Any], Any],
    apply: Callable[[Any, Any], Any],
    when_in_sync: Callable[[Any], Any] | None = None,
    summarize: Callable[[Any], str] | None = None,
    **options: Any,
) -> Step:
    """A plain step that checks, then applies the drift whatever the run mode.

    Its outputs are what ``apply`` (or, when in sync, ``when_in_sync``) returns.
    """
    location = caller_location()
    check_callable(check, f"idempotent_step('{name}'): check", location)
    check_callable(apply, f"idempotent_step('{name}'): apply", location)
    check_optional_callable(when_in_sync, f"idempotent_step('{name}'): when_in_sync", location)
    check_optional_callable(summarize, f"idempotent_step('{name}'): summarize", location)

    def run(ctx: Any) -> Any:
        in_sync = None if when_in_sync is None else functools.partial(when_in_sync, ctx)
        outcome = idempotent(
            functools.partial(check, ctx),
            functools.partial(apply, ctx),
            when_in_sync=in_sync,
            summarize=summarize,
            name=name,
            log=ctx.log.info,
        )
        return outcome.result

    return Step(name, run, **options, location=location)
