"""The JSONPath subset of event filters (EVT-15) and the expectation rule of ``match``/``not``.

Supported: ``$`` (root), ``.name``, ``['name']`` / ``["name"]``, ``[n]`` (negative
counts from the end), ``[*]`` and ``.*`` (every child), and ``..`` followed by a
name, ``*`` or a bracket (that selector applied to the node and all its
descendants, in document order). Anything else is a :class:`JsonPathError`:
a filter the matcher cannot read must not silently match.

Where the spec is silent: a path without the leading ``$`` is read as if it had
one (``mode`` ≡ ``$.mode``), as users of the reference system write both.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeAlias, TypeGuard

from kici.domain.regex import regex_search

Selector: TypeAlias = str | int | None
"""A key (``str``), an index (``int``) or every child (``None``)."""
Segment: TypeAlias = tuple[bool, Selector]
"""``(descendants, selector)``: ``descendants`` is true after ``..``."""

_NAME = re.compile(r"[^.\[\]\s'\"*]+")
_INDEX = re.compile(r"-?\d+")
_REGEX_EXPECTATION = re.compile(r"/(.*)/([a-z]*)", re.DOTALL)


class JsonPathError(ValueError):
    """The expression is outside the supported subset."""

    def __init__(self, path: str, position: int, reason: str) -> None:
        super().__init__(f"JSONPath {path!r} at position {position}: {reason}")
        self.path = path
        self.position = position


def _quoted(path: str, start: int) -> tuple[str, int]:
    quote = path[start]
    out: list[str] = []
    i = start + 1
    while i < len(path):
        ch = path[i]
        if ch == "\\" and i + 1 < len(path):
            out.append(path[i + 1])
            i += 2
        elif ch == quote:
            return "".join(out), i + 1
        else:
            out.append(ch)
            i += 1
    raise JsonPathError(path, start, "unterminated quoted name")


def _bracket(path: str, start: int) -> tuple[Selector, int]:
    i = start + 1
    if i < len(path) and path[i] in "'\"":
        name, i = _quoted(path, i)
        selector: Selector = name
    elif path.startswith("*", i):
        selector, i = None, i + 1
    else:
        found = _INDEX.match(path, i)
        if found is None:
            raise JsonPathError(path, i, "expected a quoted name, an index or * inside []")
        selector, i = int(found.group()), found.end()
    if not path.startswith("]", i):
        raise JsonPathError(path, i, "expected ]")
    return selector, i + 1


def _dotted(path: str, start: int) -> tuple[Selector, int]:
    if path.startswith("*", start):
        return None, start + 1
    found = _NAME.match(path, start)
    if found is None:
        raise JsonPathError(path, start, "expected a name or * after .")
    return found.group(), found.end()


@functools.lru_cache(maxsize=1024)
def parse_path(path: str) -> tuple[Segment, ...]:
    """The segments of ``path``; raises :class:`JsonPathError`."""
    text = path if path.startswith("$") else ("$" if path.startswith("[") else "$.") + path
    segments: list[Segment] = []
    i = 1
    while i < len(text):
        if text.startswith("..", i):
            if text.startswith("[", i + 2):
                selector, i = _bracket(text, i + 2)
            else:
                selector, i = _dotted(text, i + 2)
            segments.append((True, selector))
        elif text[i] == ".":
            selector, i = _dotted(text, i + 1)
            segments.append((False, selector))
        elif text[i] == "[":
            selector, i = _bracket(text, i)
            segments.append((False, selector))
        else:
            raise JsonPathError(path, i, f"unexpected {text[i]!r}")
    return tuple(segments)


def _is_array(value: object) -> TypeGuard[Sequence[Any]]:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _children(node: Any) -> list[Any]:
    if isinstance(node, Mapping):
        return list(node.values())
    if _is_array(node):
        return list(node)
    return []


def _select(node: Any, selector: Selector) -> Iterator[Any]:
    if selector is None:
        yield from _children(node)
    elif isinstance(selector, str):
        if isinstance(node, Mapping) and selector in node:
            yield node[selector]
    elif _is_array(node) and -len(node) <= selector < len(node):
        yield node[selector]


def _descendants(node: Any) -> Iterator[Any]:
    yield node
    for child in _children(node):
        yield from _descendants(child)


def find(path: str, document: Any) -> list[Any]:
    """Every value ``path`` selects in ``document``, in document order (empty when nothing matches)."""
    nodes = [document]
    for descend, selector in parse_path(path):
        sources = [d for n in nodes for d in _descendants(n)] if descend else nodes
        nodes = [found for n in sources for found in _select(n, selector)]
    return nodes


def json_equal(left: object, right: object) -> bool:
    """Equality of JSON values: booleans never equal numbers, ``1 == 1.0``, ``"1"`` is not ``1``."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    if isinstance(left, str) or isinstance(right, str):
        return isinstance(left, str) and isinstance(right, str) and left == right
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(json_equal(left[k], right[k]) for k in left)
    if _is_array(left) and _is_array(right):
        return len(left) == len(right) and all(json_equal(a, b) for a, b in zip(left, right, strict=True))
    return left is None and right is None


def regex_expectation(expected: object) -> tuple[str, str] | None:
    """``(source, flags)`` when ``expected`` is a ``/source/flags`` string, else ``None``."""
    if not isinstance(expected, str):
        return None
    found = _REGEX_EXPECTATION.fullmatch(expected)
    return None if found is None else (found.group(1), found.group(2))


def value_matches(expected: object, value: object) -> bool:
    """The expectation rule: list -> membership, ``/re/flags`` -> regex search, else JSON equality.

    A regex only ever matches string values; an unsafe or invalid regex raises
    :class:`kici.domain.regex.UnsafeRegexError` so the caller can report it.
    """
    if _is_array(expected):
        return any(json_equal(item, value) for item in expected)
    regex = regex_expectation(expected)
    if regex is not None:
        return isinstance(value, str) and regex_search(regex[0], regex[1], value)
    return json_equal(expected, value)


def path_matches(path: str, expected: object, document: Any) -> bool:
    """Some value at ``path`` meets ``expected``; a path selecting nothing never matches."""
    return any(value_matches(expected, value) for value in find(path, document))
