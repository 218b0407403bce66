"""Outbound buffering (PRO-07, PRO-14), spec 20 §9 and §20 invariants 5, 6 and 8."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.buffers import (
    PinKey,
    PinnedOutbox,
    RingBuffer,
    Sequenced,
    batches,
    gap_marker,
    merge_by_sequence,
)

sizes = st.integers(min_value=1, max_value=30)
items = st.lists(st.integers(), max_size=120)


@pytest.mark.feature("PRO-07")
@given(sizes, items)
def test_ring_keeps_the_newest_and_counts_the_rest(max_size: int, added: list[int]) -> None:
    ring: RingBuffer[int] = RingBuffer(max_size)
    results = [ring.add(x) for x in added]
    k = len(added)
    assert len(ring) <= max_size
    assert ring.dropped == max(0, k - max_size)
    assert results == [n < max_size for n in range(k)]
    assert ring.flush() == added[k - min(k, max_size) :]
    assert len(ring) == 0
    assert ring.dropped == max(0, k - max_size)


ring_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers()),
        st.tuples(st.just("flush"), st.none()),
        st.tuples(st.just("reset"), st.none()),
        st.tuples(st.just("clear"), st.none()),
    ),
    max_size=150,
)


@pytest.mark.feature("PRO-07")
@given(sizes, ring_ops)
def test_ring_behaves_like_a_bounded_list(max_size: int, ops: list[tuple[str, int | None]]) -> None:
    ring: RingBuffer[int] = RingBuffer(max_size)
    model: list[int] = []
    dropped = 0
    for op, value in ops:
        if op == "add":
            assert value is not None
            model.append(value)
            evicted = len(model) > max_size
            if evicted:
                model.pop(0)
                dropped += 1
            assert ring.add(value) is not evicted
        elif op == "flush":
            assert ring.flush() == model
            model = []
        elif op == "reset":
            ring.reset_dropped()
            dropped = 0
        else:
            ring.clear()
            model, dropped = [], 0
        assert list(ring) == model
        assert ring.dropped == dropped
        assert len(ring) <= max_size


keys = st.builds(
    PinKey,
    job_id=st.sampled_from(["j1", "j2", "j3", "j4"]),
    step_index=st.one_of(st.none(), st.integers(0, 3)),
)


@pytest.mark.feature("PRO-14")
@given(st.integers(1, 12), st.lists(st.tuples(keys, st.text(max_size=5)), max_size=80))
def test_pinned_outbox_keeps_every_accepted_key_at_its_latest_state(
    max_keys: int, puts: list[tuple[PinKey, str]]
) -> None:
    outbox: PinnedOutbox[str] = PinnedOutbox(max_keys)
    model: dict[PinKey, tuple[int, str]] = {}
    for seq, (key, status) in enumerate(puts):
        accepted = outbox.put(key, status, seq)
        assert accepted == (key in model or len(model) < max_keys)
        if accepted:
            model[key] = (seq, status)
        assert len(outbox) == len(model) <= max_keys
        assert all(k in outbox for k in model)
    assert outbox.job_ids() == {k.job_id for k in model}
    assert [(e.seq, e.item) for e in outbox.held()] == sorted(model.values())
    flushed = outbox.flush()
    assert [(e.seq, e.item) for e in flushed] == sorted(model.values())
    assert len(outbox) == 0


@pytest.mark.feature("PRO-07", "PRO-14")
@given(
    st.integers(1, 20),
    st.lists(
        st.one_of(st.tuples(st.just("event"), st.none()), st.tuples(st.just("status"), keys)), max_size=100
    ),
)
def test_merged_flush_replays_in_enqueue_order(
    ring_size: int, sends: list[tuple[str, PinKey | None]]
) -> None:
    ring: RingBuffer[Sequenced[str]] = RingBuffer(ring_size)
    outbox: PinnedOutbox[str] = PinnedOutbox()
    for seq, (_kind, key) in enumerate(sends):
        if key is None:
            ring.add(Sequenced(seq, f"event-{seq}"))
        else:
            outbox.put(key, f"status-{seq}", seq)
    survivors_events = list(ring)
    survivors_statuses = outbox.flush()
    merged = merge_by_sequence(ring.flush(), survivors_statuses)
    expected = sorted([*survivors_events, *survivors_statuses], key=lambda e: e.seq)
    assert merged == [e.item for e in expected]
    seqs = [int(item.split("-")[1]) for item in merged]
    assert seqs == sorted(seqs)


@pytest.mark.feature("PRO-07")
@given(st.lists(st.integers(), max_size=200), st.integers(1, 60))
def test_batches_cut_in_order_without_loss(values: list[int], size: int) -> None:
    cut = batches(values, size)
    assert [x for batch in cut for x in batch] == values
    assert all(1 <= len(batch) <= size for batch in cut)
    assert all(len(batch) == size for batch in cut[:-1])


counts = st.integers(min_value=0, max_value=20_000)
times = st.integers(min_value=0, max_value=10**13)


@pytest.mark.feature("PRO-14")
@given(times, st.one_of(st.none(), times), st.tuples(counts, counts, counts, counts))
def test_gap_marker_follows_the_template(
    now: int, disconnected_at: int | None, tallies: tuple[int, int, int, int]
) -> None:
    events, lines, dropped_events, dropped_lines = tallies
    marker = gap_marker(
        now_ms=now,
        disconnected_at_ms=disconnected_at,
        buffered_events=events,
        buffered_lines=lines,
        dropped_events=dropped_events,
        dropped_lines=dropped_lines,
    )
    if events + lines + dropped_events + dropped_lines == 0:
        assert marker is None
        return
    elapsed = 0 if disconnected_at is None else max(0, now - disconnected_at)
    seconds = elapsed // 1000 + (1 if elapsed % 1000 >= 500 else 0)
    expected = (
        f"--- Orchestrator offline for {seconds}s."
        + f" Replaying {events} buffered events and {lines} buffered log lines."
        + (f" {dropped_events} events dropped due to buffer overflow." if dropped_events else "")
        + (f" {dropped_lines} log lines dropped due to buffer overflow." if dropped_lines else "")
        + " ---"
    )
    assert marker == expected
    assert re.fullmatch(r"--- Orchestrator offline for \d+s\. Replaying .* ---", marker)
