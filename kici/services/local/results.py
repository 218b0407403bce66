"""What a ``kici run local`` reports: per workflow, per job, per step (CLI-08), and its JSON form.

The JSON document is the one of 00 §3.3 (``{success, workflows: [{name, status, durationMs, jobs:
[{name, status, matrixValues?, durationMs, steps: [{name, status, durationMs, error?, outcome?}]}]}]}``).
Job statuses use the CLI's vocabulary ``success | failure | skipped | cancelled``: a user reads
"failure" on a summary line, while the wire and the scheduler say ``failed``. A job whose rules did
not pass is reported ``skipped`` locally (the agent reports it ``success`` with skipped steps, 10 §16.9,
which would read as if the job had run). Extra keys (``error``, ``reason``, ``checkoutDir``) only
appear when set.

Check mode (CLI-09, EXE-09): each step carries its ``outcome`` (``in sync``, ``would change``,
``no check``; ``applied`` in apply mode); a workflow with a ``would change`` step has ``drift``,
and the document gains ``runMode`` and ``drift``. Exit codes: 130 interrupted, else 0 when every
workflow succeeded, 2 when the only failures are drift under ``--fail-on-drift``, else 1. A
failed job outranks drift (1, not 2): a check that could not run says nothing about drift, and
"2" must keep meaning "everything ran and something would change".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import attrs

from kici.domain.execution.run_status import DRIFT_FAILURE_REASON
from kici.domain.runner_ipc import RunMode

DRIFT_OUTCOME = "would change"

JobState = Literal["success", "failure", "skipped", "cancelled"]
WorkflowState = Literal["success", "failure", "cancelled"]


@attrs.frozen(kw_only=True)
class StepReport:
    name: str
    status: str
    duration_ms: int
    error: str | None = None
    outcome: str | None = None
    step_type: str = "step"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "status": self.status, "durationMs": self.duration_ms}
        if self.error is not None:
            data["error"] = self.error
        if self.outcome is not None:
            data["outcome"] = self.outcome
        if self.step_type != "step":
            data["stepType"] = self.step_type
        return data


@attrs.frozen(kw_only=True)
class JobReport:
    name: str
    status: JobState
    duration_ms: int = 0
    steps: tuple[StepReport, ...] = ()
    matrix_values: Mapping[str, Any] | None = None
    error: str | None = None
    reason: str | None = None
    checkout_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "status": self.status}
        if self.matrix_values is not None:
            data["matrixValues"] = dict(self.matrix_values)
        data["durationMs"] = self.duration_ms
        data["steps"] = [step.to_json() for step in self.steps]
        for key, value in (
            ("error", self.error),
            ("reason", self.reason),
            ("checkoutDir", self.checkout_dir),
        ):
            if value is not None:
                data[key] = value
        return data


@attrs.frozen(kw_only=True)
class WorkflowReport:
    name: str
    status: WorkflowState
    duration_ms: int
    jobs: tuple[JobReport, ...] = ()
    reason: str | None = None
    drift: bool = False

    @property
    def failed_on_drift(self) -> bool:
        return self.status == "failure" and self.reason == DRIFT_FAILURE_REASON

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "status": self.status,
            "durationMs": self.duration_ms,
            "jobs": [job.to_json() for job in self.jobs],
        }
        if self.reason is not None:
            data["reason"] = self.reason
        if self.drift:
            data["drift"] = True
        return data


@attrs.frozen(kw_only=True)
class RunReport:
    """``interrupted`` is set when the user pressed Ctrl-C (exit 130 whatever the jobs did)."""

    workflows: tuple[WorkflowReport, ...] = ()
    interrupted: bool = False
    run_mode: RunMode = "apply"

    @property
    def success(self) -> bool:
        return not self.interrupted and all(w.status == "success" for w in self.workflows)

    @property
    def drift(self) -> bool:
        return any(w.drift for w in self.workflows)

    def drifted_steps(self) -> int:
        return sum(1 for w in self.workflows for j in w.jobs for s in j.steps if s.outcome == DRIFT_OUTCOME)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        if self.success:
            return 0
        if all(w.status == "success" or w.failed_on_drift for w in self.workflows):
            return 2
        return 1

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"success": self.success}
        if self.run_mode != "apply":
            data["runMode"] = self.run_mode
            data["drift"] = self.drift
        data["workflows"] = [w.to_json() for w in self.workflows]
        return data


class RunObserver(Protocol):
    """What the engine tells the terminal while it runs; every call is made from the trio thread."""

    def workflow_started(self, workflow: str, jobs: Sequence[str]) -> None: ...

    def job_started(self, workflow: str, job: str, checkout: str) -> None: ...

    def step_started(self, workflow: str, job: str, step: str, step_type: str) -> None: ...

    def log_line(self, workflow: str, job: str, line: str) -> None: ...

    def step_finished(self, workflow: str, job: str, step: StepReport) -> None: ...

    def job_finished(self, workflow: str, job: JobReport) -> None: ...

    def workflow_finished(self, report: WorkflowReport) -> None: ...

    def notice(self, message: str) -> None: ...
