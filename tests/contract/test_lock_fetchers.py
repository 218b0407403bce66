"""The LockFileFetcher contract (30 §1) against the local-file and universal-git adapters.

Universal-git runs against a real ``git http-backend`` on loopback that demands HTTP Basic
authentication (``kici.testing.git_http``), so every fetch below really clones, sparse-checks-out
and fetches by SHA over smart HTTP. Contract: ``None`` when the repository has no lock, the parsed
lock when it has one, :class:`RepoLockFileParseError` (naming repo and ref) when the lock is there
but unusable, including above 5 MiB.
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from kici.adapters.providers.local import LocalLockFileFetcher, local_bundle
from kici.adapters.providers.universal_git import (
    GitBudgetExceededError,
    GitCommandError,
    UniversalGitCredentials,
    UniversalGitLockFetcher,
    universal_git_bundle,
)
from kici.domain.events import SimulatedEvent
from kici.domain.lockfile import LockFile, LockSource, LockWorkflow, PushTrigger, dump_lock
from kici.domain.providers import (
    GitAuthKind,
    LockFileFetcher,
    RepoLockFileParseError,
    resolve_git_auth,
)
from kici.domain.webhooks.lock_cache import LockCache
from kici.domain.webhooks.models import LOCK_FILE_PATH, MAX_LOCK_FILE_BYTES
from kici.domain.webhooks.normalizers.local import LocalConfig
from kici.domain.webhooks.normalizers.universal_git import CredentialRef, GitConfig, parse_git_config
from kici.domain.webhooks.payload import InvalidRepoIdentifierError
from kici.domain.webhooks.sources import GenericSource, SourceKind
from kici.testing.git_http import GitHttpServer, commit_files, create_repo, git_env

REPO = "acme/app"
USER, PASSWORD = "ci-bot", "s3cret-pat-value"


def lock_text(label: str) -> str:
    workflow = LockWorkflow(
        name=label,
        source=LockSource(file=f".kici/workflows/{label}.py", export=f"#{label}"),
        content_hash="ab" * 32,
        triggers=(PushTrigger(),),
    )
    return dump_lock(LockFile(content_hash="cd" * 32, workflows=(workflow,)))


def workflow_names(lock: LockFile | None) -> list[str]:
    assert lock is not None
    return [w.name for w in lock.workflows]


@attrs.define
class World:
    """A provider with one repository; ``publish`` replaces files and returns the ref to fetch at."""

    fetcher: LockFileFetcher
    publisher: Any

    def publish(self, files: Mapping[str, bytes | str | None]) -> str:
        ref: str = self.publisher(files)
        return ref


class LockFetcherContract:
    """What every :class:`~kici.domain.providers.LockFileFetcher` must do."""

    @pytest.fixture
    def world(self, tmp_path: Path) -> World:
        raise NotImplementedError

    async def test_a_repository_without_a_lock_gives_none(self, world: World) -> None:
        ref = world.publish({"README.md": "no kici here"})
        assert await world.fetcher.fetch_lock_file(REPO, ref, {}) is None

    async def test_a_present_lock_is_parsed_and_validated(self, world: World) -> None:
        ref = world.publish({LOCK_FILE_PATH: lock_text("ci"), "src/app.py": "print(1)\n"})
        assert workflow_names(await world.fetcher.fetch_lock_file(REPO, ref, {})) == ["ci"]

    async def test_a_corrupt_lock_is_a_parse_error_naming_repo_and_ref(self, world: World) -> None:
        ref = world.publish({LOCK_FILE_PATH: '{"schemaVersion": 1, "workflows": ['})
        with pytest.raises(RepoLockFileParseError) as caught:
            await world.fetcher.fetch_lock_file(REPO, ref, {})
        assert (caught.value.repo, caught.value.ref) == (REPO, ref)
        assert "not valid JSON" in str(caught.value)

    async def test_a_foreign_schema_version_is_a_parse_error(self, world: World) -> None:
        ref = world.publish({LOCK_FILE_PATH: '{"schemaVersion": 2}'})
        with pytest.raises(RepoLockFileParseError, match="schemaVersion 2 is incompatible"):
            await world.fetcher.fetch_lock_file(REPO, ref, {})

    async def test_a_lock_above_5_mib_is_refused(self, world: World) -> None:
        ref = world.publish({LOCK_FILE_PATH: b" " * (MAX_LOCK_FILE_BYTES + 1)})
        with pytest.raises(RepoLockFileParseError) as caught:
            await world.fetcher.fetch_lock_file(REPO, ref, {})
        assert f"over the {MAX_LOCK_FILE_BYTES}-byte limit" in str(caught.value)

    @pytest.mark.feature("HOOK-11")
    async def test_the_cache_fetches_a_commit_once(self, world: World) -> None:
        world.publish({LOCK_FILE_PATH: lock_text("cached")})
        ref = world.publish({LOCK_FILE_PATH: lock_text("cached"), "x": "1"})
        sha = ref if len(ref) == 40 else "e" * 40
        cache = LockCache(trio.current_time)
        first = await cache.fetch(world.fetcher, REPO, sha, {})
        second = await cache.fetch(world.fetcher, REPO, sha, {})
        assert first is second
        assert (cache.hits, cache.misses) == (1, 1)
        assert cache.keys() == (f"{world.fetcher.provider}:{REPO}:{sha}",)


@pytest.mark.feature("HOOK-10")
class TestLocalFetcher(LockFetcherContract):
    @pytest.fixture
    def world(self, tmp_path: Path) -> World:
        base = tmp_path / "repos"
        checkout = base / REPO
        checkout.mkdir(parents=True)
        counter = iter(range(1, 1000))

        def publish(files: Mapping[str, bytes | str | None]) -> str:
            for name, content in files.items():
                path = checkout / name
                if content is None:
                    path.unlink(missing_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content.encode() if isinstance(content, str) else content)
            return f"{next(counter):040x}"

        return World(LocalLockFileFetcher(LocalConfig(str(base))), publish)

    async def test_the_ref_is_ignored(self, world: World) -> None:
        world.publish({LOCK_FILE_PATH: lock_text("tree")})
        for ref in ("HEAD", "main", "0" * 40):
            assert workflow_names(await world.fetcher.fetch_lock_file(REPO, ref, {})) == ["tree"]

    async def test_repository_identifiers_cannot_escape_the_base(self, world: World) -> None:
        for repo in ("../outside", "/etc", "acme/../../x"):
            with pytest.raises(InvalidRepoIdentifierError):
                await world.fetcher.fetch_lock_file(repo, "HEAD", {})

    async def test_a_lock_symlinked_out_of_the_repository_is_not_read(
        self, world: World, tmp_path: Path
    ) -> None:
        secret = tmp_path / "secret.json"
        secret.write_text('{"schemaVersion": "do not leak"}')
        world.publish({"README.md": "x"})
        assert isinstance(world.fetcher, LocalLockFileFetcher)
        link = Path(world.fetcher.config.repo_base_path) / REPO / LOCK_FILE_PATH
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(secret)
        with pytest.raises(
            RepoLockFileParseError, match="symbolic link that leaves the repository"
        ) as caught:
            await world.fetcher.fetch_lock_file(REPO, "HEAD", {})
        assert "do not leak" not in str(caught.value)

    def test_the_bundle(self, tmp_path: Path) -> None:
        bundle = local_bundle(LocalConfig(str(tmp_path)))
        assert bundle.lock_file_fetcher is not None
        assert bundle.repo_url_builder is not None
        assert bundle.changed_files_fetcher is None
        assert bundle.clone_token_provider is None
        assert bundle.repo_url_builder.build_clone_url(REPO) == f"file://{tmp_path}/{REPO}"


@pytest.fixture
def scratch_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the fetcher's temporary clones go, so the tests can see them cleaned up."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


class Secrets:
    """A credential store that counts reads (the fetcher must re-read at every use)."""

    def __init__(self, value: str | None) -> None:
        self.value = value
        self.reads: list[CredentialRef] = []

    async def __call__(self, reference: CredentialRef) -> str | None:
        self.reads.append(reference)
        return self.value


@attrs.define
class Forge:
    root: Path
    server: GitHttpServer
    secrets: Secrets

    def config(self, **extra: Any) -> GitConfig:
        return parse_git_config(
            {
                "preset": "gitea",
                "gitUrlTemplate": self.server.base_url + "/{repo}.git",
                "credentialRef": {"key": "__source__/forge1/gitToken"},
                "credentialType": "basic",
                "credentialUser": USER,
                **extra,
            }
        )

    def fetcher(self, **options: Any) -> UniversalGitLockFetcher:
        return UniversalGitLockFetcher(self.config(), self.secrets, **options)


@pytest.fixture
def forge(tmp_path: Path, scratch_dir: Path) -> Iterator[Forge]:
    root = tmp_path / "git"
    root.mkdir()
    create_repo(root, REPO)
    with GitHttpServer(root, credentials=(USER, PASSWORD)) as server:
        yield Forge(root, server, Secrets(PASSWORD))


@pytest.mark.feature("HOOK-09")
class TestUniversalGitFetcher(LockFetcherContract):
    @pytest.fixture
    def world(self, forge: Forge) -> World:
        bare = forge.root / f"{REPO}.git"
        return World(forge.fetcher(), lambda files: commit_files(bare, "main", files))

    async def test_branch_sha_and_head_refs(self, forge: Forge, scratch_dir: Path) -> None:
        bare = forge.root / f"{REPO}.git"
        old = commit_files(bare, "main", {LOCK_FILE_PATH: lock_text("old")})
        new = commit_files(bare, "main", {LOCK_FILE_PATH: lock_text("new")})
        commit_files(bare, "feature", {LOCK_FILE_PATH: lock_text("feature")})
        fetcher = forge.fetcher()
        expectations = {
            old: ["old"],
            new: ["new"],
            "HEAD": ["new"],
            "main": ["new"],
            "feature": ["feature"],
            "refs/heads/feature": ["feature"],
        }
        for ref, names in expectations.items():
            assert workflow_names(await fetcher.fetch_lock_file(REPO, ref, {})) == names, ref
        assert await leftovers(scratch_dir) == []

    async def test_an_unknown_sha_falls_back_to_the_default_branch(self, forge: Forge) -> None:
        commit_files(forge.root / f"{REPO}.git", "main", {LOCK_FILE_PATH: lock_text("tip")})
        assert workflow_names(await forge.fetcher().fetch_lock_file(REPO, "f" * 40, {})) == ["tip"]

    async def test_an_unknown_branch_is_a_transient_error(self, forge: Forge, scratch_dir: Path) -> None:
        commit_files(forge.root / f"{REPO}.git", "main", {LOCK_FILE_PATH: lock_text("ci")})
        with pytest.raises(GitCommandError, match="clone failed"):
            await forge.fetcher().fetch_lock_file(REPO, "no-such-branch", {})
        assert await leftovers(scratch_dir) == []
        assert await LockCache(trio.current_time).fetch(forge.fetcher(), REPO, "no-such-branch", {}) is None

    @pytest.mark.feature("HOOK-22")
    async def test_auth_is_required_and_given_through_the_extra_header(self, forge: Forge) -> None:
        commit_files(forge.root / f"{REPO}.git", "main", {LOCK_FILE_PATH: lock_text("ci")})
        anonymous = UniversalGitLockFetcher(forge.config(), None)
        with pytest.raises(GitCommandError):
            await anonymous.fetch_lock_file(REPO, "HEAD", {})
        assert forge.server.requests[-1][2] is False
        before = len(forge.server.requests)
        assert workflow_names(await forge.fetcher().fetch_lock_file(REPO, "HEAD", {})) == ["ci"]
        authorized = [ok for _, _, ok in forge.server.requests[before:]]
        assert authorized
        assert all(authorized)
        assert len(forge.secrets.reads) == 1

    @pytest.mark.feature("HOOK-22")
    async def test_a_wrong_secret_fails_without_echoing_it(self, forge: Forge) -> None:
        commit_files(forge.root / f"{REPO}.git", "main", {LOCK_FILE_PATH: lock_text("ci")})
        wrong = UniversalGitLockFetcher(forge.config(), Secrets("wrong-secret-value"))
        with pytest.raises(GitCommandError) as caught:
            await wrong.fetch_lock_file(REPO, "HEAD", {})
        assert "wrong-secret-value" not in str(caught.value)

    @pytest.mark.feature("HOOK-22")
    async def test_the_secret_is_read_again_at_every_use(self, forge: Forge) -> None:
        commit_files(forge.root / f"{REPO}.git", "main", {LOCK_FILE_PATH: lock_text("ci")})
        fetcher = forge.fetcher()
        await fetcher.fetch_lock_file(REPO, "HEAD", {})
        forge.secrets.value = "rotated-away"
        with pytest.raises(GitCommandError):
            await fetcher.fetch_lock_file(REPO, "HEAD", {})
        assert len(forge.secrets.reads) == 2

    async def test_no_step_starts_without_budget(self, forge: Forge, scratch_dir: Path) -> None:
        with pytest.raises(GitBudgetExceededError, match="budget"):
            await forge.fetcher(budget_s=0.5).fetch_lock_file(REPO, "HEAD", {})
        assert await leftovers(scratch_dir) == []

    async def test_the_budget_cancels_a_hanging_fetch(self, tmp_path: Path, scratch_dir: Path) -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, _hang, 0, host="127.0.0.1"))
            listener = listeners[0]
            port = listener.socket.getsockname()[1]
            config = parse_git_config(
                {"preset": "gitea", "gitUrlTemplate": f"http://127.0.0.1:{port}/{{repo}}.git"}
            )
            fetcher = UniversalGitLockFetcher(config, None, budget_s=0.8, min_step_s=0.1)
            with pytest.raises(GitBudgetExceededError, match="exceeded"):
                await fetcher.fetch_lock_file(REPO, "HEAD", {})
            nursery.cancel_scope.cancel()
        assert await leftovers(scratch_dir) == []

    @pytest.mark.feature("HOOK-22")
    @pytest.mark.parametrize("policy", ["accept-new", "pinned"])
    async def test_ssh_auth_reaches_git_as_a_private_key_file(
        self, forge: Forge, tmp_path: Path, scratch_dir: Path, policy: str
    ) -> None:
        record = tmp_path / "record"
        fake_git = tmp_path / "fake-git"
        fake_git.write_text(
            "#!/bin/sh\n"
            f'printf "%s\\n" "$*" > {record}\n'
            f'printf "%s\\n" "$GIT_SSH_COMMAND" "${{GIT_CONFIG_COUNT:-none}}" >> {record}\n'
            'key=$(echo "$GIT_SSH_COMMAND" | sed -n "s/.*-i \\([^ ]*\\).*/\\1/p")\n'
            f'stat -c "%a" "$key" >> {record}; cat "$key" >> {record}\n'
            "exit 1\n"
        )
        fake_git.chmod(0o755)
        extra = {"sshKnownHostsPem": "forge ssh-ed25519 AAAAC3"} if policy == "pinned" else {}
        config = forge.config(
            credentialType="ssh",
            credentialUser="git",
            sshHostKeyPolicy=policy,
            gitUrlTemplate="ssh://forge/{repo}",
            **extra,
        )
        fetcher = UniversalGitLockFetcher(
            config, Secrets("-----PRIVATE KEY-----"), git_executable=str(fake_git)
        )
        with pytest.raises(GitCommandError):
            await fetcher.fetch_lock_file(REPO, "HEAD", {})
        argv, ssh_command, config_count, mode, key = (await trio.Path(record).read_text()).splitlines()
        assert argv.startswith(
            "clone --quiet --filter=blob:none --depth=1 --no-checkout --single-branch -- ssh://forge/"
        )
        assert "IdentitiesOnly=yes" in ssh_command
        assert "BatchMode=yes" in ssh_command
        assert "User=git" in ssh_command
        expected = "StrictHostKeyChecking=yes" if policy == "pinned" else "StrictHostKeyChecking=accept-new"
        assert expected in ssh_command
        assert ("UserKnownHostsFile=" in ssh_command) == (policy == "pinned")
        assert (config_count, mode, key) == ("none", "600", "-----PRIVATE KEY-----")
        assert await leftovers(scratch_dir) == []

    @pytest.mark.feature("HOOK-22")
    async def test_the_basic_header_never_appears_in_argv(self, forge: Forge, tmp_path: Path) -> None:
        record = tmp_path / "argv"
        fake_git = tmp_path / "fake-git"
        fake_git.write_text(f'#!/bin/sh\nprintf "%s|%s" "$*" "$GIT_CONFIG_VALUE_0" > {record}\nexit 1\n')
        fake_git.chmod(0o755)
        fetcher = UniversalGitLockFetcher(forge.config(), forge.secrets, git_executable=str(fake_git))
        with pytest.raises(GitCommandError):
            await fetcher.fetch_lock_file(REPO, "main", {})
        argv, header = (await trio.Path(record).read_text()).split("|")
        assert "--branch main" in argv
        assert PASSWORD not in argv
        assert "Authorization" not in argv
        assert header.startswith("Authorization: Basic ")

    @pytest.mark.feature("HOOK-13", "HOOK-22")
    async def test_the_bundle_ports(self, forge: Forge) -> None:
        source = GenericSource(org_id="o", source_id="forge1", name="forge", kind=SourceKind.UNIVERSAL_GIT)
        bundle = universal_git_bundle(source, forge.config(), forge.secrets)
        assert bundle.changed_files_fetcher is not None
        payload = {"commits": [{"added": ["a"], "modified": ["b"], "removed": ["a"]}]}
        event = SimulatedEvent(type="push", target_branch="main")
        assert await bundle.changed_files_fetcher.get_changed_files(REPO, event, payload, {}) == ["a", "b"]
        assert bundle.clone_token_provider is not None
        auth = await resolve_git_auth(bundle.clone_token_provider, REPO, {})
        assert auth is not None
        assert (auth.kind, auth.user, auth.secret) == (GitAuthKind.BASIC, USER, PASSWORD)
        assert await bundle.clone_token_provider.create_clone_token(REPO, {}) == PASSWORD
        ssh = UniversalGitCredentials(forge.config(credentialType="ssh"), forge.secrets)
        assert await ssh.create_clone_token(REPO, {}) is None
        public = UniversalGitCredentials(
            GitConfig(preset=forge.config().preset, git_url_template="x/{repo}"), forge.secrets
        )
        assert await public.issue_git_auth(REPO, {}) is None
        assert bundle.repo_url_builder is not None
        assert bundle.repo_url_builder.build_clone_url(REPO) == forge.server.url_for(REPO)


async def leftovers(directory: Path) -> list[Path]:
    return await trio.to_thread.run_sync(lambda: list(directory.iterdir()))


async def _hang(stream: trio.SocketStream) -> None:
    """A server that accepts and never answers: what a wedged forge looks like to git."""
    async with stream:
        await trio.sleep_forever()


@pytest.mark.feature("HOOK-09")
def test_the_test_server_rejects_anonymous_clones(tmp_path: Path) -> None:
    create_repo(tmp_path, REPO)
    with GitHttpServer(tmp_path, credentials=(USER, PASSWORD)) as server:
        done = subprocess.run(
            ["git", "ls-remote", "-q", server.url_for(REPO)], env=git_env(), capture_output=True, check=False
        )
        assert done.returncode != 0
        assert server.requests[0][2] is False
