"""The trio-websocket client and the quart-trio/hypercorn server against the WsConnection contract, over
loopback through the test TCP proxy, plain and TLS (PRO-33, PRO-03, PRO-04); plus what only the real
transport has: binary frames, the 25 MiB default, the HTTP helpers of the server."""

from __future__ import annotations

import datetime
import ssl
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio_websocket
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kici.adapters.ws.client import connect
from kici.adapters.ws.server import (
    DEFAULT_MAX_BODY_BYTES,
    BoundServer,
    accept_websocket,
    create_app,
    hypercorn_config,
    limit_body,
    serve,
)
from kici.domain.ports import ConnectionClosed, WsConnectError
from kici.domain.protocol import MAX_PAYLOAD_BYTES
from kici.testing.tcp_proxy import TcpProxy, open_tcp_proxy
from kici.testing.ws_contract import PairFactory, Tls, WsContract, WsPair, expect_closed, open_real_pair


class TestRealPair(WsContract):
    @pytest.fixture
    def open_pair(self) -> PairFactory:
        return open_real_pair


def _self_signed(directory: Path) -> Tls:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(cafile=str(certfile))
    return Tls(str(certfile), str(keyfile), context)


class TestRealPairOverTls(WsContract):
    @pytest.fixture
    def open_pair(self, tmp_path: Path) -> PairFactory:
        tls = _self_signed(tmp_path)

        def factory(**kwargs: Any) -> AbstractAsyncContextManager[WsPair]:
            return open_real_pair(tls=tls, **kwargs)

        return factory


@asynccontextmanager
async def _served(app: Any) -> AsyncIterator[BoundServer]:
    async with trio.open_nursery() as nursery:
        bound: BoundServer = await nursery.start(serve, app)
        yield bound
        nursery.cancel_scope.cancel()


def _echo_app(**limits: Any) -> Any:
    app = create_app(__name__, **limits)

    @app.websocket("/ws")
    async def ws() -> None:
        conn = await accept_websocket()
        try:
            while True:
                await conn.send(await conn.receive())
        except ConnectionClosed:
            return

    return app


@pytest.mark.feature("PRO-33")
async def test_serve_binds_a_free_port_and_reports_it() -> None:
    async with _served(_echo_app()) as bound:
        assert (bound.scheme, bound.host) == ("http", "127.0.0.1")
        assert bound.port > 0
        assert bound.url("/ws", websocket=True) == f"ws://127.0.0.1:{bound.port}/ws"
        async with connect(bound.url("/ws", websocket=True)) as client:
            await client.send("ping")
            with trio.fail_after(5):
                assert await client.receive() == "ping"
            assert client.remote_addr.port == bound.port


@pytest.mark.feature("PRO-33")
async def test_an_http_url_dials_the_same_websocket() -> None:
    """The config accepts ``http://`` for the orchestrator and Platform URLs; dialing it must not crash."""
    async with _served(_echo_app()) as bound, connect(bound.url("/ws")) as client:
        assert bound.url("/ws").startswith("http://")
        await client.send("hello")
        with trio.fail_after(5):
            assert await client.receive() == "hello"


@pytest.mark.feature("PRO-04")
async def test_default_limit_is_25_mib_on_both_ends() -> None:
    app = _echo_app()
    config = hypercorn_config(app, host="127.0.0.1", port=0)
    assert config.websocket_max_message_size == MAX_PAYLOAD_BYTES == 26_214_400
    async with _served(app) as bound, connect(bound.url("/ws", websocket=True)) as client:
        with trio.fail_after(20):
            await client.send("a" * MAX_PAYLOAD_BYTES)
            assert len(await client.receive()) == MAX_PAYLOAD_BYTES
            await client.send("a" * (MAX_PAYLOAD_BYTES + 1))
            assert (await expect_closed(client)).code == 1009


@pytest.mark.feature("PRO-33", "PRO-03")
async def test_binary_frame_from_a_client_closes_with_1003() -> None:
    async with _served(_echo_app()) as bound:
        stream = await trio.open_tcp_stream("127.0.0.1", bound.port)
        async with stream, trio.open_nursery() as nursery:
            raw = await trio_websocket.wrap_client_stream(nursery, stream, f"127.0.0.1:{bound.port}", "/ws")
            await raw.send_message(b"\x00\x01")
            with pytest.raises(trio_websocket.ConnectionClosed) as closed, trio.fail_after(5):
                await raw.get_message()
            await stream.aclose()
        assert closed.value.reason is not None
        assert (closed.value.reason.code, closed.value.reason.reason) == (
            1003,
            "Binary frames are not supported",
        )


@pytest.mark.feature("PRO-33", "PRO-03")
async def test_binary_frame_from_a_server_closes_with_1003() -> None:
    app = create_app(__name__)

    @app.websocket("/raw")
    async def raw() -> None:
        from quart import websocket

        await websocket.accept()
        await websocket.send(b"\x00\x01")
        with pytest.raises(trio.EndOfChannel):
            await websocket.receive()

    async with _served(app) as bound, connect(bound.url("/raw", websocket=True)) as client:
        closed = await expect_closed(client)
        assert (closed.code, closed.reason) == (1003, "Binary frames are not supported")


@pytest.mark.feature("PRO-33")
async def test_failed_connects_raise_ws_connect_error() -> None:
    async with _served(_echo_app()) as bound:
        with pytest.raises(WsConnectError, match="404"):
            async with connect(bound.url("/nowhere", websocket=True)):
                pass
        async with open_tcp_proxy("127.0.0.1", bound.port) as proxy:
            proxy.blackhole = True
            with pytest.raises(WsConnectError, match=r"no (handshake|connection) within"):
                async with connect(f"ws://127.0.0.1:{proxy.port}/ws", connect_timeout=0.3):
                    pass
            proxy.blackhole = False
            proxy.refusing = True
            with pytest.raises(WsConnectError):
                async with connect(f"ws://127.0.0.1:{proxy.port}/ws", connect_timeout=0.5):
                    pass
    with pytest.raises(WsConnectError):
        async with connect(f"ws://127.0.0.1:{bound.port}/ws", connect_timeout=5):
            pass


@pytest.mark.feature("PRO-33", "PRO-03")
async def test_close_of_a_black_holed_connection_is_bounded() -> None:
    proxies: list[TcpProxy] = []
    async with open_real_pair(proxy_hook=proxies.append, close_timeout=0.3) as pair:
        proxies[0].blackhole = True
        with trio.fail_after(5):
            await pair.client.close(4004, "Heartbeat timeout")
            await pair.server.close(4004, "Heartbeat timeout")
        with pytest.raises(ConnectionClosed) as raised:
            await pair.client.receive()
        assert raised.value.code == 4004


@pytest.mark.feature("PRO-33")
async def test_delayed_proxy_still_delivers_in_order() -> None:
    proxies: list[TcpProxy] = []
    async with open_real_pair(proxy_hook=proxies.append) as pair:
        proxies[0].delay = 0.05
        with trio.fail_after(5):
            for i in range(5):
                await pair.client.send(str(i))
            assert [await pair.server.receive() for _ in range(5)] == [str(i) for i in range(5)]


def _body_app() -> Any:
    app = create_app(__name__, max_body_bytes=4096)

    @app.post("/hook")
    @limit_body(1024)
    async def hook(body: bytes) -> tuple[str, int]:
        return f"{len(body)}", 202

    @app.post("/plain")
    async def plain() -> tuple[str, int]:
        from quart import request

        return f"{len(await request.get_data())}", 200

    return app


@pytest.mark.feature("PRO-04")
async def test_route_body_limit_answers_413_above_it() -> None:
    async with _served(_body_app()) as bound, httpx.AsyncClient(base_url=bound.url("")) as http:
        ok = await http.post("/hook", content=b"x" * 1024)
        assert (ok.status_code, ok.text) == (202, "1024")
        assert (await http.post("/hook", content=b"x" * 1025)).status_code == 413

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"y" * 500

        assert (await http.post("/hook", content=chunks())).status_code == 413
        assert (await http.post("/plain", content=b"z" * 4096)).status_code == 200
        assert (await http.post("/plain", content=b"z" * 4097)).status_code == 413
    assert DEFAULT_MAX_BODY_BYTES == 16 * 1024 * 1024


@pytest.mark.feature("PRO-04")
def test_body_limit_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        limit_body(-1)


@pytest.mark.feature("PRO-33")
async def test_accept_websocket_needs_an_app_from_create_app() -> None:
    from quart_trio import QuartTrio

    app = QuartTrio(__name__)
    errors: list[Exception] = []

    @app.websocket("/ws")
    async def ws() -> None:
        try:
            await accept_websocket()
        except RuntimeError as exc:
            errors.append(exc)

    async with _served(app) as bound:
        with pytest.raises(WsConnectError):
            async with connect(bound.url("/ws", websocket=True)):
                pass
    assert len(errors) == 1


@pytest.mark.feature("PRO-33", "PRO-15")
async def test_a_pending_ping_wakes_on_a_local_close_of_a_black_holed_connection() -> None:
    proxies: list[TcpProxy] = []
    async with open_real_pair(proxy_hook=proxies.append, close_timeout=0.3) as pair:
        proxies[0].blackhole = True
        seen: list[ConnectionClosed] = []

        async def ping() -> None:
            try:
                await pair.client.ping()
            except ConnectionClosed as closed:
                seen.append(closed)

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ping)
                await trio.sleep(0.1)
                await pair.client.close(4004, "No pong from the orchestrator")
    assert [(c.code, c.reason) for c in seen] == [(4004, "No pong from the orchestrator")]
