"""The GitHub provider against a loopback fake of the REST API (30 §3.2 "GitHub REST", HOOK-07/11/13/22)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime

import attrs
import pytest

from kici.adapters.providers.github import (
    GitHubApiError,
    GitHubApp,
    HttpxClient,
    app_jwt,
    github_bundle,
    load_private_key,
    web_base_for,
)
from kici.domain.config.sources import SourceConfig, SourceProvider
from kici.domain.events import SimulatedEvent
from kici.domain.lockfile import LockFile, LockSource, LockWorkflow, PushTrigger, dump_lock
from kici.domain.providers import GitAuthKind, ProviderBundle, RepoLockFileParseError, resolve_git_auth
from kici.domain.webhooks.models import LOCK_FILE_PATH
from kici.services.orchestrator.sources import bundle_for
from kici.testing.fake_github import DIRECTORY, NO_CONTENT, FakeGitHub, new_app_key

APP_ID = "4242"
REPO = "acme/app"
INSTALLATION = "77"
CREDS = {"installationId": INSTALLATION}
ZERO = "0" * 40
KEY, PEM = new_app_key()


def lock_bytes(label: str) -> bytes:
    workflow = LockWorkflow(
        name=label,
        source=LockSource(file=f".kici/workflows/{label}.py", export=f"#{label}"),
        content_hash="ab" * 32,
        triggers=(PushTrigger(),),
    )
    return dump_lock(LockFile(content_hash="cd" * 32, workflows=(workflow,))).encode()


@attrs.define
class Clock:
    now: float = datetime(2029, 12, 31, 23, 0, tzinfo=UTC).timestamp()

    def __call__(self) -> float:
        return self.now


@attrs.define
class World:
    fake: FakeGitHub
    app: GitHubApp
    bundle: ProviderBundle
    clock: Clock
    sleeps: list[float]


@pytest.fixture
def world() -> Iterator[World]:
    with FakeGitHub(APP_ID, KEY.public_key()) as fake:
        fake.install(REPO, INSTALLATION)
        clock, sleeps = Clock(), []

        async def sleep(seconds: float) -> None:
            sleeps.append(seconds)

        async def load_key() -> bytes:
            return PEM

        app = GitHubApp(
            APP_ID,
            load_key,
            HttpxClient(trust_env=False),
            api_base_url=fake.base_url,
            web_base_url="http://127.0.0.1:9/git",
            clock=clock,
            sleep=sleep,
        )
        yield World(fake, app, github_bundle(app), clock, sleeps)


def event(kind: str) -> SimulatedEvent:
    return SimulatedEvent(type=kind, target_branch="main", provider="github")


@pytest.mark.feature("HOOK-22")
class TestInstallationTokens:
    async def test_minted_with_a_valid_app_jwt_and_cached_until_five_minutes_before_expiry(
        self, world: World
    ) -> None:
        token = await world.app.installation_token(INSTALLATION)
        assert token == "ghs_fake_1"
        (claims,) = world.fake.jwt_claims
        assert claims["iss"] == APP_ID
        assert claims["iat"] == int(world.clock.now) - 60
        assert claims["exp"] <= int(world.clock.now) + 600
        # The fake's token expires 2030-01-01T00:00Z, 1 h after the clock: reused until 23:55.
        world.clock.now += 54 * 60
        assert await world.app.installation_token(INSTALLATION) == token
        assert world.fake.minted == 1
        world.clock.now += 60
        assert await world.app.installation_token(INSTALLATION) == "ghs_fake_2"
        assert world.fake.minted == 2

    async def test_jwt_signed_with_another_key_is_refused(self, world: World) -> None:
        _other, other_pem = new_app_key()

        async def wrong_key() -> bytes:
            return other_pem

        app = GitHubApp(APP_ID, wrong_key, HttpxClient(trust_env=False), api_base_url=world.fake.base_url)
        with pytest.raises(GitHubApiError) as caught:
            await app.installation_token(INSTALLATION)
        assert caught.value.status == 401

    def test_jwt_claims_bound_the_lifetime(self) -> None:
        header, claims, _ = app_jwt(APP_ID, load_private_key(PEM), 1_000_000.5).split(".")
        assert json.loads(base64.urlsafe_b64decode(header + "==")) == {"alg": "RS256", "typ": "JWT"}
        decoded = json.loads(base64.urlsafe_b64decode(claims + "=="))
        assert decoded == {"iat": 999_940, "exp": 1_000_540, "iss": APP_ID}

    async def test_clone_url_and_basic_x_access_token_auth(self, world: World) -> None:
        assert world.bundle.repo_url_builder is not None
        assert world.bundle.repo_url_builder.build_clone_url(REPO) == "http://127.0.0.1:9/git/acme/app.git"
        assert world.bundle.clone_token_provider is not None
        auth = await resolve_git_auth(world.bundle.clone_token_provider, REPO, CREDS)
        assert auth is not None
        assert (auth.kind, auth.user, auth.secret) == (GitAuthKind.BASIC, "x-access-token", "ghs_fake_1")

    async def test_installation_looked_up_when_the_credentials_name_none(self, world: World) -> None:
        assert world.bundle.clone_token_provider is not None
        assert await world.bundle.clone_token_provider.create_clone_token(REPO, {}) == "ghs_fake_1"
        assert await world.bundle.clone_token_provider.create_clone_token(REPO, {}) == "ghs_fake_1"
        lookups = [c for c in world.fake.calls if c[1].endswith("/installation")]
        assert len(lookups) == 1

    def test_web_base_derived_from_the_api_base(self) -> None:
        assert web_base_for("https://api.github.com") == "https://github.com"
        assert web_base_for("https://ghe.example/api/v3/") == "https://ghe.example"


@pytest.mark.feature("HOOK-11")
class TestLockFetch:
    async def test_present_file_is_decoded(self, world: World) -> None:
        world.fake.put_file(REPO, "abc123", LOCK_FILE_PATH, lock_bytes("ci"))
        assert world.bundle.lock_file_fetcher is not None
        lock = await world.bundle.lock_file_fetcher.fetch_lock_file(REPO, "abc123", CREDS)
        assert lock is not None
        assert [w.name for w in lock.workflows] == ["ci"]
        assert ("GET", f"/repos/acme/app/contents/{LOCK_FILE_PATH}?ref=abc123") in world.fake.calls

    async def test_head_reads_the_default_branch(self, world: World) -> None:
        world.fake.put_file(REPO, None, LOCK_FILE_PATH, lock_bytes("main"))
        assert world.bundle.lock_file_fetcher is not None
        lock = await world.bundle.lock_file_fetcher.fetch_lock_file(REPO, "HEAD", CREDS)
        assert lock is not None
        assert lock.workflows[0].name == "main"

    async def test_missing_and_directory_are_absent(self, world: World) -> None:
        world.fake.put_file(REPO, "dir", LOCK_FILE_PATH, DIRECTORY)
        fetcher = world.bundle.lock_file_fetcher
        assert fetcher is not None
        assert await fetcher.fetch_lock_file(REPO, "nothing", CREDS) is None
        assert await fetcher.fetch_lock_file(REPO, "dir", CREDS) is None

    async def test_no_content_or_invalid_lock_is_a_parse_error(self, world: World) -> None:
        world.fake.put_file(REPO, "big", LOCK_FILE_PATH, NO_CONTENT)
        world.fake.put_file(REPO, "bad", LOCK_FILE_PATH, b"{not json")
        fetcher = world.bundle.lock_file_fetcher
        assert fetcher is not None
        for ref in ("big", "bad"):
            with pytest.raises(RepoLockFileParseError) as caught:
                await fetcher.fetch_lock_file(REPO, ref, CREDS)
            assert (caught.value.repo, caught.value.ref) == (REPO, ref)

    async def test_server_error_is_transient(self, world: World) -> None:
        world.fake.put_file(REPO, "x", LOCK_FILE_PATH, lock_bytes("ci"))
        await world.app.installation_token(INSTALLATION)
        world.fake.fail_next(502)
        assert world.bundle.lock_file_fetcher is not None
        with pytest.raises(GitHubApiError):
            await world.bundle.lock_file_fetcher.fetch_lock_file(REPO, "x", CREDS)


@pytest.mark.feature("HOOK-11", "HOOK-13")
class TestRateLimit:
    async def test_429_retried_three_times_after_1_2_4_seconds(self, world: World) -> None:
        world.fake.put_file(REPO, "x", LOCK_FILE_PATH, lock_bytes("ci"))
        await world.app.installation_token(INSTALLATION)
        world.fake.fail_next(429, 3)
        assert world.bundle.lock_file_fetcher is not None
        assert await world.bundle.lock_file_fetcher.fetch_lock_file(REPO, "x", CREDS) is not None
        assert world.sleeps == [1.0, 2.0, 4.0]

    async def test_fourth_429_gives_up(self, world: World) -> None:
        await world.app.installation_token(INSTALLATION)
        world.fake.fail_next(429, 4)
        assert world.bundle.lock_file_fetcher is not None
        with pytest.raises(GitHubApiError) as caught:
            await world.bundle.lock_file_fetcher.fetch_lock_file(REPO, "x", CREDS)
        assert caught.value.status == 429
        assert world.sleeps == [1.0, 2.0, 4.0]


@pytest.mark.feature("HOOK-13", "HOOK-07")
class TestChangedFiles:
    async def test_pull_request_files_are_paginated(self, world: World) -> None:
        files = [{"filename": f"src/f{i}.py", "status": "modified"} for i in range(250)]
        files.append({"filename": "new/name.py", "previous_filename": "old/name.py", "status": "renamed"})
        world.fake.put_pull_files(REPO, 7, files)
        payload = {"pull_request": {"number": 7}}
        fetcher = world.bundle.changed_files_fetcher
        assert fetcher is not None
        names = await fetcher.get_changed_files(REPO, event("pull_request"), payload, CREDS)
        assert names[:250] == [f"src/f{i}.py" for i in range(250)]
        assert names[250:] == ["old/name.py", "new/name.py"]
        pages = [c[1] for c in world.fake.calls if "/pulls/7/files" in c[1]]
        assert pages == [f"/repos/acme/app/pulls/7/files?per_page=100&page={p}" for p in (1, 2, 3)]

    async def test_push_compares_before_and_after(self, world: World) -> None:
        world.fake.put_compare(REPO, "a" * 40, "b" * 40, ["README.md", "src/x.py"])
        fetcher = world.bundle.changed_files_fetcher
        assert fetcher is not None
        payload = {"before": "a" * 40, "after": "b" * 40}
        assert await fetcher.get_changed_files(REPO, event("push"), payload, CREDS) == [
            "README.md",
            "src/x.py",
        ]

    @pytest.mark.parametrize(("before", "after"), [(ZERO, "b" * 40), ("a" * 40, ZERO)])
    async def test_all_zero_sha_either_side_is_empty_without_a_call(
        self, world: World, before: str, after: str
    ) -> None:
        fetcher = world.bundle.changed_files_fetcher
        assert fetcher is not None
        payload = {"before": before, "after": after}
        assert await fetcher.get_changed_files(REPO, event("push"), payload, CREDS) == []
        assert not any("/compare/" in c[1] for c in world.fake.calls)

    async def test_other_events_have_no_changed_files(self, world: World) -> None:
        fetcher = world.bundle.changed_files_fetcher
        assert fetcher is not None
        assert await fetcher.get_changed_files(REPO, event("star"), {}, CREDS) == []


@pytest.mark.feature("HOOK-22")
class TestContributors:
    @pytest.mark.parametrize(
        ("permission", "role", "expected"),
        [
            ("admin", "admin", "admin"),
            ("write", "maintain", "write"),
            ("write", "write", "write"),
            ("read", "triage", "read"),
            ("read", "read", "read"),
        ],
    )
    async def test_permission_mapping(self, world: World, permission: str, role: str, expected: str) -> None:
        world.fake.put_permission(REPO, "octo", permission, role)
        assert world.bundle.contributor_resolver is not None
        found = await world.bundle.contributor_resolver.resolve_contributor(REPO, "octo", CREDS)
        assert found.permission == expected

    async def test_unknown_user_is_none(self, world: World) -> None:
        assert world.bundle.contributor_resolver is not None
        found = await world.bundle.contributor_resolver.resolve_contributor(REPO, "ghost", CREDS)
        assert found.permission == "none"


@pytest.mark.feature("HOOK-22")
def test_configured_github_source_gets_the_rest_bundle() -> None:
    source = SourceConfig(
        name="gh",
        provider=SourceProvider.GITHUB,
        routing_key=f"github:{APP_ID}",
        app_id=APP_ID,
        private_key_file="/etc/kici/app.pem",
        api_base_url="https://ghe.example/api/v3",
    )
    bundle = bundle_for(source, {})
    assert bundle.lock_file_fetcher is not None
    assert bundle.repo_url_builder is not None
    assert bundle.repo_url_builder.build_clone_url(REPO) == "https://ghe.example/acme/app.git"
    keyless = bundle_for(attrs.evolve(source, private_key_file=None), {})
    assert keyless.lock_file_fetcher is None
