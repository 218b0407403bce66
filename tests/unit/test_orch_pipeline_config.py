"""The orchestrator's ``sources:`` section: typed sources, every problem at once, reload (OPS-01, OPS-03)."""

from __future__ import annotations

from typing import Any

import pytest

from kici.domain.config import ConfigError, YamlSource, load_orchestrator_config, plan_reload
from kici.domain.config.sources import (
    GITHUB_MAX_PAYLOAD_BYTES,
    SecretKind,
    SecretRef,
    SourceProvider,
)
from kici.domain.webhooks.normalizers.universal_git import GitPreset
from kici.domain.webhooks.sources import DEFAULT_MAX_PAYLOAD_BYTES, SourceKind

FILE = YamlSource("/etc/kici/orchestrator.yaml", {"sources": 4})
BASE: dict[str, Any] = {"instance": {"mode": "independent"}}


def load(sources: Any, env: dict[str, str] | None = None) -> Any:
    return load_orchestrator_config({**BASE, "sources": sources}, env or {}, yaml=FILE).config


def problems(sources: Any, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(sources, env)
    return [p.render() for p in caught.value.problems]


@pytest.mark.feature("OPS-01", "HOOK-01")
def test_every_provider_reads_into_a_typed_source_with_defaults() -> None:
    config = load(
        [
            {"name": "gh", "provider": "github", "appId": 123456, "secret": ["old", "new"]},
            {
                "name": "forge",
                "provider": "universal-git",
                "secretEnv": "KICI_FORGE_SECRET",
                "gitConfig": {"preset": "gitea", "gitUrlTemplate": "http://git.example/{repo}.git"},
            },
            {"name": "repos", "provider": "local", "repoBasePath": "/srv/git"},
            {
                "name": "hook",
                "provider": "generic",
                "secretFile": "/etc/kici/hook",
                "allowedEvents": ["deploy"],
            },
            {
                "name": "lab",
                "provider": "universal-git",
                "secret": "token",
                "routingKey": "generic:acme:lab",
                "gitConfig": {"preset": "gitlab-repo", "gitUrlTemplate": "https://lab.example/{repo}.git"},
            },
        ],
        env={"KICI_FORGE_SECRET": "s3cret"},
    )
    gh, forge, repos, hook, lab = config.sources
    assert (gh.provider, gh.routing_key, gh.max_payload_bytes) == (
        SourceProvider.GITHUB,
        "github:123456",
        GITHUB_MAX_PAYLOAD_BYTES,
    )
    assert gh.secrets == (SecretRef(SecretKind.VALUE, "old"), SecretRef(SecretKind.VALUE, "new"))
    assert forge.routing_key == "generic:__default__:forge"
    assert (forge.verification, forge.signature_header) == ("hmac_sha256", "x-gitea-signature")
    assert forge.git is not None
    assert forge.git.preset is GitPreset.GITEA
    assert forge.secrets == (SecretRef(SecretKind.ENV, "KICI_FORGE_SECRET"),)
    assert (repos.verification, repos.repo_base_path, repos.max_payload_bytes) == (
        "none",
        "/srv/git",
        DEFAULT_MAX_PAYLOAD_BYTES,
    )
    assert repos.generic_source().kind is SourceKind.LOCAL
    assert hook.secrets == (SecretRef(SecretKind.FILE, "/etc/kici/hook"),)
    assert hook.allowed_events == ("deploy",)
    assert (lab.verification, lab.signature_header) == ("bearer_token", "x-gitlab-token")
    assert (lab.generic_source().org_id, lab.generic_source().source_id) == ("acme", "lab")


@pytest.mark.feature("OPS-01")
def test_all_source_problems_are_reported_together_with_places_and_fixes() -> None:
    found = problems(
        [
            {"name": "gh", "provider": "github", "secret": "x", "apId": 1},
            {"name": "bad name", "provider": "gitlab"},
            {"name": "forge", "provider": "universal-git", "secretEnv": "MISSING_SECRET"},
            {
                "name": "pg",
                "provider": "universal-git",
                "gitConfig": {
                    "preset": "gitea",
                    "gitUrlTemplate": "http://git/{repo}",
                    "credentialRef": {"key": "tok"},
                },
            },
            {"name": "local", "provider": "local"},
            {"name": "local", "provider": "generic", "routingKey": "github:9"},
            "not a mapping",
        ]
    )
    where = "/etc/kici/orchestrator.yaml:4 sources"
    expected_fragments = [
        f"{where}[0].apId: unknown key for a github source. Did you mean appId?",
        f"{where}[0].appId: is required",
        f"{where}[1].provider: expected one of github, generic, universal-git, local",
        f"{where}[2].secretEnv: names MISSING_SECRET, which is not set in the environment",
        f"{where}[2].gitConfig: is required for a universal-git source",
        f"{where}[3].gitConfig.credentialRef.store: expected env or file in independent mode",
        f"{where}[4].repoBasePath: is required",
        f"{where}[5].routingKey: a generic source needs a generic:<orgId>:<sourceId> key",
        f"{where}[6]: expected a mapping of settings",
    ]
    for fragment in expected_fragments:
        assert any(fragment in line for line in found), (fragment, found)


@pytest.mark.feature("OPS-01")
def test_duplicate_names_and_routing_keys_and_missing_secrets_are_refused() -> None:
    found = problems(
        [
            {"name": "a", "provider": "github", "appId": "1"},
            {"name": "a", "provider": "generic", "verification": "hmac_sha256"},
            {"name": "b", "provider": "generic", "routingKey": "generic:x:y"},
            {"name": "c", "provider": "generic", "routingKey": "generic:x:y"},
            {"name": "d", "provider": "generic", "verification": "ip_allowlist", "allowlist": ["10.0.0.0/8"]},
        ]
    )
    text = "\n".join(found)
    assert "a GitHub source needs its webhook secret" in text
    assert "hmac_sha256 needs a secret" in text
    assert "repeats the name 'a' of entry 0" in text
    assert "repeats the routing key 'generic:x:y' of entry 2" in text
    assert "is not a single IP address" in text


@pytest.mark.feature("OPS-01")
def test_a_kici_named_secret_env_is_known_not_a_typo_and_a_list_is_required() -> None:
    config = load(
        [{"name": "gh", "provider": "github", "appId": "7", "secretEnv": "KICI_GH_SECRET"}],
        env={"KICI_GH_SECRET": "value"},
    )
    assert config.sources[0].secrets == (SecretRef(SecretKind.ENV, "KICI_GH_SECRET"),)
    assert any("expected a list of sources" in line for line in problems({"name": "x"}))


@pytest.mark.feature("OPS-01")
def test_secret_values_never_appear_in_problems_or_reprs() -> None:
    found = problems([{"name": "gh", "provider": "github", "appId": "1", "secret": [12345678]}])
    assert not any("12345678" in line for line in found)
    ref = SecretRef(SecretKind.VALUE, "hunter22")
    assert "hunter22" not in repr(ref)


@pytest.mark.feature("OPS-03")
def test_a_reload_applies_changed_sources_and_lists_them() -> None:
    old = load([{"name": "gh", "provider": "github", "appId": "1", "secret": "a"}])
    new = load([{"name": "gh", "provider": "github", "appId": "1", "secret": "b"}])
    plan = plan_reload(old, new)
    assert plan.apply.sources == new.sources
    assert "sources" in plan.applied_changes
    assert plan_reload(old, old).applied_changes == ()


@pytest.mark.feature("OPS-01", "HOOK-07")
def test_a_github_enterprise_source_reads_its_api_and_web_bases() -> None:
    entry = {
        "name": "ghes",
        "provider": "github",
        "appId": 42,
        "secret": "s",
        "apiBaseUrl": "https://ghe.example/api/v3",
        "webBaseUrl": "https://ghe.example",
    }
    (source,) = load([entry]).sources
    assert (source.api_base_url, source.web_base_url) == ("https://ghe.example/api/v3", "https://ghe.example")
