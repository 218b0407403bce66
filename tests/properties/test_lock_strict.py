"""Strict parsing: any single corruption of a valid lock is rejected with a path (spec 00 §2.6 D3)."""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.lockfile import (
    FIX_HINT,
    SCHEMA_VERSION,
    InputDescriptor,
    LockFile,
    LockFileParseError,
    LockInlineValue,
    LockSchemaVersionError,
    format_path,
    parse_lock,
    to_json,
)
from kici.domain.lockfile.codec import IMPLIED_TAGS, TAGS
from kici.domain.lockfile.fields import is_omissible, json_key
from tests.strategies.lockfile import json_values, lock_files, walk_models

pytestmark = pytest.mark.feature("LOCK-01", "LOCK-09", "LOCK-12")

_FREE_JSON = {(InputDescriptor, "default"), (InputDescriptor, "literal")}
"""Fields holding arbitrary JSON, where null or any type is a legitimate value."""


def _wrong_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return 12345
    if isinstance(value, list):
        return "not-a-list"
    return 7


def _corruptions(path: tuple[str | int, ...], model: Any, obj: dict[str, Any]) -> list[tuple[str, Any]]:
    """(kind, detail) pairs applicable to one model object."""
    cls = type(model)
    options: list[tuple[str, Any]] = [("unknown", None)]
    fields = {json_key(a): a for a in attrs.fields(cls)}
    for key, attribute in fields.items():
        if key not in obj or (cls, attribute.name) in _FREE_JSON:
            continue
        options.append(("wrong", key))
        if is_omissible(attribute):
            options.append(("null", key))
        else:
            options.append(("drop", key))
    tag = TAGS.get(cls)
    if tag is not None:
        options.append(("tag", tag[0]))
        inside_env_union = cls is LockInlineValue and path and path[-1] == "env"
        if cls not in IMPLIED_TAGS and not inside_env_union:
            options.append(("drop", tag[0]))
    return options


def _expect_rejected(doc: dict[str, Any]) -> LockFileParseError:
    with pytest.raises(LockFileParseError) as info:
        parse_lock(json.dumps(doc))
    return info.value


@given(lock_files(), st.data())
def test_any_single_corruption_is_rejected_with_its_path(lock: LockFile, data: st.DataObject) -> None:
    doc = to_json(lock)
    sites = list(walk_models(lock, doc))
    site = data.draw(st.sampled_from(range(len(sites))))
    path, model, _ = sites[site]
    corrupted = copy.deepcopy(doc)
    obj = list(walk_models(lock, corrupted))[site][2]
    kind, key = data.draw(st.sampled_from(_corruptions(path, model, obj)))
    if kind == "unknown":
        obj["zzUnknownKey"] = 1
        expected = format_path((*path, "zzUnknownKey"))
    elif kind == "drop":
        del obj[key]
        expected = format_path(path)
    elif kind == "null":
        obj[key] = None
        expected = format_path((*path, key))
    elif kind == "wrong":
        obj[key] = _wrong_value(obj[key])
        expected = format_path((*path, key))
    else:
        obj[key] = "bogus"
        expected = format_path((*path, key))
    error = _expect_rejected(corrupted)
    if kind == "drop":
        assert error.path.startswith(expected)
    else:
        assert error.path == expected
    assert FIX_HINT in str(error)


@given(
    lock_files(), st.integers(min_value=0), st.sampled_from(["delete", "insert", "replace"]), st.characters()
)
def test_text_mutations_give_a_lock_or_a_parse_error(lock: LockFile, at: int, how: str, char: str) -> None:
    text = json.dumps(to_json(lock), indent=2, ensure_ascii=False)
    at %= len(text)
    if how == "delete":
        text = text[:at] + text[at + 1 :]
    elif how == "insert":
        text = text[:at] + char + text[at:]
    else:
        text = text[:at] + char + text[at + 1 :]
    with contextlib.suppress(LockFileParseError):
        parse_lock(text)


@given(
    st.dictionaries(st.sampled_from(["source", "contentHash", "workflows", "lockfileHash", "x"]), json_values)
)
def test_arbitrary_json_documents_never_raise_anything_else(extra: dict[str, Any]) -> None:
    doc = {"schemaVersion": SCHEMA_VERSION, **to_json(extra)}
    with contextlib.suppress(LockFileParseError):
        parse_lock(json.dumps(doc))


@given(st.integers().filter(lambda v: v != SCHEMA_VERSION) | st.floats(allow_nan=False, allow_infinity=False))
def test_foreign_schema_version_gets_the_d3_message(version: float) -> None:
    with pytest.raises(LockSchemaVersionError) as info:
        parse_lock(json.dumps({"schemaVersion": version, "workflows": "ignored"}))
    assert str(info.value) == (
        f"Lock file schemaVersion {json.dumps(version)} is incompatible with this orchestrator "
        "(engine SCHEMA_VERSION 1). Recompile the lock with `kici compile` and push again."
    )
