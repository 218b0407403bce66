"""Hypothesis strategies for webhook bodies, secrets, headers, routing keys and lock fetch outcomes.

Secrets are printable ASCII without NUL and at most 48 characters: HMAC pads keys with zeros and
hashes keys longer than its block, so ``"k"`` and ``"k\\0"`` (or a 100-byte key and its digest)
are the same key. Within these bounds distinct secrets are distinct keys, which the rotation
properties rely on.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from kici.domain.webhooks.verification import (
    GenericSourceVerification,
    GithubSourceSecrets,
    InboundSource,
)

SECRET_ALPHABET = string.ascii_letters + string.digits + string.punctuation

secrets = st.text(SECRET_ALPHABET, min_size=1, max_size=48)
long_secrets = st.text(SECRET_ALPHABET, min_size=16, max_size=48)
"""Long enough never to appear by accident inside a fixed reason text."""

bodies = st.binary(max_size=512)
header_names = st.sampled_from(
    [
        "x-hub-signature-256",
        "x-signature-256",
        "authorization",
        "x-github-event",
        "X-Hub-Signature-256",
        "x-a",
    ]
)
header_values = st.one_of(st.text(max_size=80), st.from_regex(r"sha256=[0-9a-fA-F]{0,70}", fullmatch=True))
headers = st.dictionaries(header_names, header_values, max_size=4)

routing_keys = st.one_of(
    st.just("github:42"),
    st.integers(min_value=1, max_value=10**6).map(lambda n: f"github:{n}"),
    st.just("generic:org1:src1"),
    st.sampled_from(["remote:org1", "github:default", "local:default", "", ":", "weird", "generic:"]),
    st.text(max_size=20),
)

json_like: st.SearchStrategy[Any] = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
methods = st.sampled_from(["hmac_sha256", "bearer_token", "ip_allowlist", "none", "HMAC", ""])


@st.composite
def generic_configs(draw: st.DrawFn, secret: str) -> Any:
    """Stored verification configs: well-formed, malformed and absurd."""
    return draw(
        st.one_of(
            st.builds(dict, secret=st.just(secret)),
            st.builds(
                dict, token=st.just(secret), headerName=st.sampled_from(["authorization", "x-token", ""])
            ),
            st.builds(dict, allowlist=st.lists(st.sampled_from(["127.0.0.1", "::1", "10.0.0.0/8", "host"]))),
            st.just("{not json"),
            st.just(f'{{"secret": "{secret}"}}'),
            json_like,
        )
    )


@st.composite
def inbound_sources(draw: st.DrawFn, secret: str) -> InboundSource | None:
    """Whatever a source lookup may produce, the stored ``secret`` included somewhere."""
    github = st.builds(
        GithubSourceSecrets,
        secrets=st.lists(st.one_of(st.just(secret), secrets, st.just("")), max_size=3),
        read_failed=st.booleans(),
    )
    generic = st.builds(GenericSourceVerification, method=methods, config=generic_configs(secret))
    return draw(st.one_of(st.none(), github, generic))


FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "webhooks"


def delivery(name: str) -> tuple[dict[str, str], dict[str, Any], bytes]:
    """A fixture delivery ``tests/fixtures/webhooks/<name>.json``: lower-cased headers, payload, raw body."""
    data = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    payload = data["payload"]
    return {k.lower(): v for k, v in data["headers"].items()}, payload, json.dumps(payload).encode()


def flip_bit(data: bytes, index: int, bit: int) -> bytes:
    """``data`` with one bit inverted (``index`` modulo its length)."""
    position = index % len(data)
    return data[:position] + bytes([data[position] ^ (1 << bit)]) + data[position + 1 :]


__all__ = [
    "FIXTURES",
    "bodies",
    "delivery",
    "flip_bit",
    "generic_configs",
    "header_names",
    "header_values",
    "headers",
    "inbound_sources",
    "json_like",
    "long_secrets",
    "methods",
    "routing_keys",
    "secrets",
]
