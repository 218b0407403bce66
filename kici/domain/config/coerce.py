"""Turning raw layer values (env strings, YAML scalars) into typed leaf values.

Env values are always strings, so every kind has a string form; YAML values arrive typed, and a
YAML string is read like an env string (``port: "4000"`` is what people write when they quote by
habit). Choices where the spec is silent:

* Booleans accept ``true/false``, ``1/0``, ``yes/no``, ``on/off`` in any case; anything else is an
  error rather than KiCI's silent ``!= "true"`` (``KICI_SANDBOX=ture`` must not quietly mean false).
* Enum values match case-insensitively (``KICI_MODE=Independent``).
* Lists from env are comma-separated, items trimmed, empty items dropped; a YAML list must hold
  strings, and a YAML string is split like an env value.
* Mappings from env are a JSON object or ``k=v,k=v``; the map values are strings or integers as the
  leaf declares.
* A YAML number where a string is expected is an error with "quote it" rather than a silent
  ``str()``: ``instance.id: 0123`` would otherwise lose its leading zero.
"""

import json
import math
import re
from collections.abc import Mapping

from kici.domain.config.problems import describe
from kici.domain.config.schema import Constraints, Kind, LeafType, SchemaLeaf, compiled_pattern

_INT = re.compile(r"^[+-]?\d+$")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(\S+)$")


class BadValue(ValueError):
    """A raw value that does not fit its leaf; ``fix`` says what would."""

    def __init__(self, message: str, fix: str = "", *, wrong_type: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.wrong_type = wrong_type


def expected(leaf_type: LeafType) -> str:
    """``an integer``, ``one of platform, hybrid, independent`` ... for messages."""
    if leaf_type.kind is Kind.ENUM:
        return "one of " + ", ".join(leaf_type.choices)
    if leaf_type.kind is Kind.MAP:
        return f"a mapping of names to {'integers' if leaf_type.map_values is Kind.INT else 'strings'}"
    return str(leaf_type.kind.value)


def _wrong(leaf: SchemaLeaf, raw: object, fix: str = "") -> BadValue:
    got = describe(raw, secret=leaf.constraints.secret)
    return BadValue(f"expected {expected(leaf.type)}, got {got}", fix, wrong_type=True)


def _from_text(leaf: SchemaLeaf, text: str) -> object:
    kind = leaf.type.kind
    stripped = text.strip()
    if kind is Kind.STR:
        return text
    if kind is Kind.INT:
        if not _INT.match(stripped):
            raise _wrong(leaf, text)
        return int(stripped)
    if kind is Kind.FLOAT:
        try:
            number = float(stripped)
        except ValueError:
            raise _wrong(leaf, text) from None
        if not math.isfinite(number):
            raise _wrong(leaf, text)
        return number
    if kind is Kind.BOOL:
        word = stripped.lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise _wrong(leaf, text, "Use true or false")
    if kind is Kind.ENUM:
        enum = leaf.type.enum
        if enum is not None and stripped.lower() in leaf.type.choices:
            return enum(stripped.lower())
        raise _wrong(leaf, text)
    if kind is Kind.LIST:
        return tuple(item.strip() for item in text.split(",") if item.strip())
    return _map_from_text(leaf, stripped)


def _map_from_text(leaf: SchemaLeaf, text: str) -> dict[str, object]:
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadValue(f"is not valid JSON ({exc.msg} at column {exc.colno})") from None
        return _map_from_tree(leaf, parsed)
    pairs: dict[str, object] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise BadValue(
                f"expected name=value pairs separated by commas, got {describe(item.strip())}",
                'Write it as a=1,b=2 or as a JSON object such as {"a": "1"}',
            )
        pairs[name.strip()] = _map_value(leaf, value.strip())
    return pairs


def _map_value(leaf: SchemaLeaf, value: object) -> object:
    if leaf.type.map_values is Kind.INT:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _INT.match(value.strip()):
            return int(value.strip())
        raise BadValue(f"expected integer values, got {describe(value)}")
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise BadValue(f"expected string values, got {describe(value)}")


def _map_from_tree(leaf: SchemaLeaf, raw: object) -> dict[str, object]:
    if not isinstance(raw, Mapping):
        raise _wrong(leaf, raw)
    out: dict[str, object] = {}
    for name, value in raw.items():
        if not isinstance(name, str):
            raise BadValue(f"mapping keys must be strings, got {describe(name)}")
        out[name] = _map_value(leaf, value)
    return out


def _from_tree(leaf: SchemaLeaf, raw: object) -> object:
    kind = leaf.type.kind
    if isinstance(raw, str) and kind is not Kind.MAP:
        return _from_text(leaf, raw)
    if kind is Kind.INT and isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if kind is Kind.FLOAT and isinstance(raw, int | float) and not isinstance(raw, bool):
        if not math.isfinite(raw):
            raise _wrong(leaf, raw)
        return float(raw)
    if kind is Kind.BOOL and isinstance(raw, bool):
        return raw
    if kind is Kind.LIST and isinstance(raw, list | tuple):
        if not all(isinstance(item, str) for item in raw):
            raise BadValue("expected a list of strings, got a list with other values", "Quote each item")
        return tuple(raw)
    if kind is Kind.MAP:
        return _map_from_tree(leaf, raw)
    if kind is Kind.STR and isinstance(raw, int | float) and not isinstance(raw, bool):
        raise _wrong(leaf, raw, "Quote the value to make it a string")
    raise _wrong(leaf, raw)


def coerce(leaf: SchemaLeaf, raw: object, *, from_env: bool) -> object:
    """The typed value of ``raw`` for ``leaf``, checked against its constraints, or :class:`BadValue`."""
    if raw is None:
        return None
    value = _from_text(leaf, raw) if from_env and isinstance(raw, str) else _from_tree(leaf, raw)
    check_constraints(leaf, value)
    return value


def _range_text(constraints: Constraints) -> str:
    low, high = constraints.minimum, constraints.maximum
    if low is not None and high is not None:
        return f"from {low:g} to {high:g}"
    if low is not None:
        return f"of at least {low:g}"
    return f"of at most {high:g}"


def check_constraints(leaf: SchemaLeaf, value: object) -> None:
    """Range, pattern, absolute-path and URL-scheme rules of the leaf's :class:`Constraints`."""
    rules = leaf.constraints
    if isinstance(value, int | float) and not isinstance(value, bool):
        too_low = rules.minimum is not None and value < rules.minimum
        too_high = rules.maximum is not None and value > rules.maximum
        if too_low or too_high:
            raise BadValue(f"expected a number {_range_text(rules)}, got {describe(value)}")
    if not isinstance(value, str):
        return
    shown = describe(value, secret=rules.secret)
    pattern = compiled_pattern(rules)
    if pattern is not None and not pattern.search(value):
        raise BadValue(f"expected {rules.pattern_hint}, got {shown}")
    if rules.absolute_path and not value.startswith("/"):
        raise BadValue(f"expected an absolute path, got {shown}", "Start the path with /")
    if rules.url_schemes:
        match = _URL.match(value)
        if match is None or match.group(1).lower() not in rules.url_schemes:
            schemes = " or ".join(f"{s}://" for s in rules.url_schemes)
            raise BadValue(f"expected a URL starting with {schemes} got {shown}", "Write the full URL")
