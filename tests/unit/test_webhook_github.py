"""The GitHub normalizer on GitHub-shaped deliveries: every row of 30 §3.2 (HOOK-07)."""

from __future__ import annotations

from typing import Any

import pytest

from kici.domain.events import SimulatedEvent
from kici.domain.lockfile import LockBranchPattern, PushTrigger, TagTrigger
from kici.domain.providers import WebhookNormalizer
from kici.domain.triggers import match_workflow
from kici.domain.webhooks.normalizers.github import GithubNormalizer
from kici.domain.webhooks.verification import sign_body
from tests.strategies.webhooks import delivery

pytestmark = pytest.mark.feature("HOOK-07")

GITHUB: WebhookNormalizer = GithubNormalizer()


def sha(n: int) -> str:
    return f"{n:040x}"


def normalize(name: str) -> tuple[SimulatedEvent | None, str, dict[str, Any]]:
    headers, payload, _ = delivery(name)
    event = GITHUB.extract_event_type(headers)
    assert event is not None
    return GITHUB.normalize_event(event, None, payload), GITHUB.extract_ref(event, payload), payload


# fixture -> (type, action, target_branch, source_branch, base_branch, is_fork_pr, lock ref)
ROWS: dict[str, tuple[str, str | None, str, str | None, str | None, bool | None, str]] = {
    "github_push": ("push", None, "main", None, None, None, sha(2)),
    "github_push_tag": ("tag", None, "v1.2.0", None, None, None, sha(3)),
    "github_pull_request_opened": (
        "pull_request",
        "opened",
        "main",
        "feature/login",
        "main",
        False,
        sha(0xBEEF),
    ),
    "github_pull_request_synchronize_fork": (
        "pull_request",
        "synchronize",
        "main",
        "patch-1",
        "main",
        True,
        sha(0xF00D),
    ),
    "github_pull_request_review": (
        "review",
        "submitted",
        "main",
        "feature/login",
        "main",
        False,
        sha(0xBEEF),
    ),
    "github_pull_request_review_comment": (
        "review_comment",
        "created",
        "main",
        "patch-1",
        "main",
        True,
        sha(0xF00D),
    ),
    "github_issue_comment": ("comment", "created", "main", None, None, None, "HEAD"),
    "github_fork": ("fork", None, "main", None, None, None, "HEAD"),
    "github_star_created": ("star", "created", "main", None, None, None, "HEAD"),
    "github_watch_started": ("watch", "started", "main", None, None, None, "HEAD"),
    "github_repository_dispatch": ("dispatch", "deploy-staging", "main", None, None, None, "HEAD"),
    "github_release_published": ("release", "published", "release/1.x", None, None, None, "release/1.x"),
    "github_create_branch": ("create", None, "feature/x", None, None, None, "HEAD"),
    "github_delete_tag": ("delete", None, "v0.9.0", None, None, None, "HEAD"),
    "github_status": ("status", None, "develop", None, None, None, sha(5)),
    "github_workflow_run_completed": ("workflow_run", "completed", "develop", None, None, None, "HEAD"),
}


@pytest.mark.parametrize("name", sorted(ROWS))
def test_normalizer_table(name: str) -> None:
    event, ref, payload = normalize(name)
    kind, action, target, source, base, fork, lock_ref = ROWS[name]
    assert event is not None
    assert (event.type, event.action, event.target_branch) == (kind, action, target)
    assert (event.source_branch, event.base_branch, event.is_fork_pr) == (source, base, fork)
    assert ref == lock_ref
    assert event.provider == "github"
    assert event.payload == payload
    assert event.sender_username == payload["sender"]["login"]
    assert event.sender_user_id == str(payload["sender"]["id"])
    assert event.changed_files is None


@pytest.mark.parametrize("name", sorted(ROWS))
def test_repository_credentials_and_default_branch(name: str) -> None:
    headers, payload, _ = delivery(name)
    assert GITHUB.extract_repo_identifier(payload) == "acme/app"
    assert GITHUB.extract_credentials(payload) == {"installationId": "42424242"}
    assert GITHUB.extract_default_branch(payload) == "main"
    assert GITHUB.extract_routing_key(headers, payload) == "github:123456"
    assert GITHUB.extract_delivery_id(headers) == headers["x-github-delivery"]


@pytest.mark.parametrize("name", ["github_ping", "github_push_branch_deleted"])
def test_unmatchable_deliveries(name: str) -> None:
    event, _, _ = normalize(name)
    assert event is None


def test_a_deleted_branch_push_keeps_head_as_lock_ref() -> None:
    _, payload, _ = delivery("github_push_branch_deleted")
    assert GITHUB.extract_ref("push", payload) == "HEAD"
    assert GITHUB.normalize_event("push", None, {**payload, "deleted": False}) is None


def test_routing_key_requires_an_app_target() -> None:
    headers, payload, _ = delivery("github_push")
    assert (
        GITHUB.extract_routing_key(
            {**headers, "x-github-hook-installation-target-type": "repository"}, payload
        )
        is None
    )
    assert (
        GITHUB.extract_routing_key({**headers, "x-github-hook-installation-target-id": ""}, payload) is None
    )


def test_pull_request_without_base_ref_is_not_matchable() -> None:
    _, payload, _ = delivery("github_pull_request_opened")
    broken = {**payload, "pull_request": {**payload["pull_request"], "base": {}}}
    assert GITHUB.normalize_event("pull_request", "opened", broken) is None
    review = GITHUB.normalize_event("pull_request_review", None, broken)
    assert review is not None
    assert review.target_branch == "main"


def test_deleted_fork_counts_as_fork() -> None:
    _, payload, _ = delivery("github_pull_request_synchronize_fork")
    head = {**payload["pull_request"]["head"], "repo": None}
    event = GITHUB.normalize_event(
        "pull_request", None, {**payload, "pull_request": {**payload["pull_request"], "head": head}}
    )
    assert event is not None
    assert event.is_fork_pr is True


def test_fallbacks_when_the_payload_is_thin() -> None:
    payload = {"repository": {"name": "app", "owner": {"login": "acme"}}, "sender": {"login": "u", "id": 7}}
    assert GITHUB.extract_repo_identifier(payload) == "acme/app"
    assert GITHUB.extract_default_branch(payload) == "main"
    assert GITHUB.extract_credentials(payload) == {}
    event = GITHUB.normalize_event("status", None, payload)
    assert event is not None
    assert event.target_branch == "main"
    assert GITHUB.extract_ref("release", payload) == "HEAD"
    assert GITHUB.extract_repo_identifier({}) is None
    assert GITHUB.normalize_event("issues", "opened", payload) is None
    assert GITHUB.normalize_event("push", None, {"after": sha(1)}) is None


def test_delivery_action_wins_except_for_dispatch() -> None:
    _, payload, _ = delivery("github_repository_dispatch")
    event = GITHUB.normalize_event("repository_dispatch", "ignored", payload)
    assert event is not None
    assert event.action == "deploy-staging"
    _, payload, _ = delivery("github_star_created")
    star = GITHUB.normalize_event("star", "deleted", payload)
    assert star is not None
    assert star.action == "deleted"


@pytest.mark.feature("HOOK-02")
def test_signature_is_checked_over_the_raw_fixture_body() -> None:
    headers, _, body = delivery("github_push")
    signed = {**headers, "x-hub-signature-256": sign_body(body, "app-secret")}
    assert GITHUB.verify_signature(body, signed, "app-secret")
    assert not GITHUB.verify_signature(body + b" ", signed, "app-secret")
    assert not GITHUB.verify_signature(body, headers, "app-secret")


def test_normalized_events_match_lock_triggers() -> None:
    push, _, _ = normalize("github_push")
    tag, _, _ = normalize("github_push_tag")
    assert push is not None
    assert tag is not None
    on_main = PushTrigger(branches=(LockBranchPattern(type="glob", pattern="main"),))
    releases = TagTrigger(patterns=(LockBranchPattern(type="glob", pattern="v*"),))
    assert match_workflow((on_main,), push).matched
    assert not match_workflow((on_main,), tag).matched
    assert match_workflow((releases,), tag).matched
