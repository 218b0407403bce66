"""The register gates and token parsing of the agent hub (PRO-08, ISO-14)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

import pytest

from kici.domain.protocol import AgentRegister, CloseCode
from kici.domain.store import AgentTokenRecord, AgentType
from kici.services.agent.identity import HostFacts, register_labels
from kici.services.agent.link import AUTH_FIX
from kici.services.orchestrator.agent_hub import (
    PRIVILEGED_ROOT_LABEL,
    TOKEN_STATE_REASON,
    RegistrationRefused,
    mandatory_labels,
    register_gates,
    token_hash,
    token_labels,
)

TOKEN_ID = uuid.uuid4()


def token(
    labels: str | None = None,
    *,
    mandatory: str | None = None,
    agent_type: AgentType = AgentType.STATIC,
    created_by: str = "admin",
) -> AgentTokenRecord:
    return AgentTokenRecord(
        token_id=TOKEN_ID,
        token_hash="0" * 64,
        token_prefix="kat_00000000",
        agent_type=agent_type,
        created_by=created_by,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        labels=labels,
        mandatory_labels=mandatory,
    )


def register(labels: list[str], *, agent_id: str = "a1", uid: int | None = None) -> AgentRegister:
    return AgentRegister(message_id="m", agent_id=agent_id, labels=labels, running_as_uid=uid)


def refused(
    register_: AgentRegister, token_: AgentTokenRecord | None, holder: uuid.UUID | None = None
) -> RegistrationRefused:
    with pytest.raises(RegistrationRefused) as info:
        register_gates(register_, token_, holder)
    return info.value


@pytest.mark.feature("PRO-08")
def test_tokens_are_looked_up_by_their_sha256_hex() -> None:
    secret = "kat_" + "ab" * 32
    assert token_hash(secret) == hashlib.sha256(secret.encode()).hexdigest()


@pytest.mark.feature("PRO-08")
def test_wire_labels_must_be_within_the_token_scope_except_self_reported_ones() -> None:
    scoped = token('["linux", "GPU"]')
    register_gates(
        register(["Linux", "gpu", "kici:os:linux", "kici:arch:x64", "kici:host:box"]), scoped, None
    )
    failure = refused(register(["linux", "docker", "kici:role:ci"]), scoped)
    assert failure.code == CloseCode.AGENT_AUTH_FAILED
    assert failure.reason == "Labels not authorized by token: docker, kici:role:ci"
    register_gates(register(["anything"]), token(None), None)
    register_gates(register(["anything"]), None, None)


@pytest.mark.feature("PRO-08")
@pytest.mark.parametrize("column", ['{"a": 1}', "not json", "[1, 2]"])
def test_a_malformed_token_label_column_refuses_with_auth_failure(column: str) -> None:
    failure = refused(register(["linux"]), token(column))
    assert (failure.code, failure.reason) == (CloseCode.AGENT_AUTH_FAILED, TOKEN_STATE_REASON)
    assert failure.reply is not None


@pytest.mark.feature("PRO-08")
def test_an_ephemeral_token_binds_the_agent_id() -> None:
    ephemeral = token(agent_type=AgentType.EPHEMERAL, created_by="runner-1")
    register_gates(register([], agent_id="runner-1"), ephemeral, None)
    assert refused(register([], agent_id="runner-2"), ephemeral).code == CloseCode.AGENT_AUTH_FAILED
    bootstrap = token(agent_type=AgentType.EPHEMERAL, created_by="bootstrap:runner-3")
    register_gates(register([], agent_id="runner-3"), bootstrap, None)


@pytest.mark.feature("PRO-08")
def test_an_agent_id_held_by_another_token_is_refused_4003() -> None:
    failure = refused(register(["linux"]), token(), holder=uuid.uuid4())
    assert failure.code == CloseCode.INVALID_MESSAGE
    register_gates(register(["linux"]), token(), TOKEN_ID)


@pytest.mark.feature("ISO-14", "PRO-08")
def test_the_privileged_root_label_needs_uid_zero_and_taints_the_agent() -> None:
    labels = ["linux", PRIVILEGED_ROOT_LABEL]
    assert refused(register(labels, uid=1000), None).code == CloseCode.AGENT_AUTH_FAILED
    assert refused(register(labels), None).code == CloseCode.AGENT_AUTH_FAILED
    register_gates(register(labels, uid=0), None, None)
    assert mandatory_labels(None, labels) == (PRIVILEGED_ROOT_LABEL,)
    assert mandatory_labels(token(mandatory='["GPU"]'), ["linux"]) == ("gpu",)
    assert mandatory_labels(token(mandatory="{broken"), ["linux"]) == ()


@pytest.mark.feature("PRO-08")
def test_token_labels_are_normalised_and_null_means_unscoped() -> None:
    assert token_labels(token('["B", "a"]')) == {"a", "b"}
    assert token_labels(token(None)) is None
    assert token_labels(None) is None


@pytest.mark.feature("PRO-08")
def test_a_scoped_token_grants_the_automatic_role_labels_only_by_listing_them() -> None:
    """20 §5.2 gate 1 exempts kici:os/arch/host only: a role routes privileged work, so the token grants
    it. An agent on a token without roles registers with KICI_ROLES set to what the token lists."""
    facts = HostFacts(hostname="Build-1", system="Linux", machine="x86_64")
    every_role = register_labels(["linux"], facts)
    assert {"kici:role:builder", "kici:role:init-runner"} <= set(every_role)
    failure = refused(register(list(every_role)), token('["linux"]'))
    assert failure.reason == "Labels not authorized by token: kici:role:builder, kici:role:init-runner"
    register_gates(
        register(list(every_role)), token('["linux", "kici:role:builder", "kici:role:init-runner"]'), None
    )
    no_roles = register_labels(["linux"], facts, roles=())
    register_gates(register(list(no_roles)), token('["linux"]'), None)
    builder = register_labels(["linux"], facts, roles=("builder",))
    register_gates(register(list(builder)), token('["linux", "kici:role:builder"]'), None)
    assert "KICI_ROLES" in AUTH_FIX
