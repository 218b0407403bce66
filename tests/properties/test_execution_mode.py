"""ISO-11: the execution-mode rules are a total, first-match-wins function of the dispatch's container
config and the agent's settings; ``jobConfig.container`` parses to a request or a typed error."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.config.schema import AgentConfig, AgentScalerConfig, ExecutionConfig, ExecutionMode
from kici.domain.execution_mode import (
    AgentExecution,
    ContainerRequest,
    InvalidContainerConfig,
    ModeSource,
    parse_container,
    select_execution_mode,
)
from tests.strategies.execution_mode import agent_executions, container_like, images, valid_containers

pytestmark = pytest.mark.feature("ISO-11")

requests = st.builds(ContainerRequest, image=images)


@given(agent_executions, requests)
def test_rule_1_a_container_config_in_the_dispatch_always_wins(
    agent: AgentExecution, request: ContainerRequest
) -> None:
    choice = select_execution_mode(agent, request)
    assert (choice.mode, choice.source, choice.sandbox) == (
        ExecutionMode.CONTAINER,
        ModeSource.DISPATCH,
        False,
    )


@given(agent_executions, st.sampled_from(list(ExecutionMode)))
def test_rule_2_kici_execution_mode_wins_over_the_scaler_flag(
    agent: AgentExecution, mode: ExecutionMode
) -> None:
    choice = select_execution_mode(attrs.evolve(agent, configured=mode))
    assert (choice.mode, choice.source) == (mode, ModeSource.CONFIGURED)


@given(agent_executions)
def test_rule_3_a_scaler_managed_agent_without_a_mode_runs_firecracker(agent: AgentExecution) -> None:
    choice = select_execution_mode(attrs.evolve(agent, configured=None, scaler_managed=True))
    assert (choice.mode, choice.source, choice.sandbox) == (
        ExecutionMode.FIRECRACKER,
        ModeSource.SCALER_MANAGED,
        False,
    )


@given(agent_executions)
def test_rule_4_otherwise_bare_metal_sandboxed_as_kici_sandbox_says(agent: AgentExecution) -> None:
    plain = attrs.evolve(agent, configured=None, scaler_managed=False)
    choice = select_execution_mode(plain)
    assert (choice.mode, choice.source, choice.sandbox) == (
        ExecutionMode.BARE_METAL,
        ModeSource.DEFAULT,
        plain.sandbox,
    )


@given(agent_executions, st.none() | requests)
def test_the_sandbox_flag_shapes_bare_metal_only_and_never_picks_the_mode(
    agent: AgentExecution, request: ContainerRequest | None
) -> None:
    choice = select_execution_mode(agent, request)
    flipped = select_execution_mode(attrs.evolve(agent, sandbox=not agent.sandbox), request)
    assert (choice.mode, choice.source) == (flipped.mode, flipped.source)
    assert choice.sandbox == (choice.mode is ExecutionMode.BARE_METAL and agent.sandbox)


@given(agent_executions, st.none() | requests)
def test_the_description_names_the_mode_and_the_rule(
    agent: AgentExecution, request: ContainerRequest | None
) -> None:
    choice = select_execution_mode(agent, request)
    text = choice.describe()
    assert text.startswith(choice.mode.value)
    assert (
        choice.source.value if choice.source is not ModeSource.SCALER_MANAGED else "KICI_SCALER_MANAGED=1"
    ) in text


@given(valid_containers)
def test_both_container_shapes_parse_to_a_request(value: Any) -> None:
    request = parse_container(value)
    assert request is not None
    if isinstance(value, str):
        assert request == ContainerRequest(image=value)
    else:
        assert request.image == value["image"]
        assert dict(request.env) == value.get("env", {})
        assert list(request.env) == sorted(request.env)


@given(container_like)
def test_any_other_value_is_a_typed_error_never_no_container(value: Any) -> None:
    try:
        request = parse_container(value)
    except InvalidContainerConfig:
        return
    assert (request is None) == (value is None)


def test_the_agent_inputs_come_from_its_config() -> None:
    config = AgentConfig(
        execution=ExecutionConfig(mode=ExecutionMode.FIRECRACKER, sandbox=False),
        scaler=AgentScalerConfig(managed=True),
    )
    assert AgentExecution.from_config(config) == AgentExecution(
        configured=ExecutionMode.FIRECRACKER, scaler_managed=True, sandbox=False
    )
    assert AgentExecution.from_config(AgentConfig()) == AgentExecution()
