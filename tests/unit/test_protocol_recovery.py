"""RecoveryBook examples, spec 20 §13 (PRO-16, PRO-17, PRO-19)."""

from __future__ import annotations

import pytest

from kici.domain.recovery import (
    JobRef,
    LostFailed,
    Ownership,
    Rearmed,
    Reclaimed,
    RecoveryBook,
    RecoveryEntry,
    RecoveryError,
    RecoveryExpired,
    RecoveryStarted,
    StartupRow,
    StartupRowStatus,
    StatusDecision,
    StatusVerdict,
    TrackedState,
    in_flight_jobs,
    recovery_grace_ms,
)

J1 = JobRef("j1", "r1")
J2 = JobRef("j2", "r1")


def disconnected_book(now: int = 1_000) -> RecoveryBook:
    book = RecoveryBook()
    generation = book.connect("a")
    book.assign(J1, "a")
    book.assign(J2, "a")
    book.disconnect("a", generation, now)
    return book


@pytest.mark.feature("PRO-16")
def test_grace_is_twice_the_max_reconnect_delay() -> None:
    assert recovery_grace_ms() == 120_000
    assert recovery_grace_ms(500) == 1_000
    assert RecoveryBook().grace_ms == 120_000
    with pytest.raises(RecoveryError):
        recovery_grace_ms(0)
    with pytest.raises(RecoveryError):
        RecoveryBook(grace_ms=0)


@pytest.mark.feature("PRO-16")
def test_disconnect_starts_recovery_per_job() -> None:
    book = RecoveryBook()
    generation = book.connect("a")
    book.assign(J1, "a")
    assert book.disconnect("a", generation, 5_000) == [
        RecoveryStarted(RecoveryEntry(J1, "a", 125_000, 5_000))
    ]
    assert book.state_of("j1") is TrackedState.RECOVERING
    assert book.excluded_from_stale_scan("j1")
    assert book.next_deadline_ms() == 125_000


@pytest.mark.feature("PRO-16")
def test_a_late_close_of_an_old_connection_is_ignored() -> None:
    book = RecoveryBook()
    old = book.connect("a")
    book.assign(J1, "a")
    book.connect("a")
    assert book.disconnect("a", old, 0) == []
    assert book.state_of("j1") is TrackedState.ACTIVE


@pytest.mark.feature("PRO-16")
def test_reconnect_reclaims_reported_jobs_and_cancels_unknown_ones() -> None:
    book = disconnected_book()
    book.connect("a")
    ghost = JobRef("ghost", "r9")
    result = book.reconcile("a", [J1, ghost], 31_000)
    assert result.reclaimed == (Reclaimed(J1, "a", 30_000),)
    assert result.cancel == (ghost,)
    assert book.state_of("j1") is TrackedState.ACTIVE
    assert book.state_of("j2") is TrackedState.RECOVERING
    assert book.reconcile("a", [J1], 32_000).kept == (J1,)


@pytest.mark.feature("PRO-16")
def test_only_the_recorded_agent_may_claim() -> None:
    book = disconnected_book()
    result = book.reconcile("b", [J1], 2_000)
    assert result.reclaimed == ()
    assert result.cancel == (J1,)
    assert book.state_of("j1") is TrackedState.RECOVERING


@pytest.mark.feature("PRO-16")
def test_expiry_fails_with_the_recovery_window_message() -> None:
    book = disconnected_book(0)
    assert book.expire("j1", 119_999) is None
    expired = book.expire("j1", 120_000)
    assert expired == RecoveryExpired(J1, "a")
    assert (
        expired.message == "Job failed: agent disconnected and did not reconnect within the recovery window"
    )
    assert book.expire("j1", 120_001) is None
    assert book.expire_due(120_000) == [RecoveryExpired(J2, "a")]
    assert book.reconcile("a", [J1], 130_000).cancel == (J1,)


@pytest.mark.feature("PRO-16", "PRO-19")
def test_terminal_status_for_a_recovering_job_reclaims_then_applies() -> None:
    book = disconnected_book(0)
    decision = book.on_job_status("a", "j1", True, 10_000)
    assert decision == StatusDecision(StatusVerdict.RECLAIM_THEN_APPLY, Reclaimed(J1, "a", 10_000))
    assert book.state_of("j1") is TrackedState.RECENTLY_COMPLETED
    assert book.expire("j1", 500_000) is None
    assert book.on_job_status("a", "j1", True, 10_001).verdict is StatusVerdict.DROP


@pytest.mark.feature("PRO-19")
def test_ownership_of_logs_and_the_completed_grace_window() -> None:
    book = RecoveryBook()
    book.assign(J1, "a")
    assert book.ownership("a", "j1", 0) is Ownership.ACTIVE
    assert book.ownership("b", "j1", 0) is Ownership.NONE
    assert book.on_job_status("a", "j1", True, 1_000).verdict is StatusVerdict.APPLY
    assert book.ownership("a", "j1", 30_999) is Ownership.RECENTLY_COMPLETED
    assert book.ownership("a", "j1", 31_000) is Ownership.NONE
    assert book.reconcile("a", [J1], 5_000).finished == (J1,)
    book.sweep_completed(31_000)
    assert book.state_of("j1") is TrackedState.UNTRACKED


@pytest.mark.feature("PRO-19")
def test_completed_map_is_capped_oldest_first() -> None:
    book = RecoveryBook(completed_cap=2)
    for n in range(3):
        job = JobRef(f"j{n}", "r")
        book.assign(job, "a")
        book.on_job_status("a", job.job_id, True, n)
    assert [book.state_of(f"j{n}") for n in range(3)] == [
        TrackedState.UNTRACKED,
        TrackedState.RECENTLY_COMPLETED,
        TrackedState.RECENTLY_COMPLETED,
    ]


@pytest.mark.feature("PRO-17")
def test_startup_restores_recoveries() -> None:
    book = RecoveryBook()
    actions = book.restore(
        [
            StartupRow(J1, StartupRowStatus.RECOVERING, "a", 200_000),
            StartupRow(J2, StartupRowStatus.DISPATCHED, "b"),
            StartupRow(JobRef("lost", "r"), StartupRowStatus.RECOVERING, "a", None),
        ],
        100_000,
    )
    assert actions == [
        Rearmed(RecoveryEntry(J1, "a", 200_000, 100_000)),
        RecoveryStarted(RecoveryEntry(J2, "b", 220_000, 100_000)),
        LostFailed(JobRef("lost", "r")),
    ]
    assert actions[2] == LostFailed(
        JobRef("lost", "r"), "Job failed: orchestrator restarted during recovery (recovery state lost)"
    )
    with pytest.raises(RecoveryError):
        book.restore([StartupRow(J1, StartupRowStatus.DISPATCHED, "a")], 0)


@pytest.mark.feature("PRO-17")
def test_an_unknown_recorded_agent_is_claimable_by_any_reporter() -> None:
    book = RecoveryBook()
    book.restore([StartupRow(J1, StartupRowStatus.RECOVERING, "unknown", 50_000)], 0)
    assert book.ownership("z", "j1", 1) is Ownership.RECOVERING
    assert book.reconcile("z", [J1], 1).reclaimed == (Reclaimed(J1, "z", 1),)


@pytest.mark.feature("PRO-16")
def test_recovering_jobs_cannot_be_dispatched_and_release_forgets() -> None:
    book = disconnected_book()
    with pytest.raises(RecoveryError):
        book.assign(J1, "b")
    assert book.release("j1")
    assert not book.release("j1")
    assert book.expire("j1", 10**9) is None
    assert book.jobs_of("a") == []


@pytest.mark.feature("PRO-16")
def test_in_flight_jobs_lists_running_then_unsent_terminal_jobs_once() -> None:
    assert in_flight_jobs([J1], [J2, J1]) == [J1, J2]
