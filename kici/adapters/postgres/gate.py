"""The needs gate (EXE-16/17/18) in SQL, inside the caller's transaction.

It makes the decisions of ``kici.domain.execution.needs`` over
``execution_jobs`` / ``execution_job_needs`` and walks them in the same order,
which is what the differential property test checks:

* a finished job's needs hook visits its dependents in edge insertion order
  (``ordinal``): a dependent whose edge excludes the finished status is skipped
  with ``upstream_unmet: <upstream> (<status>)``; the others are *settled*:
  skipped for the first violating edge, else made ready when every upstream
  exists, is terminal and is allowed by its edge, and no dynamic group is
  pending;
* then the fan-out wave hook: a finished ungated child releases the next gated
  sibling, or with fail-fast and a failing status skips all gated siblings;
* every job skipped along the way is drained the same way (breadth first).

Readiness flips ``needs_satisfied`` with ``WHERE NOT needs_satisfied``; that
guard, not the caller, is what hands a job out once. Skips apply to ``pending``
rows only (an unsatisfied job is never enqueued, so it is always pending).
Every writer of job statuses locks the run row first (``FOR NO KEY UPDATE``):
two upstreams finishing at once in two transactions would otherwise each see the
other still open and neither release their common dependent.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Iterable
from datetime import datetime

from kici.adapters.postgres import channels
from kici.adapters.postgres.database import Connection
from kici.domain.execution.needs import STUCK_REASON, WAVE_HALTED_REASON, unmet_reason
from kici.domain.execution.states import FAILING_JOB_STATES, JobStatus, RunStatus
from kici.domain.store import GateFailure, GateJob, GateOutcome, GateSkip, RunNotFoundError

_LOCK_RUN = "SELECT status FROM execution_runs WHERE id = %(run)s FOR NO KEY UPDATE"

_RECORD_TERMINAL = """
UPDATE execution_jobs
SET status = %(status)s, completed_at = %(now)s, updated_at = %(now)s,
    error_message = COALESCE(%(reason)s, error_message)
WHERE run_id = %(run)s AND name = %(name)s AND NOT kici_job_terminal(status)
RETURNING id
"""

_OPEN_DEPENDENTS = """
SELECT e.job_name, c.status AS upstream_status, c.status = ANY(kici_run_on(e.run_on)) AS allowed
FROM execution_job_needs e
JOIN execution_jobs c ON c.run_id = e.run_id AND c.name = e.upstream_name
JOIN execution_jobs j ON j.run_id = e.run_id AND j.name = e.job_name
WHERE e.run_id = %(run)s AND e.upstream_name = %(name)s
  AND j.status = 'pending' AND NOT j.needs_satisfied
ORDER BY e.ordinal
"""

_FIRST_VIOLATION = """
SELECT e.upstream_name, u.status
FROM execution_job_needs e
JOIN execution_jobs u ON u.run_id = e.run_id AND u.name = e.upstream_name
WHERE e.run_id = %(run)s AND e.job_name = %(name)s
  AND kici_job_terminal(u.status) AND NOT (u.status = ANY(kici_run_on(e.run_on)))
ORDER BY e.ordinal
LIMIT 1
"""

_SATISFY = """
UPDATE execution_jobs j
SET needs_satisfied = true, ready_at = %(now)s, updated_at = %(now)s
WHERE j.run_id = %(run)s AND j.name = %(name)s
  AND j.status = 'pending' AND NOT j.needs_satisfied AND j.pending_groups = '[]'::jsonb
  AND NOT EXISTS (
      SELECT 1
      FROM execution_job_needs e
      LEFT JOIN execution_jobs u ON u.run_id = e.run_id AND u.name = e.upstream_name
      WHERE e.run_id = j.run_id AND e.job_name = j.name
        AND (u.status IS NULL
             OR NOT kici_job_terminal(u.status)
             OR NOT (u.status = ANY(kici_run_on(e.run_on)))))
RETURNING j.id, j.wave_gated
"""

_SKIP = """
UPDATE execution_jobs
SET status = 'skipped', error_message = %(reason)s, completed_at = %(now)s, updated_at = %(now)s
WHERE run_id = %(run)s AND name = %(name)s AND status = 'pending' AND (%(wave)s OR NOT needs_satisfied)
RETURNING id
"""

_WAVE_MEMBER = """
SELECT base_job_name, wave_gated, status, wave_fail_fast
FROM execution_jobs
WHERE run_id = %(run)s AND name = %(name)s AND base_job_name IS NOT NULL AND wave_max_parallel IS NOT NULL
"""

_GATED_SIBLINGS = """
SELECT id, name
FROM execution_jobs
WHERE run_id = %(run)s AND base_job_name = %(base)s AND wave_gated AND NOT kici_job_terminal(status)
ORDER BY fanout_index
"""

_RELEASE = """
UPDATE execution_jobs SET wave_gated = false, updated_at = %(now)s
WHERE id = %(id)s AND wave_gated
RETURNING needs_satisfied
"""

# L3: open jobs no upstream can move any more (the pure model's find_stuck_jobs).
_STUCK = """
SELECT j.name FROM execution_jobs j
WHERE j.run_id = %(run)s AND NOT kici_job_terminal(j.status)
  AND (
      (NOT j.needs_satisfied AND j.pending_groups = '[]'::jsonb
       AND NOT EXISTS (
           SELECT 1 FROM execution_job_needs e
           LEFT JOIN execution_jobs u ON u.run_id = e.run_id AND u.name = e.upstream_name
           WHERE e.run_id = j.run_id AND e.job_name = j.name
             AND (u.status IS NULL OR NOT kici_job_terminal(u.status))))
      OR (j.needs_satisfied AND j.wave_gated
          AND NOT EXISTS (
              SELECT 1 FROM execution_jobs s
              WHERE s.run_id = j.run_id AND s.base_job_name = j.base_job_name
                AND NOT s.wave_gated AND NOT kici_job_terminal(s.status))))
ORDER BY j.ordinal
"""

_UNSATISFIED = """
SELECT name FROM execution_jobs
WHERE run_id = %(run)s AND status = 'pending' AND NOT needs_satisfied
ORDER BY ordinal
"""


def lock_run(conn: Connection, run_id: uuid.UUID) -> RunStatus:
    """Serialize the run's status writers; raises :class:`RunNotFoundError`."""
    row = conn.execute(_LOCK_RUN, {"run": run_id}).fetchone()
    if row is None:
        raise RunNotFoundError(run_id)
    return RunStatus(row["status"])


def notify(conn: Connection, channel: str, payload: str) -> None:
    conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))


class Gate:
    """One gate evaluation for one run, inside a transaction that already called :func:`lock_run`."""

    def __init__(self, conn: Connection, run_id: uuid.UUID, now: datetime) -> None:
        self._conn = conn
        self._run_id = run_id
        self._now = now
        self._finished: deque[str] = deque()
        self._dispatched: list[GateJob] = []
        self._skipped: list[GateSkip] = []
        self._failed: list[GateFailure] = []

    def _params(self, **extra: object) -> dict[str, object]:
        return {"run": self._run_id, "now": self._now, **extra}

    def record_terminal(self, name: str, status: JobStatus, reason: str | None = None) -> uuid.UUID | None:
        """Write ``status`` if the job is open (its hooks run on :meth:`drain`); None if it was terminal."""
        row = self._conn.execute(
            _RECORD_TERMINAL, self._params(name=name, status=status.value, reason=reason)
        ).fetchone()
        if row is None:
            return None
        self._finished.append(name)
        return row["id"]

    def finished(self, names: Iterable[str]) -> None:
        """Jobs the caller already made terminal in this transaction."""
        self._finished.extend(names)

    def drain(self) -> None:
        while self._finished:
            name = self._finished.popleft()
            self._needs_hook(name)
            self._wave_hook(name)

    def fail_stuck(self) -> None:
        """Fail every stuck job with :data:`STUCK_REASON`, then drain."""
        names = [row["name"] for row in self._conn.execute(_STUCK, self._params()).fetchall()]
        for name in names:
            job_id = self.record_terminal(name, JobStatus.FAILED, STUCK_REASON)
            if job_id is not None:
                self._failed.append(GateFailure(job_id, name, STUCK_REASON))
        self.drain()

    def recompute(self) -> None:
        """Settle every pending, unsatisfied job in creation order (the restart path)."""
        names = [row["name"] for row in self._conn.execute(_UNSATISFIED, self._params()).fetchall()]
        for name in names:
            self._settle(name)
            self.drain()

    def outcome(self, *, ignored: bool = False) -> GateOutcome:
        """The changes so far; announces ready jobs on ``kici_job_ready`` (sent at commit)."""
        if self._dispatched:
            notify(self._conn, channels.JOB_READY, str(self._run_id))
        return GateOutcome(
            run_id=self._run_id,
            dispatched=tuple(self._dispatched),
            skipped=tuple(self._skipped),
            failed=tuple(self._failed),
            ignored=ignored,
        )

    def _needs_hook(self, completed: str) -> None:
        rows = self._conn.execute(_OPEN_DEPENDENTS, self._params(name=completed)).fetchall()
        for row in rows:
            if row["allowed"]:
                self._settle(row["job_name"])
            else:
                status = JobStatus(row["upstream_status"])
                self._skip(row["job_name"], unmet_reason(completed, status))

    def _settle(self, name: str) -> None:
        violation = self._conn.execute(_FIRST_VIOLATION, self._params(name=name)).fetchone()
        if violation is not None:
            self._skip(name, unmet_reason(violation["upstream_name"], JobStatus(violation["status"])))
            return
        row = self._conn.execute(_SATISFY, self._params(name=name)).fetchone()
        if row is not None and not row["wave_gated"]:
            self._dispatched.append(GateJob(row["id"], name))

    def _skip(self, name: str, reason: str, *, wave: bool = False) -> None:
        row = self._conn.execute(_SKIP, self._params(name=name, reason=reason, wave=wave)).fetchone()
        if row is not None:
            self._skipped.append(GateSkip(row["id"], name, reason))
            self._finished.append(name)

    def _wave_hook(self, completed: str) -> None:
        member = self._conn.execute(_WAVE_MEMBER, self._params(name=completed)).fetchone()
        if member is None or member["wave_gated"]:
            return
        gated = self._conn.execute(_GATED_SIBLINGS, self._params(base=member["base_job_name"])).fetchall()
        if not gated:
            return
        if member["wave_fail_fast"] and JobStatus(member["status"]) in FAILING_JOB_STATES:
            for sibling in gated:
                self._skip(sibling["name"], WAVE_HALTED_REASON, wave=True)
            return
        first = gated[0]
        released = self._conn.execute(_RELEASE, self._params(id=first["id"])).fetchone()
        if released is not None and released["needs_satisfied"]:
            self._dispatched.append(GateJob(first["id"], first["name"]))
