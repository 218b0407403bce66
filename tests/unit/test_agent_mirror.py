"""Warm git mirrors and job checkouts (10 §4 phase 2, HOOK-22) against a real git smart-HTTP server.

The server demands ``Authorization: Basic x-access-token:<token>``; the tests check the token only
ever travels in git's environment (never argv, URL, config file or error message), that a second job
of a repository fetches into the existing mirror instead of cloning again, and the fallbacks for
servers that refuse to serve a commit by SHA (protocol v0, through a git wrapper).
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from kici.domain.protocol import GitAuth, GitAuthKind, SshHostKeyPolicy
from kici.sdk.masking import Masker
from kici.services.agent.mirror import (
    CloneError,
    GitCredentials,
    MirrorStore,
    credentials_for,
    git_env,
    split_credentials,
    ssh_command,
)
from kici.testing.git_http import GitHttpServer, commit_files, create_repo

pytestmark = pytest.mark.feature("HOOK-22", "EXE-06")

TOKEN = "ghs_MirrorToken_0123456789"
HEADER_B64 = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[GitHttpServer, Path]]:
    served = tmp_path / "served"
    bare = create_repo(served, "acme/app")
    commit_files(bare, "main", {"README": "one\n"}, message="one")
    with GitHttpServer(served, credentials=("x-access-token", TOKEN)) as git_server:
        yield git_server, bare


def _all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _git(path: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _head(path: Path) -> str:
    return _git(path, "rev-parse", "HEAD")


async def test_a_second_job_fetches_into_the_warm_mirror(
    server: tuple[GitHttpServer, Path], tmp_path: Path
) -> None:
    git_server, bare = server
    url = git_server.url_for("acme/app")
    first_sha = _head(bare)
    store = MirrorStore(tmp_path / "mirrors")
    credentials = credentials_for(TOKEN, None)
    lines: list[str] = []

    one = await store.checkout(
        repo_url=url,
        sha=first_sha,
        ref="refs/heads/main",
        dest=tmp_path / "w1",
        credentials=credentials,
        log=lines.append,
    )
    assert (one.created, one.fetched, one.sha) == (True, True, first_sha)
    assert (tmp_path / "w1" / "README").read_text() == "one\n"
    assert _head(tmp_path / "w1") == first_sha
    mirror_inode = one.mirror.stat().st_ino
    requests = len(git_server.requests)

    same = await store.checkout(
        repo_url=url, sha=first_sha, ref="refs/heads/main", dest=tmp_path / "w2", credentials=credentials
    )
    assert (same.created, same.fetched) == (False, False)
    assert len(git_server.requests) == requests  # the commit was already there: no network at all

    second_sha = commit_files(bare, "main", {"README": "two\n"}, message="two")
    two = await store.checkout(
        repo_url=url, sha=second_sha, ref="refs/heads/main", dest=tmp_path / "w3", credentials=credentials
    )
    assert (two.created, two.fetched, two.mirror) == (False, True, one.mirror)
    assert two.mirror.stat().st_ino == mirror_inode
    assert (tmp_path / "w3" / "README").read_text() == "two\n"
    assert [method for method, _path, _ok in git_server.requests[requests:]] == ["GET", "POST"]
    assert all(ok for _method, _path, ok in git_server.requests)
    assert any("Created the mirror" in line for line in lines)
    # the workspace is shallow, its origin is the plain URL, and nothing on disk holds the token
    assert (tmp_path / "w3" / ".git" / "shallow").exists()
    assert _git(tmp_path / "w3", "remote", "get-url", "origin") == url
    for root in (tmp_path / "mirrors", tmp_path / "w1", tmp_path / "w3"):
        content = _all_bytes(root)
        assert TOKEN.encode() not in content
        assert HEADER_B64.encode() not in content


async def test_the_token_is_never_on_a_command_line(
    server: tuple[GitHttpServer, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    git_server, bare = server
    calls: list[tuple[list[str], dict[str, str]]] = []
    real = trio.run_process

    async def spy(argv: list[str], **kwargs: Any) -> Any:
        calls.append((list(argv), dict(kwargs.get("env") or {})))
        return await real(argv, **kwargs)

    monkeypatch.setattr(trio, "run_process", spy)
    store = MirrorStore(tmp_path / "mirrors")
    await store.checkout(
        repo_url=git_server.url_for("acme/app"),
        sha=_head(bare),
        ref="refs/heads/main",
        dest=tmp_path / "w",
        credentials=credentials_for(TOKEN, None),
    )
    assert calls
    for argv, env in calls:
        assert not any(TOKEN in arg or HEADER_B64 in arg for arg in argv)
        assert not any(k.startswith("GIT_TRACE") for k in env)
    header_envs = [env for _argv, env in calls if any(HEADER_B64 in v for v in env.values())]
    assert header_envs  # the fetch from the forge carried it, as config in the environment
    assert all(argv[3] == "fetch" for argv, env in calls if env in header_envs)


async def test_a_bad_token_is_a_clone_error_without_the_token(
    server: tuple[GitHttpServer, Path], tmp_path: Path
) -> None:
    git_server, bare = server
    wrong = "ghs_Wrong_abcdef0123"
    credentials = credentials_for(wrong, None)
    assert credentials is not None
    masker = Masker(credentials.sensitive())
    store = MirrorStore(tmp_path / "mirrors")
    with pytest.raises(CloneError) as caught:
        await store.checkout(
            repo_url=git_server.url_for("acme/app"),
            sha=_head(bare),
            ref="refs/heads/main",
            dest=tmp_path / "w",
            credentials=credentials,
            mask=masker.mask,
        )
    message = str(caught.value)
    assert message.startswith("could not fetch refs/heads/main")
    assert wrong not in message
    assert not (tmp_path / "w").exists()
    assert not all(ok for _m, _p, ok in git_server.requests)


async def test_tenants_never_share_a_mirror(server: tuple[GitHttpServer, Path], tmp_path: Path) -> None:
    """A commit in tenant A's mirror is not served to tenant B without B's own valid credentials."""
    git_server, bare = server
    url, sha = git_server.url_for("acme/app"), _head(bare)
    store = MirrorStore(tmp_path / "mirrors")
    first = await store.checkout(
        repo_url=url,
        sha=sha,
        ref="main",
        dest=tmp_path / "a",
        scope="org-a",
        credentials=credentials_for(TOKEN, None),
    )
    assert first.created
    with pytest.raises(CloneError):
        await store.checkout(
            repo_url=url,
            sha=sha,
            ref="main",
            dest=tmp_path / "b",
            scope="org-b",
            credentials=credentials_for("ghs_NotOrgB_000000", None),
        )
    second = await store.checkout(
        repo_url=url,
        sha=sha,
        ref="main",
        dest=tmp_path / "b2",
        scope="org-b",
        credentials=credentials_for(TOKEN, None),
    )
    assert (second.created, second.fetched) == (False, True)
    assert second.mirror != first.mirror


@pytest.fixture
def v0_git(tmp_path: Path) -> str:
    """A ``git`` that speaks protocol v0, where a server refuses commits it did not advertise."""
    wrapper = tmp_path / "git-v0"
    wrapper.write_text('#!/bin/sh\nexec git -c protocol.version=0 "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    return str(wrapper)


async def test_a_commit_the_server_will_not_serve_by_sha_comes_through_its_ref(
    tmp_path: Path, v0_git: str
) -> None:
    bare = create_repo(tmp_path / "repos", "lib")
    old = commit_files(bare, "main", {"f": "old\n"}, message="old")
    commit_files(bare, "main", {"f": "new\n"}, message="new")
    lines: list[str] = []
    store = MirrorStore(tmp_path / "mirrors", git=v0_git)
    done = await store.checkout(
        repo_url=str(bare), sha=old, ref="main", dest=tmp_path / "w", log=lines.append
    )
    assert done.sha == old
    assert (tmp_path / "w" / "f").read_text() == "old\n"
    assert any("by SHA failed; fetching main instead" in line for line in lines)

    missing = "f" * 40
    with pytest.raises(CloneError, match=f"commit {missing} is not reachable from main"):
        await store.checkout(repo_url=str(bare), sha=missing, ref="main", dest=tmp_path / "w2")


async def test_a_ref_alone_checks_out_its_tip(tmp_path: Path) -> None:
    bare = create_repo(tmp_path / "repos", "lib")
    tip = commit_files(bare, "main", {"f": "x\n"})
    store = MirrorStore(tmp_path / "mirrors")
    done = await store.checkout(repo_url=f"file://{bare}", sha="", ref="refs/heads/main", dest=tmp_path / "w")
    assert done.sha == tip
    assert _head(tmp_path / "w") == tip


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sha": "not-a-sha"}, "invalid commit SHA"),
        ({"ref": "--upload-pack=evil"}, "invalid ref"),
        ({"sha": "", "ref": ""}, "names neither a commit nor a ref"),
        ({"repo_url": " "}, "no repository URL"),
    ],
)
async def test_bad_checkout_requests_are_refused_before_git_runs(
    tmp_path: Path, changes: dict[str, str], message: str
) -> None:
    request = {"repo_url": "https://git.example/acme/app.git", "sha": "a" * 40, "ref": "main"}
    request.update(changes)
    with pytest.raises(CloneError, match=message):
        await MirrorStore(tmp_path / "mirrors").checkout(dest=tmp_path / "w", **request)
    assert not (tmp_path / "mirrors").exists()


def test_credentials_in_a_url_are_split_off() -> None:
    assert split_credentials("https://bot:s3cret%21@git.example:8443/a/b.git") == (
        "https://git.example:8443/a/b.git",
        ("bot", "s3cret!"),
    )
    assert split_credentials("https://user@git.example/a.git") == ("https://git.example/a.git", None)
    assert split_credentials("/srv/repos/a.git") == ("/srv/repos/a.git", None)
    from_url = credentials_for(None, None, ("bot", "pw"))
    assert from_url is not None
    assert from_url.header == "Authorization: Basic " + base64.b64encode(b"bot:pw").decode()


def test_source_auth_wins_over_the_token_and_picks_its_user() -> None:
    auth = GitAuth(kind=GitAuthKind.BASIC, secret=TOKEN)
    chosen = credentials_for(TOKEN, auth)
    assert chosen is not None
    assert chosen.user == "x-access-token"
    assert TOKEN not in repr(chosen)
    ssh = credentials_for(None, GitAuth(kind=GitAuthKind.SSH, secret="KEY"))
    assert ssh is not None
    assert ssh.user == "git"


def test_git_environment_scopes_the_header_and_drops_the_agents_git_variables() -> None:
    credentials = GitCredentials(GitAuthKind.BASIC, "x-access-token", TOKEN)
    base = {"PATH": "/usr/bin", "GIT_DIR": "/elsewhere", "GIT_TRACE_CURL": "1", "HOME": "/root"}
    env = git_env(base, "https://git.example:8443/acme/app.git", credentials)
    assert "GIT_DIR" not in env
    assert "GIT_TRACE_CURL" not in env
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    pairs = {
        env[f"GIT_CONFIG_KEY_{i}"]: env[f"GIT_CONFIG_VALUE_{i}"] for i in range(int(env["GIT_CONFIG_COUNT"]))
    }
    assert pairs["credential.helper"] == ""
    assert pairs["http.https://git.example:8443/.extraHeader"] == credentials.header
    assert not any(TOKEN in value for value in env.values())


def test_ssh_keys_go_through_a_private_key_file(tmp_path: Path) -> None:
    pinned = GitCredentials(GitAuthKind.SSH, "git", "KEY", SshHostKeyPolicy.PINNED, "host ssh-ed25519 AAAA")
    command = ssh_command(pinned, tmp_path)
    assert f"-i {tmp_path / 'key'}" in command
    assert "StrictHostKeyChecking=yes" in command
    assert f"UserKnownHostsFile={tmp_path / 'known_hosts'}" in command
    relaxed = ssh_command(GitCredentials(GitAuthKind.SSH, "git", "KEY"), tmp_path)
    assert "StrictHostKeyChecking=accept-new" in relaxed
    env = git_env(os.environ, "ssh://git@host/a.git", pinned, tmp_path)
    assert env["GIT_SSH_COMMAND"] == command
    assert "KEY" not in command
