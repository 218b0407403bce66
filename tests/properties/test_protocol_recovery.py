"""Job recovery book (PRO-16, PRO-17, PRO-19), spec 20 §13 and §20 invariant 10."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.recovery import (
    RECOVERY_EXPIRED_MESSAGE,
    RECOVERY_STATE_LOST_MESSAGE,
    JobRef,
    LostFailed,
    Ownership,
    Rearmed,
    RecoveryBook,
    RecoveryStarted,
    StartupRow,
    StartupRowStatus,
    StatusVerdict,
    TrackedState,
)

AGENTS = ["a", "b"]
JOBS = [JobRef(f"j{n}", "r") for n in range(4)]
GRACE = 40_000
COMPLETED_GRACE = 30_000

agents = st.sampled_from(AGENTS)
jobs = st.sampled_from(JOBS)
_op_args: dict[str, st.SearchStrategy[tuple[Any, ...]]] = {
    "assign": st.tuples(jobs, agents),
    "connect": st.tuples(agents),
    "disconnect": st.tuples(agents, st.booleans()),
    "reconcile": st.tuples(agents, st.lists(jobs, max_size=4)),
    "expire": st.tuples(jobs),
    "sweep": st.tuples(),
    "status": st.tuples(agents, jobs, st.booleans()),
    "log": st.tuples(agents, jobs),
    "release": st.tuples(jobs),
    "wait": st.tuples(st.integers(0, 60_000)),
}
# weights: the operations that move a job between states come up most often
_op_kinds = st.sampled_from(
    ["disconnect"] * 4
    + ["reconcile"] * 4
    + ["wait"] * 4
    + ["expire", "sweep"] * 2
    + ["status"] * 3
    + ["log"] * 2
    + ["connect", "assign", "release"]
)
operations = st.lists(
    _op_kinds.flatmap(lambda kind: _op_args[kind].map(lambda args: (kind, *args))),
    min_size=15,
    max_size=80,
)
owners = st.lists(agents, min_size=len(JOBS), max_size=len(JOBS))

# The life of one job as seen through the book's effects: each recovery episode ends
# in exactly one of reclaim / expiry / release, and nothing follows an end state.
_LIFE = {
    ("active", "recover"): "recovering",
    ("active", "complete"): "done",
    ("active", "release"): "gone",
    ("recovering", "reclaim"): "active",
    ("recovering", "expire"): "gone",
    ("recovering", "release"): "gone",
}
_BOOK_VIEW = {
    "active": {TrackedState.ACTIVE},
    "recovering": {TrackedState.RECOVERING},
    "done": {TrackedState.RECENTLY_COMPLETED, TrackedState.UNTRACKED},
    "gone": {TrackedState.UNTRACKED},
}


class _Model:
    def __init__(self) -> None:
        self.life: dict[str, str] = {}
        self.owner: dict[str, str] = {}
        self.recorded: dict[str, str] = {}
        self.deadline: dict[str, float] = {}
        self.completed: dict[str, tuple[str, float]] = {}

    def step(self, job_id: str, effect: str) -> None:
        state = self.life[job_id]
        assert (state, effect) in _LIFE, f"{job_id}: {effect} after {state}"
        self.life[job_id] = _LIFE[(state, effect)]


@pytest.mark.feature("PRO-16", "PRO-19")
@given(owners, operations)
def test_every_interleaving_gives_each_job_exactly_one_outcome(
    first_owners: list[str], ops: list[tuple[Any, ...]]
) -> None:
    book = RecoveryBook(grace_ms=GRACE, completed_grace_ms=COMPLETED_GRACE)
    model = _Model()
    generation = {agent: book.connect(agent) for agent in AGENTS}
    now = 0
    initial = [("assign", job, agent) for job, agent in zip(JOBS[:-1], first_owners, strict=False)]
    for op in [*initial, *ops]:
        match op:
            case ("assign", job, agent) if job.job_id not in model.life:
                book.assign(job, agent)
                model.life[job.job_id] = "active"
                model.owner[job.job_id] = agent
            case ("connect", agent):
                generation[agent] = book.connect(agent)
            case ("disconnect", agent, stale):
                started = book.disconnect(agent, generation[agent] - (1 if stale else 0), now)
                if stale:
                    assert started == []
                expected = {j for j, s in model.life.items() if s == "active" and model.owner[j] == agent}
                if not stale:
                    assert {s.entry.job.job_id for s in started} == expected
                for s in started:
                    assert s.entry.deadline_ms == now + GRACE
                    assert s.entry.agent_id == agent
                    model.step(s.entry.job.job_id, "recover")
                    model.recorded[s.entry.job.job_id] = agent
                    model.deadline[s.entry.job.job_id] = s.entry.deadline_ms
            case ("reconcile", agent, reported):
                result = book.reconcile(agent, list({j.job_id: j for j in reported}.values()), now)
                for claim in result.reclaimed:
                    job_id = claim.job.job_id
                    assert model.recorded[job_id] == agent
                    model.step(job_id, "reclaim")
                    model.owner[job_id] = agent
                for kept in result.kept:
                    assert model.life[kept.job_id] == "active"
                    assert model.owner[kept.job_id] == agent
                for cancelled in result.cancel:
                    state = model.life.get(cancelled.job_id)
                    assert not (state == "active" and model.owner[cancelled.job_id] == agent)
                    assert not (state == "recovering" and model.recorded[cancelled.job_id] == agent)
                for finished in result.finished:
                    owner, at = model.completed[finished.job_id]
                    assert owner == agent
                    assert now - at < COMPLETED_GRACE
            case ("expire", job):
                expired = book.expire(job.job_id, now)
                if expired is not None:
                    assert now >= model.deadline[job.job_id]
                    assert expired.message == RECOVERY_EXPIRED_MESSAGE
                    model.step(job.job_id, "expire")
            case ("sweep",):
                for expired in book.expire_due(now):
                    assert now >= model.deadline[expired.job.job_id]
                    model.step(expired.job.job_id, "expire")
                assert all(e.deadline_ms > now for e in book.recovering())
            case ("status", agent, job, terminal):
                decision = book.on_job_status(agent, job.job_id, terminal, now)
                state = model.life.get(job.job_id)
                if decision.verdict is StatusVerdict.RECLAIM_THEN_APPLY:
                    assert state == "recovering"
                    assert model.recorded[job.job_id] == agent
                    model.step(job.job_id, "reclaim")
                    model.owner[job.job_id] = agent
                elif decision.verdict is StatusVerdict.APPLY:
                    assert state == "active"
                    assert model.owner[job.job_id] == agent
                else:
                    assert not (state == "active" and model.owner[job.job_id] == agent)
                    assert not (state == "recovering" and model.recorded[job.job_id] == agent)
                if decision.verdict is not StatusVerdict.DROP and terminal:
                    model.step(job.job_id, "complete")
                    model.completed[job.job_id] = (agent, now)
            case ("log", agent, job):
                passes = book.ownership(agent, job.job_id, now) is not Ownership.NONE
                state = model.life.get(job.job_id)
                owner, at = model.completed.get(job.job_id, ("", -(10**9)))
                assert passes == (
                    (state == "active" and model.owner[job.job_id] == agent)
                    or (state == "recovering" and model.recorded[job.job_id] == agent)
                    or (owner == agent and now - at < COMPLETED_GRACE)
                )
            case ("release", job):
                held = book.release(job.job_id)
                state = model.life.get(job.job_id)
                assert held == (state in ("active", "recovering"))
                if held:
                    model.step(job.job_id, "release")
            case ("wait", ms):
                now += ms
        for job_id, state in model.life.items():
            assert book.state_of(job_id) in _BOOK_VIEW[state]
            assert book.excluded_from_stale_scan(job_id) == (state == "recovering")


@pytest.mark.feature("PRO-16")
@given(st.integers(0, 10**6), st.integers(0, 100_000), st.booleans())
def test_claim_and_expiry_have_exactly_one_winner(start: int, later: int, claim_first: bool) -> None:
    book = RecoveryBook(grace_ms=GRACE)
    job = JOBS[0]
    book.assign(job, "a")
    book.disconnect("a", book.connect("a"), start)
    now = start + later
    if claim_first:
        claimed = book.reconcile("a", [job], now).reclaimed
        expired = book.expire(job.job_id, now)
    else:
        expired = book.expire(job.job_id, now)
        claimed = book.reconcile("a", [job], now).reclaimed
    assert (len(claimed) == 1) != (expired is not None)
    if not claim_first:
        assert (expired is not None) == (later >= GRACE)


statuses = st.sampled_from(list(StartupRowStatus))
rows = st.lists(
    st.builds(
        StartupRow,
        job=st.builds(JobRef, job_id=st.text(min_size=1, max_size=4), run_id=st.just("r")),
        status=statuses,
        agent_id=st.one_of(st.none(), st.just("unknown"), agents),
        recovery_deadline_ms=st.one_of(st.none(), st.integers(0, 400_000)),
    ),
    max_size=12,
    unique_by=lambda row: row.job.job_id,
)


@pytest.mark.feature("PRO-17")
@given(rows, st.integers(0, 400_000))
def test_startup_rearms_persisted_deadlines_and_fails_only_lost_state(
    boot: list[StartupRow], now: int
) -> None:
    book = RecoveryBook(grace_ms=GRACE)
    actions = book.restore(boot, now)
    assert len(actions) == len(boot)
    for row, action in zip(boot, actions, strict=True):
        if row.status is StartupRowStatus.DISPATCHED:
            assert isinstance(action, RecoveryStarted)
            assert action.entry.deadline_ms == now + GRACE
            assert action.entry.agent_id == row.agent_id
        elif row.recovery_deadline_ms is None:
            assert action == LostFailed(row.job, RECOVERY_STATE_LOST_MESSAGE)
            assert book.state_of(row.job.job_id) is TrackedState.UNTRACKED
        else:
            assert isinstance(action, Rearmed)
            assert action.entry.deadline_ms == row.recovery_deadline_ms
    overdue = {
        row.job.job_id
        for row in boot
        if row.status is StartupRowStatus.RECOVERING
        and row.recovery_deadline_ms is not None
        and row.recovery_deadline_ms <= now
    }
    assert {e.job.job_id for e in book.expire_due(now)} == overdue
    # rows with an unknown recorded agent are claimable by whichever agent reports them
    for row in boot:
        if book.state_of(row.job.job_id) is TrackedState.RECOVERING and row.agent_id in (None, "unknown"):
            assert book.reconcile("b", [row.job], now).reclaimed
