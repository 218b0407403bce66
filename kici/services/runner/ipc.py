"""The runner's end of the IPC channel: newline-delimited UTF-8 JSON over an inherited socket (ISO-03).

Standard library only; messages are plain dicts (the parent side has attrs models in
``kici.domain.runner_ipc``). Sending is thread-safe because step threads, the shell readers and the main
thread all emit. A send to a closed channel is dropped silently: the parent is gone, and the runner is
about to be killed anyway.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

MAX_FRAME_BYTES = 16 * 1024 * 1024
_RECV_CHUNK = 65536


class FrameTooLargeError(ValueError):
    """A frame above 16 MiB, in either direction; an outgoing one fails the job instead."""


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._send_lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_fd(cls, fd: int) -> Channel:
        return cls(socket.socket(fileno=fd))

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, message: dict[str, Any]) -> None:
        frame = encode_frame(message)
        with self._send_lock:
            if self._closed:
                return
            try:
                self._sock.sendall(frame)
            except OSError:
                self._closed = True

    def frames(self) -> Iterator[dict[str, Any] | str]:
        """Incoming messages; a malformed frame is yielded as its error text so the caller can report it."""
        buffer = b""
        while True:
            try:
                chunk = self._sock.recv(_RECV_CHUNK)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while True:
                newline = buffer.find(b"\n")
                if newline < 0:
                    if len(buffer) > MAX_FRAME_BYTES:
                        yield f"incoming frame exceeds {MAX_FRAME_BYTES} bytes"
                        return
                    break
                line, buffer = buffer[:newline], buffer[newline + 1 :]
                if line.strip():
                    yield decode_frame(line)

    def close(self) -> None:
        with self._send_lock:
            self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


def encode_frame(message: dict[str, Any]) -> bytes:
    text = json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str)
    frame = text.encode("utf-8", "surrogatepass") + b"\n"
    if len(frame) > MAX_FRAME_BYTES:
        raise FrameTooLargeError(
            f"{message.get('type')} frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}"
        )
    return frame


def decode_frame(line: bytes) -> dict[str, Any] | str:
    if len(line) > MAX_FRAME_BYTES:
        return f"incoming frame exceeds {MAX_FRAME_BYTES} bytes"
    try:
        data = json.loads(line)
    except ValueError as exc:
        return f"malformed frame: {exc}"
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        return "malformed frame: not an object with a string 'type'"
    return data


__all__ = ["MAX_FRAME_BYTES", "Channel", "FrameTooLargeError", "decode_frame", "encode_frame"]
