"""Configured sources -> provider bundles, the registry, and what verifies each source's webhooks.

Built from ``config.sources`` at start and again after every SIGHUP that changed them; the
:class:`SourceBook` is immutable and swapped whole, so a webhook in flight keeps the book it started
with. Secrets are read when a webhook is verified, never cached: a secret file replaced on disk or a
rotated credential takes effect on the next delivery without a reload.

Bundles per provider (30 §1):

* ``local``: normalizer, lock fetch from ``repoBasePath``, clone URLs (:mod:`kici.adapters.providers.local`);
* ``universal-git``: normalizer, sparse-clone lock fetch, changed files, clone credentials, URLs;
  its ``credentialRef`` reads ``store: env`` (the variable named by ``key``) or ``store: file``;
* ``generic``: the normalizer only (a generic event has no repository);
* ``github``: normalizer, contents-API lock fetch, PR/compare changed files, installation-token clone
  credentials, URLs and collaborator permissions (:mod:`kici.adapters.providers.github`), signed with
  the key in ``privateKeyFile``; without a key file only the normalizer (deliveries verify and log,
  lock lookups report ``lockfile_missing``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import structlog
import trio

from kici.adapters.providers.github import (
    DEFAULT_API_BASE_URL,
    GitHubApp,
    HttpxClient,
    github_bundle,
    key_file_loader,
)
from kici.adapters.providers.local import local_bundle
from kici.adapters.providers.universal_git import SecretReader, universal_git_bundle
from kici.domain import protocol
from kici.domain.config.sources import SecretKind, SecretRef, SourceConfig, SourceProvider
from kici.domain.providers import GitAuth, GitAuthKind, ProviderBundle, ProviderRegistry, resolve_git_auth
from kici.domain.store import RunRecord
from kici.domain.webhooks.models import DEFAULT_ORG_ID, InvalidRoutingKeyError, parse_routing_key
from kici.domain.webhooks.normalizers.generic import GenericNormalizer
from kici.domain.webhooks.normalizers.github import GithubNormalizer
from kici.domain.webhooks.normalizers.local import LocalConfig
from kici.domain.webhooks.normalizers.universal_git import CredentialRef
from kici.domain.webhooks.verification import (
    GenericSourceVerification,
    GithubSourceSecrets,
    InboundSource,
    VerificationMethod,
)
from kici.services.orchestrator.dispatcher import DispatchSource

_log = structlog.get_logger(__name__)


class SecretReadError(Exception):
    """A referenced secret could not be read; the message names the reference, never a value."""


async def read_secret(ref: SecretRef, environ: Mapping[str, str]) -> str:
    """The secret a reference points at; a file's trailing newline is dropped (``echo x > file``)."""
    if ref.kind is SecretKind.VALUE:
        return ref.ref
    if ref.kind is SecretKind.ENV:
        value = environ.get(ref.ref)
        if not value:
            raise SecretReadError(f"environment variable {ref.ref} is not set")
        return value
    try:
        text = await trio.Path(ref.ref).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretReadError(f"cannot read secret file {ref.ref}: {type(exc).__name__}") from exc
    value = text.rstrip("\r\n")
    if not value:
        raise SecretReadError(f"secret file {ref.ref} is empty")
    return value


def credential_reader(environ: Mapping[str, str]) -> SecretReader:
    """Universal-git clone credentials from ``store: env`` / ``store: file`` (``None`` when absent)."""

    async def read(reference: CredentialRef) -> str | None:
        kind = SecretKind.ENV if reference.store == "env" else SecretKind.FILE
        try:
            return await read_secret(SecretRef(kind, reference.key), environ)
        except SecretReadError as exc:
            _log.warning("clone credential unavailable", reason=str(exc))
            return None

    return read


def bundle_for(source: SourceConfig, environ: Mapping[str, str]) -> ProviderBundle:
    if source.provider is SourceProvider.LOCAL and source.repo_base_path is not None:
        return local_bundle(LocalConfig(source.repo_base_path, source.clone_url_base))
    if source.provider is SourceProvider.UNIVERSAL_GIT and source.git is not None:
        return universal_git_bundle(source.generic_source(), source.git, credential_reader(environ))
    if source.provider is SourceProvider.GITHUB:
        if source.app_id is None or source.private_key_file is None:
            return ProviderBundle(normalizer=GithubNormalizer())
        app = GitHubApp(
            source.app_id,
            key_file_loader(source.private_key_file),
            HttpxClient(),
            api_base_url=source.api_base_url or DEFAULT_API_BASE_URL,
            web_base_url=source.web_base_url,
        )
        return github_bundle(app)
    return ProviderBundle(normalizer=GenericNormalizer(source.generic_source()))


def org_of(routing_key: str) -> str:
    """The org a routing key belongs to (``generic:<org>:…``), else ``__default__``."""
    try:
        return parse_routing_key(routing_key).org_id or DEFAULT_ORG_ID
    except InvalidRoutingKeyError:
        return DEFAULT_ORG_ID


@attrs.frozen
class SourceBook:
    """The sources of one config generation and their registry."""

    sources: tuple[SourceConfig, ...]
    registry: ProviderRegistry = attrs.field(eq=False)
    environ: Mapping[str, str] = attrs.field(eq=False, repr=False, factory=dict)

    def find(self, provider: str, key: str) -> SourceConfig | None:
        """The source a webhook URL names: by routing key, else by source name; provider must agree."""
        match = next((s for s in self.sources if s.routing_key == key), None)
        match = match or next((s for s in self.sources if s.name == key), None)
        if match is None or match.provider.value != provider:
            return None
        return match

    def by_routing_key(self, key: str) -> SourceConfig | None:
        return next((s for s in self.sources if s.routing_key == key), None)

    async def inbound(self, source: SourceConfig) -> list[InboundSource]:
        """What :func:`verify_inbound` checks for ``source``: one entry per active secret for a generic
        method (each carries one secret; any accepting one verifies), or the GitHub secrets bundle.

        Raises :class:`SecretReadError` for a generic source none of whose secrets could be read (a
        GitHub source reports it inside its bundle, as ``read_failed``)."""
        secrets: list[str] = []
        failed = False
        for ref in source.secrets:
            try:
                secrets.append(await read_secret(ref, self.environ))
            except SecretReadError as exc:
                failed = True
                _log.error("webhook secret unreadable", source=source.name, reason=str(exc))
        if source.is_github:
            return [GithubSourceSecrets(tuple(secrets), read_failed=failed and not secrets)]
        if failed and not secrets:
            raise SecretReadError(f"no webhook secret of source {source.name} could be read")
        return [
            GenericSourceVerification(source.verification, cfg) for cfg in _method_configs(source, secrets)
        ]


def _method_configs(source: SourceConfig, secrets: list[str]) -> list[dict[str, Any] | None]:
    method = source.verification
    header = source.signature_header
    if method == VerificationMethod.HMAC_SHA256.value:
        return [{"secret": s, "headerName": header} for s in secrets] or [{}]
    if method == VerificationMethod.BEARER_TOKEN.value:
        return [{"token": s, "headerName": header} for s in secrets] or [{}]
    if method == VerificationMethod.IP_ALLOWLIST.value:
        return [{"allowlist": list(source.allowlist)}]
    return [None]


class RegistryDispatchSources:
    """The dispatcher's :class:`DispatchSourceResolver`: clone URL and credentials from the run's source.

    A run whose routing key has no bundle (an API submission without a source) clones its
    ``repo_identifier`` as given. Credentials are issued per dispatch, so a rotated secret applies
    at once; a provider that cannot issue one leaves the clone anonymous (public repositories).
    """

    def __init__(self, book: Callable[[], SourceBook]) -> None:
        self._book = book

    async def resolve(self, run: RunRecord) -> DispatchSource:
        repo = run.repo_identifier or ""
        bundle = self._book().registry.get_by_routing_key(run.routing_key) if run.routing_key else None
        if bundle is None or bundle.repo_url_builder is None:
            return DispatchSource(repo_url=repo)
        try:
            url = bundle.repo_url_builder.build_clone_url(repo)
        except ValueError:
            return DispatchSource(repo_url=repo)
        if bundle.clone_token_provider is None:
            return DispatchSource(repo_url=url)
        auth = await resolve_git_auth(bundle.clone_token_provider, repo, {})
        if auth is None:
            return DispatchSource(repo_url=url)
        wire = wire_git_auth(auth)
        token = auth.secret if auth.kind is GitAuthKind.BASIC else None
        return DispatchSource(repo_url=url, token=token, source_auth=wire)


def wire_git_auth(auth: GitAuth) -> protocol.GitAuth:
    """The provider's clone credential as the ``job.dispatch`` message carries it."""
    return protocol.GitAuth(
        kind=protocol.GitAuthKind(auth.kind.value),
        user=auth.user,
        secret=auth.secret,
        ssh_host_key_policy=(
            protocol.SshHostKeyPolicy(auth.ssh_host_key_policy.value) if auth.ssh_host_key_policy else None
        ),
        ssh_known_hosts_pem=auth.ssh_known_hosts_pem,
    )


def build_source_book(
    sources: tuple[SourceConfig, ...], environ: Mapping[str, str] | None = None
) -> SourceBook:
    """Bundles for every enabled source, registered under its routing key."""
    env = dict(os.environ if environ is None else environ)
    registry = ProviderRegistry()
    for source in sources:
        if source.enabled:
            registry.register(source.routing_key, bundle_for(source, env))
    return SourceBook(sources, registry, env)


__all__ = [
    "RegistryDispatchSources",
    "SecretReadError",
    "SourceBook",
    "build_source_book",
    "bundle_for",
    "credential_reader",
    "org_of",
    "read_secret",
]
