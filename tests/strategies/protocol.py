"""Hypothesis strategies for the wire protocol: any valid instance of any wire model.

Instances are derived from each attrs class's field types, so a new message class is
covered without touching this file. Fields with a range or a cross-field rule get their
strategy from `_BY_NAME`/`_BY_FIELD`, and `_FIXERS` repair drawn keyword arguments into
the few invariants a field-by-field draw cannot respect (``job.dispatch`` token vs
``sourceAuth``, exactly-one pairs, ``job.progress`` state by kind).
"""

import types
from collections.abc import Callable
from enum import StrEnum
from functools import cache
from typing import Any, Union, get_args, get_origin

from hypothesis import strategies as st

from kici.domain import protocol as p
from kici.domain.protocol.base import (
    WireModel,
    is_passthrough,
    known_wire_keys,
    model_fields,
)

NONE_TYPE = type(None)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
"""Any JSON value Python's json round-trips exactly (no NaN/inf, no surrogates)."""

texts = st.text(max_size=16)
ints = st.integers(-(2**53), 2**53)
numbers = ints | st.floats(allow_nan=False, allow_infinity=False)
counts = st.integers(0, 10**9)
positives = st.integers(1, 10**6)

_BY_NAME: dict[str, st.SearchStrategy[Any]] = {
    "protocol_version": positives,
    "step_index": st.integers(0, 10**6),
    "seq": counts,
    "sequence": counts,
    "size_bytes": counts,
    "log_bytes_streamed": counts,
    "total_lines": counts,
    "total_bytes": counts,
    "cancelled_jobs": counts,
    "retry_after_ms": counts,
    "after_line_count": counts,
    "line_count": counts,
    "dropped_line_count": counts,
    "max_log_size_bytes": positives,
    "max_concurrency": positives,
    "timeout_seconds": positives,
    "chunk_count": positives,
    "total_size": st.integers(0, p.MAX_PAYLOAD_BYTES),
    "subject_digest": st.text("0123456789abcdef", min_size=1, max_size=64),
    "cluster_id": st.uuids().map(str),
    "token": st.text(min_size=1, max_size=24),
}

_BY_FIELD: dict[tuple[type[Any], str], st.SearchStrategy[Any]] = {
    (p.ActorPlatformOperator, "reason"): st.text(min_size=4, max_size=200),
    (p.OrchMetrics, "message_id"): st.text(max_size=p.MAX_METRICS_MESSAGE_ID),
    (p.ExecutionStatus, "status"): st.sampled_from([s for s in p.RunState if s != p.RunState.HELD]),
    (p.DashboardErrorFrame, "request_type"): st.from_regex(r"dashboard\.x[a-z]{1,8}", fullmatch=True),
}


def _one_of_pair(kwargs: dict[str, Any], draw: Callable[..., Any], first: str, second: str) -> None:
    """Exactly one of two optional fields is set."""
    keep = draw(st.sampled_from([first, second]))
    drop = second if keep == first else first
    kwargs[drop] = None
    if kwargs[keep] is None:
        kwargs[keep] = draw(st.text(min_size=1, max_size=12))


def _fix_dispatch(kwargs: dict[str, Any], draw: Callable[..., Any]) -> None:
    auth, token = kwargs["source_auth"], kwargs["token"]
    if auth is not None and token is not None:
        kwargs["source_auth"] = p.GitAuth(kind=p.GitAuthKind.BASIC, user=auth.user, secret=token)


def _fix_git_auth(kwargs: dict[str, Any], draw: Callable[..., Any]) -> None:
    if kwargs["ssh_host_key_policy"] == p.SshHostKeyPolicy.PINNED and kwargs["ssh_known_hosts_pem"] is None:
        kwargs["ssh_known_hosts_pem"] = draw(texts)


def _fix_progress(kwargs: dict[str, Any], draw: Callable[..., Any]) -> None:
    vocabulary = p.JobState if kwargs["kind"] == p.ProgressKind.JOB else p.StepState
    kwargs["state"] = draw(st.sampled_from(list(vocabulary)))


def _fix_cancel(kwargs: dict[str, Any], draw: Callable[..., Any]) -> None:
    if kwargs["run_id"] is None and kwargs["branch"] is None:
        kwargs["run_id"] = draw(texts)


_FIXERS: dict[type[Any], Callable[[dict[str, Any], Callable[..., Any]], None]] = {
    p.JobDispatch: _fix_dispatch,
    p.GitAuth: _fix_git_auth,
    p.JobProgress: _fix_progress,
    p.TestRelayCancel: _fix_cancel,
    p.ApproverClause: lambda kwargs, draw: _one_of_pair(kwargs, draw, "team", "user"),
    p.PeerAuthRequest: lambda kwargs, draw: _one_of_pair(kwargs, draw, "token", "proof"),
}


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (types.UnionType, Union)


def for_type(tp: Any) -> st.SearchStrategy[Any]:
    """Any valid value of a field type used by the protocol models."""
    if tp is Any:
        return json_values
    if tp is p.PropertyValue:
        return st.one_of(texts, numbers, st.booleans())
    scalar = {str: texts, int: ints, float: numbers, bool: st.booleans()}.get(tp)
    if scalar is not None:
        return scalar
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        return st.sampled_from(list(tp))
    if isinstance(tp, type) and issubclass(tp, WireModel):
        return models(tp)
    origin, args = get_origin(tp), get_args(tp)
    if origin is list:
        return st.lists(for_type(args[0]), max_size=3)
    if origin is dict:
        return st.dictionaries(texts, for_type(args[1]), max_size=3)
    if _is_union(tp):
        return st.one_of([st.none() if arg is NONE_TYPE else for_type(arg) for arg in args])
    raise TypeError(f"no strategy for {tp!r}")


def _field_strategy(cls: type[Any], field: Any) -> st.SearchStrategy[Any]:
    if is_passthrough(field):
        known = known_wire_keys(cls)
        return st.dictionaries(texts.filter(lambda key: key not in known), json_values, max_size=3)
    special = _BY_FIELD.get((cls, field.name), _BY_NAME.get(field.name))
    if special is None:
        return for_type(field.type)
    return st.none() | special if field.default is None else special


@cache
def models(cls: type[Any]) -> st.SearchStrategy[Any]:
    """Valid instances of one wire model class (a message or a nested shape)."""
    fields = {field.name: _field_strategy(cls, field) for field in model_fields(cls)}
    fixer = _FIXERS.get(cls)

    @st.composite
    def build(draw: Callable[..., Any]) -> Any:
        kwargs = {name: draw(strategy) for name, strategy in fields.items()}
        if fixer is not None:
            fixer(kwargs, draw)
        return cls(**kwargs)

    return build()


def wire_noise(cls: type[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects with ``cls``'s ``type`` and arbitrary JSON under a random subset of its keys."""
    keys = sorted(known_wire_keys(cls) - {"type"})
    return st.fixed_dictionaries({"type": st.just(cls.TYPE)}, optional=dict.fromkeys(keys, json_values))
