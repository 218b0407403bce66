"""The GitHub adapter's HTTP client builds its TLS context once (HOOK-22, issue 7).

A fresh httpx client per call is the adapter's design (no owner to close a pool); building the CA
bundle for each one cost more than the API call itself. The fake GitHub is plain HTTP, so what is
checked is that the calls work and that the context was built once for all of them.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx
import pytest

from kici.adapters.providers.github import HttpxClient
from kici.testing.fake_github import FakeGitHub, new_app_key


@pytest.mark.feature("HOOK-22")
async def test_every_call_of_a_client_shares_one_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[ssl.SSLContext] = []
    real = httpx.create_ssl_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        context = real(*args, **kwargs)
        built.append(context)
        return context

    monkeypatch.setattr(httpx, "create_ssl_context", counting)
    key, _ = new_app_key()
    client = HttpxClient(trust_env=False)
    with FakeGitHub("1", key.public_key()) as fake:
        answers = [
            await client.request("GET", f"{fake.base_url}/repos/acme/app/installation", headers={})
            for _ in range(3)
        ]
    assert [answer.status for answer in answers] == [401, 401, 401]
    assert len(built) == 1
