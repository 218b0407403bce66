"""Hypothesis strategies for the ISO-11 execution-mode rules: agent inputs and ``jobConfig.container``."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from kici.domain.config.schema import ExecutionMode
from kici.domain.execution_mode import AgentExecution

images = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=30)
env_maps = st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4)

agent_executions = st.builds(
    AgentExecution,
    configured=st.none() | st.sampled_from(list(ExecutionMode)),
    scaler_managed=st.booleans(),
    sandbox=st.booleans(),
)

valid_containers: st.SearchStrategy[Any] = images | st.fixed_dictionaries(
    {"image": images}, optional={"env": env_maps}
)
"""Both shapes of a valid ``jobConfig.container``."""

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
"""Anything a decoded ``jobConfig`` value can be, including ``{"image": ...}`` look-alikes."""

container_like: st.SearchStrategy[Any] = json_values | st.fixed_dictionaries(
    {"image": json_values}, optional={"env": json_values}
)
