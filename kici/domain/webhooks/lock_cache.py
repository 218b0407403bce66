"""The lock-file cache in front of every :class:`LockFileFetcher` (HOOK-11, 30 §3.1).

Every webhook needs the lock of its repository at its ref; fetching it is a provider API call or
a sparse clone. Entries are keyed ``{fetcher.provider}:{repo}:{ref}``, evicted least recently
used beyond ``max_entries`` and expire ``ttl_ms`` after they were stored (the clock is injected,
in milliseconds).

On a miss the fetcher runs and its outcome is sorted:

* ``None`` (no lock in the repository): returned, not cached;
* :class:`LockFileParseError` (the lock is there but unusable): re-raised, as a
  :class:`RepoLockFileParseError` naming repo and ref, never cached — the pipeline turns it into
  a visible ``lock_resolution`` failure run;
* any other exception (network, auth, timeout): transient, reported to ``on_transient_error``
  (the service logs it) and returned as ``None``, not cached, so the next delivery retries;
* a lock: re-validated (exact ``schemaVersion``, label-matcher shapes, regex ReDoS safety and
  the rest of ``validate_lock``), whatever the fetcher already checked — a failure is a parse
  error as above — and only then cached.

Choice where the spec is silent: only locks read at a full commit SHA are cached. A SHA names
one immutable tree, so its lock can never go stale and two providers serving the same commit
cannot disagree; a symbolic ref (``HEAD``, a branch, a tag) moves, and caching it for an hour
would run yesterday's workflows after a push. Those are fetched every time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from kici.domain.lockfile import LockFile, LockFileParseError, assert_valid_lock
from kici.domain.providers import Credentials, LockFileFetcher, RepoLockFileParseError
from kici.domain.webhooks.models import is_full_sha

DEFAULT_MAX_ENTRIES: Final = 500
DEFAULT_TTL_MS: Final = 3_600_000

Clock = Callable[[], float]
TransientErrorHook = Callable[[str, Exception], None]


def lock_cache_key(provider: str, repo: str, ref: str) -> str:
    return f"{provider}:{repo}:{ref}"


def _ignore(_key: str, _error: Exception) -> None:
    """Default transient-error hook: the caller chose not to observe them."""


class LockCache:
    """LRU + TTL of valid locks; see the module docstring."""

    def __init__(
        self,
        clock: Clock,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        ttl_ms: float = DEFAULT_TTL_MS,
        on_transient_error: TransientErrorHook = _ignore,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        if not ttl_ms > 0:
            raise ValueError(f"ttl_ms must be > 0, got {ttl_ms}")
        self._clock = clock
        self._max_entries = max_entries
        self._ttl_ms = ttl_ms
        self._on_transient_error = on_transient_error
        self._entries: OrderedDict[str, tuple[float, LockFile]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self) -> tuple[str, ...]:
        """Least recently used first."""
        return tuple(self._entries)

    def get(self, key: str) -> LockFile | None:
        """The live entry for ``key`` (now most recently used); an expired one is dropped."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored_at, lock = entry
        if self._clock() - stored_at >= self._ttl_ms:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return lock

    def put(self, key: str, lock: LockFile) -> None:
        self._entries[key] = (self._clock(), lock)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def invalidate(self, key: str) -> bool:
        return self._entries.pop(key, None) is not None

    def clear(self) -> None:
        self._entries.clear()

    async def fetch(
        self, fetcher: LockFileFetcher, repo: str, ref: str, creds: Credentials
    ) -> LockFile | None:
        """The lock of ``repo`` at ``ref`` through the cache; raises only :class:`LockFileParseError`."""
        key = lock_cache_key(fetcher.provider, repo, ref)
        cacheable = is_full_sha(ref)
        if cacheable:
            cached = self.get(key)
            if cached is not None:
                self.hits += 1
                return cached
        self.misses += 1
        try:
            lock = await fetcher.fetch_lock_file(repo, ref, creds)
            if lock is not None:
                assert_valid_lock(lock)
        except RepoLockFileParseError:
            raise
        except LockFileParseError as exc:
            raise RepoLockFileParseError(repo, ref, exc) from exc
        except Exception as exc:
            self._on_transient_error(key, exc)
            return None
        if lock is not None and cacheable:
            self.put(key, lock)
        return lock


__all__ = ["DEFAULT_MAX_ENTRIES", "DEFAULT_TTL_MS", "LockCache", "lock_cache_key"]
