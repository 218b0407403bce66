"""ISO-02: every runner IPC message round-trips through the cattrs JSON codec; unknown types are rejected.

Also: whatever bytes arrive, decoding raises only ``RunnerIpcError`` (the parent reads frames produced by
user code), and frames the stdlib runner encodes decode on the parent side.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.runner_ipc import (
    PARENT_TYPES,
    RUNNER_TYPES,
    Abort,
    AgentApiRequest,
    AgentApiResponse,
    ConcurrencyAck,
    ConcurrencyReport,
    EventEmit,
    EventEmitResponse,
    Execute,
    ExecuteRequest,
    JobComplete,
    LogLine,
    ParentMessage,
    Ready,
    RuleResultData,
    RunnerIpcError,
    RunnerMessage,
    StepComplete,
    StepError,
    StepResult,
    StepStart,
    decode_parent_message,
    decode_runner_message,
    encode,
    to_json,
)
from kici.services.runner.ipc import encode_frame

pytestmark = pytest.mark.feature("ISO-02")

text = st.text(max_size=12)
opt_text = st.none() | text
count = st.integers(0, 10**9)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(text, json_values, max_size=3)
str_maps = st.dictionaries(text, text, max_size=3)
step_status = st.sampled_from(["success", "failed", "skipped", "cancelled"])

step_errors = st.builds(StepError, message=text, exit_code=st.none() | st.integers(0, 255), signal=opt_text)
step_results = st.builds(StepResult, name=text, status=step_status, duration_ms=count, error=opt_text)
rule_results = st.builds(RuleResultData, label=text, passed=st.booleans(), duration_ms=count, error=opt_text)

runner_messages: st.SearchStrategy[RunnerMessage] = st.one_of(
    st.just(Ready()),
    st.builds(
        StepStart,
        step_index=st.integers(-1, 10**6),
        step_name=text,
        step_type=opt_text,
        state=st.none() | st.sampled_from(["running", "pending"]),
        group_id=opt_text,
        concurrency_kind=opt_text,
    ),
    st.builds(LogLine, step_index=st.integers(-1, 10**6), line=text),
    st.builds(
        StepComplete,
        step_index=st.integers(-1, 10**6),
        status=step_status,
        duration_ms=count,
        error=st.none() | step_errors,
        outputs=st.none() | json_objects,
        step_type=opt_text,
        secrets_accessed=st.none() | st.lists(text, max_size=3).map(tuple),
        data=st.none() | json_objects,
        group_id=opt_text,
    ),
    st.builds(
        JobComplete,
        status=st.sampled_from(["success", "failed", "cancelled"]),
        step_results=st.lists(step_results, max_size=3).map(tuple),
        error=opt_text,
        outputs=st.none() | json_objects,
        secret_outputs=st.none() | str_maps,
        dropped_jobs=st.none() | st.lists(text, max_size=2).map(tuple),
        rule_results=st.none() | st.lists(rule_results, max_size=2).map(tuple),
        duration_ms=st.none() | count,
    ),
    st.builds(
        EventEmit, request_id=text, event_name=text, payload=json_values, target=st.none() | json_objects
    ),
    st.builds(ConcurrencyReport, group=text),
    st.builds(AgentApiRequest, request_id=text, method=text, params=json_values),
)

requests = st.builds(
    ExecuteRequest,
    workflow_file=text,
    job_name=text,
    workspace=text,
    workflow_export=opt_text,
    workflow_name=opt_text,
    content_hash=opt_text,
    resolved_hash_files=st.none() | st.lists(text, max_size=2).map(tuple),
    matrix=st.none() | json_objects,
    event=st.none() | json_objects,
    secrets=str_maps,
    env=str_maps,
    upstream_job_outputs=json_objects,
    upstream_job_statuses=str_maps,
    dispatch_inputs=json_objects,
    grace_period_s=st.none() | st.floats(0, 100),
    job_timeout_ms=st.none() | count,
    default_step_timeout_ms=st.none() | count,
    run_mode=st.sampled_from(["apply", "check", "check-fail-on-drift"]),
    job_display_name=opt_text,
)
parent_messages: st.SearchStrategy[ParentMessage] = st.one_of(
    st.builds(Execute, request=requests),
    st.builds(Abort, force=st.booleans(), reason=opt_text),
    st.builds(EventEmitResponse, request_id=text, delivery_id=opt_text, error=opt_text),
    st.builds(ConcurrencyAck, action=st.sampled_from(["proceed", "wait", "cancel"]), reason=opt_text),
    st.builds(AgentApiResponse, request_id=text, result=json_values, error=opt_text),
)


@given(runner_messages)
def test_runner_messages_round_trip(message: RunnerMessage) -> None:
    assert decode_runner_message(encode(message)) == message


@given(parent_messages)
def test_parent_messages_round_trip(message: ParentMessage) -> None:
    assert decode_parent_message(encode(message)) == message


@given(runner_messages)
def test_frames_of_the_stdlib_runner_decode_on_the_parent(message: RunnerMessage) -> None:
    assert decode_runner_message(encode_frame(to_json(message))) == message


@given(st.text().filter(lambda t: t not in RUNNER_TYPES), json_objects)
def test_unknown_runner_types_are_rejected(kind: str, body: dict[str, Any]) -> None:
    with pytest.raises(RunnerIpcError, match="unknown message type"):
        decode_runner_message(json.dumps({**body, "type": kind}))


@given(st.sampled_from(sorted(PARENT_TYPES)), json_objects)
def test_a_direction_rejects_the_other_directions_types(kind: str, body: dict[str, Any]) -> None:
    with pytest.raises(RunnerIpcError):
        decode_runner_message(json.dumps({**body, "type": kind}))


@given(st.one_of(st.binary(max_size=64), json_values.map(json.dumps)))
def test_decoding_garbage_raises_only_the_typed_error(frame: bytes | str) -> None:
    with contextlib.suppress(RunnerIpcError):
        decode_runner_message(frame)


@given(st.sampled_from(sorted(RUNNER_TYPES)), json_objects)
def test_known_types_with_wrong_fields_raise_the_typed_error(kind: str, body: dict[str, Any]) -> None:
    with contextlib.suppress(RunnerIpcError):
        decode_runner_message(json.dumps({**body, "type": kind}))
