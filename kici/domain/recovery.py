"""Job recovery across agent disconnects and orchestrator restarts: the in-memory book.

When a static agent's connection drops (an orchestrator restart, a network
cut), its jobs usually keep running on the agent. Failing them at once would
throw that work away, so each job goes ``recovering`` with a deadline of
``now + grace`` (grace = 2 x the agents' maximum reconnect delay, so a live
agent retries at least twice). If the agent comes back in time and lists the
job in ``inFlightJobs``, it reclaims the job; if the deadline passes first, the
job fails. Claim and expiry both go through this one map, so exactly one of
them wins; the database writes behind them are conditional on
``status='recovering'`` as a second guard.

The book holds, per job, where it is: active on an agent, recovering (for a
recorded agent), or recently completed by an agent (for 30 s, so late log
chunks and step statuses of a finished job still pass the ownership check).
It does no I/O: every method returns the effects the caller must persist.

Choices (spec §19 where it speaks, otherwise ours):

* A recovering job whose recorded agent is unknown (``None`` or ``"unknown"``)
  can be claimed by any agent that reports it.
* A ``job.status`` for a recovering job from its agent reclaims the job and is
  then applied, so a job that finished during the outage ends with its real
  result instead of being failed by the timer.
* A reported in-flight job this node does not hold for that agent is cancelled
  on the agent, except a job the same agent completed within the grace window
  (its terminal status simply arrives late).
* A claim that arrives after the deadline but before the expiry ran still
  wins: the job is alive, and only one of the two can apply.
* Agent connections carry a generation; a late close of an older connection
  does not put a newer connection's jobs into recovery.

Times are epoch milliseconds supplied by the caller.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

import attrs

DEFAULT_MAX_RECONNECT_DELAY_MS = 60_000
DEFAULT_GRACE_MS = 2 * DEFAULT_MAX_RECONNECT_DELAY_MS
COMPLETED_GRACE_MS = 30_000
COMPLETED_CAP = 10_000
UNKNOWN_AGENT = "unknown"
RECOVERY_EXPIRED_MESSAGE = "Job failed: agent disconnected and did not reconnect within the recovery window"
RECOVERY_STATE_LOST_MESSAGE = "Job failed: orchestrator restarted during recovery (recovery state lost)"


class RecoveryError(ValueError):
    """A request the book cannot honour (bad configuration or a job in the wrong place)."""


def recovery_grace_ms(max_reconnect_delay_ms: int = DEFAULT_MAX_RECONNECT_DELAY_MS) -> int:
    """There is deliberately no separate knob: the grace follows the agents' backoff cap."""
    if max_reconnect_delay_ms <= 0:
        raise RecoveryError(f"max_reconnect_delay_ms must be > 0, got {max_reconnect_delay_ms}")
    return 2 * max_reconnect_delay_ms


def _claimable_by(recorded_agent: str | None, agent_id: str) -> bool:
    return recorded_agent in (None, UNKNOWN_AGENT, agent_id)


@attrs.frozen
class JobRef:
    job_id: str
    run_id: str


@attrs.frozen
class RecoveryEntry:
    """A recovering job: ``agent_id`` is the recorded agent (None when unknown)."""

    job: JobRef
    agent_id: str | None
    deadline_ms: float
    since_ms: float


@attrs.frozen
class RecoveryStarted:
    """Persist ``status='recovering'`` with the deadline, apply RECOVER, arm the timer."""

    entry: RecoveryEntry


@attrs.frozen
class Reclaimed:
    """Persist ``status='dispatched'`` (WHERE ``status='recovering'``), apply START."""

    job: JobRef
    agent_id: str
    recovery_duration_ms: float


@attrs.frozen
class RecoveryExpired:
    """Persist ``status='failed'`` (WHERE ``status='recovering'``), apply FAIL, tell the scaler."""

    job: JobRef
    agent_id: str | None
    message: str = RECOVERY_EXPIRED_MESSAGE


class Ownership(enum.StrEnum):
    """Why a frame from an agent about a job may pass; NONE means not known here (check the database)."""

    ACTIVE = "active"
    RECOVERING = "recovering"
    RECENTLY_COMPLETED = "recently_completed"
    NONE = "none"


class StatusVerdict(enum.StrEnum):
    APPLY = "apply"
    RECLAIM_THEN_APPLY = "reclaim_then_apply"
    DROP = "drop"


@attrs.frozen
class StatusDecision:
    verdict: StatusVerdict
    reclaimed: Reclaimed | None = None


@attrs.frozen
class Reconciliation:
    """The answer to one agent's ``inFlightJobs``, computed before ``register.ack`` is sent."""

    reclaimed: tuple[Reclaimed, ...] = ()
    kept: tuple[JobRef, ...] = ()
    finished: tuple[JobRef, ...] = ()
    cancel: tuple[JobRef, ...] = ()


class TrackedState(enum.StrEnum):
    ACTIVE = "active"
    RECOVERING = "recovering"
    RECENTLY_COMPLETED = "recently_completed"
    UNTRACKED = "untracked"


class StartupRowStatus(enum.StrEnum):
    DISPATCHED = "dispatched"
    RECOVERING = "recovering"


@attrs.frozen
class StartupRow:
    """A ``dispatch_queue`` row found at boot; ``agent_id`` is the recovery agent, else the dispatch agent."""

    job: JobRef
    status: StartupRowStatus
    agent_id: str | None
    recovery_deadline_ms: float | None = None


@attrs.frozen
class Rearmed:
    """A persisted recovery, re-armed for the remainder (an overdue one expires on the next sweep)."""

    entry: RecoveryEntry


@attrs.frozen
class LostFailed:
    """A recovering row without a deadline: fail it with :data:`RECOVERY_STATE_LOST_MESSAGE`."""

    job: JobRef
    message: str = RECOVERY_STATE_LOST_MESSAGE


StartupAction = RecoveryStarted | Rearmed | LostFailed


class RecoveryBook:
    """Where every job of this orchestrator node is, with respect to its agent."""

    __slots__ = (
        "_active",
        "_completed",
        "_completed_cap",
        "_completed_grace_ms",
        "_generations",
        "_grace_ms",
        "_recovering",
    )

    def __init__(
        self,
        grace_ms: float = DEFAULT_GRACE_MS,
        completed_grace_ms: float = COMPLETED_GRACE_MS,
        completed_cap: int = COMPLETED_CAP,
    ) -> None:
        if grace_ms <= 0 or completed_grace_ms < 0 or completed_cap < 1:
            raise RecoveryError(
                "need grace_ms > 0, completed_grace_ms >= 0, completed_cap >= 1; got "
                f"{grace_ms}, {completed_grace_ms}, {completed_cap}"
            )
        self._grace_ms = grace_ms
        self._completed_grace_ms = completed_grace_ms
        self._completed_cap = completed_cap
        self._active: dict[str, tuple[JobRef, str]] = {}
        self._recovering: dict[str, RecoveryEntry] = {}
        self._completed: dict[str, tuple[JobRef, str, float]] = {}
        self._generations: dict[str, int] = {}

    @property
    def grace_ms(self) -> float:
        return self._grace_ms

    def state_of(self, job_id: str) -> TrackedState:
        if job_id in self._active:
            return TrackedState.ACTIVE
        if job_id in self._recovering:
            return TrackedState.RECOVERING
        if job_id in self._completed:
            return TrackedState.RECENTLY_COMPLETED
        return TrackedState.UNTRACKED

    def recovering(self) -> list[RecoveryEntry]:
        return list(self._recovering.values())

    def excluded_from_stale_scan(self, job_id: str) -> bool:
        """A recovering job has no live agent to heartbeat for it; its own deadline governs it."""
        return job_id in self._recovering

    def jobs_of(self, agent_id: str) -> list[JobRef]:
        return [job for job, owner in self._active.values() if owner == agent_id]

    def next_deadline_ms(self) -> float | None:
        return min((e.deadline_ms for e in self._recovering.values()), default=None)

    def connect(self, agent_id: str) -> int:
        """A new connection for ``agent_id``; its generation identifies it in :meth:`disconnect`."""
        generation = self._generations.get(agent_id, 0) + 1
        self._generations[agent_id] = generation
        return generation

    def assign(self, job: JobRef, agent_id: str) -> None:
        """``job`` was dispatched to ``agent_id`` (a re-dispatch moves it)."""
        if job.job_id in self._recovering:
            raise RecoveryError(f"job {job.job_id} is recovering and cannot be dispatched")
        self._completed.pop(job.job_id, None)
        self._active[job.job_id] = (job, agent_id)

    def release(self, job_id: str) -> bool:
        """Forget ``job_id`` (cancelled, requeued, or failed by disconnect triage); True if it was held."""
        was_active = self._active.pop(job_id, None) is not None
        was_recovering = self._recovering.pop(job_id, None) is not None
        return was_active or was_recovering

    def disconnect(self, agent_id: str, generation: int, now_ms: float) -> list[RecoveryStarted]:
        """A static agent's connection ``generation`` closed: its jobs start recovering.

        Ignored when a newer connection of the agent exists. Scaler-managed agents
        and reboots are triaged by the caller with :meth:`jobs_of` and :meth:`release`.
        """
        if self._generations.get(agent_id) != generation:
            return []
        started: list[RecoveryStarted] = []
        for job in self.jobs_of(agent_id):
            del self._active[job.job_id]
            entry = RecoveryEntry(job, agent_id, now_ms + self._grace_ms, now_ms)
            self._recovering[job.job_id] = entry
            started.append(RecoveryStarted(entry))
        return started

    def reconcile(self, agent_id: str, in_flight: Iterable[JobRef], now_ms: float) -> Reconciliation:
        """Answer ``inFlightJobs`` before ``register.ack``, so replayed frames meet a settled book."""
        reclaimed: list[Reclaimed] = []
        kept: list[JobRef] = []
        finished: list[JobRef] = []
        cancel: list[JobRef] = []
        for job in in_flight:
            held = self._active.get(job.job_id)
            if held is not None and held[1] == agent_id:
                kept.append(held[0])
            elif self._claimable(job.job_id, agent_id):
                reclaimed.append(self._claim(job.job_id, agent_id, now_ms))
            elif self._completed_by(job.job_id, agent_id, now_ms):
                finished.append(job)
            else:
                cancel.append(job)
        return Reconciliation(tuple(reclaimed), tuple(kept), tuple(finished), tuple(cancel))

    def expire(self, job_id: str, now_ms: float) -> RecoveryExpired | None:
        """The recovery timer of ``job_id`` fired; None if a claim won or the deadline moved on."""
        entry = self._recovering.get(job_id)
        if entry is None or now_ms < entry.deadline_ms:
            return None
        del self._recovering[job_id]
        return RecoveryExpired(entry.job, entry.agent_id)

    def expire_due(self, now_ms: float) -> list[RecoveryExpired]:
        """The leader sweep: every recovery past its deadline."""
        due = [job_id for job_id, e in self._recovering.items() if now_ms >= e.deadline_ms]
        return [expired for job_id in due if (expired := self.expire(job_id, now_ms)) is not None]

    def ownership(self, agent_id: str, job_id: str, now_ms: float) -> Ownership:
        """Whether ``log.chunk`` / ``step.status`` from ``agent_id`` about ``job_id`` may pass."""
        held = self._active.get(job_id)
        if held is not None and held[1] == agent_id:
            return Ownership.ACTIVE
        if self._claimable(job_id, agent_id):
            return Ownership.RECOVERING
        if self._completed_by(job_id, agent_id, now_ms):
            return Ownership.RECENTLY_COMPLETED
        return Ownership.NONE

    def on_job_status(self, agent_id: str, job_id: str, terminal: bool, now_ms: float) -> StatusDecision:
        """A ``job.status`` from ``agent_id``: apply it, reclaim first, or drop it."""
        match self.ownership(agent_id, job_id, now_ms):
            case Ownership.ACTIVE:
                decision = StatusDecision(StatusVerdict.APPLY)
            case Ownership.RECOVERING:
                decision = StatusDecision(
                    StatusVerdict.RECLAIM_THEN_APPLY, self._claim(job_id, agent_id, now_ms)
                )
            case _:
                return StatusDecision(StatusVerdict.DROP)
        if terminal:
            self._complete(job_id, agent_id, now_ms)
        return decision

    def sweep_completed(self, now_ms: float) -> None:
        self._completed = {
            job_id: held
            for job_id, held in self._completed.items()
            if now_ms - held[2] < self._completed_grace_ms
        }

    def restore(self, rows: Iterable[StartupRow], now_ms: float) -> list[StartupAction]:
        """Boot: rebuild recoveries from the database before the first stale scan.

        Persisted deadlines are re-armed (past ones expire on the next sweep), a
        ``dispatched`` row starts a fresh recovery for its dispatch agent (the
        agent may still be running it), and a recovery without a deadline fails.
        """
        actions: list[StartupAction] = []
        for row in rows:
            if row.job.job_id in self._active or row.job.job_id in self._recovering:
                raise RecoveryError(f"job {row.job.job_id} is already tracked")
            if row.status is StartupRowStatus.DISPATCHED:
                entry = RecoveryEntry(row.job, row.agent_id, now_ms + self._grace_ms, now_ms)
                self._recovering[row.job.job_id] = entry
                actions.append(RecoveryStarted(entry))
            elif row.recovery_deadline_ms is None:
                actions.append(LostFailed(row.job))
            else:
                entry = RecoveryEntry(row.job, row.agent_id, row.recovery_deadline_ms, now_ms)
                self._recovering[row.job.job_id] = entry
                actions.append(Rearmed(entry))
        return actions

    def _claimable(self, job_id: str, agent_id: str) -> bool:
        entry = self._recovering.get(job_id)
        return entry is not None and _claimable_by(entry.agent_id, agent_id)

    def _claim(self, job_id: str, agent_id: str, now_ms: float) -> Reclaimed:
        entry = self._recovering.pop(job_id)
        self._active[job_id] = (entry.job, agent_id)
        return Reclaimed(entry.job, agent_id, max(0.0, now_ms - entry.since_ms))

    def _completed_by(self, job_id: str, agent_id: str, now_ms: float) -> bool:
        held = self._completed.get(job_id)
        return held is not None and held[1] == agent_id and now_ms - held[2] < self._completed_grace_ms

    def _complete(self, job_id: str, agent_id: str, now_ms: float) -> None:
        job, _owner = self._active.pop(job_id)
        self._completed[job_id] = (job, agent_id, now_ms)
        while len(self._completed) > self._completed_cap:
            del self._completed[next(iter(self._completed))]


def in_flight_jobs(running: Sequence[JobRef], pinned_terminal: Sequence[JobRef]) -> list[JobRef]:
    """The agent's ``inFlightJobs``: running jobs, then jobs whose terminal status is still unsent."""
    seen: set[str] = set()
    out: list[JobRef] = []
    for job in (*running, *pinned_terminal):
        if job.job_id not in seen:
            seen.add(job.job_id)
            out.append(job)
    return out
