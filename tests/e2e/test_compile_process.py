"""``compile_project`` / ``write_lock`` / ``check_locked`` / ``watch`` with real child interpreters."""

from __future__ import annotations

import shutil
import textwrap
import threading
from pathlib import Path

import pytest

from kici.domain.lockfile import dump_lock, parse_lock, validate_lock
from kici.services.compiler import CompileResult, check_locked, compile_project, lock_path, watch, write_lock

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "workflows"
SIMPLE = """\
from kici.sdk import job, push, workflow

ci = workflow("ci", on=push(branches="main"), jobs=[job("build", runs_on="linux", run=lambda ctx: None)])
"""
WAIT_S = 60.0


def project(root: Path, files: dict[str, str]) -> Path:
    kici_dir = root / ".kici"
    (kici_dir / "workflows").mkdir(parents=True)
    for name, text in files.items():
        (kici_dir / "workflows" / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return kici_dir


@pytest.mark.feature("CLI-03", "CLI-06", "LOCK-06", "LOCK-07", "LOCK-09")
def test_examples_compile_in_a_child_and_are_byte_stable(tmp_path: Path) -> None:
    kici_dir = tmp_path / ".kici"
    shutil.copytree(FIXTURES, kici_dir / "workflows")
    (tmp_path / "Makefile").write_text("test:\n", encoding="utf-8")
    (kici_dir / "uv.lock").write_text("version = 1\n", encoding="utf-8")
    first = compile_project(kici_dir, tmp_path)
    second = compile_project(kici_dir, tmp_path)
    assert first.ok, first.diagnostics
    assert first.diagnostics == ()
    assert first.lock is not None
    assert second.lock is not None
    assert validate_lock(first.lock) == []
    assert first.workflow_count == 5
    assert first.lock.lockfile_hash is not None
    assert dump_lock(first.lock) == dump_lock(second.lock)
    path = write_lock(kici_dir, first.lock)
    assert path == lock_path(kici_dir)
    assert path.read_text(encoding="utf-8") == dump_lock(first.lock)


@pytest.mark.feature("CLI-05", "LOCK-11")
def test_check_locked_reports_drift_per_workflow(tmp_path: Path) -> None:
    kici_dir = project(tmp_path, {"ci.py": SIMPLE})
    assert check_locked(kici_dir, tmp_path) == [
        f"kici.lock.json not found in {kici_dir}: run `kici compile` and commit it"
    ]
    result = compile_project(kici_dir, tmp_path)
    assert result.lock is not None
    write_lock(kici_dir, result.lock)
    assert check_locked(kici_dir, tmp_path) == []

    entry = kici_dir / "workflows" / "ci.py"
    entry.write_text(SIMPLE.replace('runs_on="linux"', 'runs_on="arm64"'), encoding="utf-8")
    (kici_dir / "workflows" / "other.py").write_text(SIMPLE.replace('"ci"', '"other"'), encoding="utf-8")
    drift = check_locked(kici_dir, tmp_path)
    assert len(drift) == 3
    assert drift[0].startswith('workflow "ci": source edited (contentHash ')
    assert drift[1] == 'workflow "ci": structure changed (jobs)'
    assert drift[2] == 'workflow "other": added (.kici/workflows/other.py)'

    lock_path(kici_dir).write_text("{not json", encoding="utf-8")
    (broken,) = check_locked(kici_dir, tmp_path)
    assert broken.startswith("Lock file is invalid: not valid JSON")


@pytest.mark.feature("CLI-05", "SDK-08")
def test_check_locked_returns_compile_errors(tmp_path: Path) -> None:
    source = SIMPLE.replace("run=lambda ctx: None", 'run=lambda ctx: None, needs=["ghost"]')
    kici_dir = project(tmp_path, {"ci.py": source})
    (line,) = check_locked(kici_dir, tmp_path)
    column = source.splitlines()[2].index("job(") + 1
    assert line == (
        f'.kici/workflows/ci.py:3:{column}: error [E101]: Job "build" in workflow "ci" depends on '
        'non-existent job "ghost"'
    )


@pytest.mark.feature("CLI-06")
def test_child_crash_is_a_diagnostic(tmp_path: Path) -> None:
    kici_dir = project(tmp_path, {"ci.py": "import os, sys\nprint('bye', file=sys.stderr)\nos._exit(3)\n"})
    result = compile_project(kici_dir, tmp_path)
    assert result.lock is None
    (diagnostic,) = result.diagnostics
    assert diagnostic.code == "E003"
    assert diagnostic.file == ".kici/workflows"
    assert diagnostic.message.startswith(
        "Failed to load workflow file module: the compiler process exited with code 3 without a result"
    )
    assert "bye" in diagnostic.message
    assert "bye" in result.stderr


@pytest.mark.feature("CLI-06")
def test_child_timeout_is_a_diagnostic(tmp_path: Path) -> None:
    kici_dir = project(tmp_path, {"ci.py": "import time\ntime.sleep(600)\n"})
    result = compile_project(kici_dir, tmp_path, timeout=1.5)
    assert result.lock is None
    (diagnostic,) = result.diagnostics
    assert diagnostic.code == "E003"
    assert "did not finish within 1.5 s" in diagnostic.message


@pytest.mark.feature("CLI-06")
def test_import_time_output_cannot_corrupt_the_verdict(tmp_path: Path) -> None:
    noisy = "import os\nprint('{\"lock\": null}')\nos.system('echo from-a-shell')\n" + SIMPLE
    kici_dir = project(tmp_path, {"ci.py": noisy})
    result = compile_project(kici_dir, tmp_path)
    assert result.ok, result.diagnostics
    assert '{"lock": null}' in result.stderr
    assert "from-a-shell" in result.stderr


@pytest.mark.feature("CLI-06")
def test_child_environment_is_sanitized(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KICI_TEST_LEAK", "secret-value")
    reader = "import os\nVALUE = os.environ['KICI_TEST_LEAK']\n" + SIMPLE
    kici_dir = project(tmp_path, {"ci.py": reader})
    result = compile_project(kici_dir, tmp_path)
    (diagnostic,) = result.diagnostics
    assert diagnostic.code == "E003"
    assert diagnostic.line == 2
    assert "KeyError" in diagnostic.message


@pytest.mark.feature("LOCK-07")
def test_d4_warning_when_the_dependency_lock_changes(tmp_path: Path) -> None:
    kici_dir = project(tmp_path, {"ci.py": SIMPLE})
    (kici_dir / "requirements.txt").write_text("kici==0.1.0\n", encoding="utf-8")
    first = compile_project(kici_dir, tmp_path)
    assert first.lock is not None
    write_lock(kici_dir, first.lock)
    assert compile_project(kici_dir, tmp_path).warnings == ()
    (kici_dir / "requirements.txt").write_text("kici==0.2.0\n", encoding="utf-8")
    changed = compile_project(kici_dir, tmp_path)
    assert changed.ok
    (warning,) = changed.warnings
    assert warning.code == "D4"
    assert warning.format().startswith("warning [D4]: dependencies changed: lockfileHash ")


@pytest.mark.feature("CLI-04")
def test_watch_recompiles_after_a_change(tmp_path: Path) -> None:
    kici_dir = project(tmp_path, {"ci.py": SIMPLE})
    results: list[CompileResult] = []
    arrived = [threading.Event(), threading.Event()]
    stop = threading.Event()

    def collect(result: CompileResult) -> None:
        results.append(result)
        if len(results) <= len(arrived):
            arrived[len(results) - 1].set()

    thread = threading.Thread(target=watch, args=(kici_dir, tmp_path, collect), kwargs={"stop": stop})
    thread.start()
    try:
        assert arrived[0].wait(WAIT_S)
        assert results[0].ok
        assert lock_path(kici_dir).exists()
        (kici_dir / "workflows" / "ci.py").write_text(
            SIMPLE.replace('"build"', '"package"'), encoding="utf-8"
        )
        assert arrived[1].wait(WAIT_S)
    finally:
        stop.set()
        thread.join(WAIT_S)
    assert not thread.is_alive()
    assert len(results) == 2
    written = parse_lock(lock_path(kici_dir).read_bytes())
    assert [job.name for job in written.workflows[0].jobs] == ["package"]  # type: ignore[union-attr]


@pytest.mark.feature("CLI-04")
def test_watch_never_overlaps_and_sees_changes_made_during_a_compile(tmp_path: Path) -> None:
    kici_dir = project(tmp_path, {"ci.py": SIMPLE})
    entry = kici_dir / "workflows" / "ci.py"
    stop = threading.Event()
    running = threading.Lock()
    calls: list[str] = []

    def fake_compile(kici: Path, root: Path) -> CompileResult:
        assert running.acquire(blocking=False), "compiles overlapped"
        try:
            calls.append(entry.read_text(encoding="utf-8"))
            if len(calls) == 1:
                entry.write_text(SIMPLE + "# edited during the first compile\n", encoding="utf-8")
            if len(calls) == 2:
                stop.set()
            return CompileResult(lock=None)
        finally:
            running.release()

    watch(
        kici_dir,
        tmp_path,
        lambda result: None,
        stop=stop,
        interval=0.01,
        debounce=0.01,
        compile_fn=fake_compile,
    )
    assert len(calls) == 2
    assert calls[1].endswith("# edited during the first compile\n")
