"""``python -m kici.services.compiler.child --kici-dir D --repo-root R``: one compile, one JSON verdict.

The parent (:mod:`kici.services.compiler.api`) starts this in a fresh
interpreter for every compile. It imports the workflow modules the way the
runner does (:mod:`kici.sdk.discovery`), checks them, builds the lock and prints
exactly one JSON document ``{"lock": <lock JSON or null>, "diagnostics": [...]}``
on its original stdout.

User modules may print or spawn processes at import time, so before importing
anything the child moves its real stdout to a private descriptor and points
descriptor 1 at stderr: nothing the user writes can corrupt the verdict. The
verdict is written even when the compiler itself fails (as an ``E100``
diagnostic), and the process leaves with ``os._exit`` so a thread a module left
running cannot hold the parent up.

Modules imported from the repository while loading one workflow file are
dropped from ``sys.modules`` before the next file: each file then sees fresh
helpers, as it does in the runner (one module per process), and W007 can tell
which file imported what.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs

from kici.domain.lockfile import LockFile, LockWorkflow, to_json, validate_lock
from kici.sdk.discovery import discover_workflows, load_workflow_module, workflow_files
from kici.sdk.errors import KiciDefinitionError
from kici.sdk.location import SourceLocation
from kici.services.compiler.build import LoadedWorkflow, Problems, WorkflowBuilder, build_lock
from kici.services.compiler.checks import check_project, definition_warnings, uncovered_imports
from kici.services.compiler.diagnostics import Diagnostic, error, has_errors
from kici.services.compiler.sources import RepoFiles, read_lockfile_hash

TRACEBACK_TAIL = 12


@attrs.frozen
class LoadedFile:
    """One imported entry module: its workflows and the repository modules it pulled in."""

    path: Path
    workflows: tuple[LoadedWorkflow, ...]
    imported: dict[str, str]


def _deepest_frame(exc: BaseException, entry: Path) -> tuple[int | None, int | None]:
    """Line and column of the deepest traceback frame inside ``entry`` (E003 points there)."""
    line: int | None = None
    column: int | None = None
    if isinstance(exc, SyntaxError) and exc.filename and _same_file(exc.filename, entry):
        return exc.lineno, exc.offset
    for frame in traceback.extract_tb(exc.__traceback__):
        if _same_file(frame.filename, entry):
            line = frame.lineno
            colno = getattr(frame, "colno", None)
            column = colno + 1 if isinstance(colno, int) else None
    return line, column


def _same_file(name: str, entry: Path) -> bool:
    try:
        return Path(name).resolve() == entry
    except (OSError, ValueError):
        return False


def import_failure(exc: BaseException, entry: Path, problems: Problems) -> None:
    """E003, or the definition error's own code and location (00 §3.3)."""
    if isinstance(exc, KiciDefinitionError):
        location = exc.location if isinstance(exc.location, SourceLocation) else None
        where = problems.at(location) or {"file": problems.files.shown(entry)}
        problems.items.append(error(exc.code or "E003", exc.message, **where))
        return
    line, column = _deepest_frame(exc, entry.resolve())
    problems.items.append(
        error(
            "E003",
            f"Failed to load workflow file module: {type(exc).__name__}: {exc}",
            file=problems.files.shown(entry),
            line=line,
            column=column,
        )
    )


def _module_files(names: Sequence[str]) -> dict[str, str]:
    files: dict[str, str] = {}
    for name in names:
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None) if isinstance(module, ModuleType) else None
        if isinstance(file, str):
            files[name] = file
    return files


def _forget(names: Sequence[str], files: RepoFiles) -> None:
    """Drop the project modules imported by the last entry file (never kici's, never installed ones)."""
    for name in names:
        file = getattr(sys.modules.get(name), "__file__", None)
        if isinstance(file, str) and files.project_module(name, file) is not None:
            del sys.modules[name]


def load_files(kici_dir: Path, repo_root: Path, problems: Problems) -> list[LoadedFile]:
    paths = workflow_files(kici_dir)
    workflows_dir = kici_dir / "workflows"
    if not paths:
        reason = (
            "directory not found" if not workflows_dir.is_dir() else "no workflow files (*.py) in directory"
        )
        problems.items.append(
            error(
                "E001",
                f".kici/workflows/ {reason}: {problems.files.shown(workflows_dir)}",
                suggestion="run `kici init` to create a starter workflow",
            )
        )
        return []
    loaded: list[LoadedFile] = []
    for path in paths:
        before = set(sys.modules)
        module: ModuleType | None = None
        try:
            module = load_workflow_module(path, kici_dir, repo_root)
        except (Exception, SystemExit) as exc:
            import_failure(exc, path, problems)
        new = [name for name in sys.modules if name not in before]
        imported = _module_files(new)
        _forget(new, problems.files)
        if module is None:
            continue
        found = [LoadedWorkflow(workflow, export, path) for export, workflow in discover_workflows(module)]
        if not found:
            problems.items.append(
                error(
                    "E004",
                    "Config does not export any workflows",
                    file=problems.files.shown(path),
                    suggestion='bind one at module level, e.g. ci = workflow("ci", ...); '
                    "helper modules must start with _",
                )
            )
        loaded.append(LoadedFile(path, tuple(found), imported))
    return loaded


def compile_tree(kici_dir: Path, repo_root: Path) -> tuple[LockFile | None, list[Diagnostic]]:
    """Everything ``kici compile`` checks and builds, in this process."""
    files = RepoFiles(repo_root)
    problems = Problems(files)
    loaded = load_files(kici_dir, repo_root, problems)
    workflows = [w for f in loaded for w in f.workflows]
    check_project(workflows, problems)
    warnings = definition_warnings(workflows, problems)
    if has_errors(problems.items):
        return None, [*problems.items, *warnings]
    built: list[LockWorkflow] = []
    for item in loaded:
        for workflow in item.workflows:
            lock_workflow = WorkflowBuilder(workflow, files, problems).build()
            built.append(lock_workflow)
            warnings.extend(
                uncovered_imports(
                    lock_workflow, item.path, item.imported, workflow.workflow.location, problems
                )
            )
    if has_errors(problems.items):
        return None, [*problems.items, *warnings]
    lock = build_lock(built, read_lockfile_hash(kici_dir))
    for issue in validate_lock(lock):
        problems.items.append(error("E100", f"the generated lock is invalid: {issue}"))
    if has_errors(problems.items):
        return None, [*problems.items, *warnings]
    return lock, [*problems.items, *warnings]


def _verdict(kici_dir: Path, repo_root: Path) -> dict[str, Any]:
    try:
        lock, diagnostics = compile_tree(kici_dir, repo_root)
    except Exception as exc:
        tail = "".join(traceback.format_exception(exc)[-TRACEBACK_TAIL:])
        crash = error("E100", f"internal compiler error: {type(exc).__name__}: {exc}\n{tail}".rstrip())
        return {"lock": None, "diagnostics": [crash.to_json()]}
    return {
        "lock": None if lock is None else to_json(lock),
        "diagnostics": [d.to_json() for d in diagnostics],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kici.services.compiler.child")
    parser.add_argument("--kici-dir", type=Path, required=True)
    parser.add_argument("--repo-root", type=Path, required=True)
    args = parser.parse_args(argv)

    sys.stdout.flush()
    verdict_fd = os.dup(1)
    os.dup2(2, 1)
    document = _verdict(args.kici_dir.resolve(), args.repo_root.resolve())
    with os.fdopen(verdict_fd, "w", encoding="utf-8") as out:
        json.dump(document, out, ensure_ascii=False)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
