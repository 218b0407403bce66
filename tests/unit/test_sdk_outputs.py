"""``.result`` proxies (SDK-32): lazy lookups in the output source bound to the running context."""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Mapping
from typing import Any

import attrs
import pytest

from kici.sdk import OutputsNotReady, job, step
from kici.sdk.outputs import OutputView, output_fields, outputs_bound

pytestmark = pytest.mark.feature("SDK-32")


def work(ctx: Any) -> None:
    return None


build = step("build", work, outputs={"version": str})
discover = job("discover", runs_on="linux", run=work)
packaging = job("packaging", runs_on="linux", steps=[build])


@dataclasses.dataclass
class Merged:
    merged: Mapping[str, Any]


class FakeSource:
    def __init__(self, steps: dict[str, Any], jobs: dict[str, Any]) -> None:
        self.steps = steps
        self.jobs = jobs

    def outputs_of(self, step_or_fn: Any) -> Mapping[str, Any]:
        name = step_or_fn.name
        if name not in self.steps:
            raise OutputsNotReady(name)
        return self.steps[name]  # type: ignore[no-any-return]

    def job_outputs(self, job_ref: Any) -> Any:
        return self.jobs[job_ref.name]


def test_step_result_reads_the_bound_source_lazily() -> None:
    source = FakeSource({}, {})
    with outputs_bound(source):
        with pytest.raises(OutputsNotReady, match="Step 'build' has not produced outputs yet"):
            _ = build.result.version
        source.steps["build"] = {"version": "1.2", "meta": {"sha": "abc"}}
        assert build.result.version == "1.2"
        assert build.result["version"] == "1.2"
        assert build.result.meta.sha == "abc"
        with pytest.raises(
            AttributeError, match=r"Step 'build' has no output 'size' \(outputs: meta, version\)"
        ):
            _ = build.result.size


def test_reading_outside_a_job_is_outputs_not_ready() -> None:
    with pytest.raises(OutputsNotReady, match="outputs exist only while a job runs"):
        _ = build.result.version


def test_job_result_is_per_step_and_flat_for_run_jobs() -> None:
    source = FakeSource(
        {},
        {"discover": {"step-1": {"services": ["api", "web"]}}, "packaging": {"build": {"version": "2"}}},
    )
    with outputs_bound(source):
        assert discover.result.services == ["api", "web"]
        assert packaging.result.build.version == "2"
        assert isinstance(packaging.result["build"], OutputView)
        source.jobs["packaging"] = Merged({"build": {"version": "3"}})
        assert packaging.result.build.version == "3"


def test_the_binding_follows_the_context_not_the_thread() -> None:
    source = FakeSource({"build": {"version": "9"}}, {})
    with outputs_bound(source):
        copied = contextvars.copy_context()
    assert copied.run(lambda: build.result.version) == "9"
    with pytest.raises(OutputsNotReady):
        _ = build.result.version


def test_output_fields_of_every_schema_kind() -> None:
    @dataclasses.dataclass
    class Release:
        version: str
        notes: str

    assert output_fields(None) == ()
    assert output_fields({"version": str}) == ("version",)
    assert output_fields(Release) == ("version", "notes")

    @attrs.frozen
    class Artifact:
        path: str

    assert output_fields(Artifact) == ("path",)
    assert step("r", work, outputs=Release).outputs is Release
