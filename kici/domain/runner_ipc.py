"""The runner IPC messages (ISO-02, D6) as attrs models, and their JSON codec, for the parent side.

The sandboxed runner speaks the same newline-delimited JSON with plain dicts (it may import only the
standard library); the agent and ``kici run local`` use these models through ``runner_client``. Wire keys
are the KiCI camelCase names, except the ones the spec spells in snake_case (``step_type``).

Decoding is a trust boundary — the runner executes user code — so it raises exactly one exception type,
:class:`RunnerIpcError`, for bad JSON, an unknown ``type``, a missing or mistyped field, or an oversized
frame. Scalars are strict (``"5"`` is not an int); unknown keys are ignored so a newer runner can add
optional fields without breaking an older parent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar, Final, Literal

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

MAX_FRAME_BYTES: Final = 16 * 1024 * 1024
"""16 MiB per frame (ISO-03); a bigger frame fails the job instead of exhausting memory."""

StepStatus = Literal["success", "failed", "skipped", "cancelled"]
JobStatus = Literal["success", "failed", "cancelled"]
StartState = Literal["running", "pending"]
RunMode = Literal["apply", "check", "check-fail-on-drift"]
RunnerMode = Literal["job", "dynamic", "init"]
AbortAction = Literal["proceed", "wait", "cancel"]

_STEP_STATUSES: Final = ("success", "failed", "skipped", "cancelled")
_JOB_STATUSES: Final = ("success", "failed", "cancelled")


class RunnerIpcError(ValueError):
    """A frame that is not a valid message of the expected direction."""


def _one_of(*allowed: str) -> Any:
    def check(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and value not in allowed:
            raise RunnerIpcError(f"{attribute.name} must be one of {', '.join(allowed)}, got {value!r}")

    return check


def _non_negative(_: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value < 0:
        raise RunnerIpcError(f"{attribute.name} must be >= 0, got {value}")


# --- runner -> parent ---------------------------------------------------------------------------


@attrs.frozen
class Ready:
    TYPE: ClassVar[str] = "ready"


@attrs.frozen(kw_only=True)
class StepStart:
    TYPE: ClassVar[str] = "step.start"
    step_index: int
    step_name: str
    step_type: str | None = None
    state: StartState | None = attrs.field(default=None, validator=_one_of("running", "pending"))
    group_id: str | None = None
    concurrency_kind: str | None = None


@attrs.frozen(kw_only=True)
class LogLine:
    TYPE: ClassVar[str] = "log.line"
    step_index: int
    line: str


@attrs.frozen(kw_only=True)
class StepError:
    message: str
    exit_code: int | None = None
    signal: str | None = None


@attrs.frozen(kw_only=True)
class StepComplete:
    TYPE: ClassVar[str] = "step.complete"
    step_index: int
    status: StepStatus = attrs.field(validator=_one_of(*_STEP_STATUSES))
    duration_ms: int = attrs.field(validator=_non_negative)
    error: StepError | None = None
    outputs: Mapping[str, Any] | None = None
    step_type: str | None = None
    secrets_accessed: tuple[str, ...] | None = None
    data: Mapping[str, Any] | None = None
    group_id: str | None = None
    concurrency_kind: str | None = None
    check_outcome: str | None = None
    drift_summary: str | None = None


@attrs.frozen(kw_only=True)
class StepResult:
    name: str
    status: StepStatus = attrs.field(validator=_one_of(*_STEP_STATUSES))
    duration_ms: int = attrs.field(validator=_non_negative)
    error: str | None = None


@attrs.frozen(kw_only=True)
class RuleResultData:
    label: str
    passed: bool
    duration_ms: int = attrs.field(validator=_non_negative)
    error: str | None = None


@attrs.frozen(kw_only=True)
class InitResult:
    """What an ``init`` evaluation (10 §4 ``initOnly``) resolved for its target job; unset = not dynamic."""

    matrix_values: Any = None
    env: Mapping[str, str] | None = None
    environment_names: tuple[str, ...] | None = None
    concurrency_group: str | None = None


@attrs.frozen(kw_only=True)
class JobComplete:
    """The runner's verdict. ``cancelled`` is added to ISO-02's success|failed: a graceful cancel whose
    hooks all passed ends ``cancelled`` (10 §6), and the runner is the one that knows."""

    TYPE: ClassVar[str] = "job.complete"
    status: JobStatus = attrs.field(validator=_one_of(*_JOB_STATUSES))
    step_results: tuple[StepResult, ...] = ()
    error: str | None = None
    outputs: Mapping[str, Any] | None = None
    secret_outputs: Mapping[str, str] | None = None
    dropped_jobs: tuple[str, ...] | None = None
    rule_results: tuple[RuleResultData, ...] | None = None
    duration_ms: int | None = attrs.field(default=None, validator=_non_negative)
    dynamic_jobs: tuple[Mapping[str, Any], ...] | None = None
    dynamic_complete: bool | None = None
    dynamic_failed: bool | None = None
    generated_job_names: tuple[str, ...] | None = None
    init_result: InitResult | None = None
    init_complete: bool | None = None
    init_failed: bool | None = None


@attrs.frozen(kw_only=True)
class EventEmit:
    TYPE: ClassVar[str] = "event.emit"
    request_id: str
    event_name: str
    payload: Any = None
    target: Mapping[str, Any] | None = None


@attrs.frozen(kw_only=True)
class ConcurrencyReport:
    TYPE: ClassVar[str] = "concurrency.report"
    group: str


@attrs.frozen(kw_only=True)
class AgentApiRequest:
    TYPE: ClassVar[str] = "agent.api.request"
    request_id: str
    method: str
    params: Any = None


RunnerMessage = (
    Ready | StepStart | LogLine | StepComplete | JobComplete | EventEmit | ConcurrencyReport | AgentApiRequest
)

# --- parent -> runner ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class DynamicRequest:
    """Which generator to run and with what (10 §9).

    With ``mode: dynamic`` the runner evaluates generator ``index`` and answers ``dynamicJobs``; on a
    generated job's ``execute`` (``mode: job``) it re-evaluates it with the same frozen inputs and checks
    the result against ``expected_job_names`` (the determinism guard). ``needs`` is the ``ctx.needs``
    view of the frozen upstream snapshot (result-aware generators only).
    """

    index: int = attrs.field(validator=_non_negative)
    group: str | None = None
    result_aware: bool | None = None
    timeout_ms: int | None = attrs.field(default=None, validator=_non_negative)
    needs: Mapping[str, Any] | None = None
    expected_job_names: tuple[str, ...] | None = None


@attrs.frozen(kw_only=True)
class ExecuteRequest:
    """What one job run needs (D6). Paths are repo-relative; ``workspace`` is the path inside the sandbox.

    ``mode`` picks the special job types of 10 §4: ``dynamic`` evaluates a generator (``dynamic``),
    ``init`` evaluates the dynamic values of job ``job_name`` (``init_timeout_ms`` per value).

    ``event`` is the snake_case envelope of 00 §1.6 (``SimulatedEvent`` as JSON); ``matrix`` is this child's
    combination (``{"value": x}`` for a 1-D matrix). ``content_hash`` absent skips the D1 drift check.
    """

    workflow_file: str
    job_name: str
    workspace: str
    workflow_export: str | None = None
    workflow_name: str | None = None
    kici_dir: str | None = None
    content_hash: str | None = None
    resolved_hash_files: tuple[str, ...] | None = None
    matrix: Mapping[str, Any] | None = None
    event: Mapping[str, Any] | None = None
    secrets: Mapping[str, str] = attrs.field(factory=dict)
    env: Mapping[str, str] = attrs.field(factory=dict)
    upstream_job_outputs: Mapping[str, Any] = attrs.field(factory=dict)
    upstream_job_statuses: Mapping[str, str] = attrs.field(factory=dict)
    dispatch_inputs: Mapping[str, Any] = attrs.field(factory=dict)
    grace_period_s: float | None = None
    job_timeout_ms: int | None = attrs.field(default=None, validator=_non_negative)
    default_step_timeout_ms: int | None = attrs.field(default=None, validator=_non_negative)
    run_mode: RunMode = attrs.field(
        default="apply", validator=_one_of("apply", "check", "check-fail-on-drift")
    )
    job_display_name: str | None = None
    fanout_index: int | None = attrs.field(default=None, validator=_non_negative)
    fanout_total: int | None = attrs.field(default=None, validator=_non_negative)
    is_test_run: bool | None = None
    provider: str | None = None
    mode: RunnerMode = attrs.field(default="job", validator=_one_of("job", "dynamic", "init"))
    dynamic: DynamicRequest | None = None
    init_timeout_ms: int | None = attrs.field(default=None, validator=_non_negative)


@attrs.frozen(kw_only=True)
class Execute:
    TYPE: ClassVar[str] = "execute"
    request: ExecuteRequest


@attrs.frozen(kw_only=True)
class Abort:
    """``force`` skips every hook (10 §6); ``reason`` is shown as the cancel reason."""

    TYPE: ClassVar[str] = "abort"
    force: bool = False
    reason: str | None = None


@attrs.frozen(kw_only=True)
class EventEmitResponse:
    TYPE: ClassVar[str] = "event.emit.response"
    request_id: str
    delivery_id: str | None = None
    error: str | None = None


@attrs.frozen(kw_only=True)
class ConcurrencyAck:
    TYPE: ClassVar[str] = "concurrency.ack"
    action: AbortAction = attrs.field(validator=_one_of("proceed", "wait", "cancel"))
    reason: str | None = None


@attrs.frozen(kw_only=True)
class AgentApiResponse:
    TYPE: ClassVar[str] = "agent.api.response"
    request_id: str
    result: Any = None
    error: str | None = None


ParentMessage = Execute | Abort | EventEmitResponse | ConcurrencyAck | AgentApiResponse

RUNNER_TYPES: Final[Mapping[str, type[Any]]] = {
    cls.TYPE: cls
    for cls in (
        Ready,
        StepStart,
        LogLine,
        StepComplete,
        JobComplete,
        EventEmit,
        ConcurrencyReport,
        AgentApiRequest,
    )
}
PARENT_TYPES: Final[Mapping[str, type[Any]]] = {
    cls.TYPE: cls for cls in (Execute, Abort, EventEmitResponse, ConcurrencyAck, AgentApiResponse)
}

# --- codec --------------------------------------------------------------------------------------

_SNAKE_WIRE_KEYS: Final = frozenset({"step_type"})


def _camel(name: str) -> str:
    if name in _SNAKE_WIRE_KEYS:
        return name
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _strict(kind: type[Any], *, allow_int: bool = False) -> Any:
    def structure(value: Any, _: Any) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise RunnerIpcError(f"expected {kind.__name__}, got a boolean")
        if isinstance(value, kind) or (allow_int and isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise RunnerIpcError(f"expected {kind.__name__}, got {type(value).__name__}")

    return structure


def _passthrough(value: Any, _: Any) -> Any:
    return value


def _mapping(value: Any, _: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RunnerIpcError(f"expected an object, got {type(value).__name__}")
    return dict(value)


def _str_mapping(value: Any, _: Any) -> Mapping[str, str]:
    mapping = _mapping(value, None)
    for key, item in mapping.items():
        if not isinstance(item, str):
            raise RunnerIpcError(f"expected a string value for {key!r}, got {type(item).__name__}")
    return mapping


def _build_converter() -> cattrs.Converter:
    converter = cattrs.Converter()
    converter.register_structure_hook(str, _strict(str))
    converter.register_structure_hook(int, _strict(int))
    converter.register_structure_hook(bool, _strict(bool))
    converter.register_structure_hook(float, _strict(float, allow_int=True))
    converter.register_structure_hook_func(lambda t: t is Any, _passthrough)
    converter.register_structure_hook_func(lambda t: t == Mapping[str, Any], _mapping)
    converter.register_structure_hook_func(lambda t: t == Mapping[str, str], _str_mapping)
    converter.register_unstructure_hook_func(lambda t: t in (Mapping[str, Any], Mapping[str, str]), dict)

    def structure_tuple(value: Any, cls: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise RunnerIpcError(f"expected an array, got {type(value).__name__}")
        (item_type, _ellipsis) = cls.__args__
        return tuple(converter.structure(item, item_type) for item in value)

    converter.register_structure_hook_func(
        lambda t: getattr(t, "__origin__", None) is tuple and len(getattr(t, "__args__", ())) == 2,
        structure_tuple,
    )
    # Leaves first: a generated hook binds the hooks of nested models when it is made.
    models = (
        StepError,
        StepResult,
        RuleResultData,
        InitResult,
        DynamicRequest,
        ExecuteRequest,
        *RUNNER_TYPES.values(),
        *PARENT_TYPES.values(),
    )
    for cls in models:
        out: dict[str, Any] = {
            f.name: override(rename=_camel(f.name), omit_if_default=True) for f in attrs.fields(cls)
        }
        converter.register_unstructure_hook(cls, make_dict_unstructure_fn(cls, converter, **out))
        into: dict[str, Any] = {f.name: override(rename=_camel(f.name)) for f in attrs.fields(cls)}
        converter.register_structure_hook(cls, make_dict_structure_fn(cls, converter, **into))
    return converter


_CONVERTER: Final = _build_converter()


def to_json(message: RunnerMessage | ParentMessage) -> dict[str, Any]:
    """The JSON object of ``message``: ``type`` first, optional fields omitted when unset."""
    body = _CONVERTER.unstructure(message)
    return {"type": message.TYPE, **body}


def encode(message: RunnerMessage | ParentMessage) -> bytes:
    """One frame: compact UTF-8 JSON plus ``\\n``."""
    text = json.dumps(to_json(message), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    frame = text.encode("utf-8") + b"\n"
    if len(frame) > MAX_FRAME_BYTES:
        raise RunnerIpcError(f"frame of {len(frame)} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
    return frame


def _decode(frame: bytes | str, types: Mapping[str, type[Any]]) -> Any:
    if len(frame) > MAX_FRAME_BYTES:
        raise RunnerIpcError(f"frame of {len(frame)} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
    try:
        data = json.loads(frame)
    except (ValueError, RecursionError) as exc:
        raise RunnerIpcError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RunnerIpcError("a message must be a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise RunnerIpcError("a message needs a string 'type'")
    cls = types.get(kind)
    if cls is None:
        raise RunnerIpcError(f"unknown message type {kind!r}")
    body = {key: value for key, value in data.items() if key != "type"}
    try:
        return _CONVERTER.structure(body, cls)
    except RunnerIpcError:
        raise
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        raise RunnerIpcError(f"invalid {kind!r} message: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(_describe(inner) for inner in exc.exceptions) or str(exc)
    if isinstance(exc, KeyError):
        return f"missing field {exc}"
    return str(exc)


def decode_runner_message(frame: bytes | str) -> RunnerMessage:
    """A runner -> parent frame (what the agent / local engine reads)."""
    message: RunnerMessage = _decode(frame, RUNNER_TYPES)
    return message


def decode_parent_message(frame: bytes | str) -> ParentMessage:
    """A parent -> runner frame (the runner parses dicts itself; this is for tests and fakes)."""
    message: ParentMessage = _decode(frame, PARENT_TYPES)
    return message


def event_to_json(event: Any) -> dict[str, Any]:
    """A ``SimulatedEvent`` as the snake_case envelope the runner's ``ctx.event`` is built from."""
    data = attrs.asdict(event, recurse=False)
    if data.get("changed_files") is not None:
        data["changed_files"] = list(data["changed_files"])
    data["payload"] = dict(data.get("payload") or {})
    return data


__all__ = [
    "MAX_FRAME_BYTES",
    "PARENT_TYPES",
    "RUNNER_TYPES",
    "Abort",
    "AgentApiRequest",
    "AgentApiResponse",
    "ConcurrencyAck",
    "ConcurrencyReport",
    "DynamicRequest",
    "EventEmit",
    "EventEmitResponse",
    "Execute",
    "ExecuteRequest",
    "InitResult",
    "JobComplete",
    "LogLine",
    "ParentMessage",
    "Ready",
    "RuleResultData",
    "RunnerIpcError",
    "RunnerMessage",
    "RunnerMode",
    "StepComplete",
    "StepError",
    "StepResult",
    "StepStart",
    "decode_parent_message",
    "decode_runner_message",
    "encode",
    "event_to_json",
    "to_json",
]
