"""Normalizers are total over untrusted payloads (HOOK-07..10), 30 §1: pure, ``None`` = not matchable.

A webhook body is whatever the sender chose to send; a normalizer that raised would drop the
delivery without a delivery-log row. So for any JSON object and any event name every port
method answers, and the answers keep their documented shape.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.providers import WebhookNormalizer
from kici.domain.webhooks.normalizers.generic import GenericNormalizer
from kici.domain.webhooks.normalizers.github import GithubNormalizer
from kici.domain.webhooks.normalizers.local import LocalNormalizer
from kici.domain.webhooks.normalizers.universal_git import UniversalGitNormalizer, parse_git_config
from kici.domain.webhooks.sources import GenericSource
from tests.strategies.webhooks import json_like

pytestmark = pytest.mark.feature("HOOK-07", "HOOK-08", "HOOK-09", "HOOK-10")

SOURCE = GenericSource(org_id="o", source_id="s", name="n", event_type_path="$.kind")
NORMALIZERS: list[WebhookNormalizer] = [
    GithubNormalizer(),
    GenericNormalizer(SOURCE),
    LocalNormalizer(),
    *(
        UniversalGitNormalizer(SOURCE, parse_git_config({"preset": p, "gitUrlTemplate": "https://g/{repo}"}))
        for p in ("gitea", "gogs", "gitlab-repo", "github-repo")
    ),
]
EVENTS = [
    "push",
    "pull_request",
    "pull_request_review",
    "pull_request_review_comment",
    "issue_comment",
    "repository_dispatch",
    "release",
    "create",
    "delete",
    "status",
    "workflow_run",
    "fork",
    "star",
    "watch",
    "Push Hook",
    "Merge Request Hook",
    "ping",
    "",
]
KEYS = [
    "ref",
    "after",
    "action",
    "pull_request",
    "repository",
    "sender",
    "release",
    "branches",
    "object_attributes",
]

payloads = st.dictionaries(st.sampled_from(KEYS), json_like, max_size=6)


@given(
    st.sampled_from(NORMALIZERS), st.sampled_from(EVENTS), st.one_of(st.none(), st.text(max_size=5)), payloads
)
def test_every_port_method_answers_any_payload(
    normalizer: WebhookNormalizer, event: str, action: str | None, payload: dict[str, Any]
) -> None:
    normalized = normalizer.normalize_event(event, action, payload)
    if normalized is not None:
        assert isinstance(normalized.type, str)
        assert normalized.type
        assert isinstance(normalized.target_branch, str)
        assert normalized.provider == normalizer.provider.value
    ref = normalizer.extract_ref(event, payload)
    assert isinstance(ref, str)
    assert ref
    repo = normalizer.extract_repo_identifier(payload)
    assert repo is None or isinstance(repo, str)
    assert isinstance(dict(normalizer.extract_credentials(payload)), dict)
    branch = normalizer.extract_default_branch(payload)
    assert branch is None or isinstance(branch, str)


refs = st.one_of(
    st.text(st.sampled_from("abv1./-"), min_size=1, max_size=12).map(lambda s: "refs/tags/" + s),
    st.text(st.sampled_from("abv1./-"), min_size=1, max_size=12).map(lambda s: "refs/heads/" + s),
)


@given(refs, st.text("0123456789abcdef", min_size=40, max_size=40))
def test_pushes_are_tags_exactly_for_tag_refs(ref: str, after: str) -> None:
    payload = {"ref": ref, "after": after, "repository": {"full_name": "a/b"}}
    for normalizer in (NORMALIZERS[0], NORMALIZERS[3]):
        event = normalizer.normalize_event("push", None, payload)
        if set(after) == {"0"}:
            assert event is None
            continue
        assert event is not None
        tag = ref.startswith("refs/tags/")
        assert event.type == ("tag" if tag else "push")
        assert event.target_branch == ref.split("/", 2)[2]
        assert normalizer.extract_ref("push", payload) == after
