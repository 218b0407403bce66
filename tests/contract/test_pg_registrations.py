"""Workflow registrations on real PostgreSQL: ``replace_all`` with its version bump in one transaction."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import trio

from kici.adapters.postgres.database import Database
from kici.adapters.postgres.registration_store import PgRegistrationStore
from kici.domain.lockfile import (
    LockBranchPattern,
    LockFile,
    LockSource,
    LockWorkflow,
    PushTrigger,
    ScheduleTrigger,
    Trigger,
)
from kici.domain.lockfile.triggers import KiciEventTrigger
from kici.domain.registrations import RegistrationSet, registration_set

pytestmark = [pytest.mark.pg, pytest.mark.feature("EVT-07", "HOOK-18")]

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RK = "github:1"


def wf(name: str, *triggers: Trigger) -> LockWorkflow:
    return LockWorkflow(
        name=name,
        source=LockSource(file=f".kici/workflows/{name}.py", export=f"#{name}"),
        content_hash="ab" * 32,
        triggers=triggers,
    )


def batch(
    *workflows: LockWorkflow, repo: str = "acme/app", customer: str = "acme", ref: str = "sha-1"
) -> RegistrationSet:
    return registration_set(
        LockFile(content_hash="cd" * 32, workflows=workflows),
        customer_id=customer,
        routing_key=RK,
        repo_identifier=repo,
        ref=ref,
        provider_context={"installationId": 42},
        globals_permitted=True,
    )


CI = wf("ci", PushTrigger(branches=(LockBranchPattern(type="glob", pattern="main"),)))
NIGHTLY = wf("nightly", ScheduleTrigger(cron_expression="0 3 * * *", timezone="Europe/Paris"))
DEPLOY = wf("deploy", KiciEventTrigger(event_name="built"), PushTrigger(repos=("acme/*",)))


async def test_replace_all_inserts_updates_in_place_deletes_and_bumps_the_version(pg_db: Database) -> None:
    store = PgRegistrationStore(pg_db)
    assert await store.registry_version() == 0
    first = await store.replace_all(batch(CI, NIGHTLY), NOW)
    assert (first.version, first.inserted, first.updated, first.deleted) == (1, ("ci", "nightly"), (), ())
    before = {r.workflow_name: r for r in await store.list_registrations(routing_key=RK)}
    assert before["nightly"].workflow == NIGHTLY
    assert before["nightly"].trigger_types == ("schedule",)
    assert before["ci"].provider_context == {"installationId": 42}
    assert (before["ci"].commit_sha, before["ci"].source_file, before["ci"].is_global) == (
        "sha-1",
        ".kici/workflows/ci.py",
        False,
    )
    assert await store.set_disabled(before["nightly"].id, True, NOW)

    later = NOW + timedelta(minutes=5)
    second = await store.replace_all(batch(NIGHTLY, DEPLOY, ref="sha-2"), later)
    assert (second.version, second.inserted, second.updated, second.deleted) == (
        2,
        ("deploy",),
        ("nightly",),
        ("ci",),
    )
    after = {r.workflow_name: r for r in await store.list_registrations(repo_identifier="acme/app")}
    assert set(after) == {"nightly", "deploy"}
    kept = after["nightly"]
    assert (kept.id, kept.disabled, kept.created_at) == (before["nightly"].id, True, NOW)
    assert (kept.commit_sha, kept.updated_at) == ("sha-2", later)
    assert after["deploy"].is_global
    assert after["deploy"].trigger_types == ("kici_event", "push")
    assert await store.registry_version() == 2


async def test_an_empty_lock_still_replaces_and_bumps(pg_db: Database) -> None:
    store = PgRegistrationStore(pg_db)
    await store.replace_all(batch(CI, repo="acme/other"), NOW)
    await store.replace_all(batch(CI, NIGHTLY), NOW)
    emptied = await store.replace_all(batch(), NOW)
    assert (emptied.version, emptied.deleted) == (3, ("ci", "nightly"))
    assert await store.list_registrations(repo_identifier="acme/app") == ()
    assert [r.repo_identifier for r in await store.list_registrations()] == ["acme/other"]
    assert (await store.replace_all(batch(ref="HEAD"), NOW)).version == 4


async def test_default_customer_rows_of_the_routing_key_are_healed(pg_db: Database) -> None:
    store = PgRegistrationStore(pg_db)
    await store.replace_all(batch(CI, repo="acme/lib", customer="__default__"), NOW)
    await store.replace_all(batch(NIGHTLY, customer="acme"), NOW)
    assert {r.customer_id for r in await store.list_registrations(routing_key=RK)} == {"acme"}


async def test_concurrent_replacements_serialize_versions_and_leave_one_whole_set(pg_db: Database) -> None:
    store = PgRegistrationStore(pg_db)
    versions: list[int] = []

    async def push(*workflows: LockWorkflow) -> None:
        for _ in range(5):
            versions.append((await store.replace_all(batch(*workflows), NOW)).version)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(push, CI, NIGHTLY)
        nursery.start_soon(push, DEPLOY)
    assert sorted(versions) == list(range(1, 11))
    names = {r.workflow_name for r in await store.list_registrations()}
    assert names in ({"ci", "nightly"}, {"deploy"})


async def test_set_disabled_on_an_unknown_row_reports_false(pg_db: Database) -> None:
    assert not await PgRegistrationStore(pg_db).set_disabled(uuid.uuid4(), True, NOW)
