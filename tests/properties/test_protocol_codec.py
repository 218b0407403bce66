"""The wire codec as properties (20-protocol.md §20 invariants 1, 2, 3, 13).

Every message class of every direction is generated from its attrs fields; the tested set
is discovered from the ``Message`` class tree and must equal the union members, so a
class that is defined but left out of its union (or the reverse) fails here.

The ~250 classes are checked in chunks of a few classes per test: one test per class would
pay hypothesis's per-test cost 250 times, one test for all would overflow its example
buffer. Each example of a chunk draws one instance of every class in it.
"""

import json
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from kici.domain import protocol as p
from kici.domain.protocol.base import (
    WireModel,
    is_passthrough,
    is_plain_optional,
    known_wire_keys,
    model_fields,
    wire_key,
)
from tests.strategies.protocol import json_scalars, json_values, models, texts, wire_noise

_DIRECTIONS_OF: dict[type[p.Message], list[p.Direction]] = {}
for _direction, _members in p.MEMBERS.items():
    for _cls in _members:
        _DIRECTIONS_OF.setdefault(_cls, []).append(_direction)
_ALL_MEMBERS = sorted(_DIRECTIONS_OF, key=lambda cls: (cls.TYPE, cls.__name__))

_UPSTREAM_TELEMETRY = frozenset(
    {
        "execution.event",
        "execution.status",
        "step.status.forward",
        "job.status.forward",
        "log.chunk",
        "run.event",
        "job.context",
        "orch.metrics",
        "cache.stats",
    }
)
_AGENT_FEATURES = {
    "PRO-09": frozenset({"agent.register", "register.ack", "config.ack"}),
    "PRO-10": frozenset({"job.ack", "job.reject"}),
    "PRO-11": frozenset(
        {"job.status", "step.status", "log.chunk", "job.heartbeat", "agent.status", "agent.log"}
    ),
}
_AGENT = frozenset({p.Direction.AGENT_TO_ORCH, p.Direction.ORCH_TO_AGENT})
_BROWSER = frozenset({p.Direction.BROWSER_TO_PLATFORM, p.Direction.PLATFORM_TO_BROWSER})
_DASHBOARD = frozenset({p.Direction.DASHBOARD_REQ, p.Direction.DASHBOARD_RESP})


def _features(cls: type[p.Message]) -> frozenset[str]:
    """Besides PRO-01/02, the features whose message shapes ``cls`` carries."""
    directions = set(_DIRECTIONS_OF[cls])
    kind = cls.TYPE
    ids: set[str] = set()
    if directions & _BROWSER:
        ids.add("PRO-30")
    if directions & _DASHBOARD:
        ids.add("PRO-29" if kind.startswith("test.relay.") else "PRO-28")
    if directions & _AGENT:
        ids.update(fid for fid, kinds in _AGENT_FEATURES.items() if kind in kinds)
    if p.Direction.ORCH_TO_PLATFORM in directions and kind in _UPSTREAM_TELEMETRY:
        ids.add("PRO-22")
    if kind.startswith("webhook."):
        ids.add("PRO-21")
    return frozenset(ids)


def _is_generated(cls: type[p.Message]) -> bool:
    return issubclass(cls, (p.GenericDashboardRequest, p.GenericDashboardResponse))


def _chunks(classes: list[type[p.Message]], size: int) -> list[Any]:
    ordered = sorted(classes, key=lambda cls: (sorted(_features(cls)), cls.TYPE, cls.__name__))
    params = []
    for start in range(0, len(ordered), size):
        chunk = tuple(ordered[start : start + size])
        ids = {"PRO-01", "PRO-02"}.union(*(_features(cls) for cls in chunk))
        name = f"{chunk[0].TYPE}..{chunk[-1].TYPE}"
        params.append(pytest.param(chunk, id=name, marks=pytest.mark.feature(*sorted(ids))))
    return params


def _message_tree(root: type[p.Message]) -> set[type[p.Message]]:
    """Every concrete message class (one with a wire TYPE) below ``root``.

    attrs replaces each slotted class by a new one; the discarded original lingers in
    ``__subclasses__`` until collected, and is told apart by lacking its own ``__slots__``.
    """
    found: set[type[p.Message]] = set()
    pending = list(root.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if isinstance(getattr(cls, "TYPE", None), str) and "__slots__" in vars(cls):
            found.add(cls)
    return found


_CONCRETE = _message_tree(p.Message) - {p.DashboardErrorFrame}
_PRECISE_CHUNKS = _chunks([cls for cls in _ALL_MEMBERS if not _is_generated(cls)], 8)
_GENERATED_CHUNKS = _chunks([cls for cls in _ALL_MEMBERS if _is_generated(cls)], 40)
_PER_PRECISE_CHUNK = settings(
    max_examples=max(3, settings.default.max_examples // 8),
    suppress_health_check=[HealthCheck.too_slow],
)
_PER_GENERATED_CHUNK = settings(
    max_examples=max(2, settings.default.max_examples // 20),
    suppress_health_check=[HealthCheck.too_slow],
)
"""The generated dashboard classes share one shape (requestId, actor, passthrough), so a
few examples of each prove their wiring; the shape itself is sampled ~150 times a run."""


def _assert_null_discipline(obj: WireModel, wire: dict[str, Any]) -> None:
    """Plain optionals holding None are absent; nullables are present; nested shapes alike."""
    for field in model_fields(type(obj)):
        if is_passthrough(field):
            continue
        key, value = wire_key(field), getattr(obj, field.name)
        if value is None:
            if is_plain_optional(field):
                assert key not in wire, f"{type(obj).__name__}.{field.name} written as null"
            else:
                assert wire[key] is None
            continue
        assert key in wire
        _assert_nested(value, wire[key])


def _assert_nested(value: Any, wire: Any) -> None:
    if isinstance(value, WireModel):
        _assert_null_discipline(value, wire)
    elif isinstance(value, list):
        for item, item_wire in zip(value, wire, strict=True):
            _assert_nested(item, item_wire)
    elif isinstance(value, dict) and value and isinstance(next(iter(value.values())), WireModel):
        for key, item in value.items():
            _assert_nested(item, wire[key])


def _extra_key(cls: type[p.Message]) -> st.SearchStrategy[str]:
    known = known_wire_keys(cls)
    return texts.filter(lambda key: key not in known)


@pytest.mark.feature("PRO-01")
def test_every_message_class_is_in_a_union_and_tested() -> None:
    assert set(_DIRECTIONS_OF) == _CONCRETE
    chunked = [cls for param in _PRECISE_CHUNKS + _GENERATED_CHUNKS for cls in param.values[0]]
    assert len(chunked) == len(set(chunked))
    assert set(chunked) == _CONCRETE


def _check_round_trip(cls: type[p.Message], data: st.DataObject) -> None:
    note(f"class {cls.__name__}")
    message = data.draw(models(cls))
    text = p.encode(message)
    wire = json.loads(text)
    assert wire["type"] == cls.TYPE
    assert next(iter(wire)) == "type"
    _assert_null_discipline(message, wire)
    for direction in _DIRECTIONS_OF[cls]:
        assert p.decode(direction, text) == message

    extras = data.draw(st.dictionaries(_extra_key(cls), json_scalars, min_size=1, max_size=3))
    decoded = p.decode(_DIRECTIONS_OF[cls][0], json.dumps({**wire, **extras}))
    passthrough = next((f.name for f in model_fields(cls) if is_passthrough(f)), None)
    if passthrough is None:
        assert decoded == message
    else:
        merged = {**getattr(message, passthrough), **extras}
        assert decoded == attrs.evolve(message, **{passthrough: merged})


@pytest.mark.parametrize("chunk", _PRECISE_CHUNKS)
@_PER_PRECISE_CHUNK
@given(data=st.data())
def test_round_trip_every_class(chunk: tuple[type[p.Message], ...], data: st.DataObject) -> None:
    """decode(encode(m)) == m in every direction of m; type first and == TYPE; no null for
    plain optionals; unknown extra keys ignored (or kept, for passthrough objects)."""
    for cls in chunk:
        _check_round_trip(cls, data)


@pytest.mark.parametrize("chunk", _GENERATED_CHUNKS)
@_PER_GENERATED_CHUNK
@given(data=st.data())
def test_round_trip_every_generated_dashboard_class(
    chunk: tuple[type[p.Message], ...], data: st.DataObject
) -> None:
    for cls in chunk:
        _check_round_trip(cls, data)


@pytest.mark.feature("PRO-01", "PRO-28")
@given(frame=models(p.DashboardErrorFrame))
def test_round_trip_dashboard_error_frame(frame: p.DashboardErrorFrame) -> None:
    text = p.encode(frame)
    assert json.loads(text)["type"] == f"{frame.request_type}.response"
    for direction in (p.Direction.DASHBOARD_RESP, p.Direction.ORCH_TO_PLATFORM):
        assert p.decode(direction, text) == frame


_CROSSING = [
    (direction, cls)
    for direction, opposite in p.OPPOSITE.items()
    for cls in p.MEMBERS[direction]
    if cls.TYPE not in p.types_of(opposite)
]


@pytest.mark.feature("PRO-01")
@given(data=st.data(), pick=st.sampled_from(_CROSSING))
def test_opposite_direction_types_are_unknown(data: st.DataObject, pick: tuple[p.Direction, Any]) -> None:
    direction, cls = pick
    text = p.encode(data.draw(models(cls)))
    with pytest.raises(p.DecodeError) as caught:
        p.decode(p.OPPOSITE[direction], text)
    assert caught.value.kind == p.DecodeErrorKind.UNKNOWN_TYPE
    assert caught.value.type == cls.TYPE


_ANY_CHARACTER = (
    st.characters(exclude_categories=())
    | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=())
    | st.sampled_from('{}[]":,\\u0123456789abcdefnulltrue.eE-+ ')
)
"""Any code point, lone surrogates and JSON punctuation made likely."""


def _any_text(max_size: int) -> st.SearchStrategy[str]:
    # st.text() over a one_of alphabet drops the surrogate branch; joining a list keeps it.
    return st.lists(_ANY_CHARACTER, max_size=max_size).map("".join)


def _decode_or_decode_error(direction: p.Direction, text: str) -> None:
    """Decode must either succeed (and then be stable) or raise DecodeError, nothing else."""
    outcome: p.Message | p.DecodeError
    try:
        outcome = p.decode(direction, text)
    except p.DecodeError as error:
        outcome = error
    if isinstance(outcome, p.DecodeError):
        assert outcome.kind in set(p.DecodeErrorKind)
        assert len(outcome.detail) <= 300
    else:
        assert p.decode(direction, p.encode(outcome)) == outcome


@pytest.mark.feature("PRO-01")
@given(direction=st.sampled_from(p.Direction), text=_any_text(60))
def test_arbitrary_text_raises_only_decode_error(direction: p.Direction, text: str) -> None:
    _decode_or_decode_error(direction, text)


@pytest.mark.feature("PRO-01")
@given(
    data=st.data(),
    cls=st.sampled_from(_ALL_MEMBERS),
    position=st.integers(0, 10**6),
    replacement=_any_text(3),
    cut=st.booleans(),
)
def test_mangled_frames_raise_only_decode_error(
    data: st.DataObject, cls: type[p.Message], position: int, replacement: str, cut: bool
) -> None:
    """A real frame truncated, or with a few characters replaced (surrogates included)."""
    text = p.encode(data.draw(models(cls)))
    at = position % (len(text) + 1)
    mangled = text[:at] if cut else text[:at] + replacement + text[at + len(replacement) :]
    _decode_or_decode_error(_DIRECTIONS_OF[cls][0], mangled)


@pytest.mark.feature("PRO-01")
@given(direction=st.sampled_from(p.Direction), value=json_values)
def test_arbitrary_json_raises_only_decode_error(direction: p.Direction, value: Any) -> None:
    _decode_or_decode_error(direction, json.dumps(value))


@pytest.mark.feature("PRO-01", "PRO-02")
@given(data=st.data(), cls=st.sampled_from(_ALL_MEMBERS))
def test_typed_noise_raises_only_decode_error(data: st.DataObject, cls: type[p.Message]) -> None:
    """Right ``type``, wrong everything else: nulls, wrong JSON types, missing keys."""
    noise = data.draw(wire_noise(cls))
    direction = _DIRECTIONS_OF[cls][0]
    _decode_or_decode_error(direction, json.dumps(noise))


def _dispatch_wire(token: str | None, auth: dict[str, Any] | None) -> str:
    wire: dict[str, Any] = {
        "type": "job.dispatch",
        "messageId": "m",
        "runId": "r",
        "jobId": "j",
        "repoUrl": "https://git.example/r.git",
        "ref": "main",
        "sha": "0" * 40,
        "lockFileUrl": "https://orch.example/lock",
        "jobConfig": {},
        "timestamp": 1,
    }
    if token is not None:
        wire["token"] = token
    if auth is not None:
        wire["sourceAuth"] = auth
    return json.dumps(wire)


@pytest.mark.feature("PRO-01")
@given(
    token=st.none() | st.text(min_size=1, max_size=8),
    kind=st.sampled_from(p.GitAuthKind),
    secret=st.text(max_size=8),
    with_auth=st.booleans(),
)
def test_dispatch_token_must_match_source_auth(
    token: str | None, kind: p.GitAuthKind, secret: str, with_auth: bool
) -> None:
    auth = {"kind": kind.value, "secret": secret} if with_auth else None
    valid = token is None or auth is None or (kind == p.GitAuthKind.BASIC and secret == token)
    text = _dispatch_wire(token, auth)
    if valid:
        message = p.decode(p.Direction.ORCH_TO_AGENT, text)
        assert isinstance(message, p.JobDispatch)
        assert message.token == token
    else:
        with pytest.raises(p.DecodeError) as caught:
            p.decode(p.Direction.ORCH_TO_AGENT, text)
        assert caught.value.kind == p.DecodeErrorKind.INVALID
        assert caught.value.type == "job.dispatch"
        with pytest.raises(p.InvalidMessage):
            attrs.evolve(
                p.decode(p.Direction.ORCH_TO_AGENT, _dispatch_wire(None, auth)),
                token=token,
            )


@pytest.mark.feature("PRO-03")
@given(reason=_any_text(200))
def test_close_reason_truncation(reason: str) -> None:
    cut = p.truncate_close_reason(reason)
    assert reason.startswith(cut)
    encoded = cut.encode("utf-8")
    assert len(encoded) <= p.MAX_CLOSE_REASON_BYTES
    if cut != reason:
        following = reason[len(cut)]
        grown = (cut + following).encode("utf-8", "surrogatepass")
        assert len(grown) > p.MAX_CLOSE_REASON_BYTES or 0xD800 <= ord(following) <= 0xDFFF


@pytest.mark.feature("PRO-02")
@given(version=st.integers(-5, 50), minimum=st.integers(1, 20))
def test_version_verdict(version: int, minimum: int) -> None:
    verdict = p.check_protocol_version(version, minimum)
    assert verdict.accepted == (version >= minimum)
    if not verdict.accepted:
        assert verdict.reason == p.UNSUPPORTED_VERSION_REASON
        assert verdict.close_code == p.CloseCode.PROTOCOL_ERROR


@pytest.mark.feature("PRO-02")
@given(key=st.text(min_size=1, max_size=10), value=json_values)
def test_capability_flag_counts_only_literal_true(key: str, value: Any) -> None:
    known = known_wire_keys(p.OrchCapabilities)
    manifest = p.OrchCapabilities(extra={} if key in known else {key: value})
    expected = key not in known and value is True
    assert p.capability_flag(manifest, key) is expected
    assert p.capability_flag(None, key) is None
