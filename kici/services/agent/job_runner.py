"""One dispatched job through the eight phases of 10 §4: receive, clone, load, rules, matrix, steps,
report, cleanup (EXE-06).

The agent does receive, clone, report and cleanup; load, rules, matrix and the step loop belong to the
sandboxed runner process (``kici.services.runner``), driven through ``runner_client`` exactly as
``kici run local`` drives it. Before the runner starts the agent sends ``job.context`` (sandbox,
working directory, git ref, the job env with masked values). The rest is translation: runner
``step.start``/``step.complete`` become ``step.status`` (pinned: never lost in an outage), runner
log lines become ``log.chunk`` batches (:mod:`.job_logs`), the runner's ``job.complete`` becomes the
terminal ``job.status`` whose ``data`` the orchestrator's tracker reads (``durationMs``, ``error``,
``outputs``, ``stepResults``, ``ruleResults``, the special-job fields). Heartbeats go out every
``job_heartbeat_interval_ms``.

Secrets (SEC-10/14/15): the dispatch's ``secrets`` and ``namespacedSecrets`` are merged into the
runner's ``execute`` request, which travels over the IPC socket; they are never in the sandbox's
environment (built from the ISO-04 allowlist only), never in the workspace, and every string the
agent sends — log lines, step and job errors, outputs, its own phase lines — is masked against them
and against the clone credentials first.

Stopping a job (EXE-13, ISO-10): a graceful cancel sends the runner ``abort`` (its cancel hooks run,
bounded by the agent watchdog: grace + hook timeout + 5 s, then force); a force cancel, or any second
cancel, sends ``abort{force}`` and kills the runner's process group at once. A cancel before the runner
started ends the job ``cancelled`` without hooks. The job deadline (``jobConfig.timeout`` ms) is armed
when the clone starts; the runner arms its own copy, and the agent's backstop (deadline + margin)
force-stops a runner that overran it. Cleanup (the job directory is removed) always runs.

Choices where the spec is silent:

* A job whose ``cancel`` arrived before the runner reported ``success`` is reported ``cancelled``: the
  orchestrator already moved it to ``cancelling``, which has no way back to ``success``.
* Stopped by an agent shutdown, a job ends ``failed`` ("agent shutting down ..."), not ``cancelled``:
  nobody asked to cancel it, and a failed job is what a user reruns.
* The agent's backstop reports a job timeout as ``failed`` with the runner's wording
  (``job_timeout: job exceeded its timeout of <ms>ms``) and ``data.timeoutReason = job_timeout``; the
  wire has no ``timed_out`` job state.
* Steps the runner started but never finished (a crash, a force cancel) are closed by the agent:
  ``cancelled`` when the job was cancelled, ``failed`` otherwise.
* The lock file in the checkout gives what the dispatch does not carry: the job's static ``env`` and
  its fan-out position (``ctx.fanout``). A checkout without a readable lock still runs: the runner
  loads the workflow module and checks its content hash itself.
* Every job ends with one ``job phases`` info line in the agent's own log: when the dispatch arrived
  (``received_at``, epoch seconds, to line up with the orchestrator's ``job dispatched``) and how long
  each phase took (``prepare_ms``, ``clone_ms``, ``load_ms``: lock facts and ``job.context``,
  ``runner_start_ms``: sandbox and interpreter up to the runner's ``ready``, ``first_step_ms``:
  ``ready`` to the first ``step.start``, ``total_ms``; ``warm_runner``: the job ran on a pre-started
  runner, whose start then costs it nothing). A phase that did not happen is absent. It is
  what ``scripts/bench/latency.py`` breaks the webhook-to-step latency down with, and what an
  operator reads when one job was slow to start.
* A job offered a pre-started runner (:mod:`.warm`) works in that runner's directory and sends it
  ``execute``; if the runner died while waiting, the job starts its own as usual. Either way it is
  handed back when the job ends and reaped before the directory is removed.
* Runner requests that need an orchestrator round trip (``event.emit``, ``agent.api.request``,
  ``concurrency.report``) get the runner client's default answers: the ``Outbound`` port has no
  request path yet. Secret outputs are never forwarded in plaintext; without a sealing adapter
  (SEC-16) they are dropped with a log line.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import re
import shutil
import signal
import stat
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal

import attrs
import structlog
import trio

from kici.adapters.clock import Clock
from kici.domain.config.schema import AgentConfig, ExecutionMode
from kici.domain.dynamic import INIT_VALUE_TIMEOUT_MS
from kici.domain.execution_mode import (
    AgentExecution,
    ContainerRequest,
    InvalidContainerConfig,
    parse_container,
    select_execution_mode,
)
from kici.domain.lockfile import FrozenDict, LockFile, LockJob, parse_lock
from kici.domain.logstream import LogStreamConfig
from kici.domain.ports import NetworkMode, Sandbox, SandboxSpec
from kici.domain.protocol import (
    ConcurrencyKind,
    EnvVar,
    EnvVarCategory,
    JobContext,
    JobContextInfo,
    JobDispatch,
    JobHeartbeat,
    JobState,
    JobStatus,
    StepState,
    StepStatus,
    StepType,
)
from kici.domain.runner_ipc import (
    DynamicRequest,
    ExecuteRequest,
    JobComplete,
    LogLine,
    RunMode,
    RunnerMode,
    StepComplete,
    StepStart,
    to_json,
)
from kici.domain.sandbox_env import sandbox_env
from kici.sdk.masking import Masker
from kici.services.agent.job_logs import PREPARE_STEP_INDEX, JobLogs
from kici.services.agent.mirror import CloneError, MirrorStore, credentials_for
from kici.services.agent.ports import Outbound
from kici.services.agent.warm import WarmRunner
from kici.services.local.engine import step_names
from kici.services.local.plan import plan_workflow
from kici.services.runner_client import (
    AbortLadder,
    RunnerCallbacks,
    RunnerClient,
    RunnerStartError,
    grace_budget,
    kill_tree,
    open_runner,
)

_log = structlog.get_logger("kici.agent.job")

LOCK_FILE: Final = "kici.lock.json"
DEFAULT_WARM_RUNNERS: Final = 1
DEFAULT_KICI_DIR: Final = ".kici"
SHUTDOWN_REASON: Final = "agent shutting down: the job did not finish within the shutdown grace"
_SAFE_DIR: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_RUN_MODES: Final = ("apply", "check", "check-fail-on-drift")


def timeout_message(timeout_ms: int) -> str:
    return f"job_timeout: job exceeded its timeout of {timeout_ms}ms"


@attrs.frozen(kw_only=True)
class JobSettings:
    """The agent's knobs for running jobs; :meth:`from_config` reads them from the agent config.

    ``masked`` holds extra values masked in everything a job sends (e.g. the agent's own token). The
    ISO-10 ladder times (``abort_wait_s``, ``term_wait_s``), the hook timeout of the cancel watchdog and
    the backstop margin are constants of the spec; they are settings so tests can shrink them.
    """

    agent_id: str
    max_concurrency: int = 1
    job_heartbeat_interval_ms: int = 60_000
    default_step_timeout_ms: int | None = None
    max_log_size_bytes: int = 10_485_760
    network: NetworkMode = "isolated"
    default_grace_s: float = 30.0
    backend_max_grace_s: float = 30.0
    hook_timeout_s: float = 300.0
    abort_wait_s: float = 10.0
    term_wait_s: float = 5.0
    timeout_margin_s: float = 5.0
    ready_timeout_s: float = 30.0
    git_timeout_s: float = 600.0
    python: str | None = None
    warm_runners: int = 0
    """Runners kept started ahead of their job (:mod:`.warm`); the daemon keeps
    :data:`DEFAULT_WARM_RUNNERS`, tests that count processes keep none."""
    masked: tuple[str, ...] = attrs.field(default=(), repr=False)
    execution: AgentExecution = attrs.field(factory=AgentExecution)
    """The agent's inputs to the ISO-11 mode rules; a job's container config is the other one."""

    @classmethod
    def from_config(cls, config: AgentConfig, agent_id: str) -> JobSettings:
        execution = config.execution
        return cls(
            agent_id=agent_id,
            max_concurrency=execution.max_concurrent_jobs,
            job_heartbeat_interval_ms=execution.job_heartbeat_interval_ms,
            default_step_timeout_ms=execution.default_step_timeout_ms,
            max_log_size_bytes=config.logs.max_log_size_bytes,
            network="isolated" if execution.sandbox_network.value == "isolated" else "host",
            warm_runners=DEFAULT_WARM_RUNNERS,
            masked=tuple(v for v in (config.connection.token, execution.github_token) if v),
            execution=AgentExecution.from_config(config),
        )


class JobConfigError(ValueError):
    """``jobConfig`` lacks what the runner needs, or has it in the wrong shape."""


@attrs.frozen(kw_only=True)
class JobSpec:
    """What the agent reads from ``job.dispatch.jobConfig`` (the orchestrator's ``runs.py`` writes it).

    ``job_name`` is the row's name (``test (a)`` for a matrix child); ``lock_job_name`` the lock job the
    runner loads. ``mode``/``dynamic``/``init_target`` select the special job types of 10 §4.
    """

    workflow_name: str
    workflow_file: str
    workflow_export: str | None = None
    kici_dir: str = DEFAULT_KICI_DIR
    job_name: str
    lock_job_name: str
    content_hash: str | None = None
    resolved_hash_files: tuple[str, ...] | None = None
    event: Mapping[str, Any] | None = None
    matrix: Mapping[str, Any] | None = None
    timeout_ms: int | None = None
    grace_period_s: float | None = None
    env: Mapping[str, str] = attrs.field(factory=dict)
    dispatch_inputs: Mapping[str, Any] = attrs.field(factory=dict)
    run_mode: RunMode = "apply"
    is_test_run: bool | None = None
    provider: str | None = None
    mode: RunnerMode = "job"
    dynamic: DynamicRequest | None = None
    init_target: str | None = None
    container: ContainerRequest | None = None


def _get(config: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = config.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise JobConfigError(f"jobConfig.{key} must be {what}, got a boolean")
    if not isinstance(value, kind):
        raise JobConfigError(f"jobConfig.{key} must be {what}, got {type(value).__name__}")
    return value


def _required_str(config: Mapping[str, Any], key: str) -> str:
    value = _get(config, key, str, "a string")
    if not value:
        raise JobConfigError(f"jobConfig.{key} is required")
    return str(value)


def _str_map(config: Mapping[str, Any], key: str) -> dict[str, str]:
    value = _get(config, key, Mapping, "an object")
    return {str(k): str(v) for k, v in (value or {}).items()}


def _kici_dir(workflow_file: str) -> str:
    """``.kici`` of ``.kici/workflows/ci.py`` (or ``sub/.kici`` of ``sub/.kici/workflows/x.py``)."""
    parts = PurePosixPath(workflow_file).parts
    if "workflows" in parts[1:]:
        return str(PurePosixPath(*parts[: parts.index("workflows", 1)]))
    return DEFAULT_KICI_DIR


def parse_job_spec(config: Mapping[str, Any]) -> JobSpec:
    """Read and check ``jobConfig``; raises :class:`JobConfigError` naming the first bad key."""
    if not isinstance(config, Mapping):
        raise JobConfigError("jobConfig must be an object")
    source = _get(config, "source", Mapping, "an object") or {}
    workflow_file = source.get("file")
    if not isinstance(workflow_file, str) or not workflow_file:
        raise JobConfigError("jobConfig.source.file is required")
    export = source.get("export")
    if export is not None and not isinstance(export, str):
        raise JobConfigError("jobConfig.source.export must be a string")
    workflow_name = _required_str(config, "workflowName")
    lock_job_name = _get(config, "lockJobName", str, "a string")
    job_name = _get(config, "jobName", str, "a string") or lock_job_name
    if not job_name:
        raise JobConfigError("jobConfig.jobName is required")
    timeout = _get(config, "timeout", int, "an integer (milliseconds)")
    if timeout is not None and timeout <= 0:
        raise JobConfigError("jobConfig.timeout must be > 0")
    grace = _get(config, "gracePeriodS", (int, float), "a number (seconds)")
    if grace is not None and (grace < 0 or not math.isfinite(grace)):
        raise JobConfigError("jobConfig.gracePeriodS must be a finite number >= 0")
    hashes = _get(config, "resolvedHashFiles", list, "a list")
    run_mode: RunMode = config.get("checkMode") or "apply"
    if run_mode not in _RUN_MODES:
        raise JobConfigError(f"jobConfig.checkMode must be one of {', '.join(_RUN_MODES)}")
    env = _str_map(config, "env") | _str_map(config, "environmentVars") | _str_map(config, "jobEnv")
    mode: RunnerMode = "job"
    dynamic: DynamicRequest | None = None
    init_target: str | None = None
    if config.get("dynamicJobFn"):
        mode = "dynamic"
        index = _get(config, "generatorIndex", int, "an integer")
        if index is None or index < 0:
            raise JobConfigError("jobConfig.generatorIndex is required for a dynamicJobFn job")
        group = _get(config, "group", str, "a string")
        dynamic = DynamicRequest(
            index=index,
            group=None if group is None or group.startswith("__dynamic__") else group,
            result_aware=bool(config.get("resultAware")) or None,
            timeout_ms=_get(config, "timeoutMs", int, "an integer (milliseconds)"),
            needs=_get(config, "needs", Mapping, "an object"),
        )
    elif config.get("initOnly"):
        mode = "init"
        init_target = _required_str(config, "targetJobName")
    elif (origin := _get(config, "dynamicSource", Mapping, "an object")) is not None:
        index = origin.get("index")
        expected = origin.get("expectedJobNames")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise JobConfigError("jobConfig.dynamicSource.index must be an integer >= 0")
        dynamic = DynamicRequest(
            index=index,
            expected_job_names=None if expected is None else tuple(str(n) for n in expected),
            needs=origin.get("needs") if isinstance(origin.get("needs"), Mapping) else None,
        )
    if mode == "job" and not lock_job_name:
        raise JobConfigError("jobConfig.lockJobName is required")
    try:
        container = parse_container(config.get("container"))
    except InvalidContainerConfig as exc:
        raise JobConfigError(str(exc)) from None
    return JobSpec(
        workflow_name=workflow_name,
        workflow_file=workflow_file,
        workflow_export=export,
        kici_dir=_get(config, "kiciDir", str, "a string") or _kici_dir(workflow_file),
        job_name=job_name,
        lock_job_name=lock_job_name or job_name,
        content_hash=_get(config, "contentHash", str, "a string"),
        resolved_hash_files=None if hashes is None else tuple(str(h) for h in hashes),
        event=_get(config, "event", Mapping, "an object"),
        matrix=_get(config, "matrixValues", Mapping, "an object"),
        timeout_ms=timeout,
        grace_period_s=None if grace is None else float(grace),
        env=env,
        dispatch_inputs=_get(config, "dispatchInputs", Mapping, "an object") or {},
        run_mode=run_mode,
        is_test_run=_get(config, "isTestRun", bool, "a boolean"),
        provider=_get(config, "provider", str, "a string"),
        mode=mode,
        dynamic=dynamic,
        init_target=init_target,
        container=container,
    )


@attrs.frozen(kw_only=True)
class LockFacts:
    """What the checkout's lock file adds for one job; ``problem`` says why it added nothing."""

    env: Mapping[str, str] = attrs.field(factory=dict)
    fanout_index: int | None = None
    fanout_total: int | None = None
    step_names: tuple[str, ...] = ()
    problem: str | None = None


def read_lock_facts(workspace: Path, spec: JobSpec) -> LockFacts:
    """The job's static env, fan-out position and step names from ``<kici_dir>/kici.lock.json``."""
    path = workspace / spec.kici_dir / LOCK_FILE
    try:
        lock: LockFile = parse_lock(path.read_bytes())
    except OSError:
        return LockFacts(problem=f"no lock file at {spec.kici_dir}/{LOCK_FILE}")
    except Exception as exc:
        return LockFacts(problem=f"the lock file cannot be read: {exc}")
    workflow = next((w for w in lock.workflows if w.name == spec.workflow_name), None)
    if workflow is None:
        return LockFacts(problem=f"the lock file has no workflow '{spec.workflow_name}'")
    job = next((j for j in workflow.jobs if isinstance(j, LockJob) and j.name == spec.lock_job_name), None)
    if job is None or spec.mode != "job":
        return LockFacts()
    env = {str(k): str(v) for k, v in job.env.items()} if isinstance(job.env, FrozenDict) else {}
    try:
        planned = plan_workflow(workflow).by_name.get(spec.job_name)
    except Exception as exc:
        return LockFacts(env=env, step_names=tuple(step_names(job)), problem=f"planning failed: {exc}")
    return LockFacts(
        env=dict(planned.env) if planned is not None and planned.env is not None else env,
        fanout_index=None if planned is None else planned.fanout_index,
        fanout_total=None if planned is None else planned.fanout_total,
        step_names=tuple(step_names(job)),
    )


def runner_env(sandbox: Sandbox, host_env: Mapping[str, str]) -> dict[str, str]:
    """ISO-04: the allowlisted host variables only; under bwrap home and temp are the private /tmp.

    The same for every job of an agent, which is what lets a runner start before its job
    (:mod:`.warm`)."""
    extra = {"HOME": "/tmp", "TMPDIR": "/tmp"} if sandbox.name == "bwrap" else {}
    return sandbox_env(host_env, extra)


def unavailable_mode(execution: AgentExecution, spec: JobSpec) -> str | None:
    """Why this agent cannot run ``spec`` in the mode the ISO-11 rules pick for it (None: it can).

    The agent's own mode was checked at startup (bare-metal is the only backend of this build), so only
    a container asked for by the dispatch can land here.
    """
    choice = select_execution_mode(execution, spec.container)
    if choice.mode is ExecutionMode.BARE_METAL:
        return None
    image = f", image {spec.container.image!r}" if spec.container is not None else ""
    return (
        f"execution mode {choice.mode.value} ({choice.source.value}{image}) is not available on this "
        "agent: it runs steps bare-metal only; run the job on an agent with that backend or drop its "
        "container"
    )


def merged_secrets(dispatch: JobDispatch) -> dict[str, str]:
    """SEC-14: flat secrets, then every namespace in order (later wins)."""
    merged = dict(dispatch.secrets or {})
    for namespace in (dispatch.namespaced_secrets or {}).values():
        merged.update(namespace)
    return merged


def job_masker(dispatch: JobDispatch, settings: JobSettings) -> Masker:
    """Every secret value the dispatch carries, the clone credentials and the agent's own secrets."""
    values = [*merged_secrets(dispatch).values(), *settings.masked]
    values += list((dispatch.install_env_secrets or {}).values())
    values += [r.token for r in dispatch.npm_registries or ()] + [
        p.token for p in dispatch.package_indexes or ()
    ]
    for auth in (dispatch.source_auth, dispatch.workflow_auth):
        if auth is not None:
            values.append(auth.secret)
    credentials = credentials_for(dispatch.token, dispatch.source_auth)
    if credentials is not None:
        values += credentials.sensitive()
    if dispatch.token:
        values.append(dispatch.token)
    return Masker(values)


def _job_dir_name(job_id: str) -> str:
    """A fresh directory name per job run: the id when it is a safe name, plus a random suffix."""
    stem = job_id if _SAFE_DIR.fullmatch(job_id) else "job-" + uuid.uuid5(uuid.NAMESPACE_URL, job_id).hex
    return f"{stem}.{uuid.uuid4().hex[:8]}"


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def remove_tree(path: Path) -> None:
    """``rm -rf`` that also clears directories a step made read-only."""

    def retry(function: Callable[..., Any], target: str, _exc: object) -> None:
        parent = os.path.dirname(target)
        for item in (parent, target):
            with contextlib.suppress(OSError):
                os.chmod(item, os.stat(item).st_mode | stat.S_IRWXU)
        with contextlib.suppress(OSError):
            function(target)

    shutil.rmtree(path, onerror=retry)


StopKind = Literal["cancel", "timeout", "shutdown"]


@attrs.frozen
class _Stop:
    kind: StopKind
    force: bool
    reason: str


@attrs.frozen
class _Outcome:
    state: JobState
    error: str | None = None
    complete: JobComplete | None = None
    timed_out: bool = False


_TERMINAL_STEP: Final = {
    "success": StepState.SUCCESS,
    "failed": StepState.FAILED,
    "skipped": StepState.SKIPPED,
    "cancelled": StepState.CANCELLED,
}
_STEP_TYPES: Final = {t.value: t for t in StepType}
_KINDS: Final = {k.value: k for k in ConcurrencyKind}


class JobRunner:
    """One job; :meth:`run` never raises (apart from the cancellation of the agent itself).

    ``on_reported`` is called once, right after the terminal ``job.status`` was handed to the link.
    """

    def __init__(
        self,
        dispatch: JobDispatch,
        *,
        settings: JobSettings,
        outbound: Outbound,
        sandbox: Sandbox,
        mirrors: MirrorStore,
        jobs_root: Path,
        clock: Clock,
        host_env: Mapping[str, str],
        on_reported: Callable[[JobRunner], None] = lambda _job: None,
        warm: WarmRunner | None = None,
    ) -> None:
        self.dispatch = dispatch
        self.job_id = dispatch.job_id
        self.run_id = dispatch.run_id
        self.settings = settings
        self._outbound = outbound
        self._sandbox = sandbox
        self._mirrors = mirrors
        self._clock = clock
        self._host_env = dict(host_env)
        self._on_reported = on_reported
        self._warm = warm
        self.directory = warm.directory if warm is not None else jobs_root / _job_dir_name(dispatch.job_id)
        self.workspace = self.directory / "workspace"
        self.masker = job_masker(dispatch, settings)
        self.logs = JobLogs(
            run_id=self.run_id,
            job_id=self.job_id,
            outbound=outbound,
            masker=self.masker,
            now_ms=self._now_ms,
            config=LogStreamConfig(max_bytes=dispatch.max_log_size_bytes or settings.max_log_size_bytes),
        )
        self.spec: JobSpec | None = None
        self.reported = False
        self.finished = trio.Event()
        self._stop: _Stop | None = None
        self._stop_changed = trio.Event()
        self._prep_scope: trio.CancelScope | None = None
        self._client: RunnerClient | None = None
        self._deadline: float | None = None
        self._started = 0.0
        self._received_at = 0.0
        self._marks: dict[str, float] = {}
        self._ran_warm = False
        self._names: dict[int, str] = {}
        self._types: dict[int, str | None] = {}
        self._open: set[int] = set()

    # --- control (called by the job manager) ------------------------------------------------------

    def cancel(self, *, force: bool, reason: str) -> None:
        """A ``job.cancel``: graceful first; a forced one, or any second cancel, forces (10 §6)."""
        self._request_stop(_Stop("cancel", force or self._stop is not None, reason))

    def shut_down(self) -> None:
        """The agent is going away and the job is still running: stop it now (force, no hooks)."""
        self._request_stop(_Stop("shutdown", True, SHUTDOWN_REASON))

    def _request_stop(self, stop: _Stop) -> None:
        current = self._stop
        if current is None:
            self._stop = stop
        elif stop.force and not current.force:
            self._stop = attrs.evolve(current, force=True)
        else:
            return
        self._stop_changed.set()

    # --- the job ----------------------------------------------------------------------------------

    async def run(self) -> None:
        outcome: _Outcome | None = None
        self._started = trio.current_time()
        self._received_at = self._clock.now().timestamp()
        try:
            try:
                outcome = await self._supervised()
            except Exception as exc:
                outcome = _Outcome(JobState.FAILED, f"agent error: {_describe(exc)}")
        finally:
            if outcome is None:
                outcome = _Outcome(JobState.FAILED, "agent stopped before the job finished")
            try:
                self._report(outcome)
            except Exception as exc:
                self._operational(f"job {self.job_id}: the terminal status could not be sent: {exc!r}")
            self.reported = True
            self._on_reported(self)
            self._log_phases(outcome)
            with trio.CancelScope(shield=True):
                await self._release_warm()
                await self._cleanup()
                self.finished.set()

    async def _supervised(self) -> _Outcome:
        self._send_status(JobState.RUNNING)
        self._operational(f"job {self.job_id} (run {self.run_id}) started")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeats)
            nursery.start_soon(self._watch_stops)
            nursery.start_soon(self.logs.run)
            try:
                return await self._phases()
            finally:
                nursery.cancel_scope.cancel()

    async def _phases(self) -> _Outcome:
        try:
            spec = self.spec = parse_job_spec(self.dispatch.job_config)
        except JobConfigError as exc:
            return _Outcome(JobState.FAILED, f"invalid job.dispatch: {exc}")
        unavailable = unavailable_mode(self.settings.execution, spec)
        if unavailable is not None:
            return _Outcome(JobState.FAILED, unavailable)
        self._log(
            f"[kici] Job '{spec.job_name}' of workflow '{spec.workflow_name}' on {self.settings.agent_id}"
        )
        if spec.timeout_ms is not None:
            self._deadline = trio.current_time() + spec.timeout_ms / 1000
        facts = LockFacts()
        with trio.CancelScope(deadline=math.inf if self._deadline is None else self._deadline) as scope:
            self._prep_scope = scope
            if self._stop is not None:
                scope.cancel()
            try:
                self._mark("clone_start")
                await self._clone(spec)
                self._mark("clone_done")
            except CloneError as exc:
                return _Outcome(JobState.FAILED, f"clone failed: {exc}")
            facts = await trio.to_thread.run_sync(read_lock_facts, self.workspace, spec)
        self._prep_scope = None
        if scope.cancelled_caught or self._stop is not None:
            return self._stopped(None)
        if facts.problem is not None:
            self._log(f"[kici] Lock file: {facts.problem}; running from the workflow module alone")
        self._names = dict(enumerate(facts.step_names))
        request = self._request(spec, facts)
        self._send_context(request)
        complete = await self._execute(request)
        return self._outcome(complete)

    async def _clone(self, spec: JobSpec) -> None:
        dispatch = self.dispatch
        self.directory.mkdir(parents=True, exist_ok=True)
        checkout = await self._mirrors.checkout(
            repo_url=dispatch.repo_url,
            sha=dispatch.sha,
            ref=dispatch.ref,
            dest=self.workspace,
            scope=dispatch.org_id or "",
            credentials=credentials_for(dispatch.token, dispatch.source_auth),
            log=self._log,
            mask=self.masker.mask,
        )
        mirror = "new mirror" if checkout.created else "warm mirror"
        source = "fetched" if checkout.fetched else "already in the mirror"
        self._operational(f"job {self.job_id}: checked out {checkout.sha[:12]} ({mirror}, {source})")

    def _request(self, spec: JobSpec, facts: LockFacts) -> ExecuteRequest:
        dispatch = self.dispatch
        if spec.mode == "dynamic":
            job_name = spec.job_name
        elif spec.mode == "init":
            job_name = spec.init_target or spec.job_name
        else:
            job_name = spec.lock_job_name
        return ExecuteRequest(
            workflow_file=spec.workflow_file,
            workflow_export=spec.workflow_export,
            workflow_name=spec.workflow_name,
            kici_dir=spec.kici_dir,
            job_name=job_name,
            job_display_name=spec.job_name,
            workspace=str(self.workspace),
            content_hash=spec.content_hash,
            resolved_hash_files=spec.resolved_hash_files,
            matrix=spec.matrix,
            event=spec.event,
            secrets=merged_secrets(dispatch),
            env={**facts.env, **spec.env},
            upstream_job_outputs=dict(dispatch.upstream_job_outputs or {}),
            upstream_job_statuses={k: v.value for k, v in (dispatch.upstream_job_statuses or {}).items()},
            dispatch_inputs=spec.dispatch_inputs,
            grace_period_s=spec.grace_period_s,
            job_timeout_ms=spec.timeout_ms,
            default_step_timeout_ms=self.settings.default_step_timeout_ms,
            run_mode=spec.run_mode,
            fanout_index=facts.fanout_index,
            fanout_total=facts.fanout_total,
            is_test_run=spec.is_test_run,
            provider=spec.provider,
            mode=spec.mode,
            dynamic=spec.dynamic,
            init_timeout_ms=INIT_VALUE_TIMEOUT_MS if spec.mode == "init" else None,
        )

    def _grace_s(self) -> float:
        grace = self.spec.grace_period_s if self.spec is not None else None
        return min(
            self.settings.default_grace_s if grace is None else grace, self.settings.backend_max_grace_s
        )

    async def _execute(self, request: ExecuteRequest) -> JobComplete:
        settings = self.settings
        inside = self._sandbox.workspace_inside(SandboxSpec(workspace=str(self.workspace), argv=("runner",)))
        ladder = AbortLadder(
            abort_wait_s=settings.abort_wait_s,
            term_wait_s=settings.term_wait_s,
            graceful_budget_s=grace_budget(self._grace_s(), (settings.hook_timeout_s,)),
        )
        callbacks = RunnerCallbacks(
            on_step_start=self._step_started,
            on_log_line=self._log_line,
            on_step_complete=self._step_completed,
            on_output=self._runner_output,
        )
        request = attrs.evolve(request, workspace=inside)
        warm = self._warm
        if warm is not None and warm.alive:
            self._ran_warm = True
            self._mark("runner_spawn")
            self._mark("runner_ready")
            warm.client.bind(callbacks, ladder)
            try:
                complete = await self._drive(warm.client, request)
            finally:
                warm.release()
            if warm.error is not None:
                raise warm.error
            return complete
        try:
            self._mark("runner_spawn")
            async with open_runner(
                self._sandbox,
                workspace=str(self.workspace),
                env=runner_env(self._sandbox, self._host_env),
                callbacks=callbacks,
                network=settings.network,
                python=settings.python,
                ready_timeout_s=settings.ready_timeout_s,
                ladder=ladder,
            ) as client:
                self._mark("runner_ready")
                return await self._drive(client, request)
        except RunnerStartError as exc:
            return JobComplete(status="failed", error=f"the workflow runner did not start: {exc}")

    async def _drive(self, client: RunnerClient, request: ExecuteRequest) -> JobComplete:
        """Send ``execute`` and wait for the runner's result, with the backstop armed."""
        self._client = client
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._backstop)
                await self._apply_stop()
                complete = await client.execute(request)
                nursery.cancel_scope.cancel()
        finally:
            self._client = None
        return complete

    def _send_context(self, request: ExecuteRequest) -> None:
        """Phase 1's ``job.context``: where and how the job runs, env values masked (secrets never listed)."""
        inside = self._sandbox.workspace_inside(SandboxSpec(workspace=str(self.workspace), argv=("runner",)))
        env_vars = [
            EnvVar(name=name, value=self.masker.mask(value), category=EnvVarCategory.USER)
            for name, value in sorted(request.env.items())
        ]
        self._outbound.send_direct(
            JobContext(
                run_id=self.run_id,
                job_id=self.job_id,
                context=JobContextInfo(
                    env_vars=env_vars,
                    runtime={"python": platform.python_version()},
                    sandbox_type=self._sandbox.name,
                    working_directory=inside,
                    git_ref=self.dispatch.ref or None,
                    network_isolation=self.settings.network == "isolated",
                ),
            )
        )

    async def _backstop(self) -> None:
        """The agent's own job deadline: a runner that overran it is stopped by force."""
        if self._deadline is None or self.spec is None or self.spec.timeout_ms is None:
            return
        await trio.sleep_until(self._deadline + self.settings.timeout_margin_s)
        self._request_stop(_Stop("timeout", True, timeout_message(self.spec.timeout_ms)))

    async def _watch_stops(self) -> None:
        while True:
            await self._stop_changed.wait()
            self._stop_changed = trio.Event()
            await self._apply_stop()

    async def _apply_stop(self) -> None:
        stop = self._stop
        if stop is None:
            return
        if self._prep_scope is not None:
            self._prep_scope.cancel()
            return
        client = self._client
        if client is None:
            return
        with trio.move_on_after(self.settings.abort_wait_s) as sending:
            await client.abort(force=stop.force, reason=stop.reason)
        if stop.force or sending.cancelled_caught:
            kill_tree(client.pid, signal.SIGKILL)

    # --- outcome ----------------------------------------------------------------------------------

    def _stopped(self, complete: JobComplete | None) -> _Outcome:
        """The outcome of a job the agent stopped (or whose deadline passed before the runner ran)."""
        stop = self._stop
        timeout_ms = self.spec.timeout_ms if self.spec is not None else None
        if stop is None or stop.kind == "timeout":
            return _Outcome(JobState.FAILED, timeout_message(timeout_ms or 0), complete, timed_out=True)
        if stop.kind == "shutdown":
            return _Outcome(JobState.FAILED, stop.reason, complete)
        if complete is not None and complete.status == "failed" and not stop.force:
            return _Outcome(JobState.FAILED, complete.error or stop.reason, complete)
        return _Outcome(JobState.CANCELLED, stop.reason, complete)

    def _outcome(self, complete: JobComplete) -> _Outcome:
        if self._stop is not None:
            return self._stopped(complete)
        state = {"success": JobState.SUCCESS, "failed": JobState.FAILED}.get(
            complete.status, JobState.CANCELLED
        )
        timed_out = (complete.error or "").startswith("job_timeout:")
        return _Outcome(state, complete.error, complete, timed_out=timed_out)

    def _data(self, outcome: _Outcome) -> dict[str, Any]:
        data: dict[str, Any] = {}
        complete = outcome.complete
        if complete is not None:
            data = to_json(complete)
            for key in ("type", "status", "error", "durationMs", "secretOutputs"):
                data.pop(key, None)
        data["durationMs"] = round((trio.current_time() - self._started) * 1000)
        if outcome.error:
            data["error"] = outcome.error
        if outcome.timed_out:
            data["timeoutReason"] = "job_timeout"
        spec = self.spec
        failed = outcome.state is not JobState.SUCCESS
        if spec is not None and spec.mode == "dynamic":
            data.setdefault("dynamicFailed" if failed else "dynamicComplete", True)
        if spec is not None and spec.mode == "init":
            data.setdefault("initFailed" if failed else "initComplete", True)
        masked = self.masker.mask_value(data)
        return masked if isinstance(masked, dict) else data

    # --- phase timings ---------------------------------------------------------------------------

    def _mark(self, name: str) -> None:
        self._marks.setdefault(name, trio.current_time())

    def phase_timings(self) -> dict[str, float]:
        """Milliseconds per phase so far (see the module docstring); phases not reached are absent."""
        marks = {"received": self._started, **self._marks}
        spans = (
            ("prepare_ms", "received", "clone_start"),
            ("clone_ms", "clone_start", "clone_done"),
            ("load_ms", "clone_done", "runner_spawn"),
            ("runner_start_ms", "runner_spawn", "runner_ready"),
            ("first_step_ms", "runner_ready", "first_step"),
        )
        timings = {
            name: round((marks[end] - marks[begin]) * 1000, 2)
            for name, begin, end in spans
            if begin in marks and end in marks
        }
        timings["total_ms"] = round((trio.current_time() - self._started) * 1000, 2)
        return timings

    def _log_phases(self, outcome: _Outcome) -> None:
        _log.info(
            "job phases",
            run_id=self.run_id,
            job_id=self.job_id,
            state=outcome.state.value,
            received_at=round(self._received_at, 6),
            warm_runner=self._ran_warm,
            **self.phase_timings(),
        )

    # --- report and cleanup -----------------------------------------------------------------------

    def _report(self, outcome: _Outcome) -> None:
        complete = outcome.complete
        if complete is not None and complete.secret_outputs:
            self.masker.add(complete.secret_outputs.values())
            self._log(
                f"[kici] {len(complete.secret_outputs)} secret output(s) were not forwarded: "
                "this agent cannot seal them to the run's key"
            )
        if outcome.error and outcome.state is not JobState.SUCCESS:
            self._log(f"[kici] Job {outcome.state.value}: {outcome.error}")
        self._close_open_steps(outcome)
        self.logs.finish_all()
        dropped = list(complete.dropped_jobs) if complete is not None and complete.dropped_jobs else None
        self._send_status(outcome.state, data=self._data(outcome), dropped_jobs=dropped)
        self._operational(f"job {self.job_id} finished: {outcome.state.value}")

    def _close_open_steps(self, outcome: _Outcome) -> None:
        state = StepState.CANCELLED if outcome.state is JobState.CANCELLED else StepState.FAILED
        for index in sorted(self._open):
            data: dict[str, Any] = {"durationMs": 0}
            if outcome.error:
                data["error"] = {"message": self.masker.mask(outcome.error)}
            self._send_step(index, state, data=data, log_bytes=self.logs.finish(index))
        self._open.clear()

    async def _release_warm(self) -> None:
        """Hand a pre-started runner back (used or not) and wait until its process is reaped, so the
        cleanup never races a runner still alive in the directory."""
        warm = self._warm
        if warm is None:
            return
        warm.release()
        with trio.move_on_after(self.settings.term_wait_s + self.settings.abort_wait_s):
            await warm.finished.wait()

    async def _cleanup(self) -> None:
        try:
            await trio.to_thread.run_sync(remove_tree, self.directory)
        except OSError as exc:
            self._operational(f"job {self.job_id}: could not remove {self.directory}: {exc}")
        if self.directory.exists():
            self._operational(f"job {self.job_id}: {self.directory} was not removed completely")

    async def _heartbeats(self) -> None:
        # The first beat waits one interval: ``job.status running``, sent just before, already sets
        # the job's first ``last_heartbeat_at`` (10 §START), so a beat at start was one more message
        # and transaction per job for nothing (issue 7).
        interval = self.settings.job_heartbeat_interval_ms / 1000
        while True:
            await trio.sleep(interval)
            self._outbound.send(
                JobHeartbeat(run_id=self.run_id, job_id=self.job_id, timestamp=self._now_ms())
            )

    # --- runner callbacks -------------------------------------------------------------------------

    async def _step_started(self, message: StepStart) -> None:
        self._mark("first_step")
        index = message.step_index
        self._names[index] = message.step_name
        self._types[index] = message.step_type
        self._open.add(index)
        state = StepState.PENDING if message.state == "pending" else StepState.RUNNING
        self._send_step(index, state, group_id=message.group_id, kind=message.concurrency_kind)

    async def _log_line(self, message: LogLine) -> None:
        self.logs.line(message.step_index, message.line)

    async def _step_completed(self, message: StepComplete) -> None:
        index = message.step_index
        if message.step_type is not None:
            self._types[index] = message.step_type
        self._open.discard(index)
        data: dict[str, Any] = dict(message.data or {})
        data["durationMs"] = message.duration_ms
        if message.error is not None:
            error = {"message": message.error.message, "exitCode": message.error.exit_code}
            error["signal"] = message.error.signal
            data["error"] = {k: v for k, v in error.items() if v is not None}
        for key, value in (
            ("outputs", message.outputs),
            ("checkOutcome", message.check_outcome),
            ("driftSummary", message.drift_summary),
        ):
            if value is not None:
                data[key] = value
        self._send_step(
            index,
            _TERMINAL_STEP[message.status],
            data=data,
            log_bytes=self.logs.finish(index),
            secrets=message.secrets_accessed,
            group_id=message.group_id,
            kind=message.concurrency_kind,
        )

    async def _runner_output(self, stream: str, line: str) -> None:
        """The runner's own stdout is shown like a prepare line; stderr is kept for crash reports."""
        if stream == "stdout" and line.strip():
            self.logs.line(PREPARE_STEP_INDEX, line)

    # --- sending ----------------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock.now().timestamp() * 1000)

    def _log(self, line: str) -> None:
        self.logs.line(PREPARE_STEP_INDEX, line)

    def _operational(self, line: str) -> None:
        self._outbound.stream_log(self.masker.mask(line))

    def _send_status(
        self, state: JobState, *, data: dict[str, Any] | None = None, dropped_jobs: list[str] | None = None
    ) -> None:
        self._outbound.send_pinned(
            JobStatus(
                message_id=str(uuid.uuid4()),
                run_id=self.run_id,
                job_id=self.job_id,
                state=state,
                timestamp=self._now_ms(),
                data=data,
                dropped_jobs=dropped_jobs,
            )
        )

    def _send_step(
        self,
        index: int,
        state: StepState,
        *,
        data: dict[str, Any] | None = None,
        log_bytes: int | None = None,
        secrets: tuple[str, ...] | None = None,
        group_id: str | None = None,
        kind: str | None = None,
    ) -> None:
        if index < 0:
            return
        masked = self.masker.mask_value(data) if data is not None else None
        self._outbound.send_pinned(
            StepStatus(
                message_id=str(uuid.uuid4()),
                run_id=self.run_id,
                job_id=self.job_id,
                step_index=index,
                step_name=self.masker.mask(self._names.get(index, f"step-{index + 1}")),
                state=state,
                timestamp=self._now_ms(),
                data=masked if isinstance(masked, dict) else None,
                step_type=_STEP_TYPES.get(self._types.get(index) or "step"),
                secrets_accessed=list(secrets) if secrets else None,
                concurrency_kind=_KINDS.get(kind or ""),
                group_id=group_id,
                log_bytes_streamed=log_bytes if state not in (StepState.RUNNING, StepState.PENDING) else None,
            )
        )


__all__ = [
    "DEFAULT_WARM_RUNNERS",
    "SHUTDOWN_REASON",
    "JobConfigError",
    "JobRunner",
    "JobSettings",
    "JobSpec",
    "LockFacts",
    "job_masker",
    "merged_secrets",
    "parse_job_spec",
    "read_lock_facts",
    "remove_tree",
    "runner_env",
    "timeout_message",
]
