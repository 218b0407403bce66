"""Entry point: ``python -m kici.services.runner --ipc-fd N`` (ISO-02 sequence, 10 §6 cancellation).

Threads: the main thread runs the job; a reader thread handles incoming frames (``execute``, ``abort``,
responses); a signal thread turns SIGTERM/SIGINT into the graceful ``abort`` path. A force abort, or the
parent closing the channel, SIGKILLs every process group the job started and ends the process at once,
without hooks.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from kici.services.runner.cancel import DEFAULT_GRACE_S, JobControl
from kici.services.runner.ipc import Channel, FrameTooLargeError

if TYPE_CHECKING:
    from kici.services.runner.executor import JobRun
    from kici.services.runner.runtime import Requests


_RESPONSES = frozenset({"event.emit.response", "agent.api.response", "concurrency.ack"})


class Runner:
    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.control = JobControl(DEFAULT_GRACE_S)
        self.control.on_force = self._force_exit
        self.requests: Requests | None = None
        self.inbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self.job: JobRun | None = None
        self._finish_lock = threading.Lock()
        self._finished = False

    def _diagnose(self, text: str) -> None:
        """Runner-level problems go to the real stderr, which the parent keeps for crash reports."""
        if sys.__stderr__ is not None:
            sys.__stderr__.write(f"[kici-runner] {text}\n")

    def finish(self, message: dict[str, Any]) -> None:
        """Send ``job.complete`` exactly once, whoever gets there first (main thread or force abort)."""
        with self._finish_lock:
            if self._finished:
                return
            self._finished = True
        try:
            self.channel.send(message)
        except FrameTooLargeError as exc:
            self.channel.send(
                {
                    "type": "job.complete",
                    "status": "failed",
                    "stepResults": message.get("stepResults", []),
                    "error": f"job.complete could not be sent: {exc}",
                }
            )

    def _force_exit(self, reason: str) -> None:
        job = self.job
        if job is not None:
            job.control.kill_all()
            job.tracker.kill_all(signal.SIGKILL)
            message = job.snapshot("cancelled", reason)
            shutil.rmtree(job.scratch, ignore_errors=True)
        else:
            message = {"type": "job.complete", "status": "cancelled", "stepResults": [], "error": reason}
        self.finish(message)
        self.channel.close()
        os._exit(0)

    def _parent_gone(self) -> None:
        job = self.job
        if job is not None:
            job.control.kill_all()
            job.tracker.kill_all(signal.SIGKILL)
        os._exit(1)

    def read(self) -> None:
        for frame in self.channel.frames():
            if isinstance(frame, str):
                self._diagnose(frame)
                continue
            kind = frame["type"]
            if kind == "execute":
                request = frame.get("request")
                self.inbox.put(request if isinstance(request, dict) else {})
            elif kind == "abort":
                reason = frame.get("reason")
                self.control.abort(
                    force=frame.get("force") is True,
                    reason=reason if isinstance(reason, str) else "cancelled",
                )
            elif kind in _RESPONSES:
                if self.requests is not None:
                    self.requests.resolve(frame)
            else:
                self._diagnose(f"ignoring unknown message type {kind!r}")
        self._parent_gone()

    def _watch_signals(self) -> None:
        """SIGTERM/SIGINT take the graceful abort path.

        The Python-level handlers do nothing: the interpreter writes each signal number to a wakeup pipe
        from its C handler, whichever thread the kernel picked, and this thread acts on it. Doing the work
        in a handler would risk re-entering a lock the interrupted main thread holds.
        """
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _ignore_signal)

        def watch() -> None:
            while True:
                for signum in os.read(read_end, 64):
                    if signum in (signal.SIGTERM, signal.SIGINT):
                        reason = f"received {signal.Signals(signum).name}"
                        self.control.abort(force=False, reason=reason)

        threading.Thread(target=watch, daemon=True, name="kici-signals").start()

    def run(self) -> int:
        self._watch_signals()
        self.channel.send({"type": "ready"})
        # Imported after `ready`: the SDK and the executor load while the parent sends `execute`.
        from kici.services.runner.executor import JobRun  # noqa: PLC0415
        from kici.services.runner.runtime import Requests  # noqa: PLC0415

        self.requests = Requests(self.channel)
        threading.Thread(target=self.read, daemon=True, name="kici-ipc-reader").start()
        request = None
        while request is None:
            if self.control.aborted:
                self.finish(
                    {
                        "type": "job.complete",
                        "status": "cancelled",
                        "stepResults": [],
                        "error": self.control.reason or "cancelled",
                    }
                )
                self.channel.close()
                return 0
            try:
                request = self.inbox.get(timeout=0.1)
            except queue.Empty:
                continue
        workspace = request.get("workspace")
        if isinstance(workspace, str) and os.path.isdir(workspace):
            os.chdir(workspace)
        self.job = JobRun(self.channel, request, self.control, self.requests)
        self.finish(self.job.run())
        self.channel.close()
        return 0


def _ignore_signal(_signum: int, _frame: FrameType | None) -> None:
    """Installed so the wakeup pipe sees the signal; the real work happens in ``_watch_signals``."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kici.services.runner", description=__doc__)
    parser.add_argument("--ipc-fd", type=int, required=True, help="inherited socket for the IPC channel")
    args = parser.parse_args(argv)
    try:
        channel = Channel.from_fd(args.ipc_fd)
    except OSError as exc:
        parser.error(f"--ipc-fd {args.ipc_fd}: {exc}")
    return Runner(channel).run()


if __name__ == "__main__":
    sys.exit(main())
