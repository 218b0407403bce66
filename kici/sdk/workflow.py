"""Workflows (SDK-01, 23, 24, 30, 38, 39): the unit the compiler discovers and the lock lists.

A workflow holds its triggers (``on=``), its jobs and job generators, workflow
rules and hooks, a run ``timeout`` (enforced by the orchestrator) and an optional
``concurrency`` group. Whole-workflow checks that need every job at once (unknown
or cyclic ``needs``, duplicate job names, matrix caps: E101-E107) are the
compiler's, which reports them all together; what a workflow can check about its
own arguments it checks here.

Private package indexes (``registries``, ``install_env``) name secrets as
``<environment>:<secret>``, never values, so a lock file never carries a token.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kici.sdk.approvals import Approval, as_approval, forbid_drift_outside_steps
from kici.sdk.checks import (
    INVALID_OPTION,
    Seconds,
    as_optional_seconds,
    as_tuple,
    check_bool,
    check_callable,
    check_name,
    check_optional_bool,
    check_optional_str,
    check_str_list,
    is_number,
)
from kici.sdk.diagnostics import error, subject
from kici.sdk.dynamic import DynamicJob
from kici.sdk.hooks import Hook, as_hook
from kici.sdk.jobs import Job, JobDecorator
from kici.sdk.location import SourceLocation, caller_location
from kici.sdk.rules import Rule
from kici.sdk.steps import Parallel, Step, StepDecorator, check_rules
from kici.sdk.triggers import TRIGGER_ERROR, Trigger

REGISTRY_ERROR = "E207"
_QUALIFIED_SECRET = re.compile(r"[^:\s]+:[^:\s]+")
_HOOKS = ("on_cancel", "cleanup", "on_success", "on_failure")


@dataclass(frozen=True, eq=False)
class Concurrency:
    """At most ``max`` runs per group; ``group(ctx)`` (``ctx.branch``, ``ctx.event``) runs in the runner."""

    group: Callable[[Any], str]
    cancel_in_progress: bool = True
    max: int = 1
    location: SourceLocation = field(default_factory=caller_location, repr=False)

    def __post_init__(self) -> None:
        check_callable(self.group, "Concurrency.group", self.location)
        check_bool(self.cancel_in_progress, "Concurrency.cancel_in_progress", self.location)
        if not is_number(self.max) or not isinstance(self.max, int) or self.max < 1:
            raise error(
                INVALID_OPTION, f"Concurrency.max must be an int >= 1, got {self.max!r}", self.location
            )


@dataclass(frozen=True, eq=False)
class Registry:
    """A package index; unscoped is the primary index, scoped ones are extra indexes (PY+)."""

    url: str
    token_secret: str
    scope: str | None = None
    always_auth: bool | None = None
    location: SourceLocation = field(default_factory=caller_location, repr=False)

    def __post_init__(self) -> None:
        loc = self.location
        parsed = urllib.parse.urlparse(self.url) if isinstance(self.url, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise error(REGISTRY_ERROR, f"registry URL must be an http(s) URL (got: {self.url!r})", loc)
        if not isinstance(self.token_secret, str) or _QUALIFIED_SECRET.fullmatch(self.token_secret) is None:
            raise error(
                REGISTRY_ERROR,
                "tokenSecret must use qualified <environment>:<secret-name> syntax "
                f"(got: {self.token_secret!r})",
                loc,
            )
        if self.scope is not None and (not isinstance(self.scope, str) or not self.scope.strip()):
            raise error(
                REGISTRY_ERROR, f"registry scope must be a non-empty string (got: {self.scope!r})", loc
            )
        check_optional_bool(self.always_auth, "Registry.always_auth", loc)


def _registries(value: object, location: SourceLocation) -> tuple[Registry, ...]:
    registries = as_tuple(value)
    scopes: set[str] = set()
    unscoped = 0
    for item in registries:
        if not isinstance(item, Registry):
            raise error(REGISTRY_ERROR, f"registries must be Registry(...) objects, got {item!r}", location)
        if item.scope is None:
            unscoped += 1
        elif item.scope in scopes:
            raise error(REGISTRY_ERROR, f"duplicate registry scope '{item.scope}'", item.location)
        else:
            scopes.add(item.scope)
    if unscoped > 1:
        raise error(
            REGISTRY_ERROR, f"only one registry may be unscoped (the primary index), got {unscoped}", location
        )
    return registries


def _install_env(value: object, location: SourceLocation) -> tuple[str, ...]:
    entries = as_tuple(value)
    for index, entry in enumerate(entries):
        if not isinstance(entry, str) or _QUALIFIED_SECRET.fullmatch(entry) is None:
            raise error(
                REGISTRY_ERROR,
                f"install_env[{index}] must use qualified <environment>:<secret-name> syntax "
                f"(got: {entry!r})",
                location,
            )
    return entries


def _job_entry(entry: object, owner: str, location: SourceLocation) -> Job | Callable[..., Any]:
    if isinstance(entry, Job | DynamicJob):
        return entry
    if isinstance(entry, JobDecorator):
        raise error(
            INVALID_OPTION,
            f"{subject('job', entry.name)} has no steps: pass steps= or run=, or decorate a function with it",
            entry.location,
        )
    if isinstance(entry, Step | StepDecorator | Parallel):
        raise error(
            INVALID_OPTION, f"{owner}: jobs= takes jobs; put steps in job(..., steps=[...])", location
        )
    if callable(entry):
        return entry
    raise error(
        INVALID_OPTION,
        f"{owner}: jobs must be job(...) objects or generator functions, got {entry!r}",
        location,
    )


@dataclass(frozen=True, eq=False)
class Workflow:
    name: str
    jobs: tuple[Job | Callable[..., Any], ...]
    triggers: tuple[Trigger, ...] = ()
    rules: tuple[Rule, ...] = ()
    description: str | None = None
    hash_files: tuple[str, ...] = ()
    registries: tuple[Registry, ...] = ()
    install_env: tuple[str, ...] = ()
    timeout: Seconds | None = None
    on_cancel: Hook | None = None
    cleanup: Hook | None = None
    on_success: Hook | None = None
    on_failure: Hook | None = None
    concurrency: Concurrency | None = None
    approval: Approval | None = None
    location: SourceLocation = field(default_factory=caller_location, repr=False)

    def __post_init__(self) -> None:
        loc = self.location
        set_ = object.__setattr__
        check_name(self.name, "workflow name", loc)
        owner = subject("workflow", self.name)
        jobs = tuple(_job_entry(entry, owner, loc) for entry in as_tuple(self.jobs))
        if not jobs:
            raise error(INVALID_OPTION, f"{owner}: jobs must list at least one job", loc)
        set_(self, "jobs", jobs)
        triggers = as_tuple(self.triggers)
        for trigger in triggers:
            if not isinstance(trigger, Trigger):
                raise error(
                    TRIGGER_ERROR, f"{owner}: on= takes triggers such as push() or pr(), got {trigger!r}", loc
                )
        set_(self, "triggers", triggers)
        set_(self, "rules", check_rules(self.rules, owner, loc))
        check_optional_str(self.description, f"{owner}: description", loc)
        set_(self, "hash_files", check_str_list(self.hash_files, f"{owner}: hash_files", loc))
        set_(self, "registries", _registries(self.registries, loc))
        set_(self, "install_env", _install_env(self.install_env, loc))
        set_(self, "timeout", as_optional_seconds(self.timeout, f"{owner}: timeout", loc))
        for hook in _HOOKS:
            set_(self, hook, as_hook(getattr(self, hook), f"{owner}: {hook}", loc))
        if self.concurrency is not None and not isinstance(self.concurrency, Concurrency):
            raise error(
                INVALID_OPTION,
                f"{owner}: concurrency must be Concurrency(group=...), got {self.concurrency!r}",
                loc,
            )
        approval = as_approval(self.approval, loc)
        forbid_drift_outside_steps(approval, "workflow", loc)
        set_(self, "approval", approval)


def workflow(
    name: str,
    *,
    jobs: Any,
    on: Any = None,
    rules: Any = None,
    description: str | None = None,
    hash_files: Any = None,
    registries: Any = None,
    install_env: Any = None,
    timeout: Any = None,
    on_cancel: Any = None,
    cleanup: Any = None,
    on_success: Any = None,
    on_failure: Any = None,
    concurrency: Concurrency | None = None,
    approval: Any = None,
) -> Workflow:
    return Workflow(
        name,
        as_tuple(jobs),
        triggers=as_tuple(on),
        rules=as_tuple(rules),
        description=description,
        hash_files=as_tuple(hash_files),
        registries=as_tuple(registries),
        install_env=as_tuple(install_env),
        timeout=timeout,
        on_cancel=on_cancel,
        cleanup=cleanup,
        on_success=on_success,
        on_failure=on_failure,
        concurrency=concurrency,
        approval=approval,
        location=caller_location(),
    )
