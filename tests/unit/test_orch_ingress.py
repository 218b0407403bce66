"""The direct webhook route's refusals that answer before the body was read (HOOK-04).

hypercorn leaves a keep-alive connection open after such an answer while the rest of the body is still
on its way; a client reusing it then waits for an answer that never comes. These requests go through a
real hypercorn server and one keep-alive httpx client, with bodies big enough to still be in flight
when the answer is sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import httpx
import pytest
import trio

from kici.adapters.clock import SystemClock
from kici.adapters.ws.server import create_app, serve
from kici.domain.providers import ProviderRegistry
from kici.services.orchestrator.ingress import IngressState, register_ingress
from kici.services.orchestrator.pipeline import PipelineDeps
from kici.services.orchestrator.sources import SourceBook

pytestmark = pytest.mark.feature("HOOK-04")

BODY = b'{"zen": "' + b"x" * 400_000 + b'"}'
"""Larger than the loopback socket buffers, so the answer overtakes the body."""


@asynccontextmanager
async def ingress(*, direct_enabled: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    state = IngressState(
        book=lambda: SourceBook(sources=(), registry=ProviderRegistry()),
        pipeline=cast(PipelineDeps, None),  # never reached: every request here is refused before it
        clock=SystemClock(),
        direct_enabled=direct_enabled,
    )
    app = create_app(__name__)
    register_ingress(app, state)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve, app)
        timeout = httpx.Timeout(30.0)
        async with httpx.AsyncClient(base_url=bound.url(""), timeout=timeout) as client:
            yield client
        nursery.cancel_scope.cancel()


async def _post_three_times(client: httpx.AsyncClient, path: str) -> list[tuple[int, str | None]]:
    answers = []
    with trio.fail_after(20):
        for _ in range(3):
            response = await client.post(path, content=BODY, headers={"content-type": "application/json"})
            answers.append((response.status_code, response.headers.get("connection")))
    return answers


async def test_an_unknown_source_answers_404_and_closes_the_keep_alive_connection() -> None:
    async with ingress() as client:
        answers = await _post_three_times(client, "/webhooks/github/github:404")
    assert answers == [(404, "close")] * 3


async def test_platform_mode_answers_403_and_closes_the_keep_alive_connection() -> None:
    async with ingress(direct_enabled=False) as client:
        answers = await _post_three_times(client, "/webhooks/github/github:1")
    assert answers == [(403, "close")] * 3
