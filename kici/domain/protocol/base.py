"""The shared machinery of every wire model: base classes, wire-key naming, field markers.

Attributes are snake_case; the wire is camelCase. The codec derives each wire key from
the attribute name with `camel`, so the models stay free of per-field boilerplate; the few
keys that do not follow the rule (``step.status.step_type``, fields called ``type`` inside
nested objects) carry an explicit `wire` marker in the field metadata.

Three kinds of optional field exist on the wire (20-protocol.md §2):
- plain optional (``?`` in 20a): default ``None``, omitted by the encoder when ``None``;
- nullable (``?!``): default ``None`` but always written, ``null`` included (`NULLABLE`);
- passthrough: capability objects and the loosely specified shapes keep the keys they do
  not model in one ``dict`` attribute, written back flat on encode (`PASSTHROUGH`).
"""

from typing import Any, ClassVar, Final, cast

import attrs

MAX_PAYLOAD_BYTES: Final = 26_214_400
"""25 MiB: the largest decompressed frame any kici server or client accepts (PRO-04)."""

_WIRE: Final = "kici.protocol.wire"
_NULLABLE: Final = "kici.protocol.nullable"
_PASSTHROUGH: Final = "kici.protocol.passthrough"

NULLABLE: Final[dict[str, Any]] = {_NULLABLE: True}
"""Field metadata of a ``?!`` field: written as ``null`` instead of being omitted."""

PASSTHROUGH: Final[dict[str, Any]] = {_PASSTHROUGH: True}
"""Field metadata of the dict that keeps a passthrough object's unmodelled keys; use it as
``attrs.field(factory=dict, metadata=PASSTHROUGH, validator=check_passthrough)``."""


class InvalidMessage(ValueError):
    """A value that breaks a rule of the protocol: a range, a cap or a cross-field invariant.

    Raised by the models' validators, so an illegal message cannot be built in memory and
    the decoder reports it as ``DecodeError(INVALID)``.
    """


def wire(key: str) -> dict[str, Any]:
    """Field metadata naming a wire key that is not the camelCase of the attribute name."""
    return {_WIRE: key}


def camel(name: str) -> str:
    """``message_id`` -> ``messageId``; ``s3_log_access`` -> ``s3LogAccess``."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def wire_key(field: "attrs.Attribute[Any]") -> str:
    explicit = field.metadata.get(_WIRE)
    return explicit if isinstance(explicit, str) else camel(field.name)


def is_nullable(field: "attrs.Attribute[Any]") -> bool:
    return bool(field.metadata.get(_NULLABLE))


def is_passthrough(field: "attrs.Attribute[Any]") -> bool:
    return bool(field.metadata.get(_PASSTHROUGH))


def is_plain_optional(field: "attrs.Attribute[Any]") -> bool:
    """A ``?`` field: omitted from the wire when it holds ``None``."""
    return field.default is None and not is_nullable(field) and not is_passthrough(field)


class WireModel:
    """Base of every attrs class that appears on the wire, messages and nested shapes alike."""

    __slots__ = ()


class Tagged(WireModel):
    """A wire object discriminated by its ``type`` key (messages, actor principals)."""

    __slots__ = ()
    TYPE: ClassVar[str]


class Message(Tagged):
    """One WebSocket frame. ``TYPE`` is the wire ``type``; the codec writes it first."""

    __slots__ = ()

    def wire_type(self) -> str:
        """The ``type`` written on the wire; only the dashboard error frame derives it."""
        return self.TYPE


def model_fields(cls: type[WireModel]) -> "tuple[attrs.Attribute[Any], ...]":
    fields: tuple[attrs.Attribute[Any], ...] = attrs.fields(cast(Any, cls))
    return fields


_KNOWN_KEYS: dict[type[WireModel], frozenset[str]] = {}


def known_wire_keys(cls: type[WireModel]) -> frozenset[str]:
    """The keys a class models (``type`` included for tagged classes): not passthrough."""
    keys = _KNOWN_KEYS.get(cls)
    if keys is None:
        names = {wire_key(f) for f in model_fields(cls) if not is_passthrough(f)}
        if issubclass(cls, Tagged):
            names.add("type")
        keys = _KNOWN_KEYS[cls] = frozenset(names)
    return keys


def check_passthrough(instance: WireModel, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    """Validator of a passthrough dict: JSON object keys that the class does not model."""
    if not isinstance(value, dict):
        raise InvalidMessage(f"{attribute.name} must be a dict of extra wire keys")
    clash = known_wire_keys(type(instance)).intersection(value)
    if clash:
        raise InvalidMessage(f"{attribute.name} repeats modelled keys: {sorted(clash)}")


def check_text_len(low: int, high: int | None = None) -> Any:
    """Validator: ``low <= len(value) <= high`` (characters), as a typed `InvalidMessage`."""

    def check(_instance: object, attribute: "attrs.Attribute[Any]", value: str) -> None:
        if len(value) < low or (high is not None and len(value) > high):
            raise InvalidMessage(f"{attribute.name} must be {low}-{high or 'any'} characters long")

    return check


def check_range(low: int | None = None, high: int | None = None, *, optional: bool = False) -> Any:
    """Validator of a number range (inclusive), tolerant of ``None`` when ``optional``."""

    def check(_instance: object, attribute: "attrs.Attribute[Any]", value: float | None) -> None:
        if value is None and optional:
            return
        if value is None or (low is not None and value < low) or (high is not None and value > high):
            bounds = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
            raise InvalidMessage(f"{attribute.name} must be in {bounds}")

    return check


NON_EMPTY: Final = check_text_len(1)
NON_NEGATIVE: Final = check_range(0)
POSITIVE: Final = check_range(1)
OPT_NON_NEGATIVE: Final = check_range(0, optional=True)
OPT_POSITIVE: Final = check_range(1, optional=True)
LOG_STEP_INDEX: Final = check_range(-1)
"""A log line's step: ``-1`` is the prepare bucket (clone, load, rules) before the first step (10 §3)."""
OPT_LOG_STEP_INDEX: Final = check_range(-1, optional=True)
