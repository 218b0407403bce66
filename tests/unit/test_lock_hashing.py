"""Worked examples of the lock's hashes (spec 00 §2.3)."""

from __future__ import annotations

import hashlib

import pytest

from kici.domain.lockfile import (
    LockFile,
    LockSource,
    LockWorkflow,
    asset_digest,
    lockfile_hash,
    normalize_asset_path,
    pick_lockfile_hash,
    resolved_hash_files,
    top_content_hash,
    with_content_hash,
    workflow_content_hash,
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.feature("LOCK-06")
def test_workflow_hash_examples() -> None:
    assert workflow_content_hash("print('hi')\r\n", None) == sha(b"5:print('hi')\n")
    assert workflow_content_hash("a\rb", None) == sha(b"5:a\nb")
    assert workflow_content_hash("x", "Makefile\nall:\r\n") == sha(b"5:x\0Makefile\nall:\n")
    assert workflow_content_hash("x", "") == sha(b"5:x\0")
    assert workflow_content_hash("é", None) == sha("5:é".encode())


@pytest.mark.feature("LOCK-06")
def test_asset_digest_example() -> None:
    files = [("lib/b.py", b"B"), ("./Makefile", b"all:\n"), ("lib\\a.py", None), ("Makefile", b"all:\n")]
    assert asset_digest(files) == "Makefile\nall:\nlib/a.py\nlib/b.py\nB"
    assert resolved_hash_files(p for p, _ in files) == ("Makefile", "lib/a.py", "lib/b.py")
    assert asset_digest([]) == ""


@pytest.mark.feature("LOCK-06")
def test_binary_assets_hash_their_exact_bytes() -> None:
    digest = asset_digest([("blob.bin", b"\xff\x00\xfe")])
    assert workflow_content_hash("w", digest) == sha(b"5:w\0blob.bin\n\xff\x00\xfe")
    assert workflow_content_hash("w", asset_digest([("blob.bin", b"\xff\x00\xfd")])) != workflow_content_hash(
        "w", digest
    )


@pytest.mark.feature("LOCK-06")
@pytest.mark.parametrize(
    ("raw", "normalized"),
    [("./a/b", "a/b"), ("a//b", "a/b"), ("a\\b", "a/b"), ("a/./b", "a/b"), ("a/", "a"), (".", "")],
)
def test_asset_paths_are_posix_normalized(raw: str, normalized: str) -> None:
    assert normalize_asset_path(raw) == normalized


@pytest.mark.feature("LOCK-07")
def test_top_level_hash_is_sorted_compact_json() -> None:
    empty = LockFile(content_hash="")
    canonical = '{"schemaVersion":1,"source":{"export":"#default","file":".kici/workflows"},"workflows":[]}'
    assert top_content_hash(empty) == sha(canonical.encode())
    assert with_content_hash(empty).content_hash == top_content_hash(empty)
    workflow = LockWorkflow(
        name="ci", source=LockSource(file=".kici/workflows/ci.py", export="#ci"), content_hash="ü"
    )
    lock = LockFile(source=workflow.source, content_hash="", workflows=(workflow,))
    expected = (
        '{"schemaVersion":1,"source":{"export":"#ci","file":".kici/workflows/ci.py"},"workflows":[{'
        '"compileSchemaVersion":5,"contentHash":"ü","jobs":[],"name":"ci",'
        '"source":{"export":"#ci","file":".kici/workflows/ci.py"},"triggers":[]}]}'
    )
    assert top_content_hash(lock) == sha(expected.encode())


@pytest.mark.feature("LOCK-07")
def test_lockfile_hash_candidates() -> None:
    assert lockfile_hash("uv", "version = 1\n") == sha(b"uv\nversion = 1\n")
    both = {".kici/uv.lock": b"u", ".kici/requirements.txt": b"r"}
    assert pick_lockfile_hash(both) == lockfile_hash("uv", b"u")
    assert pick_lockfile_hash({".kici/uv.lock": None, ".kici/requirements.txt": b"r"}) == sha(b"pip\nr")
    assert pick_lockfile_hash({}) is None
