"""Upstream telemetry: what the orchestrator tells the Platform about its runs (PRO-22, 20 §9).

Three parts, all outliving any one Platform connection:

* :class:`EventBuffer`, the upstream EventBuffer of 20 §9: the ``RingBuffer`` of 10 000 frames
  (oldest dropped first, drops counted for the replay's log line) plus the read end the link's pump
  takes frames from one at a time, so a frame taken but not written is put back at the front.
  Telemetry always goes through it: while the link is up the pump drains it at once, while it is
  down it fills, and after the next ``auth.success`` the pump replays it in order.
* :class:`Pacer`: the pump writes at most 80 % of the rates the Platform's ``WsRateLimiter`` allows
  (20 §7: 100 frames and 500 KiB per second, bursts of 200 and 2 MiB). Replaying a full buffer as
  fast as the socket takes it would be answered with ``rate.limit.warning`` (frames dropped) and,
  after 5 s, a 4003 disconnect that empties nothing; paced, a full buffer takes about two minutes.
* :class:`UpstreamForwarder`, the tracker's :class:`ExecutionObserver`: it turns "run X changed"
  into ``execution.status`` and ``job.status.forward`` frames by reading the run and its jobs and
  comparing them with what it forwarded last (so repeated or late notices cost a read, never a wrong
  or duplicate status), forwards accepted ``step.status`` as ``step.status.forward`` and ``log.chunk``
  unchanged, adds ``execution.event`` frames (``started``, ``job_completed``, ``finished``), and
  builds ``state.replay`` (active runs plus runs that ended in the replay window, 24 h by default).

Choices where the spec is silent:

* A run's live status ``held`` is sent as ``pending`` in ``execution.status`` (the wire reserves
  ``held`` for ``state.replay`` snapshots, which carry it as is).
* ``state.replay`` is split into frames of at most 1 MiB of runs, each a complete list of whole
  runs, so one frame never nears the Platform's 2 MiB burst limit; an empty replay is still one frame
  (it tells the Platform that nothing is active).
* ``job_dispatched`` execution events are not sent: a dispatch changes no status, and the job's
  ``running`` forward follows within milliseconds.
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

import attrs
import structlog
import trio

from kici.adapters.clock import Clock
from kici.adapters.postgres.database import Connection, Database
from kici.domain.buffers import UPSTREAM_EVENT_BUFFER_SIZE, RingBuffer
from kici.domain.execution.states import TERMINAL_JOB_STATES, TERMINAL_RUN_STATES, JobStatus, RunStatus
from kici.domain.lockfile.frozen import thaw_json
from kici.domain.protocol import (
    ExecutionEvent,
    ExecutionEventKind,
    ExecutionStatus,
    JobSnapshot,
    JobState,
    JobStatusForward,
    LogChunk,
    Message,
    RunSnapshot,
    RunState,
    StateReplay,
    StepStatus,
    StepStatusForward,
    encode,
)
from kici.domain.ratelimit import RateLimitConfig, TokenBucket
from kici.domain.store import ExecutionStore, JobRecord, RunRecord

_log = structlog.get_logger(__name__)

PACE_SHARE: Final = 0.8
REPLAY_FRAME_BYTES: Final = 1_048_576
FINISHED_MEMORY: Final = 10_000
UNNAMED_STEPS_MAX: Final = 10_000


# --- the buffer -----------------------------------------------------------------------------------


class EventBuffer:
    """The upstream EventBuffer: at most ``max_size`` frames, oldest dropped first (see the module doc).

    ``pop`` / ``get`` take the oldest frame; ``requeue`` puts a frame that could not be written back
    in front. ``dropped`` counts every frame lost to overflow since the last ``reset_dropped``.
    """

    def __init__(self, max_size: int = UPSTREAM_EVENT_BUFFER_SIZE) -> None:
        self._ring: RingBuffer[Message] = RingBuffer(max_size)
        self._head: collections.deque[Message] = collections.deque()
        self._max_size = max_size
        self._lost = 0
        self._nonempty = trio.Event()

    def __len__(self) -> int:
        return len(self._head) + len(self._ring)

    def __iter__(self) -> Iterator[Message]:
        """The held frames, oldest first, without taking them."""
        yield from self._head
        yield from self._ring

    @property
    def max_size(self) -> int:
        return self._max_size

    @property
    def dropped(self) -> int:
        return self._ring.dropped + self._lost

    def reset_dropped(self) -> None:
        self._ring.reset_dropped()
        self._lost = 0

    def put(self, message: Message) -> None:
        """Append ``message``; a full buffer loses its oldest frame."""
        if self._head and len(self) >= self._max_size:
            self._head.popleft()
            self._lost += 1
        self._ring.add(message)
        self._nonempty.set()

    def requeue(self, message: Message) -> None:
        """Put back the frame just taken; it is the oldest, so a buffer refilled meanwhile drops it."""
        if len(self) >= self._max_size:
            self._lost += 1
            return
        self._head.appendleft(message)
        self._nonempty.set()

    def pop(self) -> Message | None:
        if not self._head:
            self._head.extend(self._ring.flush())
        return self._head.popleft() if self._head else None

    async def get(self) -> Message:
        """The oldest frame, waiting for one."""
        while True:
            message = self.pop()
            if message is not None:
                return message
            self._nonempty = trio.Event()
            await self._nonempty.wait()


# --- pacing ---------------------------------------------------------------------------------------


class Pacer:
    """Keeps the link's writes within ``share`` of the Platform's rate limits (see the module doc)."""

    def __init__(self, config: RateLimitConfig | None = None, share: float = PACE_SHARE) -> None:
        limits = config or RateLimitConfig()
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self._messages = TokenBucket(limits.message_capacity * share, limits.messages_per_s * share)
        self._bytes = TokenBucket(limits.byte_capacity * share, limits.bytes_per_s * share)

    def _refill(self) -> None:
        now_ms = trio.current_time() * 1000.0
        self._messages = self._messages.refill(now_ms)
        self._bytes = self._bytes.refill(now_ms)

    async def wait(self, size: int) -> None:
        """Wait until a frame of ``size`` bytes may be written, and count it."""
        amount = min(float(size), self._bytes.capacity)
        while True:
            self._refill()
            if self._messages.can_take(1) and self._bytes.can_take(amount):
                self._messages = self._messages.take(1)
                self._bytes = self._bytes.take(amount)
                return
            delay_ms = max(self._messages.retry_after_ms(1), self._bytes.retry_after_ms(amount), 1)
            await trio.sleep(delay_ms / 1000.0)

    def charge(self, size: int) -> None:
        """Count a frame written without waiting (acks, responses): as much as the buckets hold."""
        self._refill()
        self._messages = self._messages.take(min(1.0, self._messages.tokens))
        self._bytes = self._bytes.take(min(float(size), self._bytes.tokens))


# --- frames from records --------------------------------------------------------------------------


def epoch_ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def _duration_ms(started: datetime | None, completed: datetime | None) -> int | None:
    if started is None or completed is None:
        return None
    return max(0, int((completed - started).total_seconds() * 1000))


def _matrix(job: JobRecord) -> dict[str, Any] | None:
    values = thaw_json(job.matrix_values)
    return values if isinstance(values, dict) and values else None


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _live_state(status: RunStatus) -> RunState:
    return RunState.PENDING if status is RunStatus.HELD else RunState(status.value)


def execution_status(run: RunRecord, job_count: int, *, message_id: str, now_ms: int) -> ExecutionStatus:
    """The run as ``execution.status`` (``startedAt`` falls back to its creation)."""
    started = run.started_at or run.created_at
    return ExecutionStatus(
        message_id=message_id,
        run_id=str(run.run_id),
        workflow_name=run.workflow_name,
        status=_live_state(run.status),
        started_at=epoch_ms(started) or 0,
        timestamp=now_ms,
        repo_identifier=run.repo_identifier,
        sha=run.sha,
        ref=run.ref,
        trigger_event=run.event,
        job_count=job_count,
        completed_at=epoch_ms(run.completed_at),
        duration_ms=run.duration_ms,
        parent_run_id=_text(run.parent_run_id),
        original_run_id=_text(run.original_run_id),
        triggered_by=run.triggered_by,
        failure_reason=run.failure_reason,
    )


def job_status_forward(
    job: JobRecord, *, message_id: str, now_ms: int, orchestrator_id: str | None
) -> JobStatusForward:
    return JobStatusForward(
        message_id=message_id,
        run_id=str(job.run_id),
        job_id=str(job.job_id),
        job_name=job.name,
        status=JobState(job.status.value),
        timestamp=now_ms,
        matrix_values=_matrix(job),
        started_at=epoch_ms(job.started_at),
        completed_at=epoch_ms(job.completed_at),
        duration_ms=_duration_ms(job.started_at, job.completed_at),
        error_message=job.error_message,
        agent_id=job.agent_id,
        orchestrator_id=orchestrator_id,
    )


def step_status_forward(message: StepStatus, job_name: str) -> StepStatusForward:
    """An agent's accepted ``step.status`` with the job's name added (the dashboard shows names)."""
    return StepStatusForward(
        message_id=message.message_id,
        run_id=message.run_id,
        job_id=message.job_id,
        job_name=job_name,
        step_index=message.step_index,
        step_name=message.step_name,
        state=message.state,
        timestamp=message.timestamp,
        data=message.data,
        secrets_accessed=message.secrets_accessed,
    )


def run_snapshot(run: RunRecord, jobs: Sequence[JobRecord]) -> RunSnapshot:
    """The run in ``state.replay``: its status as stored (``held`` included) and all its jobs."""
    started = run.started_at or run.created_at
    return RunSnapshot(
        run_id=str(run.run_id),
        workflow_name=run.workflow_name,
        status=RunState(run.status.value),
        started_at=epoch_ms(started) or 0,
        job_count=len(jobs),
        jobs=[
            JobSnapshot(
                job_id=str(job.job_id),
                job_name=job.name,
                status=job.status.value,
                started_at=epoch_ms(job.started_at),
                completed_at=epoch_ms(job.completed_at),
                duration_ms=_duration_ms(job.started_at, job.completed_at),
                error_message=job.error_message,
                agent_id=job.agent_id,
            )
            for job in jobs
        ],
        routing_key=run.routing_key,
        repo_identifier=run.repo_identifier,
        sha=run.sha,
        ref=run.ref,
        trigger_event=run.event,
        completed_at=epoch_ms(run.completed_at),
        duration_ms=run.duration_ms,
        parent_run_id=_text(run.parent_run_id),
        original_run_id=_text(run.original_run_id),
        triggered_by=run.triggered_by,
        failure_reason=run.failure_reason,
    )


def replay_frames(
    snapshots: Sequence[RunSnapshot],
    *,
    now_ms: int,
    new_id: Callable[[], str],
    max_bytes: int = REPLAY_FRAME_BYTES,
) -> list[StateReplay]:
    """``snapshots`` cut into ``state.replay`` frames of at most ``max_bytes`` of runs each (a run
    bigger than that alone gets a frame of its own); no snapshots give one empty frame."""
    frames: list[StateReplay] = []
    batch: list[RunSnapshot] = []
    size = 0
    for snapshot in snapshots:
        weight = len(encode(StateReplay(message_id="", runs=[snapshot], timestamp=now_ms)).encode("utf-8"))
        if batch and size + weight > max_bytes:
            frames.append(StateReplay(message_id=new_id(), runs=batch, timestamp=now_ms))
            batch, size = [], 0
        batch.append(snapshot)
        size += weight
    if batch or not frames:
        frames.append(StateReplay(message_id=new_id(), runs=batch, timestamp=now_ms))
    return frames


# --- the replay window ----------------------------------------------------------------------------


class ReplayQueries(Protocol):
    """The read ``state.replay`` needs beyond the execution store."""

    async def runs_finished_since(self, since: datetime) -> list[uuid.UUID]:
        """Runs that reached a terminal status at or after ``since``, oldest first."""
        ...


class PgReplayQueries:
    """:class:`ReplayQueries` on PostgreSQL: terminal runs by ``completed_at`` (``updated_at`` if unset)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def runs_finished_since(self, since: datetime) -> list[uuid.UUID]:
        def work(conn: Connection) -> list[uuid.UUID]:
            rows = conn.execute(
                """
                SELECT id FROM execution_runs
                WHERE status IN ('success', 'failed', 'cancelled')
                  AND COALESCE(completed_at, updated_at) >= %s
                ORDER BY COALESCE(completed_at, updated_at), id
                """,
                (since,),
            ).fetchall()
            return [row["id"] for row in rows]

        return await self._db.run(work)


# --- the forwarder --------------------------------------------------------------------------------


@attrs.define
class _Forwarded:
    """What the Platform last heard about one run."""

    status: RunStatus | None = None
    jobs: dict[uuid.UUID, JobStatus] = attrs.field(factory=dict)


def _new_id() -> str:
    return str(uuid.uuid4())


class UpstreamForwarder:
    """The tracker's observer on the Platform link's side; see the module docstring.

    ``run()`` is its task: it drains the notices the tracker left and fills :attr:`buffer`.
    """

    def __init__(
        self,
        *,
        execution: ExecutionStore,
        replay: ReplayQueries,
        clock: Clock,
        orchestrator_id: str | None = None,
        replay_window_hours: float = 24,
        buffer: EventBuffer | None = None,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        self.buffer = buffer or EventBuffer()
        self._execution = execution
        self._replay = replay
        self._clock = clock
        self._orchestrator_id = orchestrator_id
        self._window = timedelta(hours=replay_window_hours)
        self._new_id = new_id
        self._dirty: dict[uuid.UUID, None] = {}
        self._unnamed: collections.deque[StepStatus] = collections.deque(maxlen=UNNAMED_STEPS_MAX)
        self._forwarded: dict[uuid.UUID, _Forwarded] = {}
        self._finished: collections.OrderedDict[uuid.UUID, None] = collections.OrderedDict()
        self._job_names: dict[str, str] = {}
        self._wake = trio.Event()

    def _now_ms(self) -> int:
        return int(self._clock.now().timestamp() * 1000)

    # --- ExecutionObserver (called by the tracker; never blocks) ------------------------------------

    def run_changed(self, run_id: uuid.UUID) -> None:
        self._dirty[run_id] = None
        self._wake.set()

    def step_reported(self, message: StepStatus) -> None:
        name = self._job_names.get(message.job_id)
        if name is not None:
            self.buffer.put(step_status_forward(message, name))
            return
        self._unnamed.append(message)
        self._wake.set()

    def log_reported(self, message: LogChunk) -> None:
        self.buffer.put(message)

    # --- the task -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await self.drain()

    async def drain(self) -> None:
        """Turn every pending notice into frames (also callable directly, e.g. by tests)."""
        while self._unnamed or self._dirty:
            if self._unnamed:
                message = self._unnamed.popleft()
                try:
                    await self._forward_step(message)
                except Exception as exc:
                    _log.warning("step status not forwarded", job_id=message.job_id, error=str(exc))
                continue
            run_id = next(iter(self._dirty))
            del self._dirty[run_id]
            try:
                await self._forward_run(run_id)
            except Exception as exc:
                _log.warning("run status not forwarded", run_id=str(run_id), error=str(exc))

    async def _forward_step(self, message: StepStatus) -> None:
        name = self._job_names.get(message.job_id)
        if name is None:
            job = await self._execution.get_job(uuid.UUID(message.job_id))
            if job is None:
                return
            name = job.name
        self.buffer.put(step_status_forward(message, name))

    def _event(self, run_id: uuid.UUID, kind: ExecutionEventKind, data: dict[str, Any]) -> None:
        clean = {key: value for key, value in data.items() if value is not None}
        self.buffer.put(
            ExecutionEvent(
                message_id=self._new_id(),
                run_id=str(run_id),
                event=kind,
                data=clean,
                timestamp=self._now_ms(),
            )
        )

    async def _forward_run(self, run_id: uuid.UUID) -> None:
        if run_id in self._finished:
            return
        run = await self._execution.get_run(run_id)
        if run is None:
            return
        jobs = await self._execution.list_jobs(run_id)
        for job in jobs:
            self._job_names[str(job.job_id)] = job.name
        forwarded = self._forwarded.get(run_id)
        if forwarded is None:
            forwarded = self._forwarded[run_id] = _Forwarded()
            self._event(
                run_id,
                ExecutionEventKind.STARTED,
                {
                    "workflowName": run.workflow_name,
                    "repoIdentifier": run.repo_identifier,
                    "ref": run.ref,
                    "deliveryId": run.delivery_id,
                    "triggeredBy": run.triggered_by,
                },
            )
        self._forward_jobs(forwarded, jobs)
        if forwarded.status is not run.status:
            forwarded.status = run.status
            self.buffer.put(
                execution_status(run, len(jobs), message_id=self._new_id(), now_ms=self._now_ms())
            )
        if run.status in TERMINAL_RUN_STATES:
            self._event(
                run_id,
                ExecutionEventKind.FINISHED,
                {
                    "status": run.status.value,
                    "durationMs": run.duration_ms,
                    "failureReason": run.failure_reason,
                },
            )
            self._forget(run_id, jobs)

    def _forward_jobs(self, forwarded: _Forwarded, jobs: Iterable[JobRecord]) -> None:
        for job in jobs:
            if forwarded.jobs.get(job.job_id) is job.status:
                continue
            forwarded.jobs[job.job_id] = job.status
            self.buffer.put(
                job_status_forward(
                    job,
                    message_id=self._new_id(),
                    now_ms=self._now_ms(),
                    orchestrator_id=self._orchestrator_id,
                )
            )
            if job.status in TERMINAL_JOB_STATES:
                self._event(
                    job.run_id,
                    ExecutionEventKind.JOB_COMPLETED,
                    {"jobId": str(job.job_id), "jobName": job.name, "status": job.status.value},
                )

    def _forget(self, run_id: uuid.UUID, jobs: Iterable[JobRecord]) -> None:
        self._forwarded.pop(run_id, None)
        for job in jobs:
            self._job_names.pop(str(job.job_id), None)
        self._finished[run_id] = None
        while len(self._finished) > FINISHED_MEMORY:
            self._finished.popitem(last=False)

    # --- state.replay ---------------------------------------------------------------------------

    async def queue_replay(self) -> int:
        """Put ``state.replay`` (active runs and runs that ended in the window) into the buffer.

        Returns the number of runs it carries. Active runs count as forwarded afterwards, so the
        next change of one of them is sent as a change, not again in full.
        """
        since = self._clock.now() - self._window
        active = await self._execution.list_open_runs()
        finished = await self._replay.runs_finished_since(since)
        ids = list(dict.fromkeys([*(run.run_id for run in active), *finished]))
        snapshots: list[RunSnapshot] = []
        for run_id in ids:
            run = await self._execution.get_run(run_id)
            if run is None:
                continue
            jobs = await self._execution.list_jobs(run_id)
            snapshots.append(run_snapshot(run, jobs))
            if run.status not in TERMINAL_RUN_STATES:
                self._forwarded[run_id] = _Forwarded(run.status, {job.job_id: job.status for job in jobs})
                for job in jobs:
                    self._job_names[str(job.job_id)] = job.name
        for frame in replay_frames(snapshots, now_ms=self._now_ms(), new_id=self._new_id):
            self.buffer.put(frame)
        return len(snapshots)


__all__ = [
    "PACE_SHARE",
    "REPLAY_FRAME_BYTES",
    "EventBuffer",
    "Pacer",
    "PgReplayQueries",
    "ReplayQueries",
    "UpstreamForwarder",
    "epoch_ms",
    "execution_status",
    "job_status_forward",
    "replay_frames",
    "run_snapshot",
    "step_status_forward",
]
