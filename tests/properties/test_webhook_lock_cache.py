"""The lock-file cache against a reference model (HOOK-11), 30 §3.1.

The cache's coroutine is driven without an event loop: the fake fetcher never suspends, so one
``send(None)`` runs it to completion.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.lockfile import LockFile, LockFileParseError
from kici.domain.providers import Credentials, RepoLockFileParseError
from kici.domain.webhooks.lock_cache import LockCache, lock_cache_key

pytestmark = pytest.mark.feature("HOOK-11")

REPOS = ("acme/app", "acme/api")
REFS = ("a" * 40, "b" * 40, "c" * 64, "HEAD", "main")
OUTCOMES = ("lock", "absent", "corrupt", "transient")


def drive(coroutine: Coroutine[Any, Any, Any]) -> Any:
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the fake fetcher never suspends")


class ScriptedFetcher:
    """Answers each fetch with the outcome the test scripted for it."""

    def __init__(self, provider: str = "fake") -> None:
        self.provider = provider
        self.outcome = "lock"
        self.calls: list[tuple[str, str]] = []
        self.served = 0

    async def fetch_lock_file(self, repo: str, ref: str, creds: Credentials) -> LockFile | None:
        self.calls.append((repo, ref))
        if self.outcome == "absent":
            return None
        if self.outcome == "corrupt":
            raise LockFileParseError("", "not valid JSON")
        if self.outcome == "transient":
            raise ConnectionError("provider unreachable")
        self.served += 1
        return LockFile(content_hash=f"{self.served:064x}")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


operations = st.lists(
    st.one_of(
        st.tuples(st.just("fetch"), st.sampled_from(REPOS), st.sampled_from(REFS), st.sampled_from(OUTCOMES)),
        st.tuples(st.just("tick"), st.integers(min_value=0, max_value=700)),
    ),
    max_size=40,
)


@given(operations, st.integers(min_value=1, max_value=4), st.integers(min_value=1, max_value=1_000))
def test_cache_agrees_with_a_reference_lru_ttl_model(ops: list[Any], max_entries: int, ttl: int) -> None:
    clock, fetcher, transient = Clock(), ScriptedFetcher(), []
    cache = LockCache(
        clock, max_entries=max_entries, ttl_ms=ttl, on_transient_error=lambda k, e: transient.append(k)
    )
    model: dict[str, tuple[float, LockFile]] = {}  # insertion order = recency, oldest first
    for op in ops:
        if op[0] == "tick":
            clock.now += op[1]
            continue
        _, repo, ref, outcome = op
        key = lock_cache_key("fake", repo, ref)
        fetcher.outcome = outcome
        calls_before, transient_before = len(fetcher.calls), len(transient)
        live = key in model and clock.now - model[key][0] < ttl
        if key in model and not live:
            del model[key]
        if live:
            expected = model.pop(key)
            model[key] = expected
            assert drive(cache.fetch(fetcher, repo, ref, {})) is expected[1]
            assert len(fetcher.calls) == calls_before
            continue
        if outcome == "corrupt":
            with pytest.raises(RepoLockFileParseError) as caught:
                drive(cache.fetch(fetcher, repo, ref, {}))
            assert (caught.value.repo, caught.value.ref) == (repo, ref)
        else:
            got = drive(cache.fetch(fetcher, repo, ref, {}))
            if outcome == "lock":
                assert got is not None
                if len(ref) in (40, 64):
                    model[key] = (clock.now, got)
                    while len(model) > max_entries:
                        del model[next(iter(model))]
            else:
                assert got is None
        assert len(fetcher.calls) == calls_before + 1
        assert transient[transient_before:] == ([key] if outcome == "transient" else [])
    live_keys = [k for k, (at, _) in model.items() if clock.now - at < ttl]
    snapshot = cache.keys()
    assert [k for k in snapshot if cache.get(k) is not None] == live_keys
    assert len(cache) <= max_entries


@given(st.sampled_from(REPOS), st.sampled_from(REFS), st.sampled_from(["github", "generic", "local"]))
def test_keys_are_provider_repo_ref(repo: str, ref: str, provider: str) -> None:
    cache = LockCache(Clock())
    fetcher = ScriptedFetcher(provider)
    drive(cache.fetch(fetcher, repo, ref, {}))
    expected = (f"{provider}:{repo}:{ref}",) if len(ref) in (40, 64) else ()
    assert cache.keys() == expected


@given(st.sampled_from(REFS), st.sampled_from(["absent", "corrupt", "transient"]))
def test_only_valid_locks_are_ever_cached(ref: str, outcome: str) -> None:
    cache, fetcher = LockCache(Clock()), ScriptedFetcher()
    fetcher.outcome = outcome
    try:
        drive(cache.fetch(fetcher, "acme/app", ref, {}))
    except LockFileParseError:
        assert outcome == "corrupt"
    assert len(cache) == 0
    assert cache.misses == 1
