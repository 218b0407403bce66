"""Step outputs in the runner (EXE-22, SDK-32): accepted shapes, schema checks, JSON round trip, needs."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.sdk.context import NeedInfo, ShellResult
from kici.sdk.errors import OutputsNotReady, OutputValidationError
from kici.services.runner.outputs import MatrixJobOutputs, OutputStore, build_needs, normalize_outputs

pytestmark = pytest.mark.feature("EXE-22", "SDK-32")


@dataclasses.dataclass
class Version:
    version: str
    build: int = 0


@attrs.define
class Image:
    tag: str
    layers: list[str]


def test_accepted_shapes_without_schema() -> None:
    assert normalize_outputs(None, None, "s") is None
    assert normalize_outputs(ShellResult("x", "", 0, 1), None, "s") is None
    assert normalize_outputs({"a": (1, 2)}, None, "s") == {"a": [1, 2]}
    assert normalize_outputs(Version("1"), None, "s") == {"version": "1", "build": 0}
    assert normalize_outputs(Image("t", ["a"]), None, "s") == {"tag": "t", "layers": ["a"]}


@pytest.mark.parametrize("value", ["text", 3, [1], object()])
def test_other_return_types_fail(value: Any) -> None:
    with pytest.raises(OutputValidationError, match="must return a dict"):
        normalize_outputs(value, None, "s")


def test_values_must_be_json() -> None:
    with pytest.raises(OutputValidationError, match="not JSON-serializable"):
        normalize_outputs({"a": object()}, None, "s")
    with pytest.raises(OutputValidationError, match="not valid JSON"):
        normalize_outputs({"a": float("nan")}, None, "s")
    with pytest.raises(OutputValidationError, match="keys must be strings"):
        normalize_outputs({"a": {1: "x"}}, None, "s")


def test_dict_schema() -> None:
    schema = {"n": int, "tags": list[str], "maybe": str | None, "ratio": float}
    ok = {"n": 1, "tags": ["a"], "maybe": None, "ratio": 2}
    assert normalize_outputs(ok, schema, "s") == ok
    cases = [
        ({**ok, "n": "1"}, "outputs.n: expected int, got str"),
        ({**ok, "n": True}, "outputs.n: expected int, got bool"),
        ({**ok, "tags": ["a", 2]}, "outputs.tags[1]: expected str, got int"),
        ({k: v for k, v in ok.items() if k != "n"}, "missing field(s) n"),
        ({**ok, "extra": 1}, "undeclared field(s) extra"),
    ]
    for value, message in cases:
        with pytest.raises(OutputValidationError) as caught:
            normalize_outputs(value, schema, "s")
        assert message in str(caught.value)
    with pytest.raises(OutputValidationError, match="returned None but declares outputs n"):
        normalize_outputs(None, {"n": int}, "s")


def test_class_schemas_take_instances_or_dicts() -> None:
    assert normalize_outputs({"version": "2"}, Version, "s") == {"version": "2", "build": 0}
    assert normalize_outputs(Image("t", ["x"]), Image, "s") == {"tag": "t", "layers": ["x"]}
    with pytest.raises(OutputValidationError, match="does not fit Version"):
        normalize_outputs({"nope": 1}, Version, "s")
    with pytest.raises(OutputValidationError, match=r"outputs.layers\[0\]: expected str"):
        normalize_outputs({"tag": "t", "layers": [1]}, Image, "s")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(st.text(), json_values, max_size=4))
def test_p_out1_outputs_round_trip_through_json_exactly(value: dict[str, Any]) -> None:
    outputs = normalize_outputs(value, None, "s")
    assert json.loads(json.dumps(outputs)) == outputs == value


def test_store_answers_result_proxies_and_job_outputs() -> None:
    step = object()
    store = OutputStore(
        {"build": {"compile": {"v": 1}}, "test (a)": {"t": {"x": 1}}, "test (b)": {"t": {"x": 2, "y": 3}}},
        {id(step): "first"},
        {},
        {},
    )
    with pytest.raises(OutputsNotReady, match="Step 'first' has not produced outputs yet"):
        store.outputs_of(step)
    store.record("first", {"a": 1})
    assert store.outputs_of(step) == {"a": 1}
    assert store.job_outputs("build") == {"compile": {"v": 1}}
    fanout = store.job_outputs("test")
    assert fanout == MatrixJobOutputs(
        {"a": {"t": {"x": 1}}, "b": {"t": {"x": 2, "y": 3}}}, {"t": {"x": 2, "y": 3}}
    )
    with pytest.raises(OutputsNotReady):
        store.job_outputs("absent")


def test_needs_lists_fanout_children_in_name_order() -> None:
    needs = build_needs(
        {"build": {"s": {}}, "t (b)": {}, "t (a)": {"s": {"v": 1}}}, {"build": "success", "t (a)": "failed"}
    )
    assert needs["build"] == NeedInfo({"s": {}}, "success", "build")
    assert [(n.name, n.status) for n in needs["t"]] == [("t (a)", "failed"), ("t (b)", "success")]
