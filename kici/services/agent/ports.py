"""The seam between the agent's link to the orchestrator and the jobs it runs.

The link (``link.py``) owns the WebSocket, the outbound buffers of 20-protocol.md §9 and the
reconnect loop; the job manager (``jobs.py``) owns the running jobs. Each sees the other only
through these protocols, so a dropped connection never reaches into a job, and a job never
waits on the network: every send path is synchronous and non-blocking, and the link decides
whether a frame is written now, buffered for the replay after ``register.ack``, or dropped.
"""

from __future__ import annotations

from typing import Protocol

from kici.domain.protocol import (
    InFlightJob,
    JobCancel,
    JobDispatch,
    JobHeartbeat,
    JobStatus,
    LogChunk,
    Message,
    StepStatus,
)


class Outbound(Protocol):
    """The link's send paths (20 §9), as a running job uses them."""

    def send(self, message: LogChunk | JobHeartbeat) -> None:
        """Buffered path: written when registered, else kept in the event ring (oldest evicted,
        counted for the gap marker)."""

    def send_pinned(self, message: JobStatus | StepStatus) -> None:
        """Statuses: written when registered, else held in the pinned outbox (latest per job, or per
        job and step), never evicted, replayed after the next ``register.ack``."""

    def send_direct(self, message: Message) -> None:
        """Written if the socket is open, else dropped (``job.ack``, ``job.reject``, ``agent.status``)."""

    def stream_log(self, line: str) -> None:
        """One agent operational line, batched into ``agent.log`` (ring of 10 000 lines offline)."""


class Jobs(Protocol):
    """What the link asks of the job manager; every call returns without waiting."""

    @property
    def active(self) -> int:
        """Jobs accepted and not yet finished with their terminal status handed to ``send_pinned``."""

    @property
    def max_concurrency(self) -> int: ...

    @property
    def draining(self) -> bool: ...

    def offer(self, dispatch: JobDispatch) -> None:
        """Answer a dispatch: ``job.reject{draining|busy}`` (busy is followed by ``agent.status``),
        else ``job.ack`` through ``send_direct`` before this returns, and the job starts."""

    def cancel(self, message: JobCancel) -> None:
        """Cancel a running job (graceful, or forced when ``message.force``); unknown ids are ignored."""

    def in_flight(self) -> list[InFlightJob]:
        """The jobs still running, for ``agent.register.inFlightJobs`` on reconnect."""
