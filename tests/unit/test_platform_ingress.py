"""``POST /webhooks/{provider}/{routing_key}`` end to end inside one process: HTTP in, chunked relay over a
real WebSocket to fake orchestrators, their verdict back out as the HTTP answer (PRO-21, HOOK-05, PRO-04).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator

import pytest
import trio

from kici.domain.protocol import WebhookRelayStart, WebhookResult
from kici.domain.relay import RELAY_CHUNK_BYTES
from kici.domain.tenancy import DeliveryStatus
from kici.domain.webhooks.verification import sign_body
from kici.services.platform.ingress import IngressSettings
from kici.testing.fake_orchestrator import ReceivedRelay, never_answer, source
from tests.unit.test_platform_hub import running_platform

SECRET = "relay-secret"
GITHUB_HEADERS = {"X-GitHub-Event": "push", "X-GitHub-Delivery": "d-1", "Content-Type": "application/json"}


def signed(body: bytes, **extra: str) -> dict[str, str]:
    return {**GITHUB_HEADERS, "X-Hub-Signature-256": sign_body(body, SECRET), **extra}


@pytest.mark.feature("PRO-21", "HOOK-05", "PRO-04")
async def test_a_large_payload_crosses_the_relay_in_chunks_byte_for_byte() -> None:
    body = os.urandom(5 * 1024 * 1024 + 123)
    async with running_platform() as platform:
        acme = await platform.tenant("acme", ["github:1"])
        async with platform.orchestrator(acme, "github:1") as orch:
            response = await platform.post(
                "github:1",
                body,
                signed(body, **{"X-Forwarded-For": "203.0.113.9, 10.0.0.1", "Cookie": "s=1"}),
            )
            assert response.status_code == 200
            assert response.json() == {"accepted": True, "deliveryId": "d-1"}
            (relay,) = orch.relays
        start = relay.start
        assert relay.body == body
        assert start.total_size == len(body)
        assert start.chunk_count == -(-len(body) // RELAY_CHUNK_BYTES)
        assert (start.routing_key, start.delivery_id, start.event, start.action) == (
            "github:1",
            "d-1",
            "push",
            None,
        )
        assert (start.signature_header_name, start.signature_header) == (
            "x-hub-signature-256",
            sign_body(body, SECRET),
        )
        assert start.client_ip == "203.0.113.9"
        assert start.headers["x-github-event"] == "push"
        assert "x-hub-signature-256" not in start.headers
        assert not {"cookie", "host", "content-length"} & set(start.headers)
        assert all(name == name.lower() for name in start.headers)
        (recorded,) = platform.store.deliveries
        assert (recorded.status, recorded.http_status, recorded.org_id) == (
            DeliveryStatus.ACCEPTED,
            200,
            acme.org.id,
        )
        assert (recorded.body_size, recorded.body_sha256) == (len(body), hashlib.sha256(body).hexdigest())
        assert recorded.connection_id == orch.connection_id


@pytest.mark.feature("PRO-21")
async def test_an_empty_body_is_one_empty_final_chunk() -> None:
    async with running_platform() as platform:
        acme = await platform.tenant("acme", ["github:1"])
        async with platform.orchestrator(acme, "github:1") as orch:
            response = await platform.post("github:1", b"", GITHUB_HEADERS)
            assert response.status_code == 200
            (relay,) = orch.relays
            assert (relay.body, relay.start.total_size, relay.start.chunk_count) == (b"", 0, 1)


@pytest.mark.feature("PRO-21")
async def test_no_orchestrator_connected_is_503_with_retry_after_and_the_delivery_is_recorded() -> None:
    body = b'{"ref": "refs/heads/main"}'
    async with running_platform() as platform:
        acme = await platform.tenant("acme", ["github:1"])
        response = await platform.post("github:1", body, signed(body, Authorization="Bearer hunter2"))
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        assert response.json()["accepted"] is False
        (recorded,) = await platform.store.list_deliveries(acme.org.id)
        assert (recorded.status, recorded.http_status, recorded.routing_key) == (
            DeliveryStatus.NO_ORCHESTRATOR,
            503,
            "github:1",
        )
        assert (recorded.delivery_id, recorded.event, recorded.provider) == ("d-1", "push", "github")
        assert (recorded.body_size, recorded.body_sha256) == (len(body), hashlib.sha256(body).hexdigest())
        assert recorded.headers["authorization"] == "[redacted]"
        assert "hunter2" not in str(recorded)


@pytest.mark.feature("PRO-21", "PRO-12")
async def test_no_ack_within_the_budget_is_503_and_recorded_as_a_timeout() -> None:
    settings = IngressSettings(max_body_bytes=1_000_000, ack_budget_s=0.3, retry_after_s=7)
    async with running_platform(ingress=settings) as platform:
        acme = await platform.tenant("acme", ["github:1"])
        async with platform.orchestrator(acme, "github:1", verdict=never_answer) as orch:
            started = trio.current_time()
            response = await platform.post("github:1", b"{}", GITHUB_HEADERS)
            assert trio.current_time() - started < 5
            assert response.status_code == 503
            assert response.headers["retry-after"] == "7"
            assert len(orch.relays) == 1
        (recorded,) = platform.store.deliveries
        assert recorded.status is DeliveryStatus.ACK_TIMEOUT


@pytest.mark.feature("PRO-21")
@pytest.mark.parametrize(
    ("result", "status", "recorded"),
    [
        (WebhookResult.ACCEPTED, 200, DeliveryStatus.ACCEPTED),
        (None, 200, DeliveryStatus.ACCEPTED),
        (WebhookResult.REJECTED_SIGNATURE, 401, DeliveryStatus.REJECTED_SIGNATURE),
        (WebhookResult.REJECTED_UNKNOWN_SOURCE, 404, DeliveryStatus.REJECTED_UNKNOWN_SOURCE),
        (WebhookResult.REJECTED_MISCONFIGURED, 500, DeliveryStatus.REJECTED_MISCONFIGURED),
    ],
)
async def test_the_orchestrators_verdict_becomes_the_http_status(
    result: WebhookResult | None, status: int, recorded: DeliveryStatus
) -> None:
    def verdict(_relay: ReceivedRelay) -> tuple[WebhookResult | None, str]:
        return result, "because"

    async with running_platform() as platform:
        acme = await platform.tenant("acme", ["github:1"])
        async with platform.orchestrator(acme, "github:1", verdict=verdict):
            response = await platform.post("github:1", b"{}", GITHUB_HEADERS)
        assert response.status_code == status
        body = response.json()
        assert body["accepted"] is (status == 200)
        assert body["deliveryId"] == "d-1"
        if status != 200:
            assert (body["result"], body["reason"]) == (recorded.value, "because")
        (delivery,) = platform.store.deliveries
        assert (delivery.status, delivery.http_status, delivery.reason) == (recorded, status, "because")


@pytest.mark.feature("PRO-21")
async def test_an_unknown_source_verdict_is_cached_until_the_key_is_registered_again() -> None:
    def unknown(_relay: ReceivedRelay) -> tuple[WebhookResult, str]:
        return WebhookResult.REJECTED_UNKNOWN_SOURCE, "no such source"

    async with running_platform() as platform:
        acme = await platform.tenant("acme", ["github:1"])
        async with platform.orchestrator(acme, "github:1", verdict=unknown) as orch:
            assert (await platform.post("github:1", b"{}", GITHUB_HEADERS)).status_code == 404
            assert (await platform.post("github:1", b"{}", GITHUB_HEADERS)).status_code == 404
            assert len(orch.relays) == 1
            await orch.register()
            assert (await platform.post("github:1", b"{}", GITHUB_HEADERS)).status_code == 404
            assert len(orch.relays) == 2
        statuses = [d.status for d in platform.store.deliveries]
        assert statuses == [DeliveryStatus.REJECTED_UNKNOWN_SOURCE] * 3


@pytest.mark.feature("PRO-21", "CLU-01")
async def test_webhooks_go_round_robin_to_the_orchestrators_of_a_routing_key() -> None:
    async with running_platform() as platform:
        acme = await platform.tenant("acme", ["github:1", "github:5"])
        async with (
            platform.orchestrator(acme, "github:1", "github:5") as first,
            platform.orchestrator(acme, "github:1") as second,
        ):
            for n in range(6):
                response = await platform.post("github:1", f"{n}".encode(), GITHUB_HEADERS)
                assert response.status_code == 200
            bodies = sorted([r.body for r in first.relays]), sorted([r.body for r in second.relays])
            assert {tuple(b) for b in bodies} == {(b"0", b"2", b"4"), (b"1", b"3", b"5")}
            for _ in range(2):
                assert (await platform.post("github:5", b"only-first", GITHUB_HEADERS)).status_code == 200
            assert [r.body for r in second.relays if r.body == b"only-first"] == []


@pytest.mark.feature("PRO-20", "PRO-21")
async def test_two_tenants_cannot_route_to_each_others_orchestrators() -> None:
    async with running_platform() as platform:
        acme = await platform.tenant("acme", ["github:1"])
        beta = await platform.tenant("beta", ["github:2"])
        async with platform.orchestrator(beta, "github:2", handshake=False) as intruder:
            await intruder.authenticate()
            ack = await intruder.register([source("github:1"), source("github:2")])
            assert [a.routing_key for a in ack.accepted] == ["github:2"]
            assert [r.routing_key for r in ack.rejected] == ["github:1"]
            response = await platform.post("github:1", b"acme-secret-payload", GITHUB_HEADERS)
            assert response.status_code == 503
            assert intruder.relays == []
            async with platform.orchestrator(acme, "github:1") as owner:
                assert (
                    await platform.post("github:1", b"acme-secret-payload", GITHUB_HEADERS)
                ).status_code == 200
                assert [r.body for r in owner.relays] == [b"acme-secret-payload"]
            assert intruder.relays == []

            await platform.store.remove_routing_key("github:2")
            await platform.store.add_routing_key(
                acme.org.id, "github:2", platform.store.orgs[acme.org.id].created_at
            )
            response = await platform.post("github:2", b"now-acmes", GITHUB_HEADERS)
            assert response.status_code == 503
            assert intruder.relays == []
        assert {d.org_id for d in platform.store.deliveries} == {acme.org.id}


@pytest.mark.feature("PRO-21")
async def test_a_relay_goes_to_the_next_orchestrator_when_one_drops_mid_relay() -> None:
    async with running_platform() as platform:
        acme = await platform.tenant("acme", ["github:1"])
        async with (
            platform.orchestrator(acme, "github:1", verdict=never_answer) as dropping,
            platform.orchestrator(acme, "github:1") as healthy,
        ):
            async with trio.open_nursery() as nursery:

                async def drop_on_first_relay() -> None:
                    await platform.wait_until(lambda: bool(dropping.relays) or bool(healthy.relays))
                    if dropping.relays:
                        await dropping.disconnect()

                nursery.start_soon(drop_on_first_relay)
                response = await platform.post("github:1", b"failover", GITHUB_HEADERS)
            assert response.status_code == 200
            assert [r.body for r in dropping.relays] == [b"failover"]
            assert [r.body for r in healthy.relays] == [b"failover"]


@pytest.mark.feature("PRO-04", "PRO-21")
async def test_bodies_above_the_limit_are_413_and_unknown_keys_404_without_a_record() -> None:
    settings = IngressSettings(max_body_bytes=1024)
    async with running_platform(ingress=settings) as platform:
        acme = await platform.tenant("acme", ["github:1"])
        async with platform.orchestrator(acme, "github:1") as orch:
            declared = await platform.post("github:1", b"x" * 1025, GITHUB_HEADERS)
            assert declared.status_code == 413
            assert declared.json()["maxBytes"] == 1024

            async def stream() -> AsyncIterator[bytes]:
                for _ in range(4):
                    yield b"y" * 400

            streamed = await platform.http.post(
                "/webhooks/github/github:1", content=stream(), headers=GITHUB_HEADERS
            )
            assert streamed.status_code == 413
            assert (await platform.post("github:1", b"z" * 1024, GITHUB_HEADERS)).status_code == 200
            assert (await platform.post("github:404", b"{}", GITHUB_HEADERS)).status_code == 404
            assert (
                await platform.post("github:1", b"{}", GITHUB_HEADERS, provider="Bad!")
            ).status_code == 404
            assert [r.body for r in orch.relays] == [b"z" * 1024]
        assert len(platform.store.deliveries) == 1


@pytest.mark.feature("PRO-21")
async def test_a_generic_delivery_without_forge_headers_gets_a_fresh_id_and_an_empty_event() -> None:
    async with running_platform() as platform:
        acme = await platform.tenant("acme", ["generic:acme:hooks"])
        async with platform.orchestrator(acme, "generic:acme:hooks") as orch:
            response = await platform.post(
                "generic:acme:hooks",
                b"a=1",
                {"Content-Type": "application/x-www-form-urlencoded"},
                provider="generic",
            )
            assert response.status_code == 200
            (relay,) = orch.relays
        start: WebhookRelayStart = relay.start
        assert start.event == ""
        assert start.signature_header_name is None
        assert response.json()["deliveryId"] == start.delivery_id
        assert len(start.delivery_id) == 36


@pytest.mark.feature("OPS-09", "OPS-17")
async def test_health_ready_and_intake_closing() -> None:
    async with running_platform() as platform:
        acme = await platform.tenant("acme", ["github:1"])
        async with platform.orchestrator(acme, "github:1"):
            health = (await platform.http.get("/health")).json()
            assert (health["status"], health["orchestrators"]) == ("ok", 1)
            assert (await platform.http.get("/ready")).json() == {"ready": True}
            platform.intake.open = False
            response = await platform.post("github:1", b"{}", GITHUB_HEADERS)
            assert response.status_code == 503
            assert response.headers["retry-after"] == "5"
            assert (await platform.http.get("/ready")).status_code == 503
