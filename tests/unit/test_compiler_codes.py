"""One example per compile-time code (00 §4), each pointing at the author's ``job()``/``step()`` line.

The compile runs in this process (``compile_tree``, what the child runs) so the
examples stay fast; tests/e2e/test_compile_process.py covers the real child.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kici.domain.lockfile import LockFile, validate_lock
from kici.services.compiler.checks import lockfile_hash_warning
from kici.services.compiler.child import compile_tree
from kici.services.compiler.diagnostics import Diagnostic

HEADER = "from kici.sdk import *\n"


def write(root: Path, files: dict[str, str]) -> Path:
    kici_dir = root / ".kici"
    (kici_dir / "workflows").mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = root / name if "/" in name else kici_dir / "workflows" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        body = text.removeprefix(HEADER)
        path.write_text(text[: len(text) - len(body)] + textwrap.dedent(body), encoding="utf-8")
    return kici_dir


def run(root: Path, files: dict[str, str]) -> tuple[LockFile | None, list[Diagnostic]]:
    return compile_tree(write(root, files), root)


def position(root: Path, name: str, needle: str, occurrence: int = 1) -> tuple[int, int]:
    """1-based line and column of the ``occurrence``-th ``needle`` in a workflow file."""
    seen = 0
    text = (root / ".kici" / "workflows" / name).read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        start = 0
        while (found := line.find(needle, start)) != -1:
            seen += 1
            if seen == occurrence:
                return number, found + 1
            start = found + 1
    raise AssertionError(f"{needle!r} not found")


def only(diagnostics: list[Diagnostic], code: str) -> Diagnostic:
    found = [d for d in diagnostics if d.code == code]
    assert len(found) == 1, [d.format() for d in diagnostics]
    return found[0]


def at(diagnostic: Diagnostic, root: Path, name: str, needle: str, occurrence: int = 1) -> None:
    line, column = position(root, name, needle, occurrence)
    assert diagnostic.format().startswith(f".kici/workflows/{name}:{line}:{column}: ")


@pytest.mark.feature("CLI-06")
def test_e001_missing_and_empty_workflows_dir(tmp_path: Path) -> None:
    (tmp_path / ".kici").mkdir()
    lock, diagnostics = compile_tree(tmp_path / ".kici", tmp_path)
    assert lock is None
    missing = only(diagnostics, "E001")
    assert missing.format() == (
        "error [E001]: .kici/workflows/ directory not found: .kici/workflows\n"
        "  Suggestion: run `kici init` to create a starter workflow"
    )
    write(tmp_path, {"_helpers.py": "X = 1\n"})
    lock, diagnostics = compile_tree(tmp_path / ".kici", tmp_path)
    assert lock is None
    assert "no workflow files" in only(diagnostics, "E001").message


@pytest.mark.feature("CLI-06")
def test_e003_points_at_the_raising_line(tmp_path: Path) -> None:
    source = HEADER + "X = 1\nraise RuntimeError('boom')\n"
    lock, diagnostics = run(tmp_path, {"ci.py": source})
    assert lock is None
    diagnostic = only(diagnostics, "E003")
    at(diagnostic, tmp_path, "ci.py", "raise")
    assert diagnostic.message == "Failed to load workflow file module: RuntimeError: boom"


@pytest.mark.feature("CLI-06")
def test_e003_deepest_frame_in_the_workflow_file(tmp_path: Path) -> None:
    files = {
        "_helpers.py": "def explode():\n    return 1 / 0\n",
        "ci.py": HEADER + "import _helpers\n\nVALUE = _helpers.explode()\n",
    }
    _, diagnostics = run(tmp_path, files)
    diagnostic = only(diagnostics, "E003")
    at(diagnostic, tmp_path, "ci.py", "_helpers.explode()")
    assert "ZeroDivisionError" in diagnostic.message


@pytest.mark.feature("CLI-06")
def test_e003_syntax_error_and_exit(tmp_path: Path) -> None:
    _, diagnostics = run(tmp_path, {"a.py": "x = (\n", "b.py": "import sys\nsys.exit(3)\n"})
    errors = [d for d in diagnostics if d.code == "E003"]
    assert [d.file for d in errors] == [".kici/workflows/a.py", ".kici/workflows/b.py"]
    assert "SyntaxError" in errors[0].message
    assert errors[0].line == 1
    assert errors[1].message == "Failed to load workflow file module: SystemExit: 3"
    assert errors[1].line == 2


@pytest.mark.feature("CLI-06", "SDK-08")
def test_definition_error_keeps_its_code_and_location(tmp_path: Path) -> None:
    source = HEADER + 'a = job("a", runs_on="x", runs_on_all=["y"], run=lambda ctx: None)\n'
    _, diagnostics = run(tmp_path, {"ci.py": source})
    diagnostic = only(diagnostics, "E202")
    at(diagnostic, tmp_path, "ci.py", "job(")
    assert diagnostic.message == "job('a'): runsOn and runsOnAll are mutually exclusive"


@pytest.mark.feature("CLI-06")
def test_e004_file_without_workflows(tmp_path: Path) -> None:
    _, diagnostics = run(tmp_path, {"ci.py": HEADER + 'a = job("a", runs_on="x", run=print)\n'})
    diagnostic = only(diagnostics, "E004")
    assert diagnostic.format().startswith(
        ".kici/workflows/ci.py:1:1: error [E004]: Config does not export any workflows\n  Suggestion: "
    )


NEEDS = (
    HEADER
    + """
a = job("a", runs_on="x", run=print)
b = job("b", runs_on="x", run=print, needs=["nope"])
c = job("c", runs_on="x", run=print, needs=[Need("c", when="always")])
wf = workflow("wf", jobs=[a, b, c])
"""
)


@pytest.mark.feature("SDK-08", "CLI-03")
def test_e101_and_e103(tmp_path: Path) -> None:
    lock, diagnostics = run(tmp_path, {"ci.py": NEEDS})
    assert lock is None
    missing = only(diagnostics, "E101")
    assert missing.message == 'Job "b" in workflow "wf" depends on non-existent job "nope"'
    at(missing, tmp_path, "ci.py", "job(", 2)
    itself = only(diagnostics, "E103")
    assert itself.message == 'Job "c" in workflow "wf" depends on itself'
    at(itself, tmp_path, "ci.py", "Need(")


@pytest.mark.feature("SDK-08")
def test_e101_unknown_dynamic_group(tmp_path: Path) -> None:
    source = (
        HEADER
        + """
    a = job("a", runs_on="x", run=print, needs=[dynamic_group("ghost")])
    wf = workflow("wf", jobs=[a])
    """
    )
    _, diagnostics = run(tmp_path, {"ci.py": source})
    assert 'non-existent dynamic group "ghost"' in only(diagnostics, "E101").message


@pytest.mark.feature("SDK-08")
def test_e102_cycle(tmp_path: Path) -> None:
    source = (
        HEADER
        + """
    a = job("a", runs_on="x", run=print, needs=["b"])
    b = job("b", runs_on="x", run=print, needs=["a"])
    wf = workflow("wf", jobs=[a, b])
    """
    )
    _, diagnostics = run(tmp_path, {"ci.py": source})
    cycle = only(diagnostics, "E102")
    assert cycle.message == 'Circular dependency in workflow "wf": a -> b -> a'
    at(cycle, tmp_path, "ci.py", "job(")


@pytest.mark.feature("SDK-08")
def test_e102_cycle_through_a_result_aware_group(tmp_path: Path) -> None:
    source = (
        HEADER
        + """
    a = job("a", runs_on="x", run=print, needs=[dynamic_group("g")])
    g = dynamic_job("g", needs=["a"], generate=lambda g: [])
    wf = workflow("wf", jobs=[a, g])
    """
    )
    _, diagnostics = run(tmp_path, {"ci.py": source})
    assert only(diagnostics, "E102").message == ('Circular dependency in workflow "wf": a -> __group:g -> a')


@pytest.mark.feature("SDK-08", "LOCK-03")
def test_e104_static_matrix_cap(tmp_path: Path) -> None:
    source = (
        HEADER
        + """
    m = job("m", runs_on="x", run=print, matrix={"a": list(range(16)), "b": list(range(16))},
            include=[{"a": 99, "b": 99}])
    wf = workflow("wf", jobs=[m])
    """
    )
    _, diagnostics = run(tmp_path, {"ci.py": source})
    diagnostic = only(diagnostics, "E104")
    assert (
        diagnostic.message == 'Static matrix for job "m" in workflow "wf" would generate 257 jobs (max: 256)'
    )
    at(diagnostic, tmp_path, "ci.py", "job(")


@pytest.mark.feature("SDK-08", "LOCK-03")
def test_e106_duplicate_job_name_including_auto_names(tmp_path: Path) -> None:
    source = (
        HEADER
        + """
    first = job(runs_on="x", run=print)
    second = job("job-1", runs_on="x", run=print)
    wf = workflow("wf", jobs=[first, second])
    """
    )
    _, diagnostics = run(tmp_path, {"ci.py": source})
    diagnostic = only(diagnostics, "E106")
    assert diagnostic.message == 'Duplicate job name "job-1" in workflow "wf"'
    at(diagnostic, tmp_path, "ci.py", "job(", 2)


@pytest.mark.feature("SDK-08", "CLI-06")
def test_e107_duplicate_workflow_name_across_files(tmp_path: Path) -> None:
    one = HEADER + 'wf = workflow("ci", jobs=[job("a", runs_on="x", run=print)])\n'
    _, diagnostics = run(tmp_path, {"a.py": one, "b.py": one})
    diagnostic = only(diagnostics, "E107")
    assert diagnostic.message == 'Duplicate workflow name: "ci"'
    assert diagnostic.file == ".kici/workflows/b.py"
    assert diagnostic.suggestion == "the first one is #wf in .kici/workflows/a.py"


@pytest.mark.feature("LOCK-03")
def test_e212_redos_runs_on_regex(tmp_path: Path) -> None:
    source = (
        HEADER
        + """
    import re
    a = job("a", runs_on=re.compile(r"(a+)+$"), run=print)
    wf = workflow("wf", jobs=[a])
    """
    )
    lock, diagnostics = run(tmp_path, {"ci.py": source})
    assert lock is None
    diagnostic = only(diagnostics, "E212")
    assert diagnostic.message == "job 'a' runsOn: regex /(a+)+$/ is ReDoS-prone — rejected"
    at(diagnostic, tmp_path, "ci.py", "job(")


@pytest.mark.feature("LOCK-03")
def test_e212_redos_trigger_regex(tmp_path: Path) -> None:
    source = (
        HEADER
        + """
    import re
    wf = workflow("wf", on=push(branches=re.compile(r"(x*)*y")), jobs=[job("a", runs_on="x", run=print)])
    """
    )
    _, diagnostics = run(tmp_path, {"ci.py": source})
    diagnostic = only(diagnostics, "E212")
    assert diagnostic.message.startswith("push() branches: regex /(x*)*y/ is rejected: ReDoS-prone")
    at(diagnostic, tmp_path, "ci.py", "push(")


WARNINGS = (
    HEADER
    + """
a = job("a", runs_on="x", on_unreachable="skip", include_uninitialized=True, max_parallel=2,
        steps=[parallel([step("one", print)]), step("dup", print), step("dup", print)])
wf = workflow("wf", jobs=[a])
"""
)


@pytest.mark.feature("CLI-03")
def test_w002_to_w006_are_printed_and_do_not_fail(tmp_path: Path) -> None:
    lock, diagnostics = run(tmp_path, {"ci.py": WARNINGS})
    assert lock is not None
    codes = sorted(d.code for d in diagnostics)
    assert codes == ["W002", "W003", "W004", "W005", "W006"]
    assert all(d.severity == "warning" for d in diagnostics)
    at(only(diagnostics, "W002"), tmp_path, "ci.py", "job(")
    at(only(diagnostics, "W005"), tmp_path, "ci.py", "parallel(")


@pytest.mark.feature("LOCK-06")
def test_w007_helper_import_not_in_hash_files(tmp_path: Path) -> None:
    helper = "def steps():\n    return []\n"
    uncovered = HEADER + 'import _lib\nwf = workflow("wf", jobs=[job("a", runs_on="x", run=print)])\n'
    covered = HEADER + (
        'import _lib\nwf2 = workflow("wf2", hash_files=[".kici/workflows/_lib.py"],'
        ' jobs=[job("a", runs_on="x", run=print)])\n'
    )
    lock, diagnostics = run(tmp_path, {"_lib.py": helper, "a.py": uncovered, "b.py": covered})
    assert lock is not None
    diagnostic = only(diagnostics, "W007")
    assert diagnostic.message == (
        "workflow 'wf' imports _lib (.kici/workflows/_lib.py) which is not covered by hash_files"
    )
    at(diagnostic, tmp_path, "a.py", "workflow(")
    assert lock.workflows[1].resolved_hash_files == (".kici/workflows/_lib.py",)


@pytest.mark.feature("LOCK-07")
def test_d4_lockfile_hash_warning(tmp_path: Path) -> None:
    source = HEADER + 'wf = workflow("wf", jobs=[job("a", runs_on="x", run=print)])\n'
    kici_dir = write(tmp_path, {"ci.py": source})
    before, _ = compile_tree(kici_dir, tmp_path)
    (kici_dir / "requirements.txt").write_text("kici==0.1.0\n", encoding="utf-8")
    after, _ = compile_tree(kici_dir, tmp_path)
    assert before is not None
    assert after is not None
    assert before.lockfile_hash is None
    assert after.lockfile_hash is not None
    assert lockfile_hash_warning(after, after) is None
    drift = lockfile_hash_warning(before, after)
    assert drift is not None
    assert drift.code == "D4"
    assert drift.severity == "warning"
    assert drift.message.startswith("dependencies changed: lockfileHash (none) -> ")


@pytest.mark.feature("CLI-03")
def test_all_errors_are_reported_together(tmp_path: Path) -> None:
    source = (
        HEADER
        + """
    a = job("a", runs_on="x", run=print, needs=["missing"])
    b = job("b", runs_on="x", run=print, needs=["b"])
    one = workflow("one", jobs=[a, b])
    two = workflow("one", jobs=[job("a", runs_on="x", run=print)])
    """
    )
    _, diagnostics = run(tmp_path, {"ci.py": source})
    assert sorted(d.code for d in diagnostics) == ["E101", "E103", "E107"]


@pytest.mark.feature("CLI-03", "LOCK-09")
def test_a_valid_tree_validates(tmp_path: Path) -> None:
    lock, diagnostics = run(
        tmp_path, {"ci.py": NEEDS.replace('"nope"', '"a"').replace('"c", when', '"a", when')}
    )
    assert diagnostics == []
    assert lock is not None
    assert validate_lock(lock) == []
