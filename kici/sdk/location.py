"""Where a workflow object was created, so errors point at the user's ``job()``/``step()`` line.

The frame walk skips every frame whose module is ``kici.sdk`` or below it, so a factory
that delegates to another SDK helper (or a dataclass ``__init__`` generated in an SDK
module) still reports the author's call. Columns come from the code object's position
table (PEP 657), which is exact for calls spanning several lines; without position
information (``-X no_debug_ranges``) the column falls back to 1.
"""

from __future__ import annotations

import itertools
import linecache
import sys
from dataclasses import dataclass
from types import FrameType

_SDK_PACKAGE = "kici.sdk"


@dataclass(frozen=True)
class SourceLocation:
    """A 1-based ``file:line:column`` of the call that created an object."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


UNKNOWN_LOCATION = SourceLocation("<unknown>", 0, 0)


def _in_sdk(frame: FrameType) -> bool:
    module = frame.f_globals.get("__name__", "")
    return isinstance(module, str) and (module == _SDK_PACKAGE or module.startswith(_SDK_PACKAGE + "."))


def _user_frame() -> FrameType | None:
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and _in_sdk(frame):
        frame = frame.f_back
    return frame


def _position(frame: FrameType) -> tuple[int, int]:
    # One entry per 2-byte code unit; f_lasti is the byte offset of the call being made.
    found = next(itertools.islice(frame.f_code.co_positions(), frame.f_lasti // 2, None), None)
    if found is None:
        return frame.f_lineno, 1
    line, _end_line, column, _end_column = found
    return (line if line is not None else frame.f_lineno, column + 1 if column is not None else 1)


def caller_location() -> SourceLocation:
    """The location of the nearest call made from outside ``kici.sdk``."""
    frame = _user_frame()
    if frame is None:
        return UNKNOWN_LOCATION
    line, column = _position(frame)
    return SourceLocation(frame.f_code.co_filename, line, column)


def is_decorator_site(location: SourceLocation) -> bool:
    """Whether the call at ``location`` is a bare decorator (``@step`` above a ``def``).

    CPython positions a decorator application at the decorator expression, so the
    source text just before it is ``@``. Without source text (``exec`` of a string)
    the call counts as an ordinary one: naming then stays the same in every process
    that loads the same file, which is what the compiler and the runner rely on.
    """
    text = linecache.getline(location.file, location.line)
    if not text:
        return False
    return text[: max(location.column - 1, 0)].rstrip().endswith("@")
