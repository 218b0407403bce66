"""Dashboard REST-over-WS and the test-relay control plane (20a §6.6), riding on the
Platform <-> orchestrator link.

Every request carries ``requestId`` and the ``actor`` principal; every request gets exactly
one response frame carrying the same ``requestId`` (the event-log payload stream answers
with ordered ``dashboard.event-log.payload.chunk`` frames instead).

How the catalogue is represented:
- Shapes 20a spells out are precise classes: ``run.cancel.request/response``,
  ``run.rerun.response``, ``dashboard.step.logs.response``, the payload chunk, the five
  ``test.relay.*`` pairs (field types the catalogue leaves open follow the reference docs:
  ``cursor`` is a number, ``inlineLockFile`` a string, ``cancelled`` a boolean).
- The dozens of request types whose fields 20a does not list are one class per type name,
  generated from `GENERIC_REQUEST_TYPES` as subclasses of `GenericDashboardRequest`: they
  model ``requestId`` and ``actor`` and keep every other key verbatim in ``params``, so the
  Platform forwards what the REST call carried and the orchestrator's handler validates it.
  Their responses are `GenericDashboardResponse` subclasses keeping the body in ``body``.
- Names 20a gives only in prose are spelled ``dashboard.global-workflow.get``,
  ``dashboard.global-workflow.update`` and ``dashboard.access-log.list``.
- Every response can be the structured error frame (``error``, ``code``, ``orchVersion``,
  ``requestType``). A request type the orchestrator has no response class for (an unknown
  ``dashboard.*`` type, or the payload stream) is answered with `DashboardErrorFrame`, whose
  wire ``type`` is ``<requestType>.response``.
- ``cancelledJobs`` of ``run.cancel.response`` is the number of jobs cancelled.
"""

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, ClassVar, Final, cast

import attrs

from kici.domain.protocol.base import (
    NON_NEGATIVE,
    OPT_NON_NEGATIVE,
    PASSTHROUGH,
    InvalidMessage,
    Message,
    Tagged,
    WireModel,
    check_passthrough,
    check_text_len,
    wire,
)


class DashboardErrorCode(StrEnum):
    UNSUPPORTED_REQUEST_TYPE = "unsupported_request_type"
    INVALID_PAYLOAD = "invalid_payload"
    UNSUPPORTED_MESSAGE_TYPE = "unsupported_message_type"
    INTERNAL_ERROR = "internal_error"


class TestRelayStatus(StrEnum):
    __test__ = False  # the Test* classes here are not pytest test classes when imported by tests

    ACCEPTED = "accepted"
    REJECTED = "rejected"


# --- actor principal (tagged by ``type``) --------------------------------------------------


@attrs.frozen(kw_only=True)
class PatAgent(WireModel):
    """A user acting through a personal access token."""

    pat_id: str
    label: str


@attrs.frozen(kw_only=True)
class ActorUser(Tagged):
    TYPE: ClassVar[str] = "user"
    sub: str
    agent: PatAgent | None = None


@attrs.frozen(kw_only=True)
class ActorApiKey(Tagged):
    TYPE: ClassVar[str] = "api_key"
    key_id: str
    owner_sub: str


@attrs.frozen(kw_only=True)
class ActorServiceAccount(Tagged):
    TYPE: ClassVar[str] = "service_account"
    id: str


@attrs.frozen(kw_only=True)
class ActorPlatformOperator(Tagged):
    """Vendor staff acting on a tenant; the stated reason is written to the access log."""

    TYPE: ClassVar[str] = "platform_operator"
    sub: str
    reason: str = attrs.field(validator=check_text_len(4, 200))
    session_id: str | None = None


@attrs.frozen(kw_only=True)
class ActorSystem(Tagged):
    """An internal caller; 20a leaves its fields open, so they pass through."""

    TYPE: ClassVar[str] = "system"
    extra: dict[str, Any] = attrs.field(factory=dict, metadata=PASSTHROUGH, validator=check_passthrough)


ActorPrincipal = ActorUser | ActorApiKey | ActorServiceAccount | ActorPlatformOperator | ActorSystem


# --- envelopes -----------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class DashboardRequest(Message):
    """Base of every request the Platform forwards to an orchestrator."""

    request_id: str
    actor: ActorPrincipal


@attrs.frozen(kw_only=True)
class DashboardResponse(Message):
    """Base of every response; the error fields double as the structured error frame."""

    request_id: str
    error: str | None = None
    code: DashboardErrorCode | None = None
    orch_version: str | None = None
    request_type: str | None = None


@attrs.frozen(kw_only=True)
class GenericDashboardRequest(DashboardRequest):
    """A request whose fields 20a does not list: every other key is kept in ``params``."""

    params: dict[str, Any] = attrs.field(factory=dict, metadata=PASSTHROUGH, validator=check_passthrough)


@attrs.frozen(kw_only=True)
class GenericDashboardResponse(DashboardResponse):
    """The response twin of a generic request: the payload is kept in ``body``."""

    body: dict[str, Any] = attrs.field(factory=dict, metadata=PASSTHROUGH, validator=check_passthrough)


# --- precise requests and responses --------------------------------------------------------


@attrs.frozen(kw_only=True)
class RunCancelRequest(DashboardRequest):
    TYPE: ClassVar[str] = "run.cancel.request"
    run_id: str
    force: bool | None = None


@attrs.frozen(kw_only=True)
class RunCancelResponse(DashboardResponse):
    TYPE: ClassVar[str] = "run.cancel.response"
    cancelled_jobs: int | None = attrs.field(default=None, validator=OPT_NON_NEGATIVE)


@attrs.frozen(kw_only=True)
class RunRerunResponse(DashboardResponse):
    TYPE: ClassVar[str] = "run.rerun.response"
    new_run_id: str | None = None
    error_code: str | None = None


@attrs.frozen(kw_only=True)
class DashboardStepLogsResponse(DashboardResponse):
    TYPE: ClassVar[str] = "dashboard.step.logs.response"
    lines: list[str] | None = None
    total_lines: int | None = attrs.field(default=None, validator=OPT_NON_NEGATIVE)


@attrs.frozen(kw_only=True)
class DashboardEventLogPayloadChunk(Message):
    """One frame of a streamed event payload; ``total_bytes`` accompanies ``seq == 0``."""

    TYPE: ClassVar[str] = "dashboard.event-log.payload.chunk"
    request_id: str
    seq: int = attrs.field(validator=NON_NEGATIVE)
    data: str
    is_last: bool
    error: str | None = None
    total_bytes: int | None = attrs.field(default=None, validator=OPT_NON_NEGATIVE)


@attrs.frozen(kw_only=True)
class TestRelayEvent(WireModel):
    """The simulated provider event of ``kici run remote``."""

    __test__ = False

    event_type: str = attrs.field(metadata=wire("type"))
    action: str | None = None
    target_branch: str
    source_branch: str | None = None
    payload: dict[str, Any]
    changed_files: list[str] | None = None


@attrs.frozen(kw_only=True)
class TestRelayUploadsInit(DashboardRequest):
    __test__ = False

    TYPE: ClassVar[str] = "test.relay.uploads.init"
    routing_key: str
    sha: str | None = None
    file_count: float | None = None
    compressed_size: float | None = None


@attrs.frozen(kw_only=True)
class TestRelayUploadsInitResponse(DashboardResponse):
    __test__ = False

    TYPE: ClassVar[str] = "test.relay.uploads.init.response"
    upload_id: str | None = None
    signed_url: str | None = None
    public_key: str | None = None
    expires_in: float | None = None


@attrs.frozen(kw_only=True)
class TestRelayTrigger(DashboardRequest):
    __test__ = False

    TYPE: ClassVar[str] = "test.relay.trigger"
    routing_key: str
    fixture_id: str
    event: TestRelayEvent
    workflow_name: str | None = None
    upload_id: str | None = None
    cli_public_key: str | None = None
    inline_lock_file: str | None = None
    full_repo: bool | None = None
    secrets: dict[str, str] | None = None
    encrypted_secrets: str | None = None
    encrypted_secrets_key: str | None = None


@attrs.frozen(kw_only=True)
class TestRelayTriggerResponse(DashboardResponse):
    __test__ = False

    TYPE: ClassVar[str] = "test.relay.trigger.response"
    run_id: str | None = None
    status: TestRelayStatus | None = None
    reason: str | None = None
    job_ids: list[str] | None = None


@attrs.frozen(kw_only=True)
class TestRelayRunStatus(DashboardRequest):
    __test__ = False

    TYPE: ClassVar[str] = "test.relay.run.status"
    run_id: str


@attrs.frozen(kw_only=True)
class TestRelayRunStatusResponse(DashboardResponse):
    """``jobs`` entries are ``{jobId, jobName, status, ...}`` objects kept as JSON."""

    __test__ = False

    TYPE: ClassVar[str] = "test.relay.run.status.response"
    run_id: str | None = None
    status: str | None = None
    jobs: list[dict[str, Any]] | None = None
    done: bool | None = None


@attrs.frozen(kw_only=True)
class TestRelayRunLogs(DashboardRequest):
    __test__ = False

    TYPE: ClassVar[str] = "test.relay.run.logs"
    run_id: str
    cursor: float


@attrs.frozen(kw_only=True)
class TestRelayRunLogsResponse(DashboardResponse):
    __test__ = False

    TYPE: ClassVar[str] = "test.relay.run.logs.response"
    lines: list[str] | None = None
    next_cursor: float | None = None
    done: bool | None = None


@attrs.frozen(kw_only=True)
class TestRelayCancel(DashboardRequest):
    """Cancels a run by id or the active run of a branch; at least one must be given."""

    __test__ = False

    TYPE: ClassVar[str] = "test.relay.cancel"
    run_id: str | None = None
    branch: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.run_id is None and self.branch is None:
            raise InvalidMessage("test.relay.cancel needs runId or branch")


@attrs.frozen(kw_only=True)
class TestRelayCancelResponse(DashboardResponse):
    __test__ = False

    TYPE: ClassVar[str] = "test.relay.cancel.response"
    cancelled: bool | None = None


# --- generated generic classes -------------------------------------------------------------


def _expand(prefix: str, names: str) -> tuple[str, ...]:
    return tuple(f"{prefix}.{name}" for name in names.split())


GENERIC_REQUEST_TYPES: Final[tuple[str, ...]] = (
    *_expand(
        "dashboard",
        "run.detail run.structured step.logs orch.logs attestations.list attestations.list.all "
        "attestation.get runs.list runs.filters sources.list payload",
    ),
    "run.rerun.request",
    "run.manual_schedule.request",
    *_expand(
        "dashboard.environments",
        "list get create update delete history test_access.set variables.list variables.set "
        "variables.delete source-overrides.list source-overrides.set source-overrides.delete "
        "bindings.list bindings.set secrets.list secrets.set secrets.delete secrets.scope.create "
        "secrets.scope.rename secrets.scope.delete",
    ),
    *_expand("dashboard.held-runs", "list approve reject"),
    "dashboard.registrations.list",
    *_expand("dashboard.registration", "disable delete"),
    "dashboard.diagnostics",
    *_expand("dashboard.fleet", "hosts host preview workflows-for-host host.declare host.remove"),
    *_expand("dashboard.scaler", "capacity agents"),
    *_expand("dashboard.backends", "list get sync sync.one test"),
    *_expand("dashboard.event-log", "list detail payload.stream"),
    *_expand("dashboard.event-dlq", "list count retry discard"),
    *_expand("dashboard.global-workflow", "get update"),
    "dashboard.access-log.list",
)
"""Request types modelled generically (requestId + actor + passthrough ``params``)."""

_STREAMED: Final = frozenset({"dashboard.event-log.payload.stream"})
_RESULT_SUFFIX: Final = frozenset({"dashboard.registration.disable", "dashboard.registration.delete"})

_PRECISE_REQUESTS: Final[tuple[type[DashboardRequest], ...]] = (
    RunCancelRequest,
    TestRelayUploadsInit,
    TestRelayTrigger,
    TestRelayRunStatus,
    TestRelayRunLogs,
    TestRelayCancel,
)
_PRECISE_RESPONSES: Final[tuple[type[Message], ...]] = (
    RunCancelResponse,
    RunRerunResponse,
    DashboardStepLogsResponse,
    DashboardEventLogPayloadChunk,
    TestRelayUploadsInitResponse,
    TestRelayTriggerResponse,
    TestRelayRunStatusResponse,
    TestRelayRunLogsResponse,
    TestRelayCancelResponse,
)


def response_type_for(request_type: str) -> str | None:
    """The ``type`` of the single response frame a request gets (``None`` for the stream)."""
    if request_type in _STREAMED:
        return None
    if request_type in _RESULT_SUFFIX:
        return f"{request_type}.result"
    if request_type.endswith(".request"):
        return request_type.removesuffix(".request") + ".response"
    return f"{request_type}.response"


def _class_name(type_name: str, suffix: str) -> str:
    words = [w for w in re.split(r"[.\-_]", type_name) if w]
    name = "".join(w[:1].upper() + w[1:] for w in words)
    return name if name.endswith(suffix) else name + suffix


def _generate(type_name: str, base: type[Message], suffix: str) -> type[Message]:
    name = _class_name(type_name, suffix)
    namespace = {"TYPE": type_name, "__module__": __name__, "__qualname__": name}
    return cast(type[Message], attrs.frozen(kw_only=True)(type(name, (base,), namespace)))


def _generate_all() -> tuple[dict[str, type[Message]], dict[str, type[Message]]]:
    requests: dict[str, type[Message]] = {c.TYPE: c for c in _PRECISE_REQUESTS}
    responses: dict[str, type[Message]] = {c.TYPE: c for c in _PRECISE_RESPONSES}
    for type_name in GENERIC_REQUEST_TYPES:
        requests[type_name] = _generate(type_name, GenericDashboardRequest, "Request")
        answer = response_type_for(type_name)
        if answer is not None and answer not in responses:
            suffix = "Result" if answer.endswith(".result") else "Response"
            responses[answer] = _generate(answer, GenericDashboardResponse, suffix)
    return requests, responses


_requests, _responses = _generate_all()
DASHBOARD_REQUEST_CLASSES: Final[Mapping[str, type[Message]]] = _requests
"""Every request type of the ``DashboardReq`` union -> its class."""
DASHBOARD_RESPONSE_CLASSES: Final[Mapping[str, type[Message]]] = _responses
"""Every response type of the ``DashboardResp`` union -> its class."""


def _dashboard_request_type(_instance: object, _attribute: object, value: str) -> None:
    if not value.startswith("dashboard."):
        raise InvalidMessage("a structured error frame answers a dashboard.* request")
    if response_type_for(value) in DASHBOARD_RESPONSE_CLASSES:
        raise InvalidMessage(f"{value[:80]} has a response class; answer with it instead")


@attrs.frozen(kw_only=True)
class DashboardErrorFrame(Message):
    """Structured error for a ``dashboard.*`` request that has no response class here.

    Its wire ``type`` is ``<request_type>.response``; the Platform maps
    ``unsupported_request_type`` to HTTP 501 and ``invalid_payload`` to 400.
    """

    TYPE: ClassVar[str] = "dashboard.*.response"
    request_id: str
    error: str
    code: DashboardErrorCode
    orch_version: str | None = None
    request_type: str = attrs.field(validator=_dashboard_request_type)

    def wire_type(self) -> str:
        return f"{self.request_type}.response"


def error_response(
    request_type: str,
    request_id: str,
    error: str,
    code: DashboardErrorCode,
    orch_version: str | None = None,
) -> Message:
    """The one response frame that reports ``error`` for a request of ``request_type``."""
    cls = DASHBOARD_RESPONSE_CLASSES.get(response_type_for(request_type) or "")
    if cls is not None and issubclass(cls, DashboardResponse):
        return cls(
            request_id=request_id,
            error=error,
            code=code,
            orch_version=orch_version,
            request_type=request_type,
        )
    return DashboardErrorFrame(
        request_id=request_id,
        error=error,
        code=code,
        orch_version=orch_version,
        request_type=request_type,
    )


def supported_dashboard_requests() -> list[str]:
    """The ``supportedDashboardRequests`` manifest entry, generated from the local union."""
    return sorted(DASHBOARD_REQUEST_CLASSES)


DashboardReq = (
    RunCancelRequest
    | TestRelayUploadsInit
    | TestRelayTrigger
    | TestRelayRunStatus
    | TestRelayRunLogs
    | TestRelayCancel
    | GenericDashboardRequest
)
"""Static view of the request union; generated classes are `GenericDashboardRequest`s."""

DashboardResp = (
    RunCancelResponse
    | RunRerunResponse
    | DashboardStepLogsResponse
    | DashboardEventLogPayloadChunk
    | TestRelayUploadsInitResponse
    | TestRelayTriggerResponse
    | TestRelayRunStatusResponse
    | TestRelayRunLogsResponse
    | TestRelayCancelResponse
    | GenericDashboardResponse
    | DashboardErrorFrame
)
"""Static view of the response union (plus the error frame for unknown request types)."""

DASHBOARD_REQ: Final[tuple[type[Message], ...]] = tuple(DASHBOARD_REQUEST_CLASSES.values())
DASHBOARD_RESP: Final[tuple[type[Message], ...]] = tuple(DASHBOARD_RESPONSE_CLASSES.values())
