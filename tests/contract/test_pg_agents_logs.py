"""Agents, agent tokens and step log chunks on real PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import trio

from kici.domain.execution.needs import JobNeedsSpec
from kici.domain.lockfile.frozen import freeze_json
from kici.domain.store import (
    AgentRecord,
    AgentStatus,
    AgentType,
    InvalidStoreInputError,
    JobNotFoundError,
    NewAgentToken,
    NewJob,
    NewLogChunk,
    NewRun,
)
from kici.testing.postgres import PgStores

pytestmark = pytest.mark.pg

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def later(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


@pytest.mark.feature("PRO-09")
async def test_agents_are_upserted_listed_and_marked(pg_stores: PgStores) -> None:
    agent = AgentRecord(
        agent_id="host-1",
        status=AgentStatus.CONNECTED,
        registered_at=NOW,
        last_seen_at=NOW,
        labels=("linux", "kici:os:linux"),
        max_concurrency=2,
        platform="linux",
        properties=freeze_json({"gpu": True, "cores": 8}),
    )
    await pg_stores.agents.upsert_agent(agent)
    assert await pg_stores.agents.get_agent("host-1") == agent
    await pg_stores.agents.upsert_agent(
        AgentRecord(agent_id="host-0", status=AgentStatus.DRAINING, registered_at=NOW, last_seen_at=NOW)
    )
    assert [a.agent_id for a in await pg_stores.agents.list_agents()] == ["host-0", "host-1"]
    assert await pg_stores.agents.set_agent_status(
        "host-1", AgentStatus.DISCONNECTED, later(5), active_jobs=0
    )
    assert not await pg_stores.agents.set_agent_status("ghost", AgentStatus.DISCONNECTED, later(5))
    gone = await pg_stores.agents.get_agent("host-1")
    assert gone is not None
    assert (gone.status, gone.disconnected_at, gone.last_seen_at) == (
        AgentStatus.DISCONNECTED,
        later(5),
        later(5),
    )
    assert [a.agent_id for a in await pg_stores.agents.list_agents(AgentStatus.DRAINING)] == ["host-0"]
    await pg_stores.agents.upsert_agent(
        AgentRecord(
            agent_id="host-1",
            status=AgentStatus.CONNECTED,
            registered_at=later(9),
            last_seen_at=later(9),
            labels=("linux",),
        )
    )
    back = await pg_stores.agents.get_agent("host-1")
    assert back is not None
    assert (back.status, back.labels, back.disconnected_at, back.max_concurrency) == (
        AgentStatus.CONNECTED,
        ("linux",),
        None,
        1,
    )


@pytest.mark.feature("PRO-08")
async def test_tokens_are_found_by_hash_only_while_usable(pg_stores: PgStores) -> None:
    token = await pg_stores.agents.create_agent_token(
        NewAgentToken(
            token_hash="h" * 64,
            token_prefix="kat_0123abcd",
            agent_type=AgentType.STATIC,
            created_by="admin",
            created_at=NOW,
            labels='["linux"]',
            expires_at=later(3600),
        )
    )
    assert token.labels == '["linux"]'
    found = await pg_stores.agents.find_agent_token("h" * 64, later(1))
    assert found == token
    assert await pg_stores.agents.find_agent_token("h" * 64, later(3600)) is None
    await pg_stores.agents.touch_agent_token(token.token_id, later(2))
    assert await pg_stores.agents.revoke_agent_token(token.token_id, later(3))
    assert not await pg_stores.agents.revoke_agent_token(token.token_id, later(4))
    assert await pg_stores.agents.find_agent_token("h" * 64, later(5)) is None


@pytest.mark.feature("PRO-08")
async def test_a_bootstrap_token_is_consumed_by_exactly_one_agent(pg_stores: PgStores) -> None:
    token = await pg_stores.agents.create_agent_token(
        NewAgentToken(
            token_hash="b" * 64,
            token_prefix="kat_bbbbbbbb",
            agent_type=AgentType.EPHEMERAL,
            created_by="bootstrap:ag-1",
            created_at=NOW,
        )
    )
    results: list[bool] = []

    async def consume() -> None:
        results.append(await pg_stores.agents.consume_agent_token(token.token_id, later(1)))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(consume)
    assert sorted(results) == [False, False, True]
    assert await pg_stores.agents.find_agent_token("b" * 64, later(2)) is None


@pytest.mark.feature("EXE-10", "PRO-11")
async def test_log_chunks_get_gap_free_sequences_and_read_back_with_a_cursor(pg_stores: PgStores) -> None:
    run = NewRun(run_id=uuid.uuid4(), workflow_name="ci", created_at=NOW)
    created = await pg_stores.execution.create_run(run, [NewJob(spec=JobNeedsSpec("a"))])
    job_id = created.job_ids["a"]

    async def append(step: int, *lines: str) -> int:
        return await pg_stores.logs.append_log_chunk(
            NewLogChunk(
                run_id=run.run_id,
                job_id=job_id,
                step_index=step,
                lines=lines,
                logged_at=NOW,
                received_at=later(1),
            )
        )

    assert [
        await append(-1, "prepare"),
        await append(0, "a", "b"),
        await append(1, "nul\x00here"),
        await append(0, "c"),
    ] == [1, 2, 3, 4]
    page = await pg_stores.logs.read_log_chunks(job_id, limit=2)
    assert [(c.sequence, c.step_index, c.lines) for c in page.chunks] == [
        (1, -1, ("prepare",)),
        (2, 0, ("a", "b")),
    ]
    assert page.next_cursor == 2
    rest = await pg_stores.logs.read_log_chunks(job_id, after=page.next_cursor)
    assert [(c.sequence, c.lines) for c in rest.chunks] == [(3, ("nul\ufffdhere",)), (4, ("c",))]
    empty = await pg_stores.logs.read_log_chunks(job_id, after=rest.next_cursor)
    assert (empty.chunks, empty.next_cursor) == ((), 4)
    step0 = await pg_stores.logs.read_log_chunks(job_id, step_index=0)
    assert [c.sequence for c in step0.chunks] == [2, 4]
    job = await pg_stores.execution.get_job(job_id)
    assert job is not None
    assert job.log_bytes == len("prepare") + 2 + len("nul\ufffdhere".encode()) + 1
    with pytest.raises(JobNotFoundError):
        await pg_stores.logs.append_log_chunk(
            NewLogChunk(
                run_id=run.run_id,
                job_id=uuid.uuid4(),
                step_index=0,
                lines=["x"],
                logged_at=NOW,
                received_at=NOW,
            )
        )
    with pytest.raises(InvalidStoreInputError):
        await pg_stores.logs.read_log_chunks(job_id, limit=0)


@pytest.mark.feature("EXE-10")
async def test_concurrent_appends_commit_in_sequence_order(pg_stores: PgStores) -> None:
    run = NewRun(run_id=uuid.uuid4(), workflow_name="ci", created_at=NOW)
    created = await pg_stores.execution.create_run(run, [NewJob(spec=JobNeedsSpec("a"))])
    job_id = created.job_ids["a"]

    async def writer(step: int) -> None:
        for i in range(10):
            await pg_stores.logs.append_log_chunk(
                NewLogChunk(
                    run_id=run.run_id,
                    job_id=job_id,
                    step_index=step,
                    lines=[f"{step}:{i}"],
                    logged_at=NOW,
                    received_at=NOW,
                )
            )

    async with trio.open_nursery() as nursery:
        for step in range(3):
            nursery.start_soon(writer, step)
    page = await pg_stores.logs.read_log_chunks(job_id)
    assert [c.sequence for c in page.chunks] == list(range(1, 31))
    for step in range(3):
        assert [c.lines[0] for c in page.chunks if c.step_index == step] == [f"{step}:{i}" for i in range(10)]
