"""Outbound buffer and gap-marker examples, spec 20 §9 (PRO-07, PRO-14)."""

from __future__ import annotations

import pytest

from kici.domain.buffers import (
    AGENT_EVENT_BUFFER_SIZE,
    AGENT_LOG_BUFFER_SIZE,
    PINNED_OUTBOX_MAX_KEYS,
    UPSTREAM_EVENT_BUFFER_SIZE,
    InvalidBufferError,
    PinKey,
    PinnedOutbox,
    RingBuffer,
    Sequenced,
    batches,
    gap_marker,
    merge_by_sequence,
    offline_seconds,
)


@pytest.mark.feature("PRO-07")
def test_spec_sizes() -> None:
    assert (AGENT_EVENT_BUFFER_SIZE, AGENT_LOG_BUFFER_SIZE, UPSTREAM_EVENT_BUFFER_SIZE) == (
        5_000,
        10_000,
        10_000,
    )
    assert PINNED_OUTBOX_MAX_KEYS == 1_000


@pytest.mark.feature("PRO-07")
def test_ring_evicts_oldest_and_keeps_the_count_across_flush() -> None:
    ring: RingBuffer[str] = RingBuffer(2)
    assert ring.add("a")
    assert ring.add("b")
    assert not ring.add("c")
    assert ring.flush() == ["b", "c"]
    assert ring.dropped == 1
    ring.reset_dropped()
    assert ring.dropped == 0
    ring.add("d")
    ring.add("e")
    ring.add("f")
    ring.clear()
    assert (len(ring), ring.dropped) == (0, 0)


@pytest.mark.feature("PRO-07", "PRO-14")
def test_sizes_must_be_positive() -> None:
    with pytest.raises(InvalidBufferError):
        RingBuffer(0)
    with pytest.raises(InvalidBufferError):
        PinnedOutbox(0)
    with pytest.raises(InvalidBufferError):
        PinKey.for_step("j", -1)
    with pytest.raises(InvalidBufferError):
        batches([1], 0)


@pytest.mark.feature("PRO-14")
def test_outbox_coalesces_and_moves_an_update_to_its_new_sequence() -> None:
    outbox: PinnedOutbox[str] = PinnedOutbox()
    outbox.put(PinKey.for_step("j", 0), "step 0 running", 1)
    outbox.put(PinKey.for_job("j"), "job running", 2)
    outbox.put(PinKey.for_step("j", 0), "step 0 success", 5)
    events = [Sequenced(3, "log a"), Sequenced(4, "log b")]
    assert merge_by_sequence(events, outbox.flush()) == ["job running", "log a", "log b", "step 0 success"]


@pytest.mark.feature("PRO-14")
def test_full_outbox_refuses_new_keys_but_updates_held_ones() -> None:
    outbox: PinnedOutbox[str] = PinnedOutbox(max_keys=1)
    assert outbox.put(PinKey.for_job("a"), "running", 1)
    assert not outbox.put(PinKey.for_job("b"), "running", 2)
    assert outbox.put(PinKey.for_job("a"), "success", 3)
    assert outbox.get(PinKey.for_job("a")) == Sequenced(3, "success")
    assert outbox.get(PinKey.for_job("b")) is None


@pytest.mark.feature("PRO-14")
@pytest.mark.parametrize(
    ("now", "since", "seconds"),
    [(10_000, 7_500, 3), (10_000, 7_501, 2), (10_000, None, 0), (10_000, 12_000, 0), (1_000, 1_000, 0)],
)
def test_offline_seconds_round_half_up(now: int, since: int | None, seconds: int) -> None:
    assert offline_seconds(now, since) == seconds


@pytest.mark.feature("PRO-14")
def test_gap_marker_examples() -> None:
    assert (
        gap_marker(
            now_ms=125_400,
            disconnected_at_ms=0,
            buffered_events=12,
            buffered_lines=0,
            dropped_events=0,
            dropped_lines=0,
        )
        == "--- Orchestrator offline for 125s. Replaying 12 buffered events and 0 buffered log lines. ---"
    )
    assert gap_marker(
        now_ms=2_000,
        disconnected_at_ms=500,
        buffered_events=5_000,
        buffered_lines=10_000,
        dropped_events=7,
        dropped_lines=3,
    ) == (
        "--- Orchestrator offline for 2s. Replaying 5000 buffered events and 10000 buffered log lines."
        " 7 events dropped due to buffer overflow. 3 log lines dropped due to buffer overflow. ---"
    )
    assert (
        gap_marker(
            now_ms=9,
            disconnected_at_ms=None,
            buffered_events=0,
            buffered_lines=0,
            dropped_events=0,
            dropped_lines=0,
        )
        is None
    )
    with pytest.raises(InvalidBufferError):
        gap_marker(
            now_ms=9,
            disconnected_at_ms=None,
            buffered_events=-1,
            buffered_lines=0,
            dropped_events=0,
            dropped_lines=0,
        )
