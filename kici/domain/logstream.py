"""Cutting a step's (already masked) output lines into ``log.chunk`` payloads.

A chunk leaves at 50 lines, or 100 ms after its first line arrived, so a chatty
step costs few frames and a quiet one still shows output promptly. Each step has
a byte budget (10 MiB by default): the line arriving after the budget is reached
is replaced by one ``[TRUNCATED: ...]`` line, sent at once, and everything later
is dropped, so a runaway step cannot fill the log store.

When the link cannot keep up, the writer discards whole chunks (``drop`` mode,
or after 30 s of ``pause``) and reports them with :meth:`LogStreamer.discard`;
the next chunk then opens with ``[<N> lines dropped due to backpressure]``. The
spec names the marker for ``drop`` mode only; we emit it for a timed-out pause
too, because the user lost lines either way. A discarded chunk that carried the
truncation line hands it back, so the user still learns the log was cut.

Choices where the spec is silent:

* Times are one caller clock in epoch milliseconds; the chunk timestamp is the
  time the chunk was cut (replays keep it).
* Line bytes are UTF-8 without a newline; the budget counter (reported as
  ``logBytesStreamed``) counts every accepted line, including lines the writer
  later discards, and the line that crosses the budget is kept whole.
* A chunk also leaves early once its lines reach ``max_chunk_bytes`` (256 KiB),
  so 50 long lines never exceed the receiver's 2 MiB per-frame burst and get the
  agent disconnected.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

DEFAULT_MAX_LOG_BYTES = 10_485_760
CHUNK_MAX_LINES = 50
CHUNK_FLUSH_AFTER_MS = 100
CHUNK_MAX_BYTES = 262_144
BACKPRESSURE_THRESHOLD_BYTES = 1_048_576
PAUSE_TIMEOUT_MS = 30_000


class InvalidLogStreamError(ValueError):
    """A streamer configured with impossible limits."""


class BackpressureMode(enum.StrEnum):
    """``KICI_BACKPRESSURE_MODE``: what the writer does above the unsent-bytes threshold."""

    PAUSE = "pause"
    DROP = "drop"


def truncation_line(max_bytes: int) -> str:
    return f"[TRUNCATED: log output exceeded {max_bytes} bytes]"


def dropped_line(count: int) -> str:
    return f"[{count} lines dropped due to backpressure]"


def line_bytes(line: str) -> int:
    return len(line.encode("utf-8", errors="surrogatepass"))


def _non_negative(_instance: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value < 0:
        raise InvalidLogStreamError(f"{attribute.name} must be >= 0, got {value}")


@attrs.frozen
class LogStreamConfig:
    """``max_bytes`` None means no budget (agent operational lines batch this way)."""

    max_lines: int = CHUNK_MAX_LINES
    flush_after_ms: int = CHUNK_FLUSH_AFTER_MS
    max_chunk_bytes: int = CHUNK_MAX_BYTES
    max_bytes: int | None = attrs.field(default=DEFAULT_MAX_LOG_BYTES, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        # a chunk needs room for the drop marker and one more line
        if self.max_lines < 2 or self.flush_after_ms < 0 or self.max_chunk_bytes < 1:
            raise InvalidLogStreamError(
                "need max_lines >= 2, flush_after_ms >= 0, max_chunk_bytes >= 1; got "
                f"{self.max_lines}, {self.flush_after_ms}, {self.max_chunk_bytes}"
            )


@attrs.frozen
class LogChunk:
    """One ``log.chunk`` worth of lines.

    ``dropped > 0`` means ``lines[0]`` is the backpressure marker for that many
    lines; ``truncated`` means ``lines[-1]`` is the truncation line.
    """

    lines: tuple[str, ...]
    timestamp_ms: int
    dropped: int = 0
    truncated: bool = False

    @property
    def user_lines(self) -> tuple[str, ...]:
        """The step's own output carried by this chunk, without markers."""
        start = 1 if self.dropped else 0
        end = len(self.lines) - 1 if self.truncated else len(self.lines)
        return self.lines[start:end]


class LogStreamer:
    """The chunker of one (run, job, step); feed it lines and the current time.

    Every method returns the chunks that are ready, in order. The caller wakes
    it at :attr:`flush_due_ms` with :meth:`tick` and calls :meth:`finish` at the
    end of the step.
    """

    __slots__ = (
        "_bytes",
        "_config",
        "_dropped",
        "_first_at",
        "_pending",
        "_pending_bytes",
        "_truncated",
        "_truncation_line",
    )

    def __init__(self, config: LogStreamConfig | None = None) -> None:
        self._config = config if config is not None else LogStreamConfig()
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._first_at: int | None = None
        self._dropped = 0
        self._bytes = 0
        self._truncated = False
        self._truncation_line: str | None = None

    @property
    def bytes_streamed(self) -> int:
        """The budget counter, reported as ``step.status.logBytesStreamed``."""
        return self._bytes

    @property
    def truncated(self) -> bool:
        return self._truncated

    @property
    def flush_due_ms(self) -> int | None:
        """When :meth:`tick` must next run, or None while no line is waiting."""
        if self._first_at is None:
            return None
        return self._first_at + self._config.flush_after_ms

    def push(self, line: str, now_ms: int) -> list[LogChunk]:
        chunks = self.tick(now_ms)
        if self._truncated:
            return chunks
        budget = self._config.max_bytes
        if budget is not None and self._bytes >= budget:
            self._truncated = True
            self._truncation_line = truncation_line(budget)
            self._mark_waiting(now_ms)
            chunks.extend(self._drain(now_ms))
            return chunks
        size = line_bytes(line)
        self._bytes += size
        self._pending.append(line)
        self._pending_bytes += size
        self._mark_waiting(now_ms)
        while self._full():
            chunks.append(self._cut(now_ms))
        return chunks

    def tick(self, now_ms: int) -> list[LogChunk]:
        due = self.flush_due_ms
        if due is None or now_ms < due:
            return []
        return self._drain(now_ms)

    def finish(self, now_ms: int) -> list[LogChunk]:
        """Everything still held, including a marker for lines dropped after the last chunk."""
        chunks = self._drain(now_ms)
        if self._dropped:
            chunks.append(self._cut(now_ms))
        return chunks

    def discard(self, chunk: LogChunk, now_ms: int) -> None:
        """The writer threw ``chunk`` away: the next chunk reports its lines as dropped."""
        self._dropped += chunk.dropped + len(chunk.user_lines)
        if chunk.truncated:
            self._truncation_line = chunk.lines[-1]
            self._mark_waiting(now_ms)

    def _mark_waiting(self, now_ms: int) -> None:
        if self._first_at is None:
            self._first_at = now_ms

    def _full(self) -> bool:
        markers = (1 if self._dropped else 0) + (1 if self._truncation_line is not None else 0)
        held = len(self._pending) + markers
        return held >= self._config.max_lines or self._pending_bytes >= self._config.max_chunk_bytes

    def _drain(self, now_ms: int) -> list[LogChunk]:
        chunks: list[LogChunk] = []
        while self._pending or self._truncation_line is not None:
            chunks.append(self._cut(now_ms))
        return chunks

    def _cut(self, now_ms: int) -> LogChunk:
        dropped = self._dropped
        head = [dropped_line(dropped)] if dropped else []
        room = self._config.max_lines - len(head)
        lines: list[str] = []
        taken_bytes = 0
        for line in self._pending:
            if len(lines) >= room or (lines and taken_bytes >= self._config.max_chunk_bytes):
                break
            lines.append(line)
            taken_bytes += line_bytes(line)
        del self._pending[: len(lines)]
        self._pending_bytes -= taken_bytes
        tail: list[str] = []
        if self._truncation_line is not None and not self._pending and len(lines) < room:
            tail = [self._truncation_line]
            self._truncation_line = None
        self._dropped = 0
        self._first_at = now_ms if self._pending or self._truncation_line is not None else None
        return LogChunk(tuple(head + lines + tail), now_ms, dropped, bool(tail))
