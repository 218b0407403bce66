"""Outputs (SDK-32, 10 §10): output schemas and the lazy ``.result`` proxies.

``step.result.version`` and ``job.result.build.version`` are written at module level
but read while a job runs, so a proxy holds only a reference to its step or job and
looks the value up on every access in the *output source* bound to the current
context (a ``contextvars.ContextVar``, the Python stand-in for AsyncLocalStorage).
The runner binds one source per job with :func:`outputs_bound`; sync steps run in
worker threads with a copy of the context, so the binding must happen in the task
that starts them. The source answers two questions, exactly the ``outputs_of`` and
``job_outputs`` members of the runner's ``StepRuntime``:

* ``outputs_of(step_or_fn)`` -> the step's outputs mapping, or raises
  ``OutputsNotReady`` when the step has not finished;
* ``job_outputs(job)`` -> the upstream job's raw ``{step name: outputs}`` mapping, or
  an object with a ``merged`` mapping for a fan-out upstream.

A ``run=`` job has a single step, so its ``.result`` is flattened to that step's
outputs (``job.result.field``); the proxy does the flattening, the source never does.
Reading ``.result`` never adds a ``needs`` edge.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

from kici.sdk.diagnostics import error
from kici.sdk.errors import OutputsNotReady
from kici.sdk.location import SourceLocation

OUTPUTS_SCHEMA_ERROR = "E219"


class OutputSource(Protocol):
    def outputs_of(self, step_or_fn: Any) -> Mapping[str, Any]: ...

    def job_outputs(self, job: Any) -> Any: ...


_SOURCE: ContextVar[OutputSource | None] = ContextVar("kici_output_source", default=None)


@contextmanager
def outputs_bound(source: OutputSource) -> Iterator[None]:
    """Make ``.result`` proxies read ``source`` within this context."""
    token = _SOURCE.set(source)
    try:
        yield
    finally:
        _SOURCE.reset(token)


def _is_attrs_class(value: object) -> bool:
    return isinstance(value, type) and hasattr(value, "__attrs_attrs__")


def _is_type_hint(value: object) -> bool:
    return isinstance(value, type) or value is Any or typing.get_origin(value) is not None


def check_outputs_schema(
    schema: object, owner: str, location: SourceLocation, what: str = "outputs"
) -> object:
    """An attrs class, a dataclass, or a dict of field name to type (PY+ E219)."""
    if schema is None or _is_attrs_class(schema):
        return schema
    if isinstance(schema, type) and dataclasses.is_dataclass(schema):
        return schema
    if isinstance(schema, dict):
        for key, hint in schema.items():
            if not isinstance(key, str) or not key:
                raise error(
                    OUTPUTS_SCHEMA_ERROR,
                    f"{owner}: {what} field names must be non-empty strings, got {key!r}",
                    location,
                )
            if not _is_type_hint(hint):
                raise error(
                    OUTPUTS_SCHEMA_ERROR,
                    f"{owner}: {what} field '{key}' must map to a type such as str or list[str], "
                    f"got {hint!r}",
                    location,
                )
        return dict(schema)
    raise error(
        OUTPUTS_SCHEMA_ERROR,
        f"{owner}: {what} must be an attrs class, a dataclass or a dict of field name to type, "
        f"got {schema!r}",
        location,
    )


def output_fields(schema: object) -> tuple[str, ...]:
    """The field names a schema declares (empty for ``None``); ``hasOutputs`` is their non-emptiness."""
    if schema is None:
        return ()
    if isinstance(schema, dict):
        return tuple(schema)
    if _is_attrs_class(schema):
        return tuple(a.name for a in schema.__attrs_attrs__)  # type: ignore[attr-defined]
    if isinstance(schema, type) and dataclasses.is_dataclass(schema):
        return tuple(f.name for f in dataclasses.fields(schema))
    raise TypeError(f"not an outputs schema: {schema!r}")


class OutputView(Mapping[str, Any]):
    """Read-only outputs with attribute access; nested mappings are views too."""

    __slots__ = ("_owner", "_values")

    def __init__(self, values: Mapping[str, Any], owner: str) -> None:
        self._values = values
        self._owner = owner

    def __getitem__(self, key: str) -> Any:
        return _wrap(self._values[key], f"{self._owner}.{key}")

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _field(self._values, name, self._owner)

    def __repr__(self) -> str:
        return f"OutputView({dict(self._values)!r})"


def _wrap(value: Any, owner: str) -> Any:
    return OutputView(value, owner) if isinstance(value, Mapping) else value


def _field(values: Mapping[str, Any], name: str, owner: str) -> Any:
    if name not in values:
        shown = ", ".join(sorted(values)) or "none"
        raise AttributeError(f"{owner} has no output '{name}' (outputs: {shown})")
    return _wrap(values[name], f"{owner}.{name}")


def _source(what: str, label: str) -> OutputSource:
    source = _SOURCE.get()
    if source is None:
        raise OutputsNotReady(
            label, f"{what} '{label}' has not produced outputs yet (outputs exist only while a job runs)"
        )
    return source


class StepResult:
    """``step.result``: the outputs of a step of the running job, looked up on access."""

    __slots__ = ("_label", "_step")

    def __init__(self, step: object, label: str) -> None:
        self._step = step
        self._label = label

    def _outputs(self) -> Mapping[str, Any]:
        return _source("Step", self._label).outputs_of(self._step)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _field(self._outputs(), name, f"Step '{self._label}'")

    def __getitem__(self, name: str) -> Any:
        return _field(self._outputs(), name, f"Step '{self._label}'")

    def __repr__(self) -> str:
        return f"<result of step '{self._label}'>"


class JobResult:
    """``job.result``: an upstream job's outputs by step, or flat for a ``run=`` job."""

    __slots__ = ("_flat", "_job", "_label")

    def __init__(self, job: object, label: str, *, flat: bool) -> None:
        self._job = job
        self._label = label
        self._flat = flat

    def _values(self) -> Mapping[str, Any]:
        data = _source("Job", self._label).job_outputs(self._job)
        data = getattr(data, "merged", data)
        if not isinstance(data, Mapping):
            raise TypeError(f"job outputs of '{self._label}' must be a mapping, got {type(data).__name__}")
        if self._flat:
            steps = list(data.values())
            return steps[0] if len(steps) == 1 and isinstance(steps[0], Mapping) else {}
        return data

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _field(self._values(), name, f"Job '{self._label}'")

    def __getitem__(self, name: str) -> Any:
        return _field(self._values(), name, f"Job '{self._label}'")

    def __repr__(self) -> str:
        return f"<result of job '{self._label}'>"
