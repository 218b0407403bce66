"""Cancellation inside the runner: per-unit tokens and the process-group kill ladder (10 §6, EXE-13).

Every executed unit (step attempt, hook) gets its own ``CancelToken``. Cancelling a token marks the
unit's context cancelled (so ``ctx`` calls raise ``StepCancelled``), runs registered callbacks (an async
step's trio cancel scope) and terminates the shell processes the unit started: SIGTERM to each process
group, SIGKILL after the grace period — or SIGKILL at once on a force cancel. Hooks get fresh tokens, so
the cancel path can still run ``ctx.sh`` after the step it cleans up after was cancelled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable

_POLL_S = 0.02
DEFAULT_GRACE_S = 30.0
"""SIGTERM -> SIGKILL grace when neither the request nor the job sets one (10 §6)."""


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; ``False`` when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def group_alive(pgid: int) -> bool:
    return signal_group(pgid, 0)


def terminate_group(proc: subprocess.Popen[bytes], grace_s: float, *, force: bool = False) -> None:
    """SIGTERM the process's group, wait up to ``grace_s`` for it to go, then SIGKILL what is left.

    The group (not just the leader) is signalled so ``bash -c 'a | b'`` and background children stop too.
    """
    pgid = proc.pid
    if force or grace_s <= 0:
        signal_group(pgid, signal.SIGKILL)
        return
    if not signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc.poll() is not None and not group_alive(pgid):
            return
        time.sleep(_POLL_S)
    signal_group(pgid, signal.SIGKILL)


class CancelToken:
    """Cancellation state of one unit. Thread-safe; cancelling twice is a no-op (first reason wins)."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._callbacks: list[Callable[[], None]] = []
        self.reason: str | None = None
        self.kind: str | None = None
        self.force = False

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def cancel(self, reason: str, *, kind: str = "cancel", force: bool = False) -> None:
        """``kind`` is ``cancel`` or ``timeout``; it decides how the unit's end is reported."""
        with self._lock:
            if self._event.is_set():
                if force and not self.force:
                    self.force = True
                    procs = list(self._procs)
                else:
                    return
                callbacks: list[Callable[[], None]] = []
            else:
                self.reason, self.kind, self.force = reason, kind, force
                self._event.set()
                procs, callbacks = list(self._procs), list(self._callbacks)
        for proc in procs:
            self._terminate_async(proc)
        for callback in callbacks:
            with contextlib.suppress(Exception):
                callback()

    def register(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.add(proc)
            cancelled = self._event.is_set()
        if cancelled:
            self._terminate_async(proc)

    def unregister(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.discard(proc)

    def add_callback(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def _terminate_async(self, proc: subprocess.Popen[bytes]) -> None:
        threading.Thread(
            target=terminate_group, args=(proc, self.grace_s), kwargs={"force": self.force}, daemon=True
        ).start()


class JobControl:
    """Job-wide cancellation: the abort state, the in-flight tokens, the job deadline.

    ``abort`` may be called from the IPC reader thread or a signal handler's helper thread. A graceful
    abort cancels the step-loop units in flight (hooks started afterwards get fresh tokens); a force
    abort SIGKILLs everything and hands over to ``on_force`` (report and exit at once). A second graceful
    abort is a no-op (P-CAN5); a force abort after a graceful one escalates.
    """

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._lock = threading.Lock()
        self._aborted = threading.Event()
        self._active: set[CancelToken] = set()
        self._all: set[CancelToken] = set()
        self.force = False
        self.reason: str | None = None
        self.on_force: Callable[[str], None] | None = None

    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()

    def wait_aborted(self, timeout: float) -> bool:
        return self._aborted.wait(timeout)

    def new_token(self, *, loop_unit: bool) -> CancelToken:
        """A token for one unit; loop units (steps and their before/after hooks) are what a graceful abort
        cancels. A loop unit created after the abort starts cancelled."""
        token = CancelToken(self.grace_s)
        with self._lock:
            self._all.add(token)
            if loop_unit:
                self._active.add(token)
            late = loop_unit and self._aborted.is_set()
        if late:
            token.cancel(self.reason or "cancelled")
        return token

    def release(self, token: CancelToken) -> None:
        with self._lock:
            self._active.discard(token)
            self._all.discard(token)

    def abort(self, *, force: bool, reason: str | None = None) -> None:
        with self._lock:
            first = not self._aborted.is_set()
            escalate = force and not self.force
            if not first and not escalate:
                return
            if first:
                self.reason = reason or "cancelled"
            self.force = self.force or force
            targets = list(self._all if force else self._active)
            self._aborted.set()
        for token in targets:
            token.cancel(self.reason or "cancelled", force=force)
        if force and self.on_force is not None:
            self.on_force(self.reason or "cancelled")

    def kill_all(self) -> None:
        with self._lock:
            targets = list(self._all)
        for token in targets:
            token.cancel(self.reason or "cancelled", force=True)


__all__ = ["DEFAULT_GRACE_S", "CancelToken", "JobControl", "group_alive", "signal_group", "terminate_group"]
