"""Provider ports (30 §1, HOOK-01) and the registry that picks a provider bundle by routing key.

A *provider* is where repositories live: GitHub, any git forge (universal-git), a local
directory. The orchestrator never clones; it talks to a provider through these ports only:

* :class:`WebhookNormalizer` turns a provider's webhook into a :class:`SimulatedEvent` (pure);
* :class:`LockFileFetcher` reads ``.kici/kici.lock.json`` at a ref: ``None`` means absent, a
  :class:`LockFileParseError` means present but unusable (a visible failed run), any other
  exception is transient (treated as absent for this delivery, retried by the next one);
* :class:`ChangedFilesFetcher`, :class:`CloneTokenProvider` (+ optional :class:`GitAuthIssuer`),
  :class:`RepoUrlBuilder`, :class:`ContributorResolver`, :class:`CheckStatusPoster`.

A :class:`ProviderBundle` groups one provider's implementations; a missing capability means the
pipeline skips that step. The :class:`ProviderRegistry` maps routing keys to bundles and is
rebuilt from the source tables at start, on source changes and on SIGHUP.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final, Literal, Protocol, runtime_checkable

import attrs

from kici.domain.events import SimulatedEvent
from kici.domain.lockfile import LockFile, LockFileParseError
from kici.domain.webhooks.models import ProviderType, routing_key_type

Credentials = Mapping[str, Any]
"""Opaque provider context passed back to the provider's own ports (``{installationId}`` for GitHub)."""

DEFAULT_TOKEN_USER: Final = "x-access-token"


class GitAuthKind(StrEnum):
    BASIC = "basic"
    SSH = "ssh"


class SshHostKeyPolicy(StrEnum):
    ACCEPT_NEW = "accept-new"
    PINNED = "pinned"


class InvalidGitAuthError(ValueError):
    """A :class:`GitAuth` that no git client could use."""


@attrs.frozen(kw_only=True)
class GitAuth:
    """How the agent authenticates its clone: ``secret`` is a token or password (basic) or a key (ssh)."""

    kind: GitAuthKind
    secret: str = attrs.field(repr=False)
    user: str | None = None
    ssh_host_key_policy: SshHostKeyPolicy | None = None
    ssh_known_hosts_pem: str | None = attrs.field(default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        if not self.secret:
            raise InvalidGitAuthError("git auth needs a non-empty secret")
        if self.kind is GitAuthKind.BASIC and not self.user:
            raise InvalidGitAuthError("basic git auth needs a user")
        pinned = self.kind is GitAuthKind.SSH and self.ssh_host_key_policy is SshHostKeyPolicy.PINNED
        if pinned and not self.ssh_known_hosts_pem:
            raise InvalidGitAuthError("pinned SSH host keys need ssh_known_hosts_pem")


def token_git_auth(token: str) -> GitAuth:
    """The auth synthesized from a plain clone token: HTTP Basic as ``x-access-token``."""
    return GitAuth(kind=GitAuthKind.BASIC, user=DEFAULT_TOKEN_USER, secret=token)


class RepoLockFileParseError(LockFileParseError):
    """A :class:`LockFileParseError` that names the repository and ref it was read from.

    The pipeline turns it into the ``lock_resolution`` init-failure run; the message keeps the
    original one (with its fix hint) behind a ``repo@ref:`` prefix.
    """

    def __init__(self, repo: str, ref: str, error: LockFileParseError) -> None:
        super().__init__(error.path, error.problem)
        self.args = (f"{repo}@{ref}: {error}",)
        self.repo = repo
        self.ref = ref


class LockFileTooLargeError(LockFileParseError):
    """The lock is over the size limit and was not read: an unusable lock, reported like a corrupt one."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__("", f"the file is {size} bytes, over the {limit}-byte limit for lock files")
        self.size = size
        self.limit = limit


class WebhookNormalizer(Protocol):
    """Pure: headers are lower-cased; ``None`` from :meth:`normalize_event` means "not matchable"."""

    @property
    def provider(self) -> ProviderType: ...

    def extract_routing_key(self, headers: Mapping[str, str], payload: Mapping[str, Any]) -> str | None: ...

    def extract_delivery_id(self, headers: Mapping[str, str]) -> str | None: ...

    def extract_event_type(self, headers: Mapping[str, str]) -> str | None: ...

    def verify_signature(self, body: bytes, headers: Mapping[str, str], secret: str | bytes) -> bool: ...

    def normalize_event(
        self, event: str, action: str | None, payload: Mapping[str, Any]
    ) -> SimulatedEvent | None: ...

    def extract_repo_identifier(self, payload: Mapping[str, Any]) -> str | None: ...

    def extract_ref(self, event: str, payload: Mapping[str, Any]) -> str:
        """The commit to read the lock at; ``"HEAD"`` when the event names none."""
        ...

    def extract_credentials(self, payload: Mapping[str, Any]) -> Credentials: ...

    def extract_default_branch(self, payload: Mapping[str, Any]) -> str | None: ...


class LockFileFetcher(Protocol):
    """``provider`` namespaces the lock cache key ``{provider}:{repo}:{ref}``."""

    @property
    def provider(self) -> str: ...

    async def fetch_lock_file(self, repo: str, ref: str, creds: Credentials) -> LockFile | None: ...


class ChangedFilesFetcher(Protocol):
    async def get_changed_files(
        self, repo: str, event: SimulatedEvent, payload: Mapping[str, Any], creds: Credentials
    ) -> list[str]: ...


class CloneTokenProvider(Protocol):
    async def create_clone_token(self, repo: str, creds: Credentials) -> str | None: ...


@runtime_checkable
class GitAuthIssuer(Protocol):
    """Optional companion of :class:`CloneTokenProvider` for credentials that are not a token (SSH, basic)."""

    async def issue_git_auth(self, repo: str, creds: Credentials) -> GitAuth | None: ...


async def resolve_git_auth(provider: CloneTokenProvider, repo: str, creds: Credentials) -> GitAuth | None:
    """The provider's own :class:`GitAuth` if it issues one, else one synthesized from its token (HOOK-22)."""
    if isinstance(provider, GitAuthIssuer):
        return await provider.issue_git_auth(repo, creds)
    token = await provider.create_clone_token(repo, creds)
    return token_git_auth(token) if token else None


class RepoUrlBuilder(Protocol):
    def build_clone_url(self, repo: str) -> str: ...

    def build_raw_file_url(self, repo: str, ref: str, path: str) -> str | None:
        """A browsable URL of one file, or ``None`` where the provider has no such URL (plain git)."""
        ...


Permission = Literal["admin", "write", "read", "none"]


@attrs.frozen
class Contributor:
    username: str
    permission: Permission
    is_fork_pr: bool


class ContributorResolver(Protocol):
    async def resolve_contributor(self, repo: str, user: str, creds: Credentials) -> Contributor: ...


CheckState = Literal["pending", "success", "failure", "neutral"]


class CheckStatusPoster(Protocol):
    async def post_check_status(
        self, repo: str, sha: str, state: CheckState, *, title: str, summary: str, creds: Credentials
    ) -> None: ...


@attrs.frozen(kw_only=True)
class ProviderBundle:
    """One provider's ports; ``None`` = capability absent, the pipeline step is skipped."""

    normalizer: WebhookNormalizer
    lock_file_fetcher: LockFileFetcher | None = None
    changed_files_fetcher: ChangedFilesFetcher | None = None
    clone_token_provider: CloneTokenProvider | None = None
    repo_url_builder: RepoUrlBuilder | None = None
    contributor_resolver: ContributorResolver | None = None
    check_status_poster: CheckStatusPoster | None = None


class ProviderRegistry:
    """Routing key -> bundle, with the fallbacks of 30 §1.

    Lookup order: the exact key; else ``<type>:default``; else the first key registered (in
    registration order) that starts with ``<type>:``. The last fallback lets a single configured
    GitHub App serve deliveries whose App id changed, instead of dropping them.
    """

    def __init__(self) -> None:
        self._bundles: dict[str, ProviderBundle] = {}

    def register(self, routing_key: str, bundle: ProviderBundle) -> None:
        """Add or replace; a replaced key keeps its place in the registration order."""
        self._bundles[routing_key] = bundle

    def unregister(self, routing_key: str) -> bool:
        return self._bundles.pop(routing_key, None) is not None

    def clear(self) -> None:
        self._bundles.clear()

    def keys(self) -> tuple[str, ...]:
        return tuple(self._bundles)

    def __len__(self) -> int:
        return len(self._bundles)

    def __contains__(self, routing_key: object) -> bool:
        return routing_key in self._bundles

    def get(self, routing_key: str) -> ProviderBundle | None:
        """Exact lookup only."""
        return self._bundles.get(routing_key)

    def get_by_routing_key(self, routing_key: str) -> ProviderBundle | None:
        exact = self._bundles.get(routing_key)
        if exact is not None:
            return exact
        kind = routing_key_type(routing_key)
        fallback = self._bundles.get(f"{kind}:default")
        if fallback is not None:
            return fallback
        prefix = f"{kind}:"
        return next((b for k, b in self._bundles.items() if k.startswith(prefix)), None)


__all__ = [
    "DEFAULT_TOKEN_USER",
    "ChangedFilesFetcher",
    "CheckState",
    "CheckStatusPoster",
    "CloneTokenProvider",
    "Contributor",
    "ContributorResolver",
    "Credentials",
    "GitAuth",
    "GitAuthIssuer",
    "GitAuthKind",
    "InvalidGitAuthError",
    "LockFileFetcher",
    "LockFileTooLargeError",
    "Permission",
    "ProviderBundle",
    "ProviderRegistry",
    "RepoLockFileParseError",
    "RepoUrlBuilder",
    "SshHostKeyPolicy",
    "WebhookNormalizer",
    "resolve_git_auth",
    "token_git_auth",
]
