"""WebSocket close codes (20-protocol.md §4) and how a client reacts to each, as data.

The reaction table answers "should this client try again?" from the code alone. Whether a
close was the client's own intentional ``disconnect()`` is client state, not part of the
code: a client that closed on purpose never reconnects, whatever the code (§14).
"""

from collections.abc import Mapping
from enum import IntEnum
from typing import Final

import attrs

MAX_CLOSE_REASON_BYTES: Final = 123
"""RFC 6455: a close frame's payload is <= 125 bytes, two of which hold the code."""


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009
    UNAUTHORIZED = 4001
    AUTH_TIMEOUT = 4002
    INVALID_MESSAGE = 4003
    HEARTBEAT_TIMEOUT = 4004
    PROTOCOL_ERROR = 4005
    INTERNAL_ERROR = 4006
    AGENT_AUTH_FAILED = 4010
    CLUSTER_NAME_CONFLICT = 4011
    PLAN_LIMIT = 4020
    RUN_NOT_FOUND = 4030
    DISPATCH_ACK_TIMEOUT = 4031


@attrs.frozen(kw_only=True)
class CloseReaction:
    """What the receiving client does after a close with this code.

    ``reconnect``: schedule a reconnect with the usual backoff. ``permanent``: stop for good
    (an agent whose token is invalid exits; under systemd non-zero). ``resubscribe``: a
    stream client may subscribe to the same run again. ``log_loudly``: an operator must act
    (version skew). ``resync``: re-register and reconcile in-flight work after reconnecting.
    """

    reconnect: bool
    permanent: bool = False
    resubscribe: bool = True
    log_loudly: bool = False
    resync: bool = False
    meaning: str


CLOSE_REACTIONS: Final[Mapping[CloseCode, CloseReaction]] = {
    CloseCode.NORMAL: CloseReaction(reconnect=True, meaning="normal closure"),
    CloseCode.GOING_AWAY: CloseReaction(reconnect=True, meaning="server shutting down"),
    CloseCode.MESSAGE_TOO_BIG: CloseReaction(reconnect=True, meaning="frame above the payload limit"),
    CloseCode.UNAUTHORIZED: CloseReaction(reconnect=True, meaning="authentication failed"),
    CloseCode.AUTH_TIMEOUT: CloseReaction(reconnect=True, meaning="authentication or registration timeout"),
    CloseCode.INVALID_MESSAGE: CloseReaction(reconnect=True, meaning="invalid message"),
    CloseCode.HEARTBEAT_TIMEOUT: CloseReaction(reconnect=True, meaning="heartbeat timeout"),
    CloseCode.PROTOCOL_ERROR: CloseReaction(
        reconnect=True, log_loudly=True, meaning="unsupported protocol version"
    ),
    CloseCode.INTERNAL_ERROR: CloseReaction(reconnect=True, meaning="internal server error"),
    CloseCode.AGENT_AUTH_FAILED: CloseReaction(
        reconnect=False, permanent=True, log_loudly=True, meaning="agent token rejected or revoked"
    ),
    CloseCode.CLUSTER_NAME_CONFLICT: CloseReaction(reconnect=True, meaning="reserved, not emitted"),
    CloseCode.PLAN_LIMIT: CloseReaction(reconnect=True, meaning="organisation over its plan"),
    CloseCode.RUN_NOT_FOUND: CloseReaction(reconnect=False, resubscribe=False, meaning="run not found"),
    CloseCode.DISPATCH_ACK_TIMEOUT: CloseReaction(
        reconnect=True, resync=True, meaning="dispatch not acknowledged in time"
    ),
}

_UNKNOWN: Final = CloseReaction(reconnect=True, meaning="unknown close code")


def close_reaction(code: int) -> CloseReaction:
    """The reaction to ``code``; codes outside the registry reconnect with backoff."""
    try:
        return CLOSE_REACTIONS[CloseCode(code)]
    except ValueError:
        return _UNKNOWN


def _utf8_width(code_point: int) -> int:
    if code_point < 0x80:
        return 1
    if code_point < 0x800:
        return 2
    return 3 if code_point < 0x10000 else 4


def truncate_close_reason(reason: str) -> str:
    """The longest prefix of ``reason`` that is valid UTF-8 within 123 bytes.

    Cuts between code points, never inside one; a lone surrogate (not encodable) ends the
    prefix, so a malformed reason shortens instead of crashing the close.
    """
    if reason.isascii() and len(reason) <= MAX_CLOSE_REASON_BYTES:
        return reason
    size = 0
    for index, char in enumerate(reason):
        code_point = ord(char)
        if 0xD800 <= code_point <= 0xDFFF:
            return reason[:index]
        size += _utf8_width(code_point)
        if size > MAX_CLOSE_REASON_BYTES:
            return reason[:index]
    return reason
