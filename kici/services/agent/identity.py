"""Who the agent says it is when it registers: its labels and the host facts of ``agent.register``.

Labels (20-protocol.md §5.2, 50 §8 SCL-02) are the user's labels plus automatic ones the agent derives
from its host, so a workflow can target ``runs_on="kici:os:linux"`` without anyone configuring it:

- ``kici:os:<os>``: ``linux``, ``darwin`` or ``windows`` (the reference agent's platform names);
- ``kici:arch:<arch>``: ``x64`` and also ``amd64`` on x86-64, ``arm64`` on 64-bit ARM, otherwise the
  reference agent's name (``ia32``, ``arm``) or the machine name lowercased;
- ``kici:host:<hostname>``, lowercased;
- ``kici:role:<role>`` per active role: ``KICI_ROLES`` unset means every role (``builder``,
  ``init-runner``), an empty list none, ``all`` every role (50 §8).

``kici:`` is reserved: a user label in that namespace is a typed error (the orchestrator only exempts
self-reported os/arch/host labels from the token's label scope, so a forged one would be refused there
anyway, with a less helpful message). Labels are sent normalised: lowercased, deduplicated, sorted.

`gather_host_facts` is the only I/O here (hostname, uname, memory, uid); everything else is a pure
function of `HostFacts` so tests can pin any host.
"""

from __future__ import annotations

import os
import platform
import pwd
import socket
from collections.abc import Iterable, Mapping
from typing import Final

import attrs

from kici import __version__
from kici.domain.labels import normalise
from kici.domain.protocol import AgentRegister, InFlightJob

RESERVED_PREFIX: Final = "kici:"
ROLES: Final = ("builder", "init-runner")
ALL_ROLES: Final = "all"

_OS_NAMES: Final = {"linux": "linux", "darwin": "darwin", "windows": "windows"}
_ARCH_LABELS: Final[Mapping[str, tuple[str, ...]]] = {
    "x86_64": ("x64", "amd64"),
    "amd64": ("x64", "amd64"),
    "aarch64": ("arm64",),
    "arm64": ("arm64",),
    "i386": ("ia32",),
    "i686": ("ia32",),
    "armv6l": ("arm",),
    "armv7l": ("arm",),
}
_BYTES_PER_MB: Final = 1024 * 1024


class InvalidIdentityError(ValueError):
    """A configured label or role the agent cannot register with."""


@attrs.frozen(kw_only=True)
class HostFacts:
    """What ``agent.register`` reports about the machine and the process."""

    hostname: str
    system: str
    machine: str
    os_release: str | None = None
    os_version: str | None = None
    total_memory_mb: float | None = None
    cpu_count: int | None = None
    python_version: str | None = None
    running_as_user: str | None = None
    running_as_uid: int | None = None
    version: str = __version__

    @property
    def os_name(self) -> str:
        """The reference agent's platform name (``linux``), or the system name lowercased."""
        system = self.system.lower()
        return _OS_NAMES.get(system, system)

    @property
    def arch_names(self) -> tuple[str, ...]:
        """Every ``kici:arch:`` name of the machine; the first is the one ``agent.register.arch`` carries."""
        machine = self.machine.lower()
        return _ARCH_LABELS.get(machine, (machine,))


def active_roles(roles: Iterable[str] | None) -> tuple[str, ...]:
    """The roles the agent takes: None (unset) or ``all`` means every role, an empty list none."""
    if roles is None:
        return ROLES
    wanted = [role.strip().lower() for role in roles if role.strip()]
    unknown = sorted({role for role in wanted if role not in (*ROLES, ALL_ROLES)})
    if unknown:
        raise InvalidIdentityError(
            f"unknown agent role(s) {', '.join(unknown)}; known roles: {', '.join((*ROLES, ALL_ROLES))}"
        )
    if ALL_ROLES in wanted:
        return ROLES
    return tuple(role for role in ROLES if role in wanted)


def automatic_labels(facts: HostFacts, roles: Iterable[str] | None = None) -> tuple[str, ...]:
    """The ``kici:`` labels the agent adds by itself (see the module docstring)."""
    labels = [f"kici:os:{facts.os_name}"]
    labels += [f"kici:arch:{arch}" for arch in facts.arch_names]
    if facts.hostname:
        labels.append(f"kici:host:{facts.hostname.lower()}")
    labels += [f"kici:role:{role}" for role in active_roles(roles)]
    return normalise(labels)


def check_user_labels(labels: Iterable[str]) -> tuple[str, ...]:
    """The configured labels, stripped; raises for empty names and for the reserved ``kici:`` namespace."""
    cleaned = tuple(label.strip() for label in labels)
    if any(not label for label in cleaned):
        raise InvalidIdentityError("labels must not be empty strings")
    reserved = sorted(label for label in cleaned if label.lower().startswith(RESERVED_PREFIX))
    if reserved:
        raise InvalidIdentityError(
            f"labels in the reserved kici: namespace cannot be configured: {', '.join(reserved)} "
            "(the agent adds kici:os, kici:arch, kici:host and kici:role labels by itself)"
        )
    return cleaned


def register_labels(
    user_labels: Iterable[str], facts: HostFacts, roles: Iterable[str] | None = None
) -> tuple[str, ...]:
    """User labels ∪ automatic labels, normalised: what ``agent.register.labels`` carries."""
    return normalise((*check_user_labels(user_labels), *automatic_labels(facts, roles)))


@attrs.frozen(kw_only=True)
class AgentIdentity:
    """Everything of ``agent.register`` that does not change between connections."""

    agent_id: str
    labels: tuple[str, ...]
    facts: HostFacts
    properties: Mapping[str, str | int | float | bool] = attrs.field(factory=dict, hash=False)

    def register_message(
        self, message_id: str, max_concurrency: int, in_flight: Iterable[InFlightJob]
    ) -> AgentRegister:
        jobs = list(in_flight)
        facts = self.facts
        return AgentRegister(
            message_id=message_id,
            agent_id=self.agent_id,
            labels=list(self.labels),
            max_concurrency=max_concurrency,
            platform=facts.os_name,
            arch=facts.arch_names[0],
            version=facts.version,
            in_flight_jobs=jobs or None,
            hostname=facts.hostname,
            os_release=facts.os_release,
            os_version=facts.os_version,
            total_memory_mb=facts.total_memory_mb,
            cpu_count=facts.cpu_count,
            python_version=facts.python_version,
            running_as_user=facts.running_as_user,
            running_as_uid=facts.running_as_uid,
            properties=dict(self.properties) or None,
        )


def _total_memory_mb() -> float | None:
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None
    if pages <= 0 or page_size <= 0:
        return None
    return round(pages * page_size / _BYTES_PER_MB)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def gather_host_facts() -> HostFacts:
    """The facts of this machine and process."""
    uid = os.geteuid()
    return HostFacts(
        hostname=socket.gethostname(),
        system=platform.system(),
        machine=platform.machine(),
        os_release=platform.release() or None,
        os_version=platform.version() or None,
        total_memory_mb=_total_memory_mb(),
        cpu_count=os.cpu_count(),
        python_version=platform.python_version(),
        running_as_user=_user_name(uid),
        running_as_uid=uid,
    )


__all__ = [
    "ALL_ROLES",
    "RESERVED_PREFIX",
    "ROLES",
    "AgentIdentity",
    "HostFacts",
    "InvalidIdentityError",
    "active_roles",
    "automatic_labels",
    "check_user_labels",
    "gather_host_facts",
    "register_labels",
]
