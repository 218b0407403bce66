"""Typed dispatch and schedule inputs (SDK-12).

``I.string|number|integer|boolean|enum|literal`` build exactly the lock's
``InputDescriptor``, so a schema the lock cannot represent cannot be written.
Modifiers are keyword arguments: ``optional``, ``nullable``, ``default``, ``min``,
``max``, ``pattern``, ``description``. Where the spec is silent:

* ``min``/``max`` bound the value of a number or integer and the *length* of a
  string; ``pattern`` (strings only) is searched, not fully matched, as JSON
  Schema and JavaScript do;
* integers are ``int`` values only (``3.0`` is a number, not an integer), and
  booleans are never numbers;
* on the command line (``--input k=v``) ``null`` means ``None`` for nullable
  non-string inputs; for a string input the text ``null`` is the string, so a
  nullable string can only be null by leaving it out.

:func:`coerce` turns command-line text into a value, :func:`render` is its inverse
(``coerce(d, render(d, v)) == v`` for every valid ``v``), and :func:`apply_defaults`
fills defaults exactly once: applying it again changes nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from kici.sdk.diagnostics import error
from kici.sdk.errors import InputValidationError
from kici.sdk.location import SourceLocation, caller_location

InputType = Literal["string", "number", "integer", "boolean", "enum", "literal"]
INPUT_ERROR = "E216"
_INTEGER_TEXT = re.compile(r"[+-]?\d+")
_NUMBER_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


class _Unset:
    """Marks an absent ``default``/``literal``: ``None`` is a legitimate (null) default."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_scalar(value: object) -> bool:
    return isinstance(value, str | bool) or _is_number(value)


def json_equal(left: object, right: object) -> bool:
    """JSON equality of scalars: ``True`` is not ``1``, ``1`` equals ``1.0``."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if _is_number(left) and _is_number(right):
        return left == right
    return type(left) is type(right) and left == right


def render_scalar(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


@dataclass(frozen=True)
class InputDescriptor:
    type: InputType
    optional: bool = False
    nullable: bool = False
    default: Any = UNSET
    values: tuple[Any, ...] | None = None
    literal: Any = UNSET
    min: float | None = None
    max: float | None = None
    pattern: str | None = None
    description: str | None = None

    @property
    def has_default(self) -> bool:
        return self.default is not UNSET


def problem(descriptor: InputDescriptor, value: object) -> str | None:
    """Why ``value`` does not fit ``descriptor``, or ``None`` when it does."""
    d = descriptor
    if value is None:
        return None if d.nullable else f"expected {d.type}, got null"
    shown = repr(value)
    if d.type == "string":
        if not isinstance(value, str):
            return f"expected string, got {shown}"
        if d.min is not None and len(value) < d.min:
            return f"expected at least {d.min:g} characters, got {shown}"
        if d.max is not None and len(value) > d.max:
            return f"expected at most {d.max:g} characters, got {shown}"
        if d.pattern is not None and re.search(d.pattern, value) is None:
            return f"expected a string matching /{d.pattern}/, got {shown}"
        return None
    if d.type in ("number", "integer"):
        if d.type == "integer" and not (isinstance(value, int) and not isinstance(value, bool)):
            return f"expected integer, got {shown}"
        if not _is_number(value):
            return f"expected number, got {shown}"
        number: float = value  # type: ignore[assignment]  # checked by _is_number
        if d.min is not None and number < d.min:
            return f"expected a value >= {d.min:g}, got {shown}"
        if d.max is not None and number > d.max:
            return f"expected a value <= {d.max:g}, got {shown}"
        return None
    if d.type == "boolean":
        return None if isinstance(value, bool) else f"expected boolean, got {shown}"
    if d.type == "enum":
        allowed = d.values or ()
        if any(json_equal(value, item) for item in allowed):
            return None
        return f"expected one of {', '.join(render_scalar(v) for v in allowed)}, got {shown}"
    return None if json_equal(value, d.literal) else f"expected {render_scalar(d.literal)}, got {shown}"


def _descriptor_problem(d: InputDescriptor) -> str | None:
    # Typed fields, but built from user arguments: check what actually arrived.
    flags: tuple[object, ...] = (d.optional, d.nullable)
    description: object = d.description
    pattern: object = d.pattern
    if not all(isinstance(flag, bool) for flag in flags):
        return "optional and nullable must be True or False"
    if description is not None and not isinstance(description, str):
        return "description must be a string"
    bounded = d.type in ("string", "number", "integer")
    for bound in ("min", "max"):
        limit = getattr(d, bound)
        if limit is None:
            continue
        if not bounded:
            return f"{bound} applies only to string, number and integer inputs"
        if not _is_number(limit):
            return f"{bound} must be a finite number, got {limit!r}"
        if d.type in ("string", "integer") and not (isinstance(limit, int) or float(limit).is_integer()):
            return f"{bound} must be a whole number for {d.type} inputs, got {limit!r}"
        if d.type == "string" and limit < 0:
            return f"{bound} length must be >= 0, got {limit!r}"
    if d.min is not None and d.max is not None and d.min > d.max:
        return f"min ({d.min}) must be <= max ({d.max})"
    if pattern is not None:
        if d.type != "string":
            return "pattern applies only to string inputs"
        if not isinstance(pattern, str):
            return f"pattern must be a string, got {pattern!r}"
        try:
            re.compile(pattern)
        except re.error as exc:
            return f"pattern /{d.pattern}/ is not a valid regex: {exc}"
    if d.type == "enum":
        values = d.values or ()
        if not values:
            return "enum needs at least one value"
        if not all(_is_scalar(v) for v in values):
            return "enum values must be strings, numbers or booleans"
        rendered = [render_scalar(v) for v in values]
        if len(set(rendered)) != len(rendered):
            return "enum values must be distinct on the command line (e.g. not both 1 and '1')"
    if d.type == "literal" and not _is_scalar(d.literal):
        return "literal value must be a string, number or boolean"
    if d.nullable and d.type in ("enum", "literal"):
        options = d.values if d.type == "enum" else (d.literal,)
        if "null" in (render_scalar(v) for v in options or ()):
            return "a nullable input cannot also accept the string 'null'"
    if d.has_default:
        why = problem(d, d.default)
        if why is not None:
            return f"default {d.default!r} does not fit: {why}"
    return None


def _build(location: SourceLocation, type_: InputType, **fields: Any) -> InputDescriptor:
    descriptor = InputDescriptor(type_, **fields)
    why = _descriptor_problem(descriptor)
    if why is not None:
        raise error(INPUT_ERROR, f"I.{type_}(): unsupported input descriptor -- {why}", location)
    return descriptor


class I:  # noqa: E742 - the spec's public name for the input-descriptor namespace
    """Input descriptor constructors: ``I.enum("eu", "us", default="eu")``."""

    @staticmethod
    def string(
        *,
        optional: bool = False,
        nullable: bool = False,
        default: Any = UNSET,
        min: int | None = None,
        max: int | None = None,
        pattern: str | None = None,
        description: str | None = None,
    ) -> InputDescriptor:
        return _build(
            caller_location(),
            "string",
            optional=optional,
            nullable=nullable,
            default=default,
            min=min,
            max=max,
            pattern=pattern,
            description=description,
        )

    @staticmethod
    def number(
        *,
        optional: bool = False,
        nullable: bool = False,
        default: Any = UNSET,
        min: float | None = None,
        max: float | None = None,
        description: str | None = None,
    ) -> InputDescriptor:
        return _build(
            caller_location(),
            "number",
            optional=optional,
            nullable=nullable,
            default=default,
            min=min,
            max=max,
            description=description,
        )

    @staticmethod
    def integer(
        *,
        optional: bool = False,
        nullable: bool = False,
        default: Any = UNSET,
        min: int | None = None,
        max: int | None = None,
        description: str | None = None,
    ) -> InputDescriptor:
        return _build(
            caller_location(),
            "integer",
            optional=optional,
            nullable=nullable,
            default=default,
            min=min,
            max=max,
            description=description,
        )

    @staticmethod
    def boolean(
        *,
        optional: bool = False,
        nullable: bool = False,
        default: Any = UNSET,
        description: str | None = None,
    ) -> InputDescriptor:
        return _build(
            caller_location(),
            "boolean",
            optional=optional,
            nullable=nullable,
            default=default,
            description=description,
        )

    @staticmethod
    def enum(
        *values: Any,
        optional: bool = False,
        nullable: bool = False,
        default: Any = UNSET,
        description: str | None = None,
    ) -> InputDescriptor:
        return _build(
            caller_location(),
            "enum",
            values=values,
            optional=optional,
            nullable=nullable,
            default=default,
            description=description,
        )

    @staticmethod
    def literal(
        value: Any,
        *,
        optional: bool = False,
        nullable: bool = False,
        default: Any = UNSET,
        description: str | None = None,
    ) -> InputDescriptor:
        return _build(
            caller_location(),
            "literal",
            literal=value,
            optional=optional,
            nullable=nullable,
            default=default,
            description=description,
        )


def render(descriptor: InputDescriptor, value: Any) -> str:
    """Command-line text for a valid value (the inverse of :func:`coerce`)."""
    if value is None and descriptor.type == "string":
        raise ValueError("a null string input has no command-line form: leave the input out")
    return render_scalar(value)


def coerce(descriptor: InputDescriptor, text: str, *, name: str = "value") -> Any:
    """The typed value of command-line text; raises ``InputValidationError`` naming the input."""
    d = descriptor
    if d.nullable and text == "null" and d.type != "string":
        return None
    value: Any
    if d.type == "string":
        value = text
    elif d.type == "integer":
        if _INTEGER_TEXT.fullmatch(text.strip()) is None:
            raise InputValidationError(name, f"expected integer, got {text!r}")
        value = int(text)
    elif d.type == "number":
        stripped = text.strip()
        if _INTEGER_TEXT.fullmatch(stripped) is not None:
            value = int(stripped)
        elif _NUMBER_TEXT.fullmatch(stripped) is not None and math.isfinite(float(stripped)):
            value = float(stripped)
        else:
            raise InputValidationError(name, f"expected number, got {text!r}")
    elif d.type == "boolean":
        word = text.strip().lower()
        if word not in _TRUE | _FALSE:
            raise InputValidationError(name, f"expected boolean (true/false/1/0/yes/no), got {text!r}")
        value = word in _TRUE
    else:
        options = d.values if d.type == "enum" else (d.literal,)
        matches = [v for v in options or () if render_scalar(v) == text]
        if not matches:
            raise InputValidationError(name, problem(d, text) or f"unexpected value {text!r}")
        value = matches[0]
    why = problem(d, value)
    if why is not None:
        raise InputValidationError(name, why)
    return value


def apply_defaults(fields: Mapping[str, InputDescriptor], values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` plus the default of every absent input that has one; idempotent."""
    merged = dict(values)
    for key, descriptor in fields.items():
        if key not in merged and descriptor.has_default:
            merged[key] = descriptor.default
    return merged


def validate_inputs(fields: Mapping[str, InputDescriptor], values: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults applied, required inputs present, every value fitting its descriptor."""
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise InputValidationError(unknown[0], f"unknown input (declared: {', '.join(fields) or 'none'})")
    merged = apply_defaults(fields, values)
    for key, descriptor in fields.items():
        if key not in merged:
            if not descriptor.optional:
                raise InputValidationError(key, "is required")
            continue
        why = problem(descriptor, merged[key])
        if why is not None:
            raise InputValidationError(key, why)
    return merged


class InputsView(Mapping[str, Any]):
    """``handle.read(ctx)``: declared inputs by attribute; an absent optional input reads as ``None``."""

    __slots__ = ("_fields", "_values")

    def __init__(self, fields: Mapping[str, InputDescriptor], values: Mapping[str, Any]) -> None:
        self._fields = fields
        self._values = values

    def __getitem__(self, key: str) -> Any:
        if key not in self._fields:
            raise KeyError(key)
        return self._values.get(key)

    def __iter__(self) -> Any:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name not in self._fields:
            raise AttributeError(f"no input named '{name}' (declared: {', '.join(self._fields)})")
        return self._values.get(name)


@dataclass(frozen=True, eq=False)
class DispatchInputs:
    """A reusable set of input descriptors (``define_dispatch_inputs``)."""

    fields: Mapping[str, InputDescriptor]
    location: SourceLocation = field(default_factory=caller_location, repr=False)

    def read(self, ctx: Any) -> InputsView:
        return InputsView(self.fields, getattr(ctx, "dispatch_inputs", None) or {})


def _check_fields(fields: Mapping[str, Any], location: SourceLocation) -> dict[str, InputDescriptor]:
    for key, descriptor in fields.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise error(INPUT_ERROR, f"input names must be identifiers, got {key!r}", location)
        if not isinstance(descriptor, InputDescriptor):
            raise error(
                INPUT_ERROR,
                f"input '{key}': unsupported input descriptor -- use I.string(), I.enum(...), ...",
                location,
            )
    return dict(fields)


def define_dispatch_inputs(**fields: InputDescriptor) -> DispatchInputs:
    location = caller_location()
    return DispatchInputs(_check_fields(fields, location), location=location)


def as_inputs(value: object, location: SourceLocation) -> DispatchInputs | None:
    """A handle, or a bare ``{name: I.…}`` dict wherever a handle is accepted."""
    if value is None or isinstance(value, DispatchInputs):
        return value
    if isinstance(value, dict):
        return DispatchInputs(_check_fields(value, location), location=location)
    raise error(
        INPUT_ERROR,
        f"inputs must be define_dispatch_inputs(...) or a dict of I.* descriptors, got {value!r}",
        location,
    )
