"""Relay reassembly examples, one per violation (PRO-21, HOOK-05)."""

from __future__ import annotations

import base64

import pytest

from kici.domain.relay import (
    MAX_RELAY_BODY_BYTES,
    RelayBodyTooLargeError,
    RelayComplete,
    RelayIgnored,
    RelayPending,
    RelayReassembler,
    RelayRejected,
    RelayViolation,
    split_body,
)

pytestmark = pytest.mark.feature("PRO-21", "HOOK-05")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def started(total: int = 4, count: int = 2) -> RelayReassembler[str]:
    relay: RelayReassembler[str] = RelayReassembler()
    assert relay.start("m", total, count, "delivery-1", 0) == RelayPending("m")
    return relay


def rejected(outcome: object) -> RelayViolation:
    assert isinstance(outcome, RelayRejected)
    assert outcome.message_id == "m"
    return outcome.violation


def test_two_chunk_stream_completes_with_its_meta() -> None:
    relay = started()
    assert relay.chunk("m", 0, b64(b"ab"), False, 1) == RelayPending("m")
    assert relay.chunk("m", 1, b64(b"cd"), True, 2) == RelayComplete("m", "delivery-1", b"abcd")
    assert relay.chunk("m", 1, b64(b"cd"), True, 3) == RelayIgnored("m")


def test_empty_body_is_one_empty_final_chunk() -> None:
    split = split_body(b"")
    assert (split.total_size, split.chunk_count) == (0, 1)
    relay = started(0, 1)
    chunk = split.chunks[0]
    assert relay.chunk("m", chunk.sequence, chunk.data, chunk.final, 1) == RelayComplete(
        "m", "delivery-1", b""
    )


def test_largest_body_splits_into_400_chunks_and_larger_is_refused() -> None:
    assert split_body(bytes(MAX_RELAY_BODY_BYTES)).chunk_count == 400
    with pytest.raises(RelayBodyTooLargeError):
        split_body(bytes(MAX_RELAY_BODY_BYTES + 1))


def test_duplicate_start_rejects_and_discards_the_stream() -> None:
    relay = started()
    assert rejected(relay.start("m", 4, 2, "again", 1)) is RelayViolation.DUPLICATE_START
    assert "m" not in relay
    assert relay.chunk("m", 0, b64(b"ab"), False, 2) == RelayIgnored("m")


@pytest.mark.parametrize(
    ("total", "count", "violation"),
    [
        (-1, 1, RelayViolation.BAD_TOTAL_SIZE),
        (MAX_RELAY_BODY_BYTES + 1, 1, RelayViolation.BAD_TOTAL_SIZE),
        (4, 0, RelayViolation.BAD_CHUNK_COUNT),
    ],
)
def test_bad_start(total: int, count: int, violation: RelayViolation) -> None:
    relay: RelayReassembler[None] = RelayReassembler()
    assert rejected(relay.start("m", total, count, None, 0)) is violation


@pytest.mark.parametrize(
    ("frames", "violation"),
    [
        ([(1, b64(b"cd"), True)], RelayViolation.OUT_OF_ORDER),
        ([(0, b64(b"ab"), False), (0, b64(b"ab"), False)], RelayViolation.OUT_OF_ORDER),
        ([(2, b64(b"ab"), False)], RelayViolation.EXCESS_CHUNK),
        ([(0, "not base64!", False)], RelayViolation.BAD_BASE64),
        ([(0, b64(b"abcde"), False)], RelayViolation.OVERSIZE),
        ([(0, b64(b"ab"), True)], RelayViolation.EARLY_FINAL),
        ([(0, b64(b"ab"), False), (1, b64(b"cd"), False)], RelayViolation.MISSING_FINAL),
        ([(0, b64(b"a"), False), (1, b64(b"cd"), True)], RelayViolation.SIZE_MISMATCH),
    ],
)
def test_stream_violations(frames: list[tuple[int, str, bool]], violation: RelayViolation) -> None:
    relay = started()
    outcomes = [relay.chunk("m", seq, data, final, 1) for seq, data, final in frames]
    assert all(o == RelayPending("m") for o in outcomes[:-1])
    assert rejected(outcomes[-1]) is violation
    assert "m" not in relay


def test_chunk_without_start() -> None:
    relay: RelayReassembler[None] = RelayReassembler()
    assert rejected(relay.chunk("m", 0, "", True, 0)) is RelayViolation.UNKNOWN_STREAM


def test_buffers_live_30_seconds() -> None:
    relay = started()
    assert relay.chunk("m", 0, b64(b"ab"), False, 29_999) == RelayPending("m")
    assert rejected(relay.chunk("m", 1, b64(b"cd"), True, 30_000)) is RelayViolation.EXPIRED


def test_sweep_rejects_expired_buffers_then_forgets_them() -> None:
    relay = started()
    relay.start("young", 1, 1, "x", 20_000)
    (expired,) = relay.expire(30_000)
    assert (expired.message_id, expired.violation) == ("m", RelayViolation.EXPIRED)
    assert "young" in relay
    assert relay.start("m", 1, 1, "again", 30_001) == RelayIgnored("m")
    relay.expire(60_001)
    assert relay.start("m", 1, 1, "again", 60_002) == RelayPending("m")


def test_a_start_for_an_expired_but_unswept_buffer_begins_afresh() -> None:
    relay = started()
    assert relay.start("m", 2, 1, "retry", 30_000) == RelayPending("m")
    assert relay.chunk("m", 0, b64(b"ok"), True, 30_001) == RelayComplete("m", "retry", b"ok")
