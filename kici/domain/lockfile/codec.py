"""Strict JSON codec of the lock file (LOCK-09): one cattrs converter with generated hooks.

Parsing is strict because the orchestrator reads locks from untrusted
repositories and a silently-coerced value would change what runs: bad JSON,
``NaN``, duplicate keys, a missing or foreign ``schemaVersion``, unknown keys,
``null`` where a key should be omitted, wrong JSON types (no ``"1"`` for ``1``)
and unknown ``_type``/``kind`` tags all raise :class:`LockFileParseError` whose
message names the JSON path of the offending value.

Serialization is canonical: ``json.dumps(obj, indent=2, ensure_ascii=False) + "\\n"``
with keys in attrs declaration order and the class tag (``_type``/``kind``) first;
optional keys are written only while they differ from their default (see
:mod:`kici.domain.lockfile.fields`).

Unions are resolved from the JSON shape: first by JSON kind (string, array,
object ...), then among objects by the tag key, then by the first key of an
untagged class (``name`` vs ``group`` for needs, ``team`` vs ``user`` for
approvers, ``run`` vs ``mise`` for init), and finally to a free-form mapping
(a job's ``env`` map versus an inline value). An object carrying the tag key is
always read as tagged, so an ``env`` map cannot define a variable named ``_type``.
"""

from __future__ import annotations

import json
import math
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal, TypeVar, Union, cast, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from kici.domain.lockfile.errors import (
    LockFileParseError,
    LockSchemaVersionError,
    PathPart,
    describe_value,
    format_path,
)
from kici.domain.lockfile.fields import is_omissible, json_key
from kici.domain.lockfile.frozen import FrozenDict, JsonValue, thaw_json
from kici.domain.lockfile.model import (
    SCHEMA_VERSION,
    ExactLabelMatcher,
    LockDynamicJobFn,
    LockDynamicMatrix,
    LockFile,
    LockInlineValue,
    LockJob,
    LockParallelStep,
    LockRule,
    LockStaticMatrix,
    LockStep,
    LockWorkflow,
    RegexLabelMatcher,
)
from kici.domain.lockfile.triggers import TRIGGER_TYPES

T = TypeVar("T")

TAGS: Final[Mapping[type, tuple[str, str]]] = FrozenDict(
    {
        **{cls: ("_type", tag) for tag, cls in TRIGGER_TYPES.items()},
        LockJob: ("_type", "static"),
        LockDynamicJobFn: ("_type", "dynamic"),
        LockStep: ("kind", "sequential"),
        LockParallelStep: ("kind", "parallel"),
        ExactLabelMatcher: ("kind", "exact"),
        RegexLabelMatcher: ("kind", "regex"),
        LockStaticMatrix: ("_type", "static"),
        LockDynamicMatrix: ("_type", "dynamic"),
        LockRule: ("_type", "dynamic"),
        LockInlineValue: ("_type", "inline"),
    }
)
"""The discriminator key and value each tagged class carries in JSON."""

IMPLIED_TAGS: Final = frozenset({LockStep})
"""Classes whose tag is implied when absent and never written (``kind: sequential``)."""

_LEGACY_KEYS: Final[Mapping[type, tuple[str, ...]]] = FrozenDict({LockWorkflow: ("contexts",)})
"""Keys accepted as a list of strings and dropped (read-only legacy, spec 00 §2.2)."""

_MISSING: Final = object()
_ARTICLE: Final = {
    "string": "a string",
    "number": "a number",
    "boolean": "a boolean",
    "array": "an array",
    "object": "an object",
    "null": "null",
}


class _ShapeError(Exception):
    """A leaf problem; ``suffix`` locates it below the value being structured."""

    def __init__(self, problem: str, suffix: tuple[PathPart, ...] = ()) -> None:
        super().__init__(problem)
        self.problem = problem
        self.suffix = suffix


class _Located(Exception):
    """Wraps an error raised while structuring the element ``part`` of an array or mapping."""

    def __init__(self, part: PathPart, cause: BaseException) -> None:
        super().__init__(part)
        self.part = part
        self.cause = cause


def _json_kind(obj: Any) -> str:
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "boolean"
    if isinstance(obj, int | float):
        return "number"
    if isinstance(obj, str):
        return "string"
    if isinstance(obj, list):
        return "array"
    if isinstance(obj, dict):
        return "object"
    return type(obj).__name__


def _mismatch(expected: str, obj: Any) -> _ShapeError:
    return _ShapeError(f"expected {expected}, got {describe_value(obj)}")


def _choices(values: Sequence[Any]) -> str:
    shown = [describe_value(v) for v in values]
    if len(shown) == 1:
        return shown[0]
    if len(shown) == 2:
        return f"{shown[0]} or {shown[1]}"
    return "one of " + ", ".join(shown)


def _is_union(t: Any) -> bool:
    return get_origin(t) is Union or isinstance(t, types.UnionType)


def _is_json_union(t: Any) -> bool:
    return _is_union(t) and {str, int, float, bool} <= set(get_args(t))


def _is_literal(t: Any) -> bool:
    origin: Any = get_origin(t)
    return origin is Literal


def _is_homogeneous_tuple(t: Any) -> bool:
    args = get_args(t)
    return get_origin(t) is tuple and len(args) == 2 and args[1] is Ellipsis


def _is_frozen_dict(t: Any) -> bool:
    return t is FrozenDict or get_origin(t) is FrozenDict


# --- primitives ----------------------------------------------------------------------------------


def _structure_str(obj: Any, _: Any) -> str:
    if type(obj) is str:
        return obj
    raise _mismatch("a string", obj)


def _structure_int(obj: Any, _: Any) -> int:
    if type(obj) is int:
        return obj
    raise _mismatch("an integer", obj)


def _structure_float(obj: Any, _: Any) -> float:
    if type(obj) in (int, float) and math.isfinite(obj):
        return cast(float, obj)
    raise _mismatch("a number", obj)


def _structure_bool(obj: Any, _: Any) -> bool:
    if type(obj) is bool:
        return obj
    raise _mismatch("a boolean", obj)


def _freeze_checked(obj: Any) -> JsonValue:
    """Freeze parsed JSON, refusing anything ``json.loads`` would not produce."""
    if obj is None or type(obj) in (str, bool, int):
        return cast(JsonValue, obj)
    if type(obj) is float:
        if not math.isfinite(obj):
            raise _mismatch("a finite number", obj)
        return obj
    if type(obj) is list:
        items: list[JsonValue] = []
        for index, item in enumerate(obj):
            try:
                items.append(_freeze_checked(item))
            except _ShapeError as exc:
                raise _Located(index, exc) from exc
        return tuple(items)
    if type(obj) is dict:
        entries: dict[str, JsonValue] = {}
        for key, value in obj.items():
            if type(key) is not str:
                raise _mismatch("string keys", key)
            try:
                entries[key] = _freeze_checked(value)
            except _ShapeError as exc:
                raise _Located(key, exc) from exc
        return FrozenDict(entries)
    raise _mismatch("a JSON value", obj)


# --- the converter -------------------------------------------------------------------------------

converter: Final = cattrs.Converter(detailed_validation=True, forbid_extra_keys=True)
"""The one converter of the lock file; other packages embedding lock models may reuse it."""

StructureHook = Callable[[Any, Any], Any]


def _literal_hook(t: Any) -> StructureHook:
    allowed = get_args(t)

    def structure(obj: Any, _: Any) -> Any:
        for value in allowed:
            if type(obj) is type(value) and obj == value:
                return value
        raise _ShapeError(f"expected {_choices(allowed)}, got {describe_value(obj)}")

    return structure


def _tuple_hook(t: Any) -> StructureHook:
    element = get_args(t)[0]
    inner = converter.get_structure_hook(element)

    def structure(obj: Any, _: Any) -> tuple[Any, ...]:
        if type(obj) is not list:
            raise _mismatch("an array", obj)
        out = []
        for index, item in enumerate(obj):
            try:
                out.append(inner(item, element))
            except Exception as exc:
                raise _Located(index, exc) from exc
        return tuple(out)

    return structure


def _frozen_dict_hook(t: Any) -> StructureHook:
    args = get_args(t)
    value_type = args[1] if args else JsonValue
    inner = converter.get_structure_hook(value_type)

    def structure(obj: Any, _: Any) -> FrozenDict[str, Any]:
        if type(obj) is not dict:
            raise _mismatch("an object", obj)
        out = {}
        for key, value in obj.items():
            try:
                out[key] = inner(value, value_type)
            except Exception as exc:
                raise _Located(key, exc) from exc
        return FrozenDict(out)

    return structure


def _json_hook(_t: Any) -> StructureHook:
    return lambda obj, _: _freeze_checked(obj)


def _optional_hook(t: Any) -> StructureHook:
    rest = tuple(a for a in get_args(t) if a is not type(None))
    inner_type: Any = rest[0] if len(rest) == 1 else Union[rest]  # noqa: UP007 (built from a tuple)
    inner = converter.get_structure_hook(inner_type)

    def structure(obj: Any, _: Any) -> Any:
        if obj is None:
            raise _ShapeError("null is not allowed here (omit the key instead)")
        return inner(obj, inner_type)

    return structure


def _type_kind(t: Any) -> str:
    if t is str or (_is_literal(t) and all(type(a) is str for a in get_args(t))):
        return "string"
    if t is bool or (_is_literal(t) and all(type(a) is bool for a in get_args(t))):
        return "boolean"
    if t in (int, float):
        return "number"
    if _is_homogeneous_tuple(t):
        return "array"
    if _is_frozen_dict(t) or attrs.has(t):
        return "object"
    raise TypeError(f"lock codec: no JSON kind for union member {t!r}")


def _object_picker(members: list[Any]) -> Callable[[dict[str, Any]], Any]:
    """How to choose among several object-shaped union members (see module docstring)."""
    tagged = [m for m in members if m in TAGS]
    tag_keys = {TAGS[m][0] for m in tagged}
    if len(tag_keys) > 1:
        raise TypeError(f"lock codec: union members use several tag keys: {members!r}")
    tag_key = next(iter(tag_keys), None)
    by_tag = {TAGS[m][1]: m for m in tagged}
    implied = [m for m in tagged if m in IMPLIED_TAGS]
    keyed = [(json_key(attrs.fields(m)[0]), m) for m in members if attrs.has(m) and m not in TAGS]
    mapping = [m for m in members if _is_frozen_dict(m)]

    def pick(obj: dict[str, Any]) -> Any:
        if tag_key is not None and tag_key in obj:
            value = obj[tag_key]
            if type(value) is str and value in by_tag:
                return by_tag[value]
            raise _ShapeError(f"expected {_choices(list(by_tag))}, got {describe_value(value)}", (tag_key,))
        for key, member in keyed:
            if key in obj:
                return member
        if implied:
            return implied[0]
        if mapping:
            return mapping[0]
        if keyed and not tagged:
            raise _ShapeError(f"expected an object with a {_choices([k for k, _ in keyed])} key")
        raise _ShapeError(f"missing required key {describe_value(tag_key)}")

    return pick


def _union_hook(t: Any) -> StructureHook:
    by_kind: dict[str, list[Any]] = {}
    for member in get_args(t):
        by_kind.setdefault(_type_kind(member), []).append(member)
    hooks = {m: converter.get_structure_hook(m) for ms in by_kind.values() for m in ms}
    pickers = {kind: _object_picker(ms) for kind, ms in by_kind.items() if len(ms) > 1}
    expected = " or ".join(_ARTICLE[k] for k in by_kind)

    def structure(obj: Any, _: Any) -> Any:
        kind = _json_kind(obj)
        members = by_kind.get(kind)
        if members is None:
            raise _mismatch(expected, obj)
        member = pickers[kind](obj) if kind in pickers else members[0]
        return hooks[member](obj, member)

    return structure


def _legacy_string_list(key: str, value: Any) -> None:
    if type(value) is not list or any(type(v) is not str for v in value):
        raise _Located(key, _mismatch("an array of strings", value))


def _class_structure_hook(cls: type[T]) -> StructureHook:
    fields = attrs.fields(cast(Any, cls))
    renames: dict[str, Any] = {a.name: override(rename=json_key(a)) for a in fields}
    generated = make_dict_structure_fn(cls, converter, _cattrs_forbid_extra_keys=True, **renames)
    required = tuple(json_key(a) for a in fields if not is_omissible(a))
    tag = TAGS.get(cls)
    tag_optional = cls in IMPLIED_TAGS
    legacy = _LEGACY_KEYS.get(cls, ())

    def structure(obj: Any, _: Any) -> T:
        if type(obj) is not dict:
            raise _mismatch("an object", obj)
        if tag is not None or legacy:
            obj = dict(obj)
            if tag is not None:
                key, value = tag
                found = obj.pop(key, _MISSING)
                if found is _MISSING:
                    if not tag_optional:
                        raise _ShapeError(f"missing required key {describe_value(key)}")
                elif type(found) is not str or found != value:
                    raise _ShapeError(
                        f"expected {describe_value(value)}, got {describe_value(found)}", (key,)
                    )
            for key in legacy:
                if key in obj:
                    _legacy_string_list(key, obj.pop(key))
        for key in required:
            if key not in obj:
                raise _ShapeError(f"missing required key {describe_value(key)}")
        return generated(obj, cls)

    return structure


converter.register_structure_hook(str, _structure_str)
converter.register_structure_hook(int, _structure_int)
converter.register_structure_hook(float, _structure_float)
converter.register_structure_hook(bool, _structure_bool)
converter.register_structure_hook_factory(attrs.has, _class_structure_hook)
converter.register_structure_hook_factory(_is_literal, _literal_hook)
converter.register_structure_hook_factory(_is_homogeneous_tuple, _tuple_hook)
converter.register_structure_hook_factory(_is_frozen_dict, _frozen_dict_hook)
converter.register_structure_hook_factory(
    lambda t: _is_union(t) and type(None) not in get_args(t), _union_hook
)
converter.register_structure_hook_factory(
    lambda t: _is_union(t) and type(None) in get_args(t), _optional_hook
)
converter.register_structure_hook_factory(_is_json_union, _json_hook)


# --- unstructuring -------------------------------------------------------------------------------

UnstructureHook = Callable[[Any], Any]


def _class_unstructure_hook(cls: type[Any]) -> UnstructureHook:
    renames: dict[str, Any] = {
        a.name: override(rename=json_key(a), omit_if_default=is_omissible(a)) for a in attrs.fields(cls)
    }
    generated = make_dict_unstructure_fn(cls, converter, **renames)
    tag = TAGS.get(cls)
    prefix = {tag[0]: tag[1]} if tag is not None and cls not in IMPLIED_TAGS else {}
    # The generated function writes always-present keys before the optional ones; the
    # spec wants declaration order, so reorder only the classes where that differs.
    flags = [is_omissible(a) for a in attrs.fields(cls)]
    if flags == sorted(flags):
        if not prefix:
            return generated
        return lambda obj: {**prefix, **generated(obj)}
    order = [json_key(a) for a in attrs.fields(cls)]

    def unstructure(obj: Any) -> dict[str, Any]:
        data = generated(obj)
        return {**prefix, **{key: data[key] for key in order if key in data}}

    return unstructure


def _tuple_unstructure_hook(t: Any) -> UnstructureHook:
    args = get_args(t)
    if _is_homogeneous_tuple(t):
        inner = converter.get_unstructure_hook(args[0])
        return lambda obj: [inner(item) for item in obj]
    return lambda obj: [converter.unstructure(item) for item in obj]


def _frozen_dict_unstructure_hook(t: Any) -> UnstructureHook:
    args = get_args(t)
    if args:
        inner = converter.get_unstructure_hook(args[1])
        return lambda obj: {key: inner(value) for key, value in obj.items()}
    return lambda obj: {key: converter.unstructure(value) for key, value in obj.items()}


converter.register_unstructure_hook_factory(attrs.has, _class_unstructure_hook)
converter.register_unstructure_hook_factory(
    lambda t: t is tuple or _is_homogeneous_tuple(t), _tuple_unstructure_hook
)
converter.register_unstructure_hook_factory(_is_frozen_dict, _frozen_dict_unstructure_hook)
converter.register_unstructure_hook_factory(_is_union, lambda _t: converter.unstructure)
converter.register_unstructure_hook_factory(_is_json_union, lambda _t: thaw_json)


# --- errors --------------------------------------------------------------------------------------


def _note_part(exc: BaseException, cls: type | None) -> PathPart | None:
    for note in getattr(exc, "__notes__", ()):
        if isinstance(note, AttributeValidationNote):
            if cls is not None and attrs.has(cls):
                for attribute in attrs.fields(cls):
                    if attribute.name == note.name:
                        return json_key(attribute)
            return note.name
        if isinstance(note, IterableValidationNote):
            return note.index
    return None


def _translate(exc: BaseException) -> LockFileParseError:
    """The JSON path and problem of the first leaf error below ``exc``."""
    parts: list[PathPart] = []
    current: BaseException = exc
    while True:
        if isinstance(current, _Located):
            parts.append(current.part)
            current = current.cause
        elif isinstance(current, ClassValidationError | IterableValidationError):
            sub = current.exceptions[0]
            part = _note_part(sub, current.cl)
            if part is not None:
                parts.append(part)
            current = sub
        elif isinstance(current, ForbiddenExtraKeysError):
            parts.append(sorted(current.extra_fields)[0])
            return LockFileParseError(format_path(parts), "unknown key (not part of lock schema 1)")
        elif isinstance(current, _ShapeError):
            parts.extend(current.suffix)
            return LockFileParseError(format_path(parts), current.problem)
        else:
            return LockFileParseError(format_path(parts), f"{type(current).__name__}: {current}")


# --- public API ----------------------------------------------------------------------------------


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _ShapeError(f"duplicate key {describe_value(key)}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise _ShapeError(f"{name} is not valid JSON")


def load_json(text: str | bytes) -> Any:
    """Parse JSON strictly: no ``NaN``/``Infinity``, no duplicate keys; raises :class:`LockFileParseError`."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise LockFileParseError(
            "", f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from exc
    except _ShapeError as exc:
        raise LockFileParseError("", f"not valid JSON ({exc.problem})") from exc
    except UnicodeDecodeError as exc:
        raise LockFileParseError("", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except (ValueError, RecursionError) as exc:
        raise LockFileParseError("", f"not valid JSON ({exc})") from exc


def check_schema_version(data: Any) -> None:
    """The D3 gate, run before anything else so a foreign lock gets the version message."""
    if type(data) is not dict:
        raise LockFileParseError("", f"expected a JSON object at the top level, got {describe_value(data)}")
    if "schemaVersion" not in data:
        raise LockFileParseError("schemaVersion", "missing (every kici lock declares its schemaVersion)")
    version = data["schemaVersion"]
    if type(version) not in (int, float):
        raise LockFileParseError("schemaVersion", f"expected a number, got {describe_value(version)}")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise LockSchemaVersionError(version, SCHEMA_VERSION)


def from_json(data: Any, cls: type[T]) -> T:
    """Structure plain JSON data into a lock model, strictly; errors name the path inside ``data``."""
    try:
        return converter.structure(data, cls)
    except Exception as exc:
        raise _translate(exc) from exc


def to_json(model: Any) -> Any:
    """Plain JSON data (dicts, lists, scalars) of a lock model, in canonical key order."""
    return converter.unstructure(model)


def parse_lock(text: str | bytes) -> LockFile:
    """Parse ``.kici/kici.lock.json`` strictly (shape only; semantic checks are :func:`validate_lock`)."""
    data = load_json(text)
    check_schema_version(data)
    return from_json(data, LockFile)


def dump_lock(lock: LockFile) -> str:
    """The canonical text of a lock file."""
    return json.dumps(to_json(lock), indent=2, ensure_ascii=False) + "\n"
