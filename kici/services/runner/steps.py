"""The step loop of one job (10 §4.1, EXE-07/08/09): rules, observer hooks, attempts, groups.

``StepDriver`` runs one step node at a time for the executor: step rules, ``beforeStep``, attempts under
the step timeout and the job deadline with retry waits, the ``$KICI_ENV``/``$KICI_PATH`` delta, outputs,
``afterStep``. Parallel groups run their children on threads within a ``max_parallel`` window; a hard
failure with ``fail_fast`` cancels the running siblings and never starts the rest. Children's outputs are
published after the group's barrier, so siblings cannot read each other (00 §1.6).

Choices where the spec is silent:
- an approval gate is not enforced by this runner: approvals need the orchestrator (TRUST), so the step
  runs and its log says so;
- after a hard failure the steps that never ran are reported ``skipped``; after a cancel, ``cancelled``.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kici.sdk.context import Outcome, StepContext
from kici.sdk.errors import OutputValidationError, ShellError
from kici.sdk.naming import NamedEntry
from kici.sdk.rules import Fanout, RuleContext, evaluate_rules
from kici.services.runner import hooks as hook_rules
from kici.services.runner.cancel import CancelToken
from kici.services.runner.capture import Capture
from kici.services.runner.outputs import normalize_outputs
from kici.services.runner.runtime import JobState, UnitRuntime
from kici.services.runner.units import (
    CANCEL,
    JOB_TIMEOUT,
    SIGNAL_SLICE_S,
    UnitOutcome,
    call_maybe_async,
    run_unit,
)

DEFAULT_STEP_TIMEOUT_MS = 1_800_000
SIBLING_FAILED = "cancelled: a sibling failed (fail_fast)"
_SLICE_S = 0.05


@dataclass
class StepRecord:
    name: str
    index: int
    status: str
    duration_ms: int = 0
    error: str | None = None
    exit_code: int | None = None
    outputs: dict[str, Any] | None = None
    kind: str | None = None
    started: bool = False
    continue_on_error: bool = False
    step: Any = None
    check_outcome: str | None = None
    drift_summary: str | None = None

    @property
    def hard_failure(self) -> bool:
        return self.status == "failed" and not self.continue_on_error

    def result(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "status": self.status, "durationMs": self.duration_ms}
        if self.error:
            data["error"] = self.error
        return data


@dataclass
class JobConfig:
    """What the driver needs from the request and the loaded job."""

    workflow_name: str
    job_name: str
    run_mode: str
    default_step_timeout_s: float
    job_deadline: float | None
    job_timeout_ms: int | None
    matrix: Mapping[str, Any] | None
    event: Any
    dispatch_inputs: Mapping[str, Any]
    needs: Mapping[str, Any]
    fanout: Fanout
    provider: str | None
    is_test_run: bool
    runs_on: Any
    before_step: Any
    after_step: Any
    step_count: int
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class _CheckResult:
    outcome: str
    value: Any
    summary: str | None


class StepDriver:
    def __init__(self, job: JobState, config: JobConfig, capture: Capture) -> None:
        self.job = job
        self.config = config
        self.capture = capture
        self._lock = threading.Lock()
        self._active_tokens: dict[int, CancelToken] = {}

    # --- contexts ---------------------------------------------------------------------------------

    def env_files(self, index: int) -> tuple[Path, Path]:
        return self.job.scratch / f"env-{index}", self.job.scratch / f"path-{index}"

    def context(
        self, index: int, token: CancelToken, step_name: str, outcome: Outcome | None = None
    ) -> tuple[StepContext, UnitRuntime]:
        runtime = UnitRuntime(self.job, index, token, self.env_files(index))
        cfg = self.config
        ctx = StepContext(
            runtime,
            workspace=self.job.workspace,
            workflow_name=cfg.workflow_name,
            job_name=cfg.job_name,
            step_name=step_name,
            matrix=cfg.matrix,
            event=cfg.event,
            secrets=self.job.secrets,
            dispatch_inputs=cfg.dispatch_inputs,
            needs=cfg.needs,
            runs_on=cfg.runs_on,
            outcome=outcome,
            provider=cfg.provider,
            raw_payload=getattr(cfg.event, "payload", None),
            is_test_run=cfg.is_test_run,
            fanout=cfg.fanout,
        )
        return ctx, runtime

    def rule_context(self, ctx: StepContext) -> RuleContext:
        event = self.config.event
        return RuleContext(
            event=event,
            changed_files=tuple(getattr(event, "changed_files", None) or ()),
            env=ctx.env,
            sh=ctx.sh,
            dispatch_inputs=self.config.dispatch_inputs,
            fanout=self.config.fanout,
        )

    def evaluate(self, rules: Any, index: int, label: str) -> tuple[bool, list[dict[str, Any]], str | None]:
        """Evaluate rules in the calling thread with a context of step ``index`` (``-1``: the job's)."""
        token = self.job.control.new_token(loop_unit=True)
        ctx, _ = self.context(index, token, label)
        try:
            evaluation = evaluate_rules(tuple(rules), self.rule_context(ctx), label)
        finally:
            self.job.control.release(token)
        results = []
        failed_label = None
        for result in evaluation.results:
            item: dict[str, Any] = {
                "label": result.label,
                "passed": result.passed,
                "durationMs": result.duration_ms,
            }
            if result.error:
                item["error"] = self.job.masker.mask(result.error)
            results.append(item)
            if not result.passed:
                failed_label = result.label
        return evaluation.all_passed, results, failed_label

    # --- messages ---------------------------------------------------------------------------------

    def send_start(
        self,
        index: int,
        name: str,
        *,
        step_type: str | None = None,
        state: str = "running",
        group: str | None = None,
    ) -> None:
        message: dict[str, Any] = {"type": "step.start", "stepIndex": index, "stepName": name, "state": state}
        if step_type:
            message["step_type"] = step_type
        if group:
            message["groupId"] = group
        self.job.send(message)

    def send_complete(
        self,
        record: StepRecord,
        *,
        step_type: str | None = None,
        group: str | None = None,
        accessed: set[str] | None = None,
    ) -> None:
        masker = self.job.masker
        message: dict[str, Any] = {
            "type": "step.complete",
            "stepIndex": record.index,
            "status": record.status,
            "durationMs": record.duration_ms,
        }
        if record.error:
            error: dict[str, Any] = {"message": masker.mask(record.error)}
            if record.exit_code is not None:
                error["exitCode"] = record.exit_code
            message["error"] = error
        if record.outputs is not None:
            message["outputs"] = masker.mask_value(record.outputs)
        if step_type:
            message["step_type"] = step_type
        if group:
            message["groupId"] = group
        if accessed:
            message["secretsAccessed"] = sorted(accessed)
        if record.check_outcome:
            message["checkOutcome"] = record.check_outcome
        if record.drift_summary:
            message["driftSummary"] = masker.mask(record.drift_summary)
        self.job.send(message)

    def log(self, index: int, text: str) -> None:
        self.job.router.emit_text(index, text)

    # --- hooks ------------------------------------------------------------------------------------

    def run_hook(
        self,
        hook: Any,
        index: int,
        name: str,
        hook_type: str,
        *,
        outcome: Outcome | None,
        loop_unit: bool,
    ) -> str | None:
        """Run one hook as its own unit and step row; the error text, or ``None`` when it passed."""
        step_type = hook_rules.STEP_TYPES[hook_type]
        self.send_start(index, name, step_type=step_type)
        token = self.job.control.new_token(loop_unit=loop_unit)
        ctx, runtime = self.context(index, token, name, outcome)
        timeout_s = float(getattr(hook, "timeout", 300) or 300)
        result = run_unit(
            hook.run,
            (ctx,),
            index=index,
            token=token,
            timeout_s=timeout_s,
            job_deadline=None if not loop_unit else self.config.job_deadline,
            capture=self.capture,
            outputs=self.job.outputs,
            timeout_message=hook_rules.hook_timeout_message(name, round(timeout_s * 1000)),
            job_timeout_message=self.job_timeout_message(),
        )
        self.job.control.release(token)
        self.log_traceback(index, result)
        record = StepRecord(name, index, result.status, result.duration_ms, result.error, result.exit_code)
        self.send_complete(record, step_type=step_type, accessed=runtime.accessed)
        return None if result.status == "success" else (result.error or result.status)

    def job_timeout_message(self) -> str:
        return f"job_timeout: job exceeded its timeout of {self.config.job_timeout_ms}ms"

    def _observer(self, hook: Any, hook_type: str, step_index: int, step_name: str) -> None:
        n = self.config.step_count
        index = n + 2 * step_index + (1 if hook_type == hook_rules.AFTER_STEP else 0)
        error = self.run_hook(
            hook, index, f"{hook_type}: {step_name}", hook_type, outcome=None, loop_unit=True
        )
        if error is not None:
            self.log(index, hook_rules.observer_failure_line(hook_type, error))

    # --- steps ------------------------------------------------------------------------------------

    def run_step(
        self, entry: NamedEntry, index: int, *, group: str | None = None, halt: threading.Event | None = None
    ) -> StepRecord:
        step: Any = entry.entry
        name = entry.name
        coe = bool(step.continue_on_error)
        started = time.monotonic()
        record = StepRecord(name, index, "success", continue_on_error=coe, step=step)
        if step.rules:
            passed, _, failed_label = self.evaluate(step.rules, index, f"step '{name}'")
            if not passed:
                self.log(index, f"[kici] Step '{name}' skipped: rule '{failed_label}' did not pass")
                record.status = "skipped"
                return self._finish(record, started, group, set())
        if self.config.run_mode != "apply" and step.check is None:
            self.log(index, f"[kici] Step '{name}' skipped: no check in {self.config.run_mode} mode")
            record.status, record.check_outcome = "skipped", "no check"
            return self._finish(record, started, group, set())
        if step.cache:
            self.log(index, f"[kici] Step '{name}': caches need the agent's cache service; not restored here")
        if step.approval is not None:
            self.log(index, f"[kici] Step '{name}': approval gates need the orchestrator; not enforced here")
        if self.config.before_step is not None:
            self._observer(self.config.before_step, hook_rules.BEFORE_STEP, index, name)
        if self.job.control.aborted or (halt is not None and halt.is_set()):
            record.status, record.kind = "cancelled", CANCEL
            return self._finish(record, started, group, set())
        self.send_start(index, name, group=group)
        for path in self.env_files(index):
            path.write_text("", encoding="utf-8")
        accessed: set[str] = set()
        result = self._attempts(step, name, index, halt, accessed)
        record.started = True
        self.job.env.apply_files(*self.env_files(index))
        record.status, record.error, record.exit_code, record.kind = (
            result.status,
            result.error,
            result.exit_code,
            result.kind,
        )
        if result.status == "success":
            value = result.value
            if isinstance(value, _CheckResult):
                record.check_outcome, record.drift_summary = value.outcome, value.summary
                if value.outcome == "in sync":
                    record.status = "skipped"
                value = value.value
            try:
                record.outputs = normalize_outputs(value, step.outputs, name)
            except OutputValidationError as exc:
                record.status, record.error = "failed", str(exc)
        record = self._finish(record, started, group, accessed)
        if group is None and (record.outputs is not None or record.status == "success"):
            self.job.outputs.record(name, record.outputs)
        if self.config.after_step is not None and record.kind not in (CANCEL, JOB_TIMEOUT):
            self._observer(self.config.after_step, hook_rules.AFTER_STEP, index, name)
        return record

    def _finish(
        self, record: StepRecord, started: float, group: str | None, accessed: set[str]
    ) -> StepRecord:
        record.duration_ms = round((time.monotonic() - started) * 1000)
        self.send_complete(record, group=group, accessed=accessed)
        return record

    def _unit_fn(self, step: Any, token: CancelToken) -> Callable[[StepContext], Any]:
        if step.check is None:
            run: Callable[[StepContext], Any] = step.run
            return run
        mode = self.config.run_mode

        def checked(ctx: StepContext) -> _CheckResult:
            drift = call_maybe_async(step.check, (ctx,), token)
            if drift is None:
                value = call_maybe_async(step.when_in_sync, (ctx,), token) if step.when_in_sync else None
                ctx.log.info("in sync")
                return _CheckResult("in sync", value, None)
            summary = str(call_maybe_async(step.summarize, (drift,), token))
            ctx.log.info("drift: %s", summary)
            if mode != "apply":
                return _CheckResult("would change", None, summary)
            return _CheckResult("applied", call_maybe_async(step.run, (ctx, drift), token), summary)

        return checked

    def _attempts(
        self, step: Any, name: str, index: int, halt: threading.Event | None, accessed: set[str]
    ) -> UnitOutcome:
        retry = step.retry
        attempts = retry.max_attempts if retry is not None else 1
        timeout_s = float(step.timeout) if step.timeout is not None else self.config.default_step_timeout_s
        result = UnitOutcome("cancelled", kind=CANCEL)
        for attempt in range(1, attempts + 1):
            token = self.job.control.new_token(loop_unit=True)
            with self._lock:
                self._active_tokens[index] = token
            if halt is not None and halt.is_set():
                token.cancel(SIBLING_FAILED)
            ctx, runtime = self.context(index, token, name)
            result = run_unit(
                self._unit_fn(step, token),
                (ctx,),
                index=index,
                token=token,
                timeout_s=timeout_s,
                job_deadline=self.config.job_deadline,
                capture=self.capture,
                outputs=self.job.outputs,
                timeout_message=f"Step '{name}' timed out after {round(timeout_s * 1000)}ms",
                job_timeout_message=self.job_timeout_message(),
            )
            with self._lock:
                self._active_tokens.pop(index, None)
            self.job.control.release(token)
            accessed |= runtime.accessed
            self.log_traceback(index, result)
            if result.status == "success" or result.kind in (CANCEL, JOB_TIMEOUT) or attempt == attempts:
                return result
            if not self._should_retry(retry, result, index):
                return result
            wait = retry.wait_after(attempt)
            self.log(
                index, f"[kici] Step '{name}' attempt {attempt}/{attempts} failed; retrying in {wait:g}s"
            )
            interrupted = self._sleep(wait, halt)
            if interrupted is not None:
                return interrupted
        return result

    def log_traceback(self, index: int, result: UnitOutcome) -> None:
        """A user exception's traceback goes to the step log (masked); a ``ShellError`` already streamed."""
        exc = result.exception
        if exc is not None and not isinstance(exc, ShellError):
            self.log(index, "".join(traceback.format_exception(exc)).rstrip())

    def _should_retry(self, retry: Any, result: UnitOutcome, index: int) -> bool:
        if retry.retry_if is None:
            return True
        error = result.exception or TimeoutError(result.error or "timed out")
        try:
            return bool(retry.retry_if(error))
        except Exception as exc:
            self.log(index, f"[kici] retry_if raised {type(exc).__name__}: {exc}; not retrying")
            return False

    def _sleep(self, seconds: float, halt: threading.Event | None) -> UnitOutcome | None:
        """A retry wait that a cancel, a sibling failure or the job deadline interrupts."""
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            if self.job.control.aborted or (halt is not None and halt.is_set()):
                return UnitOutcome("cancelled", error=self.job.control.reason or "cancelled", kind=CANCEL)
            deadline = self.config.job_deadline
            if deadline is not None and now >= deadline:
                return UnitOutcome("failed", error=self.job_timeout_message(), kind=JOB_TIMEOUT)
            if now >= end:
                return None
            self.job.control.wait_aborted(min(_SLICE_S, end - now))

    def cancel_step(self, index: int, reason: str) -> None:
        with self._lock:
            token = self._active_tokens.get(index)
        if token is not None:
            token.cancel(reason)

    # --- parallel groups --------------------------------------------------------------------------

    def run_group(self, entry: NamedEntry, first_index: int) -> list[StepRecord]:
        group: Any = entry.entry
        group_name = entry.name
        children = list(entry.children)
        window = group.max_parallel or len(children)
        records: dict[int, StepRecord] = {}
        halt = threading.Event()
        finished = threading.Condition()
        done: list[int] = []
        queue = deque(enumerate(children))
        for position, child in list(queue)[window:]:
            self.send_start(first_index + position, child.name, state="pending", group=group_name)

        def run_child(position: int, child: NamedEntry) -> None:
            try:
                records[position] = self.run_step(child, first_index + position, group=group_name, halt=halt)
            finally:
                with finished:
                    done.append(position)
                    finished.notify_all()

        running: set[int] = set()
        while True:
            while queue and len(running) < window and not halt.is_set() and not self.job.control.aborted:
                position, child = queue.popleft()
                running.add(position)
                threading.Thread(target=run_child, args=(position, child), daemon=True).start()
            if not running:
                break
            with finished:
                while not done:
                    finished.wait(SIGNAL_SLICE_S)
                completed, done[:] = list(done), []
            for position in completed:
                running.discard(position)
                record = records.get(position)
                if record is not None and record.hard_failure and group.fail_fast and not halt.is_set():
                    halt.set()
                    for other in running:
                        self.cancel_step(first_index + other, SIBLING_FAILED)
        for position, child in queue:
            record = StepRecord(child.name, first_index + position, "cancelled", step=child.entry)
            self.send_complete(record, group=group_name)
            records[position] = record
        ordered = [records[position] for position in sorted(records)]
        for record in ordered:
            if record.outputs is not None or record.status == "success":
                self.job.outputs.record(record.name, record.outputs)
        return ordered


__all__ = ["DEFAULT_STEP_TIMEOUT_MS", "SIBLING_FAILED", "JobConfig", "StepDriver", "StepRecord"]
