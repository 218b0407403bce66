"""Examples of D1 (stale source) and D2 (``kici compile --locked``) reports (spec 00 §2.6)."""

from __future__ import annotations

import attrs
import pytest

from kici.domain.lockfile import (
    LockFile,
    LockJob,
    LockSource,
    LockWorkflow,
    check_source_drift,
    diff_locks,
    with_content_hash,
    workflow_content_hash,
)

RAW = "from kici.sdk import workflow\nci = workflow('ci', jobs=[])\n"


def _workflow(name: str, raw: str = RAW, **changes: object) -> LockWorkflow:
    source = LockSource(file=f".kici/workflows/{name}.py", export=f"#{name}")
    workflow = LockWorkflow(name=name, source=source, content_hash=workflow_content_hash(raw, None))
    return attrs.evolve(workflow, **changes)


def _lock(*workflows: LockWorkflow, lockfile: str | None = None) -> LockFile:
    source = workflows[0].source if workflows else LockSource(file=".kici/workflows", export="#default")
    return with_content_hash(
        LockFile(source=source, content_hash="", lockfile_hash=lockfile, workflows=workflows)
    )


@pytest.mark.feature("LOCK-10")
def test_stale_source_message() -> None:
    workflow = _workflow("ci")
    assert check_source_drift(workflow, RAW.replace("\n", "\r\n"), None, sdk_version="0.1.0") is None
    message = check_source_drift(workflow, RAW + "# edit\n", None, sdk_version="0.1.0")
    new = workflow_content_hash(RAW + "# edit\n", None)
    assert message == (
        "lock file is out of date (workflow source changed without regenerating the lock file): "
        f'workflow "ci" (.kici/workflows/ci.py): lock contentHash {workflow.content_hash[:12]}… '
        f"(compile schema 5), source hashes to {new[:12]}… (compile schema 5, kici SDK 0.1.0). "
        "Run `kici compile` and commit .kici/kici.lock.json."
    )


@pytest.mark.feature("LOCK-10")
def test_asset_changes_and_unreadable_sources_are_drift() -> None:
    with_assets = _workflow("ci", content_hash=workflow_content_hash(RAW, "Makefile\nall:\n"))
    assert check_source_drift(with_assets, RAW, "Makefile\nall:\n", sdk_version="1") is None
    assert check_source_drift(with_assets, RAW, "Makefile\nall: x\n", sdk_version="1") is not None
    assert check_source_drift(with_assets, RAW, None, sdk_version="1") is not None
    unreadable = _workflow("ci", content_hash="", compile_schema_version=0)
    message = check_source_drift(unreadable, RAW, None, sdk_version="1")
    assert message is not None
    assert "lock contentHash (none) (compile schema 0)" in message


@pytest.mark.feature("LOCK-11")
def test_locked_diff_lists_every_change_per_workflow() -> None:
    committed = _lock(_workflow("ci"), _workflow("deploy"), _workflow("old"), lockfile="a" * 64)
    job = LockJob(name="lint", needs=())
    regenerated = _lock(
        _workflow("ci", raw=RAW + "# edited\n"),
        _workflow("deploy", jobs=(job,), description="d"),
        _workflow("new"),
        lockfile="b" * 64,
    )
    assert diff_locks(committed, regenerated) == [
        f"lockfileHash differs (dependencies changed): committed {'a' * 12}…, regenerated {'b' * 12}…",
        f'workflow "ci": source edited (contentHash {committed.workflows[0].content_hash[:12]}… -> '
        f"{regenerated.workflows[0].content_hash[:12]}…)",
        'workflow "deploy": structure changed (jobs, description)',
        'workflow "new": added (.kici/workflows/new.py)',
        'workflow "old": removed (.kici/workflows/old.py)',
    ]


@pytest.mark.feature("LOCK-11")
def test_locked_diff_reports_schema_order_and_nothing_for_equal_locks() -> None:
    lock = _lock(_workflow("a"), _workflow("b"))
    assert diff_locks(lock, lock) == []
    assert diff_locks(lock, attrs.evolve(lock, content_hash="stale")) == []
    assert diff_locks(lock, attrs.evolve(lock, schema_version=2)) == [
        "schemaVersion differs: committed 1, regenerated 2"
    ]
    swapped = _lock(_workflow("b"), _workflow("a"))
    assert diff_locks(lock, swapped) == [
        "workflow order differs: committed ['a', 'b'], regenerated ['b', 'a']"
    ]
    assert diff_locks(_lock(), _lock(lockfile="c" * 64)) == [
        f"lockfileHash differs (dependencies changed): committed (none), regenerated {'c' * 12}…"
    ]
