"""``kici compile`` and ``kici validate`` (CLI-03, CLI-04, CLI-05, LOCK-11)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from kici.cli.common import KICI_DIR_OPTION, Project, compile_or_report, find_project
from kici.cli.output import Printer, banner, is_tty
from kici.domain.lockfile import LockFile, LockJob
from kici.services.compiler.api import CompileResult, check_locked, lock_path, watch, write_lock
from kici.services.compiler.diagnostics import format_all


def _plural(count: int) -> str:
    return f"{count} workflow{'' if count == 1 else 's'}"


def _describe_lock(out: Printer, lock: LockFile) -> None:
    """``--verbose``: what the lock holds, one line per workflow and job."""
    for workflow in lock.workflows:
        out.line(f"  {workflow.name} ({workflow.source.file}{workflow.source.export})", "bold")
        for job in workflow.jobs:
            if isinstance(job, LockJob):
                steps = ", ".join(step.name for step in job.steps) or "no steps"
                out.line(f"    job {job.name}: {steps}")
            else:
                out.line(
                    f"    generator jobs[{job.source.index}]" + (f" (group {job.group})" if job.group else "")
                )


def _report_drift(out: Printer, drift: list[str], project: Project) -> None:
    out.fail(f"✗ {project.relative(lock_path(project.kici_dir))} is out of date:")
    for line in drift:
        out.fail(f"  {line}")
    out.line("  Run `kici compile` and commit the lock file.")


COMPILE_EPILOG = """\b
Examples:
  kici compile                 write .kici/kici.lock.json (commit it)
  kici compile --check         validate only, write nothing
  kici compile --locked        exit 1 if the committed lock is stale (CI, pre-commit)
  kici compile --watch         recompile on every save (Ctrl-C stops)
"""

VALIDATE_EPILOG = """\b
Examples:
  kici validate                        in CI, before merging
  kici validate --kici-dir sub/.kici   a project in a subdirectory
"""


@click.command("compile", epilog=COMPILE_EPILOG)
@click.option("--check", is_flag=True, help="Validate only; do not write the lock file.")
@click.option("--locked", is_flag=True, help="Fail (exit 1) if the committed lock file is out of date.")
@click.option("--watch", "watch_mode", is_flag=True, help="Recompile whenever a workflow file changes.")
@click.option("--verbose", "-v", is_flag=True, help="List the compiled workflows and jobs.")
@KICI_DIR_OPTION
def compile_command(
    check: bool, locked: bool, watch_mode: bool, verbose: bool, kici_dir: Path | None
) -> None:
    """Compile .kici/workflows/*.py into .kici/kici.lock.json.

    Every workflow file is imported in a fresh interpreter, validated, and the canonical lock file
    is written. Errors are printed as `file:line:col: error [CODE]: message`.
    """
    ctx = click.get_current_context()
    if watch_mode and (check or locked):
        raise click.UsageError("--watch cannot be combined with --check or --locked")
    if check and locked:
        raise click.UsageError("--check and --locked are exclusive (--locked already validates)")
    banner()
    project = find_project(kici_dir)
    out, err = Printer(), Printer(err=True)
    if watch_mode:
        _watch(project, verbose)
        ctx.exit(0)
    result = compile_or_report(project, err=err)
    if result.lock is None:
        err.fail("✗ Compilation failed")
        ctx.exit(1)
    if locked:
        drift = check_locked(project.kici_dir, project.repo_root, result=result)
        if drift:
            _report_drift(err, drift, project)
            ctx.exit(1)
        shown = project.relative(lock_path(project.kici_dir))
        out.ok(f"{shown} is up to date ({_plural(result.workflow_count)})")
    elif check:
        out.ok(f"Workflows are valid ({_plural(result.workflow_count)})")
    else:
        path = write_lock(project.kici_dir, result.lock)
        out.ok(f"Compiled workflows → {project.relative(path)} ({_plural(result.workflow_count)})")
    if verbose:
        _describe_lock(out, result.lock)


def _watch(project: Project, verbose: bool) -> None:
    """Recompile on change until Ctrl-C or SIGTERM; both end the watch with exit 0 (00 §3.3)."""
    out, err = Printer(), Printer(err=True)
    clear = is_tty(out.stream)
    stop = threading.Event()

    def show(result: CompileResult) -> None:
        if clear:
            click.clear()
        if result.diagnostics:
            err.line(format_all(list(result.diagnostics)))
        if result.lock is None:
            err.fail("✗ Compilation failed — waiting for changes (Ctrl-C to stop)")
            return
        out.ok(
            f"Compiled workflows → {project.relative(lock_path(project.kici_dir))} "
            f"({_plural(result.workflow_count)}) — watching for changes (Ctrl-C to stop)"
        )
        if verbose:
            _describe_lock(out, result.lock)

    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        watch(project.kici_dir, project.repo_root, show, stop=stop)
    except KeyboardInterrupt:
        stop.set()
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.command(
    "validate", short_help="Validate the workflows and check the lock file for drift.", epilog=VALIDATE_EPILOG
)
@KICI_DIR_OPTION
def validate_command(kici_dir: Path | None) -> None:
    """Validate the workflows and check the committed lock file for drift.

    Exit 0 when the workflows compile and .kici/kici.lock.json matches them; exit 1 listing
    every problem otherwise. The same check as `kici compile --locked`, with a friendlier report.
    """
    ctx = click.get_current_context()
    banner()
    project = find_project(kici_dir)
    out, err = Printer(), Printer(err=True)
    result = compile_or_report(project, err=err)
    if result.lock is None:
        err.fail("✗ Workflows are invalid")
        ctx.exit(1)
    out.ok(f"Workflows are valid ({_plural(result.workflow_count)})")
    drift = check_locked(project.kici_dir, project.repo_root, result=result)
    if drift:
        _report_drift(err, drift, project)
        ctx.exit(1)
    out.ok(f"{project.relative(lock_path(project.kici_dir))} is up to date")
