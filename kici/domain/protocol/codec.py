"""The one converter between wire text and message objects (20-protocol.md §2-§3).

``decode`` is a trust boundary: it sees whatever a remote peer, a compromised Platform or a
fuzzer sends. It therefore raises exactly one exception type, `DecodeError`, whose
``kind`` tells the caller which §2 reaction applies:
- ``BAD_JSON``: not a JSON text (syntax, NaN/Infinity, numbers beyond float range or
  Python's int-digit limit, nesting beyond the parser's depth, lone UTF-16 surrogates
  that cannot be UTF-8);
- ``UNKNOWN_TYPE``: a JSON object whose ``type`` the direction's union does not contain
  (the other direction's types included: a receiver parses only its own union);
- ``INVALID``: anything else (not an object, no string ``type``, wrong field types,
  null for a required field, a broken range/cap/invariant, a frame above 25 MiB).
The ``request_id`` of the error carries a string ``requestId`` when the frame had one, so
the orchestrator can answer a malformed dashboard request with a structured error.

Decoding is strict where cattrs is lenient by default: strings, integers, booleans, arrays
and objects must already be of that JSON type (``"5"`` is not an int, ``true`` is not a
number, a string is not a list). Numbers typed ``n`` accept ints and floats unchanged.

Hooks are generated once per class with ``make_dict_(un)structure_fn``: wire keys renamed
to camelCase (plus the explicit `base.wire` keys), plain optionals omitted when ``None``,
nullable fields always written, passthrough dicts merged flat. Lists and objects of plain
JSON values are passed through without copying in both directions.
"""

import functools
import json
import math
import operator
import re
import types
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, Final, Literal, Union, cast, get_args, get_origin, overload

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.strategies import configure_tagged_union

from kici.domain.protocol.agent import AGENT_TO_ORCH, ORCH_TO_AGENT, AgentToOrch, OrchToAgent, PropertyValue
from kici.domain.protocol.base import (
    MAX_PAYLOAD_BYTES,
    Message,
    Tagged,
    WireModel,
    is_passthrough,
    is_plain_optional,
    known_wire_keys,
    model_fields,
    wire_key,
)
from kici.domain.protocol.browser import (
    BROWSER_TO_PLATFORM,
    PLATFORM_TO_BROWSER,
    BrowserToPlatform,
    PlatformToBrowser,
)
from kici.domain.protocol.common import Heartbeat
from kici.domain.protocol.dashboard import (
    DASHBOARD_REQ,
    DASHBOARD_RESP,
    ActorPrincipal,
    DashboardErrorFrame,
    DashboardReq,
    DashboardResp,
)
from kici.domain.protocol.peer import PEER, PeerMsg
from kici.domain.protocol.platform import (
    ORCH_TO_PLATFORM,
    PLATFORM_TO_ORCH,
    OrchToPlatform,
    PlatformToOrch,
)


class Direction(StrEnum):
    """Which union a receiver parses: the sender -> receiver of one link."""

    AGENT_TO_ORCH = "agent-to-orch"
    ORCH_TO_AGENT = "orch-to-agent"
    ORCH_TO_PLATFORM = "orch-to-platform"
    PLATFORM_TO_ORCH = "platform-to-orch"
    PEER = "peer"
    DASHBOARD_REQ = "dashboard-req"
    DASHBOARD_RESP = "dashboard-resp"
    BROWSER_TO_PLATFORM = "browser-to-platform"
    PLATFORM_TO_BROWSER = "platform-to-browser"


MEMBERS: Final[Mapping[Direction, tuple[type[Message], ...]]] = {
    Direction.AGENT_TO_ORCH: AGENT_TO_ORCH,
    Direction.ORCH_TO_AGENT: ORCH_TO_AGENT,
    Direction.ORCH_TO_PLATFORM: ORCH_TO_PLATFORM,
    Direction.PLATFORM_TO_ORCH: PLATFORM_TO_ORCH,
    Direction.PEER: PEER,
    Direction.DASHBOARD_REQ: DASHBOARD_REQ,
    Direction.DASHBOARD_RESP: DASHBOARD_RESP,
    Direction.BROWSER_TO_PLATFORM: BROWSER_TO_PLATFORM,
    Direction.PLATFORM_TO_BROWSER: PLATFORM_TO_BROWSER,
}
"""The message classes of each direction's union (generated dashboard classes included)."""

OPPOSITE: Final[Mapping[Direction, Direction]] = {
    Direction.AGENT_TO_ORCH: Direction.ORCH_TO_AGENT,
    Direction.ORCH_TO_AGENT: Direction.AGENT_TO_ORCH,
    Direction.ORCH_TO_PLATFORM: Direction.PLATFORM_TO_ORCH,
    Direction.PLATFORM_TO_ORCH: Direction.ORCH_TO_PLATFORM,
    Direction.DASHBOARD_REQ: Direction.DASHBOARD_RESP,
    Direction.DASHBOARD_RESP: Direction.DASHBOARD_REQ,
    Direction.BROWSER_TO_PLATFORM: Direction.PLATFORM_TO_BROWSER,
    Direction.PLATFORM_TO_BROWSER: Direction.BROWSER_TO_PLATFORM,
}
"""The reverse link of each one-way direction (the peer union is bidirectional)."""


class DecodeErrorKind(StrEnum):
    BAD_JSON = "bad_json"
    UNKNOWN_TYPE = "unknown_type"
    INVALID = "invalid"


class DecodeError(Exception):
    """The only exception `decode` raises. ``type`` is the frame's string ``type`` if it had one."""

    def __init__(
        self, kind: DecodeErrorKind, type_: str | None, detail: str, request_id: str | None = None
    ) -> None:
        super().__init__(f"{kind.value}: {detail}")
        self.kind = kind
        self.type = type_
        self.detail = detail
        self.request_id = request_id


class EncodeError(ValueError):
    """A message holding a value JSON cannot carry (NaN or infinity inside free-form data)."""


_DETAIL_LIMIT: Final = 300
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE: Final = re.compile(r"\\u[dD][89a-fA-F]")
_PLAIN_SCALARS: Final = frozenset({str, int, float, bool, Any, PropertyValue})


class _NotJson(ValueError):
    pass


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJson(f"number {text[:40]} is out of range")
    return value


def _reject_constant(name: str) -> float:
    raise _NotJson(f"{name} is not JSON")


_DECODER: Final = json.JSONDecoder(parse_float=_finite_float, parse_constant=_reject_constant)
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# --- strict scalar hooks -------------------------------------------------------------------


def _structure_str(value: Any, _: Any) -> str:
    if value.__class__ is not str:
        raise TypeError("expected a string")
    return value


def _structure_int(value: Any, _: Any) -> int:
    if value.__class__ is not int:
        raise TypeError("expected an integer")
    return value


def _structure_number(value: Any, _: Any) -> float:
    if value.__class__ is not int and value.__class__ is not float:
        raise TypeError("expected a number")
    return value


def _structure_bool(value: Any, _: Any) -> bool:
    if value.__class__ is not bool:
        raise TypeError("expected a boolean")
    return value


def _structure_enum(value: Any, enum_type: type[StrEnum]) -> StrEnum:
    if value.__class__ is not str:
        raise TypeError(f"expected a {enum_type.__name__} string")
    return enum_type(value)


def _structure_property(value: Any, _: Any) -> PropertyValue:
    if value.__class__ not in (str, int, float, bool):
        raise TypeError("expected a string, number or boolean")
    return value


def _identity(value: Any) -> Any:
    return value


def _is_plain(tp: Any) -> bool:
    """Whether values of ``tp`` are JSON-ready as they are (no model inside)."""
    if tp in _PLAIN_SCALARS or tp is type(None):
        return True
    if isinstance(tp, type):
        return issubclass(tp, StrEnum)
    if get_origin(tp) in (list, dict, types.UnionType, Union):
        return all(_is_plain(arg) for arg in get_args(tp))
    return False


def _is_plain_union(tp: Any) -> bool:
    return get_origin(tp) in (types.UnionType, Union) and _is_plain(tp)


# --- containers ----------------------------------------------------------------------------


def _is_list(tp: Any) -> bool:
    return get_origin(tp) is list


def _is_dict(tp: Any) -> bool:
    return get_origin(tp) is dict


def _list_structure(tp: Any, conv: cattrs.Converter) -> Callable[[Any, Any], list[Any]]:
    (item,) = get_args(tp)
    if item is Any:

        def structure_any(value: Any, _: Any) -> list[Any]:
            if value.__class__ is not list:
                raise TypeError("expected an array")
            return value

        return structure_any
    hook = conv.get_structure_hook(item)

    def structure(value: Any, _: Any) -> list[Any]:
        if value.__class__ is not list:
            raise TypeError("expected an array")
        return [hook(element, item) for element in value]

    return structure


def _dict_structure(tp: Any, conv: cattrs.Converter) -> Callable[[Any, Any], dict[str, Any]]:
    _key, item = get_args(tp)
    if item is Any:

        def structure_any(value: Any, _: Any) -> dict[str, Any]:
            if value.__class__ is not dict:
                raise TypeError("expected an object")
            return value

        return structure_any
    hook = conv.get_structure_hook(item)

    def structure(value: Any, _: Any) -> dict[str, Any]:
        if value.__class__ is not dict:
            raise TypeError("expected an object")
        return {key: hook(element, item) for key, element in value.items()}

    return structure


def _list_unstructure(tp: Any, conv: cattrs.Converter) -> Callable[[list[Any]], list[Any]]:
    if _is_plain(tp):
        return _identity
    (item,) = get_args(tp)
    hook = conv.get_unstructure_hook(item)
    return lambda value: [hook(element) for element in value]


def _dict_unstructure(tp: Any, conv: cattrs.Converter) -> Callable[[dict[str, Any]], dict[str, Any]]:
    if _is_plain(tp):
        return _identity
    _key, item = get_args(tp)
    hook = conv.get_unstructure_hook(item)
    return lambda value: {key: hook(element) for key, element in value.items()}


# --- wire models ---------------------------------------------------------------------------


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, WireModel) and attrs.has(tp)


def _passthrough_name(cls: type[WireModel]) -> str | None:
    return next((f.name for f in model_fields(cls) if is_passthrough(f)), None)


def _build_unstructure(cls: type[WireModel], conv: cattrs.Converter) -> Callable[[Any], dict[str, Any]]:
    overrides: dict[str, Any] = {}
    for field in model_fields(cls):
        if is_passthrough(field):
            overrides[field.name] = override(omit=True)
        else:
            overrides[field.name] = override(rename=wire_key(field), omit_if_default=is_plain_optional(field))
    body = make_dict_unstructure_fn(cls, conv, **overrides)
    extra = _passthrough_name(cls)
    if not issubclass(cls, Tagged):
        if extra is None:
            return body

        def unstructure_untagged(obj: Any) -> dict[str, Any]:
            out = body(obj)
            out.update(getattr(obj, extra))
            return out

        return unstructure_untagged
    derived = issubclass(cls, Message) and cls.wire_type is not Message.wire_type
    tag = cls.TYPE

    def unstructure(obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"type": obj.wire_type() if derived else tag}
        out.update(body(obj))
        if extra is not None:
            out.update(getattr(obj, extra))
        return out

    return unstructure


def _build_structure(cls: type[WireModel], conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    overrides: dict[str, Any] = {
        f.name: override(omit=True) if is_passthrough(f) else override(rename=wire_key(f))
        for f in model_fields(cls)
    }
    body = make_dict_structure_fn(cls, conv, **overrides)
    extra = _passthrough_name(cls)
    known = known_wire_keys(cls)
    expected = f"expected an object for {cls.__name__}"

    def structure(value: Any, _: Any) -> Any:
        if value.__class__ is not dict:
            raise TypeError(expected)
        obj = body(value, cls)
        if extra is None:
            return obj
        unknown = {key: item for key, item in value.items() if key not in known}
        return attrs.evolve(cast(Any, obj), **{extra: unknown}) if unknown else obj

    return structure


_UNSTRUCTURE_HOOKS: dict[type[WireModel], Callable[[Any], dict[str, Any]]] = {}
_STRUCTURE_HOOKS: dict[type[WireModel], Callable[[Any, Any], Any]] = {}


def _lazy_unstructure(cls: type[WireModel], conv: cattrs.Converter) -> Callable[[Any], dict[str, Any]]:
    """Generate each class's hook once, on first use: ~300 classes would otherwise add ~0.3 s
    to every import, paid even by processes that speak one layer only."""

    def unstructure(obj: Any) -> dict[str, Any]:
        hook = _UNSTRUCTURE_HOOKS.get(cls)
        if hook is None:
            hook = _UNSTRUCTURE_HOOKS[cls] = _build_unstructure(cls, conv)
        return hook(obj)

    return unstructure


def _lazy_structure(cls: type[WireModel], conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    def structure(value: Any, tp: Any) -> Any:
        hook = _STRUCTURE_HOOKS.get(cls)
        if hook is None:
            hook = _STRUCTURE_HOOKS[cls] = _build_structure(cls, conv)
        return hook(value, tp)

    return structure


def _union_of(members: tuple[type[Any], ...]) -> Any:
    return functools.reduce(operator.or_, members)


def _build_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=False, detailed_validation=True)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook(float, _structure_number)
    conv.register_structure_hook(StrEnum, _structure_enum)
    conv.register_structure_hook(PropertyValue, _structure_property)
    conv.register_unstructure_hook_func(lambda tp: tp is Any, _identity)
    conv.register_unstructure_hook_func(_is_plain_union, _identity)
    conv.register_structure_hook_factory(_is_list, _list_structure)
    conv.register_structure_hook_factory(_is_dict, _dict_structure)
    conv.register_unstructure_hook_factory(_is_list, _list_unstructure)
    conv.register_unstructure_hook_factory(_is_dict, _dict_unstructure)
    conv.register_structure_hook_factory(_is_model, _lazy_structure)
    conv.register_unstructure_hook_factory(_is_model, _lazy_unstructure)
    configure_tagged_union(ActorPrincipal, conv, tag_generator=_tag, tag_name="type")
    for members in MEMBERS.values():
        configure_tagged_union(_union_of(members), conv, tag_generator=_tag, tag_name="type")
    return conv


def _tag(cls: type[Any]) -> str:
    return str(cls.TYPE)


def _type_table(members: tuple[type[Message], ...]) -> dict[str, type[Message]]:
    table = {cls.TYPE: cls for cls in members}
    if len(table) != len(members):
        raise TypeError("two classes of one direction share a wire type")
    return table


CONVERTER: Final = _build_converter()
"""The single converter of the wire protocol; its tagged unions are the `MEMBERS`."""

_TABLES: Final = {direction: _type_table(members) for direction, members in MEMBERS.items()}
_ERROR_FRAME_DIRECTIONS: Final = frozenset({Direction.DASHBOARD_RESP, Direction.ORCH_TO_PLATFORM})
_STRUCTURE: Final = {
    cls: CONVERTER.get_structure_hook(cls) for table in _TABLES.values() for cls in table.values()
}
_STRUCTURE_ERROR_FRAME: Final = CONVERTER.get_structure_hook(DashboardErrorFrame)


def types_of(direction: Direction) -> frozenset[str]:
    """The wire ``type`` names a receiver of ``direction`` accepts."""
    return frozenset(_TABLES[direction])


# --- encode --------------------------------------------------------------------------------


def to_wire(msg: Message) -> dict[str, Any]:
    """The JSON object of ``msg`` (``type`` first), before serialisation.

    Lists and objects of plain JSON values are shared with ``msg``, not copied: read only.
    """
    wire: dict[str, Any] = CONVERTER.unstructure(msg)
    return wire


def encode(msg: Message) -> str:
    """Compact JSON text of one frame (UTF-8 left to the transport)."""
    try:
        return _ENCODER.encode(to_wire(msg))
    except ValueError as exc:
        raise EncodeError(f"{msg.wire_type()} is not representable as JSON: {exc}") from None


# --- decode --------------------------------------------------------------------------------


def _describe(exc: BaseException, path: str = "$") -> list[str]:
    if isinstance(exc, cattrs.BaseValidationError):
        lines: list[str] = []
        for sub in exc.exceptions:
            where = path
            for note in getattr(sub, "__notes__", ()):
                if isinstance(note, cattrs.AttributeValidationNote):
                    where = f"{path}.{note.name}"
                elif isinstance(note, cattrs.IterableValidationNote):
                    where = f"{path}[{note.index!r}]"
            lines.extend(_describe(sub, where))
        return lines
    if isinstance(exc, KeyError):
        return [f"{path}: missing or unknown key {exc}"]
    return [f"{path}: {exc}"]


def _detail(exc: BaseException) -> str:
    text = "; ".join(_describe(exc)[:5])
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 1] + "…"


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if item.__class__ is str:
            if _SURROGATE.search(item):
                return True
        elif item.__class__ is dict:
            for key, element in item.items():
                if _SURROGATE.search(key):
                    return True
                stack.append(element)
        elif item.__class__ is list:
            stack.extend(item)
    return False


def _parse(text: Any) -> Any:
    if text.__class__ is not str:
        raise DecodeError(DecodeErrorKind.BAD_JSON, None, "a frame must be text")
    if len(text) > MAX_PAYLOAD_BYTES:
        raise DecodeError(DecodeErrorKind.INVALID, None, "frame exceeds the 25 MiB payload limit")
    if not text.isascii() and _SURROGATE.search(text):
        raise DecodeError(DecodeErrorKind.BAD_JSON, None, "text holds a lone surrogate (not UTF-8)")
    try:
        obj = _DECODER.decode(text)
    except Exception as exc:
        raise DecodeError(DecodeErrorKind.BAD_JSON, None, str(exc)[:_DETAIL_LIMIT]) from None
    if "\\u" in text and _ESCAPED_SURROGATE.search(text) and _has_lone_surrogate(obj):
        raise DecodeError(DecodeErrorKind.BAD_JSON, None, "an escaped lone surrogate is not UTF-8")
    return obj


def _heartbeat(obj: dict[str, Any]) -> Heartbeat:
    """Fast path: liveness needs only a numeric timestamp (a float is truncated to ms)."""
    stamp = obj.get("timestamp")
    if stamp.__class__ is int:
        return Heartbeat(timestamp=stamp)
    if stamp.__class__ is float:
        return Heartbeat(timestamp=int(stamp))
    raise DecodeError(DecodeErrorKind.INVALID, "heartbeat", "heartbeat needs a numeric timestamp")


def _error_frame(obj: dict[str, Any], type_: str) -> Any:
    """An error answer to a ``dashboard.*`` request this side has no response class for."""
    request_type = obj.get("requestType")
    if (
        type_.startswith("dashboard.")
        and request_type.__class__ is str
        and f"{request_type}.response" == type_
    ):
        return _STRUCTURE_ERROR_FRAME(obj, DashboardErrorFrame)
    return None


def from_wire(direction: Direction, obj: Any) -> Message:
    """Structure an already-parsed JSON value as a message of ``direction``.

    Free-form JSON inside it (``any`` fields, passthrough values) is shared, not copied.
    """
    if obj.__class__ is not dict:
        raise DecodeError(DecodeErrorKind.INVALID, None, "a message must be a JSON object")
    type_ = obj.get("type")
    request_id = obj.get("requestId")
    if request_id.__class__ is not str:
        request_id = None
    if type_.__class__ is not str:
        raise DecodeError(DecodeErrorKind.INVALID, None, "a message needs a string type", request_id)
    table = _TABLES[direction]
    cls = table.get(type_)
    try:
        if cls is Heartbeat:
            return _heartbeat(obj)
        if cls is not None:
            message: Message = _STRUCTURE[cls](obj, cls)
            return message
        if direction in _ERROR_FRAME_DIRECTIONS:
            frame: Message | None = _error_frame(obj, type_)
            if frame is not None:
                return frame
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(DecodeErrorKind.INVALID, type_, _detail(exc), request_id) from None
    raise DecodeError(
        DecodeErrorKind.UNKNOWN_TYPE, type_, f"not a message type of {direction.value}", request_id
    )


@overload
def decode(direction: Literal[Direction.AGENT_TO_ORCH], text: str) -> AgentToOrch: ...
@overload
def decode(direction: Literal[Direction.ORCH_TO_AGENT], text: str) -> OrchToAgent: ...
@overload
def decode(direction: Literal[Direction.ORCH_TO_PLATFORM], text: str) -> OrchToPlatform: ...
@overload
def decode(direction: Literal[Direction.PLATFORM_TO_ORCH], text: str) -> PlatformToOrch: ...
@overload
def decode(direction: Literal[Direction.PEER], text: str) -> PeerMsg: ...
@overload
def decode(direction: Literal[Direction.DASHBOARD_REQ], text: str) -> DashboardReq: ...
@overload
def decode(direction: Literal[Direction.DASHBOARD_RESP], text: str) -> DashboardResp: ...
@overload
def decode(direction: Literal[Direction.BROWSER_TO_PLATFORM], text: str) -> BrowserToPlatform: ...
@overload
def decode(direction: Literal[Direction.PLATFORM_TO_BROWSER], text: str) -> PlatformToBrowser: ...
@overload
def decode(direction: Direction, text: str) -> Message: ...
def decode(direction: Direction, text: str) -> Message:
    """Parse one text frame as a message of ``direction``'s union; raises only `DecodeError`."""
    return from_wire(direction, _parse(text))
