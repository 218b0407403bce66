"""Frame rules every WebSocket adapter applies the same way, so the contract suite sees one behaviour.

The libraries measure a text frame in characters (trio-websocket's ``max_message_size``, hypercorn's
``websocket_max_message_size``); the protocol's 25 MiB limit is in UTF-8 bytes (PRO-04). Each adapter
therefore configures its library with the limit as a character count, which already bounds the memory
a frame can take, and then checks the byte size of what it receives, closing with 1009 itself when a
frame of multi-byte characters slips under the character count.
"""

from __future__ import annotations

from typing import Final

from kici.domain.ports import ConnectionClosed, check_close_code
from kici.domain.protocol import MAX_PAYLOAD_BYTES, CloseCode, truncate_close_reason

DEFAULT_MAX_MESSAGE_SIZE: Final = MAX_PAYLOAD_BYTES
DEFAULT_CLOSE_TIMEOUT_S: Final = 5.0
"""How long ``close`` waits for the peer's close frame before dropping the TCP connection."""

ABNORMAL_CLOSURE: Final = 1006
UNSUPPORTED_DATA: Final = 1003
MESSAGE_TOO_BIG: Final = int(CloseCode.MESSAGE_TOO_BIG)
TOO_BIG_REASON: Final = "Message too big"
BINARY_REASON: Final = "Binary frames are not supported"
_MAX_UTF8_WIDTH: Final = 4


def utf8_size(text: str) -> int:
    """UTF-8 length of ``text``; raises ``UnicodeEncodeError`` for a lone surrogate (not sendable)."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def exceeds_limit(text: str, limit: int) -> bool:
    """Whether ``text`` is more than ``limit`` UTF-8 bytes, encoding it only when the length is ambiguous."""
    if len(text) > limit:
        return True
    if len(text) * _MAX_UTF8_WIDTH <= limit:
        return False
    return utf8_size(text) > limit


def close_frame(code: int, reason: str) -> tuple[int, str]:
    """The code (checked) and reason (cut to 123 UTF-8 bytes) that go into a close frame."""
    return check_close_code(code), truncate_close_reason(reason)


def require_text(text: object) -> str:
    if not isinstance(text, str):
        raise TypeError(f"a frame must be str, got {type(text).__name__}")
    return text


def raised(closed: ConnectionClosed | None) -> ConnectionClosed:
    """A fresh exception for a stored close (1006 if none is known).

    Raising one stored instance again and again, from several tasks, would chain every raise's
    traceback onto it; the close is kept as data and raised as a new exception each time.
    """
    if closed is None:
        return ConnectionClosed(ABNORMAL_CLOSURE)
    return ConnectionClosed(closed.code, closed.reason)
