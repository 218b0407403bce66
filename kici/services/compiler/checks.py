"""Whole-project checks of ``kici compile`` (00 §4) and the warnings it prints.

What one SDK object can check about itself it checks when built (the E2xx
codes arrive here as a ``KiciDefinitionError``); what needs every job of a
workflow, or every workflow of the project, is checked here before any lock is
built: unknown, self and cyclic ``needs`` (E101-E103, the compile half of
SDK-08), the static matrix cap (E104) and duplicate names (E106/E107). Every
problem is reported, not only the first, and each points at the ``job()`` or
``workflow()`` call at fault.

Choices where the spec is silent:

* A ``dynamic_group("g")`` that no ``dynamic_job("g", ...)`` declares is E101
  (``... depends on non-existent dynamic group "g"``): it is the same mistake as
  naming a job that does not exist.
* Result-aware generators take part in the cycle check through a synthetic node
  ``__group:<g>`` carrying their ``needs``, so ``a -> __group:g -> a`` is caught
  at compile time rather than by the orchestrator's re-validation.
* W007 ignores the kici package itself and anything installed (see
  :meth:`kici.services.compiler.sources.RepoFiles.project_module`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from kici.domain.dag import kahn
from kici.domain.lockfile import LockFile, LockWorkflow
from kici.domain.matrix import MatrixTooLargeError, check_static_cap
from kici.sdk.dynamic import DynamicJob
from kici.sdk.jobs import Job
from kici.sdk.location import SourceLocation
from kici.sdk.needs import DynamicGroupNeed, Need
from kici.services.compiler.build import JobTable, LoadedWorkflow, Problems, need_label, need_name
from kici.services.compiler.diagnostics import Diagnostic, warning

GROUP_NODE_PREFIX = "__group:"


def lockfile_hash_warning(previous: LockFile, regenerated: LockFile) -> Diagnostic | None:
    """D4: the dependency lock changed since the last compile; kici never installs anything itself."""
    if previous.lockfile_hash == regenerated.lockfile_hash:
        return None
    before = (previous.lockfile_hash or "(none)")[:12]
    after = (regenerated.lockfile_hash or "(none)")[:12]
    return warning(
        "D4",
        f"dependencies changed: lockfileHash {before} -> {after}; agents rebuild their dependency cache",
        suggestion="install the new dependencies locally yourself (kici never auto-installs)",
    )


def _dedupe(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    return list(dict.fromkeys(diagnostics))


def check_project(loaded: Sequence[LoadedWorkflow], problems: Problems) -> None:
    """E101-E107 over every discovered workflow; adds to ``problems`` (a ``build.Problems``)."""

    seen: dict[str, LoadedWorkflow] = {}
    for item in loaded:
        name = item.workflow.name
        if name in seen:
            first = seen[name]
            problems.error(
                "E107",
                f'Duplicate workflow name: "{name}"',
                item.workflow.location,
                suggestion=f"the first one is {first.export} in {problems.files.shown(first.entry_file)}",
            )
        else:
            seen[name] = item
        check_workflow(item, problems)


def check_workflow(loaded: LoadedWorkflow, problems: Problems) -> None:

    workflow = loaded.workflow
    table = JobTable.of(workflow)
    names = set(table.names)
    generators = [entry for entry in workflow.jobs if isinstance(entry, DynamicJob)]
    groups = {g.group for g in generators}
    where = f'in workflow "{workflow.name}"'

    seen: set[str] = set()
    for name, job in table.named:
        if name in seen:
            problems.error(
                "E106",
                f'Duplicate job name "{name}" {where}',
                job.location,
                suggestion="give every job of a workflow its own name (unnamed jobs are job-1, job-2, ...)",
            )
        seen.add(name)

    graph: dict[str, list[str]] = {}
    locations: dict[str, SourceLocation] = {}

    def edges(owner: str, who: str, needs: Sequence[Need | DynamicGroupNeed]) -> list[str]:
        targets: list[str] = []
        for need in needs:
            if isinstance(need, DynamicGroupNeed):
                if need.group not in groups:
                    problems.error(
                        "E101",
                        f'{who} {where} depends on non-existent dynamic group "{need.group}"',
                        need.location,
                        suggestion=f'declare it with dynamic_job("{need.group}", ...) in this workflow',
                    )
                else:
                    targets.append(GROUP_NODE_PREFIX + need.group)
                continue
            target = need_name(need, table)
            if target is not None and target == owner:
                problems.error("E103", f"{who} {where} depends on itself", need.location)
            elif target is None or target not in names:
                label = need_label(need, table)
                problems.error(
                    "E101",
                    f'{who} {where} depends on non-existent job "{label}"',
                    need.location,
                    suggestion=_closest(label, names),
                )
            else:
                targets.append(target)
        return targets

    for name, job in table.named:
        graph.setdefault(name, []).extend(edges(name, f'Job "{name}"', job.needs))
        locations.setdefault(name, job.location)
        if job.matrix is not None and not callable(job.matrix):
            try:
                check_static_cap(name, workflow.name, job.matrix, job.include)
            except MatrixTooLargeError as exc:
                problems.error(
                    "E104",
                    str(exc),
                    job.location,
                    suggestion="split the matrix or use exclude/a dynamic matrix",
                )
    for generator in generators:
        node = GROUP_NODE_PREFIX + generator.group
        who = f'Dynamic job group "{generator.group}"'
        graph.setdefault(node, []).extend(edges(node, who, generator.needs))
        locations.setdefault(node, generator.location)

    cycle = kahn(graph).cycle
    if cycle is not None:
        path = " -> ".join([*cycle, cycle[0]])
        problems.error(
            "E102",
            f'Circular dependency in workflow "{workflow.name}": {path}',
            locations[cycle[0]],
            suggestion="remove one of these needs",
        )


def _closest(label: str, names: Iterable[str]) -> str | None:

    match = difflib.get_close_matches(label, sorted(names), n=1)
    return f'did you mean "{match[0]}"?' if match else None


def definition_warnings(loaded: Sequence[LoadedWorkflow], problems: Problems) -> list[Diagnostic]:
    """The W002-W006 warnings the SDK objects of every workflow noticed, once each."""

    out: list[Diagnostic] = []
    for item in loaded:
        for entry in item.workflow.jobs:
            if isinstance(entry, Job):
                for found in entry.warnings:
                    out.append(warning(found.code, found.message, **problems.at(found.location)))
    return _dedupe(out)


def uncovered_imports(
    workflow: LockWorkflow,
    entry_file: Path,
    modules: Mapping[str, str],
    location: SourceLocation,
    problems: Problems,
) -> list[Diagnostic]:
    """W007: repo modules ``entry_file`` imported whose source is not in the workflow's ``hash_files``.

    Such a module can change without changing the workflow's ``contentHash``, so
    the runner's stale-lock check (D1) would not notice it.
    """

    covered = set(workflow.resolved_hash_files or ())
    entry = entry_file.resolve()
    out: list[Diagnostic] = []
    for name, file in sorted(modules.items()):
        relative = problems.files.project_module(name, file)
        if relative is None or Path(file).resolve() == entry or relative in covered:
            continue
        out.append(
            warning(
                "W007",
                f"workflow '{workflow.name}' imports {name} ({relative}) which is not covered by hash_files",
                suggestion=f'add "{relative}" to hash_files so that editing it marks the lock stale',
                **problems.at(location),
            )
        )
    return out


__all__ = [
    "GROUP_NODE_PREFIX",
    "check_project",
    "check_workflow",
    "definition_warnings",
    "lockfile_hash_warning",
    "uncovered_imports",
]
