"""The agent's registration identity: automatic ``kici:`` labels, roles, the reserved namespace and the
host facts of ``agent.register`` (20-protocol.md §5.2, 50 §8 SCL-02, OPS-04)."""

from __future__ import annotations

import os
import platform

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.protocol import Direction, InFlightJob, decode, encode
from kici.services.agent.identity import (
    ROLES,
    AgentIdentity,
    HostFacts,
    InvalidIdentityError,
    active_roles,
    automatic_labels,
    check_user_labels,
    gather_host_facts,
    register_labels,
)

LINUX_X64 = HostFacts(hostname="CI-Box-7", system="Linux", machine="x86_64")

pytestmark = pytest.mark.feature("PRO-08", "OPS-04")


def test_linux_on_x86_64_gets_os_both_arch_names_host_and_every_role() -> None:
    assert automatic_labels(LINUX_X64) == (
        "kici:arch:amd64",
        "kici:arch:x64",
        "kici:host:ci-box-7",
        "kici:os:linux",
        "kici:role:builder",
        "kici:role:init-runner",
    )


@pytest.mark.parametrize(
    ("system", "machine", "os_label", "arch_labels"),
    [
        ("Linux", "aarch64", "kici:os:linux", ["kici:arch:arm64"]),
        ("Darwin", "arm64", "kici:os:darwin", ["kici:arch:arm64"]),
        ("Linux", "AMD64", "kici:os:linux", ["kici:arch:amd64", "kici:arch:x64"]),
        ("Linux", "i686", "kici:os:linux", ["kici:arch:ia32"]),
        ("Linux", "armv7l", "kici:os:linux", ["kici:arch:arm"]),
        ("Linux", "riscv64", "kici:os:linux", ["kici:arch:riscv64"]),
        ("FreeBSD", "s390x", "kici:os:freebsd", ["kici:arch:s390x"]),
    ],
)
def test_os_and_arch_names(system: str, machine: str, os_label: str, arch_labels: list[str]) -> None:
    labels = automatic_labels(HostFacts(hostname="h", system=system, machine=machine), roles=[])
    assert os_label in labels
    assert [label for label in labels if label.startswith("kici:arch:")] == arch_labels


def test_the_register_arch_is_the_reference_name() -> None:
    assert LINUX_X64.arch_names[0] == "x64"
    assert HostFacts(hostname="h", system="Linux", machine="aarch64").arch_names[0] == "arm64"


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        (None, ROLES),
        ([], ()),
        (["all"], ROLES),
        (["builder"], ("builder",)),
        (["Init-Runner", " builder "], ROLES),
        (["", "init-runner"], ("init-runner",)),
    ],
)
def test_roles_unset_means_all_and_empty_means_none(
    roles: list[str] | None, expected: tuple[str, ...]
) -> None:
    assert active_roles(roles) == expected


def test_an_unknown_role_is_a_typed_error() -> None:
    with pytest.raises(InvalidIdentityError, match="unknown agent role"):
        active_roles(["deployer"])


def test_user_labels_in_the_kici_namespace_are_refused() -> None:
    with pytest.raises(
        InvalidIdentityError, match=r"reserved kici: namespace cannot be configured: KICI:os:mac"
    ):
        register_labels(["linux", "KICI:os:mac"], LINUX_X64)


def test_an_empty_label_is_refused() -> None:
    with pytest.raises(InvalidIdentityError, match="must not be empty"):
        check_user_labels(["linux", "  "])


def test_register_labels_are_normalised_user_plus_automatic() -> None:
    labels = register_labels(["Linux", "gpu", "linux "], LINUX_X64, roles=[])
    assert labels == (
        "gpu",
        "kici:arch:amd64",
        "kici:arch:x64",
        "kici:host:ci-box-7",
        "kici:os:linux",
        "linux",
    )


@given(
    st.lists(
        st.from_regex(r"[a-z][a-z0-9:._-]{0,15}", fullmatch=True).filter(lambda s: not s.startswith("kici:"))
    ),
    st.sampled_from(["x86_64", "aarch64", "armv7l", "ppc64le"]),
    st.one_of(st.none(), st.lists(st.sampled_from(["builder", "init-runner", "all"]))),
)
def test_register_labels_keep_every_user_label_and_one_os(
    user: list[str], machine: str, roles: list[str] | None
) -> None:
    facts = HostFacts(hostname="node", system="Linux", machine=machine)
    labels = register_labels(user, facts, roles)
    assert list(labels) == sorted(set(labels))
    assert set(user) <= set(labels)
    assert [label for label in labels if label.startswith("kici:os:")] == ["kici:os:linux"]
    assert "kici:host:node" in labels
    assert {label for label in labels if label.startswith("kici:")} == set(automatic_labels(facts, roles))


def test_the_register_message_carries_the_host_facts_and_in_flight_jobs() -> None:
    facts = HostFacts(
        hostname="ci-1",
        system="Linux",
        machine="x86_64",
        os_release="6.1",
        os_version="#1",
        total_memory_mb=512,
        cpu_count=4,
        python_version="3.11.7",
        running_as_user="kici",
        running_as_uid=998,
        version="9.9.9",
    )
    identity = AgentIdentity(
        agent_id="ci-1-abcd", labels=register_labels(["linux"], facts), facts=facts, properties={"zone": "a"}
    )
    message = identity.register_message("m-1", 2, [InFlightJob(job_id="j", run_id="r")])
    assert decode(Direction.AGENT_TO_ORCH, encode(message)) == message
    wire = encode(message)
    for key in (
        "maxConcurrency",
        "inFlightJobs",
        "runningAsUid",
        "pythonVersion",
        "totalMemoryMb",
        "osRelease",
    ):
        assert f'"{key}"' in wire
    assert message.platform == "linux"
    assert message.arch == "x64"
    assert message.version == "9.9.9"
    assert message.max_concurrency == 2
    assert message.properties == {"zone": "a"}
    empty = identity.register_message("m-2", 1, [])
    assert empty.in_flight_jobs is None
    assert "inFlightJobs" not in encode(empty)


def test_gathered_facts_describe_this_process() -> None:
    facts = gather_host_facts()
    assert facts.hostname
    assert facts.running_as_uid == os.geteuid()
    assert facts.python_version == platform.python_version()
    assert facts.cpu_count == os.cpu_count()
    assert facts.total_memory_mb is None or facts.total_memory_mb > 0
    assert f"kici:os:{facts.os_name}" in automatic_labels(facts)
