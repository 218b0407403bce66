"""The universal-git lock fetch's two shortcuts (HOOK-09), against a real ``git http-backend``.

A push to the default branch must cost one network round trip: the clone's tip is the pushed SHA, so
it is not fetched again, and a lock blob already read is not read again. Every check of the full
path (regular file, size, parse) still holds for what the shortcut serves, because only blobs read
through that path are remembered.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from kici.adapters.providers.universal_git import UniversalGitLockFetcher
from kici.domain.providers import RepoLockFileParseError
from kici.domain.webhooks.models import LOCK_FILE_PATH
from kici.domain.webhooks.normalizers.universal_git import parse_git_config
from kici.testing.git_http import GitHttpServer, commit_files, create_repo, git_env
from tests.contract.test_lock_fetchers import lock_text, workflow_names

REPO = "acme/app"


@pytest.fixture
def forge(tmp_path: Path) -> Iterator[tuple[GitHttpServer, Path]]:
    bare = create_repo(tmp_path / "git", REPO)
    with GitHttpServer(tmp_path / "git") as server:
        yield server, bare


def fetcher(server: GitHttpServer) -> UniversalGitLockFetcher:
    config = parse_git_config({"preset": "gitea", "gitUrlTemplate": server.base_url + "/{repo}.git"})
    return UniversalGitLockFetcher(config, None)


def posts(server: GitHttpServer) -> int:
    """git's protocol-v2 requests (ls-refs, fetch): one network exchange each."""
    return sum(1 for method, _, _ in server.requests if method == "POST")


@pytest.mark.feature("HOOK-09", "HOOK-11")
async def test_an_unchanged_lock_at_the_new_tip_costs_only_the_clone(
    forge: tuple[GitHttpServer, Path],
) -> None:
    server, bare = forge
    first = commit_files(bare, "main", {LOCK_FILE_PATH: lock_text("ci")})
    lock = fetcher(server)
    before = posts(server)
    full = await lock.fetch_lock_file(REPO, first, {})
    full_cost = posts(server) - before
    second = commit_files(bare, "main", {"README.md": "a change that leaves the lock alone\n"})
    before = posts(server)
    remembered = await lock.fetch_lock_file(REPO, second, {})
    shortcut_cost = posts(server) - before
    assert remembered is full
    assert workflow_names(remembered) == ["ci"]
    assert shortcut_cost < full_cost
    assert shortcut_cost == 2, "ls-refs and fetch of the clone only"


@pytest.mark.feature("HOOK-09")
async def test_a_changed_lock_is_read_again_and_an_older_commit_is_fetched_by_sha(
    forge: tuple[GitHttpServer, Path],
) -> None:
    server, bare = forge
    old = commit_files(bare, "main", {LOCK_FILE_PATH: lock_text("old")})
    new = commit_files(bare, "main", {LOCK_FILE_PATH: lock_text("new")})
    lock = fetcher(server)
    assert workflow_names(await lock.fetch_lock_file(REPO, new, {})) == ["new"]
    assert workflow_names(await lock.fetch_lock_file(REPO, old, {})) == ["old"]
    assert workflow_names(await lock.fetch_lock_file(REPO, new, {})) == ["new"]


@pytest.mark.feature("HOOK-09", "HOOK-23")
async def test_a_corrupt_lock_is_never_remembered(forge: tuple[GitHttpServer, Path]) -> None:
    server, bare = forge
    bad = commit_files(bare, "main", {LOCK_FILE_PATH: "{ not json"})
    lock = fetcher(server)
    for _ in range(2):
        with pytest.raises(RepoLockFileParseError):
            await lock.fetch_lock_file(REPO, bad, {})


def push_symlinked_lock(bare: Path, work: Path) -> str:
    """A commit whose lock is a symbolic link to ``.kici/real.json``, pushed to main; its SHA."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=work, env=git_env(), capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    subprocess.run(["git", "clone", "--quiet", str(bare), str(work)], env=git_env(), check=True)
    (work / LOCK_FILE_PATH).symlink_to("real.json")
    git("add", LOCK_FILE_PATH)
    git("commit", "--quiet", "-m", "symlinked lock")
    git("push", "--quiet", "origin", "HEAD:main")
    return git("rev-parse", "HEAD")


@pytest.mark.feature("HOOK-09")
async def test_a_symlinked_lock_always_takes_the_full_path(
    forge: tuple[GitHttpServer, Path], tmp_path: Path
) -> None:
    server, bare = forge
    commit_files(bare, "main", {".kici/real.json": lock_text("linked")})
    sha = await trio.to_thread.run_sync(push_symlinked_lock, bare, tmp_path / "work")
    lock = fetcher(server)
    first = await lock.fetch_lock_file(REPO, sha, {})
    before = posts(server)
    again = await lock.fetch_lock_file(REPO, sha, {})
    assert workflow_names(first) == workflow_names(again) == ["linked"]
    assert again is not first
    assert posts(server) - before > 2
