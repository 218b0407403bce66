"""Hot reload: restart-only fields, debounce, mutual exclusion, rejected configs (OPS-03, CFG-07, CFG-08)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.config.layering import TABLES, Tier
from kici.domain.config.problems import ConfigError, Problem
from kici.domain.config.reload import is_restart_required, plan_reload
from kici.domain.config.schema import build, get_leaf
from kici.domain.config.validate import Loaded
from kici.services.config_reload import DEBOUNCE_SECONDS, IN_PROGRESS, ConfigHolder, ConfigReloader
from tests.strategies.config import tiers, valid_values


@st.composite
def configs(draw: st.DrawFn, tier: Tier) -> Any:
    return build(TABLES[tier].config_class, draw(valid_values(tier)))


@pytest.mark.feature("OPS-03", "CFG-08")
@given(st.data(), tiers)
def test_plan_keeps_restart_only_leaves_and_applies_everything_else(data: st.DataObject, tier: Tier) -> None:
    old, new = data.draw(configs(tier)), data.draw(configs(tier))
    table = TABLES[tier]
    plan = plan_reload(old, new)
    held, applied = [], []
    for attr in table.leaves:
        restart = is_restart_required(type(old), attr)
        expected = get_leaf(old if restart else new, attr)
        assert get_leaf(plan.apply, attr) == expected
        if get_leaf(old, attr) != get_leaf(new, attr):
            name = table.by_attr[attr].yaml if attr in table.by_attr else attr
            (held if restart else applied).append(name)
    assert list(plan.restart_required_changed) == held
    assert list(plan.applied_changes) == applied
    assert (plan.restart_message is None) == (not held)
    assert plan_reload(old, plan.apply).apply == plan.apply


@pytest.mark.feature("OPS-03", "CFG-08")
@given(configs(Tier.ORCHESTRATOR))
def test_reloading_the_same_config_changes_nothing(config: Any) -> None:
    plan = plan_reload(config, config)
    assert plan.apply == config
    assert plan.restart_required_changed == plan.applied_changes == ()


def _loaded(config: Any) -> Loaded[Any]:
    return Loaded(config)


def run_with_mock_clock(main: Any) -> None:
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


short_gaps = st.floats(0, DEBOUNCE_SECONDS * 0.98)
long_gaps = st.floats(DEBOUNCE_SECONDS * 1.02, 5)


@pytest.mark.feature("OPS-03", "CFG-07")
@given(st.lists(short_gaps, max_size=20))
def test_n_triggers_within_the_debounce_window_make_one_reload(gaps: list[float]) -> None:
    loads = 0

    async def load() -> Loaded[Any]:
        nonlocal loads
        loads += 1
        return _loaded(build(TABLES[Tier.ORCHESTRATOR].config_class, {"queue.max_depth": loads + 1}))

    async def main() -> None:
        reloader = ConfigReloader(ConfigHolder(build(TABLES[Tier.ORCHESTRATOR].config_class, {})), load)
        async with trio.open_nursery() as nursery:
            await nursery.start(reloader.run)
            reloader.trigger_reload("sighup")
            for gap in gaps:
                await trio.sleep(gap)
                reloader.trigger_reload("sighup")
            await reloader.wait_for_reloads(1)
            await trio.sleep(DEBOUNCE_SECONDS * 4)
            nursery.cancel_scope.cancel()
        assert reloader.completed == loads == 1
        assert reloader.holder.version == 2

    run_with_mock_clock(main)


@pytest.mark.feature("OPS-03", "CFG-07")
@given(st.lists(st.one_of(short_gaps, long_gaps), max_size=15))
def test_each_quiet_period_ends_one_burst_with_one_reload(gaps: list[float]) -> None:
    expected = 1 + sum(gap > DEBOUNCE_SECONDS for gap in gaps)

    async def load() -> Loaded[Any]:
        return _loaded(build(TABLES[Tier.ORCHESTRATOR].config_class, {}))

    async def main() -> None:
        reloader = ConfigReloader(ConfigHolder(build(TABLES[Tier.ORCHESTRATOR].config_class, {})), load)
        async with trio.open_nursery() as nursery:
            await nursery.start(reloader.run)
            reloader.trigger_reload("http")
            for gap in gaps:
                await trio.sleep(gap)
                reloader.trigger_reload("http")
            await trio.sleep(DEBOUNCE_SECONDS * 4)
            nursery.cancel_scope.cancel()
        assert reloader.completed == expected
        assert reloader.counts["http", "attempted"] == expected

    run_with_mock_clock(main)


@pytest.mark.feature("OPS-03", "CFG-07", "CFG-08")
@given(st.data(), st.lists(st.booleans(), min_size=1, max_size=8))
def test_invalid_configs_leave_the_current_one_and_restart_fields_never_move(
    data: st.DataObject, valid: list[bool]
) -> None:
    initial = data.draw(configs(Tier.ORCHESTRATOR))
    candidates = [data.draw(configs(Tier.ORCHESTRATOR)) for _ in valid]
    restart_attrs = [a for a in TABLES[Tier.ORCHESTRATOR].leaves if is_restart_required(type(initial), a)]
    queue = list(zip(valid, candidates, strict=True))

    async def load() -> Loaded[Any]:
        ok, candidate = queue.pop(0)
        if not ok:
            raise ConfigError([Problem("KICI_PORT", "expected an integer")])
        return _loaded(candidate)

    async def main() -> None:
        holder = ConfigHolder(initial)
        reloader = ConfigReloader(holder, load)
        for ok, candidate in zip(valid, candidates, strict=True):
            before, version = holder.current, holder.version
            result = await reloader.execute_reload("cli")
            assert result.success is ok
            if ok:
                assert holder.version == version + 1
                assert holder.current == plan_reload(before, candidate).apply
            else:
                assert holder.current is before
                assert holder.version == version
                assert result.errors == ("KICI_PORT: expected an integer",)
            for attr in restart_attrs:
                assert get_leaf(holder.current, attr) == get_leaf(initial, attr)

    trio.run(main)


@pytest.mark.feature("OPS-03", "CFG-07")
@given(st.integers(1, 6))
def test_a_reload_during_a_reload_is_refused(extra: int) -> None:
    gate = trio.Event()

    async def load() -> Loaded[Any]:
        await gate.wait()
        return _loaded(build(TABLES[Tier.ORCHESTRATOR].config_class, {}))

    async def main() -> None:
        reloader = ConfigReloader(ConfigHolder(build(TABLES[Tier.ORCHESTRATOR].config_class, {})), load)
        results = []

        async def one() -> None:
            results.append(await reloader.execute_reload("http"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one)
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(extra):
                refused = await reloader.execute_reload("cli")
                assert (refused.success, refused.errors) == (False, (IN_PROGRESS,))
            gate.set()
        assert [r.success for r in results] == [True]
        assert reloader.completed == 1

    run_with_mock_clock(main)
