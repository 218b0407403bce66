"""Lock cache examples (HOOK-11) and the changed-files rule (HOOK-13), 30 §3.1 and §3 phase H."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import pytest

from kici.domain.events import SimulatedEvent
from kici.domain.lockfile import (
    LockBranchPattern,
    LockFile,
    LockFileParseError,
    LockJob,
    LockSchemaVersionError,
    LockSource,
    LockWorkflow,
    PrTrigger,
    PushTrigger,
    RegexLabelMatcher,
    TagTrigger,
)
from kici.domain.providers import Credentials, RepoLockFileParseError
from kici.domain.webhooks.changed_files import changed_files_needed
from kici.domain.webhooks.lock_cache import LockCache

SHA = "d" * 40
HASH = "ab" * 32
SOURCE = LockSource(file=".kici/workflows/ci.py", export="#ci")


def drive(coroutine: Coroutine[Any, Any, Any]) -> Any:
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("suspended")


class Fetcher:
    provider = "fake"

    def __init__(self, answer: LockFile | BaseException | None) -> None:
        self.answer = answer
        self.calls = 0

    async def fetch_lock_file(self, repo: str, ref: str, creds: Credentials) -> LockFile | None:
        self.calls += 1
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def workflow(*triggers: Any, name: str = "ci", runs_on: Any = None) -> LockWorkflow:
    jobs = () if runs_on is None else (LockJob(name="b", runs_on=runs_on, runs_on_pick="deterministic"),)
    return LockWorkflow(name=name, source=SOURCE, content_hash=HASH, triggers=triggers, jobs=jobs)


VALID = LockFile(content_hash=HASH, workflows=(workflow(PushTrigger()),))


@pytest.mark.feature("HOOK-11")
def test_a_fetched_lock_is_revalidated_and_an_unsafe_regex_becomes_a_parse_error() -> None:
    unsafe = LockFile(
        content_hash=HASH,
        workflows=(workflow(PushTrigger(), runs_on=(RegexLabelMatcher(source="(a+)+$", flags=""),)),),
    )
    cache = LockCache(Clock())
    with pytest.raises(RepoLockFileParseError) as caught:
        drive(cache.fetch(Fetcher(unsafe), "acme/app", SHA, {}))
    assert "ReDoS" in str(caught.value)
    assert str(caught.value).startswith(f"acme/app@{SHA}: ")
    assert len(cache) == 0


@pytest.mark.feature("HOOK-11")
def test_parse_errors_keep_their_type_and_message() -> None:
    cache = LockCache(Clock())
    with pytest.raises(RepoLockFileParseError) as caught:
        drive(cache.fetch(Fetcher(LockSchemaVersionError(2, 1)), "acme/app", "HEAD", {}))
    assert "schemaVersion 2 is incompatible" in str(caught.value)
    located = RepoLockFileParseError("acme/app", "HEAD", LockFileParseError("", "bad"))
    with pytest.raises(RepoLockFileParseError) as again:
        drive(cache.fetch(Fetcher(located), "acme/app", "HEAD", {}))
    assert again.value is located


@pytest.mark.feature("HOOK-11")
def test_transient_errors_are_reported_and_read_as_absent() -> None:
    seen: list[tuple[str, Exception]] = []
    cache = LockCache(Clock(), on_transient_error=lambda key, error: seen.append((key, error)))
    error = TimeoutError("slow provider")
    assert drive(cache.fetch(Fetcher(error), "acme/app", SHA, {})) is None
    assert seen == [(f"fake:acme/app:{SHA}", error)]
    assert drive(LockCache(Clock()).fetch(Fetcher(error), "acme/app", SHA, {})) is None


@pytest.mark.feature("HOOK-11")
def test_hits_ttl_boundary_and_maintenance() -> None:
    clock = Clock()
    cache = LockCache(clock, max_entries=2, ttl_ms=100)
    fetcher = Fetcher(VALID)
    assert drive(cache.fetch(fetcher, "acme/app", SHA, {})) is VALID
    clock.now = 99
    assert drive(cache.fetch(fetcher, "acme/app", SHA, {})) is VALID
    assert (fetcher.calls, cache.hits, cache.misses) == (1, 1, 1)
    clock.now = 100
    assert cache.get(f"fake:acme/app:{SHA}") is None
    drive(cache.fetch(fetcher, "acme/app", SHA, {}))
    assert fetcher.calls == 2
    assert cache.invalidate(f"fake:acme/app:{SHA}")
    assert not cache.invalidate(f"fake:acme/app:{SHA}")
    cache.put("k1", VALID)
    cache.put("k2", VALID)
    cache.get("k1")
    cache.put("k3", VALID)
    assert cache.keys() == ("k1", "k3")
    assert "k2" not in cache
    cache.clear()
    assert len(cache) == 0


@pytest.mark.feature("HOOK-11")
def test_symbolic_refs_are_fetched_every_time() -> None:
    cache, fetcher = LockCache(Clock()), Fetcher(VALID)
    for _ in range(3):
        drive(cache.fetch(fetcher, "acme/app", "main", {}))
    assert (fetcher.calls, len(cache)) == (3, 0)


@pytest.mark.feature("HOOK-11")
@pytest.mark.parametrize(("max_entries", "ttl"), [(0, 1), (1, 0), (1, -5)])
def test_impossible_settings(max_entries: int, ttl: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        LockCache(Clock(), max_entries=max_entries, ttl_ms=ttl)


PUSH = SimulatedEvent(type="push", target_branch="main")
PR = SimulatedEvent(type="pull_request", target_branch="main")
TAG = SimulatedEvent(type="tag", target_branch="v1")


@pytest.mark.feature("HOOK-13")
@pytest.mark.parametrize(
    ("triggers", "event", "fetcher", "expected"),
    [
        ((PushTrigger(paths=("src/**",)),), PUSH, True, True),
        ((PushTrigger(paths=("src/**",)),), PUSH, False, False),
        ((PushTrigger(),), PUSH, True, False),
        ((PushTrigger(paths=("src/**",)),), PR, True, False),
        ((PrTrigger(paths=("!docs/**",)),), PR, True, True),
        ((PrTrigger(paths=("a",)), PushTrigger(paths=("b",))), TAG, True, False),
        ((TagTrigger(patterns=(LockBranchPattern(type="glob", pattern="v*"),)),), PUSH, True, False),
        ((), PUSH, True, False),
    ],
)
def test_changed_files_only_when_a_matching_kind_has_paths(
    triggers: tuple[Any, ...], event: SimulatedEvent, fetcher: bool, expected: bool
) -> None:
    workflows = [workflow(*triggers), workflow(name="other")]
    assert changed_files_needed(workflows, event, fetcher_available=fetcher) is expected
