"""Typed errors of the lock file.

Every way a lock can be unusable surfaces as :class:`LockFileParseError`, so the
orchestrator has one thing to catch (it becomes a ``lock_resolution`` init-failure
run, spec 30 §4). The message names the JSON path of the offending value and
says how to fix it, because the person reading it is a workflow author looking
at a failed run, not at the orchestrator's code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import attrs

FIX_HINT = "Recompile the lock with `kici compile` and push again."

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_SHOWN = 60

PathPart = str | int


def format_path(parts: Sequence[PathPart]) -> str:
    """``workflows[0].jobs[2].runsOn[0].kind``; keys that are not identifiers are quoted."""
    out: list[str] = []
    for part in parts:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _IDENTIFIER.match(part):
            out.append(f".{part}" if out else part)
        else:
            out.append(f"[{json.dumps(part, ensure_ascii=False)}]")
    return "".join(out)


def describe_value(value: Any) -> str:
    """A short JSON-flavoured rendering of a value for "got ..." in messages."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    text = json.dumps(value, ensure_ascii=False) if _is_json_scalar(value) else repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"


def _is_json_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


class LockFileParseError(ValueError):
    """The lock file is not a valid kici lock: bad JSON, wrong version, wrong shape or unsafe content."""

    def __init__(self, path: str, problem: str) -> None:
        where = f"{path}: " if path else ""
        super().__init__(f"Lock file is invalid: {where}{problem}. {FIX_HINT}")
        self.path = path
        self.problem = problem


class LockSchemaVersionError(LockFileParseError):
    """The lock was written for another format version (spec 00 §2.6 D3)."""

    def __init__(self, found: Any, expected: int) -> None:
        ValueError.__init__(
            self,
            f"Lock file schemaVersion {describe_value(found)} is incompatible with this orchestrator "
            f"(engine SCHEMA_VERSION {expected}). {FIX_HINT}",
        )
        self.path = "schemaVersion"
        self.problem = f"unsupported version {describe_value(found)}"
        self.found = found
        self.expected = expected


@attrs.frozen(kw_only=True)
class LockIssue:
    """One semantic problem found by validation; ``path`` uses :func:`format_path` syntax."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message
