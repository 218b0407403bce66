"""HMAC-SHA256 webhook signatures and the relay verdict (HOOK-02, HOOK-03), 30 §2."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kici.domain.webhooks.models import RelayVerdict
from kici.domain.webhooks.verification import (
    BearerTokenVerification,
    GenericSourceVerification,
    GithubSourceSecrets,
    HmacSha256Verification,
    IpAllowlistVerification,
    check_generic,
    sign_body,
    verify_hmac,
    verify_hmac_any,
    verify_hmac_value,
    verify_inbound,
)
from tests.strategies.webhooks import (
    bodies,
    flip_bit,
    header_values,
    headers,
    inbound_sources,
    long_secrets,
    routing_keys,
    secrets,
)

pytestmark = pytest.mark.feature("HOOK-02")

HEX = "0123456789abcdef"
TOKEN_ALPHABET = "abcXYZ019-_."


@given(bodies, secrets)
def test_a_correct_signature_verifies(body: bytes, secret: str) -> None:
    header = sign_body(body, secret)
    assert header == "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert verify_hmac(body, header, secret)
    assert verify_hmac(body, header, secret.encode())
    assert verify_hmac(body, "sha256=" + header[7:].upper(), secret)


@given(bodies.filter(bool), secrets, st.integers(min_value=0), st.integers(min_value=0, max_value=7))
def test_any_bit_flip_of_the_body_fails(body: bytes, secret: str, index: int, bit: int) -> None:
    assert not verify_hmac(flip_bit(body, index, bit), sign_body(body, secret), secret)


@given(bodies, secrets, st.integers(min_value=0), st.integers(min_value=0, max_value=7))
def test_any_bit_flip_of_the_signature_fails(body: bytes, secret: str, index: int, bit: int) -> None:
    header = sign_body(body, secret)
    flipped = flip_bit(header.encode("latin-1"), index, bit).decode("latin-1")
    assume(flipped.lower() != header)  # hex digits are case-insensitive: A-F is a-f
    assert not verify_hmac(body, flipped, secret)


@given(bodies, secrets, st.integers(min_value=0), st.integers(min_value=0, max_value=6))
def test_any_bit_flip_of_the_secret_fails(body: bytes, secret: str, index: int, bit: int) -> None:
    other = flip_bit(secret.encode(), index, bit)
    assume(other.rstrip(b"\0") != secret.encode())
    assert not verify_hmac(body, sign_body(body, secret), other)


@given(bodies, secrets, header_values)
def test_malformed_headers_fail_without_raising(body: bytes, secret: str, header: str) -> None:
    assume(header != sign_body(body, secret) and header.lower() != sign_body(body, secret))
    assert verify_hmac(body, header, secret) is False


@given(bodies, secrets, st.integers(min_value=0, max_value=130), st.text(HEX + "xyz ", max_size=3))
def test_wrong_length_or_non_hex_digests_fail(body: bytes, secret: str, length: int, junk: str) -> None:
    digest = sign_body(body, secret)[7:]
    candidates = [digest[:length], digest + junk, junk + digest[len(junk) :]]
    for candidate in candidates:
        if candidate.lower() != digest:
            assert verify_hmac(body, "sha256=" + candidate, secret) is False


@given(bodies, secrets)
def test_an_empty_secret_or_missing_header_never_verifies(body: bytes, secret: str) -> None:
    assert not verify_hmac(body, sign_body(body, ""), "")
    assert not verify_hmac(body, None, secret)
    assert not verify_hmac(body, sign_body(body, secret)[7:], secret)


@given(bodies, st.lists(secrets, max_size=4, unique=True), secrets)
def test_rotation_verifies_iff_some_active_secret_matches(
    body: bytes, active: list[str], signer: str
) -> None:
    header = sign_body(body, signer)
    assert verify_hmac_any(body, header, active) == (signer in active)


@given(bodies, secrets)
def test_bare_hex_and_prefixed_forms_are_equivalent(body: bytes, secret: str) -> None:
    header = sign_body(body, secret)
    assert verify_hmac_value(body, header, secret)
    assert verify_hmac_value(body, header[7:], secret)
    assert verify_hmac_value(body, f"  {header[7:]} ", secret)


@pytest.mark.feature("HOOK-03")
@given(bodies, long_secrets, st.data())
def test_verify_inbound_never_raises_and_never_reveals_secrets(body: bytes, secret: str, data: Any) -> None:
    key = data.draw(routing_keys)
    given_headers = data.draw(headers)
    client_ip = data.draw(st.one_of(st.none(), st.text(max_size=30)))
    source = data.draw(inbound_sources(secret))
    signed = sign_body(body, secret)
    signature = data.draw(st.sampled_from([None, signed, signed[7:], "garbage"]))
    name = data.draw(st.sampled_from([None, "x-hub-signature-256", "x-signature-256", "authorization"]))
    verdict = verify_inbound(
        key, body, given_headers, sig_name=name, sig_value=signature, client_ip=client_ip, source=source
    )
    assert isinstance(verdict.verdict, RelayVerdict)
    digest = signed[7:]
    assert secret not in verdict.reason
    assert digest not in verdict.reason.lower()
    if signature is not None:
        assert signature not in verdict.reason or len(signature) < 16


@pytest.mark.feature("HOOK-03")
@given(bodies, st.lists(secrets, min_size=1, max_size=3, unique=True), secrets)
def test_github_verdict_is_accepted_iff_a_stored_secret_signed(
    body: bytes, stored: list[str], signer: str
) -> None:
    verdict = verify_inbound(
        "github:42",
        body,
        {"x-hub-signature-256": sign_body(body, signer)},
        sig_name=None,
        sig_value=None,
        client_ip=None,
        source=GithubSourceSecrets(stored),
    )
    expected = RelayVerdict.ACCEPTED if signer in stored else RelayVerdict.REJECTED_SIGNATURE
    assert verdict.verdict is expected


@pytest.mark.feature("HOOK-03")
@given(bodies, secrets, secrets)
def test_generic_hmac_verdict_follows_the_signature(body: bytes, secret: str, signer: str) -> None:
    config = {"secret": secret, "headerName": "X-Sig"}
    verdict = verify_inbound(
        "generic:o:s",
        body,
        {},
        sig_name="x-sig",
        sig_value=sign_body(body, signer)[7:],
        client_ip=None,
        source=GenericSourceVerification("hmac_sha256", config),
    )
    assert verdict.accepted == (secret == signer)


@given(st.text(TOKEN_ALPHABET, min_size=1, max_size=30), st.text(TOKEN_ALPHABET, max_size=30))
def test_bearer_tokens_match_exactly_with_or_without_the_prefix(token: str, sent: str) -> None:
    check = BearerTokenVerification(token)
    assert check_generic(check, b"", {"authorization": f"Bearer {sent}"}, None) == (sent == token)
    assert check_generic(check, b"", {"authorization": sent}, None) == (sent == token)


@given(
    st.lists(st.ip_addresses().map(str), max_size=4),
    st.ip_addresses().map(str),
)
def test_the_ip_allowlist_admits_exactly_listed_addresses(allowlist: list[str], ip: str) -> None:
    check = IpAllowlistVerification(tuple(allowlist))
    assert check_generic(check, b"", {}, ip) == (ip in allowlist)


@given(bodies, secrets, st.sampled_from(["x-signature-256", "x-custom"]))
def test_generic_hmac_reads_its_configured_header(body: bytes, secret: str, header: str) -> None:
    check = HmacSha256Verification(secret, header)
    assert check_generic(check, body, {header: sign_body(body, secret)}, None)
    assert not check_generic(check, body, {"x-other": sign_body(body, secret)}, None)
