"""Terminal output of the ``kici`` commands: rich on a TTY, plain lines otherwise (CLI-01).

Colour and live widgets only make sense for a person watching a terminal: piped output, CI logs
and ``NO_COLOR`` (https://no-color.org) get plain lines that ``grep`` and log viewers handle. The
decision is made per stream, once per command, from the stream the command writes to.

Streams: results go to stdout (the summary of a run, the dry-run report, the compile verdict);
the banner, progress and diagnostics go to stderr, so ``kici ... > file`` keeps only results and
``--json`` can promise exactly one JSON document on stdout.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from kici import __version__
from kici.services.local.results import JobReport, RunReport, StepReport, WorkflowReport

STATUS_ICONS = {
    "success": "✓",
    "failure": "✗",
    "failed": "✗",
    "skipped": "○",
    "cancelled": "⊘",
    "pending": "…",
    "running": "▶",
}
STATUS_STYLES = {
    "success": "green",
    "failure": "red",
    "failed": "red",
    "skipped": "dim",
    "cancelled": "yellow",
}


def wants_color(stream: IO[str]) -> bool:
    """Colour only for a terminal, and never when ``NO_COLOR`` is set (to anything non-empty)."""
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def is_tty(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def format_duration(ms: int) -> str:
    if ms < 1000:
        return f"{ms}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


class Printer:
    """Line output with optional colour; ``markup`` is never interpreted (user text may hold ``[x]``)."""

    def __init__(self, *, err: bool = False) -> None:
        self.err = err
        self.stream: IO[str] = sys.stderr if err else sys.stdout
        self.color = wants_color(self.stream)
        self._console = (
            Console(file=self.stream, highlight=False, markup=False, soft_wrap=True) if self.color else None
        )

    def line(self, text: str = "", style: str | None = None) -> None:
        if self._console is not None:
            self._console.print(Text(text, style=style or ""))
        else:
            click.echo(text, file=self.stream)

    def renderable(self, item: RenderableType, plain: str) -> None:
        if self._console is not None:
            self._console.print(item)
        else:
            click.echo(plain, file=self.stream)

    def ok(self, text: str) -> None:
        self.line(f"✓ {text}", "green")

    def fail(self, text: str) -> None:
        self.line(text, "red")


def banner(*, quiet: bool = False) -> None:
    """``kici v<version>`` on stderr (00 §3.2); ``--json``/``--quiet`` suppress it."""
    if not quiet:
        Printer(err=True).line(f"kici v{__version__}", "bold")


def error(message: str) -> None:
    Printer(err=True).fail(f"Error: {message}")


# --- run local -------------------------------------------------------------------------------------


def _status_text(status: str, label: str) -> Text:
    icon = STATUS_ICONS.get(status, "?")
    return Text(f"{icon} {label}", style=STATUS_STYLES.get(status, ""))


def _job_label(job: JobReport) -> str:
    label = f"{job.name} ({job.status}"
    if job.status in ("success", "failure") or job.duration_ms:
        label += f", {format_duration(job.duration_ms)}"
    label += ")"
    if job.reason:
        label += f" — {job.reason}"
    if job.error and not any(step.error for step in job.steps):
        label += f": {_first_line(job.error)}"
    return label


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else text


def _step_label(step: StepReport) -> str:
    label = step.name if step.step_type == "step" else f"{step.name} [{step.step_type}]"
    label += f" ({step.status}, {format_duration(step.duration_ms)})"
    if step.outcome:
        label += f" [{step.outcome}]"
    if step.error:
        label += f": {_first_line(step.error)}"
    return label


def summary_lines(report: RunReport) -> list[str]:
    """The summary tree as plain text, one line per node."""
    lines = ["Summary:"]
    for workflow in report.workflows:
        icon = STATUS_ICONS.get(workflow.status, "?")
        line = f"{icon} {workflow.name} ({workflow.status}, {format_duration(workflow.duration_ms)})"
        lines.append(line + (f" — {workflow.reason}" if workflow.reason else ""))
        for job in workflow.jobs:
            lines.append(f"  {STATUS_ICONS.get(job.status, '?')} {_job_label(job)}")
            lines.extend(f"    {STATUS_ICONS.get(s.status, '?')} {_step_label(s)}" for s in job.steps)
            if job.checkout_dir:
                lines.append(f"    checkout kept: {job.checkout_dir}")
    if report.interrupted:
        lines.append("Interrupted (Ctrl-C).")
    return lines


def summary_tree(report: RunReport) -> RenderableType:
    root = Tree(Text("Summary", style="bold"))
    for workflow in report.workflows:
        label = f"{workflow.name} ({workflow.status}, {format_duration(workflow.duration_ms)})"
        if workflow.reason:
            label += f" — {workflow.reason}"
        branch = root.add(_status_text(workflow.status, label))
        for job in workflow.jobs:
            node = branch.add(_status_text(job.status, _job_label(job)))
            for step in job.steps:
                node.add(_status_text(step.status, _step_label(step)))
            if job.checkout_dir:
                node.add(Text(f"checkout kept: {job.checkout_dir}", style="dim"))
    if report.interrupted:
        return Group(root, Text("Interrupted (Ctrl-C).", style="yellow"))
    return root


def print_summary(report: RunReport, *, quiet: bool = False) -> None:
    out = Printer()
    if not quiet:
        out.line()
    out.renderable(summary_tree(report), "\n".join(summary_lines(report)))


class PlainReporter:
    """Streamed ``[job] line`` logs and one line per job state change: for pipes and CI logs."""

    def __init__(self, *, quiet: bool = False, log_stream: IO[str] | None = None) -> None:
        self.quiet = quiet
        self.stream = log_stream if log_stream is not None else sys.stdout
        self.multi_workflow = False

    def _echo(self, text: str) -> None:
        click.echo(text, file=self.stream)

    def _prefix(self, workflow: str, job: str) -> str:
        return f"[{workflow}/{job}]" if self.multi_workflow else f"[{job}]"

    def workflow_started(self, workflow: str, jobs: Sequence[str]) -> None:
        if not self.quiet:
            self._echo(f"▶ workflow {workflow}: {len(jobs)} job(s)")

    def job_started(self, workflow: str, job: str, checkout: str) -> None:
        if not self.quiet:
            self._echo(f"{self._prefix(workflow, job)} ▶ started (checkout {checkout})")

    def step_started(self, workflow: str, job: str, step: str, step_type: str) -> None:
        if not self.quiet:
            shown = step if step_type == "step" else f"{step} [{step_type}]"
            self._echo(f"{self._prefix(workflow, job)} ── {shown}")

    def log_line(self, workflow: str, job: str, line: str) -> None:
        if not self.quiet:
            self._echo(f"{self._prefix(workflow, job)} {line}")

    def step_finished(self, workflow: str, job: str, step: StepReport) -> None:
        if not self.quiet and step.status != "success":
            self._echo(
                f"{self._prefix(workflow, job)} {STATUS_ICONS.get(step.status, '?')} {_step_label(step)}"
            )

    def job_finished(self, workflow: str, job: JobReport) -> None:
        if not self.quiet:
            self._echo(
                f"{self._prefix(workflow, job.name)} {STATUS_ICONS.get(job.status, '?')} {_job_label(job)}"
            )

    def workflow_finished(self, report: WorkflowReport) -> None:
        return None

    def notice(self, message: str) -> None:
        click.echo(message, file=sys.stderr)


class _Running:
    def __init__(self, workflow: str, job: str) -> None:
        self.workflow = workflow
        self.job = job
        self.step = "starting"
        self.started = time.monotonic()
        self.step_started = self.started


class LiveReporter:
    """Rich output for a terminal: logs scroll above a live panel of running jobs and their steps."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet
        self.console = Console(file=sys.stdout, highlight=False, markup=False, soft_wrap=True)
        self.running: dict[tuple[str, str], _Running] = {}
        self.done = 0
        self.total = 0
        self.live = Live(
            console=self.console, refresh_per_second=8, transient=True, get_renderable=self._panel
        )
        self.multi_workflow = False

    def __enter__(self) -> LiveReporter:
        self.live.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.live.stop()

    def _panel(self) -> RenderableType:
        table = Table.grid(padding=(0, 1))
        now = time.monotonic()
        for state in self.running.values():
            label = f"{state.job}" if not self.multi_workflow else f"{state.workflow} › {state.job}"
            table.add_row(
                Spinner("dots", style="cyan"),
                Text(label, style="bold"),
                Text(
                    f"{state.step} ({format_duration(int((now - state.step_started) * 1000))})", style="dim"
                ),
            )
        footer = Text(f"{self.done}/{self.total} jobs finished", style="dim")
        return Group(table, footer)

    def _print(self, text: Text) -> None:
        self.console.print(text)

    def _prefix(self, workflow: str, job: str) -> Text:
        label = f"[{workflow}/{job}]" if self.multi_workflow else f"[{job}]"
        return Text(label, style="cyan")

    def workflow_started(self, workflow: str, jobs: Sequence[str]) -> None:
        self.total += len(jobs)
        if not self.quiet:
            self._print(Text(f"▶ workflow {workflow}: {len(jobs)} job(s)", style="bold"))

    def job_started(self, workflow: str, job: str, checkout: str) -> None:
        self.running[(workflow, job)] = _Running(workflow, job)

    def step_started(self, workflow: str, job: str, step: str, step_type: str) -> None:
        state = self.running.get((workflow, job))
        if state is not None:
            state.step = step if step_type == "step" else f"{step} [{step_type}]"
            state.step_started = time.monotonic()

    def log_line(self, workflow: str, job: str, line: str) -> None:
        if not self.quiet:
            self._print(Text.assemble(self._prefix(workflow, job), " ", line))

    def step_finished(self, workflow: str, job: str, step: StepReport) -> None:
        if not self.quiet:
            self._print(
                Text.assemble(self._prefix(workflow, job), " ", _status_text(step.status, _step_label(step)))
            )

    def job_finished(self, workflow: str, job: JobReport) -> None:
        self.running.pop((workflow, job.name), None)
        self.done += 1
        if not self.quiet:
            self._print(
                Text.assemble(
                    self._prefix(workflow, job.name), " ", _status_text(job.status, _job_label(job))
                )
            )

    def workflow_finished(self, report: WorkflowReport) -> None:
        return None

    def notice(self, message: str) -> None:
        self._print(Text(message, style="yellow"))


def make_reporter(*, quiet: bool, json_mode: bool) -> Any:
    """The reporter for this terminal: live on a colour TTY, plain lines otherwise.

    Under ``--json`` logs go to stderr so stdout stays one JSON document.
    """
    if json_mode:
        return PlainReporter(quiet=quiet, log_stream=sys.stderr)
    if wants_color(sys.stdout):
        return LiveReporter(quiet=quiet)
    return PlainReporter(quiet=quiet)
