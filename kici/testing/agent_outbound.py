"""A recording :class:`kici.services.agent.ports.Outbound`: the capture end of the link's send paths.

Job-manager tests plug it in where the agent's link goes. It is a spy, not a fake of the link's
buffering: each call is kept in order with the path it took (``send``, ``send_pinned``,
``send_direct``, ``stream_log``), and every message is encoded with the wire codec on the way in,
so a message the real link could not put on the wire fails the test at the call that made it.

:class:`OutboundContract` is what any ``Outbound`` must honour, as the job manager relies on it: every
path is a plain synchronous call that returns at once and never raises for a valid message, whatever
the connection is doing; what happens to the frame (write, buffer, drop) is invisible to the caller.
``tests/contract/test_agent_jobs_contract.py`` runs it against this spy; the real link
(``kici.services.agent.link``) subclasses it the same way with a link that is connected or not.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Literal, TypeVar

import attrs
import pytest
import trio

from kici.domain.protocol import (
    AgentStatus,
    JobAck,
    JobHeartbeat,
    JobReject,
    JobState,
    JobStatus,
    LogChunk,
    Message,
    RejectReason,
    StepState,
    StepStatus,
    encode,
)
from kici.services.agent.ports import Outbound

Path = Literal["send", "send_pinned", "send_direct", "stream_log"]
M = TypeVar("M", bound=Message)


@attrs.frozen
class Sent:
    """One call: the path, the message (``None`` for ``stream_log``) and its encoded text or line."""

    path: Path
    message: Message | None
    text: str


class RecordingOutbound:
    """Keeps every call; :meth:`wait_for` lets a trio test wait until a matching message arrived."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self._changed = trio.Event()

    def _keep(self, path: Path, message: Message | None, text: str) -> None:
        self.sent.append(Sent(path, message, text))
        self._changed.set()
        self._changed = trio.Event()

    def send(self, message: LogChunk | JobHeartbeat) -> None:
        self._keep("send", message, encode(message))

    def send_pinned(self, message: JobStatus | StepStatus) -> None:
        self._keep("send_pinned", message, encode(message))

    def send_direct(self, message: Message) -> None:
        self._keep("send_direct", message, encode(message))

    def stream_log(self, line: str) -> None:
        self._keep("stream_log", None, line)

    # --- reading ------------------------------------------------------------------------------

    def of(self, kind: type[M], path: Path | None = None) -> list[M]:
        """The messages of ``kind`` (optionally only those sent on ``path``), in order."""
        return [
            s.message for s in self.sent if isinstance(s.message, kind) and (path is None or s.path == path)
        ]

    def paths_of(self, kind: type[Message]) -> set[Path]:
        return {s.path for s in self.sent if isinstance(s.message, kind)}

    def texts(self) -> list[str]:
        """Everything that left: encoded frames and operational lines."""
        return [s.text for s in self.sent]

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Until ``condition()`` holds; it is re-checked after every recorded call."""
        while not condition():
            await self._changed.wait()

    async def wait_for(self, kind: type[M], predicate: Callable[[M], bool] | None = None) -> M:
        """The first message of ``kind`` (matching ``predicate(message)`` when given), waiting for it."""
        while True:
            for message in self.of(kind):
                if predicate is None or predicate(message):
                    return message
            await self._changed.wait()


def sample_messages() -> dict[str, list[Message]]:
    """One message of every kind a job manager sends, by the path it sends it on."""
    run, job = "r-1", "j-1"
    return {
        "send": [
            LogChunk(message_id="m-1", step_index=0, lines=["a line"], timestamp=1, run_id=run, job_id=job),
            JobHeartbeat(timestamp=1, run_id=run, job_id=job),
        ],
        "send_pinned": [
            JobStatus(message_id="m-2", state=JobState.RUNNING, timestamp=1, run_id=run, job_id=job),
            StepStatus(
                message_id="m-3",
                step_index=0,
                step_name="s",
                state=StepState.RUNNING,
                timestamp=1,
                run_id=run,
                job_id=job,
            ),
            JobStatus(
                message_id="m-4",
                state=JobState.SUCCESS,
                timestamp=2,
                data={"durationMs": 1},
                run_id=run,
                job_id=job,
            ),
        ],
        "send_direct": [
            JobAck(message_id="m-5", timestamp=1, run_id=run, job_id=job),
            JobReject(message_id="m-6", reason=RejectReason.BUSY, timestamp=1, run_id=run, job_id=job),
            AgentStatus(message_id="m-7", agent_id="a-1", active_jobs=0),
        ],
    }


class OutboundContract:
    """The ``Outbound`` conformance suite; subclass it and provide an ``outbound`` fixture."""

    @pytest.fixture
    def outbound(self) -> Outbound:
        raise NotImplementedError("a subclass provides the Outbound under test")

    def test_every_path_is_a_plain_call(self, outbound: Outbound) -> None:
        for name in ("send", "send_pinned", "send_direct", "stream_log"):
            method = getattr(outbound, name)
            assert callable(method)
            assert not inspect.iscoroutinefunction(method)

    def test_every_message_kind_is_accepted_on_its_path(self, outbound: Outbound) -> None:
        for path, messages in sample_messages().items():
            for message in messages:
                assert getattr(outbound, path)(message) is None
        outbound.stream_log("an operational line")


__all__ = ["OutboundContract", "RecordingOutbound", "Sent", "sample_messages"]
