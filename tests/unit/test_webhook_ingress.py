"""The direct-ingress decision table, step by step (HOOK-04), 30 §2."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest

from kici.domain.providers import WebhookNormalizer
from kici.domain.webhooks.ingress import (
    DIRECT_INGRESS_MAX_BYTES,
    Admitted,
    IngressRequest,
    IngressResponse,
    RateWindow,
    admit,
    classify,
    completed,
    failed,
    idempotency_key,
)
from kici.domain.webhooks.models import ProviderType
from kici.domain.webhooks.normalizers.generic import GenericNormalizer
from kici.domain.webhooks.normalizers.local import LocalNormalizer
from kici.domain.webhooks.normalizers.universal_git import UniversalGitNormalizer, parse_git_config
from kici.domain.webhooks.sources import GenericSource, SourceKind
from kici.domain.webhooks.verification import sign_body

pytestmark = pytest.mark.feature("HOOK-04")

SECRET = "ingress-secret"
SOURCE = GenericSource(
    org_id="org1",
    source_id="src1",
    name="alerts",
    verification_method="hmac_sha256",
    verification_config={"secret": SECRET},
    rate_limit_rpm=3,
)
BODY = json.dumps({"kind": "deploy", "id": 17}).encode()


def request(body: bytes = BODY, headers: dict[str, str] | None = None, **signed: Any) -> IngressRequest:
    base = {"X-Signature-256": sign_body(body, SECRET), "Content-Type": "application/json"}
    return IngressRequest(body=body, headers={**base, **(headers or {})}, **signed)


def run(
    source: GenericSource | None = SOURCE,
    req: IngressRequest | None = None,
    normalizer: WebhookNormalizer | None = None,
    window: RateWindow | None = None,
) -> tuple[IngressResponse | Admitted, RateWindow]:
    chosen = normalizer or (GenericNormalizer(source) if source is not None else LocalNormalizer())
    return admit(
        source,
        req or request(),
        chosen,
        window=window or RateWindow(),
        now_ms=1_000_000,
        fallback_id="uuid-1",
    )


def response(outcome: IngressResponse | Admitted) -> IngressResponse:
    assert isinstance(outcome, IngressResponse), outcome
    return outcome


def admitted(outcome: IngressResponse | Admitted) -> Admitted:
    assert isinstance(outcome, Admitted), outcome
    return outcome


def test_step_1_unknown_or_disabled_source() -> None:
    assert response(run(None)[0]).status == 404
    disabled = attrs.evolve(SOURCE, enabled=False)
    outcome = response(run(disabled)[0])
    assert (outcome.status, outcome.body["rejected"]) == (404, True)


def test_step_2_payload_too_large() -> None:
    small = attrs.evolve(SOURCE, max_payload_bytes=10)
    outcome = response(run(small)[0])
    assert (outcome.status, outcome.body["maxBytes"]) == (413, 10)
    huge = attrs.evolve(SOURCE, max_payload_bytes=DIRECT_INGRESS_MAX_BYTES * 2)
    big = response(run(huge, request(b"x" * (DIRECT_INGRESS_MAX_BYTES + 1)))[0])
    assert (big.status, big.body["maxBytes"]) == (413, DIRECT_INGRESS_MAX_BYTES)


def test_step_3_rate_limit_with_retry_after() -> None:
    window = RateWindow()
    for _ in range(3):
        outcome, window = run(window=window)
        admitted(outcome)
    limited, after = run(window=window)
    answer = response(limited)
    assert answer.status == 429
    assert answer.headers["retry-after"] == "60"
    assert after == window


def test_rejected_requests_before_the_rate_step_do_not_count() -> None:
    window = RateWindow()
    for _ in range(5):
        _, window = run(attrs.evolve(SOURCE, max_payload_bytes=1), window=window)
    assert window == RateWindow()


def test_step_4_unusable_verification_config() -> None:
    broken = attrs.evolve(SOURCE, verification_config="{not json")
    outcome = response(run(broken)[0])
    assert outcome.status == 500
    assert SECRET not in json.dumps(outcome.body)


def test_step_5_verification_failure() -> None:
    unsigned = IngressRequest(body=BODY, headers={"content-type": "application/json"})
    assert response(run(req=unsigned)[0]).status == 401
    allow = attrs.evolve(
        SOURCE, verification_method="ip_allowlist", verification_config={"allowlist": ["10.1.1.1"]}
    )
    assert response(run(allow, request(peer_ip="10.1.1.2"))[0]).status == 401
    forwarded = request(headers={"X-Forwarded-For": "10.1.1.1, 10.9.9.9"}, peer_ip="10.1.1.2")
    admitted(run(allow, forwarded)[0])


def test_step_6_idempotency_duplicates() -> None:
    ok = admitted(run(req=request(headers={"X-Idempotency-Key": "idem-1"}))[0])
    assert ok.idempotency_key == "idem-1"
    assert ok.delivery_id == "generic:org1:src1:idem-1"
    duplicate = response(classify(ok, idempotency_seen=True, delivery_seen=False))
    assert (duplicate.status, duplicate.body) == (200, {"accepted": True, "duplicate": True})


def test_idempotency_key_sources_in_order() -> None:
    configured = attrs.evolve(SOURCE, idempotency_header="X-Req", idempotency_path="$.id")
    headers = {"x-req": "h", "x-idempotency-key": "i", "x-delivery-id": "d"}
    assert idempotency_key(configured, headers, {"id": 17}) == "h"
    assert idempotency_key(configured, {"x-idempotency-key": "i"}, {"id": 17}) == "17"
    assert idempotency_key(configured, {"x-idempotency-key": "i"}, {}) == "i"
    assert idempotency_key(SOURCE, {"x-delivery-id": "d"}, None) == "d"
    assert idempotency_key(SOURCE, {}, {"id": 1}) is None


def test_step_7_generic_event_filter() -> None:
    filtered = attrs.evolve(SOURCE, allowed_events=("deploy",), event_type_path="$.kind")
    ok = admitted(run(filtered)[0])
    assert ok.event == "deploy"
    assert classify(ok, idempotency_seen=False, delivery_seen=False) is ok
    other = request(json.dumps({"kind": "rollback"}).encode())
    rejected = response(
        classify(admitted(run(filtered, other)[0]), idempotency_seen=False, delivery_seen=False)
    )
    assert (rejected.status, rejected.body) == (200, {"accepted": True, "status": "filtered"})


def test_step_7_local_requires_json_and_an_event_type() -> None:
    local = GenericSource(org_id="org1", source_id="loc", name="local", kind=SourceKind.LOCAL)
    normalizer = LocalNormalizer()
    not_json = IngressRequest(body=b"not json", headers={"x-event-type": "push"})
    outcome = admitted(run(local, not_json, normalizer)[0])
    assert response(classify(outcome, idempotency_seen=False, delivery_seen=False)).status == 400
    array = IngressRequest(body=b"[1]", headers={"x-event-type": "push"})
    assert (
        response(
            classify(admitted(run(local, array, normalizer)[0]), idempotency_seen=False, delivery_seen=False)
        ).status
        == 400
    )
    no_event = IngressRequest(body=b"{}", headers={})
    assert (
        response(
            classify(
                admitted(run(local, no_event, normalizer)[0]), idempotency_seen=False, delivery_seen=False
            )
        ).status
        == 400
    )
    good = admitted(
        run(
            local,
            IngressRequest(body=b'{"ref": "refs/heads/main"}', headers={"x-event-type": "push"}),
            normalizer,
        )[0]
    )
    info = good.webhook_info("req-1")
    assert (info.event, info.provider, info.payload, info.request_id) == (
        "push",
        ProviderType.LOCAL,
        {"ref": "refs/heads/main"},
        "req-1",
    )


def test_step_7_idempotency_duplicate_wins_over_filtering() -> None:
    filtered = attrs.evolve(SOURCE, allowed_events=("other",))
    outcome = admitted(run(filtered, request(headers={"x-idempotency-key": "k"}))[0])
    assert response(classify(outcome, idempotency_seen=True, delivery_seen=False)).body["duplicate"] is True


def test_universal_git_uses_its_event_header() -> None:
    forge = attrs.evolve(SOURCE, kind=SourceKind.UNIVERSAL_GIT, allowed_events=("push",))
    config = parse_git_config({"preset": "gitea", "gitUrlTemplate": "https://g/{repo}.git"})
    normalizer = UniversalGitNormalizer(forge, config)
    push = admitted(
        run(forge, request(headers={"X-Gitea-Event": "push", "X-Gitea-Delivery": "gd-1"}), normalizer)[0]
    )
    assert (push.event, push.delivery_id) == ("push", "generic:org1:src1:gd-1")
    info = push.webhook_info()
    assert info.provider is ProviderType.GENERIC
    missing = admitted(run(forge, request(), normalizer)[0])
    assert (
        response(classify(missing, idempotency_seen=False, delivery_seen=False)).body["status"] == "filtered"
    )


def test_step_8_delivery_dedup_and_fallback_id() -> None:
    ok = admitted(run()[0])
    assert ok.delivery_id == "generic:org1:src1:uuid-1"
    duplicate = response(classify(ok, idempotency_seen=False, delivery_seen=True))
    assert duplicate.body == {"accepted": True, "duplicate": True}
    extracted = admitted(run(req=request(headers={"x-request-id": "req-9"}))[0])
    assert extracted.delivery_id == "generic:org1:src1:req-9"


def test_step_9_answers() -> None:
    ok = admitted(run()[0])
    assert classify(ok, idempotency_seen=True, delivery_seen=False) is ok
    done = completed(ok)
    assert (done.status, done.body) == (202, {"accepted": True, "deliveryId": "generic:org1:src1:uuid-1"})
    assert failed(ok).status == 500
    info = ok.webhook_info()
    assert (info.routing_key, info.event, info.action) == ("generic:org1:src1", "default", None)
    assert info.payload == {"kind": "deploy", "id": 17}


def test_none_method_skips_verification() -> None:
    open_source = attrs.evolve(SOURCE, verification_method="none", verification_config=None)
    admitted(run(open_source, IngressRequest(body=b"plain text", headers={}))[0])
