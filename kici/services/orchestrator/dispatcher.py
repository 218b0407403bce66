"""The dispatcher: ready jobs -> queue -> ``job.dispatch`` to a fitting agent, acknowledged or requeued.

It moves on events, never on a poll: the LISTEN channels ``kici_job_ready`` (jobs became ready) and
``kici_dispatch`` (a queue row became pending), :meth:`Dispatcher.wake` (a run was created, an agent
registered, a slot freed) and the listener's catch-up after every (re)connect all set one wake flag;
the dispatcher task then runs one pass:

1. every ready job (``list_ready_jobs``) gets ``ENQUEUE`` (guarded on ``pending``, so a second pass or
   a second node cannot enqueue it twice; the store creates the queue row, ``expires_at`` = now + the
   queue timeout);
2. while some connected agent has a free slot, the oldest queue row an agent fits is taken
   (``DispatchQueue.dequeue`` with a chooser over an immutable snapshot of the agents: labels and
   excludes through ``kici.domain.labels``, least-loaded agent first) and sent as ``job.dispatch``.

Every dispatch must be answered (``kici.domain.dispatch_ack``): ``job.ack`` or ``job.status running``
settle it; ``job.reject`` requeues it (a draining agent leaves routing); no answer within the ack
timeout requeues it too and closes the agent with 4031; a disconnect before the answer requeues it.
The store counts dispatches and fails the job after the fifth. Jobs no agent fits stay queued until
one registers or the queue timeout expires them (EXE-25).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import structlog
import trio

from kici.adapters.clock import Clock
from kici.adapters.postgres import channels
from kici.adapters.postgres.listener import Listener, Notification
from kici.domain.dispatch_ack import (
    MAX_DISPATCH_ATTEMPTS,
    Answer,
    Arm,
    Deadline,
    Disconnect,
    Dispatch,
    Outcome,
    Resolution,
    Resolved,
    advance,
    exhausted_message,
)
from kici.domain.execution.states import Event, ExecutionState
from kici.domain.labels import AgentSlot, LabelMatcher, pick_agent
from kici.domain.lockfile.codec import from_json, to_json
from kici.domain.lockfile.frozen import FrozenDict, JsonValue, freeze_json, thaw_json
from kici.domain.ports import ConnectionClosed
from kici.domain.protocol import CloseCode, GitAuth, JobDispatch, JobState, RejectReason
from kici.domain.store import (
    DispatchQueue,
    EdgeRecord,
    ExecutionStore,
    JobEventCommand,
    JobRecord,
    QueueCandidate,
    QueueEntry,
    RunRecord,
)
from kici.services.orchestrator.agent_hub import AgentRegistry, ConnectedAgent
from kici.services.orchestrator.timers import DeadlineScheduler

if TYPE_CHECKING:
    from kici.services.orchestrator.tracker import Tracker

_log = structlog.get_logger(__name__)

ACK_TIMEOUT_REASON = "Dispatch not acknowledged in time"
_MATCHER: Any = LabelMatcher


class InvalidRoutingError(ValueError):
    """A job's ``routing`` column that is not the shape :func:`routing_json` writes."""


@attrs.frozen
class Routing:
    runs_on: tuple[LabelMatcher, ...] = ()
    exclude: tuple[LabelMatcher, ...] = ()


def routing_json(
    runs_on: Sequence[LabelMatcher] | None, exclude: Sequence[LabelMatcher] | None = None
) -> JsonValue:
    """The ``NewJob.routing`` of a lock job: its label matchers in the lock's own JSON form."""
    doc: dict[str, Any] = {}
    if runs_on:
        doc["runsOn"] = [to_json(m) for m in runs_on]
    if exclude:
        doc["exclude"] = [to_json(m) for m in exclude]
    frozen: JsonValue = freeze_json(doc)
    return frozen


def parse_routing(value: JsonValue) -> Routing:
    """Read a ``routing`` column back; None (or an empty object) targets any agent without taints."""
    if value is None:
        return Routing()
    if not isinstance(value, FrozenDict):
        raise InvalidRoutingError(f"routing must be a JSON object, got {type(value).__name__}")
    try:
        return Routing(
            runs_on=tuple(from_json(m, _MATCHER) for m in thaw_json(value.get("runsOn", ()))),
            exclude=tuple(from_json(m, _MATCHER) for m in thaw_json(value.get("exclude", ()))),
        )
    except Exception as exc:
        raise InvalidRoutingError(f"routing {thaw_json(value)!r} is malformed: {exc}") from exc


def choose_agent(slots: Sequence[AgentSlot], candidate: QueueCandidate) -> str | None:
    """The dequeue chooser: the first (least-loaded) agent that fits; runs in a worker thread."""
    try:
        routing = parse_routing(candidate.routing)
    except InvalidRoutingError as exc:
        _log.error("job cannot be routed", job_id=str(candidate.job_id), error=str(exc))
        return None
    slot = pick_agent(slots, routing.runs_on, routing.exclude, pick="any")
    return None if slot is None else slot.agent_id


@attrs.frozen(kw_only=True)
class DispatchSource:
    """Where and how the agent clones: ``token`` and ``source_auth`` must agree (20a §6.2)."""

    repo_url: str
    lock_file_url: str = ""
    token: str | None = attrs.field(default=None, repr=False)
    source_auth: GitAuth | None = attrs.field(default=None, repr=False)


class DispatchSourceResolver(Protocol):
    async def resolve(self, run: RunRecord) -> DispatchSource: ...


@attrs.frozen(kw_only=True)
class DispatcherSettings:
    ack_timeout_ms: int = 10_000
    queue_timeout_ms: int = 3_600_000


class _Gone(Exception):
    """The job left the queue (cancelled, terminal) between dequeue and send."""


def _epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _upstream_outputs(value: JsonValue) -> dict[str, Any]:
    thawed = thaw_json(value)
    return thawed if isinstance(thawed, dict) else {}


class Dispatcher:
    """See the module docstring; ``bind`` the tracker before :meth:`run`."""

    def __init__(
        self,
        *,
        execution: ExecutionStore,
        queue: DispatchQueue,
        registry: AgentRegistry,
        scheduler: DeadlineScheduler,
        clock: Clock,
        settings: DispatcherSettings,
        listener_conninfo: str | None = None,
        source_resolver: DispatchSourceResolver | None = None,
    ) -> None:
        self._execution = execution
        self._queue = queue
        self._registry = registry
        self._scheduler = scheduler
        self._clock = clock
        self._settings = settings
        self._listener_conninfo = listener_conninfo
        self._source_resolver = source_resolver
        self._tracker: Tracker | None = None
        self._wake = trio.Event()
        self._pending: dict[str, Dispatch] = {}

    def bind(self, tracker: Tracker) -> None:
        self._tracker = tracker

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            raise RuntimeError("Dispatcher.bind(tracker) was not called")
        return self._tracker

    def wake(self) -> None:
        """Ask for a dispatch pass; cheap and idempotent, callable from any task."""
        self._wake.set()

    def pending_ack(self, job_id: str) -> bool:
        """Whether a dispatch of ``job_id`` still waits for the agent's answer."""
        return job_id in self._pending

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            if self._listener_conninfo is not None:
                listener = Listener(self._listener_conninfo, channels.ALL, self._notified, self._caught_up)
                await nursery.start(listener.run)
            nursery.start_soon(self._loop)
            self.wake()
            task_status.started()

    async def _notified(self, _: Notification) -> None:
        self.wake()

    async def _caught_up(self) -> None:
        self.wake()

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            try:
                await self.dispatch_pass()
            except Exception:
                _log.exception("dispatch pass failed; the next wake or sweep retries")

    async def dispatch_pass(self) -> None:
        """Enqueue every ready job, then dispatch while agents have free slots."""
        await self._enqueue_ready()
        while True:
            slots = self._registry.routable_slots()
            if not slots:
                return
            entry = await self._queue.dequeue(partial(choose_agent, slots), self._clock.now())
            if entry is None:
                return
            await self._send(entry)

    async def _enqueue_ready(self) -> None:
        for job in await self._execution.list_ready_jobs():
            now = self._clock.now()
            expires = (
                now + timedelta(milliseconds=self._settings.queue_timeout_ms)
                if self._settings.queue_timeout_ms > 0
                else None
            )
            transition = await self._execution.apply_job_event(
                JobEventCommand(
                    job_id=job.job_id,
                    expected=ExecutionState.PENDING,
                    event=Event.ENQUEUE,
                    now=now,
                    queue_expires_at=expires,
                )
            )
            if transition.applied:
                _log.info("job queued", run_id=str(job.run_id), job_id=str(job.job_id), job=job.name)
                await self.tracker.watch_run(job.run_id)

    async def _send(self, entry: QueueEntry) -> None:
        job_id = str(entry.job_id)
        agent = self._registry.get(entry.agent_id)
        attempt = min(max(entry.dispatch_attempts, 1), MAX_DISPATCH_ATTEMPTS)
        self._pending[job_id] = Dispatch(job_id, entry.agent_id or "", attempt)
        if agent is None or not agent.routable:
            await self._signal(job_id, Disconnect())
            return
        agent.jobs.add(job_id)
        self.tracker.assigned(entry, agent)
        try:
            message = await self._message(entry)
        except _Gone:
            _log.info("dequeued job is gone, dispatch dropped", job_id=job_id)
            self._forget(job_id)
            return
        except Exception:
            _log.exception("could not build the dispatch, job requeued", job_id=job_id)
            await self._signal(job_id, Disconnect())
            return
        try:
            sent = agent.session.try_send(message)
        except ConnectionClosed:
            sent = False
        if not sent:
            await self._signal(job_id, Disconnect())
            return
        _log.info(
            "job dispatched",
            run_id=message.run_id,
            job_id=job_id,
            agent_id=agent.agent_id,
            attempt=entry.dispatch_attempts,
        )
        written_ms = self._clock.monotonic() * 1000
        deadline = self._clock.now() + timedelta(milliseconds=self._settings.ack_timeout_ms)
        await self._queue.arm_ack_deadline(entry.job_id, agent.agent_id, deadline)
        await self._signal(job_id, Arm(written_ms, self._settings.ack_timeout_ms))
        armed = self._pending.get(job_id)
        if armed is not None and armed.deadline_ms is not None:
            due_in_s = armed.deadline_ms / 1000 - self._clock.monotonic()
            self._scheduler.arm_in(
                ("ack", job_id), due_in_s, partial(self._ack_due, job_id, armed.deadline_ms)
            )

    async def _message(self, entry: QueueEntry) -> JobDispatch:
        job, run, edges = await self._reads(entry)
        if job is None or run is None or job.terminal:
            raise _Gone
        await self.tracker.watch_run(run.run_id, run)
        upstream = [e.upstream_name for e in edges if e.job_name == job.name]
        outputs: dict[str, dict[str, Any]] | None = None
        statuses: dict[str, JobState] | None = None
        if upstream:
            by_name: dict[str, JobRecord] = {j.name: j for j in await self._execution.list_jobs(run.run_id)}
            found = [by_name[name] for name in upstream if name in by_name]
            outputs = {j.name: _upstream_outputs(j.outputs) for j in found}
            statuses = {j.name: JobState(j.status.value) for j in found}
        source = (
            await self._source_resolver.resolve(run)
            if self._source_resolver is not None
            else DispatchSource(repo_url=run.repo_identifier or "")
        )
        config = thaw_json(job.config)
        job_config: dict[str, Any] = dict(config) if isinstance(config, dict) else {}
        job_config.update(
            jobName=job.name,
            baseJobName=job.base_job_name,
            matrixValues=thaw_json(job.matrix_values),
            dispatchAttempt=entry.dispatch_attempts,
        )
        return JobDispatch(
            message_id=str(uuid.uuid4()),
            run_id=str(run.run_id),
            job_id=str(job.job_id),
            repo_url=source.repo_url,
            ref=run.ref or "",
            sha=run.sha or "",
            lock_file_url=source.lock_file_url,
            job_config=job_config,
            timestamp=_epoch_ms(self._clock.now()),
            token=source.token,
            source_auth=source.source_auth,
            request_id=entry.request_id or run.request_id,
            upstream_job_outputs=outputs,
            upstream_job_statuses=statuses,
            org_id=run.org_id,
            repo_id=run.repo_identifier,
        )

    async def _reads(self, entry: QueueEntry) -> tuple[JobRecord | None, RunRecord | None, list[EdgeRecord]]:
        """The job, its run and the run's edges, read concurrently: three independent round trips on
        the critical path of every dispatch (issue 7's latency benchmark) then cost the wait of one."""
        job: JobRecord | None = None
        run: RunRecord | None = None
        edges: list[EdgeRecord] = []

        async def read_job() -> None:
            nonlocal job
            job = await self._execution.get_job(entry.job_id)

        async def read_run() -> None:
            nonlocal run
            run = await self._execution.get_run(entry.run_id)

        async def read_edges() -> None:
            nonlocal edges
            edges = list(await self._execution.list_edges(entry.run_id))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_job)
            nursery.start_soon(read_run)
            nursery.start_soon(read_edges)
        return job, run, edges

    # --- answers ------------------------------------------------------------------------------

    async def agent_answered(
        self, agent: ConnectedAgent, job_id: str, *, ack: bool, reason: RejectReason | None = None
    ) -> None:
        """``job.ack`` or ``job.reject`` from ``agent``; late, duplicate and foreign answers are dropped."""
        dispatch = self._pending.get(job_id)
        if dispatch is None or dispatch.agent_id != agent.agent_id:
            _log.info("dispatch answer ignored", job_id=job_id, agent_id=agent.agent_id, ack=ack)
            return
        if reason is RejectReason.DRAINING:
            agent.routable = False
        answer = (
            Answer(Resolution.ACK) if ack else Answer(Resolution.REJECT, None if reason is None else reason)
        )
        await self._signal(job_id, answer)

    async def job_started(self, agent: ConnectedAgent, job_id: str) -> None:
        """``job.status running`` settles a dispatch still waiting for its ack."""
        dispatch = self._pending.get(job_id)
        if dispatch is not None and dispatch.agent_id == agent.agent_id:
            await self._signal(job_id, Answer(Resolution.RUNNING))

    async def agent_gone(self, agent: ConnectedAgent) -> None:
        """The agent's connection closed: its unanswered dispatches go back to the queue."""
        for job_id, dispatch in list(self._pending.items()):
            if dispatch.agent_id == agent.agent_id:
                await self._signal(job_id, Disconnect())

    def forget(self, job_id: str) -> None:
        """The job was settled elsewhere (cancelled, failed): drop its pending dispatch and ack timer."""
        self._forget(job_id)

    async def _ack_due(self, job_id: str, deadline_ms: float) -> None:
        """The ack timer fired; it never fires early, so it reports at least its own deadline."""
        await self._signal(job_id, Deadline(max(deadline_ms, self._clock.monotonic() * 1000)))

    async def _signal(self, job_id: str, signal: Arm | Answer | Deadline | Disconnect) -> None:
        dispatch = self._pending.get(job_id)
        if dispatch is None:
            return
        dispatch, resolved = advance(dispatch, signal)
        self._pending[job_id] = dispatch
        if resolved is not None:
            await self._settle(job_id, dispatch, resolved)

    async def _settle(self, job_id: str, dispatch: Dispatch, resolved: Resolved) -> None:
        self._pending.pop(job_id, None)
        self._scheduler.cancel(("ack", job_id))
        job_uuid = uuid.UUID(job_id)
        if resolved.outcome is Outcome.STARTED:
            await self._queue.resolve_ack(job_uuid)
            return
        agent = self._registry.get(dispatch.agent_id)
        if resolved.close_agent and agent is not None:
            agent.routable = False
            agent.session.close(CloseCode.DISPATCH_ACK_TIMEOUT, ACK_TIMEOUT_REASON)
        self._forget(job_id)
        who = f"agent {dispatch.agent_id}"
        context = {
            Resolution.TIMEOUT: f"{who} did not acknowledge the dispatch",
            Resolution.REJECT: f"{who} rejected it: {resolved.reason or 'no reason given'}",
            Resolution.DISCONNECT: f"{who} disconnected before acknowledging",
        }.get(resolved.resolution, "dispatch not started")
        message = resolved.failure_message or exhausted_message(dispatch.attempt, context)
        result = await self._queue.requeue(job_uuid, self._clock.now(), message)
        _log.info(
            "dispatch not taken",
            job_id=job_id,
            agent_id=dispatch.agent_id,
            resolution=resolved.resolution.value,
            requeued=result.requeued,
            attempts=result.attempts,
        )
        if result.failed is not None and result.failed.applied and result.failed.gate is not None:
            _log.warning("job failed: dispatch attempts exhausted", job_id=job_id, error=message)
            await self.tracker.settle(result.failed.gate.run_id, result.failed.gate)
        self.wake()

    def _forget(self, job_id: str) -> None:
        self._pending.pop(job_id, None)
        self._scheduler.cancel(("ack", job_id))
        self._registry.release(job_id)
        self.tracker.released(job_id)

    # --- sweeps ---------------------------------------------------------------------------------

    async def expire_queue(self) -> None:
        """EXE-25: queued rows past ``expires_at`` end ``timed_out_stale``; their runs are settled."""
        for expired in await self._queue.expire(self._clock.now()):
            _log.warning("queued job expired", run_id=str(expired.run_id), job_id=str(expired.job_id))
            await self.tracker.settle(expired.run_id, expired.gate)

    async def sweep_ack_deadlines(self) -> None:
        """The leader sweep of 20 §12: overdue ack rows this node holds no timer for are requeued."""
        for entry in await self._queue.due_ack_deadlines(self._clock.now()):
            job_id = str(entry.job_id)
            if job_id in self._pending:
                await self._signal(job_id, Deadline(self._clock.monotonic() * 1000))
                continue
            attempt = min(max(entry.dispatch_attempts, 1), MAX_DISPATCH_ATTEMPTS)
            # No timer of this node armed it (it was armed before a restart): replay arm + expiry.
            self._pending[job_id] = Dispatch(job_id, entry.ack_agent_id or entry.agent_id or "", attempt)
            await self._signal(job_id, Arm(0.0, 1.0))
            await self._signal(job_id, Deadline(float("inf")))
