"""GitHub webhooks -> :class:`SimulatedEvent` (HOOK-07, the GitHub rows of 30 §3.2).

GitHub names the event in ``x-github-event`` and the sub-kind in ``payload.action``. Each
supported event maps to a kici event type, the branch triggers filter on (*target*) and the
commit whose lock decides (the *lock ref*):

* push of ``refs/tags/X``: ``tag``, target ``X``, lock ref ``after``;
* push of any other ref: ``push``, target = ref minus ``refs/heads/``, lock ref ``after``;
* pull_request: ``pull_request`` (not matchable without ``base.ref``), target ``base.ref``,
  source ``head.ref``, lock ref ``head.sha``;
* pull_request_review / pull_request_review_comment: ``review`` / ``review_comment``, target
  ``base.ref`` or the default branch, lock ref ``head.sha``;
* issue_comment, fork, star, watch: ``comment``, ``fork``, ``star``, ``watch``, target the default
  branch, lock ref ``HEAD``;
* repository_dispatch: ``dispatch`` with action ``payload.action``, default branch, ``HEAD``;
* release: target and lock ref ``release.target_commitish`` (default branch / ``HEAD`` without);
* create / delete: target ``payload.ref`` or the default branch, lock ref ``HEAD``;
* status: target ``branches[0].name`` or default, lock ref ``sha``;
* workflow_run: target ``workflow_run.head_branch`` or default, lock ref ``HEAD``.

Any other event is not matchable (``None``). Choices where the spec is silent:

* A push that deletes its ref (``deleted: true`` or an all-zero ``after``) is not matchable:
  there is no commit to build, and the ``delete`` event reports the deletion.
* ``is_fork_pr`` compares the head and base repositories' ``full_name``; a head repository that
  no longer exists (deleted fork) counts as a fork, because it can only have been one.
* The event's ``action`` is the delivery's action when given, else ``payload.action``; for
  ``repository_dispatch`` it is always ``payload.action`` (the dispatch type).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs

from kici.domain.events import SimulatedEvent
from kici.domain.providers import Credentials
from kici.domain.webhooks.models import HEAD_REF, ProviderType, is_zero_sha
from kici.domain.webhooks.payload import dig, identifier, owner_repo, strip_ref, tag_name, text
from kici.domain.webhooks.verification import GITHUB_SIGNATURE_HEADER, verify_hmac

DEFAULT_BRANCH: Final = "main"
TARGET_TYPE_HEADER: Final = "x-github-hook-installation-target-type"
TARGET_ID_HEADER: Final = "x-github-hook-installation-target-id"
INTEGRATION: Final = "integration"

_SAME_NAME: Final = frozenset(
    {"issue_comment", "fork", "star", "watch", "create", "delete", "status", "release", "workflow_run"}
)
_RENAMED: Final = {
    "issue_comment": "comment",
    "pull_request_review": "review",
    "pull_request_review_comment": "review_comment",
    "repository_dispatch": "dispatch",
}
_PR_LIKE: Final = frozenset({"pull_request", "pull_request_review", "pull_request_review_comment"})


def _sender(payload: Mapping[str, Any]) -> tuple[str | None, str | None]:
    return text(dig(payload, "sender", "login")), identifier(dig(payload, "sender", "id"))


def is_fork_pull_request(pull_request: Any) -> bool:
    """Head repository differs from the base repository (or is gone)."""
    base = text(dig(pull_request, "base", "repo", "full_name"))
    head = text(dig(pull_request, "head", "repo", "full_name"))
    return head is None or head != base


class GithubNormalizer:
    """The :class:`~kici.domain.providers.WebhookNormalizer` of GitHub Apps."""

    @property
    def provider(self) -> ProviderType:
        return ProviderType.GITHUB

    def extract_routing_key(self, headers: Mapping[str, str], payload: Mapping[str, Any]) -> str | None:
        """``github:<App id>``; ``None`` unless the hook belongs to an App (ingress answers 400)."""
        if headers.get(TARGET_TYPE_HEADER) != INTEGRATION:
            return None
        app_id = headers.get(TARGET_ID_HEADER, "").strip()
        return f"github:{app_id}" if app_id else None

    def extract_delivery_id(self, headers: Mapping[str, str]) -> str | None:
        return headers.get("x-github-delivery") or None

    def extract_event_type(self, headers: Mapping[str, str]) -> str | None:
        return headers.get("x-github-event") or None

    def verify_signature(self, body: bytes, headers: Mapping[str, str], secret: str | bytes) -> bool:
        return verify_hmac(body, headers.get(GITHUB_SIGNATURE_HEADER), secret)

    def extract_repo_identifier(self, payload: Mapping[str, Any]) -> str | None:
        return owner_repo(payload)

    def extract_default_branch(self, payload: Mapping[str, Any]) -> str | None:
        return text(dig(payload, "repository", "default_branch")) or DEFAULT_BRANCH

    def extract_credentials(self, payload: Mapping[str, Any]) -> Credentials:
        installation = identifier(dig(payload, "installation", "id"))
        return {"installationId": installation} if installation is not None else {}

    def extract_ref(self, event: str, payload: Mapping[str, Any]) -> str:
        ref: str | None = None
        if event == "push":
            after = text(payload.get("after"))
            ref = None if is_zero_sha(after) else after
        elif event in _PR_LIKE:
            ref = text(dig(payload, "pull_request", "head", "sha"))
        elif event == "release":
            ref = text(dig(payload, "release", "target_commitish"))
        elif event == "status":
            ref = text(payload.get("sha"))
        return ref or HEAD_REF

    def normalize_event(
        self, event: str, action: str | None, payload: Mapping[str, Any]
    ) -> SimulatedEvent | None:
        default = self.extract_default_branch(payload) or DEFAULT_BRANCH
        username, user_id = _sender(payload)
        common = SimulatedEvent(
            type=event,
            action=action if action is not None else text(payload.get("action")),
            payload=payload,
            provider=ProviderType.GITHUB.value,
            sender_username=username,
            sender_user_id=user_id,
        )
        if event == "push":
            return _push(payload, common)
        if event in _PR_LIKE:
            return _pull_request(event, payload, default, common)
        if event == "repository_dispatch":
            return attrs.evolve(
                common, type="dispatch", action=text(payload.get("action")), target_branch=default
            )
        if event in _SAME_NAME:
            target = _target(event, payload) or default
            return attrs.evolve(common, type=_RENAMED.get(event, event), target_branch=target)
        return None


def _target(event: str, payload: Mapping[str, Any]) -> str | None:
    if event in ("create", "delete"):
        return text(payload.get("ref"))
    if event == "status":
        return text(dig(payload, "branches", 0, "name"))
    if event == "workflow_run":
        return text(dig(payload, "workflow_run", "head_branch"))
    if event == "release":
        return text(dig(payload, "release", "target_commitish"))
    return None


def _push(payload: Mapping[str, Any], common: SimulatedEvent) -> SimulatedEvent | None:
    ref = text(payload.get("ref"))
    if ref is None or payload.get("deleted") is True or is_zero_sha(text(payload.get("after"))):
        return None
    tag = tag_name(ref)
    if tag is not None:
        return attrs.evolve(common, type="tag", target_branch=tag)
    return attrs.evolve(common, type="push", target_branch=strip_ref(ref))


def _pull_request(
    event: str, payload: Mapping[str, Any], default: str, common: SimulatedEvent
) -> SimulatedEvent | None:
    pull_request = payload.get("pull_request")
    base_ref = text(dig(pull_request, "base", "ref"))
    if event == "pull_request" and base_ref is None:
        return None
    return attrs.evolve(
        common,
        type="pull_request" if event == "pull_request" else _RENAMED[event],
        target_branch=base_ref or default,
        source_branch=text(dig(pull_request, "head", "ref")),
        base_branch=base_ref,
        is_fork_pr=is_fork_pull_request(pull_request) if pull_request is not None else None,
    )


__all__ = ["DEFAULT_BRANCH", "GithubNormalizer", "is_fork_pull_request"]
