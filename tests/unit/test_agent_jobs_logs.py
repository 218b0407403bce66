"""One job's log shipping (EXE-10, PRO-13): 50 lines or 100 ms per ``log.chunk``, flush at step end.

Runs on trio's mock clock (``autojump_clock``) with the streamer's clock read from it, so "100 ms
later" is exact and instant.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from kici.domain.logstream import LogStreamConfig
from kici.domain.protocol import LogChunk
from kici.sdk.masking import Masker
from kici.services.agent.job_logs import PREPARE_STEP_INDEX, JobLogs
from kici.testing.agent_outbound import RecordingOutbound

pytestmark = pytest.mark.feature("EXE-10", "PRO-13")


def trio_ms() -> int:
    return round(trio.current_time() * 1000)


def make_logs(outbound: RecordingOutbound, max_bytes: int | None = 10_000) -> JobLogs:
    return JobLogs(
        run_id="r",
        job_id="j",
        outbound=outbound,
        masker=Masker(["hunter2-secret"]),
        now_ms=trio_ms,
        config=LogStreamConfig(max_bytes=max_bytes),
    )


async def test_a_quiet_step_is_flushed_100_ms_after_its_first_line(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbound = RecordingOutbound()
    logs = make_logs(outbound)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(logs.run)
        start = trio_ms()
        logs.line(2, "one")
        await trio.sleep(0.05)
        logs.line(2, "two\nthree")
        await trio.sleep(0.049)
        assert outbound.of(LogChunk) == []
        await trio.sleep(0.002)
        (chunk,) = outbound.of(LogChunk)
        assert (chunk.step_index, chunk.lines, chunk.timestamp) == (2, ["one", "two", "three"], start + 100)
        nursery.cancel_scope.cancel()


async def test_a_chatty_step_leaves_in_chunks_of_50_and_finish_flushes_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbound = RecordingOutbound()
    logs = make_logs(outbound, max_bytes=None)
    for i in range(120):
        logs.line(0, f"line {i}")
    assert [len(c.lines) for c in outbound.of(LogChunk)] == [50, 50]
    assert logs.finish(0) == sum(len(f"line {i}") for i in range(120))
    assert [len(c.lines) for c in outbound.of(LogChunk)] == [50, 50, 20]
    assert [line for c in outbound.of(LogChunk) for line in c.lines] == [f"line {i}" for i in range(120)]
    assert outbound.paths_of(LogChunk) == {"send"}


async def test_prepare_lines_travel_as_step_minus_1_masked(autojump_clock: trio.testing.MockClock) -> None:
    outbound = RecordingOutbound()
    logs = make_logs(outbound)
    logs.line(PREPARE_STEP_INDEX, "[kici] cloning with hunter2-secret")
    logs.line(0, "step zero")
    logs.line(-7, "a runner index below the prepare bucket")
    logs.finish_all()
    chunks = [(c.step_index, c.lines) for c in outbound.of(LogChunk)]
    assert sorted(chunks) == [
        (-1, ["[kici] cloning with ***", "a runner index below the prepare bucket"]),
        (0, ["step zero"]),
    ]
    assert logs.bytes_streamed(0) == len("step zero")


async def test_the_budget_cuts_a_step_with_one_truncation_line(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbound = RecordingOutbound()
    logs = make_logs(outbound, max_bytes=20)
    for i in range(10):
        logs.line(1, f"line number {i}")
    logs.finish(1)
    lines = [line for c in outbound.of(LogChunk) for line in c.lines]
    assert lines == ["line number 0", "line number 1", "[TRUNCATED: log output exceeded 20 bytes]"]
    assert logs.bytes_streamed(1) == 26
