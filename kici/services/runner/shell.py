"""The process side of ``ctx.sh``: spawn in an own process group, stream lines, time out, cancel.

Each command is the leader of a fresh process group (same session as the runner, so the agent's kill of
the runner's session still reaches it), which lets cancellation and timeouts signal the whole pipeline.
Output is read line by line on two threads so stdout and stderr stream live and neither pipe can fill up
and block the child.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from kici.sdk.context import ShellResult
from kici.services.runner.cancel import CancelToken, signal_group, terminate_group

_DRAIN_AFTER_EXIT_S = 1.0


class ShellTimeoutError(Exception):
    """Raised inside the runner when ``ctx.sh(timeout=...)`` expires; surfaced as a ``ShellError``."""

    def __init__(self, result: ShellResult, timeout_s: float) -> None:
        super().__init__(f"timed out after {timeout_s:g}s")
        self.result = result
        self.timeout_s = timeout_s


class ProcessTracker:
    """Every process group the job started, so leftovers (``cmd &``) are killed when the job ends.

    A group is signalled only while some process of it is still in the runner's session: a finished
    group's id may have been reused by an unrelated process elsewhere, which must never be hit.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: set[int] = set()

    def add(self, pgid: int) -> None:
        with self._lock:
            self._groups.add(pgid)

    def kill_all(self, sig: int) -> None:
        with self._lock:
            groups = set(self._groups)
        for pgid in groups & _groups_in_session(os.getsid(0)):
            signal_group(pgid, sig)


def _groups_in_session(sid: int) -> set[int]:
    groups: set[int] = set()
    proc = Path("/proc")
    if not proc.is_dir():
        return groups
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 3 and fields[3] == str(sid) and fields[0] not in "ZX":
            groups.add(int(fields[2]))
    return groups


def _reader(stream: IO[bytes], sink: list[str], on_line: Callable[[str], None] | None) -> None:
    for raw in iter(stream.readline, b""):
        text = raw.decode("utf-8", "replace")
        sink.append(text)
        if on_line is not None:
            on_line(text.rstrip("\n").rstrip("\r"))
    stream.close()


def _writer(stream: IO[bytes], data: bytes) -> None:
    try:
        stream.write(data)
    except (BrokenPipeError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError):
            stream.close()


def run_process(
    argv: Sequence[str],
    *,
    cwd: str,
    env: Mapping[str, str],
    input: str | bytes | None,
    timeout_s: float | None,
    on_line: Callable[[str], None] | None,
    token: CancelToken,
    tracker: ProcessTracker,
) -> ShellResult:
    """Run ``argv`` to completion; raise ``ShellTimeoutError`` on timeout. Cancellation via ``token``
    terminates the group; the (partial) result is returned and the caller decides what it means."""
    started = time.monotonic()
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        process_group=0,
        close_fds=True,
    )
    tracker.add(proc.pid)
    token.register(proc)
    out: list[str] = []
    err: list[str] = []
    assert proc.stdout is not None
    assert proc.stderr is not None
    threads = [
        threading.Thread(target=_reader, args=(proc.stdout, out, on_line), daemon=True),
        threading.Thread(target=_reader, args=(proc.stderr, err, on_line), daemon=True),
    ]
    if input is not None:
        assert proc.stdin is not None
        data = input.encode("utf-8") if isinstance(input, str) else input
        threads.append(threading.Thread(target=_writer, args=(proc.stdin, data), daemon=True))
    for thread in threads:
        thread.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        terminate_group(proc, token.grace_s)
        proc.wait()
    finally:
        token.unregister(proc)
    for thread in threads:
        thread.join(_DRAIN_AFTER_EXIT_S)
    result = ShellResult(
        stdout="".join(out),
        stderr="".join(err),
        exit_code=_exit_code(proc.returncode),
        duration_ms=round((time.monotonic() - started) * 1000),
    )
    if timed_out:
        raise ShellTimeoutError(result, timeout_s or 0.0)
    return result


def _exit_code(returncode: int) -> int:
    """Shell convention: death by signal N is ``128 + N``, so ``ShellError.exit_code`` is never negative."""
    return 128 - returncode if returncode < 0 else returncode


__all__ = ["ProcessTracker", "ShellTimeoutError", "run_process"]
