"""Drift (spec 00 §2.6): D1 source check on the runner and D2 semantic lock comparison."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kici.domain.lockfile import (
    STALE_LOCK_MESSAGE,
    LockFile,
    LockWorkflow,
    check_source_drift,
    diff_locks,
    dump_lock,
    parse_lock,
    with_content_hash,
    workflow_content_hash,
)
from tests.strategies.lockfile import DECODED_CHARS, lock_files, lock_workflows


@pytest.mark.feature("LOCK-10")
@given(
    lock_workflows(),
    st.text(alphabet=DECODED_CHARS, max_size=60),
    st.none() | st.text(alphabet=DECODED_CHARS, max_size=30),
    st.text(alphabet=DECODED_CHARS, min_size=1, max_size=5),
)
def test_source_check_passes_iff_the_hash_matches(
    workflow: LockWorkflow, raw: str, digest: str | None, extra: str
) -> None:
    locked = attrs.evolve(workflow, content_hash=workflow_content_hash(raw, digest), compile_schema_version=5)
    assert check_source_drift(locked, raw, digest, sdk_version="1.2.3") is None
    assert check_source_drift(locked, raw.replace("\n", "\r\n"), digest, sdk_version="1.2.3") is None
    edited = raw + extra.replace("\r", "x").replace("\n", "y")
    message = check_source_drift(locked, edited, digest, sdk_version="1.2.3")
    assert message is not None
    assert message.startswith(STALE_LOCK_MESSAGE)
    assert "1.2.3" in message
    assert locked.content_hash[:12] in message
    assert workflow_content_hash(edited, digest)[:12] in message


@pytest.mark.feature("LOCK-11")
@given(lock_files())
def test_a_lock_does_not_drift_from_itself_or_its_reparse(lock: LockFile) -> None:
    assert diff_locks(lock, lock) == []
    assert diff_locks(lock, parse_lock(dump_lock(lock))) == []


@pytest.mark.feature("LOCK-11")
@given(lock_files(), st.data())
def test_each_kind_of_change_is_reported_for_its_workflow(lock: LockFile, data: st.DataObject) -> None:
    assume(lock.workflows)
    index = data.draw(st.integers(0, len(lock.workflows) - 1))
    workflow = lock.workflows[index]
    rest = (*lock.workflows[:index], *lock.workflows[index + 1 :])
    how = data.draw(st.sampled_from(["removed", "added", "edited", "structure", "deps"]))
    if how == "removed":
        committed, regenerated, expected = lock, attrs.evolve(lock, workflows=rest), "removed"
    elif how == "added":
        committed, regenerated, expected = attrs.evolve(lock, workflows=rest), lock, "added"
    elif how == "edited":
        changed = attrs.evolve(workflow, content_hash="f" * 64, compile_schema_version=5)
        assume(changed != workflow)
        regenerated = attrs.evolve(
            lock, workflows=(*lock.workflows[:index], changed, *lock.workflows[index + 1 :])
        )
        committed, expected = lock, "source edited"
    elif how == "structure":
        changed = attrs.evolve(workflow, description=(workflow.description or "") + " (changed)")
        regenerated = attrs.evolve(
            lock, workflows=(*lock.workflows[:index], changed, *lock.workflows[index + 1 :])
        )
        committed, expected = lock, "structure changed (description)"
    else:
        committed, regenerated = lock, attrs.evolve(lock, lockfile_hash=(lock.lockfile_hash or "") + "0")
        lines = diff_locks(committed, with_content_hash(regenerated))
        assert len(lines) == 1
        assert lines[0].startswith("lockfileHash differs")
        return
    lines = diff_locks(committed, with_content_hash(regenerated))
    assert f'workflow "{workflow.name}": {expected}' in "\n".join(lines)
    assert all(f'"{workflow.name}"' in line for line in lines)
