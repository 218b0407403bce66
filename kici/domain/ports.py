"""Ports of the domain: what the services need from the outside world, as ``typing.Protocol``s.

``Sandbox`` (ISO-01, D7) turns "run this command over that workspace with this env" into a concrete
launch plan. It only *plans*: spawning, IPC and the abort ladder live in
``kici.services.runner_client`` so every adapter gets them for free and an adapter stays a pure
function of its spec plus a few host facts (which system directories exist). Adapters:
``kici.adapters.sandbox.bwrap`` (the default where bubblewrap exists) and
``kici.adapters.sandbox.process`` (no isolation; only when chosen explicitly).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal, Protocol

import attrs

NetworkMode = Literal["isolated", "host"]


class InvalidSandboxSpecError(ValueError):
    """A spec that no adapter could honour (empty argv, relative workspace, bad network mode)."""


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise InvalidSandboxSpecError("expected a sequence of strings, got a single string")
    return tuple(str(v) for v in value)


def _int_tuple(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in value)


def _frozen_env(value: Mapping[str, str]) -> Mapping[str, str]:
    return dict(value)


def _check_argv(_: object, __: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    if not value:
        raise InvalidSandboxSpecError("argv must not be empty")


def _check_absolute(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.startswith("/"):
        raise InvalidSandboxSpecError(f"{attribute.name} must be an absolute path, got {value!r}")


def _check_paths(_: object, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
    for path in value:
        if not path.startswith("/"):
            raise InvalidSandboxSpecError(f"{attribute.name} entries must be absolute, got {path!r}")


def _check_network(_: object, __: attrs.Attribute[str], value: str) -> None:
    if value not in ("isolated", "host"):
        raise InvalidSandboxSpecError(f"network must be 'isolated' or 'host', got {value!r}")


def _check_fds(_: object, __: attrs.Attribute[tuple[int, ...]], value: tuple[int, ...]) -> None:
    for fd in value:
        if fd < 3:
            raise InvalidSandboxSpecError(f"pass_fds must not include stdio (got {fd})")


@attrs.frozen(kw_only=True)
class SandboxSpec:
    """What to run and over what.

    ``env`` is used verbatim: the caller has already applied the ISO-04 allowlist
    (``kici.domain.sandbox_env``), so an adapter can never leak its own environment by accident.
    ``read_only_paths`` are extra host paths made visible read-only at the same path inside (the Python
    prefix, the venv, the kici package directory, local ``file://`` repositories).
    """

    workspace: str = attrs.field(validator=_check_absolute)
    argv: tuple[str, ...] = attrs.field(converter=_str_tuple, validator=_check_argv)
    env: Mapping[str, str] = attrs.field(converter=_frozen_env, factory=dict)
    read_only_paths: tuple[str, ...] = attrs.field(converter=_str_tuple, default=(), validator=_check_paths)
    network: NetworkMode = attrs.field(default="isolated", validator=_check_network)
    pass_fds: tuple[int, ...] = attrs.field(converter=_int_tuple, default=(), validator=_check_fds)


@attrs.frozen(kw_only=True)
class LaunchPlan:
    """A ready-to-spawn process: the spawner always starts it in a new session (own process group)."""

    argv: tuple[str, ...] = attrs.field(converter=_str_tuple, validator=_check_argv)
    env: Mapping[str, str] = attrs.field(converter=_frozen_env, factory=dict)
    cwd: str = attrs.field(validator=_check_absolute)
    pass_fds: tuple[int, ...] = attrs.field(converter=_int_tuple, default=())


class Sandbox(Protocol):
    """A way to confine the workflow runner; see the module docstring."""

    @property
    def name(self) -> str: ...

    def workspace_inside(self, spec: SandboxSpec) -> str:
        """Where ``spec.workspace`` is visible to the command (``/workspace`` under bwrap)."""
        ...

    def plan(self, spec: SandboxSpec) -> LaunchPlan: ...


__all__ = ["InvalidSandboxSpecError", "LaunchPlan", "NetworkMode", "Sandbox", "SandboxSpec"]
