"""Properties of the execution brain's own machinery: the deadline heap behind every ack, recovery and
timeout deadline (PRO-10, PRO-16, EXE-24), and the dequeue chooser's routing (SCL-02, EXE-36, ISO-14)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from kici.adapters.clock import TrioClock
from kici.domain.labels import AgentSlot, agent_eligible
from kici.domain.lockfile.model import ExactLabelMatcher
from kici.services.orchestrator.dispatcher import choose_agent, parse_routing, routing_json
from kici.services.orchestrator.timers import DeadlineScheduler
from tests.strategies.lockfile import label_matchers
from tests.unit.test_orch_routing import candidate

START = datetime(2026, 3, 1, tzinfo=UTC)
KEYS = st.sampled_from(
    [("ack", "a"), ("ack", "b"), ("recovery", "a"), ("job-timeout", "c"), ("workflow", "r")]
)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("arm"), KEYS, st.integers(0, 50)),
        st.tuples(st.just("cancel"), KEYS, st.just(0)),
        st.tuples(st.just("wait"), KEYS, st.integers(0, 20)),
    ),
    max_size=25,
)


Fired = list[tuple[float, tuple[str, str], int]]


def _model(ops: list[tuple[str, tuple[str, str], int]]) -> Fired:
    """What must fire: per key the last arming not cancelled and not already fired, at its time.

    Deadlines sit half a second off the whole-second waits, so no deadline ties with a test step.
    """
    now = 0.0
    armed: dict[tuple[str, str], tuple[float, int]] = {}
    fired: Fired = []
    for serial, (op, key, value) in enumerate(ops):
        if op == "arm":
            armed[key] = (now + value + 0.5, serial)
        elif op == "cancel":
            armed.pop(key, None)
        else:
            now += value
            due = sorted((at, seq, k) for k, (at, seq) in armed.items() if at <= now)
            for at, seq, k in due:
                fired.append((at, k, seq))
                del armed[k]
    fired.extend(sorted((at, k, seq) for k, (at, seq) in armed.items()))
    return fired


@pytest.mark.feature("PRO-10", "PRO-16", "EXE-24")
@given(OPS)
def test_the_deadline_heap_fires_each_live_arming_once_in_time_order(
    ops: list[tuple[str, tuple[str, str], int]],
) -> None:
    fired: Fired = []

    async def main() -> None:
        scheduler = DeadlineScheduler(TrioClock(START))
        t0 = trio.current_time()

        def handler(key: tuple[str, str], serial: int) -> Callable[[], Awaitable[None]]:
            async def fire() -> None:
                fired.append((round(trio.current_time() - t0, 3), key, serial))

            return fire

        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.run)
            for serial, (op, key, value) in enumerate(ops):
                if op == "arm":
                    scheduler.arm_in(key, value + 0.5, handler(key, serial))
                elif op == "cancel":
                    scheduler.cancel(key)
                else:
                    await trio.sleep(value)
            await trio.sleep(1_000)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    expected = _model(ops)
    assert sorted(fired) == sorted(expected)
    assert [at for at, _, _ in fired] == sorted(at for at, _, _ in fired)


slots = st.lists(
    st.builds(
        AgentSlot,
        agent_id=st.sampled_from(["a", "b", "c", "d", "e"]),
        labels=st.lists(
            st.sampled_from(["linux", "gpu", "py", "role:web", "kici:os:linux", "arm64"]), max_size=4
        ),
        active_jobs=st.integers(0, 3),
        max_concurrency=st.integers(1, 3),
        mandatory=st.lists(st.sampled_from(["gpu", "kici:privileged:root"]), max_size=1),
    ),
    max_size=5,
    unique_by=lambda s: s.agent_id,
)
matcher_lists = st.lists(label_matchers, max_size=3)


@pytest.mark.feature("SCL-02", "EXE-36", "ISO-14")
@given(slots, matcher_lists, matcher_lists)
def test_the_chooser_picks_the_first_eligible_agent_with_a_free_slot(
    agents: list[AgentSlot], runs_on: list[ExactLabelMatcher], exclude: list[ExactLabelMatcher]
) -> None:
    routing = routing_json(runs_on, exclude)
    assert parse_routing(routing).runs_on == tuple(runs_on)
    chosen = choose_agent(agents, candidate(routing))
    fitting = [a.agent_id for a in agents if a.has_capacity and agent_eligible(a, runs_on, exclude)]
    assert chosen == (fitting[0] if fitting else None)
