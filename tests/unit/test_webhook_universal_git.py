"""Universal-git: presets, custom JSONPath mappings, URLs and credentials (HOOK-09, HOOK-22), 30 §3.2."""

from __future__ import annotations

from typing import Any

import pytest

from kici.domain.providers import GitAuth, GitAuthKind, SshHostKeyPolicy
from kici.domain.webhooks.normalizers.universal_git import (
    GitConfig,
    GitPreset,
    InvalidGitConfigError,
    UniversalGitNormalizer,
    UniversalGitUrls,
    changed_files,
    clone_url,
    git_auth,
    parse_git_config,
)
from kici.domain.webhooks.payload import InvalidRepoIdentifierError
from kici.domain.webhooks.sources import GenericSource, SourceKind
from kici.domain.webhooks.verification import sign_body
from tests.strategies.webhooks import delivery

pytestmark = pytest.mark.feature("HOOK-09")

SOURCE = GenericSource(org_id="org1", source_id="forge1", name="forge", kind=SourceKind.UNIVERSAL_GIT)
TEMPLATE = "https://git.example.com/{repo}.git"


def sha(n: int) -> str:
    return f"{n:040x}"


def normalizer(preset: str, **extra: Any) -> UniversalGitNormalizer:
    return UniversalGitNormalizer(
        SOURCE, parse_git_config({"preset": preset, "gitUrlTemplate": TEMPLATE, **extra})
    )


# (preset, fixture) -> (type, action, target, source branch, fork, lock ref, repo, default branch,
#                       sender, sender id)
ROWS: dict[tuple[str, str], tuple[Any, ...]] = {
    ("gitea", "gitea_push"): ("push", None, "main", None, None, sha(21), "acme/app", "main", "alice", "3"),
    ("forgejo", "gitea_push"): ("push", None, "main", None, None, sha(21), "acme/app", "main", "alice", "3"),
    ("gitea", "gitea_pull_request_synchronized"): (
        "pull_request",
        "synchronize",
        "main",
        "topic",
        True,
        sha(23),
        "acme/app",
        "main",
        "eve",
        "9",
    ),
    ("gogs", "gogs_push"): ("push", None, "develop", None, None, sha(31), "acme/app", "main", "alice", "3"),
    ("gitlab-repo", "gitlab_push"): (
        "push",
        None,
        "trunk",
        None,
        None,
        sha(41),
        "acme/platform/app",
        "trunk",
        "bob",
        "4",
    ),
    ("gitlab-repo", "gitlab_tag_push"): (
        "tag",
        None,
        "v2.0.0",
        None,
        None,
        sha(42),
        "acme/platform/app",
        "trunk",
        "bob",
        "4",
    ),
    ("gitlab-repo", "gitlab_merge_request_update"): (
        "pull_request",
        "synchronize",
        "trunk",
        "eve/feature",
        True,
        sha(44),
        "acme/platform/app",
        "trunk",
        "eve",
        "9",
    ),
    ("gitlab-repo", "gitlab_merge_request_open"): (
        "pull_request",
        "opened",
        "trunk",
        "bob/fix",
        False,
        sha(45),
        "acme/platform/app",
        "trunk",
        "bob",
        "4",
    ),
    ("github-repo", "github_push"): (
        "push",
        None,
        "main",
        None,
        None,
        sha(2),
        "acme/app",
        "main",
        "octocat",
        "583231",
    ),
    ("github-repo", "github_pull_request_synchronize_fork"): (
        "pull_request",
        "synchronize",
        "main",
        "patch-1",
        True,
        sha(0xF00D),
        "acme/app",
        "main",
        "mallory",
        "2002",
    ),
}


@pytest.mark.parametrize(("preset", "name"), sorted(ROWS))
def test_preset_table(preset: str, name: str) -> None:
    headers, payload, _ = delivery(name)
    forge = normalizer(preset)
    event_name = forge.extract_event_type(headers)
    assert event_name is not None
    event = forge.normalize_event(event_name, None, payload)
    kind, action, target, source_branch, fork, ref, repo, default, sender, sender_id = ROWS[preset, name]
    assert event is not None
    assert (event.type, event.action, event.target_branch, event.source_branch) == (
        kind,
        action,
        target,
        source_branch,
    )
    assert event.is_fork_pr is fork
    assert event.provider == "generic"
    assert (event.sender_username, event.sender_user_id) == (sender, sender_id)
    assert forge.extract_ref(event_name, payload) == ref
    assert forge.extract_repo_identifier(payload) == repo
    assert forge.extract_default_branch(payload) == default
    assert forge.extract_credentials(payload) == {}
    assert forge.extract_routing_key(headers, payload) == "generic:org1:forge1"


@pytest.mark.parametrize(
    ("preset", "name", "delivery_id"),
    [
        ("gitea", "gitea_push", "f0000001-0000-4000-8000-000000000001"),
        ("gogs", "gogs_push", "g0000001-0000-4000-8000-000000000001"),
        ("gitlab-repo", "gitlab_push", "e0000001-0000-4000-8000-000000000001"),
        ("github-repo", "github_push", "d0000001-0000-4000-8000-000000000001"),
    ],
)
def test_delivery_ids(preset: str, name: str, delivery_id: str) -> None:
    headers, _, _ = delivery(name)
    assert normalizer(preset).extract_delivery_id(headers) == delivery_id
    assert normalizer(preset).extract_delivery_id({"x-request-id": "r", "x-delivery-id": "d"}) == "d"


def test_other_events_and_deletions_are_not_matchable() -> None:
    headers, payload, _ = delivery("gitea_push")
    forge = normalizer("gitea")
    assert forge.normalize_event("issues", None, payload) is None
    assert forge.normalize_event("push", None, {**payload, "after": "0" * 40}) is None
    assert forge.extract_ref("push", {**payload, "after": "0" * 40}) == "HEAD"
    assert forge.extract_ref("release", payload) == "HEAD"
    assert forge.normalize_event("push", None, {}) is None
    assert forge.normalize_event("pull_request", None, {"pull_request": {"head": {"ref": "x"}}}) is None
    assert forge.normalize_event("pull_request", None, {"object_attributes": "nope"}) is None
    assert normalizer("gogs").extract_event_type(headers) is None


@pytest.mark.feature("HOOK-13")
def test_changed_files_from_commit_lists() -> None:
    _, payload, _ = delivery("gitea_push")
    assert normalizer("gitea").changed_files(payload) == ["docs/guide.md", "src/app.py", "old.txt"]
    _, gitlab, _ = delivery("gitlab_push")
    assert normalizer("gitlab-repo").changed_files(gitlab) == ["ci/config.yml", "src/main.go"]
    assert normalizer("gitea").changed_files({"commits": [{"added": [1, None, "x"]}]}) == ["x"]


def test_custom_mapping() -> None:
    config = {
        "preset": "custom",
        "gitUrlTemplate": "ssh://git@forge.internal/{owner}/{name}.git",
        "payloadPaths": {
            "repo": "$.project.slug",
            "ref": "$.change.ref",
            "sha": "$.change.to",
            "added": "$.files[*]",
        },
        "eventMapping": {
            "header": "X-Forge-Event",
            "push": "branch-updated",
            "pullRequest": ["review-opened"],
        },
    }
    forge = UniversalGitNormalizer(SOURCE, parse_git_config(config))
    payload = {
        "project": {"slug": "team/tool"},
        "change": {"ref": "refs/heads/dev", "to": sha(9)},
        "files": ["a.py", "b.py"],
        "sender": {"username": "zed", "id": 5},
    }
    assert forge.extract_event_type({"x-forge-event": "branch-updated"}) == "branch-updated"
    event = forge.normalize_event("branch-updated", None, payload)
    assert event is not None
    assert (event.type, event.target_branch, event.sender_username) == ("push", "dev", "zed")
    assert forge.extract_ref("branch-updated", payload) == sha(9)
    assert forge.extract_repo_identifier(payload) == "team/tool"
    assert forge.changed_files(payload) == ["a.py", "b.py"]
    assert clone_url(forge.config, "team/tool") == "ssh://git@forge.internal/team/tool.git"
    review = {
        "pull_request": {"base": {"ref": "dev"}, "head": {"ref": "f", "sha": sha(3)}},
        "action": "opened",
    }
    assert forge.normalize_event("review-opened", None, review) is not None
    assert forge.normalize_event("push", None, payload) is None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "preset"),
        ({"preset": "bitbucket", "gitUrlTemplate": TEMPLATE}, "preset"),
        ({"preset": "gitea"}, "gitUrlTemplate"),
        ({"preset": "gitea", "gitUrlTemplate": "https://x/{repo}/{branch}"}, "unknown placeholders"),
        ({"preset": "gitea", "gitUrlTemplate": "https://x/static.git"}, "{repo} or {name}"),
        ({"preset": "custom", "gitUrlTemplate": TEMPLATE}, "both"),
        (
            {
                "preset": "custom",
                "gitUrlTemplate": TEMPLATE,
                "payloadPaths": {"repo": "$.r"},
                "eventMapping": {"header": "h", "push": "p"},
            },
            "payloadPaths.ref",
        ),
        (
            {
                "preset": "custom",
                "gitUrlTemplate": TEMPLATE,
                "payloadPaths": {"repo": "$.r", "ref": "$["},
                "eventMapping": {"header": "h", "push": "p"},
            },
            "payloadPaths.ref",
        ),
        (
            {
                "preset": "custom",
                "gitUrlTemplate": TEMPLATE,
                "payloadPaths": {"repo": "$.r", "ref": "$.f", "x": "$.y"},
                "eventMapping": {"header": "h", "push": "p"},
            },
            "unknown keys",
        ),
        (
            {
                "preset": "custom",
                "gitUrlTemplate": TEMPLATE,
                "payloadPaths": {"repo": "$.r", "ref": "$.f"},
                "eventMapping": {"header": "h"},
            },
            "at least one",
        ),
        (
            {
                "preset": "custom",
                "gitUrlTemplate": TEMPLATE,
                "payloadPaths": {"repo": "$.r", "ref": "$.f"},
                "eventMapping": {"push": "p"},
            },
            "eventMapping.header",
        ),
        ({"preset": "gitea", "gitUrlTemplate": TEMPLATE, "credentialType": "oauth"}, "credentialType"),
        ({"preset": "gitea", "gitUrlTemplate": TEMPLATE, "credentialRef": "k"}, "credentialRef"),
        (
            {"preset": "gitea", "gitUrlTemplate": TEMPLATE, "credentialRef": {"key": "k", "store": ""}},
            "store",
        ),
        ({"preset": "gitea", "gitUrlTemplate": TEMPLATE, "sshHostKeyPolicy": "pinned"}, "sshKnownHostsPem"),
        ({"preset": "gitea", "gitUrlTemplate": TEMPLATE, "credentialUser": ""}, "credentialUser"),
        ("not an object", "object"),
    ],
)
def test_invalid_configs(config: Any, message: str) -> None:
    with pytest.raises(InvalidGitConfigError) as caught:
        parse_git_config(config)
    assert message in str(caught.value)


def test_config_defaults_and_presets() -> None:
    config = parse_git_config(
        {"preset": "gitlab-repo", "gitUrlTemplate": TEMPLATE, "credentialRef": {"key": "src/token"}}
    )
    assert config.preset is GitPreset.GITLAB_REPO
    assert config.credential_ref is not None
    assert (config.credential_ref.key, config.credential_ref.store) == ("src/token", "pg")
    assert config.ssh_host_key_policy is SshHostKeyPolicy.ACCEPT_NEW
    assert config.mapping.header == "x-gitlab-event"
    assert "Merge Request Hook" in config.mapping.pull_request
    assert config.paths.repo == "$.project.path_with_namespace"


def test_urls_and_subgroups() -> None:
    config = GitConfig(preset=GitPreset.GITLAB_REPO, git_url_template="https://gl/{owner}/-/{name}|{repo}")
    assert clone_url(config, "acme/platform/app") == "https://gl/acme/platform/-/app|acme/platform/app"
    urls = UniversalGitUrls(config)
    assert urls.build_raw_file_url("acme/app", "HEAD", ".kici/kici.lock.json") is None
    with pytest.raises(InvalidRepoIdentifierError):
        urls.build_clone_url("acme/../../etc")


@pytest.mark.feature("HOOK-22")
@pytest.mark.parametrize(
    ("extra", "secret", "expected"),
    [
        ({}, None, None),
        ({}, "", None),
        ({}, "tok", GitAuth(kind=GitAuthKind.BASIC, user="x-access-token", secret="tok")),
        ({"credentialType": "basic"}, "pw", GitAuth(kind=GitAuthKind.BASIC, user="git", secret="pw")),
        (
            {"credentialType": "basic", "credentialUser": "ci"},
            "pw",
            GitAuth(kind=GitAuthKind.BASIC, user="ci", secret="pw"),
        ),
        (
            {
                "credentialType": "ssh",
                "sshHostKeyPolicy": "pinned",
                "sshKnownHostsPem": "host ssh-ed25519 AAA",
            },
            "KEY",
            GitAuth(
                kind=GitAuthKind.SSH,
                secret="KEY",
                ssh_host_key_policy=SshHostKeyPolicy.PINNED,
                ssh_known_hosts_pem="host ssh-ed25519 AAA",
            ),
        ),
    ],
)
def test_git_auth_from_the_source_secret(
    extra: dict[str, Any], secret: str | None, expected: GitAuth | None
) -> None:
    config = parse_git_config({"preset": "gitea", "gitUrlTemplate": TEMPLATE, **extra})
    assert git_auth(config, secret) == expected


@pytest.mark.feature("HOOK-02")
def test_forge_signatures() -> None:
    body = b'{"ref":"refs/heads/main"}'
    hexdigest = sign_body(body, "s")[7:]
    assert normalizer("gitea").verify_signature(body, {"x-gitea-signature": hexdigest}, "s")
    assert normalizer("gogs").verify_signature(body, {"x-gogs-signature": hexdigest}, "s")
    assert not normalizer("gogs").verify_signature(body, {"x-gitea-signature": hexdigest}, "s")
    assert normalizer("github-repo").verify_signature(
        body, {"x-hub-signature-256": "sha256=" + hexdigest}, "s"
    )
    assert normalizer("gitlab-repo").verify_signature(body, {"x-gitlab-token": "s"}, "s")
    assert not normalizer("gitlab-repo").verify_signature(body, {"x-gitlab-token": "t"}, "s")
    assert not normalizer("gitlab-repo").verify_signature(body, {}, "s")
    custom = {
        "payloadPaths": {"repo": "$.r", "ref": "$.f"},
        "eventMapping": {"header": "h", "push": "p"},
    }
    assert normalizer("custom", **custom).verify_signature(body, {"x-signature-256": hexdigest}, b"s")


def test_changed_files_function_ignores_bad_paths() -> None:
    config = GitConfig(preset=GitPreset.GITEA, git_url_template=TEMPLATE)
    assert changed_files(config, {}) == []
