"""A scripted job manager behind :class:`kici.services.agent.ports.Jobs`, for tests of the agent's link.

It runs no code. It answers dispatches the way the port promises (20 §12, EXE-36): ``job.reject
{draining}`` while draining, ``job.reject{busy}`` followed by ``agent.status`` at full capacity, else
``job.ack`` through ``send_direct`` before :meth:`FakeJobs.offer` returns. Every offer and cancel is
recorded, and a test plays the jobs' side through the link's `Outbound` with the helpers (``status``,
``step``, ``log``, ``heartbeat``, ``finish``, ``line``), exactly as a real job would send them.

It also has the lifecycle the daemon's composition root drives (``run``, ``drain``, ``wait_idle``,
``shutdown``), so the signal handling of ``kici.services.agent.main`` can be tested without a runner:
``shutdown(grace_s)`` waits up to the grace for running jobs to be finished by the test, then reports
each remaining one ``cancelled``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import trio

from kici.domain.protocol import (
    AgentStatus,
    InFlightJob,
    JobAck,
    JobCancel,
    JobDispatch,
    JobHeartbeat,
    JobReject,
    JobState,
    JobStatus,
    LogChunk,
    RejectReason,
    StepState,
    StepStatus,
)
from kici.services.agent.job_runner import JobSettings
from kici.services.agent.ports import Outbound
from kici.services.connection import WallClock, wall_clock_ms

TERMINAL_STATES = frozenset({JobState.SUCCESS, JobState.FAILED, JobState.CANCELLED})


class JobRef(Protocol):
    @property
    def run_id(self) -> str: ...

    @property
    def job_id(self) -> str: ...


def _id() -> str:
    return str(uuid.uuid4())


class FakeJobs:
    """See the module docstring. ``auto_running`` sends ``job.status running`` right after each ack."""

    def __init__(
        self,
        outbound: Outbound,
        *,
        agent_id: str = "fake-agent",
        max_concurrency: int = 1,
        auto_running: bool = True,
        clock: WallClock = wall_clock_ms,
    ) -> None:
        self.outbound = outbound
        self.agent_id = agent_id
        self._max_concurrency = max_concurrency
        self.auto_running = auto_running
        self._clock = clock
        self.offers: list[JobDispatch] = []
        self.rejected: list[tuple[JobDispatch, RejectReason]] = []
        self.cancels: list[JobCancel] = []
        self.running: dict[str, JobRef] = {}
        self.shutdown_grace: float | None = None
        self.reconfigured: list[JobSettings] = []
        self._draining = False
        self._changed = trio.Event()

    # --- ports.Jobs ----------------------------------------------------------------------------

    @property
    def active(self) -> int:
        return len(self.running)

    @property
    def max_concurrency(self) -> int:
        return self._max_concurrency

    def reconfigure(self, settings: JobSettings) -> None:
        """A reloaded config: only the concurrency matters to a fake."""
        self.reconfigured.append(settings)
        self._max_concurrency = settings.max_concurrency

    @property
    def draining(self) -> bool:
        return self._draining

    def offer(self, dispatch: JobDispatch) -> None:
        self.offers.append(dispatch)
        reason = None
        if self._draining:
            reason = RejectReason.DRAINING
        elif self.active >= self._max_concurrency:
            reason = RejectReason.BUSY
        if reason is not None:
            self.rejected.append((dispatch, reason))
            self.outbound.send_direct(
                JobReject(
                    message_id=_id(),
                    run_id=dispatch.run_id,
                    job_id=dispatch.job_id,
                    reason=reason,
                    timestamp=self._clock(),
                )
            )
            if reason is RejectReason.BUSY:
                self.outbound.send_direct(
                    AgentStatus(message_id=_id(), agent_id=self.agent_id, active_jobs=self.active)
                )
        else:
            self.outbound.send_direct(
                JobAck(
                    message_id=_id(), run_id=dispatch.run_id, job_id=dispatch.job_id, timestamp=self._clock()
                )
            )
            self.running[dispatch.job_id] = dispatch
            if self.auto_running:
                self.status(dispatch, JobState.RUNNING)
        self._touch()

    def cancel(self, message: JobCancel) -> None:
        self.cancels.append(message)
        self._touch()

    def in_flight(self) -> list[InFlightJob]:
        return [InFlightJob(job_id=job.job_id, run_id=job.run_id) for job in self.running.values()]

    # --- lifecycle (what the daemon drives) -----------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    def drain(self) -> None:
        self._draining = True
        self._touch()

    async def wait_idle(self) -> None:
        await self.wait_until(lambda: not self.running)

    async def shutdown(self, grace_s: float) -> None:
        """Refuse new jobs, give the running ones ``grace_s`` to finish, then cancel the rest."""
        self.shutdown_grace = grace_s
        self.drain()
        with trio.move_on_after(grace_s):
            await self.wait_idle()
        for job in list(self.running.values()):
            self.finish(job, JobState.CANCELLED, {"error": {"message": "agent shutting down"}})

    # --- the jobs' side, scripted by a test ------------------------------------------------------

    def adopt(self, job: JobRef) -> None:
        """Count ``job`` as running (a job started before the scene the test sets up)."""
        self.running[job.job_id] = job
        self._touch()

    def status(self, job: JobRef, state: JobState, data: dict[str, Any] | None = None) -> JobStatus:
        message = JobStatus(
            message_id=_id(),
            run_id=job.run_id,
            job_id=job.job_id,
            state=state,
            timestamp=self._clock(),
            data=data,
        )
        self.outbound.send_pinned(message)
        return message

    def step(
        self, job: JobRef, index: int, name: str, state: StepState, data: dict[str, Any] | None = None
    ) -> StepStatus:
        message = StepStatus(
            message_id=_id(),
            run_id=job.run_id,
            job_id=job.job_id,
            step_index=index,
            step_name=name,
            state=state,
            timestamp=self._clock(),
            data=data,
        )
        self.outbound.send_pinned(message)
        return message

    def log(self, job: JobRef, step_index: int, lines: Sequence[str]) -> LogChunk:
        message = LogChunk(
            message_id=_id(),
            run_id=job.run_id,
            job_id=job.job_id,
            step_index=step_index,
            lines=list(lines),
            timestamp=self._clock(),
        )
        self.outbound.send(message)
        return message

    def heartbeat(self, job: JobRef) -> JobHeartbeat:
        message = JobHeartbeat(run_id=job.run_id, job_id=job.job_id, timestamp=self._clock())
        self.outbound.send(message)
        return message

    def line(self, text: str) -> None:
        self.outbound.stream_log(text)

    def finish(
        self, job: JobRef, state: JobState = JobState.SUCCESS, data: dict[str, Any] | None = None
    ) -> None:
        """The terminal status, after which the job no longer counts as active."""
        if state not in TERMINAL_STATES:
            raise ValueError(f"{state} is not a terminal job state")
        self.status(job, state, data)
        self.running.pop(job.job_id, None)
        self._touch()

    # --- waiting -------------------------------------------------------------------------------

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    async def wait_for_offer(self, count: int = 1) -> JobDispatch:
        await self.wait_until(lambda: len(self.offers) >= count)
        return self.offers[count - 1]

    async def wait_for_cancel(self, count: int = 1) -> JobCancel:
        await self.wait_until(lambda: len(self.cancels) >= count)
        return self.cancels[count - 1]

    def _touch(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


__all__ = ["TERMINAL_STATES", "FakeJobs", "JobRef"]
