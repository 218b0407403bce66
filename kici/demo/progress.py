"""What the demo shows while its run goes and after: one line per job, then the result table.

Everything here is a function of the orchestrator's run view (``GET /api/v1/runs/{id}``: the run and
its jobs, camelCase, ISO timestamps) and of ``now``, so a sequence of views renders the same way in
a test as in the terminal. Two modes, decided by the caller from the stream: on a terminal a live
table redrawn in place, one row per job; otherwise (a pipe, a CI log) one line each time a job's
status changes, since redrawing does not survive a log file.

Choices: jobs are listed in the run's own order (``ordinal``: lint, the matrix children, deploy); a
job's duration is ``completedAt - startedAt``, and while it runs ``now - startedAt``; a job that never
started (skipped) has none. The result table names each job's saved log file (the stack is gone
once the demo ends, so the file is what stays) and the API call that served it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import attrs
from rich.console import Group
from rich.table import Table
from rich.text import Text

from kici.cli.output import STATUS_ICONS, STATUS_STYLES
from kici.domain.execution.states import FAILING_JOB_STATES, TERMINAL_JOB_STATES, TERMINAL_RUN_STATES

TERMINAL_JOBS: Final = frozenset(status.value for status in TERMINAL_JOB_STATES)
TERMINAL_RUNS: Final = frozenset(status.value for status in TERMINAL_RUN_STATES)
RUNNING_STYLE: Final = "cyan"
WAITING_STYLE: Final = "dim"
EXTRA_ICONS: Final = {
    "queued": "…",
    "held": "…",
    "recovering": "↻",
    "cancelling": "⊘",
    "timed_out_stale": "✗",
    "drift_dropped": "✗",
}
FAILING_JOBS: Final = frozenset(status.value for status in FAILING_JOB_STATES)


def parse_time(value: object) -> datetime | None:
    """An ISO-8601 timestamp of the API, else ``None`` (absent or unreadable)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


@attrs.frozen(kw_only=True)
class JobLine:
    """One job of the run view, reduced to what the demo shows."""

    id: str
    name: str
    status: str
    ordinal: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    agent_id: str | None = None
    error: str | None = None

    @classmethod
    def from_view(cls, view: Mapping[str, Any]) -> JobLine:
        error = view.get("errorMessage")
        agent = view.get("agentId")
        return cls(
            id=str(view.get("id", "")),
            name=str(view.get("name", "?")),
            status=str(view.get("status", "pending")),
            ordinal=int(view.get("ordinal") or 0),
            started_at=parse_time(view.get("startedAt")),
            completed_at=parse_time(view.get("completedAt")),
            agent_id=str(agent) if agent else None,
            error=str(error) if error else None,
        )

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_JOBS

    def duration_s(self, now: datetime) -> float | None:
        """Seconds it ran (so far, while running); ``None`` if it never started."""
        if self.started_at is None:
            return None
        end = self.completed_at if self.completed_at is not None else (None if self.terminal else now)
        if end is None:
            return None
        return max(0.0, (end - self.started_at).total_seconds())


def job_lines(run: Mapping[str, Any]) -> list[JobLine]:
    """The run's jobs in the run's order."""
    jobs = run.get("jobs") or []
    return sorted((JobLine.from_view(job) for job in jobs), key=lambda line: line.ordinal)


def run_terminal(run: Mapping[str, Any]) -> bool:
    return str(run.get("status")) in TERMINAL_RUNS


@attrs.define
class StatusTracker:
    """Each job's last status seen; :meth:`changes` reports the jobs whose status moved."""

    seen: dict[str, str] = attrs.field(factory=dict)

    def changes(self, run: Mapping[str, Any]) -> list[JobLine]:
        moved = []
        for line in job_lines(run):
            if self.seen.get(line.id) != line.status:
                self.seen[line.id] = line.status
                moved.append(line)
        return moved


def format_duration(seconds: float | None) -> str:
    """``0.4 s``, ``12.3 s``, ``2 min 05 s``; an empty string for no duration."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def status_style(status: str) -> tuple[str, str]:
    """The icon and the rich style of a job or run status."""
    icon = STATUS_ICONS.get(status) or EXTRA_ICONS.get(status, "·")
    if status in ("running", "recovering", "cancelling"):
        return icon, RUNNING_STYLE
    if status in FAILING_JOBS:
        return icon, "red"
    return icon, STATUS_STYLES.get(status, WAITING_STYLE)


def status_text(status: str) -> Text:
    icon, style = status_style(status)
    return Text(f"{icon} {status}", style=style)


def run_title(run: Mapping[str, Any]) -> Text:
    status = str(run.get("status", "pending"))
    icon, style = status_style(status)
    title = Text(f"{icon} ", style=style)
    title.append(f"workflow {run.get('workflowName', '?')}", style="bold")
    title.append(f"  {status}", style=style)
    title.append(f"  run {str(run.get('id', ''))[:8]}", style="dim")
    return title


def live_table(run: Mapping[str, Any], now: datetime) -> Table:
    """The live view: one row per job (status, elapsed), under the run's status."""
    table = Table(title=run_title(run), title_justify="left", show_header=True, box=None, padding=(0, 2))
    table.add_column("job", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    for line in job_lines(run):
        table.add_row(line.name, status_text(line.status), format_duration(line.duration_s(now)))
    return table


def change_line(line: JobLine, now: datetime) -> Text:
    """The plain-mode line for one status change."""
    icon, style = status_style(line.status)
    text = Text(f"  {icon} ", style=style)
    text.append(f"{line.name:<16}")
    text.append(f" {line.status:<10}", style=style)
    duration = format_duration(line.duration_s(now)) if line.terminal else ""
    if duration:
        text.append(f" {duration}", style="dim")
    if line.status == "running" and line.agent_id:
        text.append(f" on {line.agent_id}", style="dim")
    return text


@attrs.frozen(kw_only=True)
class LogPlaces:
    """Where a finished run's logs can be read: saved files per job id (shown relative to ``root``),
    and the APIs that served them."""

    root: Path | None = None
    job_files: Mapping[str, Path] = attrs.field(factory=dict)
    orchestrator_url: str = ""
    platform_url: str = ""
    stack_logs: Mapping[str, Path] = attrs.field(factory=dict)

    def shown(self, path: Path | None) -> str:
        if path is None:
            return ""
        if self.root is not None and path.is_relative_to(self.root):
            return str(path.relative_to(self.root))
        return str(path)


def run_duration_s(run: Mapping[str, Any]) -> float | None:
    duration = run.get("durationMs")
    if isinstance(duration, int | float):
        return float(duration) / 1000
    started, completed = parse_time(run.get("startedAt")), parse_time(run.get("completedAt"))
    if started is None or completed is None:
        return None
    return (completed - started).total_seconds()


def result_table(run: Mapping[str, Any], places: LogPlaces, now: datetime) -> Table:
    """Each job's outcome, duration, agent and saved log file."""
    table = Table(title=run_title(run), title_justify="left", box=None, padding=(0, 2))
    table.add_column("job", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("agent", no_wrap=True)
    table.add_column("log file" if places.root is None else f"log file (in {places.root})")
    for line in job_lines(run):
        table.add_row(
            line.name,
            status_text(line.status),
            format_duration(line.duration_s(now)),
            line.agent_id or "",
            places.shown(places.job_files.get(line.id)),
        )
    return table


def where_logs_are(run: Mapping[str, Any], places: LogPlaces, *, admin_token: str | None = None) -> Text:
    """The API calls that read the run's logs, and the log files of the stack's processes."""
    run_id = str(run.get("id", "<run>"))
    token = admin_token or "$KICI_ADMIN_TOKEN"
    text = Text()
    text.append("Logs of a job through the orchestrator API ({job} is a job name or id):\n", style="bold")
    text.append(
        f'  curl -s -H "authorization: Bearer {token}" '
        f"{places.orchestrator_url}/api/v1/runs/{run_id}/jobs/{{job}}/logs\n"
    )
    if places.platform_url:
        text.append("The same run on the Platform's dashboard API (a dashboard token):\n", style="bold")
        text.append(f"  {places.platform_url}/api/v1/runs/{run_id}\n")
    if places.stack_logs:
        text.append("Logs of the stack's processes (JSON lines):\n", style="bold")
        for name, path in places.stack_logs.items():
            text.append(f"  {name:<13} {path}\n")
    failure = run.get("failureReason")
    if failure:
        text.append(f"Failure: {failure}\n", style="red")
    return text


def phases_table(timings: Sequence[tuple[str, float]]) -> Table:
    """Elapsed time per phase and the total."""
    table = Table(title=Text("Elapsed time per phase", style="bold"), title_justify="left", box=None)
    table.add_column("phase")
    table.add_column("time", justify="right", no_wrap=True)
    for name, seconds in timings:
        table.add_row(name, format_duration(seconds))
    table.add_row(
        Text("total", style="bold"), Text(format_duration(sum(s for _, s in timings)), style="bold")
    )
    return table


def result_view(
    run: Mapping[str, Any], places: LogPlaces, now: datetime, *, admin_token: str | None = None
) -> Group:
    return Group(result_table(run, places, now), Text(), where_logs_are(run, places, admin_token=admin_token))


__all__ = [
    "JobLine",
    "LogPlaces",
    "StatusTracker",
    "change_line",
    "format_duration",
    "job_lines",
    "live_table",
    "parse_time",
    "phases_table",
    "result_table",
    "result_view",
    "run_duration_s",
    "run_terminal",
    "status_style",
    "status_text",
    "where_logs_are",
]
