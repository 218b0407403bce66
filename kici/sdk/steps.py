"""Steps (SDK-03/04/22/24/25/28): the units a job runs, alone or in ``parallel()`` groups.

Forms of ``step`` (00 §1.2):

* ``step(fn)`` / ``step(run=fn, ...)`` and a bare callable in ``steps=[...]``: unnamed,
  called ``step-N`` by :mod:`kici.sdk.naming`;
* ``step("x", fn, ...)`` ≡ ``step("x", run=fn, ...)``;
* ``@step("x", ...)`` above a ``def``; bare ``@step`` (and ``@step(...)`` without a
  name) names the step after the function, ``_`` -> ``-`` (PY+);
* the check facet ``step("x", check=..., summarize=..., run=apply, when_in_sync=...,
  drift=schema)``.

Step callables may be ``def`` or ``async def`` (SDK-04): the runner runs coroutine
functions as trio tasks and plain functions in worker threads; nothing here needs to
know which. A bare callable gets the location of its ``def`` line, the closest thing
it has to a call site.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kici.sdk.approvals import Approval, as_approval
from kici.sdk.cache import CacheSpec, as_caches
from kici.sdk.checks import (
    INVALID_OPTION,
    Seconds,
    as_optional_seconds,
    as_tuple,
    check_bool,
    check_name,
    check_optional_bool,
    check_optional_callable,
    is_number,
)
from kici.sdk.diagnostics import KiciWarning, error, subject
from kici.sdk.hooks import Hook, as_hook
from kici.sdk.location import SourceLocation, caller_location, is_decorator_site
from kici.sdk.outputs import StepResult, check_outputs_schema
from kici.sdk.retry import Retry, as_retry
from kici.sdk.rules import Rule

PARALLEL_ERROR = "E214"


def check_rules(value: object, owner: str, location: SourceLocation) -> tuple[Rule, ...]:
    rules = as_tuple(value)
    for item in rules:
        if not isinstance(item, Rule):
            raise error(
                INVALID_OPTION,
                f"{owner}: rules must be rule(...) or skip(...) objects, got {item!r}",
                location,
            )
    return rules


def definition_site(fn: Callable[..., Any], fallback: SourceLocation) -> SourceLocation:
    code = getattr(fn, "__code__", None)
    if code is None:
        return fallback
    return SourceLocation(code.co_filename, code.co_firstlineno, 1)


def function_step_name(fn: Callable[..., Any]) -> str | None:
    """The PY+ decorator name: ``deploy_app`` -> ``deploy-app``; lambdas have none."""
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str) or not name.isidentifier():
        return None
    return name.replace("_", "-")


@dataclass(frozen=True, eq=False)
class Step:
    name: str | None
    run: Callable[..., Any]
    outputs: Any = None
    timeout: Seconds | None = None
    retry: Retry | None = None
    continue_on_error: bool | None = None
    cache: tuple[CacheSpec, ...] = ()
    rules: tuple[Rule, ...] = ()
    on_cancel: Hook | None = None
    cleanup: Hook | None = None
    approval: Approval | None = None
    check: Callable[..., Any] | None = None
    summarize: Callable[..., Any] | None = None
    when_in_sync: Callable[..., Any] | None = None
    drift: Any = None
    location: SourceLocation = field(default_factory=caller_location, repr=False)

    def __post_init__(self) -> None:
        loc = self.location
        if self.name is not None:
            check_name(self.name, "step name", loc)
        owner = subject("step", self.name)
        if not callable(self.run):
            raise error(INVALID_OPTION, f"{owner}: run must be a function taking ctx, got {self.run!r}", loc)
        set_ = object.__setattr__
        set_(self, "outputs", check_outputs_schema(self.outputs, owner, loc))
        set_(self, "timeout", as_optional_seconds(self.timeout, f"{owner}: timeout", loc))
        set_(self, "retry", as_retry(self.retry, loc))
        check_optional_bool(self.continue_on_error, f"{owner}: continue_on_error", loc)
        set_(self, "cache", as_caches(self.cache, loc))
        set_(self, "rules", check_rules(self.rules, owner, loc))
        set_(self, "on_cancel", as_hook(self.on_cancel, f"{owner}: on_cancel", loc))
        set_(self, "cleanup", as_hook(self.cleanup, f"{owner}: cleanup", loc))
        check_optional_callable(self.check, f"{owner}: check", loc)
        check_optional_callable(self.summarize, f"{owner}: summarize", loc)
        check_optional_callable(self.when_in_sync, f"{owner}: when_in_sync", loc)
        if self.check is None:
            for option in ("summarize", "when_in_sync", "drift"):
                if getattr(self, option) is not None:
                    raise error(INVALID_OPTION, f"{owner}: {option} only applies to a step with check=", loc)
        elif self.summarize is None:
            raise error("E205", f"{owner}: summarize is required when check is set", loc)
        set_(self, "drift", check_outputs_schema(self.drift, owner, loc, "drift"))
        approval = as_approval(self.approval, loc)
        if approval is not None and approval.when == "drift" and self.check is None:
            raise error("E206", f'{owner}: approval.when "drift" requires a check facet', loc)
        set_(self, "approval", approval)

    @property
    def label(self) -> str:
        return self.name if self.name is not None else f"<unnamed step at {self.location}>"

    @property
    def result(self) -> StepResult:
        """Outputs of this step in the running job (``build.result.version``)."""
        return StepResult(self, self.label)


@dataclass(frozen=True, eq=False)
class StepDecorator:
    """What ``step("x", ...)`` returns without a function: apply it to a ``def``."""

    name: str | None
    options: dict[str, Any]
    location: SourceLocation

    def __call__(self, fn: Callable[..., Any]) -> Step:
        name = self.name if self.name is not None else function_step_name(fn)
        return Step(name, fn, **self.options, location=self.location)


def step(
    name: str | Callable[..., Any] | None = None,
    run: Callable[..., Any] | None = None,
    *,
    outputs: Any = None,
    timeout: Seconds | Any = None,
    retry: Retry | int | None = None,
    continue_on_error: bool | None = None,
    cache: Any = None,
    rules: Any = None,
    on_cancel: Callable[..., Any] | Hook | None = None,
    cleanup: Callable[..., Any] | Hook | None = None,
    approval: Any = None,
    check: Callable[..., Any] | None = None,
    summarize: Callable[..., Any] | None = None,
    when_in_sync: Callable[..., Any] | None = None,
    drift: Any = None,
) -> Any:
    """A step, or a decorator when no function is given yet (see the module docstring)."""
    location = caller_location()
    options: dict[str, Any] = {
        "outputs": outputs,
        "timeout": timeout,
        "retry": retry,
        "continue_on_error": continue_on_error,
        "cache": cache,
        "rules": rules,
        "on_cancel": on_cancel,
        "cleanup": cleanup,
        "approval": approval,
        "check": check,
        "summarize": summarize,
        "when_in_sync": when_in_sync,
        "drift": drift,
    }
    if callable(name):
        if run is not None:
            raise error(INVALID_OPTION, "step(fn, run=...) gives the function twice", location)
        fn = name
        step_name = function_step_name(fn) if is_decorator_site(location) else None
        return Step(step_name, fn, **options, location=location)
    if name is not None:
        check_name(name, "step name", location)
    if run is None:
        return StepDecorator(name, options, location)
    return Step(name, run, **options, location=location)


@dataclass(frozen=True, eq=False)
class Parallel:
    """A group of steps run concurrently (SDK-22); children are plain steps."""

    steps: tuple[Step, ...]
    fail_fast: bool = True
    max_parallel: int | None = None
    name: str | None = None
    location: SourceLocation = field(default_factory=caller_location, repr=False)
    warnings: tuple[KiciWarning, ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        loc = self.location
        if self.name is not None:
            check_name(self.name, "parallel group name", loc)
        children = as_tuple(self.steps)
        if not children:
            raise error(PARALLEL_ERROR, "job step: empty parallel group not allowed", loc)
        steps: list[Step] = []
        seen: set[str] = set()
        for child in children:
            if isinstance(child, Parallel):
                raise error(PARALLEL_ERROR, "job step: nested parallel groups are not supported", loc)
            entry = as_step(child, loc)
            if entry.name is not None:
                if entry.name in seen:
                    raise error(
                        PARALLEL_ERROR, f"job step: duplicate step name '{entry.name}' in parallel group", loc
                    )
                seen.add(entry.name)
            steps.append(entry)
        object.__setattr__(self, "steps", tuple(steps))
        check_bool(self.fail_fast, "parallel(): fail_fast", loc)
        if self.max_parallel is not None and (
            not is_number(self.max_parallel)
            or not isinstance(self.max_parallel, int)
            or self.max_parallel < 1
        ):
            raise error("E213", f"{subject('parallel', self.name)}: maxParallel must be >= 1", loc)
        if len(steps) == 1:
            warning = KiciWarning(
                "W005", f"{subject('parallel', self.name)} has a single step; it runs like a plain step", loc
            )
            object.__setattr__(self, "warnings", (warning,))


def parallel(
    steps: Any, *, fail_fast: bool = True, max_parallel: int | None = None, name: str | None = None
) -> Parallel:
    return Parallel(as_tuple(steps), fail_fast, max_parallel, name, location=caller_location())


def as_step(value: object, location: SourceLocation) -> Step:
    """A ``Step`` from a step object or a bare callable; anything else is a definition error."""
    if isinstance(value, Step):
        return value
    if isinstance(value, StepDecorator):
        raise error(
            INVALID_OPTION,
            f"{subject('step', value.name)} was given no function: decorate a def with it or pass run=",
            value.location,
        )
    if callable(value):
        return Step(None, value, location=definition_site(value, location))
    raise error(
        INVALID_OPTION,
        f"steps must be step(...), parallel(...) or functions taking ctx, got {value!r}",
        location,
    )


def as_step_entry(value: object, location: SourceLocation) -> Step | Parallel:
    return value if isinstance(value, Parallel) else as_step(value, location)
