"""Step log chunking, byte budget and backpressure markers (PRO-13), spec 20 §8 and §20 invariant 9."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.logstream import (
    LogChunk,
    LogStreamConfig,
    LogStreamer,
    dropped_line,
    line_bytes,
    truncation_line,
)

pytestmark = pytest.mark.feature("PRO-13")

lines = st.one_of(st.text(max_size=12), st.text(min_size=40, max_size=120))


def _burst(size: int) -> st.SearchStrategy[list[str]]:
    """Many lines in the same millisecond: the 50-line cut, not the 100 ms timer, must act."""
    return st.lists(st.sampled_from(["", "ok", "é✓\t", "x" * 70]), min_size=size, max_size=size)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("line"), st.integers(0, 60), st.lists(lines, min_size=1, max_size=1)),
        st.tuples(st.just("burst"), st.integers(0, 60), st.integers(0, 130).flatmap(_burst)),
        st.tuples(st.just("tick"), st.integers(0, 250), st.just([])),
    ),
    max_size=40,
)
configs = st.builds(
    LogStreamConfig,
    max_bytes=st.one_of(st.none(), st.integers(0, 2_000), st.just(10_485_760)),
    max_chunk_bytes=st.one_of(st.just(262_144), st.integers(1, 400)),
)


def _accepted(inputs: list[str], budget: int | None) -> list[str]:
    kept: list[str] = []
    total = 0
    for line in inputs:
        if budget is not None and total >= budget:
            break
        kept.append(line)
        total += line_bytes(line)
    return kept


def _run(
    config: LogStreamConfig, operations: list[tuple[str, int, list[str]]], discards: list[bool]
) -> tuple[LogStreamer, list[str], list[LogChunk], list[LogChunk]]:
    """Feed ``operations``; the writer discards the n-th emitted chunk if ``discards[n]``."""
    streamer = LogStreamer(config)
    inputs: list[str] = []
    delivered: list[LogChunk] = []
    discarded: list[LogChunk] = []
    now = 0

    def writer(chunks: list[LogChunk]) -> None:
        for chunk in chunks:
            assert chunk.timestamp_ms == now
            n = len(delivered) + len(discarded)
            if n < len(discards) and discards[n]:
                discarded.append(chunk)
                streamer.discard(chunk, now)
            else:
                delivered.append(chunk)

    for kind, gap, texts in operations:
        now += gap
        calls = [streamer.tick] if kind == "tick" else []
        calls += [lambda now, text=text: streamer.push(text, now) for text in texts]
        inputs.extend(texts)
        for call in calls:
            writer(call(now))
            # nothing is ever held past its 100 ms window once the streamer was called
            due = streamer.flush_due_ms
            assert due is None or due > now
    now += 1
    delivered.extend(streamer.finish(now))
    assert streamer.flush_due_ms is None
    return streamer, inputs, delivered, discarded


def _check_shape(chunk: LogChunk, config: LogStreamConfig) -> None:
    assert 1 <= len(chunk.lines) <= config.max_lines
    if chunk.dropped:
        assert chunk.lines[0] == dropped_line(chunk.dropped)
    if chunk.truncated:
        assert config.max_bytes is not None
        assert chunk.lines[-1] == truncation_line(config.max_bytes)
    assert sum(line_bytes(x) for x in chunk.user_lines[:-1]) < config.max_chunk_bytes


@given(configs, ops)
def test_emitted_lines_are_the_input_until_the_budget_then_one_truncation_line(
    config: LogStreamConfig, operations: list[tuple[str, int, list[str]]]
) -> None:
    streamer, inputs, delivered, _ = _run(config, operations, [])
    for chunk in delivered:
        _check_shape(chunk, config)
        assert chunk.dropped == 0
    accepted = _accepted(inputs, config.max_bytes)
    emitted = [line for chunk in delivered for line in chunk.lines]
    truncated = len(accepted) < len(inputs)
    assert streamer.truncated is truncated
    if truncated:
        assert config.max_bytes is not None
        assert emitted == [*accepted, truncation_line(config.max_bytes)]
    else:
        assert emitted == accepted
    assert streamer.bytes_streamed == sum(line_bytes(x) for x in accepted)
    assert [c.timestamp_ms for c in delivered] == sorted(c.timestamp_ms for c in delivered)


@given(configs, ops, st.lists(st.booleans(), max_size=60))
def test_discarded_lines_are_announced_with_their_exact_count(
    config: LogStreamConfig, operations: list[tuple[str, int, list[str]]], discards: list[bool]
) -> None:
    streamer, inputs, delivered, discarded = _run(config, operations, discards)
    accepted = _accepted(inputs, config.max_bytes)
    lost = [line for chunk in discarded for line in chunk.user_lines]
    for chunk in delivered:
        _check_shape(chunk, config)
    # every delivered marker reports the lines lost since the previous delivered chunk
    assert sum(chunk.dropped for chunk in delivered) == len(lost)
    # what arrives, in order, is the accepted input minus whole discarded chunks
    arrived = [line for chunk in delivered for line in chunk.user_lines]
    assert len(arrived) + len(lost) == len(accepted)
    position = 0
    for line in arrived:
        while accepted[position] != line:
            position += 1
        position += 1
    # the truncation notice reaches the user exactly once, even if its first chunk was discarded
    notices = sum(chunk.truncated for chunk in delivered)
    assert notices == (1 if streamer.truncated else 0)
