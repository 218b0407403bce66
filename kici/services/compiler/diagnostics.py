"""Compile diagnostics: the ``file:line:col: error [CODE]: message`` lines of ``kici compile`` (00 §4).

A diagnostic crosses the process boundary between the compiler child and the
parent as a plain JSON object, so it carries its own tiny codec instead of the
lock converter: the parent must be able to read whatever an older or crashed
child managed to print, and a malformed entry becomes one more diagnostic
rather than an exception.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal

import attrs

Severity = Literal["error", "warning"]

SEVERITIES: Final = ("error", "warning")


@attrs.frozen(kw_only=True)
class Diagnostic:
    """One problem found while compiling; ``file`` is repo-relative when the file is inside the repo.

    ``line``/``column`` are 1-based. A diagnostic about a whole file (an import
    error without a usable frame, a file exporting nothing) points at ``1:1``;
    one about no file at all (no workflows directory) has ``file=None``.
    """

    code: str
    severity: Severity
    message: str
    file: str | None = None
    line: int | None = None
    column: int | None = None
    suggestion: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def where(self) -> str:
        if self.file is None:
            return ""
        return f"{self.file}:{self.line or 1}:{self.column or 1}: "

    def format(self) -> str:
        text = f"{self.where()}{self.severity} [{self.code}]: {self.message}"
        if self.suggestion:
            text += f"\n  Suggestion: {self.suggestion}"
        return text

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"code": self.code, "severity": self.severity, "message": self.message}
        for key in ("file", "line", "column", "suggestion"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Diagnostic:
        """Read a child's diagnostic; raises :class:`ValueError`/:class:`TypeError` on anything malformed."""
        if not isinstance(data, Mapping):
            raise TypeError("diagnostic is not an object")
        code, severity, message = data.get("code"), data.get("severity"), data.get("message")
        if not isinstance(code, str) or not isinstance(message, str) or severity not in SEVERITIES:
            raise ValueError(f"malformed diagnostic: {dict(data)!r}")
        file, suggestion = data.get("file"), data.get("suggestion")
        line, column = data.get("line"), data.get("column")
        if file is not None and not isinstance(file, str):
            raise ValueError(f"malformed diagnostic file: {file!r}")
        if suggestion is not None and not isinstance(suggestion, str):
            raise ValueError(f"malformed diagnostic suggestion: {suggestion!r}")
        for number in (line, column):
            if number is not None and (type(number) is not int or number < 1):
                raise ValueError(f"malformed diagnostic position: {number!r}")
        return cls(
            code=code,
            severity=severity,
            message=message,
            file=file,
            line=line,
            column=column,
            suggestion=suggestion,
        )


def error(
    code: str,
    message: str,
    *,
    file: str | None = None,
    line: int | None = None,
    column: int | None = None,
    suggestion: str | None = None,
) -> Diagnostic:
    return Diagnostic(
        code=code,
        severity="error",
        message=message,
        file=file,
        line=line,
        column=column,
        suggestion=suggestion,
    )


def warning(
    code: str,
    message: str,
    *,
    file: str | None = None,
    line: int | None = None,
    column: int | None = None,
    suggestion: str | None = None,
) -> Diagnostic:
    return Diagnostic(
        code=code,
        severity="warning",
        message=message,
        file=file,
        line=line,
        column=column,
        suggestion=suggestion,
    )


def has_errors(diagnostics: Iterable[Diagnostic]) -> bool:
    return any(d.is_error for d in diagnostics)


def format_all(diagnostics: Sequence[Diagnostic]) -> str:
    """Every diagnostic, errors first (each group in discovery order), one block per diagnostic."""
    ordered = [d for d in diagnostics if d.is_error] + [d for d in diagnostics if not d.is_error]
    return "\n".join(d.format() for d in ordered)


__all__ = [
    "SEVERITIES",
    "Diagnostic",
    "Severity",
    "error",
    "format_all",
    "has_errors",
    "warning",
]
