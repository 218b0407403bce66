"""Step outputs in the runner (EXE-22, SDK-32): validating return values and answering ``.result``.

A step returns a mapping, a dataclass / attrs instance, or ``None`` (a ``ShellResult`` counts as
``None`` so ``lambda ctx: ctx.sh(...)`` is a valid step). Other types fail the step (10 §10). With an
``outputs`` schema the value must fit it: every declared field present, no undeclared field, values of the
declared types (checked structurally — ``list[str]``, ``int | None``, nested dataclasses — without cattrs,
which the runner may not import). Outputs must be JSON: they travel to later steps, the parent and
downstream jobs, and a value that does not survive ``json`` would read differently there (P-OUT1).
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from kici.sdk.context import NeedInfo, ShellResult
from kici.sdk.errors import OutputsNotReady, OutputValidationError

MAX_OUTPUT_BYTES = 8 * 1024 * 1024


def _is_attrs_instance_or_class(value: object) -> bool:
    return hasattr(value, "__attrs_attrs__")


def _instance_fields(value: object) -> dict[str, Any]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return {a.name: getattr(value, a.name) for a in value.__attrs_attrs__}  # type: ignore[attr-defined]


def _plain(value: Any, where: str) -> Any:
    """A JSON-shaped copy; dataclass/attrs values become dicts, tuples lists."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value} is not valid JSON")
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: keys must be strings, got {key!r}")  # noqa: TRY004 - reported as data
            out[key] = _plain(item, f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if (dataclasses.is_dataclass(value) and not isinstance(value, type)) or (
        _is_attrs_instance_or_class(value) and not isinstance(value, type)
    ):
        return _plain(_instance_fields(value), where)
    raise ValueError(f"{where}: {type(value).__name__} is not JSON-serializable")


def _schema_fields(schema: Any) -> dict[str, Any] | None:
    """Field name -> type hint (``Any`` when unknown), or ``None`` for no schema."""
    if schema is None:
        return None
    if isinstance(schema, Mapping):
        return dict(schema)
    try:
        hints = typing.get_type_hints(schema)
    except Exception:
        hints = {}
    if dataclasses.is_dataclass(schema):
        return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(schema)}
    if _is_attrs_instance_or_class(schema):
        return {
            a.name: hints.get(a.name, a.type if a.type is not None else Any) for a in schema.__attrs_attrs__
        }
    return None


def _type_error(value: Any, hint: Any, where: str) -> str | None:
    """Why ``value`` does not fit ``hint`` (``None`` when it does)."""
    if hint is Any or hint is object or isinstance(hint, str | typing.TypeVar):
        return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if any(_type_error(value, arg, where) is None for arg in args):
            return None
        return f"{where}: expected {hint}, got {type(value).__name__}"
    if origin is typing.Literal:
        return None if value in args else f"{where}: expected one of {args!r}, got {value!r}"
    if origin in (list, Sequence, tuple, set, frozenset):
        if not isinstance(value, list):
            return f"{where}: expected a list, got {type(value).__name__}"
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                return f"{where}: expected {len(args)} items, got {len(value)}"
            errors = (
                _type_error(v, h, f"{where}[{i}]") for i, (v, h) in enumerate(zip(value, args, strict=True))
            )
        else:
            item_hint = args[0] if args else Any
            errors = (_type_error(v, item_hint, f"{where}[{i}]") for i, v in enumerate(value))
        return next((e for e in errors if e), None)
    if origin in (dict, Mapping):
        if not isinstance(value, dict):
            return f"{where}: expected an object, got {type(value).__name__}"
        value_hint = args[1] if len(args) == 2 else Any
        errors = (_type_error(v, value_hint, f"{where}.{k}") for k, v in value.items())
        return next((e for e in errors if e), None)
    if origin is not None:
        return None
    if hint is None or hint is type(None):
        return None if value is None else f"{where}: expected None, got {type(value).__name__}"
    if not isinstance(hint, type):
        return None
    nested = _schema_fields(hint)
    if nested is not None and hint not in (dict, list):
        if not isinstance(value, dict):
            return f"{where}: expected {hint.__name__}, got {type(value).__name__}"
        return _fields_error(value, nested, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return None
    if hint in (list, tuple):
        return None if isinstance(value, list) else f"{where}: expected a list, got {type(value).__name__}"
    if hint is dict:
        return None if isinstance(value, dict) else f"{where}: expected an object, got {type(value).__name__}"
    if isinstance(value, bool) and hint is not bool:
        return f"{where}: expected {hint.__name__}, got bool"
    if not isinstance(value, hint):
        return f"{where}: expected {hint.__name__}, got {type(value).__name__}"
    return None


def _fields_error(data: Mapping[str, Any], fields: Mapping[str, Any], where: str) -> str | None:
    missing = [name for name in fields if name not in data]
    if missing:
        return f"{where}: missing field(s) {', '.join(missing)}"
    extra = [name for name in data if name not in fields]
    if extra:
        return f"{where}: undeclared field(s) {', '.join(extra)}"
    errors = (_type_error(data[name], hint, f"{where}.{name}") for name, hint in fields.items())
    return next((e for e in errors if e), None)


def normalize_outputs(value: Any, schema: Any, step_name: str) -> dict[str, Any] | None:
    """The JSON outputs of a step's return value, or ``OutputValidationError``."""
    if isinstance(value, ShellResult):
        value = None
    fields = _schema_fields(schema)
    if value is None:
        if fields:
            raise OutputValidationError(step_name, f"returned None but declares outputs {', '.join(fields)}")
        return None
    if isinstance(schema, type) and isinstance(value, Mapping) and not isinstance(schema, Mapping):
        try:
            value = schema(**value)
        except Exception as exc:
            raise OutputValidationError(step_name, f"does not fit {schema.__name__}: {exc}") from None
    if not isinstance(value, Mapping) and not (
        (dataclasses.is_dataclass(value) or _is_attrs_instance_or_class(value))
        and not isinstance(value, type)
    ):
        raise OutputValidationError(
            step_name, f"must return a dict, a dataclass/attrs instance or None, got {type(value).__name__}"
        )
    try:
        data = _plain(value, "outputs")
    except ValueError as exc:
        raise OutputValidationError(step_name, str(exc)) from None
    if fields is not None:
        problem = _fields_error(data, fields, "outputs")
        if problem:
            raise OutputValidationError(step_name, problem)
    size = len(json.dumps(data, ensure_ascii=False))
    if size > MAX_OUTPUT_BYTES:
        raise OutputValidationError(step_name, f"outputs are {size} bytes (max {MAX_OUTPUT_BYTES})")
    result: dict[str, Any] = data
    return result


def child_base(name: str) -> str:
    """``test (linux, 18)`` -> ``test``: fan-out children share their base job's name."""
    if name.endswith(")") and " (" in name:
        return name[: name.index(" (")]
    return name


def child_suffix(name: str) -> str:
    return name[name.index(" (") + 2 : -1] if name.endswith(")") and " (" in name else name


@dataclasses.dataclass(frozen=True)
class MatrixJobOutputs:
    """A fan-out upstream: outputs per child suffix, plus ``merged`` (last write wins in child-name order)."""

    by_matrix: Mapping[str, Any]
    merged: Mapping[str, Any]


def build_needs(outputs: Mapping[str, Any], statuses: Mapping[str, str]) -> dict[str, Any]:
    """``ctx.needs``: ``NeedInfo`` per upstream, an ordered list of them for a fan-out upstream."""
    by_base: dict[str, list[str]] = {}
    for name in sorted(set(outputs) | set(statuses)):
        by_base.setdefault(child_base(name), []).append(name)
    needs: dict[str, Any] = {}
    for base, names in by_base.items():
        infos = [NeedInfo(outputs.get(n) or {}, statuses.get(n, "success"), n) for n in names]
        if names == [base]:
            needs[base] = infos[0]
        else:
            needs[base] = infos
            for info in infos:
                needs[info.name] = info
    return needs


class OutputStore:
    """The job's outputs: this job's steps by name, upstream jobs by name. The ``.result`` source."""

    def __init__(
        self,
        upstream: Mapping[str, Any],
        step_names: Mapping[int, str],
        job_names: Mapping[int, str],
        functions: Mapping[int, str],
    ) -> None:
        self._lock = threading.Lock()
        self._steps: dict[str, dict[str, Any]] = {}
        self._upstream = dict(upstream)
        self._step_names = step_names
        self._job_names = job_names
        self._functions = functions

    def record(self, step_name: str, outputs: Mapping[str, Any] | None) -> None:
        with self._lock:
            self._steps[step_name] = dict(outputs or {})

    def all(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: dict(values) for name, values in self._steps.items()}

    def _step_name(self, step_or_fn: Any) -> str:
        if isinstance(step_or_fn, str):
            return step_or_fn
        name = self._step_names.get(id(step_or_fn)) or self._functions.get(id(step_or_fn))
        if name is None:
            label = getattr(step_or_fn, "name", None) or getattr(step_or_fn, "__name__", repr(step_or_fn))
            raise OutputsNotReady(str(label), f"Step '{label}' is not a step of this job")
        return name

    def outputs_of(self, step_or_fn: Any) -> Mapping[str, Any]:
        name = self._step_name(step_or_fn)
        with self._lock:
            if name not in self._steps:
                raise OutputsNotReady(name)
            return dict(self._steps[name])

    def job_outputs(self, job: Any) -> Any:
        name = job if isinstance(job, str) else self._job_names.get(id(job), getattr(job, "name", None))
        if name is None:
            raise OutputsNotReady(str(job), "Job has no name known to this workflow")
        if name in self._upstream:
            return self._upstream[name]
        children = sorted(key for key in self._upstream if child_base(key) == name and key != name)
        if not children:
            raise OutputsNotReady(name, f"Job '{name}' has no outputs here (is it listed in needs?)")
        merged: dict[str, Any] = {}
        for child in children:
            for step, values in (self._upstream[child] or {}).items():
                merged.setdefault(step, {}).update(values or {})
        return MatrixJobOutputs({child_suffix(c): self._upstream[c] for c in children}, merged)


__all__ = [
    "MAX_OUTPUT_BYTES",
    "MatrixJobOutputs",
    "OutputStore",
    "build_needs",
    "child_base",
    "normalize_outputs",
]
