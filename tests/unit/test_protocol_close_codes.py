"""Close-code registry, client reactions and close-reason truncation (20-protocol.md §4)."""

import pytest

from kici.domain.protocol import (
    CLOSE_REACTIONS,
    MAX_CLOSE_REASON_BYTES,
    CloseCode,
    close_reaction,
    truncate_close_reason,
)


@pytest.mark.feature("PRO-03")
def test_registry_values() -> None:
    assert {code.name: code.value for code in CloseCode} == {
        "NORMAL": 1000,
        "GOING_AWAY": 1001,
        "MESSAGE_TOO_BIG": 1009,
        "UNAUTHORIZED": 4001,
        "AUTH_TIMEOUT": 4002,
        "INVALID_MESSAGE": 4003,
        "HEARTBEAT_TIMEOUT": 4004,
        "PROTOCOL_ERROR": 4005,
        "INTERNAL_ERROR": 4006,
        "AGENT_AUTH_FAILED": 4010,
        "CLUSTER_NAME_CONFLICT": 4011,
        "PLAN_LIMIT": 4020,
        "RUN_NOT_FOUND": 4030,
        "DISPATCH_ACK_TIMEOUT": 4031,
    }
    assert set(CLOSE_REACTIONS) == set(CloseCode)


@pytest.mark.feature("PRO-03")
def test_agent_auth_failure_never_reconnects() -> None:
    reaction = close_reaction(4010)
    assert not reaction.reconnect
    assert reaction.permanent


@pytest.mark.feature("PRO-03")
def test_run_not_found_is_not_resubscribed() -> None:
    reaction = close_reaction(CloseCode.RUN_NOT_FOUND)
    assert not reaction.resubscribe
    assert not reaction.reconnect


@pytest.mark.feature("PRO-03")
@pytest.mark.parametrize(
    "code",
    [c for c in CloseCode if c not in (CloseCode.AGENT_AUTH_FAILED, CloseCode.RUN_NOT_FOUND)],
)
def test_every_other_code_reconnects(code: CloseCode) -> None:
    reaction = close_reaction(code)
    assert reaction.reconnect
    assert not reaction.permanent
    assert reaction.resubscribe


@pytest.mark.feature("PRO-03")
def test_special_reactions() -> None:
    assert close_reaction(4005).log_loudly
    assert close_reaction(4031).resync
    assert not close_reaction(4003).resync


@pytest.mark.feature("PRO-03")
@pytest.mark.parametrize("code", [1006, 1011, 4999, 0, -1])
def test_unknown_codes_reconnect_with_backoff(code: int) -> None:
    reaction = close_reaction(code)
    assert reaction.reconnect
    assert not reaction.permanent


@pytest.mark.feature("PRO-03")
@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("", ""),
        ("Auth timeout", "Auth timeout"),
        ("a" * 123, "a" * 123),
        ("a" * 124, "a" * 123),
        ("a" * 122 + "é", "a" * 122),
        ("a" * 121 + "é", "a" * 121 + "é"),
        ("a" * 121 + "€x", "a" * 121),
        ("a" * 119 + "😀", "a" * 119 + "😀"),
        ("a" * 120 + "😀", "a" * 120),
        ("é" * 70, "é" * 61),
        ("ok\ud800tail", "ok"),
    ],
)
def test_truncate_close_reason(reason: str, expected: str) -> None:
    cut = truncate_close_reason(reason)
    assert cut == expected
    assert len(cut.encode("utf-8")) <= MAX_CLOSE_REASON_BYTES
