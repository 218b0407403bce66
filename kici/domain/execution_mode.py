"""Which backend runs a job's steps (ISO-11, 40-security.md; phase 1 of 10 §4).

The first rule that applies wins:

1. the dispatch asks for a container (``jobConfig.container``: an image, or ``{image, env}``): container;
2. ``KICI_EXECUTION_MODE`` names a mode (``bare-metal``, ``container``, ``firecracker``);
3. ``KICI_SCALER_MANAGED=1``: firecracker (a scaler spawned this agent in a microVM);
4. bare-metal, its steps sandboxed (bubblewrap) exactly when ``KICI_SANDBOX`` is true.

The agent applies the rules twice: at startup without a dispatch (rules 2 to 4: the backend it builds
once), and for every job (rule 1 can only come from a dispatch). The sandbox flag shapes bare-metal
only: a container or a microVM is the isolation itself, so `ExecutionChoice.sandbox` is False there.

Choices where the spec is silent:

* ``KICI_SANDBOX`` defaults to true in kici (ARCHITECTURE.md: never run untrusted code unsandboxed
  unless configured; the reference default is false). The rules take the flag as configured.
* A container config wins even over ``KICI_EXECUTION_MODE=bare-metal``, as rule 1 precedes rule 2: a
  job that names an image expects to run in it, so an agent that cannot honour it fails the job rather
  than running it on the host.
* ``jobConfig.container`` must be a non-empty image string or an object with a non-empty ``image`` and
  an optional ``env`` of strings (the lock's shape, 00 §LockJob); anything else is a typed
  `InvalidContainerConfig`, never read as "no container".
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

import attrs

from kici.domain.config.schema import AgentConfig, ExecutionMode


class ModeSource(StrEnum):
    """Which rule chose the mode; its value names the setting, for error messages."""

    DISPATCH = "the job's container config"
    CONFIGURED = "KICI_EXECUTION_MODE"
    SCALER_MANAGED = "KICI_SCALER_MANAGED"
    DEFAULT = "the default"


class InvalidContainerConfig(ValueError):
    """``jobConfig.container`` has neither of its two shapes."""


@attrs.frozen(kw_only=True)
class ContainerRequest:
    """A job's container config: the image, and the environment it adds (sorted pairs)."""

    image: str
    env: tuple[tuple[str, str], ...] = ()


@attrs.frozen(kw_only=True)
class AgentExecution:
    """The agent's own inputs to the rules (2 to 4), as configured."""

    configured: ExecutionMode | None = None
    scaler_managed: bool = False
    sandbox: bool = True

    @classmethod
    def from_config(cls, config: AgentConfig) -> AgentExecution:
        return cls(
            configured=config.execution.mode,
            scaler_managed=config.scaler.managed,
            sandbox=config.execution.sandbox,
        )


@attrs.frozen(kw_only=True)
class ExecutionChoice:
    mode: ExecutionMode
    source: ModeSource
    sandbox: bool
    """Bare-metal steps run under bubblewrap; always False for container and firecracker."""

    def describe(self) -> str:
        """``container (the job's container config)``, ``bare-metal, sandboxed (the default)`` ..."""
        why = "KICI_SCALER_MANAGED=1" if self.source is ModeSource.SCALER_MANAGED else self.source.value
        if self.mode is not ExecutionMode.BARE_METAL:
            return f"{self.mode.value} ({why})"
        return f"bare-metal, {'sandboxed' if self.sandbox else 'unsandboxed'} ({why})"


def select_execution_mode(
    agent: AgentExecution, container: ContainerRequest | None = None
) -> ExecutionChoice:
    """The ISO-11 rules, first match wins (see the module docstring)."""
    if container is not None:
        return ExecutionChoice(mode=ExecutionMode.CONTAINER, source=ModeSource.DISPATCH, sandbox=False)
    if agent.configured is not None:
        mode, source = agent.configured, ModeSource.CONFIGURED
    elif agent.scaler_managed:
        mode, source = ExecutionMode.FIRECRACKER, ModeSource.SCALER_MANAGED
    else:
        mode, source = ExecutionMode.BARE_METAL, ModeSource.DEFAULT
    return ExecutionChoice(
        mode=mode, source=source, sandbox=mode is ExecutionMode.BARE_METAL and agent.sandbox
    )


def parse_container(value: object) -> ContainerRequest | None:
    """``jobConfig.container`` (absent or null: None); raises `InvalidContainerConfig`."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value:
            raise InvalidContainerConfig("jobConfig.container must name an image, got an empty string")
        return ContainerRequest(image=value)
    if not isinstance(value, Mapping):
        raise InvalidContainerConfig(
            f"jobConfig.container must be an image or an object with an image, got {type(value).__name__}"
        )
    image = value.get("image")
    if not isinstance(image, str) or not image:
        raise InvalidContainerConfig("jobConfig.container.image must be a non-empty string")
    env = value.get("env")
    if env is None:
        return ContainerRequest(image=image)
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise InvalidContainerConfig("jobConfig.container.env must map names to strings")
    return ContainerRequest(image=image, env=tuple(sorted(env.items())))


__all__ = [
    "AgentExecution",
    "ContainerRequest",
    "ExecutionChoice",
    "InvalidContainerConfig",
    "ModeSource",
    "parse_container",
    "select_execution_mode",
]
