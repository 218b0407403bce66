"""Jobs (SDK-02, 05-07, 17, 19, 23, 24, 30, 38): what runs on one agent, and under which conditions.

Forms: ``job("name", runs_on=..., steps=[...])``; an unnamed job (named ``job-N`` by
:mod:`kici.sdk.naming`, identified meanwhile by ``uid``); ``run=fn`` for a single
step ``step-1`` whose outputs appear flat on ``job.result``; and ``@job("name",
runs_on=...)`` above a ``def``, which is ``run=fn`` (PY+; without a name the job is
named after the function, ``_`` -> ``-``, as decorated steps are).

Options that only matter for fan-out (``max_parallel``, ``fail_fast``) or for host
fan-out (``on_unreachable``, ``include_uninitialized``) are accepted everywhere but
produce a warning where they are ignored, because a CI author reading the job
would otherwise believe they apply.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kici.sdk.approvals import Approval, as_approval, forbid_drift_outside_steps
from kici.sdk.cache import CacheSpec, as_caches
from kici.sdk.checks import (
    INVALID_OPTION,
    Seconds,
    as_optional_seconds,
    as_tuple,
    check_name,
    check_optional_bool,
    check_optional_str,
    check_str_map,
    is_number,
    one_of,
)
from kici.sdk.diagnostics import KiciWarning, error, subject
from kici.sdk.hooks import Hook, as_hook
from kici.sdk.job_init import JobInit, as_init
from kici.sdk.location import SourceLocation, caller_location
from kici.sdk.matrix import check_entries, check_matrix
from kici.sdk.naming import name_steps
from kici.sdk.needs import DynamicGroupNeed, Need, as_need
from kici.sdk.outputs import JobResult
from kici.sdk.resources import Container, Resources, as_container, as_resources
from kici.sdk.rules import Rule
from kici.sdk.steps import (
    Parallel,
    Step,
    as_step,
    as_step_entry,
    check_rules,
    definition_site,
    function_step_name,
)
from kici.sdk.targeting import RunsOn, RunsOnAll, as_runs_on, as_runs_on_all

OnUnreachable = Literal["hold", "skip", "fail"]
ON_UNREACHABLE = ("hold", "skip", "fail")
_HOOKS = ("on_cancel", "cleanup", "on_success", "on_failure", "before_step", "after_step")


def _new_uid() -> str:
    return uuid.uuid4().hex


def _environment(value: object, owner: str, location: SourceLocation) -> str | Callable[..., Any]:
    if callable(value) or (isinstance(value, str) and value.strip()):
        return value
    raise error(
        INVALID_OPTION,
        f"{owner}: environments must be names or functions of the event, got {value!r}",
        location,
    )


@dataclass(frozen=True, eq=False)
class Job:
    name: str | None
    runs_on: RunsOn | None = None
    runs_on_all: RunsOnAll | None = None
    steps: tuple[Step | Parallel, ...] = ()
    run: Callable[..., Any] | None = None
    needs: tuple[Need | DynamicGroupNeed, ...] = ()
    rules: tuple[Rule, ...] = ()
    description: str | None = None
    matrix: Any = None
    include: tuple[dict[str, Any], ...] = ()
    exclude: tuple[dict[str, Any], ...] = ()
    max_parallel: int | None = None
    fail_fast: bool | None = None
    on_unreachable: OnUnreachable | None = None
    include_uninitialized: bool | None = None
    checkout: bool | None = None
    container: Container | None = None
    environments: tuple[str | Callable[..., Any], ...] = ()
    env: Mapping[str, str] | Callable[..., Any] | None = None
    concurrency_group: str | Callable[..., Any] | None = None
    on_cancel: Hook | None = None
    cleanup: Hook | None = None
    on_success: Hook | None = None
    on_failure: Hook | None = None
    before_step: Hook | None = None
    after_step: Hook | None = None
    grace_period: Seconds | None = None
    timeout: Seconds | None = None
    resources: Resources | None = None
    init: JobInit | None = None
    cache: tuple[CacheSpec, ...] = ()
    approval: Approval | None = None
    location: SourceLocation = field(default_factory=caller_location, repr=False)
    uid: str = field(default_factory=_new_uid, init=False)
    warnings: tuple[KiciWarning, ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        loc = self.location
        set_ = object.__setattr__
        if self.name is not None:
            check_name(self.name, "job name", loc)
        owner = subject("job", self.name)
        label = self.label
        self._targeting(owner, label)
        set_(self, "steps", self._steps())
        set_(self, "needs", tuple(as_need(item, loc) for item in as_tuple(self.needs)))
        set_(self, "rules", check_rules(self.rules, owner, loc))
        check_optional_str(self.description, f"{owner}: description", loc)
        set_(self, "matrix", check_matrix(self.matrix, owner, loc))
        set_(self, "include", check_entries(self.include, "include", owner, loc))
        set_(self, "exclude", check_entries(self.exclude, "exclude", owner, loc))
        if self.matrix is None and (self.include or self.exclude):
            raise error(INVALID_OPTION, f"{owner}: include/exclude need a matrix", loc)
        if self.max_parallel is not None and (
            not is_number(self.max_parallel)
            or not isinstance(self.max_parallel, int)
            or self.max_parallel < 1
        ):
            raise error("E213", f"job '{label}': maxParallel must be >= 1", loc)
        check_optional_bool(self.fail_fast, f"{owner}: fail_fast", loc)
        if self.on_unreachable is not None:
            one_of(self.on_unreachable, ON_UNREACHABLE, f"{owner}: on_unreachable", loc)
        check_optional_bool(self.include_uninitialized, f"{owner}: include_uninitialized", loc)
        check_optional_bool(self.checkout, f"{owner}: checkout", loc)
        set_(self, "container", as_container(self.container, loc))
        set_(self, "environments", tuple(_environment(e, owner, loc) for e in as_tuple(self.environments)))
        if self.env is not None and not callable(self.env):
            set_(self, "env", check_str_map(self.env, f"{owner}: env", loc))
        if self.concurrency_group is not None and not callable(self.concurrency_group):
            check_name(self.concurrency_group, f"{owner}: concurrency_group", loc)
        for hook in _HOOKS:
            set_(self, hook, as_hook(getattr(self, hook), f"{owner}: {hook}", loc))
        set_(
            self,
            "grace_period",
            as_optional_seconds(self.grace_period, f"{owner}: grace_period", loc, allow_zero=True),
        )
        set_(self, "timeout", as_optional_seconds(self.timeout, f"{owner}: timeout", loc))
        set_(self, "resources", as_resources(self.resources, label, loc))
        set_(self, "init", as_init(self.init, label, loc))
        set_(self, "cache", as_caches(self.cache, loc))
        approval = as_approval(self.approval, loc)
        forbid_drift_outside_steps(approval, "job", loc)
        set_(self, "approval", approval)
        set_(self, "warnings", self._warnings(owner))

    def _targeting(self, owner: str, label: str) -> None:
        loc = self.location
        if self.runs_on is not None and self.runs_on_all is not None:
            raise error("E202", f"{owner}: runsOn and runsOnAll are mutually exclusive", loc)
        if self.runs_on is None and self.runs_on_all is None:
            raise error("E202", f"{owner}: one of runsOn or runsOnAll is required", loc)
        if self.runs_on is not None:
            object.__setattr__(self, "runs_on", as_runs_on(self.runs_on, f"job '{label}' runsOn", label, loc))
        else:
            object.__setattr__(
                self, "runs_on_all", as_runs_on_all(self.runs_on_all, f"job '{label}' runsOnAll", loc)
            )

    def _steps(self) -> tuple[Step | Parallel, ...]:
        loc = self.location
        steps = tuple(as_step_entry(item, loc) for item in as_tuple(self.steps))
        if self.run is None:
            return steps
        if not steps:
            return (as_step(self.run, definition_site(self.run, loc)),)
        if len(steps) == 1 and isinstance(steps[0], Step) and steps[0].run is self.run:
            return steps
        raise error("E201", 'job() cannot have both "run" and "steps" -- use one or the other', loc)

    def _warnings(self, owner: str) -> tuple[KiciWarning, ...]:
        loc = self.location
        found: list[KiciWarning] = []
        if self.runs_on_all is None:
            if self.on_unreachable is not None:
                found.append(
                    KiciWarning("W002", f"{owner}: on_unreachable is ignored without runs_on_all", loc)
                )
            if self.include_uninitialized is not None:
                found.append(
                    KiciWarning("W003", f"{owner}: include_uninitialized is ignored without runs_on_all", loc)
                )
        if self.matrix is None and self.runs_on_all is None:
            ignored = [o for o in ("max_parallel", "fail_fast") if getattr(self, o) is not None]
            if ignored:
                found.append(
                    KiciWarning(
                        "W004",
                        f"{owner}: {' and '.join(ignored)} ignored without a matrix or runs_on_all",
                        loc,
                    )
                )
        for entry in self.steps:
            if isinstance(entry, Parallel):
                found.extend(entry.warnings)
        names = Counter(named.name for entry in name_steps(self.steps) for named in (entry, *entry.children))
        for name, count in names.items():
            if count > 1:
                found.append(KiciWarning("W006", f"{owner}: step name '{name}' is used {count} times", loc))
        return tuple(found)

    @property
    def label(self) -> str:
        return self.name if self.name is not None else f"<unnamed job at {self.location}>"

    @property
    def result(self) -> JobResult:
        """Outputs of this (upstream) job: ``job.result.<step>.<field>``, flat for ``run=`` jobs."""
        return JobResult(self, self.label, flat=self.run is not None)


@dataclass(frozen=True, eq=False)
class JobDecorator:
    """What ``job("x", ...)`` returns without ``steps`` or ``run``: apply it to a ``def``."""

    name: str | None
    options: dict[str, Any]
    location: SourceLocation

    def __call__(self, fn: Callable[..., Any]) -> Job:
        name = self.name if self.name is not None else function_step_name(fn)
        return Job(name, run=fn, **self.options, location=self.location)


def job(
    name: str | None = None,
    *,
    runs_on: Any = None,
    runs_on_all: Any = None,
    steps: Any = None,
    run: Callable[..., Any] | None = None,
    needs: Any = None,
    rules: Any = None,
    description: str | None = None,
    matrix: Any = None,
    include: Any = None,
    exclude: Any = None,
    max_parallel: int | None = None,
    fail_fast: bool | None = None,
    on_unreachable: OnUnreachable | None = None,
    include_uninitialized: bool | None = None,
    checkout: bool | None = None,
    container: Any = None,
    environment: Any = None,
    environments: Any = None,
    env: Any = None,
    concurrency_group: Any = None,
    on_cancel: Any = None,
    cleanup: Any = None,
    on_success: Any = None,
    on_failure: Any = None,
    before_step: Any = None,
    after_step: Any = None,
    grace_period: Any = None,
    timeout: Any = None,
    resources: Any = None,
    init: Any = None,
    cache: Any = None,
    approval: Any = None,
) -> Any:
    """A job, or a decorator when neither ``steps`` nor ``run`` is given."""
    location = caller_location()
    if name is not None:
        check_name(name, "job name", location)
    owner = subject("job", name)
    if run is not None and as_tuple(steps):
        raise error("E201", 'job() cannot have both "run" and "steps" -- use one or the other', location)
    if environment is not None and environments is not None:
        raise error(
            "E203", f"{owner}: environment and environments are mutually exclusive — use one", location
        )
    options: dict[str, Any] = {
        "runs_on": runs_on,
        "runs_on_all": runs_on_all,
        "needs": needs,
        "rules": rules,
        "description": description,
        "matrix": matrix,
        "include": include,
        "exclude": exclude,
        "max_parallel": max_parallel,
        "fail_fast": fail_fast,
        "on_unreachable": on_unreachable,
        "include_uninitialized": include_uninitialized,
        "checkout": checkout,
        "container": container,
        "environments": environments if environment is None else (environment,),
        "env": env,
        "concurrency_group": concurrency_group,
        "on_cancel": on_cancel,
        "cleanup": cleanup,
        "on_success": on_success,
        "on_failure": on_failure,
        "before_step": before_step,
        "after_step": after_step,
        "grace_period": grace_period,
        "timeout": timeout,
        "resources": resources,
        "init": init,
        "cache": cache,
        "approval": approval,
    }
    if steps is None and run is None:
        return JobDecorator(name, options, location)
    return Job(name, steps=as_tuple(steps), run=run, **options, location=location)
