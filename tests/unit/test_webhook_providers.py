"""Routing keys, the provider registry and clone credentials (HOOK-01, HOOK-22), 30 §1."""

from __future__ import annotations

import pytest

from kici.domain.lockfile import LockFileParseError
from kici.domain.providers import (
    Credentials,
    GitAuth,
    GitAuthKind,
    InvalidGitAuthError,
    ProviderBundle,
    ProviderRegistry,
    RepoLockFileParseError,
    SshHostKeyPolicy,
    resolve_git_auth,
    token_git_auth,
)
from kici.domain.webhooks.models import (
    InvalidRoutingKeyError,
    ProviderType,
    RoutingKey,
    RoutingKeyKind,
    is_full_sha,
    is_zero_sha,
    lower_headers,
    parse_routing_key,
)
from kici.domain.webhooks.normalizers.github import GithubNormalizer
from kici.domain.webhooks.normalizers.local import LocalNormalizer

pytestmark = pytest.mark.feature("HOOK-01")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("github:123456", RoutingKey("github:123456", RoutingKeyKind.GITHUB, "github", app_id="123456")),
        (
            "generic:org1:src9",
            RoutingKey(
                "generic:org1:src9", RoutingKeyKind.GENERIC, "generic", org_id="org1", source_id="src9"
            ),
        ),
        ("remote:org1", RoutingKey("remote:org1", RoutingKeyKind.REMOTE, "remote", org_id="org1")),
        ("github:default", RoutingKey("github:default", RoutingKeyKind.DEFAULT, "github")),
        ("local:default", RoutingKey("local:default", RoutingKeyKind.DEFAULT, "local")),
    ],
)
def test_routing_keys_parse(text: str, expected: RoutingKey) -> None:
    assert parse_routing_key(text) == expected
    assert str(parse_routing_key(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "github",
        "github:",
        "github:1:2",
        "generic:org1",
        "generic::src",
        "remote:",
        "gitlab:1",
        "github:a b",
    ],
)
def test_malformed_routing_keys_are_refused(text: str) -> None:
    with pytest.raises(InvalidRoutingKeyError):
        parse_routing_key(text)


def bundle(label: str) -> ProviderBundle:
    return ProviderBundle(normalizer=LocalNormalizer() if label.startswith("local") else GithubNormalizer())


def test_registry_lookup_order() -> None:
    registry = ProviderRegistry()
    first, second, fallback, exact = bundle("a"), bundle("b"), bundle("default"), bundle("exact")
    registry.register("github:1", first)
    registry.register("github:2", second)
    assert registry.get_by_routing_key("github:9") is first
    registry.register("github:default", fallback)
    assert registry.get_by_routing_key("github:9") is fallback
    registry.register("github:9", exact)
    assert registry.get_by_routing_key("github:9") is exact
    assert registry.get_by_routing_key("generic:o:s") is None
    assert registry.get_by_routing_key("githubx:1") is None


def test_registry_maintenance() -> None:
    registry = ProviderRegistry()
    old, new = bundle("old"), bundle("new")
    registry.register("github:1", old)
    registry.register("github:2", bundle("two"))
    registry.register("github:1", new)
    assert registry.keys() == ("github:1", "github:2")
    assert registry.get("github:1") is new
    assert registry.unregister("github:1")
    assert not registry.unregister("github:1")
    assert "github:1" not in registry
    registry.clear()
    assert len(registry) == 0


def test_model_helpers() -> None:
    assert is_zero_sha("0" * 40)
    assert is_zero_sha("0" * 64)
    assert not is_zero_sha("0" * 39)
    assert is_full_sha("aB" * 20)
    assert not is_full_sha("HEAD")
    assert not is_full_sha("g" * 40)
    assert lower_headers({"X-A": "1", "x-b": "2"}) == {"x-a": "1", "x-b": "2"}
    assert ProviderType("local") is ProviderType.LOCAL


def test_repo_lock_parse_error_names_repo_and_ref() -> None:
    error = RepoLockFileParseError("acme/app", "abc", LockFileParseError("workflows[0]", "bad"))
    assert isinstance(error, LockFileParseError)
    assert (error.repo, error.ref, error.path, error.problem) == ("acme/app", "abc", "workflows[0]", "bad")
    assert str(error).startswith("acme/app@abc: Lock file is invalid: workflows[0]: bad.")


@pytest.mark.feature("HOOK-22")
def test_git_auth_validation() -> None:
    assert token_git_auth("t") == GitAuth(kind=GitAuthKind.BASIC, user="x-access-token", secret="t")
    assert "t0ken" not in repr(token_git_auth("t0ken"))
    with pytest.raises(InvalidGitAuthError):
        GitAuth(kind=GitAuthKind.BASIC, secret="t")
    with pytest.raises(InvalidGitAuthError):
        GitAuth(kind=GitAuthKind.SSH, secret="")
    with pytest.raises(InvalidGitAuthError):
        GitAuth(kind=GitAuthKind.SSH, secret="key", ssh_host_key_policy=SshHostKeyPolicy.PINNED)


class TokenOnly:
    def __init__(self, token: str | None) -> None:
        self.token = token

    async def create_clone_token(self, repo: str, creds: Credentials) -> str | None:
        return self.token


class WithGitAuth(TokenOnly):
    async def issue_git_auth(self, repo: str, creds: Credentials) -> GitAuth | None:
        return GitAuth(kind=GitAuthKind.SSH, secret="-----KEY-----")


@pytest.mark.feature("HOOK-22")
async def test_git_auth_is_synthesized_from_a_token_unless_the_provider_issues_one() -> None:
    assert await resolve_git_auth(TokenOnly("tok"), "acme/app", {}) == token_git_auth("tok")
    assert await resolve_git_auth(TokenOnly(None), "acme/app", {}) is None
    issued = await resolve_git_auth(WithGitAuth("tok"), "acme/app", {})
    assert issued is not None
    assert issued.kind is GitAuthKind.SSH
