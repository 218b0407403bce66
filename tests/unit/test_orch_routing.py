"""Routing data, the dequeue chooser, the agent registry and the settings of the execution brain
(SCL-02, EXE-36, ISO-14, PRO-09, PRO-10, PRO-16, EXE-24, EXE-25)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from kici.domain.config.schema import (
    AgentAuth,
    AgentsConfig,
    OrchestratorConfig,
    QueueConfig,
    StaleDetectorConfig,
)
from kici.domain.labels import AgentSlot
from kici.domain.lockfile.frozen import freeze_json
from kici.domain.lockfile.model import ExactLabelMatcher, RegexLabelMatcher
from kici.domain.store import QueueCandidate
from kici.services.connection import Session
from kici.services.orchestrator.agent_hub import AgentRegistry, ConnectedAgent
from kici.services.orchestrator.dispatcher import (
    InvalidRoutingError,
    Routing,
    choose_agent,
    parse_routing,
    routing_json,
)
from kici.services.orchestrator.execution import ExecutionSettings
from kici.services.orchestrator.tracker import CancelOutcome, CancelResult

LINUX = ExactLabelMatcher(value="linux")
GPU = ExactLabelMatcher(value="gpu")
ARM = RegexLabelMatcher(source="^arm", flags="i")


def candidate(routing: Any) -> QueueCandidate:
    return QueueCandidate(
        queue_id=uuid.uuid4(),
        job_id=uuid.uuid4(),
        run_id=uuid.uuid4(),
        job_name="build",
        routing=routing,
        dispatch_attempts=0,
        enqueued_at=datetime(2026, 1, 1, tzinfo=UTC),
        expires_at=None,
    )


@pytest.mark.feature("SCL-02")
def test_routing_round_trips_through_its_json_form() -> None:
    value = routing_json([LINUX, ARM], [GPU])
    assert value == freeze_json(
        {
            "runsOn": [
                {"kind": "exact", "value": "linux"},
                {"kind": "regex", "source": "^arm", "flags": "i"},
            ],
            "exclude": [{"kind": "exact", "value": "gpu"}],
        }
    )
    assert parse_routing(value) == Routing((LINUX, ARM), (GPU,))
    assert parse_routing(routing_json(None)) == Routing()
    assert parse_routing(None) == Routing()


@pytest.mark.feature("SCL-02")
@pytest.mark.parametrize(
    "bad", ["linux", freeze_json({"runsOn": [{"kind": "glob"}]}), freeze_json({"runsOn": 3})]
)
def test_malformed_routing_is_a_typed_error_and_routes_nowhere(bad: Any) -> None:
    with pytest.raises(InvalidRoutingError):
        parse_routing(bad)
    assert choose_agent([AgentSlot("a", ["linux"])], candidate(bad)) is None


@pytest.mark.feature("SCL-02", "EXE-36")
def test_the_chooser_takes_the_first_fitting_agent_with_a_free_slot() -> None:
    slots = [
        AgentSlot("full", ["linux"], active_jobs=1, max_concurrency=1),
        AgentSlot("windows", ["windows"]),
        AgentSlot("gpu-box", ["linux", "gpu"]),
        AgentSlot("plain", ["linux"]),
    ]
    assert choose_agent(slots, candidate(routing_json([LINUX]))) == "gpu-box"
    assert choose_agent(slots, candidate(routing_json([LINUX], [GPU]))) == "plain"
    assert choose_agent(slots, candidate(routing_json([ExactLabelMatcher(value="mac")]))) is None


@pytest.mark.feature("ISO-14")
def test_a_tainted_agent_takes_only_jobs_that_name_its_taint() -> None:
    slots = [AgentSlot("root", ["linux", "kici:privileged:root"], mandatory=["kici:privileged:root"])]
    assert choose_agent(slots, candidate(routing_json([LINUX]))) is None
    named = routing_json([LINUX, ExactLabelMatcher(value="kici:privileged:root")])
    assert choose_agent(slots, candidate(named)) == "root"


def agent(
    agent_id: str, generation: int = 1, *, max_concurrency: int = 1, jobs: set[str] | None = None
) -> ConnectedAgent:
    return ConnectedAgent(
        agent_id=agent_id,
        generation=generation,
        session=cast(Session, object()),
        labels=("linux",),
        max_concurrency=max_concurrency,
        jobs=jobs or set(),
    )


@pytest.mark.feature("PRO-09", "PRO-16")
def test_a_late_close_of_an_old_connection_keeps_the_newer_one() -> None:
    registry = AgentRegistry()
    old, new = agent("a", 1), agent("a", 2)
    assert registry.add(old) is None
    assert registry.add(new) is old
    assert not registry.remove(old)
    assert registry.get("a") is new
    assert registry.remove(new)
    assert len(registry) == 0


@pytest.mark.feature("EXE-36", "SCL-02")
def test_routable_slots_are_least_loaded_first_and_exclude_full_or_unroutable_agents() -> None:
    registry = AgentRegistry()
    registry.add(agent("b", max_concurrency=4, jobs={"j1"}))
    registry.add(agent("a", max_concurrency=2, jobs={"j2"}))
    registry.add(agent("c", max_concurrency=1, jobs={"j3"}))
    idle = agent("d")
    idle.routable = False
    registry.add(idle)
    assert [s.agent_id for s in registry.routable_slots()] == ["b", "a"]
    assert registry.holder_of("j2") is registry.get("a")
    released = registry.release("j2")
    assert released is registry.get("a")
    assert [s.agent_id for s in registry.routable_slots()] == ["a", "b"]
    assert registry.release("unknown") is None


@pytest.mark.feature("PRO-10", "PRO-16", "EXE-24", "EXE-25")
def test_settings_follow_the_configuration() -> None:
    config = OrchestratorConfig(
        agents=AgentsConfig(auth=AgentAuth.NONE, max_reconnect_delay_ms=30_000, dispatch_ack_timeout_ms=200),
        queue=QueueConfig(timeout_ms=0),
        stale_detector=StaleDetectorConfig(
            scan_interval_ms=5_000, threshold_multiplier=3.0, heartbeat_interval_ms=10_000
        ),
    )
    settings = ExecutionSettings.from_config(config)
    assert settings.agent_auth is AgentAuth.NONE
    assert settings.recovery_grace_ms == 60_000
    assert settings.ack_timeout_ms == 1_000
    assert settings.queue_timeout_ms == 0
    assert (settings.stale_scan_interval_ms, settings.stale_threshold_ms) == (5_000, 30_000)
    defaults = ExecutionSettings.from_config(OrchestratorConfig())
    assert (defaults.recovery_grace_ms, defaults.ack_timeout_ms, defaults.stale_threshold_ms) == (
        120_000,
        10_000,
        120_000,
    )
    with pytest.raises(ValueError, match="ack_timeout_ms"):
        ExecutionSettings(ack_timeout_ms=0)
    with pytest.raises(ValueError, match="queue_timeout_ms"):
        ExecutionSettings(queue_timeout_ms=-1)


@pytest.mark.feature("EXE-14")
@pytest.mark.parametrize(
    ("outcome", "status"),
    [(CancelOutcome.ACCEPTED, 202), (CancelOutcome.NOT_FOUND, 404), (CancelOutcome.ALREADY_TERMINAL, 409)],
)
def test_cancel_results_map_to_http_statuses(outcome: CancelOutcome, status: int) -> None:
    assert CancelResult(outcome=outcome, run_id=uuid.uuid4()).http_status == status
