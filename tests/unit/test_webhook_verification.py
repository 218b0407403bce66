"""verify_inbound's verdict table and the generic verification methods (HOOK-02, HOOK-03), 30 §2."""

from __future__ import annotations

from typing import Any

import pytest

from kici.domain.webhooks.models import RelayVerdict
from kici.domain.webhooks.verification import (
    BearerTokenVerification,
    GenericSourceVerification,
    GithubSourceSecrets,
    HmacSha256Verification,
    InboundSource,
    InvalidVerificationConfigError,
    IpAllowlistVerification,
    NoVerification,
    check_generic,
    parse_verification,
    resolve_client_ip,
    sign_body,
    verify_inbound,
)

BODY = b'{"ref":"refs/heads/main"}'
CURRENT, NEXT = "current-secret", "next-secret"

pytestmark = pytest.mark.feature("HOOK-03")


def verdict(
    key: str,
    source: InboundSource | None,
    headers: dict[str, str] | None = None,
    *,
    sig_name: str | None = None,
    sig_value: str | None = None,
    ip: str | None = None,
) -> tuple[RelayVerdict, str]:
    result = verify_inbound(
        key, BODY, headers or {}, sig_name=sig_name, sig_value=sig_value, client_ip=ip, source=source
    )
    return result.verdict, result.reason


@pytest.mark.parametrize(
    ("source", "headers", "expected", "reason"),
    [
        (None, {}, RelayVerdict.REJECTED_UNKNOWN_SOURCE, "no GitHub source"),
        (GithubSourceSecrets(read_failed=True), {}, RelayVerdict.REJECTED_MISCONFIGURED, "could not be read"),
        (GithubSourceSecrets(()), {}, RelayVerdict.REJECTED_MISCONFIGURED, "no webhook secret"),
        (GithubSourceSecrets(("",)), {}, RelayVerdict.REJECTED_MISCONFIGURED, "no webhook secret"),
        (GithubSourceSecrets((CURRENT,)), {}, RelayVerdict.REJECTED_SIGNATURE, "missing x-hub-signature-256"),
        (
            GithubSourceSecrets((CURRENT,)),
            {"X-Hub-Signature-256": sign_body(BODY, "other")},
            RelayVerdict.REJECTED_SIGNATURE,
            "does not match",
        ),
        (
            GithubSourceSecrets((CURRENT,)),
            {"X-Hub-Signature-256": sign_body(BODY, CURRENT)},
            RelayVerdict.ACCEPTED,
            "verified",
        ),
        (
            GithubSourceSecrets((CURRENT, NEXT)),
            {"x-hub-signature-256": sign_body(BODY, NEXT)},
            RelayVerdict.ACCEPTED,
            "verified",
        ),
        (
            GenericSourceVerification("none"),
            {},
            RelayVerdict.REJECTED_MISCONFIGURED,
            "not a GitHub App",
        ),
    ],
)
def test_github_rows(
    source: InboundSource | None, headers: dict[str, str], expected: RelayVerdict, reason: str
) -> None:
    got, text = verdict("github:123456", source, headers)
    assert got is expected
    assert reason in text


def test_github_signature_lifted_out_by_the_platform_is_used() -> None:
    source = GithubSourceSecrets((CURRENT,))
    signature = sign_body(BODY, CURRENT)
    assert (
        verdict("github:1", source, sig_name="X-Hub-Signature-256", sig_value=signature)[0]
        is RelayVerdict.ACCEPTED
    )
    assert verdict("github:1", source, sig_value=signature)[0] is RelayVerdict.ACCEPTED


@pytest.mark.parametrize(
    ("source", "sig", "ip", "expected"),
    [
        (None, None, None, RelayVerdict.REJECTED_UNKNOWN_SOURCE),
        (GithubSourceSecrets((CURRENT,)), None, None, RelayVerdict.REJECTED_MISCONFIGURED),
        (GenericSourceVerification("hmac_sha256", "{oops"), None, None, RelayVerdict.REJECTED_MISCONFIGURED),
        (GenericSourceVerification("rot13", {}), None, None, RelayVerdict.REJECTED_MISCONFIGURED),
        (
            GenericSourceVerification("hmac_sha256", {"secret": ""}),
            None,
            None,
            RelayVerdict.REJECTED_MISCONFIGURED,
        ),
        (
            GenericSourceVerification("ip_allowlist", {"allowlist": ["10/8"]}),
            None,
            None,
            RelayVerdict.REJECTED_MISCONFIGURED,
        ),
        (
            GenericSourceVerification("hmac_sha256", {"secret": CURRENT}),
            None,
            None,
            RelayVerdict.REJECTED_SIGNATURE,
        ),
        (
            GenericSourceVerification("hmac_sha256", '{"secret": "current-secret"}'),
            sign_body(BODY, CURRENT),
            None,
            RelayVerdict.ACCEPTED,
        ),
        (
            GenericSourceVerification("ip_allowlist", {"allowlist": ["10.0.0.7"]}),
            None,
            "10.0.0.7",
            RelayVerdict.ACCEPTED,
        ),
        (
            GenericSourceVerification("ip_allowlist", {"allowlist": ["10.0.0.7"]}),
            None,
            "10.0.0.8",
            RelayVerdict.REJECTED_SIGNATURE,
        ),
        (GenericSourceVerification("none"), None, None, RelayVerdict.ACCEPTED),
    ],
)
def test_generic_rows(
    source: InboundSource | None, sig: str | None, ip: str | None, expected: RelayVerdict
) -> None:
    assert verdict("generic:org:src", source, sig_name="x-signature-256", sig_value=sig, ip=ip)[0] is expected


@pytest.mark.parametrize("key", ["remote:org1", "local:default", "gitlab:1", "", "githubx:1"])
def test_other_prefixes_are_unknown_sources(key: str) -> None:
    assert verdict(key, GithubSourceSecrets((CURRENT,)))[0] is RelayVerdict.REJECTED_UNKNOWN_SOURCE


def test_a_bug_becomes_a_misconfigured_verdict() -> None:
    class Exploding(dict[str, str]):
        def items(self) -> Any:
            raise RuntimeError("boom with secret-ish detail")

    result = verify_inbound(
        "github:1", BODY, Exploding(), sig_name=None, sig_value=None, client_ip=None, source=None
    )
    assert result.verdict is RelayVerdict.REJECTED_MISCONFIGURED
    assert "boom" not in result.reason


def test_config_errors_never_quote_the_secret() -> None:
    with pytest.raises(InvalidVerificationConfigError) as caught:
        parse_verification("bearer_token", {"token": 12345678, "headerName": "x"})
    assert "12345678" not in str(caught.value)
    assert "s3cr3t" not in repr(HmacSha256Verification("s3cr3t"))


@pytest.mark.feature("HOOK-02")
@pytest.mark.parametrize(
    ("method", "config", "expected"),
    [
        ("none", "ignored", NoVerification()),
        ("hmac_sha256", {"secret": "k"}, HmacSha256Verification("k", "x-signature-256")),
        ("hmac_sha256", '{"secret": "k", "headerName": "X-Sig"}', HmacSha256Verification("k", "x-sig")),
        ("bearer_token", {"token": "t"}, BearerTokenVerification("t", "authorization")),
        ("ip_allowlist", {"allowlist": ["::1", "127.0.0.1"]}, IpAllowlistVerification(("::1", "127.0.0.1"))),
    ],
)
def test_parse_verification(method: str, config: Any, expected: object) -> None:
    assert parse_verification(method, config) == expected


@pytest.mark.feature("HOOK-02")
@pytest.mark.parametrize(
    ("method", "config"),
    [
        ("hmac_sha256", None),
        ("hmac_sha256", []),
        ("bearer_token", {"token": "t", "headerName": " "}),
        ("ip_allowlist", {"allowlist": "127.0.0.1"}),
        ("ip_allowlist", {"allowlist": ["example.com"]}),
    ],
)
def test_unusable_configs(method: str, config: Any) -> None:
    with pytest.raises(InvalidVerificationConfigError):
        parse_verification(method, config)


@pytest.mark.feature("HOOK-02")
def test_generic_checks() -> None:
    bearer = BearerTokenVerification("tok", "x-token")
    assert check_generic(bearer, b"", {"x-token": "bearer tok"}, None)
    assert check_generic(bearer, b"", {"x-token": "tok"}, None)
    assert not check_generic(bearer, b"", {"x-token": ""}, None)
    assert not check_generic(bearer, b"", {"authorization": "Bearer tok"}, None)
    allow = IpAllowlistVerification(("::1",))
    assert check_generic(allow, b"", {}, "0:0:0::1")
    assert not check_generic(allow, b"", {}, None)
    assert not check_generic(allow, b"", {}, "not-an-ip")
    assert check_generic(NoVerification(), b"", {}, None)


@pytest.mark.feature("HOOK-04")
@pytest.mark.parametrize(
    ("headers", "peer", "expected"),
    [
        ({"x-forwarded-for": "203.0.113.9, 10.0.0.1", "x-real-ip": "10.0.0.2"}, "10.0.0.3", "203.0.113.9"),
        ({"x-real-ip": "10.0.0.2"}, "10.0.0.3", "10.0.0.2"),
        ({"x-forwarded-for": " "}, "10.0.0.3", "10.0.0.3"),
        ({}, None, None),
    ],
)
def test_client_ip(headers: dict[str, str], peer: str | None, expected: str | None) -> None:
    assert resolve_client_ip(headers, peer) == expected
