"""Pre-started workflow runners: the sandbox and the runner's interpreter, started before the job.

Why: starting bubblewrap and the runner's interpreter, then importing the executor and the SDK, costs
more than everything else the agent does for a job (about 150 ms on the 2-core reference box, issue 7),
and none of it depends on the job. A runner started ahead of time, in the fresh directory of the job
that will use it, has paid that before the dispatch arrives: the job clones into that directory and
sends ``execute`` (``scripts/bench/latency.py`` shows the difference as ``runner_start``/``first_step``).

Rules:

* A warm runner serves exactly one job: the runner process exits after its ``job.complete``, and one
  that was never used is killed. Nothing of a job can reach the next one.
* Each warm runner has its own fresh job directory with an empty ``workspace``, bound into its sandbox
  at launch; the runner does not look at it before ``execute``. The job that takes it clones there.
* A runner is started with the settings of its time (:class:`WarmKey`: network mode, interpreter,
  ready timeout); one whose key no longer matches (a reload changed them) is discarded, never used.
* At most ``spare`` runners wait at once; an idle one costs an interpreter's memory and nothing else
  (it blocks reading its socket). A job that finds none ready starts its own runner as before, so a
  burst never waits for the pool. The pool refills when the job that took a runner has ended, not
  when it took it: a replacement started at once would compete for the CPU with that very job's
  clone and step (on the 2-core box it made them slower by more than the runner saved).
* A runner that died while waiting, or could not start, is discarded; after a start failure the pool
  waits :data:`RETRY_DELAY_S` before trying again rather than spinning on a broken sandbox.
* ``stop`` (drain, shutdown) kills the idle runners and starts no more.

The runner's reader tasks live in the pool's task, not the job's: an exception of a job callback is
kept on the :class:`WarmRunner` (``error``) for the job to raise, so it fails that job and never the
pool.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

import attrs
import structlog
import trio

from kici.domain.ports import NetworkMode, Sandbox
from kici.services.runner_client import RunnerClient, open_runner

_log = structlog.get_logger("kici.agent.warm")

RETRY_DELAY_S: Final = 5.0
WORKSPACE: Final = "workspace"


@attrs.frozen
class WarmKey:
    """The settings a runner was started with; a runner is only used under the same key."""

    network: NetworkMode
    python: str | None
    ready_timeout_s: float


@attrs.define(eq=False)
class WarmRunner:
    """A started, ready runner and its job directory.

    ``taken``: a job has it (its directory is then the job's, removed by the job's cleanup);
    ``release`` hands it back once, used or not.
    """

    directory: Path
    client: RunnerClient
    key: WarmKey
    taken: bool = False
    released: trio.Event = attrs.field(factory=trio.Event)
    finished: trio.Event = attrs.field(factory=trio.Event)
    """Set once the pool has killed and reaped the runner."""
    error: BaseException | None = None

    @property
    def workspace(self) -> Path:
        return self.directory / WORKSPACE

    @property
    def alive(self) -> bool:
        return self.client.process.returncode is None and not self.released.is_set()

    def release(self) -> None:
        """The job is done with it (or never started it): the pool kills and reaps what is left."""
        self.released.set()


class WarmRunners:
    """The pool; see the module docstring. ``run`` owns the runners' tasks until cancelled."""

    def __init__(
        self,
        sandbox: Sandbox,
        root: Path,
        *,
        env: Mapping[str, str],
        key: WarmKey,
        spare: int = 1,
        remove: Callable[[Path], None],
        retry_delay_s: float = RETRY_DELAY_S,
    ) -> None:
        self._sandbox = sandbox
        self._root = root
        self._env = dict(env)
        self.key = key
        self.spare = spare
        self._remove = remove
        self._retry_delay_s = retry_delay_s
        self._idle: list[WarmRunner] = []
        self._starting = 0
        self._stopped = False
        self._changed = trio.Event()

    @property
    def idle(self) -> int:
        return len(self._idle)

    def waiting(self) -> tuple[WarmRunner, ...]:
        """The runners ready for a job right now, oldest first (the next ``take`` gets the first)."""
        return tuple(self._idle)

    def take(self) -> WarmRunner | None:
        """A ready runner started under the current key, or None; never waits."""
        while self._idle:
            warm = self._idle.pop(0)
            if warm.alive and warm.key == self.key:
                warm.taken = True
                return warm
            warm.release()
        return None

    def reconfigure(self, key: WarmKey, spare: int) -> None:
        """New settings: idle runners started under the old ones are discarded; the pool grows or
        shrinks to ``spare`` (a surplus idle runner is kept until a job takes it)."""
        self.spare = spare
        if key != self.key:
            self.key = key
            self._discard_idle()
        self._changed.set()

    def stop(self) -> None:
        """Kill the idle runners and start no more (drain and shutdown)."""
        self._stopped = True
        self._discard_idle()

    def _discard_idle(self) -> None:
        idle, self._idle = self._idle, []
        for warm in idle:
            warm.release()
        self._changed.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                while not self._stopped and len(self._idle) + self._starting < self.spare:
                    self._starting += 1
                    nursery.start_soon(self._hold, self.key)
                await self._changed.wait()
                self._changed = trio.Event()

    async def _hold(self, key: WarmKey) -> None:
        """Start one runner, offer it, and keep its tasks until it is released or dies idle."""
        directory = self._root / f"warm.{uuid.uuid4().hex[:12]}"
        warm: WarmRunner | None = None
        problem: str | None = None
        try:
            await trio.Path(directory / WORKSPACE).mkdir(parents=True)
            async with open_runner(
                self._sandbox,
                workspace=str(directory / WORKSPACE),
                env=self._env,
                network=key.network,
                python=key.python,
                ready_timeout_s=key.ready_timeout_s,
            ) as client:
                warm = WarmRunner(directory, client, key)
                self._starting -= 1
                self._idle.append(warm)
                self._changed.set()
                await self._until_released_or_dead_idle(warm)
        except Exception as exc:
            if warm is None:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                warm.error = exc
        finally:
            if warm is None:
                self._starting -= 1
            else:
                warm.release()
                if warm in self._idle:
                    self._idle.remove(warm)
            if warm is None or not warm.taken:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._remove, directory)
            if warm is not None:
                warm.finished.set()
        if problem is not None:
            _log.warning("a pre-started runner did not start; jobs start their own", error=problem)
            await trio.sleep(self._retry_delay_s)
        self._changed.set()

    @staticmethod
    async def _until_released_or_dead_idle(warm: WarmRunner) -> None:
        """Until the job (or the pool) releases it; a runner that dies before a job took it ends it too
        (one that dies while taken is the job's to report)."""
        async with trio.open_nursery() as nursery:

            async def released() -> None:
                await warm.released.wait()
                nursery.cancel_scope.cancel()

            async def died() -> None:
                await warm.client.wait_closed()
                if not warm.taken:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(released)
            nursery.start_soon(died)


__all__ = ["RETRY_DELAY_S", "WarmKey", "WarmRunner", "WarmRunners"]
