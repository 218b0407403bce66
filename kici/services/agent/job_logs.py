"""One job's step logs: masked again, cut into ``log.chunk`` frames, sent on the buffered path (EXE-10).

Every line goes through the job's masker before anything else sees it: the runner already masks,
but the agent must not trust the sandboxed process it is supervising (a runner that crashed mid-line,
a line written around the capture, the agent's own phase lines quoting git). The chunking rules are
:class:`kici.domain.logstream.LogStreamer`'s (50 lines, 100 ms, the per-step byte budget); this
class owns one streamer per step index, the 100 ms timer, and the force flush at step end.

Choices where the spec is silent:

* The prepare bucket (index -1 in 10 §3: clone, load, rule evaluation, runner output outside any
  step) travels as ``stepIndex`` -1 with its own streamer and byte budget. An index the runner
  reports below -1 lands there too: the sandboxed runner's numbers are not trusted to be valid.
* A step's streamer lives for the whole job, so a line arriving after the step's end (a late
  flush from the runner) still counts against the same budget.
* Backpressure (pause/drop) is the link's business: ``Outbound.send`` never blocks and the link's
  ring buffer evicts the oldest frames, reported with its gap marker.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable

import trio
import trio.lowlevel

from kici.domain.execution.steps import PREPARE_STEP_INDEX
from kici.domain.logstream import LogChunk as Chunk
from kici.domain.logstream import LogStreamConfig, LogStreamer
from kici.domain.protocol import LogChunk
from kici.sdk.masking import Masker
from kici.services.agent.ports import Outbound


def wire_index(step_index: int) -> int:
    """The ``log.chunk.stepIndex`` a step's lines travel under (anything below -1: the prepare bucket)."""
    return max(step_index, PREPARE_STEP_INDEX)


class JobLogs:
    """The log streamers of one job; :meth:`run` is the flush timer (start it in the job's nursery)."""

    def __init__(
        self,
        *,
        run_id: str,
        job_id: str,
        outbound: Outbound,
        masker: Masker,
        now_ms: Callable[[], int],
        config: LogStreamConfig | None = None,
    ) -> None:
        self.run_id = run_id
        self.job_id = job_id
        self._outbound = outbound
        self._masker = masker
        self._now_ms = now_ms
        self._config = config or LogStreamConfig()
        self._streamers: dict[int, LogStreamer] = {}
        self._wake = trio.Event()
        self.chunks_sent = 0

    def line(self, step_index: int, text: str) -> None:
        """One line (or several, split on newlines) of step ``step_index``."""
        index = wire_index(step_index)
        streamer = self._streamers.get(index)
        if streamer is None:
            streamer = self._streamers[index] = LogStreamer(self._config)
        idle = streamer.flush_due_ms is None
        now = self._now_ms()
        for part in text.splitlines() or [""]:
            self._send(index, streamer.push(self._masker.mask(part), now))
        if idle and streamer.flush_due_ms is not None:
            self._wake.set()

    def finish(self, step_index: int) -> int:
        """Force out what the step holds (end of step); returns its ``logBytesStreamed``."""
        index = wire_index(step_index)
        streamer = self._streamers.get(index)
        if streamer is None:
            return 0
        self._send(index, streamer.finish(self._now_ms()))
        return streamer.bytes_streamed

    def finish_all(self) -> None:
        for index in list(self._streamers):
            self.finish(index)

    def bytes_streamed(self, step_index: int) -> int:
        streamer = self._streamers.get(wire_index(step_index))
        return 0 if streamer is None else streamer.bytes_streamed

    def _send(self, index: int, chunks: list[Chunk]) -> None:
        for chunk in chunks:
            self._outbound.send(
                LogChunk(
                    message_id=str(uuid.uuid4()),
                    run_id=self.run_id,
                    job_id=self.job_id,
                    step_index=index,
                    lines=list(chunk.lines),
                    timestamp=chunk.timestamp_ms,
                )
            )
            self.chunks_sent += 1

    def _tick(self) -> None:
        now = self._now_ms()
        for index, streamer in self._streamers.items():
            self._send(index, streamer.tick(now))

    def _next_due_ms(self) -> float:
        due = [d for s in self._streamers.values() if (d := s.flush_due_ms) is not None]
        return min(due) if due else math.inf

    async def run(self) -> None:
        """Flush every chunk whose 100 ms are up; sleeps until the next one is due or a line arrives."""
        while True:
            wait_s = (self._next_due_ms() - self._now_ms()) / 1000
            if wait_s > 0:
                with trio.move_on_after(wait_s):
                    await self._wake.wait()
                self._wake = trio.Event()
            self._tick()
            await trio.lowlevel.checkpoint()


__all__ = ["PREPARE_STEP_INDEX", "JobLogs", "wire_index"]
