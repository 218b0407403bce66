"""Discovery and loading of ``.kici/workflows/*.py`` (CLI-06, D3), shared by the compiler and the runner."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from kici.sdk import KiciDefinitionError, Workflow
from kici.sdk.discovery import discover_workflows, load_workflow_module, workflow_files

pytestmark = pytest.mark.feature("CLI-06", "SDK-01")

WORKFLOW = """
from kici.sdk import workflow, job, push
import _helpers
from tools.names import PREFIX

build = job(PREFIX + "build", runs_on="linux", run=_helpers.work)
ci = workflow("ci", on=push(), jobs=[build])
alias = ci
matrix = [workflow("a", jobs=[build]), ci, "not a workflow", workflow("b", jobs=[build])]
pair = (ci,)
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    workflows = tmp_path / ".kici" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "ci.py").write_text(textwrap.dedent(WORKFLOW), encoding="utf-8")
    (workflows / "_helpers.py").write_text("def work(ctx):\n    return None\n", encoding="utf-8")
    (workflows / "broken.py").write_text(
        "from kici.sdk import job\njob('x', runs_on='a', run=print, steps=[print])\n", encoding="utf-8"
    )
    (workflows / "notes.txt").write_text("", encoding="utf-8")
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "__init__.py").write_text("", encoding="utf-8")
    (tmp_path / "tools" / "names.py").write_text("PREFIX = 'py-'\n", encoding="utf-8")
    return tmp_path


@pytest.fixture(autouse=True)
def clean_modules() -> object:
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("kici_workflows", "_helpers", "tools")):
            del sys.modules[name]


def test_workflow_files_skip_helpers_and_other_files(repo: Path) -> None:
    assert [p.name for p in workflow_files(repo / ".kici")] == ["broken.py", "ci.py"]
    assert workflow_files(repo / "missing") == []


def test_load_and_discover(repo: Path) -> None:
    path_before = list(sys.path)
    module = load_workflow_module(repo / ".kici" / "workflows" / "ci.py", repo / ".kici", repo)
    assert sys.path == path_before
    assert module.__name__ == "kici_workflows.ci"
    found = discover_workflows(module)
    assert [(export, wf.name) for export, wf in found] == [
        ("#ci", "ci"),
        ("#matrix[0]", "a"),
        ("#matrix[3]", "b"),
    ]
    assert all(isinstance(wf, Workflow) for _, wf in found)
    assert found[0][1].jobs[0].name == "py-build"  # type: ignore[union-attr]


def test_a_failing_module_propagates_its_error_and_leaves_no_trace(repo: Path) -> None:
    path_before = list(sys.path)
    with pytest.raises(KiciDefinitionError) as info:
        load_workflow_module(repo / ".kici" / "workflows" / "broken.py", repo / ".kici", repo)
    assert info.value.code == "E201"
    assert info.value.location.file == str(repo / ".kici" / "workflows" / "broken.py")
    assert info.value.location.line == 2
    assert "kici_workflows.broken" not in sys.modules
    assert sys.path == path_before
