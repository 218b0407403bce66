"""L3 and deterministic serialization: random valid locks survive the codec unchanged (spec 00 §2.5, §2.7)."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from hypothesis import given

from kici.domain.lockfile import (
    FrozenDict,
    InputDescriptor,
    LockFile,
    Trigger,
    dump_lock,
    from_json,
    parse_lock,
    to_json,
    trigger_type,
)
from kici.domain.lockfile.codec import TAGS
from kici.domain.lockfile.fields import is_omissible, json_key
from tests.strategies.lockfile import lock_files, triggers, walk_models

pytestmark = pytest.mark.feature("LOCK-01", "LOCK-03", "LOCK-04", "LOCK-05", "LOCK-08", "LOCK-09")

_FREE_JSON = {(InputDescriptor, "default"), (InputDescriptor, "literal")}


@given(lock_files())
def test_parse_of_dump_is_identity_and_dump_is_a_fixpoint(lock: LockFile) -> None:
    text = dump_lock(lock)
    parsed = parse_lock(text)
    assert parsed == lock
    assert hash(parsed) == hash(lock)
    assert dump_lock(parsed) == text


@given(lock_files())
def test_structure_of_unstructure_is_identity(lock: LockFile) -> None:
    assert from_json(to_json(lock), LockFile) == lock
    assert from_json(json.loads(json.dumps(to_json(lock))), LockFile) == lock


@given(lock_files())
def test_dump_is_canonical_json_text(lock: LockFile) -> None:
    text = dump_lock(lock)
    assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"


@pytest.mark.feature("LOCK-02")
@given(triggers)
def test_every_trigger_round_trips_with_its_type_tag(trigger: Trigger) -> None:
    data = to_json(trigger)
    assert next(iter(data)) == "_type"
    assert data["_type"] == trigger_type(trigger)
    assert from_json(data, Trigger) == trigger  # type: ignore[arg-type]


def _check_object(model: Any, data: dict[str, Any]) -> None:
    cls = type(model)
    keys = list(data)
    tag = TAGS.get(cls)
    if tag is not None and tag[0] in data:
        assert keys[0] == tag[0]
        keys = keys[1:]
    declared = [json_key(a) for a in attrs.fields(cls)]
    assert keys == [k for k in declared if k in keys], "keys must follow attrs declaration order"
    for attribute in attrs.fields(cls):
        key = json_key(attribute)
        value = getattr(model, attribute.name)
        if is_omissible(attribute):
            assert (key in data) == (value != attribute.default), f"{cls.__name__}.{key}"
        else:
            assert key in data, f"required {cls.__name__}.{key} must always be written"
        if key in data and (cls, attribute.name) not in _FREE_JSON:
            assert data[key] is not None, f"{cls.__name__}.{key} is null"


@given(lock_files())
def test_keys_follow_declaration_order_optionals_only_when_set_and_never_null(lock: LockFile) -> None:
    data = json.loads(dump_lock(lock))
    for _path, model, obj in walk_models(lock, data):
        if isinstance(model, FrozenDict):
            continue
        _check_object(model, obj)
