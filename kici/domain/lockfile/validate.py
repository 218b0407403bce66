"""Semantic re-validation of a parsed lock (LOCK-12; invariants L5 and L7 of spec 00 §2.7).

The orchestrator runs this on every lock it loads, because a lock is repository
content that anyone with push access can hand-edit: the shape was checked by the
codec, this module checks what the types cannot express (exactly one targeting
mode, safe regexes, needs that name real jobs, bounds). Problems are collected,
not raised one at a time, so ``kici compile`` can show them all.

Inline expressions (``LockInlineValue``) are only checked for being non-empty
here; their purity is re-checked by the purity module that also interprets them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Final

import attrs

from kici.domain.globs import InvalidGlobError, compile_glob
from kici.domain.lockfile.codec import parse_lock
from kici.domain.lockfile.errors import (
    LockFileParseError,
    LockIssue,
    LockSchemaVersionError,
    PathPart,
    format_path,
)
from kici.domain.lockfile.model import (
    COMPILE_SCHEMA_VERSION,
    SCHEMA_VERSION,
    TERMINAL_JOB_STATUSES,
    LabelMatcher,
    LockApproval,
    LockCache,
    LockDynamicJobFn,
    LockDynamicMatrix,
    LockFile,
    LockInitCommand,
    LockInlineValue,
    LockJob,
    LockParallelStep,
    LockRegistry,
    LockResourceSpec,
    LockStep,
    LockWorkflow,
    Need,
    NeedsEntry,
    NeedsGroupEntry,
    RegexLabelMatcher,
)
from kici.domain.lockfile.triggers import (
    CommentTrigger,
    CreateTrigger,
    DeleteTrigger,
    LockBranchPattern,
    PrTrigger,
    PushTrigger,
    StatusTrigger,
    TagTrigger,
    Trigger,
)
from kici.domain.regex import UnsafeRegexError, assert_safe_regex

MAX_STATIC_MATRIX: Final = 256
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_HASH = re.compile(r"[0-9a-f]{64}")
_MEMORY = re.compile(r"^\d+(\.\d+)?\s*[kmgKMG]$")
_TERMINAL = frozenset(TERMINAL_JOB_STATUSES)

Path = tuple[PathPart, ...]


class _Issues:
    def __init__(self) -> None:
        self.items: list[LockIssue] = []

    def add(self, path: Path, message: str) -> None:
        self.items.append(LockIssue(path=format_path(path), message=message))


def is_uuid(text: str) -> bool:
    return _UUID.fullmatch(text) is not None


def _check_regex(out: _Issues, path: Path, source: str, flags: str, what: str) -> None:
    try:
        assert_safe_regex(source, flags)
    except UnsafeRegexError as exc:
        out.add(path, f"{what}: regex /{source}/{flags} is rejected: {exc.reason}")


def _check_glob(out: _Issues, path: Path, pattern: str, what: str) -> None:
    try:
        compile_glob(pattern)
    except InvalidGlobError as exc:
        out.add(path, f"{what}: {exc}")


def _check_matchers(out: _Issues, path: Path, matchers: Sequence[LabelMatcher], what: str) -> None:
    for index, matcher in enumerate(matchers):
        here = (*path, index)
        if isinstance(matcher, RegexLabelMatcher):
            _check_regex(out, here, matcher.source, matcher.flags, what)
        elif not matcher.value:
            out.add(here, f"{what}: empty label")


def _check_pattern(out: _Issues, path: Path, pattern: LockBranchPattern, what: str) -> None:
    if pattern.type == "regex":
        _check_regex(out, path, pattern.pattern, pattern.flags or "", what)
    else:
        if pattern.flags is not None:
            out.add(path, f"{what}: flags are only valid on regex patterns")
        _check_glob(out, path, pattern.pattern, what)


def _check_globs(out: _Issues, path: Path, patterns: Iterable[str], what: str) -> None:
    for index, pattern in enumerate(patterns):
        _check_glob(out, (*path, index), pattern.removeprefix("!"), what)


def _check_trigger(out: _Issues, path: Path, trigger: Trigger) -> None:
    patterns: dict[str, Sequence[LockBranchPattern]] = {}
    if isinstance(trigger, PrTrigger):
        patterns = {"targetBranches": trigger.target_branches, "sourceBranches": trigger.source_branches}
    elif isinstance(trigger, PushTrigger):
        patterns = {"branches": trigger.branches}
    elif isinstance(trigger, TagTrigger | CreateTrigger | DeleteTrigger):
        patterns = {"patterns": trigger.patterns}
    elif isinstance(trigger, CommentTrigger) and trigger.body_match is not None:
        _check_pattern(out, (*path, "bodyMatch"), trigger.body_match, "bodyMatch")
    elif isinstance(trigger, StatusTrigger):
        _check_globs(out, (*path, "contexts"), trigger.contexts, "contexts")
    for key, items in patterns.items():
        for index, pattern in enumerate(items):
            _check_pattern(out, (*path, key, index), pattern, key)
    if isinstance(trigger, PrTrigger | PushTrigger):
        _check_globs(out, (*path, "paths"), trigger.paths, "paths")
    repos = getattr(trigger, "repos", None)
    if repos:
        _check_globs(out, (*path, "repos"), repos, "repos")


def _check_run_on(out: _Issues, path: Path, run_on: Sequence[str], label: str) -> None:
    unknown = [s for s in run_on if s not in _TERMINAL]
    if not run_on or unknown:
        out.add(
            path,
            f"needs '{label}': runOn must be a non-empty subset of the terminal statuses "
            f"{', '.join(TERMINAL_JOB_STATUSES)}" + (f" (unknown: {', '.join(unknown)})" if unknown else ""),
        )


@attrs.frozen
class _Names:
    """What ``needs`` may point at inside one workflow."""

    workflow: str
    jobs: frozenset[str]
    groups: frozenset[str]


def _check_needs(out: _Issues, path: Path, needs: Sequence[Need], owner: str | None, names: _Names) -> None:
    for index, need in enumerate(needs):
        here = (*path, index)
        if isinstance(need, NeedsGroupEntry):
            _check_run_on(out, (*here, "runOn"), need.run_on, need.group)
            if need.group not in names.groups:
                out.add(here, f'depends on non-existent dynamic group "{need.group}"')
            continue
        name = need.name if isinstance(need, NeedsEntry) else need
        if isinstance(need, NeedsEntry):
            _check_run_on(out, (*here, "runOn"), need.run_on, name)
        if is_uuid(name):
            out.add(here, f"needs '{name}' is an unresolved job id (UUID); name the job or recompile")
        elif name == owner:
            out.add(here, f'Job "{owner}" depends on itself')
        elif name not in names.jobs:
            who = f'Job "{owner}"' if owner is not None else "Dynamic job generator"
            out.add(here, f'{who} depends on non-existent job "{name}"')


def _check_positive(out: _Issues, path: Path, value: float | None, what: str, *, minimum: float = 1) -> None:
    if value is not None and value < minimum:
        out.add(path, f"{what} must be >= {minimum:g}")


def _check_caches(out: _Issues, path: Path, caches: Sequence[LockCache] | None) -> None:
    for index, cache in enumerate(caches or ()):
        if not cache.key:
            out.add((*path, index, "key"), "cache key must be non-empty")
        if not cache.paths:
            out.add((*path, index, "paths"), "cache paths must be non-empty")


def _check_approval(
    out: _Issues, path: Path, approval: LockApproval | None, *, check_step: bool | None
) -> None:
    if approval is None:
        return
    if approval.when == "drift" and check_step is None:
        out.add((*path, "when"), 'approval.when "drift" is only valid on steps')
    elif approval.when == "drift" and not check_step:
        out.add((*path, "when"), 'approval.when "drift" requires a check facet')
    _check_positive(out, (*path, "timeoutSeconds"), approval.timeout_seconds, "approval timeoutSeconds")


def _check_step(out: _Issues, path: Path, step: LockStep) -> None:
    if not step.name:
        out.add((*path, "name"), "step name must be non-empty")
    _check_positive(out, (*path, "timeout"), step.timeout, "step timeout")
    if step.retry is not None:
        retry = step.retry
        _check_positive(out, (*path, "retry", "maxAttempts"), retry.max_attempts, "retry.max_attempts")
        _check_positive(out, (*path, "retry", "delayMs"), retry.delay_ms, "retry.delayMs", minimum=0)
        if retry.max_delay_ms < retry.delay_ms:
            out.add((*path, "retry", "maxDelayMs"), "retry.maxDelayMs must be >= retry.delayMs")
    _check_caches(out, (*path, "cache"), step.cache)
    _check_approval(out, (*path, "approval"), step.approval, check_step=step.has_check)


def _check_steps(out: _Issues, path: Path, steps: Sequence[LockStep | LockParallelStep]) -> None:
    for index, entry in enumerate(steps):
        here = (*path, index)
        if isinstance(entry, LockStep):
            _check_step(out, here, entry)
            continue
        if not entry.children:
            out.add((*here, "children"), "job step: empty parallel group not allowed")
        _check_positive(out, (*here, "maxParallel"), entry.max_parallel, "maxParallel")
        seen: set[str] = set()
        for child_index, child in enumerate(entry.children):
            if child.name in seen:
                out.add(
                    (*here, "children", child_index), f"duplicate step name '{child.name}' in parallel group"
                )
            seen.add(child.name)
            _check_step(out, (*here, "children", child_index), child)


def _check_resources(out: _Issues, path: Path, name: str, spec: LockResourceSpec | None) -> None:
    if spec is None:
        return
    if spec.cpus is not None and not 0 < spec.cpus <= 256:
        out.add((*path, "cpus"), f'Job "{name}": invalid resources -- cpus must be in (0, 256]')
    if spec.memory is not None and _MEMORY.match(spec.memory) is None:
        out.add(
            (*path, "memory"), f'Job "{name}": invalid resources -- memory "{spec.memory}" is not like "2g"'
        )


def _check_inline(out: _Issues, path: Path, value: object) -> None:
    if isinstance(value, LockInlineValue) and not value.expression.strip():
        out.add((*path, "expression"), "inline expression must be non-empty")


def _matrix_size(job: LockJob) -> int | None:
    if job.matrix is None or isinstance(job.matrix, LockDynamicMatrix):
        return None
    values = job.matrix.values
    size = len(values) if isinstance(values, tuple) else math.prod(len(v) for v in values.values())
    return size + len(job.include or ())


def _check_job(out: _Issues, path: Path, job: LockJob, names: _Names) -> None:
    who = f"job('{job.name}')"
    if is_uuid(job.name):
        out.add((*path, "name"), f'job name "{job.name}" is an unresolved job id (UUID)')
    if job.runs_on is not None and job.runs_on_all is not None:
        out.add(path, f"{who}: runsOn and runsOnAll are mutually exclusive")
    elif job.runs_on is None and job.runs_on_all is None:
        out.add(path, f"{who}: one of runsOn or runsOnAll is required")
    if (job.runs_on_pick is not None) != (job.runs_on is not None):
        out.add((*path, "runsOnPick"), f"{who}: runsOnPick is required with runsOn and only valid with it")
    if job.runs_on is not None:
        if not job.runs_on:
            out.add((*path, "runsOn"), f"{who}: runsOn must name at least one label")
        _check_matchers(out, (*path, "runsOn"), job.runs_on, f"job '{job.name}' runsOn")
    if job.exclude_labels is not None:
        if not job.exclude_labels:
            out.add((*path, "excludeLabels"), f"{who}: excludeLabels must be non-empty when present")
        if job.runs_on is None:
            out.add((*path, "excludeLabels"), f"{who}: excludeLabels is only valid with runsOn")
        _check_matchers(out, (*path, "excludeLabels"), job.exclude_labels, f"job '{job.name}' excludeLabels")
    if job.runs_on_all is not None:
        fan_out = job.runs_on_all
        if not fan_out.include:
            out.add((*path, "runsOnAll", "include"), f"{who}: runsOnAll.include must have at least one group")
        for index, group in enumerate(fan_out.include):
            if not group:
                out.add((*path, "runsOnAll", "include", index), f"{who}: runsOnAll group must be non-empty")
            _check_matchers(out, (*path, "runsOnAll", "include", index), group, f"job '{job.name}' runsOnAll")
        _check_matchers(out, (*path, "runsOnAll", "exclude"), fan_out.exclude, f"job '{job.name}' runsOnAll")
    _check_positive(out, (*path, "maxParallel"), job.max_parallel, f"job '{job.name}': maxParallel")
    _check_needs(out, (*path, "needs"), job.needs, job.name, names)
    for index, group_name in enumerate(job.depends_on_groups or ()):
        if group_name not in names.groups:
            out.add(
                (*path, "dependsOnGroups", index), f'depends on non-existent dynamic group "{group_name}"'
            )
    _check_steps(out, (*path, "steps"), job.steps)
    size = _matrix_size(job)
    if size is not None and size > MAX_STATIC_MATRIX:
        out.add(
            (*path, "matrix"),
            f'Static matrix for job "{job.name}" in workflow "{names.workflow}" would generate {size} jobs '
            f"(max: {MAX_STATIC_MATRIX})",
        )
    _check_caches(out, (*path, "cache"), job.cache)
    for index, environment in enumerate(job.environments or ()):
        _check_inline(out, (*path, "environments", index, "value"), environment.value)
    _check_inline(out, (*path, "env"), job.env)
    _check_inline(out, (*path, "concurrencyGroup"), job.concurrency_group)
    _check_positive(out, (*path, "gracePeriod"), job.grace_period, "gracePeriod", minimum=0)
    _check_positive(out, (*path, "timeout"), job.timeout, "job timeout")
    if job.resources is not None:
        _check_resources(out, (*path, "resources", "requests"), job.name, job.resources.requests)
        _check_resources(out, (*path, "resources", "limits"), job.name, job.resources.limits)
    entries = job.init if isinstance(job.init, tuple) else (job.init,)
    for index, entry in enumerate(entries):
        here = (*path, "init", index) if isinstance(job.init, tuple) else (*path, "init")
        if isinstance(entry, LockInitCommand):
            if not entry.run.strip():
                out.add((*here, "run"), f"{who}: init[{index}].run must be a non-empty command")
            _check_positive(out, (*here, "timeout"), entry.timeout, "init timeout")
    _check_approval(out, (*path, "approval"), job.approval, check_step=None)


def _find_cycle(edges: dict[str, list[str]]) -> list[str] | None:
    """One dependency cycle (as a closed path) if the graph has any."""
    state: dict[str, int] = {}
    for start in edges:
        if state.get(start):
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        trail: list[str] = [start]
        state[start] = 1
        while stack:
            node, position = stack[-1]
            targets = edges.get(node, [])
            if position == len(targets):
                stack.pop()
                trail.pop()
                state[node] = 2
                continue
            stack[-1] = (node, position + 1)
            target = targets[position]
            if state.get(target) == 1:
                return [*trail[trail.index(target) :], target]
            if not state.get(target) and target in edges:
                state[target] = 1
                stack.append((target, 0))
                trail.append(target)
    return None


def _need_target(need: Need) -> str:
    if isinstance(need, NeedsGroupEntry):
        return f"__group:{need.group}"
    return need.name if isinstance(need, NeedsEntry) else need


def _check_registries(out: _Issues, path: Path, registries: Sequence[LockRegistry]) -> None:
    scopes: set[str] = set()
    unscoped = 0
    for index, registry in enumerate(registries):
        here = (*path, index)
        if not registry.url.startswith(("https://", "http://")):
            out.add((*here, "url"), f"registry URL must be http(s): {registry.url}")
        if ":" not in registry.token_secret.strip(":"):
            out.add(
                (*here, "tokenSecret"),
                "tokenSecret must use qualified <environment>:<secret-name> syntax "
                f"(got: {registry.token_secret})",
            )
        if registry.scope is None:
            unscoped += 1
        elif registry.scope in scopes:
            out.add((*here, "scope"), f"duplicate registry scope {registry.scope}")
        else:
            scopes.add(registry.scope)
    if unscoped > 1:
        out.add(path, "at most one registry may be unscoped (the primary index)")


def _check_workflow(out: _Issues, path: Path, workflow: LockWorkflow) -> None:
    if workflow.compile_schema_version not in (COMPILE_SCHEMA_VERSION, 0):
        out.add(
            (*path, "compileSchemaVersion"),
            f"compileSchemaVersion {workflow.compile_schema_version} is not supported "
            f"(expected {COMPILE_SCHEMA_VERSION})",
        )
    if workflow.compile_schema_version == 0:
        if workflow.content_hash:
            out.add((*path, "contentHash"), 'contentHash must be "" when compileSchemaVersion is 0')
    elif _HASH.fullmatch(workflow.content_hash) is None:
        out.add((*path, "contentHash"), "contentHash must be 64 lowercase hex digits")
    for index, trigger in enumerate(workflow.triggers):
        _check_trigger(out, (*path, "triggers", index), trigger)

    names = _Names(
        workflow.name,
        frozenset(job.name for job in workflow.jobs if isinstance(job, LockJob)),
        frozenset(job.group for job in workflow.jobs if isinstance(job, LockDynamicJobFn) and job.group),
    )
    seen: set[str] = set()
    edges: dict[str, list[str]] = {}
    for index, entry in enumerate(workflow.jobs):
        here = (*path, "jobs", index)
        if isinstance(entry, LockJob):
            if entry.name in seen:
                out.add((*here, "name"), f'Duplicate job name "{entry.name}" in workflow "{workflow.name}"')
            seen.add(entry.name)
            _check_job(out, here, entry, names)
            edges.setdefault(entry.name, []).extend(_need_target(n) for n in entry.needs)
            edges[entry.name].extend(f"__group:{g}" for g in entry.depends_on_groups or ())
            continue
        if entry.source.index != index:
            out.add(
                (*here, "source", "index"), f"source.index {entry.source.index} is not this entry's position"
            )
        _check_needs(out, (*here, "needs"), entry.needs or (), None, names)
        if entry.group is not None:
            edges.setdefault(f"__group:{entry.group}", []).extend(_need_target(n) for n in entry.needs or ())
    cycle = _find_cycle(edges)
    if cycle is not None:
        out.add((*path, "jobs"), f'Circular dependency in workflow "{workflow.name}": {" -> ".join(cycle)}')

    _check_positive(out, (*path, "timeout"), workflow.timeout, "workflow timeout")
    if workflow.concurrency is not None:
        _check_positive(out, (*path, "concurrency", "max"), workflow.concurrency.max, "concurrency.max")
    _check_registries(out, (*path, "registries"), workflow.registries or ())
    _check_approval(out, (*path, "approval"), workflow.approval, check_step=None)


def validate_lock(lock: LockFile) -> list[LockIssue]:
    """Every semantic problem of ``lock``, in document order; an empty list means valid."""
    out = _Issues()
    if lock.schema_version != SCHEMA_VERSION:
        out.add(
            ("schemaVersion",),
            f"Lock file schemaVersion {lock.schema_version} is incompatible with this orchestrator "
            f"(engine SCHEMA_VERSION {SCHEMA_VERSION})",
        )
    seen: set[str] = set()
    for index, workflow in enumerate(lock.workflows):
        if workflow.name in seen:
            out.add(("workflows", index, "name"), f'Duplicate workflow name: "{workflow.name}"')
        seen.add(workflow.name)
        _check_workflow(out, ("workflows", index), workflow)
    return out.items


def assert_valid_lock(lock: LockFile) -> None:
    """Raise :class:`LockFileParseError` for the first problem :func:`validate_lock` finds."""
    if lock.schema_version != SCHEMA_VERSION:
        raise LockSchemaVersionError(lock.schema_version, SCHEMA_VERSION)
    issues = validate_lock(lock)
    if issues:
        more = f" (and {len(issues) - 1} more problems)" if len(issues) > 1 else ""
        raise LockFileParseError(issues[0].path, issues[0].message + more)


def load_lock(text: str | bytes) -> LockFile:
    """Parse and re-validate a lock: what the orchestrator does with a fetched lock (D3)."""
    lock = parse_lock(text)
    assert_valid_lock(lock)
    return lock
