"""``hash_files`` expansion, lock-file hashing inputs, diagnostics and the parent's small helpers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kici.domain.globs import InvalidGlobError
from kici.domain.lockfile import lockfile_hash
from kici.services.compiler.api import child_env, find_kici_dir, find_repo_root
from kici.services.compiler.diagnostics import Diagnostic, error, format_all, warning
from kici.services.compiler.sources import RepoFiles, read_lockfile_hash


def tree(root: Path, paths: list[str]) -> None:
    for relative in paths:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(relative, encoding="utf-8")


@pytest.mark.feature("LOCK-06")
def test_hash_files_expansion_rules(tmp_path: Path) -> None:
    tree(tmp_path, ["src/a.py", "src/deep/b.py", "src/.env", "src/.cache/c.py", "docs/x.md", "src/skip.log"])
    (tmp_path / "outside").mkdir()
    (tmp_path / "src" / "linked").symlink_to(tmp_path / "docs", target_is_directory=True)
    (tmp_path / "src" / "file-link.py").symlink_to(tmp_path / "src" / "a.py")
    files = RepoFiles(tmp_path)
    assert files.expand_hash_files(["src/**"]) == ("src/a.py", "src/deep/b.py", "src/skip.log")
    assert files.expand_hash_files(["./src/**/*.py", "!src/deep/**"]) == ("src/a.py",)
    assert files.expand_hash_files(["src/.env", "src/.cache/*.py"]) == ("src/.cache/c.py", "src/.env")
    assert files.expand_hash_files(["!src/a.py"]) == ()
    assert files.expand_hash_files(["../outside/**", "missing/**"]) == ()
    assert files.expand_hash_files(["docs/x.md", "docs/*.md", "/docs/x.md"]) == ("docs/x.md",)
    with pytest.raises(InvalidGlobError):
        files.expand_hash_files(["!"])


@pytest.mark.feature("LOCK-06")
def test_hash_files_are_order_and_duplicate_insensitive(tmp_path: Path) -> None:
    tree(tmp_path, ["a.txt", "b/c.txt"])
    entry = tmp_path / "wf.py"
    entry.write_text("x\r\n", encoding="utf-8")
    files = RepoFiles(tmp_path)
    one = files.content_hash(entry, ["a.txt", "b/*.txt"])
    two = files.content_hash(entry, ["b/*.txt", "a.txt", "a.txt"])
    assert one == two
    assert one[1] == ("a.txt", "b/c.txt")
    (tmp_path / "b" / "c.txt").write_text("changed", encoding="utf-8")
    assert files.content_hash(entry, ["a.txt", "b/*.txt"])[0] != one[0]
    entry.write_text("x\n", encoding="utf-8")
    assert files.content_hash(entry, ["a.txt"]) == RepoFiles(tmp_path).content_hash(entry, ["a.txt"])


@pytest.mark.feature("LOCK-07")
def test_lockfile_hash_prefers_uv(tmp_path: Path) -> None:
    assert read_lockfile_hash(tmp_path) is None
    (tmp_path / "requirements.txt").write_text("kici\n", encoding="utf-8")
    assert read_lockfile_hash(tmp_path) == lockfile_hash("pip", "kici\n")
    (tmp_path / "uv.lock").write_text("version = 1\n", encoding="utf-8")
    assert read_lockfile_hash(tmp_path) == lockfile_hash("uv", "version = 1\n")


@pytest.mark.feature("CLI-03")
def test_diagnostic_format_and_json_round_trip() -> None:
    located = error("E101", "boom", file="a.py", line=3, column=7, suggestion="fix it")
    assert located.format() == "a.py:3:7: error [E101]: boom\n  Suggestion: fix it"
    whole_file = warning("W007", "careful", file="a.py")
    assert whole_file.format() == "a.py:1:1: warning [W007]: careful"
    assert error("E001", "none").format() == "error [E001]: none"
    for diagnostic in (located, whole_file):
        assert Diagnostic.from_json(diagnostic.to_json()) == diagnostic
    assert format_all([whole_file, located]).splitlines()[0].startswith("a.py:3:7: error")
    for bad in (
        {"code": "E1"},
        {"code": "E1", "severity": "fatal", "message": "m"},
        {"code": "E1", "severity": "error", "message": "m", "line": 0},
    ):
        with pytest.raises(ValueError, match="malformed"):
            Diagnostic.from_json(bad)


@pytest.mark.feature("CLI-03", "CLI-06")
def test_find_kici_dir(tmp_path: Path) -> None:
    kici_dir = tmp_path / ".kici"
    assert find_kici_dir(None, tmp_path) is None
    (kici_dir / "workflows").mkdir(parents=True)
    assert find_kici_dir(None, tmp_path) == kici_dir
    assert find_kici_dir(None, kici_dir) == kici_dir
    assert find_kici_dir(kici_dir, Path("/")) == kici_dir
    assert find_kici_dir(tmp_path, tmp_path) is None


@pytest.mark.feature("CLI-06")
def test_child_env_is_an_allowlist() -> None:
    env = child_env({"PATH": "/bin", "HOME": "/root", "AWS_SECRET_ACCESS_KEY": "x", "PYTHONPATH": "/evil"})
    assert env["PATH"] == "/bin"
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert env["PYTHONHASHSEED"] == "0"
    assert env["PYTHONPATH"] != "/evil"
    assert os.path.isdir(os.path.join(env["PYTHONPATH"], "kici"))


@pytest.mark.feature("CLI-06")
def test_find_repo_root(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    (plain / ".kici" / "workflows").mkdir(parents=True)
    assert find_repo_root(plain) == plain.resolve()
    assert find_repo_root(plain / ".kici") == plain.resolve()
    repo = tmp_path / "repo"
    (repo / "sub" / ".kici").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    assert find_repo_root(repo / "sub" / ".kici") == repo.resolve()
