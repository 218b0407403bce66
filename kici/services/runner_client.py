"""The parent side of the runner IPC (D7, ISO-01..03, ISO-10): spawn, speak, watch, abort, reap.

Used by ``kici run local`` and by the agent. ``open_runner`` creates the socketpair, asks the ``Sandbox``
for a launch plan, starts it in a new session, waits for ``ready``; ``RunnerClient.execute`` sends the
request and delivers every message to async callbacks until ``job.complete``. If the runner dies without
one, the result is ``failed`` with "Workflow runner crashed: <last stderr lines>" (``cancelled`` when an
abort was under way). ``abort`` drives the ISO-10 ladder; leaving the context always kills what is left of
the process group (and of its session) and reaps the process.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import attrs
import trio

import kici
from kici.domain.ports import LaunchPlan, NetworkMode, Sandbox, SandboxSpec
from kici.domain.runner_ipc import (
    MAX_FRAME_BYTES,
    Abort,
    AgentApiRequest,
    AgentApiResponse,
    ConcurrencyAck,
    ConcurrencyReport,
    EventEmit,
    EventEmitResponse,
    Execute,
    ExecuteRequest,
    JobComplete,
    LogLine,
    ParentMessage,
    Ready,
    RunnerIpcError,
    RunnerMessage,
    StepComplete,
    StepStart,
    decode_runner_message,
    encode,
)

STDERR_TAIL_LINES = 20
_RECV_CHUNK = 65536
_POLL_WITHOUT_PIDFD_S = 0.05
_STAT_READ = 4096

Callback = Callable[[Any], Awaitable[None]]


class RunnerStartError(RuntimeError):
    """The runner did not come up (no ``ready`` in time, or it exited first)."""


@attrs.frozen
class AbortLadder:
    """ISO-10: after ``abort``, wait ``abort_wait_s`` for the runner to exit, SIGTERM the group, wait
    ``term_wait_s``, SIGKILL. A graceful abort first waits ``graceful_budget_s`` (the agent watchdog:
    effective grace + the cancel hooks' timeouts + 5 s) and then escalates to a force abort."""

    abort_wait_s: float = 10.0
    term_wait_s: float = 5.0
    graceful_budget_s: float = 330.0


@attrs.frozen
class RunnerCallbacks:
    """Async callbacks; each is awaited in order, so a slow consumer slows the runner down (backpressure).

    ``on_request`` answers ``event.emit`` / ``agent.api.request`` / ``concurrency.report``; without it they
    get an error answer (``proceed`` for concurrency). ``on_output`` sees the runner's own stdout/stderr
    lines as ``(stream, line)``.
    """

    on_step_start: Callable[[StepStart], Awaitable[None]] | None = None
    on_log_line: Callable[[LogLine], Awaitable[None]] | None = None
    on_step_complete: Callable[[StepComplete], Awaitable[None]] | None = None
    on_request: Callable[[RunnerMessage], Awaitable[ParentMessage | None]] | None = None
    on_output: Callable[[str, str], Awaitable[None]] | None = None


def runner_argv(ipc_fd: int, python: str | None = None) -> tuple[str, ...]:
    """``-I``: the workspace is not on ``sys.path`` (a repo's ``kici/`` dir cannot shadow the runner) and
    no ``PYTHON*`` variable is honoured."""
    return (python or sys.executable, "-I", "-m", "kici.services.runner", "--ipc-fd", str(ipc_fd))


def runner_read_only_paths() -> tuple[str, ...]:
    """What the runner needs to see read-only inside a sandbox: the interpreter, the venv, kici itself."""
    package_dir = str(Path(kici.__file__).resolve().parent)
    paths = [sys.base_prefix, sys.prefix, package_dir, str(Path(sys.executable).resolve().parent)]
    unique: list[str] = []
    for path in paths:
        if path not in unique:
            unique.append(path)
    return tuple(unique)


def session_members(sid: int) -> list[tuple[int, int]]:
    """``(pid, process group)`` of the processes whose session id is ``sid`` (Linux ``/proc``).

    Every process's ``stat`` is read once per job end, so this stays at the ``os`` level (raw
    bytes, no ``pathlib`` or text decoding): on a busy agent it was the biggest CPU cost of a job.
    """
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    wanted = str(sid).encode()
    members = []
    for name in names:
        if not name.isdigit():
            continue
        try:
            descriptor = os.open(f"/proc/{name}/stat", os.O_RDONLY)
            try:
                stat = os.read(descriptor, _STAT_READ)
            finally:
                os.close(descriptor)
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 3 and fields[3] == wanted:
            members.append((int(name), int(fields[2])))
    return members


def kill_tree(pid: int, sig: int) -> None:
    """Signal the process group of ``pid`` and every other process group left in its session
    (``ctx.sh`` commands run in their own process groups inside the runner's session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    for group in {pgrp for _, pgrp in session_members(pid) if pgrp != pid}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)


class RunnerProcess:
    """The runner's process, forked from the trio thread itself rather than by
    ``trio.lowlevel.open_process``.

    Why: ``open_process`` forks in a worker thread, and bubblewrap's ``--die-with-parent``
    (``PR_SET_PDEATHSIG``) fires when the *thread* that forked exits, not the process. trio retires
    a worker thread after 10 s idle, so a sandbox could be SIGKILLed 10 s after its start on a quiet
    agent: a step longer than that, and every pre-started runner waiting for its job. The trio
    thread lives as long as the agent. The fork blocks the event loop for about a millisecond
    (``subprocess`` uses ``vfork`` here).
    """

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.stdout = _stream(popen.stdout)
        self.stderr = _stream(popen.stderr)

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the process is gone (polls, and reaps a process that exited)."""
        return self._popen.poll()

    async def wait(self) -> int:
        """Until the process exited; reaps it. Several tasks may wait at once."""
        while self._popen.poll() is None:
            try:
                pidfd = os.pidfd_open(self._popen.pid)
            except ProcessLookupError:
                continue
            except OSError:
                await trio.sleep(_POLL_WITHOUT_PIDFD_S)
                continue
            try:
                await trio.lowlevel.wait_readable(pidfd)
            finally:
                os.close(pidfd)
        return self._popen.wait()


def _stream(pipe: IO[bytes] | None) -> trio.lowlevel.FdStream | None:
    if pipe is None:
        return None
    descriptor = os.dup(pipe.fileno())
    pipe.close()
    return trio.lowlevel.FdStream(descriptor)


def spawn_runner(plan: LaunchPlan) -> RunnerProcess:
    """Start a sandbox's launch plan from the calling (trio) thread; see :class:`RunnerProcess`."""
    popen = subprocess.Popen(
        list(plan.argv),
        env=dict(plan.env),
        cwd=plan.cwd,
        pass_fds=plan.pass_fds,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return RunnerProcess(popen)


class RunnerClient:
    def __init__(
        self,
        process: RunnerProcess,
        sock: trio.socket.SocketType,
        callbacks: RunnerCallbacks,
        ladder: AbortLadder,
    ) -> None:
        self.process = process
        self._sock = sock
        self._callbacks = callbacks
        self._ladder = ladder
        self._ready = trio.Event()
        self._closed = trio.Event()
        self._exited = trio.Event()
        self._stderr_done = trio.Event()
        self._complete: JobComplete | None = None
        self._send_lock = trio.Lock()
        self._abort_state: str | None = None
        self._abort_event = trio.Event()
        self._escalate = trio.Event()
        self._protocol_error: str | None = None
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self.protocol_errors: list[str] = []
        self._reaped = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def aborting(self) -> str | None:
        """``None``, ``"graceful"`` or ``"force"``."""
        return self._abort_state

    def bind(self, callbacks: RunnerCallbacks, ladder: AbortLadder) -> None:
        """Give a runner started ahead of its job (the agent's pre-started runners) the job's callbacks
        and abort ladder; call before ``execute``."""
        self._callbacks = callbacks
        self._ladder = ladder

    async def wait_closed(self) -> None:
        """Until the IPC channel closed (the runner finished or died)."""
        await self._closed.wait()

    # --- sending ----------------------------------------------------------------------------------

    async def send(self, message: ParentMessage) -> bool:
        """Send one frame; ``False`` when the channel is already closed (ISO-10: ignored)."""
        frame = encode(message)
        async with self._send_lock:
            try:
                await self._send_all(frame)
            except (OSError, trio.ClosedResourceError, trio.BrokenResourceError):
                return False
        return True

    async def _send_all(self, frame: bytes) -> None:
        view = memoryview(frame)
        while view:
            sent = await self._sock.send(view)
            view = view[sent:]

    # --- receiving --------------------------------------------------------------------------------

    async def _read_ipc(self) -> None:
        buffer = b""
        try:
            while True:
                try:
                    chunk = await self._sock.recv(_RECV_CHUNK)
                except (OSError, trio.ClosedResourceError):
                    break
                if not chunk:
                    break
                buffer += chunk
                while (newline := buffer.find(b"\n")) >= 0:
                    line, buffer = buffer[:newline], buffer[newline + 1 :]
                    if line.strip():
                        await self._dispatch(line)
                if len(buffer) > MAX_FRAME_BYTES:
                    self._protocol_error = f"runner sent a frame above {MAX_FRAME_BYTES} bytes"
                    kill_tree(self.process.pid, signal.SIGKILL)
                    break
        finally:
            self._closed.set()

    async def _dispatch(self, line: bytes) -> None:
        try:
            message = decode_runner_message(line)
        except RunnerIpcError as exc:
            self.protocol_errors.append(str(exc))
            return
        cb = self._callbacks
        if isinstance(message, Ready):
            self._ready.set()
        elif isinstance(message, StepStart):
            if cb.on_step_start is not None:
                await cb.on_step_start(message)
        elif isinstance(message, LogLine):
            if cb.on_log_line is not None:
                await cb.on_log_line(message)
        elif isinstance(message, StepComplete):
            if cb.on_step_complete is not None:
                await cb.on_step_complete(message)
        elif isinstance(message, JobComplete):
            self._complete = message
        else:
            await self._answer(message)

    async def _answer(self, message: RunnerMessage) -> None:
        answer: ParentMessage | None = None
        if self._callbacks.on_request is not None:
            answer = await self._callbacks.on_request(message)
        if answer is None:
            if isinstance(message, EventEmit):
                answer = EventEmitResponse(
                    request_id=message.request_id, error="events are not supported here"
                )
            elif isinstance(message, AgentApiRequest):
                answer = AgentApiResponse(request_id=message.request_id, error="agent API not available here")
            elif isinstance(message, ConcurrencyReport):
                answer = ConcurrencyAck(action="proceed")
        if answer is not None:
            await self.send(answer)

    async def _read_stream(self, stream: trio.abc.ReceiveStream | None, name: str) -> None:
        if stream is None:
            if name == "stderr":
                self._stderr_done.set()
            return
        buffer = b""
        async for chunk in stream:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                await self._output(name, raw.decode("utf-8", "replace"))
        if buffer:
            await self._output(name, buffer.decode("utf-8", "replace"))
        if name == "stderr":
            self._stderr_done.set()

    async def _output(self, name: str, line: str) -> None:
        if name == "stderr":
            self.stderr_tail.append(line)
        if self._callbacks.on_output is not None:
            await self._callbacks.on_output(name, line)
        elif name == "stdout":
            print(f"[workflow-runner:stdout] {line}", file=sys.stderr)

    async def _wait_exit(self) -> None:
        await self.process.wait()
        self._exited.set()

    # --- lifecycle --------------------------------------------------------------------------------

    async def wait_ready(self, timeout_s: float) -> None:
        with trio.move_on_after(timeout_s):
            async with trio.open_nursery() as nursery:

                async def ready() -> None:
                    await self._ready.wait()
                    nursery.cancel_scope.cancel()

                async def died() -> None:
                    await self._closed.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(ready)
                nursery.start_soon(died)
        if not self._ready.is_set():
            if self._closed.is_set():
                await self._settle()
                tail = "\n".join(self.stderr_tail).strip()
                status = self.process.returncode
                raise RunnerStartError(
                    f"the runner exited before it was ready (status {status})" + _tail(tail)
                )
            raise RunnerStartError(
                f"the runner did not become ready within {timeout_s:g}s"
                + _tail("\n".join(self.stderr_tail).strip())
            )

    async def _settle(self) -> None:
        """After the channel closed: give the process and its stderr a moment to finish."""
        with trio.move_on_after(self._ladder.term_wait_s):
            await self._exited.wait()
        with trio.move_on_after(1.0):
            await self._stderr_done.wait()

    async def execute(self, request: ExecuteRequest) -> JobComplete:
        """Run the job; returns the runner's ``job.complete`` or the synthesized crash result."""
        if not await self.send(Execute(request=request)):
            return self._crashed()
        await self._closed.wait()
        await self._settle()
        if self._complete is not None:
            return self._complete
        return self._crashed()

    def _crashed(self) -> JobComplete:
        tail = "\n".join(self.stderr_tail).strip()
        detail = self._protocol_error or tail or f"exit status {self.process.returncode}"
        if self._abort_state is not None:
            return JobComplete(status="cancelled", error=f"Workflow runner crashed: {detail}")
        return JobComplete(status="failed", error=f"Workflow runner crashed: {detail}")

    async def abort(self, *, force: bool = False, reason: str | None = None) -> None:
        """Cancel the job (idempotent; a force abort escalates a graceful one). Returns at once; the ladder
        runs in the background until the runner is gone."""
        if self._abort_state == "force" or (self._abort_state == "graceful" and not force):
            return
        first = self._abort_state is None
        self._abort_state = "force" if force else "graceful"
        await self.send(Abort(force=force, reason=reason))
        if first:
            self._abort_event.set()
        else:
            self._escalate.set()

    async def _ladder_task(self) -> None:
        await self._abort_event.wait()
        if self._abort_state == "graceful":
            with trio.move_on_after(self._ladder.graceful_budget_s):
                async with trio.open_nursery() as nursery:

                    async def gone() -> None:
                        await self._exited.wait()
                        nursery.cancel_scope.cancel()

                    async def escalated() -> None:
                        await self._escalate.wait()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(gone)
                    nursery.start_soon(escalated)
            if self._exited.is_set():
                return
            if self._abort_state != "force":
                self._abort_state = "force"
                await self.send(Abort(force=True, reason="graceful cancel budget exceeded"))
        with trio.move_on_after(self._ladder.abort_wait_s):
            await self._exited.wait()
        if self._exited.is_set():
            return
        kill_tree(self.process.pid, signal.SIGTERM)
        with trio.move_on_after(self._ladder.term_wait_s):
            await self._exited.wait()
        if not self._exited.is_set():
            kill_tree(self.process.pid, signal.SIGKILL)

    async def aclose(self) -> None:
        """Kill whatever is left and reap the process; a second call (``open_runner`` makes one on
        every exit path) does nothing once the first has reaped it."""
        if self._reaped:
            return
        with trio.CancelScope(shield=True):
            kill_tree(self.process.pid, signal.SIGKILL)
            with trio.move_on_after(self._ladder.term_wait_s):
                await self.process.wait()
            with contextlib.suppress(OSError):
                self._sock.close()
            self._reaped = self.process.returncode is not None


@contextlib.asynccontextmanager
async def open_runner(
    sandbox: Sandbox,
    *,
    workspace: str,
    env: Mapping[str, str],
    callbacks: RunnerCallbacks | None = None,
    read_only_paths: Sequence[str] | None = None,
    network: NetworkMode = "isolated",
    python: str | None = None,
    ready_timeout_s: float = 30.0,
    ladder: AbortLadder | None = None,
) -> AsyncIterator[RunnerClient]:
    """Spawn the runner through ``sandbox`` and yield a ready ``RunnerClient``; always reaps it."""
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child_fd = child_end.fileno()
    try:
        spec = SandboxSpec(
            workspace=workspace,
            argv=runner_argv(child_fd, python),
            env=env,
            read_only_paths=runner_read_only_paths() if read_only_paths is None else tuple(read_only_paths),
            network=network,
            pass_fds=(child_fd,),
        )
        process = spawn_runner(sandbox.plan(spec))
    except BaseException:
        parent_end.close()
        child_end.close()
        raise
    child_end.close()
    sock = trio.socket.from_stdlib_socket(parent_end)
    client = RunnerClient(process, sock, callbacks or RunnerCallbacks(), ladder or AbortLadder())
    start_error: RunnerStartError | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._read_ipc)
            nursery.start_soon(client._read_stream, process.stdout, "stdout")
            nursery.start_soon(client._read_stream, process.stderr, "stderr")
            nursery.start_soon(client._wait_exit)
            nursery.start_soon(client._ladder_task)
            try:
                await client.wait_ready(ready_timeout_s)
            except RunnerStartError as exc:
                start_error = exc
            else:
                try:
                    yield client
                finally:
                    await client.aclose()
            nursery.cancel_scope.cancel()
    finally:
        await client.aclose()
    if start_error is not None:
        raise start_error


def _tail(text: str) -> str:
    return f":\n{text}" if text else ""


def grace_budget(grace_s: float, hook_timeouts_s: Sequence[float]) -> float:
    """The agent watchdog of 10 §6: effective grace + the cancel hooks' timeouts + 5 s."""
    total = grace_s + sum(hook_timeouts_s) + 5.0
    return total if math.isfinite(total) else 330.0


__all__ = [
    "STDERR_TAIL_LINES",
    "AbortLadder",
    "RunnerCallbacks",
    "RunnerClient",
    "RunnerProcess",
    "RunnerStartError",
    "grace_budget",
    "kill_tree",
    "open_runner",
    "runner_argv",
    "runner_read_only_paths",
    "session_members",
    "spawn_runner",
]
