"""One job, phases 3-6 of 10 §4 inside the runner: load, rules, matrix, step loop, completion hooks.

The result is the ``job.complete`` message. The special job types of 10 §4 (``mode: dynamic`` /
``mode: init`` evaluations) and a generated job's re-evaluation are in :mod:`.dynamic`; they share this
class's channel, capture and masking. Every text that leaves the runner — log lines, step and job
errors, outputs — goes through the job's ``Masker`` first (SEC-15).

Choices where the spec is silent:
- a graceful abort that arrives once the step loop is over does not interrupt the completion hooks
  already under way (they are the clean-up path); a force abort still ends everything at once;
- workflow-level hooks are not run here: per EXE-12 they run in a synthetic ``__workflow_hooks__`` job
  dispatched when the whole run completes;
- job ``init`` specs, declarative caches, approval gates and concurrency groups need agent or
  orchestrator services and are not handled by this runner.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from kici.sdk.context import Outcome
from kici.sdk.masking import Masker
from kici.sdk.naming import step_entries
from kici.sdk.rules import Fanout
from kici.services.runner import hooks as hook_rules
from kici.services.runner.cancel import DEFAULT_GRACE_S, JobControl
from kici.services.runner.capture import PREPARE_INDEX, Capture, LogRouter
from kici.services.runner.dynamic import EvaluationError, evaluate, regenerate
from kici.services.runner.envstore import JobEnv
from kici.services.runner.ipc import Channel
from kici.services.runner.loader import LoadedJob, LoadError, check_content_hash, find_job, load_workflow
from kici.services.runner.outputs import OutputStore, build_needs
from kici.services.runner.runtime import JobState, Requests
from kici.services.runner.shell import ProcessTracker
from kici.services.runner.steps import (
    DEFAULT_STEP_TIMEOUT_MS,
    SIBLING_FAILED,
    JobConfig,
    StepDriver,
    StepRecord,
)
from kici.services.runner.units import CANCEL, JOB_TIMEOUT


@dataclass(frozen=True)
class Event:
    """``ctx.event``: the snake_case event envelope of 00 §1.6; unknown keys are ignored."""

    type: str = ""
    action: str | None = None
    target_branch: str = ""
    source_branch: str | None = None
    provider: str | None = None
    is_fork_pr: bool | None = None
    base_branch: str | None = None
    sender_username: str | None = None
    sender_user_id: str | None = None
    source_repo: str | None = None
    changed_files: tuple[str, ...] | None = None
    payload: Mapping[str, Any] | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Event:
        data = data or {}
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("changed_files") is not None:
            values["changed_files"] = tuple(values["changed_files"])
        values["payload"] = dict(values.get("payload") or {})
        return cls(**values)


class JobRun:
    """Executes one ``execute`` request; ``run()`` returns the ``job.complete`` message."""

    def __init__(
        self, channel: Channel, request: Mapping[str, Any], control: JobControl, requests: Requests
    ) -> None:
        self.channel = channel
        self.request = request
        self.control = control
        self.started = time.monotonic()
        secrets = {str(k): str(v) for k, v in (request.get("secrets") or {}).items()}
        self.masker = Masker(secrets.values())
        self.router = LogRouter(channel.send, self.masker)
        self.capture = Capture(self.router)
        self.tracker = ProcessTracker()
        self.scratch = Path(tempfile.mkdtemp(prefix="kici-runner-"))
        self.workspace = Path(request.get("workspace") or Path.cwd())
        self.secrets = secrets
        self.requests = requests
        self.records: list[StepRecord] = []
        self.rule_results: list[dict[str, Any]] | None = None
        self.job_state: JobState | None = None
        self.extra: dict[str, Any] = {}

    # --- helpers --------------------------------------------------------------------------------

    def log(self, text: str) -> None:
        self.router.emit_text(PREPARE_INDEX, text)

    def snapshot(self, status: str, error: str | None) -> dict[str, Any]:
        """A ``job.complete`` from what is known now (also used by a force abort mid-step).

        ``extra`` carries what an evaluation adds (``dynamicJobs``, ``initResult``, ``droppedJobs`` ...).
        """
        message: dict[str, Any] = {
            "type": "job.complete",
            "status": status,
            "stepResults": [record.result() for record in self.records],
            "durationMs": round((time.monotonic() - self.started) * 1000),
        }
        for result in message["stepResults"]:
            if "error" in result:
                result["error"] = self.masker.mask(result["error"])
        if error:
            message["error"] = self.masker.mask(error)
        if self.job_state is not None:
            outputs = {k: v for k, v in self.job_state.outputs.all().items() if v}
            if outputs:
                message["outputs"] = self.masker.mask_value(outputs)
            if self.job_state.secret_outputs:
                message["secretOutputs"] = dict(self.job_state.secret_outputs)
        if self.rule_results is not None:
            message["ruleResults"] = self.rule_results
        message.update(self.extra)
        return message

    # --- the job ----------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.capture.install()
        try:
            return self._run()
        except Exception as exc:
            self.log("".join(traceback.format_exception(exc)))
            return self.snapshot("failed", f"runner error: {type(exc).__name__}: {exc}")
        finally:
            self.tracker.kill_all(signal.SIGKILL)
            self.capture.uninstall()
            shutil.rmtree(self.scratch, ignore_errors=True)

    def _state(self, outputs: OutputStore) -> JobState:
        env = JobEnv(
            {**_base_env(), **{str(k): str(v) for k, v in (self.request.get("env") or {}).items()}},
            protected=self.secrets.keys(),
            warn=self.log,
        )
        return JobState(
            channel=self.channel,
            router=self.router,
            masker=self.masker,
            env=env,
            outputs=outputs,
            control=self.control,
            tracker=self.tracker,
            requests=self.requests,
            workspace=self.workspace,
            scratch=self.scratch,
            secrets=self.secrets,
        )

    def _config(
        self, workflow_name: str, job_name: str, job: Any, step_count: int, timeout_ms: int | None
    ) -> JobConfig:
        request = self.request
        step_timeout_ms = request.get("defaultStepTimeoutMs") or DEFAULT_STEP_TIMEOUT_MS
        return JobConfig(
            workflow_name=workflow_name,
            job_name=request.get("jobDisplayName") or job_name,
            run_mode=request.get("runMode") or "apply",
            default_step_timeout_s=step_timeout_ms / 1000,
            job_deadline=None if timeout_ms is None else self.started + timeout_ms / 1000,
            job_timeout_ms=timeout_ms,
            matrix=request.get("matrix"),
            event=Event.from_json(request.get("event")),
            dispatch_inputs=request.get("dispatchInputs") or {},
            needs=build_needs(
                request.get("upstreamJobOutputs") or {}, request.get("upstreamJobStatuses") or {}
            ),
            fanout=Fanout(int(request.get("fanoutIndex") or 0), int(request.get("fanoutTotal") or 1)),
            provider=request.get("provider"),
            is_test_run=bool(request.get("isTestRun")),
            runs_on=getattr(job, "runs_on", None),
            before_step=getattr(job, "before_step", None),
            after_step=getattr(job, "after_step", None),
            step_count=step_count,
        )

    def _evaluation_driver(self, workflow: Any) -> StepDriver:
        """A driver for user code that runs outside any step of the job (evaluations, re-evaluations)."""
        grace = self.request.get("gracePeriodS")
        if grace is not None:
            self.control.grace_s = float(grace)
        self.job_state = self._state(OutputStore({}, {}, {}, {}))
        name = str(self.request.get("jobName") or "")
        return StepDriver(self.job_state, self._config(workflow.name, name, None, 1, None), self.capture)

    def _load(self) -> tuple[Any, LoadedJob | None]:
        """The workflow, and the static job unless the request is an evaluation or a generated job."""
        request = self.request
        workflow_file = str(request.get("workflowFile") or "")
        if request.get("contentHash"):
            check_content_hash(
                self.workspace / workflow_file,
                self.workspace,
                str(request["contentHash"]),
                request.get("resolvedHashFiles"),
            )
        workflow = load_workflow(
            self.workspace,
            workflow_file,
            request.get("kiciDir") or ".kici",
            export=request.get("workflowExport"),
            workflow_name=request.get("workflowName"),
        )
        if (request.get("mode") or "job") != "job" or isinstance(request.get("dynamic"), dict):
            return workflow, None
        return workflow, find_job(workflow, str(request.get("jobName") or ""))

    def _run(self) -> dict[str, Any]:
        request = self.request
        if self.control.aborted:
            return self.snapshot("cancelled", self.control.reason)
        try:
            workflow, found = self._load()
        except LoadError as exc:
            self.log(f"[kici] {exc}")
            return self.snapshot("failed", str(exc))
        except Exception as exc:
            self.log("".join(traceback.format_exception(exc)))
            return self.snapshot(
                "failed", f"Failed to load workflow file module: {type(exc).__name__}: {exc}"
            )
        mode = request.get("mode") or "job"
        if mode in ("dynamic", "init"):
            return evaluate(self, self._evaluation_driver(workflow), workflow, mode)
        if found is None:
            target = str(request.get("jobName") or "")
            try:
                again = regenerate(self, self._evaluation_driver(workflow), workflow, target)
            except EvaluationError as exc:
                self.log(f"[kici] {exc}")
                return self.snapshot("cancelled" if exc.cancelled else "failed", str(exc))
            found = LoadedJob(workflow, workflow.name, again.job, target, again.names)
        loaded = found

        job = loaded.job
        grace = request.get("gracePeriodS")
        if grace is None:
            grace = job.grace_period if job.grace_period is not None else DEFAULT_GRACE_S
        self.control.grace_s = float(grace)
        timeout_ms = request.get("jobTimeoutMs")
        if timeout_ms is None and job.timeout is not None:
            timeout_ms = round(float(job.timeout) * 1000)
        entries = step_entries(job)
        flat = [(child, i) for i, child in enumerate(_flatten(entries))]
        step_names = {id(child.entry): child.name for child, _ in flat}
        functions = {id(child.entry.run): child.name for child, _ in flat}
        outputs = OutputStore(
            request.get("upstreamJobOutputs") or {}, step_names, loaded.job_names, functions
        )
        self.job_state = self._state(outputs)
        config = self._config(loaded.workflow_name, loaded.job_name, job, len(flat), timeout_ms)
        driver = StepDriver(self.job_state, config, self.capture)

        rules = tuple(loaded.workflow.rules) + tuple(job.rules)
        if rules:
            passed, results, failed_label = driver.evaluate(rules, PREPARE_INDEX, f"job '{loaded.job_name}'")
            self.rule_results = results
            if not passed:
                self.log(f"[kici] Job '{config.job_name}' skipped: rule '{failed_label}' did not pass")
                for child, index in flat:
                    record = StepRecord(child.name, index, "skipped")
                    driver.send_complete(record)
                    self.records.append(record)
                return self.snapshot("success", None)

        return self._loop_and_hooks(driver, entries, flat, job)

    def _loop_and_hooks(
        self, driver: StepDriver, entries: list[Any], flat: list[Any], job: Any
    ) -> dict[str, Any]:
        index = 0
        stop: str | None = None
        for entry in entries:
            count = len(entry.children) if entry.is_parallel else 1
            if self.control.aborted:
                stop = CANCEL
                break
            deadline = driver.config.job_deadline
            if deadline is not None and time.monotonic() >= deadline:
                stop = JOB_TIMEOUT
                break
            if entry.is_parallel:
                group_records = driver.run_group(entry, index)
            else:
                group_records = [driver.run_step(entry, index)]
            self.records.extend(group_records)
            index += count
            kinds = {record.kind for record in group_records}
            if JOB_TIMEOUT in kinds:
                stop = JOB_TIMEOUT
                break
            if self.control.wait_aborted(0):
                stop = CANCEL
                break
            if any(record.hard_failure for record in group_records):
                break
        leftover = "cancelled" if stop == CANCEL else "skipped"
        for child, i in flat[index:]:
            record = StepRecord(child.name, i, leftover)
            driver.send_complete(record)
            self.records.append(record)

        if stop == JOB_TIMEOUT:
            return self.snapshot("failed", driver.job_timeout_message())
        statuses = [record.status for record in self.records]
        reason: str | None
        if stop == CANCEL:
            outcome, reason = hook_rules.CANCELLED, self.control.reason or "cancelled"
        else:
            outcome = hook_rules.loop_outcome(statuses)
            reason = _failure_reason(self.records) if outcome == hook_rules.FAILED else None
        return self._completion(driver, job, outcome, reason)

    def _completion(self, driver: StepDriver, job: Any, outcome: str, reason: str | None) -> dict[str, Any]:
        # Steps the abort interrupted; siblings stopped by fail_fast were not cancelled by the user.
        in_flight = [
            record
            for record in self.records
            if record.status == "cancelled" and record.started and record.error != SIBLING_FAILED
        ]
        if outcome != hook_rules.CANCELLED:
            in_flight = []
        job_hooks = {
            hook_rules.ON_SUCCESS: job.on_success,
            hook_rules.ON_FAILURE: job.on_failure,
            hook_rules.ON_CANCEL: job.on_cancel,
            hook_rules.CLEANUP: job.cleanup,
        }
        step_hooks = [
            {hook_rules.STEP_ON_CANCEL: record.step.on_cancel, hook_rules.STEP_CLEANUP: record.step.cleanup}
            for record in in_flight
        ]
        plan = hook_rules.completion_plan(
            outcome,
            {kind for kind, hook in job_hooks.items() if hook is not None},
            in_flight=[{kind for kind, hook in hooks.items() if hook is not None} for hooks in step_hooks],
            force=self.control.force,
        )
        failed_step = next((r.name for r in self.records if r.status == "failed"), None)
        results: list[hook_rules.HookRun] = []
        base = 3 * driver.config.step_count
        for k, (kind, ordinal) in enumerate(plan):
            if ordinal is None:
                hook, name = job_hooks[kind], kind
            else:
                hook = step_hooks[ordinal][kind]
                label = "onCancel" if kind == hook_rules.STEP_ON_CANCEL else "cleanup"
                name = f"{in_flight[ordinal].name}: {label}"
            status, so_far = hook_rules.fold_hook_results(outcome, reason, results)
            seen = Outcome(
                status=status,  # type: ignore[arg-type]
                reason=so_far,
                failed_step=failed_step,
                step_outputs=self.job_state.outputs.all() if self.job_state else {},
                duration_ms=round((time.monotonic() - self.started) * 1000),
            )
            error = driver.run_hook(hook, base + k, name, kind, outcome=seen, loop_unit=False)
            results.append(hook_rules.HookRun(kind, error))
        status, final_reason = hook_rules.fold_hook_results(outcome, reason, results)
        return self.snapshot(status, final_reason)


def _flatten(entries: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for entry in entries:
        flat.extend(entry.children if entry.is_parallel else (entry,))
    return flat


def _failure_reason(records: list[StepRecord]) -> str:
    failed = [record for record in records if record.status == "failed"]
    first = next((record for record in failed if record.hard_failure), failed[0])
    return f"Step '{first.name}' failed: {first.error}" if first.error else f"Step '{first.name}' failed"


def _base_env() -> dict[str, str]:
    """The environment the sandbox gave the runner (already allowlisted, ISO-04): layer 1-2 of ENV-09."""
    return dict(os.environ)


__all__ = ["Event", "JobRun"]
