"""Examples and edge cases of the wire codec, the message shapes, versions and capabilities."""

import json
from typing import Any, get_args

import pytest

from kici.domain import protocol as p


def _wire(msg: p.Message) -> dict[str, Any]:
    wire: dict[str, Any] = json.loads(p.encode(msg))
    return wire


def _decode_error(direction: p.Direction, text: str) -> p.DecodeError:
    with pytest.raises(p.DecodeError) as caught:
        p.decode(direction, text)
    return caught.value


def _job_ack(**changes: Any) -> str:
    wire = {"type": "job.ack", "messageId": "m", "runId": "r", "jobId": "j", "timestamp": 1700000000000}
    wire.update(changes)
    return json.dumps(wire)


# --- wire shape ----------------------------------------------------------------------------


@pytest.mark.feature("PRO-01", "PRO-10")
def test_encode_is_compact_camel_case_with_type_first() -> None:
    ack = p.JobAck(message_id="m", run_id="r", job_id="j", timestamp=1700000000000)
    assert p.encode(ack) == (
        '{"type":"job.ack","messageId":"m","runId":"r","jobId":"j","timestamp":1700000000000}'
    )
    assert p.decode(p.Direction.AGENT_TO_ORCH, p.encode(ack)) == ack


@pytest.mark.feature("PRO-01", "PRO-11")
def test_step_status_keeps_the_snake_case_step_type_key() -> None:
    status = p.StepStatus(
        message_id="m",
        run_id="r",
        job_id="j",
        step_index=2,
        step_name="test",
        state=p.StepState.SUCCESS,
        timestamp=5,
        step_type=p.StepType.AFTER_STEP,
        log_bytes_streamed=10,
    )
    wire = _wire(status)
    assert wire["step_type"] == "hook:afterStep"
    assert "stepType" not in wire
    assert wire["logBytesStreamed"] == 10
    assert p.decode(p.Direction.AGENT_TO_ORCH, p.encode(status)) == status


@pytest.mark.feature("PRO-01")
def test_plain_optionals_are_omitted_and_nullables_written() -> None:
    success = p.PlatformAuthSuccess(connection_id="c")
    assert _wire(success) == {"type": "auth.success", "connectionId": "c", "provenanceIssuer": None}
    event = p.RunEvent(run_id="r", event_type="x", timestamp_ms=1, source_service=p.SourceService.AGENT)
    assert _wire(event) == {
        "type": "run.event",
        "runId": "r",
        "eventType": "x",
        "timestampMs": 1,
        "sourceService": "agent",
        "durationMs": None,
        "jobId": None,
        "stepIndex": None,
    }


@pytest.mark.feature("PRO-01", "PRO-09")
def test_defaults_that_are_not_none_are_always_written() -> None:
    ack = p.RegisterAck(agent_id="a", labels=["kici:os:linux"])
    assert _wire(ack) == {
        "type": "register.ack",
        "agentId": "a",
        "labels": ["kici:os:linux"],
        "scalerManaged": False,
    }
    request = p.AgentApiRequest(request_id="q", method="infrastructure.list")
    assert _wire(request)["params"] == {}


@pytest.mark.feature("PRO-01", "PRO-02")
def test_optional_fields_accept_absent_or_null() -> None:
    absent = p.decode(p.Direction.ORCH_TO_PLATFORM, '{"type":"webhook.ack","messageId":"m","deliveryId":"d"}')
    null = p.decode(
        p.Direction.ORCH_TO_PLATFORM,
        '{"type":"webhook.ack","messageId":"m","deliveryId":"d","result":null,"reason":null}',
    )
    assert absent == null == p.WebhookAck(message_id="m", delivery_id="d")
    assert _wire(absent)["reason"] is None
    assert "result" not in _wire(absent)


@pytest.mark.feature("PRO-01", "PRO-02")
def test_unknown_extra_keys_are_ignored() -> None:
    decoded = p.decode(p.Direction.AGENT_TO_ORCH, _job_ack(futureField={"x": 1}, another=None))
    assert decoded == p.JobAck(message_id="m", run_id="r", job_id="j", timestamp=1700000000000)


@pytest.mark.feature("PRO-01", "PRO-09")
def test_agent_register_with_in_flight_jobs_and_properties() -> None:
    text = json.dumps(
        {
            "type": "agent.register",
            "messageId": "m",
            "agentId": "host-1a2b3c4d",
            "labels": ["gpu"],
            "inFlightJobs": [{"jobId": "j1", "runId": "r1"}],
            "properties": {"rack": "b2", "cores": 8, "ratio": 0.5, "ssd": True},
            "pythonVersion": "3.11.7",
            "runningAsUid": 1000,
        }
    )
    register = p.decode(p.Direction.AGENT_TO_ORCH, text)
    assert isinstance(register, p.AgentRegister)
    assert register.in_flight_jobs == [p.InFlightJob(job_id="j1", run_id="r1")]
    assert register.properties == {"rack": "b2", "cores": 8, "ratio": 0.5, "ssd": True}
    assert register.concurrency == 1
    bad = json.loads(text)
    bad["properties"] = {"rack": None}
    assert _decode_error(p.Direction.AGENT_TO_ORCH, json.dumps(bad)).kind == p.DecodeErrorKind.INVALID


@pytest.mark.feature("PRO-01", "PRO-09")
def test_register_ack_pending_dispatch_round_trips() -> None:
    ack = p.RegisterAck(agent_id="a", labels=[], scaler_managed=True, pending_dispatch=True)
    assert _wire(ack)["pendingDispatch"] is True
    assert p.decode(p.Direction.ORCH_TO_AGENT, p.encode(ack)) == ack


@pytest.mark.feature("PRO-01", "PRO-11")
def test_job_heartbeat_has_no_message_id() -> None:
    beat = p.JobHeartbeat(run_id="r", job_id="j", timestamp=3)
    assert _wire(beat) == {"type": "job.heartbeat", "runId": "r", "jobId": "j", "timestamp": 3}


@pytest.mark.feature("PRO-01")
def test_metric_entry_type_key() -> None:
    entry = p.MetricEntry(name="jobs", metric_type=p.MetricType.UP_DOWN_COUNTER, value=2)
    metrics = p.AgentMetrics(message_id="m", agent_id="a", metrics=[entry], timestamp=1)
    assert _wire(metrics)["metrics"] == [{"name": "jobs", "type": "upDownCounter", "value": 2}]


# --- strictness ----------------------------------------------------------------------------


@pytest.mark.feature("PRO-01")
@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"timestamp": "1700000000000"}, "timestamp"),
        ({"timestamp": True}, "timestamp"),
        ({"timestamp": 1.5}, "timestamp"),
        ({"messageId": 7}, "message_id"),
        ({"messageId": None}, "message_id"),
        ({"runId": ["r"]}, "run_id"),
    ],
)
def test_scalars_are_not_coerced(changes: dict[str, Any], where: str) -> None:
    error = _decode_error(p.Direction.AGENT_TO_ORCH, _job_ack(**changes))
    assert error.kind == p.DecodeErrorKind.INVALID
    assert error.type == "job.ack"
    assert where in error.detail


@pytest.mark.feature("PRO-01")
def test_missing_required_field_is_invalid() -> None:
    wire = json.loads(_job_ack())
    del wire["jobId"]
    error = _decode_error(p.Direction.AGENT_TO_ORCH, json.dumps(wire))
    assert error.kind == p.DecodeErrorKind.INVALID
    assert "job_id" in error.detail


@pytest.mark.feature("PRO-01", "PRO-09")
@pytest.mark.parametrize("labels", ["gpu", {"0": "gpu"}, None, [1]])
def test_a_string_is_not_a_list(labels: Any) -> None:
    text = json.dumps({"type": "register.ack", "agentId": "a", "labels": labels})
    assert _decode_error(p.Direction.ORCH_TO_AGENT, text).kind == p.DecodeErrorKind.INVALID


@pytest.mark.feature("PRO-01")
@pytest.mark.parametrize("auth", [None, [], "basic", 3])
def test_null_or_wrong_json_type_where_an_object_is_expected(auth: Any) -> None:
    text = json.dumps({"type": "job.context", "runId": "r", "jobId": "j", "context": auth})
    assert _decode_error(p.Direction.AGENT_TO_ORCH, text).kind == p.DecodeErrorKind.INVALID


@pytest.mark.feature("PRO-01", "PRO-11")
def test_enums_are_checked_by_value() -> None:
    text = json.dumps(
        {
            "type": "job.status",
            "messageId": "m",
            "runId": "r",
            "jobId": "j",
            "state": "exploded",
            "timestamp": 1,
        }
    )
    assert _decode_error(p.Direction.AGENT_TO_ORCH, text).kind == p.DecodeErrorKind.INVALID
    decoded = p.decode(p.Direction.AGENT_TO_ORCH, text.replace("exploded", "timed_out_stale"))
    assert isinstance(decoded, p.JobStatus)
    assert decoded.state is p.JobState.TIMED_OUT_STALE


@pytest.mark.feature("PRO-01", "PRO-02")
@pytest.mark.parametrize("version", [0, -1, 1.0, "1", True])
def test_protocol_version_must_be_a_positive_int(version: Any) -> None:
    text = json.dumps({"type": "auth.request", "token": "kat_x", "protocolVersion": version})
    assert _decode_error(p.Direction.AGENT_TO_ORCH, text).kind == p.DecodeErrorKind.INVALID


@pytest.mark.feature("PRO-01")
def test_empty_token_is_invalid() -> None:
    text = json.dumps({"type": "auth.request", "token": "", "protocolVersion": 1})
    assert _decode_error(p.Direction.ORCH_TO_PLATFORM, text).kind == p.DecodeErrorKind.INVALID


@pytest.mark.feature("PRO-01", "PRO-11", "EXE-10")
def test_a_log_chunk_step_index_is_a_step_or_the_prepare_bucket_minus_1() -> None:
    def chunk(step_index: int) -> str:
        fields = {"messageId": "m", "runId": "r", "jobId": "j", "lines": [], "timestamp": 1}
        return json.dumps({"type": "log.chunk", **fields, "stepIndex": step_index})

    prepare = p.decode(p.Direction.AGENT_TO_ORCH, chunk(-1))
    assert isinstance(prepare, p.LogChunk)
    assert prepare.step_index == -1
    assert p.decode(p.Direction.ORCH_TO_PLATFORM, chunk(-1)) == prepare
    assert _decode_error(p.Direction.AGENT_TO_ORCH, chunk(-2)).kind == p.DecodeErrorKind.INVALID


# --- bad input never escapes as another exception -------------------------------------------


@pytest.mark.feature("PRO-01")
@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "NaN",
        '{"type":"heartbeat","timestamp":NaN}',
        '{"type":"heartbeat","timestamp":Infinity}',
        '{"type":"heartbeat","timestamp":1e400}',
        '{"type":"heartbeat","timestamp":' + "9" * 5000 + "}",
        "[" * 100_000 + "]" * 100_000,
        '{"type":"job.status","data":' + '{"a":' * 50_000 + "1" + "}" * 50_000 + "}",
        '{"type":"heartbeat","timestamp":1,"x":"\ud800"}',
        '{"type":"heartbeat","timestamp":1,"x":"\\udc00"}',
        '{"type":"heartbeat","timestamp":1,"\\ud83d":1}',
        '{"type":"heartbeat","timestamp":1} trailing',
    ],
)
def test_malformed_text_raises_bad_json(text: str) -> None:
    assert _decode_error(p.Direction.AGENT_TO_ORCH, text).kind == p.DecodeErrorKind.BAD_JSON


@pytest.mark.feature("PRO-01")
def test_escaped_surrogate_pairs_are_fine() -> None:
    text = '{"type":"agent.log","messageId":"m","agentId":"a","lines":["\\ud83d\\ude00 done"],"timestamp":1}'
    log = p.decode(p.Direction.AGENT_TO_ORCH, text)
    assert isinstance(log, p.AgentLog)
    assert log.lines == ["😀 done"]
    assert "😀" in p.encode(log)


@pytest.mark.feature("PRO-01")
def test_non_text_frames_are_bad_json() -> None:
    frame: Any = b'{"type":"heartbeat","timestamp":1}'
    assert _decode_error(p.Direction.AGENT_TO_ORCH, frame).kind == p.DecodeErrorKind.BAD_JSON


@pytest.mark.feature("PRO-01")
@pytest.mark.parametrize("text", ["null", "[]", "1", '"heartbeat"', "{}", '{"type":null}', '{"type":5}'])
def test_not_a_typed_object_is_invalid(text: str) -> None:
    error = _decode_error(p.Direction.AGENT_TO_ORCH, text)
    assert error.kind == p.DecodeErrorKind.INVALID
    assert error.type is None


@pytest.mark.feature("PRO-01")
def test_unknown_type_reports_type_and_request_id() -> None:
    error = _decode_error(p.Direction.PLATFORM_TO_ORCH, '{"type":"dashboard.brand.new","requestId":"q1"}')
    assert error.kind == p.DecodeErrorKind.UNKNOWN_TYPE
    assert (error.type, error.request_id) == ("dashboard.brand.new", "q1")


@pytest.mark.feature("PRO-01", "PRO-28")
def test_invalid_dashboard_request_keeps_request_id_for_the_error_frame() -> None:
    text = json.dumps(
        {"type": "run.cancel.request", "requestId": "q2", "actor": {"type": "martian"}, "runId": "r"}
    )
    error = _decode_error(p.Direction.PLATFORM_TO_ORCH, text)
    assert (error.kind, error.type, error.request_id) == (
        p.DecodeErrorKind.INVALID,
        "run.cancel.request",
        "q2",
    )


@pytest.mark.feature("PRO-01", "PRO-04")
def test_frames_above_25_mib_are_refused() -> None:
    assert p.MAX_PAYLOAD_BYTES == 25 * 1024 * 1024 == 26_214_400
    huge = '{"type":"heartbeat","timestamp":1,"pad":"' + "x" * p.MAX_PAYLOAD_BYTES + '"}'
    assert _decode_error(p.Direction.AGENT_TO_ORCH, huge).kind == p.DecodeErrorKind.INVALID


@pytest.mark.feature("PRO-01")
def test_encode_refuses_non_finite_numbers_in_free_form_data() -> None:
    event = p.ExecutionEvent(
        message_id="m", run_id="r", event=p.ExecutionEventKind.STARTED, data={"x": float("nan")}, timestamp=1
    )
    with pytest.raises(p.EncodeError):
        p.encode(event)


# --- heartbeat fast path -------------------------------------------------------------------


@pytest.mark.feature("PRO-01", "PRO-11")
def test_heartbeat_fast_path() -> None:
    assert p.decode(p.Direction.AGENT_TO_ORCH, '{"type":"heartbeat","timestamp":42}') == p.Heartbeat(
        timestamp=42
    )
    assert p.decode(p.Direction.ORCH_TO_PLATFORM, '{"type":"heartbeat","timestamp":42.9}') == p.Heartbeat(
        timestamp=42
    )
    for bad in (
        '{"type":"heartbeat"}',
        '{"type":"heartbeat","timestamp":"42"}',
        '{"type":"heartbeat","timestamp":true}',
    ):
        error = _decode_error(p.Direction.AGENT_TO_ORCH, bad)
        assert (error.kind, error.type) == (p.DecodeErrorKind.INVALID, "heartbeat")
    assert _decode_error(p.Direction.ORCH_TO_AGENT, '{"type":"heartbeat","timestamp":1}').kind == (
        p.DecodeErrorKind.UNKNOWN_TYPE
    )


# --- same type, different layers ------------------------------------------------------------


@pytest.mark.feature("PRO-01", "PRO-02", "PRO-30")
def test_each_layer_has_its_own_auth_request() -> None:
    text = '{"type":"auth.request","token":"t","protocolVersion":1,"capabilities":{"orchRole":"worker"}}'
    upstream = p.decode(p.Direction.ORCH_TO_PLATFORM, text)
    agent = p.decode(p.Direction.AGENT_TO_ORCH, text)
    browser = p.decode(p.Direction.BROWSER_TO_PLATFORM, text)
    assert isinstance(upstream, p.AuthRequest)
    assert upstream.capabilities == p.OrchCapabilities(orch_role=p.OrchRole.WORKER)
    assert agent == p.AgentAuthRequest(token="t", protocol_version=1)
    assert browser == p.BrowserAuthRequest(token="t")


@pytest.mark.feature("PRO-01", "PRO-30")
def test_browser_job_status_is_not_the_agent_job_status() -> None:
    text = json.dumps(
        {
            "type": "job.status",
            "runId": "r",
            "jobId": "j",
            "jobName": "build",
            "status": "running",
            "durationMs": 3,
        }
    )
    status = p.decode(p.Direction.PLATFORM_TO_BROWSER, text)
    assert status == p.BrowserJobStatus(
        run_id="r", job_id="j", job_name="build", status=p.JobState.RUNNING, extra={"durationMs": 3}
    )
    assert _decode_error(p.Direction.AGENT_TO_ORCH, text).kind == p.DecodeErrorKind.INVALID


@pytest.mark.feature("PRO-01")
def test_direction_tables_match_the_static_unions() -> None:
    static = {
        p.Direction.AGENT_TO_ORCH: p.AgentToOrch,
        p.Direction.ORCH_TO_AGENT: p.OrchToAgent,
        p.Direction.PEER: p.PeerMsg,
        p.Direction.BROWSER_TO_PLATFORM: p.BrowserToPlatform,
        p.Direction.PLATFORM_TO_BROWSER: p.PlatformToBrowser,
        p.Direction.PLATFORM_TO_ORCH: p.PlatformToOrch,
        p.Direction.ORCH_TO_PLATFORM: p.OrchToPlatform,
        p.Direction.DASHBOARD_REQ: p.DashboardReq,
        p.Direction.DASHBOARD_RESP: p.DashboardResp,
    }
    for direction, union in static.items():
        arms = get_args(union)
        assert all(issubclass(cls, arms) for cls in p.MEMBERS[direction]), direction
        generic = (p.GenericDashboardRequest, p.GenericDashboardResponse, p.DashboardErrorFrame)
        assert {arm for arm in arms if arm not in generic} <= set(p.MEMBERS[direction]), direction
        assert p.types_of(direction) == {cls.TYPE for cls in p.MEMBERS[direction]}


@pytest.mark.feature("PRO-01")
def test_the_converter_structures_the_tagged_unions() -> None:
    union = get_args(p.AgentToOrch)
    obj = json.loads(_job_ack())
    assert p.CONVERTER.structure(obj, p.AgentToOrch) == p.JobAck(
        message_id="m", run_id="r", job_id="j", timestamp=1700000000000
    )
    assert len(union) == len(p.AGENT_TO_ORCH)


# --- invariants of individual messages ------------------------------------------------------


def _dispatch(**changes: Any) -> p.JobDispatch:
    fields: dict[str, Any] = {
        "message_id": "m",
        "run_id": "r",
        "job_id": "j",
        "repo_url": "https://git.example/r.git",
        "ref": "refs/heads/main",
        "sha": "a" * 40,
        "lock_file_url": "https://orch.example/lock",
        "job_config": {"steps": []},
        "timestamp": 1,
    }
    fields.update(changes)
    return p.JobDispatch(**fields)


@pytest.mark.feature("PRO-01")
def test_dispatch_token_and_source_auth() -> None:
    basic = p.GitAuth(kind=p.GitAuthKind.BASIC, user="x-access-token", secret="tok")
    assert _dispatch(token="tok", source_auth=basic).source_auth == basic
    assert _dispatch(source_auth=p.GitAuth(kind=p.GitAuthKind.SSH, secret="key")).token is None
    assert _dispatch(token="tok").source_auth is None
    with pytest.raises(p.InvalidMessage):
        _dispatch(token="tok", source_auth=p.GitAuth(kind=p.GitAuthKind.BASIC, secret="other"))
    with pytest.raises(p.InvalidMessage):
        _dispatch(token="tok", source_auth=p.GitAuth(kind=p.GitAuthKind.SSH, secret="tok"))


@pytest.mark.feature("PRO-01")
def test_pinned_host_key_policy_needs_known_hosts() -> None:
    with pytest.raises(p.InvalidMessage):
        p.GitAuth(kind=p.GitAuthKind.SSH, secret="k", ssh_host_key_policy=p.SshHostKeyPolicy.PINNED)
    pinned = p.GitAuth(
        kind=p.GitAuthKind.SSH,
        secret="k",
        ssh_host_key_policy=p.SshHostKeyPolicy.PINNED,
        ssh_known_hosts_pem="h",
    )
    assert _wire(_dispatch(workflow_auth=pinned))["workflowAuth"]["sshHostKeyPolicy"] == "pinned"


@pytest.mark.feature("PRO-01", "PRO-22")
def test_orch_metrics_caps() -> None:
    entry = p.MetricEntry(name="n", metric_type=p.MetricType.GAUGE, value=1)
    p.OrchMetrics(message_id="m" * 128, metrics=[entry] * 2000, timestamp=1)
    with pytest.raises(p.InvalidMessage):
        p.OrchMetrics(message_id="m" * 129, metrics=[], timestamp=1)
    with pytest.raises(p.InvalidMessage):
        p.OrchMetrics(message_id="m", metrics=[entry] * 2001, timestamp=1)
    text = json.dumps(
        {
            "type": "orch.metrics",
            "messageId": "m",
            "metrics": [{"name": "n", "type": "gauge"}] * 2001,
            "timestamp": 1,
        }
    )
    assert _decode_error(p.Direction.ORCH_TO_PLATFORM, text).kind == p.DecodeErrorKind.INVALID


@pytest.mark.feature("PRO-01", "PRO-22")
def test_held_appears_only_in_snapshots() -> None:
    with pytest.raises(p.InvalidMessage):
        p.ExecutionStatus(
            message_id="m", run_id="r", workflow_name="ci", status=p.RunState.HELD, started_at=1, timestamp=2
        )
    snapshot = p.RunSnapshot(
        run_id="r", workflow_name="ci", status=p.RunState.HELD, started_at=1, job_count=0, jobs=[]
    )
    replay = p.StateReplay(message_id="m", runs=[snapshot], timestamp=3)
    assert p.decode(p.Direction.ORCH_TO_PLATFORM, p.encode(replay)) == replay


@pytest.mark.feature("PRO-01", "PRO-21")
def test_webhook_relay_limits() -> None:
    start = {
        "type": "webhook.relay.start",
        "messageId": "m",
        "routingKey": "rk",
        "deliveryId": "d",
        "event": "push",
        "headers": {"x-hub-signature-256": "sha256=00"},
        "totalSize": p.MAX_PAYLOAD_BYTES,
        "chunkCount": 1,
    }
    relay = p.decode(p.Direction.PLATFORM_TO_ORCH, json.dumps(start))
    assert isinstance(relay, p.WebhookRelayStart)
    assert relay.action is None
    assert _wire(relay)["clientIp"] is None
    for bad in ({"totalSize": p.MAX_PAYLOAD_BYTES + 1}, {"totalSize": -1}, {"chunkCount": 0}):
        text = json.dumps({**start, **bad})
        assert _decode_error(p.Direction.PLATFORM_TO_ORCH, text).kind == p.DecodeErrorKind.INVALID
    assert _decode_error(p.Direction.PLATFORM_TO_ORCH, '{"type":"webhook.relay","payload":{}}').kind == (
        p.DecodeErrorKind.UNKNOWN_TYPE
    )


@pytest.mark.feature("PRO-01")
def test_exactly_one_of_pairs() -> None:
    with pytest.raises(p.InvalidMessage):
        p.PeerAuthRequest(instance_id="i", protocol_version=1)
    with pytest.raises(p.InvalidMessage):
        p.PeerAuthRequest(instance_id="i", protocol_version=1, token="t", proof="p")
    with pytest.raises(p.InvalidMessage):
        p.ApproverClause()
    with pytest.raises(p.InvalidMessage):
        p.ApproverClause(team="leads", user="cto")
    assert _wire(p.ApproverClause(team="leads")) == {"team": "leads"}


@pytest.mark.feature("PRO-01")
def test_job_progress_state_follows_kind() -> None:
    fields: dict[str, Any] = {
        "run_id": "r",
        "job_id": "j",
        "job_name": "b",
        "step_index": 0,
        "step_name": "s",
        "timestamp": 1,
    }
    p.JobProgress(kind=p.ProgressKind.JOB, state="timed_out_stale", **fields)
    p.JobProgress(kind=p.ProgressKind.STEP, state="running", **fields)
    with pytest.raises(p.InvalidMessage):
        p.JobProgress(kind=p.ProgressKind.STEP, state="queued", **fields)


@pytest.mark.feature("PRO-01")
def test_peer_cache_type_accepts_both_spellings() -> None:
    base = {
        "type": "peer.cache.upload.request",
        "messageId": "m",
        "runId": "r",
        "jobId": "j",
        "hash": "h",
        "sizeBytes": 1,
    }
    for kind in ("bundle", "source", "deps"):
        decoded = p.decode(p.Direction.PEER, json.dumps({**base, "cacheType": kind}))
        assert isinstance(decoded, p.PeerCacheUploadRequest)


@pytest.mark.feature("PRO-01")
def test_provenance_digest_is_lowercase_hex() -> None:
    p.ProvenanceUploadRequest(message_id="m", job_id="j", subject_digest="ab01")
    with pytest.raises(p.InvalidMessage):
        p.ProvenanceUploadRequest(message_id="m", job_id="j", subject_digest="AB01")


@pytest.mark.feature("PRO-01", "PRO-22")
def test_cluster_id_is_a_uuid() -> None:
    p.SourceRegister(message_id="m", sources=[], cluster_id="0c2f7a1e-8e1b-4f5d-9b6e-2a7d4c1e9f03")
    with pytest.raises(p.InvalidMessage):
        p.SourceRegister(message_id="m", sources=[], cluster_id="cluster-1")


# --- dashboard proxy and test relay ----------------------------------------------------------


@pytest.mark.feature("PRO-01", "PRO-28")
def test_actor_principal_is_tagged_by_type() -> None:
    operator = p.ActorPlatformOperator(sub="staff", reason="ticket 42")
    request = p.RunCancelRequest(request_id="q", actor=operator, run_id="r", force=True)
    wire = _wire(request)
    assert wire["actor"] == {"type": "platform_operator", "sub": "staff", "reason": "ticket 42"}
    assert p.decode(p.Direction.PLATFORM_TO_ORCH, p.encode(request)) == request
    with pytest.raises(p.InvalidMessage):
        p.ActorPlatformOperator(sub="staff", reason="why")
    user = p.ActorUser(sub="u", agent=p.PatAgent(pat_id="pat1", label="laptop"))
    assert _wire(p.RunCancelRequest(request_id="q", actor=user, run_id="r"))["actor"]["agent"] == {
        "patId": "pat1",
        "label": "laptop",
    }


@pytest.mark.feature("PRO-01", "PRO-28")
def test_generic_dashboard_request_keeps_its_other_keys() -> None:
    text = json.dumps(
        {
            "type": "dashboard.environments.variables.set",
            "requestId": "q",
            "actor": {"type": "system", "component": "cron"},
            "environment": "prod",
            "variables": {"A": "1"},
        }
    )
    request = p.decode(p.Direction.DASHBOARD_REQ, text)
    assert isinstance(request, p.GenericDashboardRequest)
    assert type(request).__name__ == "DashboardEnvironmentsVariablesSetRequest"
    assert request.actor == p.ActorSystem(extra={"component": "cron"})
    assert request.params == {"environment": "prod", "variables": {"A": "1"}}
    assert json.loads(p.encode(request)) == json.loads(text)
    cls = p.DASHBOARD_REQUEST_CLASSES["dashboard.environments.variables.set"]
    with pytest.raises(p.InvalidMessage):
        cls(request_id="q", actor=p.ActorServiceAccount(id="sa"), params={"requestId": "clash"})


@pytest.mark.feature("PRO-28")
def test_response_types_of_requests() -> None:
    assert p.response_type_for("dashboard.runs.list") == "dashboard.runs.list.response"
    assert p.response_type_for("run.rerun.request") == "run.rerun.response"
    assert p.response_type_for("dashboard.registration.disable") == "dashboard.registration.disable.result"
    assert p.response_type_for("dashboard.event-log.payload.stream") is None
    requests = p.DASHBOARD_REQUEST_CLASSES
    responses = p.DASHBOARD_RESPONSE_CLASSES
    for request_type in requests:
        answer = p.response_type_for(request_type)
        assert answer is None or answer in responses, request_type
    assert "dashboard.event-log.payload.chunk" in responses
    assert p.supported_dashboard_requests() == sorted(requests)
    assert len(requests) == len(p.GENERIC_REQUEST_TYPES) + 6


@pytest.mark.feature("PRO-28")
def test_structured_error_frames() -> None:
    known = p.error_response(
        "run.cancel.request", "q", "no such run", p.DashboardErrorCode.INVALID_PAYLOAD, "1.2.0"
    )
    assert isinstance(known, p.RunCancelResponse)
    assert _wire(known) == {
        "type": "run.cancel.response",
        "requestId": "q",
        "error": "no such run",
        "code": "invalid_payload",
        "orchVersion": "1.2.0",
        "requestType": "run.cancel.request",
    }
    unknown = p.error_response(
        "dashboard.future.thing", "q", "nope", p.DashboardErrorCode.UNSUPPORTED_REQUEST_TYPE
    )
    assert isinstance(unknown, p.DashboardErrorFrame)
    assert _wire(unknown)["type"] == "dashboard.future.thing.response"
    assert p.decode(p.Direction.ORCH_TO_PLATFORM, p.encode(unknown)) == unknown
    stream = p.error_response(
        "dashboard.event-log.payload.stream", "q", "bad", p.DashboardErrorCode.INVALID_PAYLOAD
    )
    assert _wire(stream)["type"] == "dashboard.event-log.payload.stream.response"
    with pytest.raises(p.InvalidMessage):
        p.error_response("test.relay.nope", "q", "x", p.DashboardErrorCode.INTERNAL_ERROR)
    mismatched = json.dumps({**_wire(unknown), "requestType": "dashboard.other"})
    assert _decode_error(p.Direction.DASHBOARD_RESP, mismatched).kind == p.DecodeErrorKind.UNKNOWN_TYPE


@pytest.mark.feature("PRO-28")
def test_event_log_payload_chunks() -> None:
    chunk = p.DashboardEventLogPayloadChunk(request_id="q", seq=0, data="aGk=", is_last=False, total_bytes=2)
    assert _wire(chunk) == {
        "type": "dashboard.event-log.payload.chunk",
        "requestId": "q",
        "seq": 0,
        "data": "aGk=",
        "isLast": False,
        "totalBytes": 2,
    }


@pytest.mark.feature("PRO-29")
def test_test_relay_trigger_round_trip() -> None:
    trigger = p.TestRelayTrigger(
        request_id="q",
        actor=p.ActorApiKey(key_id="k", owner_sub="u"),
        routing_key="rk",
        fixture_id="push-main",
        event=p.TestRelayEvent(event_type="push", target_branch="main", payload={"ref": "refs/heads/main"}),
        full_repo=False,
    )
    wire = _wire(trigger)
    assert wire["event"] == {"type": "push", "targetBranch": "main", "payload": {"ref": "refs/heads/main"}}
    assert p.decode(p.Direction.DASHBOARD_REQ, p.encode(trigger)) == trigger
    response = p.TestRelayTriggerResponse(
        request_id="q", run_id="r", status=p.TestRelayStatus.ACCEPTED, job_ids=["j"]
    )
    assert p.decode(p.Direction.DASHBOARD_RESP, p.encode(response)) == response
    with pytest.raises(p.InvalidMessage):
        p.TestRelayCancel(request_id="q", actor=p.ActorServiceAccount(id="sa"))


# --- versions and capabilities ---------------------------------------------------------------


@pytest.mark.feature("PRO-02")
def test_protocol_versions() -> None:
    assert (p.PROTOCOL_VERSION, p.MIN_PROTOCOL_VERSION) == (1, 1)
    assert p.check_protocol_version(1).accepted
    assert p.check_protocol_version(7).accepted
    verdict = p.check_protocol_version(0)
    assert not verdict.accepted
    assert verdict.reason == "Unsupported protocol version"
    assert verdict.close_code == p.CloseCode.PROTOCOL_ERROR == 4005


@pytest.mark.feature("PRO-02")
def test_capabilities_pass_unknown_keys_through() -> None:
    text = json.dumps(
        {
            "type": "orch.capabilities.update",
            "capabilities": {
                "orchRole": "coordinator",
                "dashboardWrites": {"environments.create": False},
                "supportedDashboardRequests": ["dashboard.runs.list"],
                "artifacts": True,
                "logStreaming": "yes",
            },
        }
    )
    update = p.decode(p.Direction.ORCH_TO_PLATFORM, text)
    assert isinstance(update, p.OrchCapabilitiesUpdate)
    caps = update.capabilities
    assert caps.extra == {"artifacts": True, "logStreaming": "yes"}
    assert json.loads(p.encode(update)) == json.loads(text)
    assert p.capability_flag(caps, "artifacts") is True
    assert p.capability_flag(caps, "logStreaming") is False
    assert p.capability_flag(caps, "missing") is False
    assert p.capability_flag(None, "artifacts") is None
    assert not p.dashboard_write_allowed(caps, "environments.create")
    assert p.dashboard_write_allowed(caps, "environments.delete")
    assert p.dashboard_write_allowed(None, "environments.create")
    assert p.dashboard_request_supported(caps, "dashboard.runs.list") is True
    assert p.dashboard_request_supported(caps, "dashboard.diagnostics") is False
    assert p.dashboard_request_supported(p.OrchCapabilities(), "dashboard.diagnostics") is None
    assert p.dashboard_request_supported(None, "dashboard.diagnostics") is None


@pytest.mark.feature("PRO-02")
def test_peer_capabilities_flag() -> None:
    caps = p.PeerCapabilities(s3_log_access=True, extra={"raft": 1})
    assert p.capability_flag(caps, "s3LogAccess") is True
    assert p.capability_flag(caps, "raft") is False
    with pytest.raises(p.InvalidMessage):
        p.PeerCapabilities(s3_log_access=False, extra={"s3LogAccess": True})
