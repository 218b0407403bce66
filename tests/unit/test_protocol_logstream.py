"""LogStreamer examples, spec 20 §8 (PRO-13)."""

from __future__ import annotations

import pytest

from kici.domain.logstream import (
    BACKPRESSURE_THRESHOLD_BYTES,
    DEFAULT_MAX_LOG_BYTES,
    PAUSE_TIMEOUT_MS,
    BackpressureMode,
    InvalidLogStreamError,
    LogChunk,
    LogStreamConfig,
    LogStreamer,
)

pytestmark = pytest.mark.feature("PRO-13")


def test_defaults() -> None:
    config = LogStreamConfig()
    assert (config.max_lines, config.flush_after_ms, config.max_bytes) == (50, 100, DEFAULT_MAX_LOG_BYTES)
    assert DEFAULT_MAX_LOG_BYTES == 10_485_760
    assert BACKPRESSURE_THRESHOLD_BYTES == 1_048_576
    assert PAUSE_TIMEOUT_MS == 30_000
    assert BackpressureMode("pause") is BackpressureMode.PAUSE
    assert BackpressureMode("drop") is BackpressureMode.DROP


def test_fifty_lines_leave_at_once() -> None:
    streamer = LogStreamer()
    out: list[LogChunk] = []
    for n in range(120):
        out += streamer.push(f"line {n}", 7)
    assert [len(c.lines) for c in out] == [50, 50]
    assert all(c.timestamp_ms == 7 for c in out)
    rest = streamer.finish(8)
    assert [len(c.lines) for c in rest] == [20]
    assert rest[0].lines[-1] == "line 119"


def test_a_quiet_step_flushes_100_ms_after_its_first_line() -> None:
    streamer = LogStreamer()
    assert streamer.flush_due_ms is None
    assert streamer.push("a", 1_000) == []
    assert streamer.push("b", 1_060) == []
    assert streamer.flush_due_ms == 1_100
    assert streamer.tick(1_099) == []
    assert streamer.tick(1_100) == [LogChunk(("a", "b"), 1_100)]
    assert streamer.flush_due_ms is None


def test_a_late_push_first_sends_the_overdue_lines() -> None:
    streamer = LogStreamer()
    streamer.push("a", 0)
    assert streamer.push("b", 500) == [LogChunk(("a",), 500)]
    assert streamer.flush_due_ms == 600


def test_budget_truncates_once_and_drops_the_rest() -> None:
    streamer = LogStreamer(LogStreamConfig(max_bytes=10))
    assert streamer.push("12345", 0) == []
    assert streamer.push("67890", 1) == []
    assert streamer.push("after budget", 2) == [
        LogChunk(("12345", "67890", "[TRUNCATED: log output exceeded 10 bytes]"), 2, truncated=True)
    ]
    assert streamer.push("more", 3) == []
    assert streamer.finish(4) == []
    assert streamer.bytes_streamed == 10
    assert streamer.truncated


def test_the_line_crossing_the_budget_is_kept_whole_and_bytes_are_utf8() -> None:
    streamer = LogStreamer(LogStreamConfig(max_bytes=4))
    streamer.push("héllo", 0)
    assert streamer.bytes_streamed == 6
    (chunk,) = streamer.push("next", 1)
    assert chunk.lines == ("héllo", "[TRUNCATED: log output exceeded 4 bytes]")


def test_no_budget_for_operational_lines() -> None:
    streamer = LogStreamer(LogStreamConfig(max_bytes=None))
    for _ in range(10):
        streamer.push("x" * 1_000, 0)
    assert not streamer.truncated
    assert streamer.bytes_streamed == 10_000


def test_drop_mode_prefixes_the_next_chunk_with_the_count() -> None:
    streamer = LogStreamer()
    for n in range(3):
        streamer.push(f"lost {n}", 0)
    (lost,) = streamer.tick(100)
    streamer.discard(lost, 100)
    assert all(streamer.push(f"kept {n}", 150) == [] for n in range(48))
    (chunk,) = streamer.push("kept 48", 150)
    assert streamer.push("kept 49", 150) == []
    assert chunk.lines[0] == "[3 lines dropped due to backpressure]"
    assert chunk.dropped == 3
    assert len(chunk.lines) == 50
    assert chunk.user_lines == tuple(f"kept {n}" for n in range(49))
    assert streamer.finish(200) == [LogChunk(("kept 49",), 200)]


def test_counts_roll_forward_when_a_marked_chunk_is_discarded_too() -> None:
    streamer = LogStreamer()
    streamer.push("a", 0)
    streamer.push("b", 0)
    (first,) = streamer.tick(100)
    streamer.discard(first, 100)
    streamer.push("c", 100)
    (second,) = streamer.tick(200)
    assert second.lines == ("[2 lines dropped due to backpressure]", "c")
    streamer.discard(second, 200)
    assert streamer.finish(300) == [LogChunk(("[3 lines dropped due to backpressure]",), 300, dropped=3)]


def test_a_discarded_truncation_notice_is_sent_again() -> None:
    streamer = LogStreamer(LogStreamConfig(max_bytes=1))
    streamer.push("ab", 0)
    (chunk,) = streamer.push("cd", 5)
    assert chunk.truncated
    streamer.discard(chunk, 5)
    assert streamer.flush_due_ms == 105
    assert streamer.tick(105) == [
        LogChunk(
            ("[1 lines dropped due to backpressure]", "[TRUNCATED: log output exceeded 1 bytes]"),
            105,
            dropped=1,
            truncated=True,
        )
    ]


def test_long_lines_cut_chunks_early_to_stay_under_the_frame_budget() -> None:
    streamer = LogStreamer(LogStreamConfig(max_chunk_bytes=100))
    assert streamer.push("x" * 60, 0) == []
    (chunk,) = streamer.push("y" * 60, 0)
    assert chunk.lines == ("x" * 60, "y" * 60)
    (big,) = streamer.push("z" * 500, 0)
    assert big.lines == ("z" * 500,)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_lines": 1}, {"flush_after_ms": -1}, {"max_chunk_bytes": 0}, {"max_bytes": -1}],
)
def test_impossible_configs_are_typed_errors(kwargs: dict[str, int]) -> None:
    with pytest.raises(InvalidLogStreamError):
        LogStreamConfig(**kwargs)
