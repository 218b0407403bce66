"""The runner's stdlib content hash equals the lock's (00 §2.3, drift rule D1), and job lookup errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.lockfile import hashing
from kici.services.runner import loader

pytestmark = pytest.mark.feature("EXE-06")

texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(texts, st.none() | texts)
def test_workflow_hash_equals_the_domain_function(raw: str, digest: str | None) -> None:
    assert loader.workflow_content_hash(raw, digest) == hashing.workflow_content_hash(raw, digest)


def test_asset_digest_equals_the_domain_function(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_bytes(b"one\r\ntwo")
    (tmp_path / "b.bin").write_bytes(b"\xff\xfe raw")
    files = ["b.bin", "./a/x.txt", "a/x.txt", "missing.txt"]
    expected = hashing.asset_digest(
        [(p, (tmp_path / p).read_bytes() if (tmp_path / p).exists() else None) for p in files]
    )
    assert loader.asset_digest(tmp_path, files) == expected


def test_stale_source_gives_the_drift_message(tmp_path: Path) -> None:
    path = tmp_path / "wf.py"
    path.write_text("x = 1\n")
    good = hashing.workflow_content_hash("x = 1\n", None)
    loader.check_content_hash(path, tmp_path, good, None)
    path.write_text("x = 2\r\n")
    with pytest.raises(loader.LoadError) as caught:
        loader.check_content_hash(path, tmp_path, good, None)
    message = str(caught.value)
    assert message.startswith("lock file is out of date (workflow source changed without regenerating")
    assert good[:12] in message
    assert "kici SDK" in message


def test_crlf_checkout_still_matches(tmp_path: Path) -> None:
    path = tmp_path / "wf.py"
    path.write_bytes(b"x = 1\r\ny = 2\r\n")
    loader.check_content_hash(path, tmp_path, hashing.workflow_content_hash("x = 1\ny = 2\n", None), None)


def test_hash_files_change_is_drift(tmp_path: Path) -> None:
    path = tmp_path / "wf.py"
    path.write_text("x = 1\n")
    (tmp_path / "data.txt").write_text("v1")
    expected = hashing.workflow_content_hash("x = 1\n", hashing.asset_digest([("data.txt", b"v1")]))
    loader.check_content_hash(path, tmp_path, expected, ["data.txt"])
    (tmp_path / "data.txt").write_text("v2")
    with pytest.raises(loader.LoadError):
        loader.check_content_hash(path, tmp_path, expected, ["data.txt"])


def _write(tmp_path: Path, body: str) -> None:
    workflows = tmp_path / ".kici" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "ci.py").write_text("from kici.sdk import workflow, job, step, push\n" + body)


def test_finds_workflow_by_export_or_name_and_job_by_lock_name(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "a = workflow('first', on=push(), jobs=[job(runs_on='x', steps=[lambda ctx: None])])\n"
        "b = [workflow('second', on=push(), jobs=[job('named', runs_on='x', steps=[lambda ctx: None])])]\n",
    )
    by_export = loader.load_job(tmp_path, ".kici/workflows/ci.py", ".kici", "job-1", export="#a")
    assert (by_export.workflow_name, by_export.job_name) == ("first", "job-1")
    by_name = loader.load_job(tmp_path, ".kici/workflows/ci.py", ".kici", "named", workflow_name="second")
    assert by_name.job.name == "named"
    with pytest.raises(
        loader.LoadError, match=r"workflow #c not found .* \(available: #a \(first\), #b\[0\] \(second\)\)"
    ):
        loader.load_job(tmp_path, ".kici/workflows/ci.py", ".kici", "named", export="#c")
    with pytest.raises(loader.LoadError, match="workflow file not found"):
        loader.load_job(tmp_path, ".kici/workflows/nope.py", ".kici", "named")
