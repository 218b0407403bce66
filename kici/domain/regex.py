"""User-supplied regular expressions: the lock file's JS-style flags and the ReDoS gate.

Workflows may target labels and branches with regexes. The lock file stores them
as ``{source, flags}`` with JavaScript flag letters; the orchestrator compiles them
from untrusted repositories, so every regex passes :func:`assert_safe_regex` at
compile time and again when a lock file is loaded.
"""

from __future__ import annotations

import functools
import re
import re._parser as _sre  # type: ignore[import-not-found]  # no public parse-tree API
from typing import Any

_FLAG_BITS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}
_IGNORED_FLAGS = frozenset("guy")
MAX_REPEATS = 25

_REPEATS = (_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT)


class UnsafeRegexError(ValueError):
    """The regex is invalid, uses an unsupported flag, or risks catastrophic backtracking."""

    def __init__(self, source: str, flags: str, reason: str) -> None:
        super().__init__(f"regex /{source}/{flags} is rejected: {reason}")
        self.source = source
        self.flags = flags
        self.reason = reason


def python_flags(source: str, flags: str) -> int:
    """``re`` flag bits for JS flag letters (``i m s``; ``g u y`` carry no meaning here)."""
    bits = 0
    for letter in flags:
        if letter in _FLAG_BITS:
            bits |= _FLAG_BITS[letter]
        elif letter not in _IGNORED_FLAGS:
            raise UnsafeRegexError(source, flags, f"unsupported flag {letter!r} (allowed: i, m, s, u, g, y)")
    return bits


def _walk(items: Any, depth: int, counter: list[int]) -> int:
    """Deepest nesting of unbounded repeats below ``items``; counts repeat operators."""
    deepest = depth
    for op, arg in items:
        if op in _REPEATS:
            counter[0] += 1
            _low, high, sub = arg
            unbounded = high is _sre.MAXREPEAT or high > 1
            deepest = max(deepest, _walk(sub, depth + (1 if unbounded else 0), counter))
        elif op is _sre.SUBPATTERN:
            deepest = max(deepest, _walk(arg[-1], depth, counter))
        elif op is _sre.ATOMIC_GROUP:
            deepest = max(deepest, _walk(arg, depth, counter))
        elif op is _sre.BRANCH:
            for branch in arg[1]:
                deepest = max(deepest, _walk(branch, depth, counter))
        elif op in (_sre.ASSERT, _sre.ASSERT_NOT):
            deepest = max(deepest, _walk(arg[1], depth, counter))
        elif op is _sre.GROUPREF_EXISTS:
            for part in arg[1:]:
                if part is not None:
                    deepest = max(deepest, _walk(part, depth, counter))
    return deepest


def assert_safe_regex(source: str, flags: str = "") -> None:
    """Reject regexes with star height > 1 or more than 25 repeat operators.

    Star height counts repeats whose maximum exceeds one nested inside each
    other: ``(a+)+``, ``(a*)*`` and ``(.*a)*`` are rejected, ``a+b*`` is fine.
    """
    bits = python_flags(source, flags)
    try:
        tree = _sre.parse(source, bits)
    except re.error as exc:
        raise UnsafeRegexError(source, flags, f"invalid regex: {exc}") from exc
    counter = [0]
    height = _walk(tree, 0, counter)
    if height > 1:
        raise UnsafeRegexError(source, flags, "ReDoS-prone (nested unbounded repetition)")
    if counter[0] > MAX_REPEATS:
        raise UnsafeRegexError(source, flags, f"too many repeat operators ({counter[0]} > {MAX_REPEATS})")


@functools.lru_cache(maxsize=4096)
def compile_user_regex(source: str, flags: str = "") -> re.Pattern[str]:
    """Compile a workflow regex after the safety gate; raises :class:`UnsafeRegexError`."""
    assert_safe_regex(source, flags)
    return re.compile(source, python_flags(source, flags))


def regex_search(source: str, flags: str, value: str) -> bool:
    """JS ``RegExp.test`` semantics: an unanchored search."""
    return compile_user_regex(source, flags).search(value) is not None
