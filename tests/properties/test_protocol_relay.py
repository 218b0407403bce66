"""Chunked webhook relay (PRO-21, HOOK-05), 20a §6.4 and 20 §20 invariant 15."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.relay import (
    RelayComplete,
    RelayIgnored,
    RelayPending,
    RelayReassembler,
    RelayRejected,
    RelayViolation,
    split_body,
)

pytestmark = pytest.mark.feature("PRO-21", "HOOK-05")

TTL = 30_000
bodies = st.binary(max_size=400)
chunk_sizes = st.integers(min_value=1, max_value=70)

Frame = tuple[int, str, bool, int]  # sequence, data, final, arrival ms


@given(bodies, chunk_sizes)
def test_split_then_reassemble_is_identity(body: bytes, chunk_bytes: int) -> None:
    split = split_body(body, chunk_bytes)
    assert split.total_size == len(body)
    assert split.chunk_count == len(split.chunks) == max(1, -(-len(body) // chunk_bytes))
    assert [c.sequence for c in split.chunks] == list(range(split.chunk_count))
    assert [c.final for c in split.chunks] == [n == split.chunk_count - 1 for n in range(split.chunk_count)]
    relay: RelayReassembler[str] = RelayReassembler()
    assert relay.start("m", split.total_size, split.chunk_count, "meta", 0) == RelayPending("m")
    outcomes = [relay.chunk("m", c.sequence, c.data, c.final, 1) for c in split.chunks]
    assert outcomes[:-1] == [RelayPending("m")] * (len(outcomes) - 1)
    assert outcomes[-1] == RelayComplete("m", "meta", body)
    assert len(relay) == 0


@given(st.integers(min_value=0, max_value=300_000), st.binary(min_size=1, max_size=64))
def test_default_split_uses_64_kib_raw_chunks(size: int, pattern: bytes) -> None:
    body = (pattern * (size // len(pattern) + 1))[:size]
    split = split_body(body)
    assert all(len(base64.b64decode(c.data)) == 65_536 for c in split.chunks[:-1])
    assert len(base64.b64decode(split.chunks[-1].data)) <= 65_536
    assert b"".join(base64.b64decode(c.data) for c in split.chunks) == body


@st.composite
def streams(draw: st.DrawFn) -> tuple[int, int, list[Frame]]:
    """A valid split, usually damaged by a few mutations of the kinds a broken Platform could send."""
    body = draw(bodies)
    split = split_body(body, draw(chunk_sizes))
    total, count = split.total_size, split.chunk_count
    frames: list[Frame] = [(c.sequence, c.data, c.final, 10 * n) for n, c in enumerate(split.chunks)]
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["total", "count", "swap", "drop", "dup", "final", "b64", "late", "seq"]))
        if kind == "total":
            total = draw(st.integers(-3, total + 3))
        elif kind == "count":
            count = draw(st.integers(-1, count + 2))
        elif frames:
            i = draw(st.integers(0, len(frames) - 1))
            seq, data, final, at = frames[i]
            if kind == "swap":
                j = draw(st.integers(0, len(frames) - 1))
                frames[i], frames[j] = frames[j], frames[i]
            elif kind == "drop":
                del frames[i]
            elif kind == "dup":
                frames.insert(i, frames[i])
            elif kind == "final":
                frames[i] = (seq, data, not final, at)
            elif kind == "b64":
                frames[i] = (seq, draw(st.sampled_from(["!!!!", "abc", "a===", "é"])), final, at)
            elif kind == "late":
                frames[i] = (seq, data, final, TTL + draw(st.integers(0, 100)))
            else:
                frames[i] = (draw(st.integers(-1, seq + 2)), data, final, at)
    frames.sort(key=lambda f: f[3])
    return total, count, frames


def _decodes(data: str) -> bytes | None:
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:
        return None


def _expected(total: int, count: int, frames: list[Frame]) -> str:
    """Declarative verdict: "accepted", "pending" or "rejected"."""
    if not (0 <= total <= 26_214_400 and count >= 1):
        return "rejected"
    received = 0
    for i, (seq, data, final, at) in enumerate(frames[:count]):
        piece = _decodes(data)
        last = i == count - 1
        if seq != i or piece is None or at >= TTL or final != last:
            return "rejected"
        received += len(piece)
        if received > total or (last and received != total):
            return "rejected"
    return "accepted" if len(frames) >= count else "pending"


@given(streams())
def test_accepts_exactly_the_well_formed_streams(stream: tuple[int, int, list[Frame]]) -> None:
    total, count, frames = stream
    relay: RelayReassembler[None] = RelayReassembler(ttl_ms=TTL)
    outcomes = [relay.start("m", total, count, None, 0)]
    outcomes += [relay.chunk("m", seq, data, final, at) for seq, data, final, at in frames]
    verdicts = [o for o in outcomes if isinstance(o, RelayComplete | RelayRejected)]
    expected = _expected(total, count, frames)
    if expected == "pending":
        assert verdicts == []
        assert "m" in relay
        return
    assert len(verdicts) == 1
    verdict = verdicts[0]
    after = outcomes[outcomes.index(verdict) + 1 :]
    assert all(o == RelayIgnored("m") for o in after)
    assert "m" not in relay
    if expected == "accepted":
        assert isinstance(verdict, RelayComplete)
        pieces = [_decodes(data) for _seq, data, _final, _at in frames[:count]]
        assert verdict.body == b"".join(p for p in pieces if p is not None)
        assert len(verdict.body) == total
    else:
        assert isinstance(verdict, RelayRejected)
        assert verdict.RESULT == "rejected_misconfigured"
        assert verdict.detail


@given(st.lists(st.integers(0, 40_000), max_size=30), st.integers(0, 80_000))
def test_expiry_sweeps_exactly_the_buffers_past_their_ttl(starts: list[int], now: int) -> None:
    relay: RelayReassembler[None] = RelayReassembler(ttl_ms=TTL)
    started: dict[str, int] = {}
    for n, at in enumerate(sorted(starts)):
        relay.start(f"m{n}", 1, 1, None, at)
        started[f"m{n}"] = at
    horizon = max([now, *started.values()])
    swept = relay.expire(horizon)
    assert {r.message_id for r in swept} == {m for m, at in started.items() if horizon - at >= TTL}
    assert all(r.violation is RelayViolation.EXPIRED for r in swept)
    assert len(relay) == len(started) - len(swept)
