"""The Platform's pure rules: org names, API keys, routing-key ownership, what the relay lifts out of the
request headers and how a relay's end maps to HTTP. Examples plus hypothesis properties."""

from __future__ import annotations

import hashlib
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.domain.protocol import WebhookAck, WebhookResult
from kici.domain.tenancy import (
    API_KEY_PREFIX,
    NOT_OWNED_REASON,
    BadRoutingKeyError,
    DeliveryStatus,
    InvalidOrgNameError,
    api_key_hash,
    api_key_prefix,
    check_org_name,
    check_routing_key,
    is_api_key,
    judge_sources,
    new_api_key,
)
from kici.services.platform.hub import RelayOutcome, RelayResult
from kici.services.platform.ingress import (
    NOT_RELAYED,
    REDACTED,
    SIGNATURE_HEADERS,
    answer_for,
    lift_headers,
    redact_headers,
)

ORGS = ("org-a", "org-b")
VALID_KEYS = ("github:1", "github:2", "generic:acme:hooks", "remote:acme", "gitlab:default")
INVALID_KEYS = ("github", "github:", "generic:acme", "nonsense", "github:a b")


@pytest.mark.feature("PRO-20")
@pytest.mark.parametrize("name", ["acme", "a", "acme-corp", "x1-2-3", "a" * 63])
def test_valid_org_names(name: str) -> None:
    assert check_org_name(name) == name


@pytest.mark.feature("PRO-20")
@pytest.mark.parametrize("name", ["", "Acme", "-acme", "acme-", "ac me", "a" * 64, "acme_corp", "acmé"])
def test_invalid_org_names(name: str) -> None:
    with pytest.raises(InvalidOrgNameError):
        check_org_name(name)


@pytest.mark.feature("PRO-20")
def test_api_keys_have_a_recognisable_shape_and_are_stored_as_sha256() -> None:
    key = new_api_key(bytes(range(32)))
    assert key == API_KEY_PREFIX + bytes(range(32)).hex()
    assert is_api_key(key)
    assert not is_api_key(key[:-1])
    assert api_key_hash(key) == hashlib.sha256(key.encode()).hexdigest()
    assert api_key_prefix(key) == key[:12]
    with pytest.raises(ValueError, match="32 random bytes"):
        new_api_key(b"short")


@pytest.mark.feature("PRO-20")
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_distinct_random_bytes_give_distinct_keys_and_hashes(a: bytes, b: bytes) -> None:
    assert (new_api_key(a) == new_api_key(b)) is (a == b)
    assert (api_key_hash(new_api_key(a)) == api_key_hash(new_api_key(b))) is (a == b)
    assert new_api_key(a) not in api_key_hash(new_api_key(a))


@pytest.mark.feature("PRO-20")
def test_routing_keys_must_have_one_of_the_four_forms() -> None:
    for key in VALID_KEYS:
        assert check_routing_key(key) == key
    for key in INVALID_KEYS:
        with pytest.raises(BadRoutingKeyError):
            check_routing_key(key)


@pytest.mark.feature("PRO-20")
def test_judge_sources_example() -> None:
    owners = {"github:1": "org-a", "github:2": "org-b"}
    verdicts = judge_sources("org-a", ["github:1", "github:2", "github:3", "bad", "github:1"], owners)
    assert verdicts.accepted == ("github:1",)
    assert verdicts.rejected[:2] == (("github:2", NOT_OWNED_REASON), ("github:3", NOT_OWNED_REASON))
    assert verdicts.rejected[2][0] == "bad"
    assert verdicts.rejected[2][1].startswith("invalid routing key")


@pytest.mark.feature("PRO-20")
@given(
    requested=st.lists(st.sampled_from(VALID_KEYS + INVALID_KEYS), max_size=12),
    owners=st.dictionaries(st.sampled_from(VALID_KEYS + INVALID_KEYS), st.sampled_from(ORGS), max_size=10),
    org=st.sampled_from(ORGS),
)
def test_judge_sources_accepts_exactly_the_owned_well_formed_keys(
    requested: list[str], owners: dict[str, str], org: str
) -> None:
    verdicts = judge_sources(org, requested, owners)
    judged = [*verdicts.accepted, *(key for key, _ in verdicts.rejected)]
    assert sorted(judged) == sorted(set(requested))
    assert list(verdicts.accepted) == [k for k in dict.fromkeys(requested) if k in verdicts.accepted]
    for key in verdicts.accepted:
        assert owners.get(key) == org
        assert key in VALID_KEYS
    for key, reason in verdicts.rejected:
        assert owners.get(key) != org or key in INVALID_KEYS
        assert reason == NOT_OWNED_REASON or key in INVALID_KEYS
        assert org not in reason


_HEADER_NAMES = st.sampled_from(
    [
        "X-GitHub-Event",
        "x-github-delivery",
        "X-Hub-Signature-256",
        "X-Gitea-Signature",
        "x-signature-256",
        "Host",
        "Content-Length",
        "Cookie",
        "Connection",
        "Authorization",
        "X-Request-Id",
        "X-Event-Type",
        "Content-Type",
    ]
)
_HEADER_VALUES = st.text(alphabet=string.ascii_letters + string.digits + "=-_ ", min_size=1, max_size=20)


@pytest.mark.feature("PRO-21")
@given(st.dictionaries(_HEADER_NAMES, _HEADER_VALUES, max_size=10))
def test_lifted_headers_keep_everything_but_connection_headers_and_move_the_signature(
    raw: dict[str, str],
) -> None:
    lifted = lift_headers(raw)
    lower = {name.lower(): value for name, value in raw.items() if name.lower() not in NOT_RELAYED}
    relayed = dict(lifted.headers)
    if lifted.signature_name is not None:
        assert lifted.signature_name in SIGNATURE_HEADERS
        assert lifted.signature_name not in relayed
        relayed[lifted.signature_name] = lifted.signature_value or ""
    assert relayed == lower
    present = [name for name in SIGNATURE_HEADERS if lower.get(name)]
    assert lifted.signature_name == (present[0] if present else None)
    assert all(name == name.lower() for name in lifted.headers)


@pytest.mark.feature("PRO-21")
def test_event_delivery_and_redaction() -> None:
    lifted = lift_headers(
        {
            "X-Gitea-Event": "push",
            "X-Gitea-Delivery": "g-1",
            "X-Request-Id": "r-1",
            "X-Gitlab-Token": "tok",
            "Authorization": "Bearer abc",
            "X-Api-Key": "k",
        }
    )
    assert (lifted.event, lifted.delivery_id) == ("push", "g-1")
    assert (lifted.signature_name, lifted.signature_value) == ("x-gitlab-token", "tok")
    stored = redact_headers(lifted.headers)
    assert stored["authorization"] == REDACTED
    assert stored["x-api-key"] == REDACTED
    assert stored["x-gitea-event"] == "push"
    bare = lift_headers({"Content-Type": "text/plain"})
    assert (bare.event, bare.delivery_id, bare.signature_name) == ("", None, None)


def _ack(result: WebhookResult | None) -> WebhookAck:
    return WebhookAck(message_id="m", delivery_id="d", result=result, reason="why")


@pytest.mark.feature("PRO-21")
@pytest.mark.parametrize(
    ("result", "outcome", "status", "http"),
    [
        (
            RelayResult(outcome=RelayOutcome.ANSWERED, ack=_ack(WebhookResult.ACCEPTED)),
            None,
            DeliveryStatus.ACCEPTED,
            200,
        ),
        (RelayResult(outcome=RelayOutcome.ANSWERED, ack=_ack(None)), None, DeliveryStatus.ACCEPTED, 200),
        (
            RelayResult(outcome=RelayOutcome.ANSWERED, ack=_ack(WebhookResult.REJECTED_SIGNATURE)),
            None,
            DeliveryStatus.REJECTED_SIGNATURE,
            401,
        ),
        (
            RelayResult(outcome=RelayOutcome.ANSWERED, ack=_ack(WebhookResult.REJECTED_UNKNOWN_SOURCE)),
            None,
            DeliveryStatus.REJECTED_UNKNOWN_SOURCE,
            404,
        ),
        (
            RelayResult(outcome=RelayOutcome.ANSWERED, ack=_ack(WebhookResult.REJECTED_MISCONFIGURED)),
            None,
            DeliveryStatus.REJECTED_MISCONFIGURED,
            500,
        ),
        (RelayResult(outcome=RelayOutcome.TIMEOUT), "retry", DeliveryStatus.ACK_TIMEOUT, 503),
        (RelayResult(outcome=RelayOutcome.NO_ORCHESTRATOR), "retry", DeliveryStatus.NO_ORCHESTRATOR, 503),
    ],
)
def test_relay_ends_map_to_delivery_statuses_and_http(
    result: RelayResult, outcome: str | None, status: DeliveryStatus, http: int
) -> None:
    recorded, _reason, answer = answer_for(result, "d", retry_after_s=5)
    assert (recorded, answer.status) == (status, http)
    assert answer.body["deliveryId"] == "d"
    assert answer.body["accepted"] is (http == 200)
    assert ("retry-after" in answer.headers) is (outcome == "retry")
