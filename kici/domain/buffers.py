"""What a client link holds while it is offline, and the gap marker it replays first.

Three stores with different loss policies (spec §9):

* :class:`RingBuffer` for high-volume traffic (``log.chunk``, ``job.heartbeat``,
  agent operational lines): bounded, the oldest entries make room, and the
  number lost is counted so the replay can say so.
* :class:`PinnedOutbox` for ``job.status`` / ``step.status``: never evicted,
  because losing a terminal status would let the recovery timer fail a job
  that actually finished. Only the latest status per job and per (job, step)
  matters, so entries coalesce and the outbox stays small.
* :func:`gap_marker`, the line that tells the user an outage happened and
  what was replayed or lost.

Events and pinned statuses carry one shared enqueue sequence (see
:class:`Sequenced`) so the replay keeps their original relative order: a step's
log chunks come before the status that ended it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

import attrs

T = TypeVar("T")

AGENT_EVENT_BUFFER_SIZE = 5_000
AGENT_LOG_BUFFER_SIZE = 10_000
UPSTREAM_EVENT_BUFFER_SIZE = 10_000
PINNED_OUTBOX_MAX_KEYS = 1_000
REPLAY_BATCH_LINES = 50


class InvalidBufferError(ValueError):
    """A buffer sized or fed with impossible values."""


class RingBuffer(Generic[T]):
    """A bounded FIFO that evicts its oldest entry when full and counts evictions.

    ``dropped`` survives :meth:`flush` so the gap marker can report it after the
    replay was taken; :meth:`reset_dropped` clears it once the marker is sent.
    """

    __slots__ = ("_dropped", "_items", "_max_size")

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise InvalidBufferError(f"max_size must be >= 1, got {max_size}")
        self._max_size = max_size
        self._items: deque[T] = deque()
        self._dropped = 0

    @property
    def max_size(self) -> int:
        return self._max_size

    @property
    def dropped(self) -> int:
        return self._dropped

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def add(self, item: T) -> bool:
        """Append ``item``; False when the oldest entry had to be evicted for it."""
        evicted = len(self._items) >= self._max_size
        if evicted:
            self._items.popleft()
            self._dropped += 1
        self._items.append(item)
        return not evicted

    def flush(self) -> list[T]:
        """Every held item in insertion order; the buffer is left empty, ``dropped`` kept."""
        items = list(self._items)
        self._items.clear()
        return items

    def reset_dropped(self) -> None:
        self._dropped = 0

    def clear(self) -> None:
        self._items.clear()
        self._dropped = 0


@attrs.frozen
class Sequenced(Generic[T]):
    """An outbound message stamped with the link's enqueue sequence number."""

    seq: int
    item: T


def _seq(entry: Sequenced[T]) -> int:
    return entry.seq


@attrs.frozen
class PinKey:
    """What a pinned status coalesces on: a job (``job.status``) or a job's step (``step.status``)."""

    job_id: str
    step_index: int | None = None

    @classmethod
    def for_job(cls, job_id: str) -> PinKey:
        return cls(job_id)

    @classmethod
    def for_step(cls, job_id: str, step_index: int) -> PinKey:
        if step_index < 0:
            raise InvalidBufferError(f"step_index must be >= 0, got {step_index}")
        return cls(job_id, step_index)


class PinnedOutbox(Generic[T]):
    """Latest status per :class:`PinKey`, never evicted, at most ``max_keys`` keys.

    An update takes the sequence number of its own enqueue, so it replays after
    everything that was sent before it. When ``max_keys`` distinct keys are held,
    a status for a new key is refused (``put`` returns False) rather than
    evicting a held one; the link then routes it to the event ring, where it is
    at least counted if lost. Updates to held keys are always accepted.
    """

    __slots__ = ("_entries", "_max_keys")

    def __init__(self, max_keys: int = PINNED_OUTBOX_MAX_KEYS) -> None:
        if max_keys < 1:
            raise InvalidBufferError(f"max_keys must be >= 1, got {max_keys}")
        self._max_keys = max_keys
        self._entries: dict[PinKey, Sequenced[T]] = {}

    @property
    def max_keys(self) -> int:
        return self._max_keys

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: PinKey) -> Sequenced[T] | None:
        return self._entries.get(key)

    def put(self, key: PinKey, item: T, seq: int) -> bool:
        """Hold ``item`` as the latest status for ``key``; False if the outbox is full of other keys."""
        if key not in self._entries and len(self._entries) >= self._max_keys:
            return False
        self._entries.pop(key, None)
        self._entries[key] = Sequenced(seq, item)
        return True

    def job_ids(self) -> set[str]:
        """Jobs with a held status: the agent lists them in ``inFlightJobs`` when it re-registers."""
        return {key.job_id for key in self._entries}

    def held(self) -> list[Sequenced[T]]:
        """Every held status ordered by sequence, left in place."""
        return sorted(self._entries.values(), key=_seq)

    def flush(self) -> list[Sequenced[T]]:
        """Every held status ordered by sequence; the outbox is left empty."""
        entries = sorted(self._entries.values(), key=_seq)
        self._entries.clear()
        return entries


def merge_by_sequence(*streams: Iterable[Sequenced[T]]) -> list[T]:
    """The items of all streams in enqueue order (ties keep stream order)."""
    return [entry.item for entry in sorted((e for stream in streams for e in stream), key=_seq)]


def batches(items: Iterable[T], size: int = REPLAY_BATCH_LINES) -> list[list[T]]:
    """``items`` cut into consecutive lists of at most ``size`` (the LogBuffer replays as 50-line batches)."""
    if size < 1:
        raise InvalidBufferError(f"size must be >= 1, got {size}")
    out: list[list[T]] = []
    for item in items:
        if not out or len(out[-1]) >= size:
            out.append([])
        out[-1].append(item)
    return out


def offline_seconds(now_ms: float, disconnected_at_ms: float | None) -> int:
    """Whole seconds offline, rounded half-up; 0 if unknown or if the clock stepped backwards."""
    if disconnected_at_ms is None or now_ms <= disconnected_at_ms:
        return 0
    return int((now_ms - disconnected_at_ms + 500) // 1000)


def gap_marker(
    *,
    now_ms: float,
    disconnected_at_ms: float | None,
    buffered_events: int,
    buffered_lines: int,
    dropped_events: int,
    dropped_lines: int,
) -> str | None:
    """The replay's first line, or None when nothing was buffered or lost.

    ``buffered_events`` counts everything replayed as an event: the event ring
    plus the pinned statuses (they replay in the same merged stream).
    ``disconnected_at_ms`` is the wall-clock stamp taken when the link closed.
    """
    counts = (buffered_events, buffered_lines, dropped_events, dropped_lines)
    if any(c < 0 for c in counts):
        raise InvalidBufferError(f"counts must be >= 0, got {counts}")
    if not any(counts):
        return None
    seconds = offline_seconds(now_ms, disconnected_at_ms)
    text = (
        f"--- Orchestrator offline for {seconds}s. Replaying {buffered_events} buffered events"
        f" and {buffered_lines} buffered log lines."
    )
    if dropped_events > 0:
        text += f" {dropped_events} events dropped due to buffer overflow."
    if dropped_lines > 0:
        text += f" {dropped_lines} log lines dropped due to buffer overflow."
    return text + " ---"
