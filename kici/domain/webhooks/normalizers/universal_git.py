"""Universal-git: any git forge, read through a preset or a custom payload mapping (HOOK-09, HOOK-22).

A universal-git source (``generic_webhook_sources.git_config``) names a *preset* for the forge's
webhook dialect, a clone URL template and a credential. Presets:

* ``forgejo``, ``gitea``: event in ``x-gitea-event``, GitHub-like payloads
  (``repository.full_name``, ``ref``, ``after``, ``commits[*].added``…);
* ``gogs``: event in ``x-gogs-event``, GitHub-like payloads;
* ``gitlab-repo``: event in ``x-gitlab-event``, ``project.path_with_namespace``,
  ``project.default_branch``, merge requests in ``object_attributes``;
* ``github-repo``: event in ``x-github-event``, GitHub payloads (a repository webhook, not an App);
* ``custom``: the source's own ``payloadPaths`` (JSONPath) and ``eventMapping``.

Push events become ``push`` (or ``tag`` for ``refs/tags/…``); pull/merge-request events become
``pull_request``; anything else is not matchable. Changed files come from the payload's commit
lists, never from an API call. The lock is read by a sparse clone (the adapter); this module
only decides *what* to clone and *how to authenticate*.

Choices where the spec is silent:

* GitLab's ``Tag Push Hook`` counts as a push (its ref is ``refs/tags/…``, so it becomes ``tag``).
* Pull-request actions are read from the payload and mapped to GitHub's names, so one
  ``pr(events=…)`` works everywhere (the delivery's action is only a fallback): GitLab
  ``open`` -> ``opened``, ``reopen`` -> ``reopened``, ``close``/``merge`` -> ``closed``,
  ``update`` -> ``synchronize`` when it moved the branch (``oldrev`` present) else ``edited``;
  Gitea's ``synchronized`` -> ``synchronize``.
* A custom mapping must give ``repo`` and ``ref`` paths; the other paths default to the
  GitHub-like ones.
* URL templates know ``{repo}`` (``owner/name``), ``{owner}`` (text before the last ``/``, so
  GitLab subgroups stay whole) and ``{name}``; any other placeholder is a configuration error.
* The signature check of :meth:`UniversalGitNormalizer.verify_signature` follows the forge:
  Gitea/Forgejo and Gogs send the bare hex HMAC in ``x-gitea-signature`` / ``x-gogs-signature``,
  GitHub ``sha256=…`` in ``x-hub-signature-256``, GitLab the shared token in ``x-gitlab-token``;
  custom sources use ``x-signature-256``.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final

import attrs

from kici.domain.events import SimulatedEvent
from kici.domain.jsonpath import JsonPathError, find, parse_path
from kici.domain.providers import Credentials, GitAuth, GitAuthKind, SshHostKeyPolicy
from kici.domain.webhooks.models import HEAD_REF, ProviderType, is_zero_sha
from kici.domain.webhooks.payload import dig, identifier, require_safe_repo, strip_ref, tag_name, text
from kici.domain.webhooks.sources import GenericSource
from kici.domain.webhooks.verification import (
    DEFAULT_HMAC_HEADER,
    GITHUB_SIGNATURE_HEADER,
    verify_hmac,
    verify_hmac_value,
)

DELIVERY_HEADERS: Final = (
    "x-gitea-delivery",
    "x-gogs-delivery",
    "x-gitlab-event-uuid",
    "x-github-delivery",
    "x-delivery-id",
    "x-request-id",
)
PAT_USER: Final = "x-access-token"
BASIC_USER: Final = "git"
_PLACEHOLDER: Final = re.compile(r"\{([^{}]*)\}")
_PLACEHOLDERS: Final = frozenset({"repo", "owner", "name"})


class GitPreset(StrEnum):
    FORGEJO = "forgejo"
    GITEA = "gitea"
    GOGS = "gogs"
    GITLAB_REPO = "gitlab-repo"
    GITHUB_REPO = "github-repo"
    CUSTOM = "custom"


class CredentialType(StrEnum):
    PAT = "pat"
    BASIC = "basic"
    SSH = "ssh"


class InvalidGitConfigError(ValueError):
    """A ``git_config`` that cannot drive a source; the message never quotes a credential."""


@attrs.frozen
class CredentialRef:
    """Where the source's credential is stored; read again at every use, so rotation needs no restart."""

    key: str
    store: str = "pg"


@attrs.frozen(kw_only=True)
class PayloadPaths:
    """JSONPath expressions (EVT-15 subset) locating what kici needs in a push payload."""

    repo: str = "$.repository.full_name"
    ref: str = "$.ref"
    sha: str = "$.after"
    default_branch: str = "$.repository.default_branch"
    added: str = "$.commits[*].added[*]"
    modified: str = "$.commits[*].modified[*]"
    removed: str = "$.commits[*].removed[*]"


@attrs.frozen(kw_only=True)
class EventMapping:
    """Which (lower-cased) header names the event, and which of its values are pushes and pull requests."""

    header: str
    push: tuple[str, ...] = ()
    pull_request: tuple[str, ...] = ()


_GITHUB_LIKE: Final = PayloadPaths()
_GITLAB: Final = PayloadPaths(repo="$.project.path_with_namespace", default_branch="$.project.default_branch")
PRESETS: Final[Mapping[GitPreset, tuple[PayloadPaths, EventMapping]]] = {
    GitPreset.FORGEJO: (
        _GITHUB_LIKE,
        EventMapping(header="x-gitea-event", push=("push",), pull_request=("pull_request",)),
    ),
    GitPreset.GITEA: (
        _GITHUB_LIKE,
        EventMapping(header="x-gitea-event", push=("push",), pull_request=("pull_request",)),
    ),
    GitPreset.GOGS: (
        _GITHUB_LIKE,
        EventMapping(header="x-gogs-event", push=("push",), pull_request=("pull_request",)),
    ),
    GitPreset.GITLAB_REPO: (
        _GITLAB,
        EventMapping(
            header="x-gitlab-event",
            push=("push", "Push Hook", "Tag Push Hook"),
            pull_request=("pull_request", "Merge Request Hook", "merge_request"),
        ),
    ),
    GitPreset.GITHUB_REPO: (
        _GITHUB_LIKE,
        EventMapping(header="x-github-event", push=("push",), pull_request=("pull_request",)),
    ),
}

_SIGNATURE_HEADERS: Final = {
    GitPreset.FORGEJO: "x-gitea-signature",
    GitPreset.GITEA: "x-gitea-signature",
    GitPreset.GOGS: "x-gogs-signature",
    GitPreset.CUSTOM: DEFAULT_HMAC_HEADER,
}


@attrs.frozen(kw_only=True)
class GitConfig:
    preset: GitPreset
    git_url_template: str
    credential_ref: CredentialRef | None = None
    credential_type: CredentialType = CredentialType.PAT
    credential_user: str | None = None
    ssh_host_key_policy: SshHostKeyPolicy = SshHostKeyPolicy.ACCEPT_NEW
    ssh_known_hosts_pem: str | None = attrs.field(default=None, repr=False)
    payload_paths: PayloadPaths | None = None
    event_mapping: EventMapping | None = None

    @property
    def paths(self) -> PayloadPaths:
        return self.payload_paths if self.payload_paths is not None else PRESETS[self.preset][0]

    @property
    def mapping(self) -> EventMapping:
        return self.event_mapping if self.event_mapping is not None else PRESETS[self.preset][1]


def _enum(kind: type[StrEnum], value: Any, what: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(m.value for m in kind)
        raise InvalidGitConfigError(f"{what} must be one of {allowed}") from None


def _optional_text(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidGitConfigError(f"{key} must be a non-empty string")
    return value


def _names(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
        raise InvalidGitConfigError(f"{what} must be a string or an array of non-empty strings")
    return tuple(items)


def _path(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidGitConfigError(f"payloadPaths.{what} must be a non-empty JSONPath string")
    try:
        parse_path(value)
    except JsonPathError as exc:
        raise InvalidGitConfigError(f"payloadPaths.{what}: {exc}") from exc
    return value


def _payload_paths(data: Any) -> PayloadPaths:
    if not isinstance(data, Mapping):
        raise InvalidGitConfigError("payloadPaths must be an object")
    keys = {
        "repo": "repo",
        "ref": "ref",
        "sha": "sha",
        "defaultBranch": "default_branch",
        "added": "added",
        "modified": "modified",
        "removed": "removed",
    }
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise InvalidGitConfigError(f"payloadPaths has unknown keys: {', '.join(unknown)}")
    for required in ("repo", "ref"):
        if required not in data:
            raise InvalidGitConfigError(f"payloadPaths.{required} is required for a custom mapping")
    return PayloadPaths(**{keys[k]: _path(v, k) for k, v in data.items()})


def _event_mapping(data: Any) -> EventMapping:
    if not isinstance(data, Mapping):
        raise InvalidGitConfigError("eventMapping must be an object")
    header = data.get("header")
    if not isinstance(header, str) or not header.strip():
        raise InvalidGitConfigError("eventMapping.header must name the header that carries the event")
    push = _names(data.get("push"), "eventMapping.push")
    pull_request = _names(data.get("pullRequest"), "eventMapping.pullRequest")
    if not push and not pull_request:
        raise InvalidGitConfigError("eventMapping must map at least one push or pullRequest event name")
    return EventMapping(header=header.strip().lower(), push=push, pull_request=pull_request)


def check_url_template(template: str) -> str:
    """``template`` if it has a repository placeholder and no unknown one."""
    names = _PLACEHOLDER.findall(template)
    unknown = sorted(set(names) - _PLACEHOLDERS)
    if unknown:
        raise InvalidGitConfigError(f"gitUrlTemplate has unknown placeholders: {', '.join(unknown)}")
    if not {"repo", "name"} & set(names):
        raise InvalidGitConfigError("gitUrlTemplate must contain {repo} or {name}")
    return template


def parse_git_config(data: Any) -> GitConfig:
    """A source's ``git_config`` JSON (camelCase keys); raises :class:`InvalidGitConfigError`."""
    if not isinstance(data, Mapping):
        raise InvalidGitConfigError("git_config must be an object")
    preset = _enum(GitPreset, data.get("preset"), "preset")
    template = data.get("gitUrlTemplate")
    if not isinstance(template, str) or not template:
        raise InvalidGitConfigError("gitUrlTemplate is required")
    reference = data.get("credentialRef")
    credential_ref: CredentialRef | None = None
    if reference is not None:
        if not isinstance(reference, Mapping) or not isinstance(reference.get("key"), str):
            raise InvalidGitConfigError("credentialRef must be an object with a string key")
        store = reference.get("store", "pg")
        if not isinstance(store, str) or not store:
            raise InvalidGitConfigError("credentialRef.store must be a non-empty string")
        credential_ref = CredentialRef(reference["key"], store)
    policy = _enum(SshHostKeyPolicy, data.get("sshHostKeyPolicy", "accept-new"), "sshHostKeyPolicy")
    pem = _optional_text(data, "sshKnownHostsPem")
    if policy is SshHostKeyPolicy.PINNED and pem is None:
        raise InvalidGitConfigError("sshHostKeyPolicy pinned needs sshKnownHostsPem")
    custom = preset is GitPreset.CUSTOM
    if custom and ("payloadPaths" not in data or "eventMapping" not in data):
        raise InvalidGitConfigError("the custom preset needs both payloadPaths and eventMapping")
    return GitConfig(
        preset=preset,
        git_url_template=check_url_template(template),
        credential_ref=credential_ref,
        credential_type=_enum(CredentialType, data.get("credentialType", "pat"), "credentialType"),
        credential_user=_optional_text(data, "credentialUser"),
        ssh_host_key_policy=policy,
        ssh_known_hosts_pem=pem,
        payload_paths=_payload_paths(data["payloadPaths"]) if "payloadPaths" in data else None,
        event_mapping=_event_mapping(data["eventMapping"]) if "eventMapping" in data else None,
    )


def split_repo(repo: str) -> tuple[str, str]:
    """``(owner, name)``: the owner is everything before the last ``/`` (GitLab subgroups)."""
    owner, _, name = repo.rpartition("/")
    return owner, name


def clone_url(config: GitConfig, repo: str) -> str:
    """The template filled for ``repo``; an unsafe identifier raises ``InvalidRepoIdentifierError``."""
    owner, name = split_repo(require_safe_repo(repo))
    values = {"repo": repo, "owner": owner, "name": name}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], config.git_url_template)


def git_auth(config: GitConfig, secret: str | None) -> GitAuth | None:
    """The clone credential made from the source's secret (HOOK-22); ``None`` without one (public repo).

    The HTTPS user is the configured one, else ``x-access-token`` for a token (what forges accept
    with any personal access token) or ``git`` for a password.
    """
    if not secret:
        return None
    if config.credential_type is CredentialType.SSH:
        return GitAuth(
            kind=GitAuthKind.SSH,
            secret=secret,
            user=config.credential_user,
            ssh_host_key_policy=config.ssh_host_key_policy,
            ssh_known_hosts_pem=config.ssh_known_hosts_pem,
        )
    default_user = PAT_USER if config.credential_type is CredentialType.PAT else BASIC_USER
    return GitAuth(kind=GitAuthKind.BASIC, user=config.credential_user or default_user, secret=secret)


def _values(path: str, payload: Mapping[str, Any]) -> list[Any]:
    try:
        return find(path, payload)
    except JsonPathError:
        return []


def _first_text(path: str, payload: Mapping[str, Any]) -> str | None:
    return next((t for t in map(text, _values(path, payload)) if t is not None), None)


def changed_files(config: GitConfig, payload: Mapping[str, Any]) -> list[str]:
    """Added, modified and removed paths of the push's commits, each once, in payload order."""
    paths = config.paths
    seen: dict[str, None] = {}
    for expression in (paths.added, paths.modified, paths.removed):
        for value in _values(expression, payload):
            if isinstance(value, str) and value:
                seen.setdefault(value, None)
    return list(seen)


_GITLAB_ACTIONS: Final = {"open": "opened", "reopen": "reopened", "close": "closed", "merge": "closed"}


def _merge_request_action(attributes: Any) -> str | None:
    action = text(dig(attributes, "action"))
    if action == "update":
        return "synchronize" if dig(attributes, "oldrev") is not None else "edited"
    return _GITLAB_ACTIONS.get(action, action) if action is not None else None


def _sender(payload: Mapping[str, Any]) -> tuple[str | None, str | None]:
    username = text(dig(payload, "sender", "login")) or text(dig(payload, "sender", "username"))
    if username is not None:
        return username, identifier(dig(payload, "sender", "id"))
    if text(payload.get("user_username")) is not None:
        return text(payload.get("user_username")), identifier(payload.get("user_id"))
    return text(dig(payload, "user", "username")), identifier(dig(payload, "user", "id"))


class UniversalGitNormalizer:
    """The :class:`~kici.domain.providers.WebhookNormalizer` of one universal-git source."""

    def __init__(self, source: GenericSource, config: GitConfig) -> None:
        self.source = source
        self.config = config

    @property
    def provider(self) -> ProviderType:
        return ProviderType.GENERIC

    def extract_routing_key(self, headers: Mapping[str, str], payload: Mapping[str, Any]) -> str | None:
        return self.source.routing_key

    def extract_delivery_id(self, headers: Mapping[str, str]) -> str | None:
        return next((headers[n] for n in DELIVERY_HEADERS if headers.get(n)), None)

    def extract_event_type(self, headers: Mapping[str, str]) -> str | None:
        return headers.get(self.config.mapping.header) or None

    def verify_signature(self, body: bytes, headers: Mapping[str, str], secret: str | bytes) -> bool:
        preset = self.config.preset
        if preset is GitPreset.GITHUB_REPO:
            return verify_hmac(body, headers.get(GITHUB_SIGNATURE_HEADER), secret)
        if preset is GitPreset.GITLAB_REPO:
            token = headers.get("x-gitlab-token", "").encode("utf-8")
            expected = secret.encode("utf-8") if isinstance(secret, str) else secret
            return bool(token) and hmac.compare_digest(token, expected)
        return verify_hmac_value(body, headers.get(_SIGNATURE_HEADERS[preset]), secret)

    def extract_repo_identifier(self, payload: Mapping[str, Any]) -> str | None:
        return _first_text(self.config.paths.repo, payload)

    def extract_default_branch(self, payload: Mapping[str, Any]) -> str | None:
        return _first_text(self.config.paths.default_branch, payload)

    def extract_credentials(self, payload: Mapping[str, Any]) -> Credentials:
        """Nothing from the payload: the credential is the source's own (see :func:`git_auth`)."""
        return {}

    def extract_ref(self, event: str, payload: Mapping[str, Any]) -> str:
        mapping = self.config.mapping
        ref: str | None = None
        if event in mapping.push:
            sha = _first_text(self.config.paths.sha, payload)
            ref = None if is_zero_sha(sha) else sha
        elif event in mapping.pull_request:
            ref = text(dig(payload, "pull_request", "head", "sha")) or text(
                dig(payload, "object_attributes", "last_commit", "id")
            )
        return ref or HEAD_REF

    def changed_files(self, payload: Mapping[str, Any]) -> list[str]:
        return changed_files(self.config, payload)

    def normalize_event(
        self, event: str, action: str | None, payload: Mapping[str, Any]
    ) -> SimulatedEvent | None:
        mapping = self.config.mapping
        username, user_id = _sender(payload)
        common = SimulatedEvent(
            type=event,
            action=action,
            payload=payload,
            provider=ProviderType.GENERIC.value,
            sender_username=username,
            sender_user_id=user_id,
        )
        if event in mapping.push:
            return self._push(payload, common)
        if event in mapping.pull_request:
            return _pull_request(payload, common)
        return None

    def _push(self, payload: Mapping[str, Any], common: SimulatedEvent) -> SimulatedEvent | None:
        ref = _first_text(self.config.paths.ref, payload)
        if ref is None or is_zero_sha(_first_text(self.config.paths.sha, payload)):
            return None
        tag = tag_name(ref)
        if tag is not None:
            return attrs.evolve(common, type="tag", target_branch=tag)
        return attrs.evolve(common, type="push", target_branch=strip_ref(ref))


def _pull_request(payload: Mapping[str, Any], common: SimulatedEvent) -> SimulatedEvent | None:
    pull_request = payload.get("pull_request")
    if isinstance(pull_request, Mapping):
        base_ref = text(dig(pull_request, "base", "ref"))
        head_ref = text(dig(pull_request, "head", "ref"))
        base_repo = text(dig(pull_request, "base", "repo", "full_name"))
        head_repo = text(dig(pull_request, "head", "repo", "full_name"))
        is_fork = head_repo is None or head_repo != base_repo
        action = text(payload.get("action"))
        action = "synchronize" if action == "synchronized" else action
    else:
        attributes = payload.get("object_attributes")
        if not isinstance(attributes, Mapping):
            return None
        base_ref = text(attributes.get("target_branch"))
        head_ref = text(attributes.get("source_branch"))
        source_project = identifier(attributes.get("source_project_id"))
        is_fork = source_project is None or source_project != identifier(attributes.get("target_project_id"))
        action = _merge_request_action(attributes)
    if base_ref is None:
        return None
    return attrs.evolve(
        common,
        type="pull_request",
        action=action if action is not None else common.action,
        target_branch=base_ref,
        source_branch=head_ref,
        base_branch=base_ref,
        is_fork_pr=is_fork,
    )


class UniversalGitUrls:
    """The :class:`~kici.domain.providers.RepoUrlBuilder` of a universal-git source."""

    def __init__(self, config: GitConfig) -> None:
        self.config = config

    def build_clone_url(self, repo: str) -> str:
        return clone_url(self.config, repo)

    def build_raw_file_url(self, repo: str, ref: str, path: str) -> str | None:
        """Plain git has no file URL scheme shared by every forge."""
        return None


__all__ = [
    "BASIC_USER",
    "DELIVERY_HEADERS",
    "PAT_USER",
    "PRESETS",
    "CredentialRef",
    "CredentialType",
    "EventMapping",
    "GitConfig",
    "GitPreset",
    "InvalidGitConfigError",
    "PayloadPaths",
    "UniversalGitNormalizer",
    "UniversalGitUrls",
    "changed_files",
    "check_url_template",
    "clone_url",
    "git_auth",
    "parse_git_config",
    "split_repo",
]
