"""What a hot reload may change (OPS-03, CFG-08): everything except the restart-only settings.

A running process cannot move its listening port, switch databases, adopt another identity or
re-point its object store under live runs, so ``plan_reload`` keeps the old value of those leaves,
applies every other change, and lists the held-back ones for the log line
``Config fields changed but require restart to apply: [...]``.

Restart-only leaves of the orchestrator are the spec's four (``database.url``, ``server.port``, the
instance id and the whole ``storage`` group) plus three it is silent on, for the same reason: the
listening address (``server.host``), the data directory (it holds the embedded PostgreSQL and the
worker outbox) and the cluster role (it decides which subsystems exist at all, 50 §1). The agent has
no reload in the spec; should it get one, its connection identity, labels and roles (sent once at
registration), port and data directory are restart-only.

Structured sections (the orchestrator's ``sources:``) are reloadable: a changed section is listed
with the applied changes and the caller rebuilds what depends on it (the provider registry).
"""

from collections.abc import Mapping
from typing import Generic

import attrs

from kici.domain.config.layering import TABLES, TierTable
from kici.domain.config.schema import (
    AgentConfig,
    ConfigT,
    OrchestratorConfig,
    get_leaf,
    section_names,
    with_leaves,
)

RESTART_REQUIRED: Mapping[type, tuple[str, ...]] = {
    OrchestratorConfig: (
        "database.url",
        "server.host",
        "server.port",
        "cluster.instance_id",
        "storage",
        "paths.data_dir",
        "cluster.role",
    ),
    AgentConfig: (
        "connection.orchestrator_url",
        "connection.agent_id",
        "connection.token",
        "identity.labels",
        "identity.roles",
        "server.port",
        "paths.data_dir",
    ),
}
RESTART_MESSAGE = "Config fields changed but require restart to apply"


@attrs.frozen
class ReloadPlan(Generic[ConfigT]):
    """The config to swap in, and the YAML paths of what changes now and what waits for a restart."""

    apply: ConfigT
    restart_required_changed: tuple[str, ...] = ()
    applied_changes: tuple[str, ...] = ()

    @property
    def restart_message(self) -> str | None:
        if not self.restart_required_changed:
            return None
        return f"{RESTART_MESSAGE}: [{', '.join(self.restart_required_changed)}]"


def _table(config: OrchestratorConfig | AgentConfig) -> TierTable:
    return next(table for table in TABLES.values() if table.config_class is type(config))


def is_restart_required(cls: type, attr: str) -> bool:
    return any(attr == item or attr.startswith(f"{item}.") for item in RESTART_REQUIRED[cls])


def plan_reload(old: ConfigT, new: ConfigT) -> ReloadPlan[ConfigT]:
    """``new`` with every restart-only leaf put back to its ``old`` value, and what differed."""
    table = _table(old)
    names = {key.attr: key.yaml for key in table.keys}
    held: dict[str, object] = {}
    held_names: list[str] = []
    applied: list[str] = []
    for attr in table.leaves:
        before, after = get_leaf(old, attr), get_leaf(new, attr)
        if before == after:
            continue
        if is_restart_required(type(old), attr):
            held[attr] = before
            held_names.append(names.get(attr, attr))
        else:
            applied.append(names.get(attr, attr))
    for attr, yaml_key in section_names(type(old)).items():
        if getattr(old, attr) != getattr(new, attr):
            applied.append(yaml_key)
    return ReloadPlan(with_leaves(new, held), tuple(held_names), tuple(applied))
