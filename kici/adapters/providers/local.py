"""The local-file provider's lock fetcher and bundle (HOOK-10).

The lock is read from the working tree ``<repoBasePath>/<repo>/.kici/kici.lock.json`` whatever
the ref: a local source is a directory the operator keeps checked out, and the push that
triggered the webhook has just updated it. A repository identifier that could leave
``repoBasePath`` (``..``, an absolute path) is refused.
"""

from __future__ import annotations

import trio

from kici.adapters.providers.lock_files import read_lock_in
from kici.domain.lockfile import LockFile
from kici.domain.providers import Credentials, ProviderBundle
from kici.domain.webhooks.models import ProviderType
from kici.domain.webhooks.normalizers.local import LocalConfig, LocalNormalizer, LocalUrls
from kici.domain.webhooks.payload import require_safe_repo


class LocalLockFileFetcher:
    """:class:`~kici.domain.providers.LockFileFetcher` over ``repoBasePath``."""

    def __init__(self, config: LocalConfig) -> None:
        self.config = config

    @property
    def provider(self) -> str:
        return ProviderType.LOCAL.value

    async def fetch_lock_file(self, repo: str, ref: str, creds: Credentials) -> LockFile | None:
        checkout = trio.Path(self.config.repo_base_path) / require_safe_repo(repo)
        return await read_lock_in(checkout, repo, ref)


def local_bundle(config: LocalConfig) -> ProviderBundle:
    """Normalizer, lock fetch and clone URLs; a local source has no changed-files or token port."""
    return ProviderBundle(
        normalizer=LocalNormalizer(),
        lock_file_fetcher=LocalLockFileFetcher(config),
        repo_url_builder=LocalUrls(config),
    )


__all__ = ["LocalLockFileFetcher", "local_bundle"]
