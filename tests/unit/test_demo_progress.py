"""The demo's progress display, driven by a sequence of run views as the orchestrator's API returns them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console, RenderableType

from kici.demo.progress import (
    JobLine,
    LogPlaces,
    StatusTracker,
    change_line,
    format_duration,
    job_lines,
    live_table,
    parse_time,
    phases_table,
    result_table,
    run_duration_s,
    run_terminal,
    status_style,
    where_logs_are,
)
from kici.domain.execution.states import JobStatus, RunStatus

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
RUN_ID = "2c69f329-7e9f-4a55-8266-cbbc0c122005"
NAMES = ("lint", "test (3.11)", "test (3.12)", "test (3.13)", "deploy")


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def job(ordinal: int, status: str, started: float | None = None, done: float | None = None) -> dict[str, Any]:
    return {
        "id": f"job-{ordinal}",
        "name": NAMES[ordinal],
        "ordinal": ordinal,
        "status": status,
        "startedAt": None if started is None else at(started),
        "completedAt": None if done is None else at(done),
        "agentId": None if started is None else "demo-agent-1",
        "errorMessage": None,
    }


def run(status: str, *jobs: dict[str, Any], failure: str | None = None) -> dict[str, Any]:
    return {
        "id": RUN_ID,
        "workflowName": "ci",
        "status": status,
        "failureReason": failure,
        "startedAt": at(0),
        "completedAt": at(3) if status in ("success", "failed") else None,
        "durationMs": 3000 if status in ("success", "failed") else None,
        "jobs": list(reversed(jobs)),
    }


# What the API returned, poll after poll, for a push whose tests fail.
SEQUENCE = [
    run(
        "pending",
        job(0, "queued"),
        job(1, "pending"),
        job(2, "pending"),
        job(3, "pending"),
        job(4, "pending"),
    ),
    run(
        "running",
        job(0, "running", 0.1),
        job(1, "pending"),
        job(2, "pending"),
        job(3, "pending"),
        job(4, "pending"),
    ),
    run(
        "running",
        job(0, "running", 0.1),
        job(1, "pending"),
        job(2, "pending"),
        job(3, "pending"),
        job(4, "pending"),
    ),
    run(
        "running",
        job(0, "success", 0.1, 0.5),
        job(1, "running", 0.6),
        job(2, "running", 0.6),
        job(3, "queued"),
        job(4, "pending"),
    ),
    run(
        "failed",
        job(0, "success", 0.1, 0.5),
        job(1, "failed", 0.6, 1.2),
        job(2, "success", 0.6, 1.1),
        job(3, "failed", 0.7, 1.4),
        job(4, "skipped"),
        failure="job test (3.11) failed",
    ),
]


def text(renderable: RenderableType) -> str:
    console = Console(record=True, width=200, color_system=None)
    console.print(renderable)
    return console.export_text()


@pytest.mark.feature("EXE-02", "EXE-03")
def test_each_job_is_reported_once_per_status_change_in_run_order() -> None:
    tracker = StatusTracker()
    seen = [[(line.name, line.status) for line in tracker.changes(view)] for view in SEQUENCE]
    assert seen[0] == [(name, "queued" if name == "lint" else "pending") for name in NAMES]
    assert seen[1] == [("lint", "running")]
    assert seen[2] == []
    assert seen[3] == [
        ("lint", "success"),
        ("test (3.11)", "running"),
        ("test (3.12)", "running"),
        ("test (3.13)", "queued"),
    ]
    assert seen[4] == [
        ("test (3.11)", "failed"),
        ("test (3.12)", "success"),
        ("test (3.13)", "failed"),
        ("deploy", "skipped"),
    ]
    assert [run_terminal(view) for view in SEQUENCE] == [False, False, False, False, True]


@pytest.mark.feature("EXE-02")
def test_a_change_line_names_the_job_its_status_and_its_duration_once_finished() -> None:
    view = SEQUENCE[3]
    lines = {line.name: line for line in job_lines(view)}
    now = T0 + timedelta(seconds=1)
    assert text(change_line(lines["lint"], now)).strip() == "✓ lint             success    0.4 s"
    assert (
        text(change_line(lines["test (3.11)"], now)).strip()
        == "▶ test (3.11)      running    on demo-agent-1"
    )
    skipped = job_lines(SEQUENCE[4])[-1]
    assert text(change_line(skipped, now)).strip() == "○ deploy           skipped"


@pytest.mark.feature("EXE-02", "EXE-03")
def test_the_live_table_has_one_row_per_job_with_the_time_so_far() -> None:
    now = T0 + timedelta(seconds=1.6)
    rows = [line.split() for line in text(live_table(SEQUENCE[3], now)).splitlines() if line.strip()]
    assert rows[0][:4] == ["▶", "workflow", "ci", "running"]
    assert rows[1] == ["job", "status", "time"]
    assert rows[2:] == [
        ["lint", "✓", "success", "0.4", "s"],
        ["test", "(3.11)", "▶", "running", "1.0", "s"],
        ["test", "(3.12)", "▶", "running", "1.0", "s"],
        ["test", "(3.13)", "…", "queued"],
        ["deploy", "…", "pending"],
    ]


@pytest.mark.feature("EXE-03")
def test_the_result_table_gives_outcome_duration_agent_and_the_saved_log_of_every_job(tmp_path: Path) -> None:
    final = SEQUENCE[-1]
    files = {f"job-{i}": tmp_path / "logs" / "jobs" / f"{i:02d}.log" for i in range(5)}
    places = LogPlaces(root=tmp_path, job_files=files)
    rendered = text(result_table(final, places, T0 + timedelta(minutes=5)))
    rows = {line.split()[0] + line.split()[1]: line for line in rendered.splitlines()[2:] if line.strip()}
    assert f"log file (in {tmp_path})" in rendered
    assert "✗ failed" in rows["test(3.11)"]
    assert "0.6 s" in rows["test(3.11)"]
    assert "demo-agent-1" in rows["test(3.11)"]
    assert "logs/jobs/01.log" in rows["test(3.11)"]
    assert "○ skipped" in rows["deploy○"]
    assert "demo-agent-1" not in rows["deploy○"]
    assert str(tmp_path) + "/logs" not in rendered
    assert run_duration_s(final) == 3.0


@pytest.mark.feature("EXE-10")
def test_where_the_logs_are_names_the_api_call_the_dashboard_and_the_stack_logs() -> None:
    places = LogPlaces(
        orchestrator_url="http://127.0.0.1:4000",
        platform_url="http://127.0.0.1:3000",
        stack_logs={"platform": Path("/r/logs/platform.log"), "agent-1": Path("/r/logs/agent-1.log")},
    )
    rendered = text(where_logs_are(SEQUENCE[-1], places))
    assert f"http://127.0.0.1:4000/api/v1/runs/{RUN_ID}/jobs/{{job}}/logs" in rendered
    assert "Bearer $KICI_ADMIN_TOKEN" in rendered
    assert f"http://127.0.0.1:3000/api/v1/runs/{RUN_ID}" in rendered
    assert "/r/logs/platform.log" in rendered
    assert "/r/logs/agent-1.log" in rendered
    assert "Failure: job test (3.11) failed" in rendered
    assert "Bearer kadm_x" in text(where_logs_are(SEQUENCE[-1], places, admin_token="kadm_x"))


@pytest.mark.feature("EXE-02")
@pytest.mark.parametrize("status", [*JobStatus, *RunStatus])
def test_every_job_and_run_status_has_an_icon_and_a_style(status: str) -> None:
    icon, style = status_style(str(status))
    assert icon
    assert icon != "·"
    assert style


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, ""),
        (0.0, "0.0 s"),
        (0.44, "0.4 s"),
        (59.94, "59.9 s"),
        (60.0, "1 min 00 s"),
        (125.4, "2 min 05 s"),
    ],
)
@pytest.mark.feature("EXE-03")
def test_durations_read_naturally(seconds: float | None, shown: str) -> None:
    assert format_duration(seconds) == shown


@pytest.mark.feature("EXE-03")
def test_a_job_that_never_started_or_ended_without_a_stamp_has_no_duration() -> None:
    now = T0 + timedelta(seconds=9)
    assert JobLine(id="a", name="x", status="skipped").duration_s(now) is None
    assert JobLine(id="a", name="x", status="failed", started_at=T0).duration_s(now) is None
    assert JobLine(id="a", name="x", status="running", started_at=T0).duration_s(now) == 9.0
    assert parse_time("not a time") is None
    assert parse_time(None) is None
    garbage: Mapping[str, Any] = {"id": 7, "status": "running", "startedAt": "yesterday"}
    line = JobLine.from_view(garbage)
    assert (line.id, line.name, line.started_at) == ("7", "?", None)


@pytest.mark.feature("EXE-03")
def test_the_phase_table_adds_up() -> None:
    rendered = text(phases_table([("start the Platform", 1.5), ("run the pipeline", 2.25)]))
    assert "start the Platform" in rendered
    assert "1.5 s" in rendered
    assert "total" in rendered
    assert "3.8 s" in rendered
