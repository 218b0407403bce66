"""A protocol-level fake agent: a real trio-websocket client speaking the agent side of 20 §5.2 / 20a §6.3.

It runs no jobs; a test scripts it. ``open_fake_agent(url, agent_id=..., token=...)`` connects,
authenticates (token mode), registers (labels, ``maxConcurrency``, ``inFlightJobs``) and yields a
:class:`FakeAgent` whose reader task collects every frame the orchestrator sends. The test then
waits for what it expects (``await agent.expect(JobDispatch)``) and answers as an agent would:
``ack``/``reject`` a dispatch, report ``status``/``step``/``log``/``job_heartbeat``, or misbehave
(``send_text`` of garbage, silence, ``disconnect``). ``register=False`` stops before the handshake so
a test can drive it by hand (``send_auth``, ``send_register``) or not at all.

Kept lean for benchmarks holding a thousand idle connections: one connection, one reader task, an
optional heartbeat task, a list as inbox; nothing is parsed twice.

``serve_hub(hub)`` is the other end for tests and benchmarks: a minimal quart-trio app on loopback
with the hub mounted at ``/ws``, as the orchestrator's front door mounts it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Protocol, TypeVar

import trio

from kici.adapters.ws.client import connect
from kici.adapters.ws.server import accept_websocket, create_app, serve
from kici.domain.ports import ConnectionClosed, WsConnection
from kici.domain.protocol import (
    PROTOCOL_VERSION,
    AgentAuthRequest,
    AgentRegister,
    AuthFailure,
    AuthSuccess,
    DecodeError,
    Direction,
    Heartbeat,
    InFlightJob,
    JobAck,
    JobDispatch,
    JobHeartbeat,
    JobReject,
    JobState,
    JobStatus,
    LogChunk,
    Message,
    RegisterAck,
    RejectReason,
    StepState,
    StepStatus,
    decode,
    encode,
)

M = TypeVar("M", bound=Message)

DEFAULT_TIMEOUT_S = 10.0


class JobHandle(Protocol):
    """Anything naming a job: a received ``JobDispatch`` or an ``InFlightJob``."""

    @property
    def run_id(self) -> str: ...

    @property
    def job_id(self) -> str: ...


class ServesAgents(Protocol):
    async def serve(self, conn: WsConnection, remote_addr: str) -> None: ...


class AgentClosedError(Exception):
    """The connection closed while the test waited for a message; ``code`` is the close code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection closed ({code}: {reason})")
        self.code = code
        self.reason = reason


def now_ms() -> int:
    return int(time.time() * 1000)


class FakeAgent:
    """One scripted agent connection; see the module docstring."""

    def __init__(
        self,
        conn: WsConnection,
        *,
        agent_id: str,
        token: str | None,
        labels: Sequence[str],
        max_concurrency: int,
        auto_ack: bool,
        running_as_uid: int | None,
    ) -> None:
        self.conn = conn
        self.agent_id = agent_id
        self.token = token
        self.labels = list(labels)
        self.max_concurrency = max_concurrency
        self.auto_ack = auto_ack
        self.running_as_uid = running_as_uid
        self.inbox: list[Message] = []
        self.undecodable: list[str] = []
        self.closed: ConnectionClosed | None = None
        self._arrived = trio.Event()
        self._closed_event = trio.Event()

    # --- reading -------------------------------------------------------------------------------

    async def read_loop(self) -> None:
        try:
            while True:
                text = await self.conn.receive()
                try:
                    message = decode(Direction.ORCH_TO_AGENT, text)
                except DecodeError:
                    self.undecodable.append(text)
                    continue
                self.inbox.append(message)
                if self.auto_ack and isinstance(message, JobDispatch):
                    await self.ack(message)
                self._arrived.set()
                self._arrived = trio.Event()
        except ConnectionClosed as exc:
            self.closed = exc
        finally:
            self._closed_event.set()
            self._arrived.set()

    async def expect(
        self,
        kind: type[M],
        where: Callable[[M], bool] | None = None,
        *,
        within: float = DEFAULT_TIMEOUT_S,
    ) -> M:
        """Take the first received ``kind`` message (matching ``where``) out of the inbox, waiting for it."""
        with trio.fail_after(within):
            while True:
                for index, message in enumerate(self.inbox):
                    if isinstance(message, kind) and (where is None or where(message)):
                        del self.inbox[index]
                        return message
                if self.closed is not None:
                    raise AgentClosedError(self.closed.code, self.closed.reason)
                await self._arrived.wait()

    def received(self, kind: type[M]) -> list[M]:
        """The ``kind`` messages still in the inbox (not taken by :meth:`expect`)."""
        return [m for m in self.inbox if isinstance(m, kind)]

    async def wait_closed(self, *, within: float = DEFAULT_TIMEOUT_S) -> ConnectionClosed:
        """Wait until the orchestrator (or the network) ends the connection; returns its close."""
        with trio.fail_after(within):
            await self._closed_event.wait()
        assert self.closed is not None
        return self.closed

    # --- handshake -----------------------------------------------------------------------------

    async def send_auth(self, token: str | None = None, *, protocol_version: int = PROTOCOL_VERSION) -> None:
        await self.send(AgentAuthRequest(token=token or self.token or "", protocol_version=protocol_version))

    async def send_register(self, in_flight: Iterable[JobHandle] = ()) -> None:
        jobs = [InFlightJob(job_id=j.job_id, run_id=j.run_id) for j in in_flight]
        await self.send(
            AgentRegister(
                message_id=str(uuid.uuid4()),
                agent_id=self.agent_id,
                labels=self.labels,
                max_concurrency=self.max_concurrency,
                in_flight_jobs=jobs or None,
                running_as_uid=self.running_as_uid,
                platform="linux",
                arch="x64",
                version="fake",
            )
        )

    async def handshake(
        self, in_flight: Iterable[JobHandle] = (), *, within: float = DEFAULT_TIMEOUT_S
    ) -> RegisterAck:
        """Authenticate (when the agent has a token) and register; raises when the orchestrator refuses."""
        if self.token is not None:
            await self.send_auth()
            with trio.fail_after(within):
                while True:
                    if self.received(AuthFailure):
                        failure = await self.expect(AuthFailure)
                        raise AgentClosedError(4010, failure.reason)
                    if self.received(AuthSuccess):
                        await self.expect(AuthSuccess)
                        break
                    if self.closed is not None:
                        raise AgentClosedError(self.closed.code, self.closed.reason)
                    await self._arrived.wait()
        await self.send_register(in_flight)
        return await self.expect(RegisterAck, within=within)

    # --- sending ------------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        await self.conn.send(encode(message))

    async def send_text(self, text: str) -> None:
        await self.conn.send(text)

    async def heartbeat(self) -> None:
        await self.send(Heartbeat(timestamp=now_ms()))

    async def ack(self, job: JobHandle) -> None:
        await self.send(
            JobAck(message_id=str(uuid.uuid4()), run_id=job.run_id, job_id=job.job_id, timestamp=now_ms())
        )

    async def reject(self, job: JobHandle, reason: RejectReason = RejectReason.BUSY) -> None:
        await self.send(
            JobReject(
                message_id=str(uuid.uuid4()),
                run_id=job.run_id,
                job_id=job.job_id,
                reason=reason,
                timestamp=now_ms(),
            )
        )

    async def status(self, job: JobHandle, state: JobState | str, data: dict[str, Any] | None = None) -> None:
        await self.send(
            JobStatus(
                message_id=str(uuid.uuid4()),
                run_id=job.run_id,
                job_id=job.job_id,
                state=JobState(state),
                timestamp=now_ms(),
                data=data,
            )
        )

    async def step(
        self,
        job: JobHandle,
        index: int,
        name: str,
        state: StepState | str,
        data: dict[str, Any] | None = None,
        *,
        log_bytes: int | None = None,
    ) -> None:
        await self.send(
            StepStatus(
                message_id=str(uuid.uuid4()),
                run_id=job.run_id,
                job_id=job.job_id,
                step_index=index,
                step_name=name,
                state=StepState(state),
                timestamp=now_ms(),
                data=data,
                log_bytes_streamed=log_bytes,
            )
        )

    async def log(self, job: JobHandle, step_index: int, lines: Sequence[str]) -> None:
        await self.send(
            LogChunk(
                message_id=str(uuid.uuid4()),
                run_id=job.run_id,
                job_id=job.job_id,
                step_index=step_index,
                lines=list(lines),
                timestamp=now_ms(),
            )
        )

    async def job_heartbeat(self, job: JobHandle) -> None:
        await self.send(JobHeartbeat(run_id=job.run_id, job_id=job.job_id, timestamp=now_ms()))

    async def run_job(
        self, job: JobHandle, *, steps: Sequence[str] = ("build",), success: bool = True
    ) -> None:
        """The happy path of a job: running, each step running then done with one log line, terminal."""
        await self.status(job, JobState.RUNNING)
        for index, name in enumerate(steps):
            await self.step(job, index, name, StepState.RUNNING)
            await self.log(job, index, [f"{name}: working"])
            await self.step(job, index, name, StepState.SUCCESS, {"durationMs": 1})
        final = JobState.SUCCESS if success else JobState.FAILED
        await self.status(job, final, None if success else {"error": {"message": "step failed"}})

    async def disconnect(self, code: int = 1000, reason: str = "") -> None:
        await self.conn.close(code, reason)


async def _heartbeats(agent: FakeAgent, interval: float) -> None:
    while agent.closed is None:
        await trio.sleep(interval)
        try:
            await agent.heartbeat()
        except ConnectionClosed:
            return


@asynccontextmanager
async def open_fake_agent(
    url: str,
    *,
    agent_id: str,
    token: str | None = None,
    labels: Sequence[str] = (),
    max_concurrency: int = 1,
    in_flight: Iterable[JobHandle] = (),
    register: bool = True,
    auto_ack: bool = False,
    heartbeat_interval: float | None = None,
    running_as_uid: int | None = None,
) -> AsyncIterator[FakeAgent]:
    """Connect (and by default authenticate and register) a fake agent; leaving closes it with 1000."""
    refused: AgentClosedError | None = None
    async with connect(url) as conn, trio.open_nursery() as nursery:
        agent = FakeAgent(
            conn,
            agent_id=agent_id,
            token=token,
            labels=labels,
            max_concurrency=max_concurrency,
            auto_ack=auto_ack,
            running_as_uid=running_as_uid,
        )
        nursery.start_soon(agent.read_loop)
        if register:
            try:
                await agent.handshake(in_flight)
            except AgentClosedError as exc:
                refused = exc
                nursery.cancel_scope.cancel()
        if refused is None:
            if heartbeat_interval is not None:
                nursery.start_soon(_heartbeats, agent, heartbeat_interval)
            try:
                yield agent
            finally:
                nursery.cancel_scope.cancel()
    if refused is not None:
        raise refused


@asynccontextmanager
async def serve_hub(hub: ServesAgents, *, graceful_timeout: float = 1.0) -> AsyncIterator[str]:
    """Serve ``hub`` at ``/ws`` on 127.0.0.1 (a free port); yields the ``ws://`` URL."""
    app = create_app(__name__)

    @app.websocket("/ws")
    async def agents() -> None:
        conn = await accept_websocket()
        await hub.serve(conn, str(conn.remote_addr))

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(partial(serve, app, graceful_timeout=graceful_timeout))
        try:
            yield bound.url("/ws", websocket=True)
        finally:
            nursery.cancel_scope.cancel()
