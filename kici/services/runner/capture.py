"""Log capture and routing (10 §4.2, EXE-10): every line a step produces becomes a masked ``log.line``.

Attribution uses a ``ContextVar`` holding the current step index (the prepare phase is ``-1``): each
unit runs in its own thread with its own context, so ``print()``, ``sys.stdout``/``sys.stderr`` writes and
root ``logging`` records from parallel steps land in the right step's log. Partial lines are buffered per
step index until a newline or the end of the unit. Each step index gets at most ``cap_bytes`` of log;
beyond it one truncation marker is sent and the rest dropped.

Output written straight to file descriptor 1/2 (a child process the user started with ``subprocess``
instead of ``ctx.sh``) bypasses this; the parent relays the runner's own stdout/stderr (ISO-03).
"""

from __future__ import annotations

import contextvars
import io
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from kici.sdk.masking import Masker

PREPARE_INDEX = -1
DEFAULT_CAP_BYTES = 10 * 1024 * 1024
MAX_LINE_CHARS = 65536

current_step_index: contextvars.ContextVar[int] = contextvars.ContextVar(
    "kici_step_index", default=PREPARE_INDEX
)


class LogRouter:
    """Masks, caps and sends log lines; thread-safe."""

    def __init__(
        self, send: Callable[[dict[str, Any]], None], masker: Masker, cap_bytes: int = DEFAULT_CAP_BYTES
    ) -> None:
        self._send = send
        self.masker = masker
        self._cap = cap_bytes
        self._lock = threading.Lock()
        self._bytes: dict[int, int] = {}
        self._truncated: set[int] = set()

    def emit(self, index: int, line: str) -> None:
        if len(line) > MAX_LINE_CHARS:
            line = line[:MAX_LINE_CHARS] + " [line truncated]"
        masked = self.masker.mask(line)
        size = len(masked.encode("utf-8", "surrogatepass")) + 1
        with self._lock:
            if index in self._truncated:
                return
            used = self._bytes.get(index, 0) + size
            if used > self._cap:
                self._truncated.add(index)
                masked = f"[TRUNCATED: log output exceeded {self._cap} bytes]"
            else:
                self._bytes[index] = used
        self._send({"type": "log.line", "stepIndex": index, "line": masked})

    def emit_text(self, index: int, text: str) -> None:
        for line in text.splitlines() or [""]:
            self.emit(index, line)


class RoutingStream(io.TextIOBase):
    """A ``sys.stdout``/``sys.stderr`` replacement that routes whole lines by the current step index."""

    def __init__(self, router: LogRouter, name: str) -> None:
        super().__init__()
        self._router = router
        self._name = name
        self._lock = threading.Lock()
        self._partial: dict[int, str] = {}

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def name(self) -> str:
        return self._name

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        index = current_step_index.get()
        with self._lock:
            pending = self._partial.pop(index, "") + text
            *lines, rest = pending.split("\n")
            if rest:
                self._partial[index] = rest
        for line in lines:
            self._router.emit(index, line.rstrip("\r"))
        return len(text)

    def flush_index(self, index: int) -> None:
        """Emit the unfinished line of ``index`` (at the end of a unit, so no output is lost)."""
        with self._lock:
            rest = self._partial.pop(index, "")
        if rest:
            self._router.emit(index, rest.rstrip("\r"))


class _RoutingHandler(logging.Handler):
    def __init__(self, router: LogRouter) -> None:
        super().__init__(logging.NOTSET)
        self._router = router
        self.setFormatter(logging.Formatter("[%(levelname)s] %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._router.emit_text(current_step_index.get(), text)


class Capture:
    """Installs the routing streams and the root logging handler for the job's lifetime."""

    def __init__(self, router: LogRouter) -> None:
        self.router = router
        self.stdout = RoutingStream(router, "<kici stdout>")
        self.stderr = RoutingStream(router, "<kici stderr>")
        self._handler = _RoutingHandler(router)
        self._saved: tuple[TextIO, TextIO, int] | None = None

    def install(self) -> None:
        root = logging.getLogger()
        self._saved = (sys.stdout, sys.stderr, root.level)
        sys.stdout = self.stdout
        sys.stderr = self.stderr
        root.addHandler(self._handler)
        if root.level == logging.WARNING:
            root.setLevel(logging.INFO)

    def uninstall(self) -> None:
        if self._saved is None:
            return
        root = logging.getLogger()
        root.removeHandler(self._handler)
        sys.stdout, sys.stderr, level = self._saved
        root.setLevel(level)
        self._saved = None

    def flush_index(self, index: int) -> None:
        self.stdout.flush_index(index)
        self.stderr.flush_index(index)


__all__ = [
    "DEFAULT_CAP_BYTES",
    "PREPARE_INDEX",
    "Capture",
    "LogRouter",
    "RoutingStream",
    "current_step_index",
]
