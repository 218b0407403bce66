"""Webhook sources of an independent orchestrator: the ``sources:`` section of its YAML (HOOK-01).

An orchestrator without a Platform receives webhooks itself, so it must know each sender: which
provider normalizes its payloads, which routing key names it, which secrets verify its signature and
where its repositories' lock files come from. One :class:`SourceConfig` per entry of ``sources:``;
:mod:`kici.domain.config.source_checks` reads and validates the YAML into these models.

Secrets are *references*, never read here (reading a file or the environment is I/O): a literal
value, the name of an environment variable, or an absolute file path. Several may be given at once,
which is how a webhook secret is rotated (the current and the next one both verify).

Choices where the spec is silent:

* ``routingKey`` defaults to ``github:<appId>`` for a GitHub App and to ``generic:__default__:<name>``
  for the other providers (one organisation in independent mode).
* Non-GitHub sources verify with ``hmac_sha256`` when a secret is given and ``none`` otherwise; the
  signature header follows the forge (``x-gitea-signature``, ``x-gogs-signature``,
  ``x-hub-signature-256``; GitLab sends its token verbatim in ``x-gitlab-token``, checked as a bearer
  token), ``x-signature-256`` for generic and local senders.
* Body limits: 25 MiB for GitHub (what GitHub itself caps deliveries at), the generic default of
  1 MiB (at most the 10 MiB direct-ingress ceiling) for every other provider.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

import attrs

from kici.domain.webhooks.models import DEFAULT_ORG_ID, parse_routing_key
from kici.domain.webhooks.normalizers.universal_git import GitConfig, GitPreset
from kici.domain.webhooks.sources import DEFAULT_MAX_PAYLOAD_BYTES, GenericSource, SourceKind
from kici.domain.webhooks.verification import (
    DEFAULT_BEARER_HEADER,
    DEFAULT_HMAC_HEADER,
    GITHUB_SIGNATURE_HEADER,
    VerificationMethod,
)

GITHUB_MAX_PAYLOAD_BYTES: Final = 25 * 1024 * 1024
DIRECT_MAX_PAYLOAD_BYTES: Final = 10 * 1024 * 1024


class SourceProvider(StrEnum):
    GITHUB = "github"
    GENERIC = "generic"
    UNIVERSAL_GIT = "universal-git"
    LOCAL = "local"


class SecretKind(StrEnum):
    VALUE = "value"
    ENV = "env"
    FILE = "file"


@attrs.frozen
class SecretRef:
    """Where a secret lives: the value itself, an environment variable name, or an absolute file path."""

    kind: SecretKind
    ref: str = attrs.field(repr=False)

    def __repr__(self) -> str:
        shown = "***" if self.kind is SecretKind.VALUE else self.ref
        return f"SecretRef({self.kind.value}, {shown})"


_SIGNATURE_HEADERS: Final = {
    GitPreset.FORGEJO: "x-gitea-signature",
    GitPreset.GITEA: "x-gitea-signature",
    GitPreset.GOGS: "x-gogs-signature",
    GitPreset.GITHUB_REPO: GITHUB_SIGNATURE_HEADER,
    GitPreset.GITLAB_REPO: "x-gitlab-token",
    GitPreset.CUSTOM: DEFAULT_HMAC_HEADER,
}


def default_verification(provider: SourceProvider, git: GitConfig | None, has_secret: bool) -> str:
    """The method a source uses when it names none (see the module docstring)."""
    if not has_secret:
        return VerificationMethod.NONE.value
    if git is not None and git.preset is GitPreset.GITLAB_REPO:
        return VerificationMethod.BEARER_TOKEN.value
    return VerificationMethod.HMAC_SHA256.value


def default_signature_header(method: str, git: GitConfig | None) -> str:
    if git is not None:
        return _SIGNATURE_HEADERS[git.preset]
    if method == VerificationMethod.BEARER_TOKEN.value:
        return DEFAULT_BEARER_HEADER
    return DEFAULT_HMAC_HEADER


def default_routing_key(provider: SourceProvider, name: str, app_id: str | None) -> str:
    if provider is SourceProvider.GITHUB:
        return f"github:{app_id}"
    return f"generic:{DEFAULT_ORG_ID}:{name}"


def _lower_tuple(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(v.lower() for v in values)


@attrs.frozen(kw_only=True)
class SourceConfig:
    """One configured webhook source; provider-specific fields are ``None`` for other providers."""

    name: str
    provider: SourceProvider
    routing_key: str
    secrets: tuple[SecretRef, ...] = ()
    enabled: bool = True
    verification: str = VerificationMethod.NONE.value
    signature_header: str | None = None
    allowlist: tuple[str, ...] = ()
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    allowed_events: tuple[str, ...] = ()
    event_type_header: str | None = None
    event_type_path: str | None = None
    repo_base_path: str | None = None
    clone_url_base: str | None = None
    git: GitConfig | None = None
    app_id: str | None = None
    private_key_file: str | None = None
    api_base_url: str | None = None
    web_base_url: str | None = None
    stripped_headers: tuple[str, ...] = attrs.field(default=(), converter=_lower_tuple)

    @property
    def is_github(self) -> bool:
        return self.provider is SourceProvider.GITHUB

    def generic_source(self) -> GenericSource:
        """The webhook domain's view of a non-GitHub source (ingress rules, normalizers)."""
        key = parse_routing_key(self.routing_key)
        kind = {
            SourceProvider.UNIVERSAL_GIT: SourceKind.UNIVERSAL_GIT,
            SourceProvider.LOCAL: SourceKind.LOCAL,
        }.get(self.provider, SourceKind.GENERIC)
        source = GenericSource(
            org_id=key.org_id or DEFAULT_ORG_ID,
            source_id=key.source_id or self.name,
            name=self.name,
            kind=kind,
            enabled=self.enabled,
            verification_method=self.verification,
            max_payload_bytes=self.max_payload_bytes,
            allowed_events=self.allowed_events,
            event_type_header=self.event_type_header,
            event_type_path=self.event_type_path,
        )
        if self.stripped_headers:
            source = attrs.evolve(source, stripped_headers=self.stripped_headers)
        return source


__all__ = [
    "DIRECT_MAX_PAYLOAD_BYTES",
    "GITHUB_MAX_PAYLOAD_BYTES",
    "SecretKind",
    "SecretRef",
    "SourceConfig",
    "SourceProvider",
    "default_routing_key",
    "default_signature_header",
    "default_verification",
]
