"""The agent's job manager: the capacity gate, the running jobs and their shutdown (EXE-36, PRO-10).

It implements :class:`kici.services.agent.ports.Jobs` for the link. ``offer`` answers a dispatch
before it returns (20 §12): ``job.reject{draining}`` while draining, ``job.reject{busy}`` plus an
``agent.status`` when every slot is taken, else ``job.ack`` — sent before anything is cloned — and the
job starts in the manager's nursery (:class:`.job_runner.JobRunner`, the eight phases). A slot is
taken from the ``ack`` until the job's terminal ``job.status`` was handed to the link; the job's
cleanup then goes on outside the count, so the orchestrator, which frees the slot when the terminal
status arrives, never sees a ``busy`` for a slot it rightly believes free. An ``agent.status`` follows
each job once its cleanup is done.

``run`` owns the nursery; cancelling it (the daemon going away) stops every job, and each still
reports a terminal status and removes its directory. ``shutdown(grace_s)`` is the SIGTERM path; the
spec asks that the agent "finishes or hands back running jobs within a 10 s grace": we drain, give
the jobs ``grace_s`` to finish, then stop the rest by force (no hooks) and report them ``failed`` with
a reason saying so — a job lost to an agent restart is one the user reruns, not one they cancelled.
``drain`` plus ``wait_idle`` is the SIGUSR1 path (finish what runs, take nothing new).

Choices where the spec is silent:

* A dispatch for a job this agent is already running is acknowledged again (the orchestrator lost
  our first ``ack``) and not started twice.
* Directories left under ``<work_dir>/jobs`` by an agent that died are removed when ``run`` starts;
  the warm mirrors under ``<work_dir>/mirrors`` are kept.
* With ``settings.warm_runners`` > 0 the manager keeps that many runners started ahead of their job
  (:mod:`.warm`, in ``<work_dir>/jobs``); a dispatch takes one when one is ready. Draining stops the
  pool (idle runners are killed; running jobs keep theirs); a reload that changes the runner's
  settings discards the idle ones.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import trio

from kici.adapters.clock import Clock, SystemClock
from kici.domain.ports import Sandbox
from kici.domain.protocol import (
    AgentStatus,
    InFlightJob,
    JobAck,
    JobCancel,
    JobDispatch,
    JobReject,
    JobState,
    JobStatus,
    RejectReason,
)
from kici.services.agent.job_runner import JobRunner, JobSettings, remove_tree, runner_env
from kici.services.agent.mirror import MirrorStore
from kici.services.agent.ports import Outbound
from kici.services.agent.warm import WarmKey, WarmRunners

JOBS_DIR: Final = "jobs"
MIRRORS_DIR: Final = "mirrors"
DEFAULT_SHUTDOWN_GRACE_S: Final = 10.0


class JobManager:
    """See the module docstring; every method the link calls returns without waiting."""

    def __init__(
        self,
        settings: JobSettings,
        outbound: Outbound,
        sandbox: Sandbox,
        work_dir: Path,
        *,
        clock: Clock | None = None,
        host_env: Mapping[str, str] | None = None,
        mirrors: MirrorStore | None = None,
    ) -> None:
        self.settings = settings
        self._outbound = outbound
        self._sandbox = sandbox
        self.work_dir = work_dir
        self.jobs_root = work_dir / JOBS_DIR
        self._clock = clock or SystemClock()
        self._host_env = dict(os.environ if host_env is None else host_env)
        self.mirrors = mirrors or MirrorStore(
            work_dir / MIRRORS_DIR, timeout_s=settings.git_timeout_s, base_env=self._host_env
        )
        self._warm = (
            WarmRunners(
                sandbox,
                self.jobs_root,
                env=runner_env(sandbox, self._host_env),
                key=warm_key(settings),
                spare=settings.warm_runners,
                remove=remove_tree,
            )
            if settings.warm_runners > 0
            else None
        )
        self._active: dict[str, JobRunner] = {}
        self._running: set[JobRunner] = set()
        self._nursery: trio.Nursery | None = None
        self._draining = False
        self._idle = trio.Event()
        self._idle.set()
        self._no_active = trio.Event()
        self._no_active.set()

    # --- the Jobs port ----------------------------------------------------------------------------

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def max_concurrency(self) -> int:
        return self.settings.max_concurrency

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def warm(self) -> WarmRunners | None:
        """The pre-started runners (None when ``settings.warm_runners`` is 0)."""
        return self._warm

    def offer(self, dispatch: JobDispatch) -> None:
        if dispatch.job_id in self._active:
            self._operational(f"job {dispatch.job_id} dispatched again while running: acknowledged again")
            self._ack(dispatch)
            return
        if self._draining:
            self._reject(dispatch, RejectReason.DRAINING)
            return
        if self._nursery is None or self.active >= self.max_concurrency:
            self._reject(dispatch, RejectReason.BUSY)
            self._send_agent_status()
            return
        warm = self._warm.take() if self._warm is not None else None
        try:
            runner = JobRunner(
                dispatch,
                settings=self.settings,
                outbound=self._outbound,
                sandbox=self._sandbox,
                mirrors=self.mirrors,
                jobs_root=self.jobs_root,
                clock=self._clock,
                host_env=self._host_env,
                on_reported=self._reported,
                warm=warm,
            )
        except Exception as exc:
            if warm is not None:
                warm.release()
            self._ack(dispatch)
            self._fail_unstarted(dispatch, f"the agent could not start the job: {type(exc).__name__}: {exc}")
            return
        self._ack(dispatch)
        self._active[dispatch.job_id] = runner
        self._running.add(runner)
        if self._idle.is_set():
            self._idle = trio.Event()
        if self._no_active.is_set():
            self._no_active = trio.Event()
        self._nursery.start_soon(self._run_job, runner)

    def cancel(self, message: JobCancel) -> None:
        runner = self._active.get(message.job_id)
        if runner is None:
            self._operational(f"job.cancel for job {message.job_id}, which is not running here: ignored")
            return
        self._operational(
            f"job {message.job_id}: {'force ' if message.force else ''}cancel ({message.reason})"
        )
        runner.cancel(force=bool(message.force), reason=message.reason)

    def in_flight(self) -> list[InFlightJob]:
        return [InFlightJob(job_id=r.job_id, run_id=r.run_id) for r in self._active.values()]

    # --- lifecycle --------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the jobs' nursery until cancelled; clears job directories an earlier agent left behind."""
        if self.jobs_root.exists():
            await trio.to_thread.run_sync(remove_tree, self.jobs_root)
        self.jobs_root.mkdir(parents=True, exist_ok=True)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._warm is not None:
                    await nursery.start(self._warm.run)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def drain(self) -> None:
        """Take no new job (SIGUSR1); running jobs finish."""
        self._draining = True
        if self._warm is not None:
            self._warm.stop()

    async def wait_idle(self) -> None:
        """Until no job runs and every cleanup is done."""
        await self._idle.wait()

    async def shutdown(self, grace_s: float = DEFAULT_SHUTDOWN_GRACE_S) -> list[str]:
        """SIGTERM: drain, let jobs finish for ``grace_s``, then stop the rest by force; returns their ids.

        Returns once every job reported and cleaned up (bounded by the force path's kill and reap).
        """
        self.drain()
        with trio.move_on_after(grace_s):
            await self._no_active.wait()
        stopped = list(self._active)
        for runner in list(self._active.values()):
            runner.shut_down()
        with trio.move_on_after(self.settings.term_wait_s + self.settings.abort_wait_s):
            await self._idle.wait()
        return stopped

    def reconfigure(self, settings: JobSettings) -> None:
        """A reloaded config (SIGHUP): new jobs and the capacity gate use it; running jobs keep theirs."""
        self.settings = settings
        if self._warm is not None:
            self._warm.reconfigure(warm_key(settings), settings.warm_runners)

    # --- internals --------------------------------------------------------------------------------

    async def _run_job(self, runner: JobRunner) -> None:
        try:
            await runner.run()
        finally:
            self._reported(runner)
            self._running.discard(runner)
            if not self._running:
                self._idle.set()
            self._send_agent_status()

    def _reported(self, runner: JobRunner) -> None:
        if self._active.get(runner.job_id) is runner:
            del self._active[runner.job_id]
        if not self._active:
            self._no_active.set()

    def _now_ms(self) -> int:
        return int(self._clock.now().timestamp() * 1000)

    def _ack(self, dispatch: JobDispatch) -> None:
        self._outbound.send_direct(
            JobAck(
                message_id=str(uuid.uuid4()),
                run_id=dispatch.run_id,
                job_id=dispatch.job_id,
                timestamp=self._now_ms(),
            )
        )

    def _reject(self, dispatch: JobDispatch, reason: RejectReason) -> None:
        self._operational(f"job {dispatch.job_id} rejected: {reason.value}")
        self._outbound.send_direct(
            JobReject(
                message_id=str(uuid.uuid4()),
                run_id=dispatch.run_id,
                job_id=dispatch.job_id,
                reason=reason,
                timestamp=self._now_ms(),
            )
        )

    def _fail_unstarted(self, dispatch: JobDispatch, error: str) -> None:
        self._operational(f"job {dispatch.job_id}: {error}")
        self._outbound.send_pinned(
            JobStatus(
                message_id=str(uuid.uuid4()),
                run_id=dispatch.run_id,
                job_id=dispatch.job_id,
                state=JobState.FAILED,
                timestamp=self._now_ms(),
                data={"error": error, "durationMs": 0},
            )
        )
        self._send_agent_status()

    def _send_agent_status(self) -> None:
        self._outbound.send_direct(
            AgentStatus(
                message_id=str(uuid.uuid4()), agent_id=self.settings.agent_id, active_jobs=self.active
            )
        )

    def _operational(self, line: str) -> None:
        self._outbound.stream_log(line)


def warm_key(settings: JobSettings) -> WarmKey:
    """The settings a pre-started runner depends on."""
    return WarmKey(network=settings.network, python=settings.python, ready_timeout_s=settings.ready_timeout_s)


__all__ = ["DEFAULT_SHUTDOWN_GRACE_S", "JobManager", "JobSettings", "warm_key"]
