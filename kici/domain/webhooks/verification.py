"""Webhook authenticity: HMAC-SHA256, the generic methods and the relay verdict (HOOK-02, HOOK-03).

Only the orchestrator holds webhook secrets; the Platform relays the raw body bytes unchanged and
asks for a verdict. The signature is computed over those raw bytes, never over re-serialized
JSON, and compared in constant time. A source may hold several secrets at once (the current one
and the next, during a rotation): a body verifies iff some stored secret produced its signature.

:func:`verify_inbound` is the orchestrator's answer to a relayed webhook. It takes the stored
secrets or verification settings as input (the caller reads them; this module does no I/O) and
never raises: every failure, including a bug, becomes a verdict, because an exception would leave
the Platform waiting for an ACK until its timeout. Reasons name what failed, never a secret, a
signature or a digest.

Choices where the spec is silent:

* A signature must be exactly 64 hex digits after ``sha256=`` (either case). ``bytes.fromhex``
  alone would also accept embedded spaces, so the digest is matched by pattern first.
* An empty secret is no secret: it is ignored, and a source left with none is misconfigured.
* The IP allow-list compares parsed addresses (``::1`` equals ``0:0::1``); an entry that is not a
  single IP address (a CIDR range, a host name) makes the configuration invalid rather than
  silently never matching.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any, Final, assert_never

import attrs

from kici.domain.webhooks.models import RelayVerdict, routing_key_type

SIGNATURE_PREFIX: Final = "sha256="
GITHUB_SIGNATURE_HEADER: Final = "x-hub-signature-256"
DEFAULT_HMAC_HEADER: Final = "x-signature-256"
DEFAULT_BEARER_HEADER: Final = "authorization"
_HEX_DIGEST: Final = re.compile(r"[0-9a-fA-F]{64}")
_BEARER: Final = "bearer "


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def sign_body(body: bytes, secret: str | bytes) -> str:
    """The ``sha256=<hex>`` header value a sender computes for ``body``."""
    return SIGNATURE_PREFIX + hmac.new(_key(secret), body, hashlib.sha256).hexdigest()


def verify_hmac(body: bytes, header: str | None, secret: str | bytes) -> bool:
    """Whether ``header`` is ``sha256=`` + the HMAC-SHA256 of the raw ``body`` under ``secret``.

    A missing or malformed header, or an empty secret, is ``False``; nothing raises.
    """
    if not isinstance(header, str) or not header.startswith(SIGNATURE_PREFIX) or not _key(secret):
        return False
    digest = header[len(SIGNATURE_PREFIX) :]
    if not _HEX_DIGEST.fullmatch(digest):
        return False
    expected = hmac.new(_key(secret), body, hashlib.sha256).digest()
    return hmac.compare_digest(bytes.fromhex(digest), expected)


def verify_hmac_value(body: bytes, value: str | None, secret: str | bytes) -> bool:
    """:func:`verify_hmac` for senders that put ``sha256=<hex>`` or just ``<hex>`` in their header."""
    if value is None:
        return False
    value = value.strip()
    return verify_hmac(
        body, value if value.startswith(SIGNATURE_PREFIX) else SIGNATURE_PREFIX + value, secret
    )


def verify_hmac_any(body: bytes, header: str | None, secrets: Iterable[str | bytes]) -> bool:
    """Rotation: ``True`` iff some secret verifies; every secret is tried, so timing does not tell which."""
    results = [verify_hmac(body, header, secret) for secret in secrets]
    return any(results)


class VerificationMethod(StrEnum):
    HMAC_SHA256 = "hmac_sha256"
    BEARER_TOKEN = "bearer_token"
    IP_ALLOWLIST = "ip_allowlist"
    NONE = "none"


@attrs.frozen
class HmacSha256Verification:
    """``headerName`` carries ``sha256=<hex>`` or the bare hex digest."""

    secret: str = attrs.field(repr=False)
    header_name: str = DEFAULT_HMAC_HEADER


@attrs.frozen
class BearerTokenVerification:
    token: str = attrs.field(repr=False)
    header_name: str = DEFAULT_BEARER_HEADER


@attrs.frozen
class IpAllowlistVerification:
    allowlist: tuple[str, ...]


@attrs.frozen
class NoVerification:
    """Anyone may post; only for sources reachable from trusted networks (the local provider)."""


GenericVerification = (
    HmacSha256Verification | BearerTokenVerification | IpAllowlistVerification | NoVerification
)


class InvalidVerificationConfigError(ValueError):
    """The stored ``verification_method`` / config cannot be used. The message never quotes a value."""


def _config_object(config: Any) -> Mapping[str, Any]:
    if config is None:
        return {}
    if isinstance(config, str | bytes):
        try:
            config = json.loads(config)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidVerificationConfigError("verification config is not valid JSON") from exc
    if not isinstance(config, Mapping):
        raise InvalidVerificationConfigError("verification config must be a JSON object")
    return config


def _required_text(config: Mapping[str, Any], key: str) -> str:
    value = config.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidVerificationConfigError(f"verification config needs a non-empty string {key!r}")
    return value


def _header_name(config: Mapping[str, Any], default: str) -> str:
    value = config.get("headerName", default)
    if not isinstance(value, str) or not value.strip():
        raise InvalidVerificationConfigError("verification config 'headerName' must be a non-empty string")
    return value.strip().lower()


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


def parse_verification(method: str, config: Any) -> GenericVerification:
    """The verification a generic source asks for; raises :class:`InvalidVerificationConfigError`.

    ``config`` is the stored JSON (text or already decoded); ``none`` ignores it.
    """
    try:
        kind = VerificationMethod(method)
    except ValueError:
        allowed = ", ".join(m.value for m in VerificationMethod)
        raise InvalidVerificationConfigError(f"unknown verification method (allowed: {allowed})") from None
    if kind is VerificationMethod.NONE:
        return NoVerification()
    data = _config_object(config)
    if kind is VerificationMethod.HMAC_SHA256:
        return HmacSha256Verification(_required_text(data, "secret"), _header_name(data, DEFAULT_HMAC_HEADER))
    if kind is VerificationMethod.BEARER_TOKEN:
        return BearerTokenVerification(
            _required_text(data, "token"), _header_name(data, DEFAULT_BEARER_HEADER)
        )
    entries = data.get("allowlist")
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise InvalidVerificationConfigError("verification config 'allowlist' must be an array of strings")
    for position, entry in enumerate(entries):
        if _ip(entry) is None:
            raise InvalidVerificationConfigError(
                f"allowlist entry {position} is not a single IP address (CIDR ranges are not supported)"
            )
    return IpAllowlistVerification(tuple(entries))


def resolve_client_ip(headers: Mapping[str, str], peer: str | None = None) -> str | None:
    """The caller's IP for the allow-list: first ``x-forwarded-for`` hop, else ``x-real-ip``, else the peer.

    Forwarding headers are trusted because kici runs behind a reverse proxy; an allow-listed source
    exposed without one can be spoofed, which is why HMAC is the recommended method.
    """
    forwarded = headers.get("x-forwarded-for", "").split(",")[0].strip()
    if forwarded:
        return forwarded
    real = headers.get("x-real-ip", "").strip()
    return real or peer


def _constant_time_equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def check_generic(
    verification: GenericVerification, body: bytes, headers: Mapping[str, str], ip: str | None
) -> bool:
    """Whether a request passes its source's method; ``headers`` are lower-cased."""
    match verification:
        case NoVerification():
            return True
        case HmacSha256Verification(secret=secret, header_name=name):
            return verify_hmac_value(body, headers.get(name), secret)
        case BearerTokenVerification(token=token, header_name=name):
            value = headers.get(name, "").strip()
            if value[: len(_BEARER)].lower() == _BEARER:
                value = value[len(_BEARER) :].strip()
            return bool(value) and _constant_time_equal(value, token)
        case IpAllowlistVerification(allowlist=allowlist):
            address = _ip(ip) if ip is not None else None
            return address is not None and any(_ip(entry) == address for entry in allowlist)
        case _:
            assert_never(verification)


def _secret_tuple(values: Iterable[str | bytes]) -> tuple[str | bytes, ...]:
    return tuple(values)


@attrs.frozen
class GithubSourceSecrets:
    """What a GitHub App's ``sources`` row yields: its active webhook secrets, or that reading them failed."""

    secrets: tuple[str | bytes, ...] = attrs.field(default=(), converter=_secret_tuple, repr=False)
    read_failed: bool = False


@attrs.frozen
class GenericSourceVerification:
    """What the ``generic_webhook_sources`` row yields: the method and its raw JSON config."""

    method: str
    config: Any = attrs.field(default=None, repr=False)


InboundSource = GithubSourceSecrets | GenericSourceVerification


@attrs.frozen
class InboundVerdict:
    """The ``webhook.ack`` result and a reason safe to log and to send to the Platform."""

    verdict: RelayVerdict
    reason: str

    @property
    def accepted(self) -> bool:
        return self.verdict is RelayVerdict.ACCEPTED


def _github(body: bytes, headers: Mapping[str, str], source: Any) -> InboundVerdict:
    if source is None:
        return InboundVerdict(
            RelayVerdict.REJECTED_UNKNOWN_SOURCE, "no GitHub source is registered for this key"
        )
    if not isinstance(source, GithubSourceSecrets):
        return InboundVerdict(
            RelayVerdict.REJECTED_MISCONFIGURED, "the source registered for this key is not a GitHub App"
        )
    if source.read_failed:
        return InboundVerdict(RelayVerdict.REJECTED_MISCONFIGURED, "the webhook secret could not be read")
    secrets = [s for s in source.secrets if _key(s)]
    if not secrets:
        return InboundVerdict(
            RelayVerdict.REJECTED_MISCONFIGURED, "no webhook secret is stored for this source"
        )
    header = headers.get(GITHUB_SIGNATURE_HEADER)
    if not header:
        return InboundVerdict(RelayVerdict.REJECTED_SIGNATURE, f"missing {GITHUB_SIGNATURE_HEADER} header")
    if verify_hmac_any(body, header, secrets):
        return InboundVerdict(RelayVerdict.ACCEPTED, "signature verified")
    return InboundVerdict(
        RelayVerdict.REJECTED_SIGNATURE, "signature does not match any active webhook secret"
    )


def _generic(body: bytes, headers: Mapping[str, str], ip: str | None, source: Any) -> InboundVerdict:
    if source is None:
        return InboundVerdict(
            RelayVerdict.REJECTED_UNKNOWN_SOURCE, "no generic source is registered for this key"
        )
    if not isinstance(source, GenericSourceVerification):
        return InboundVerdict(
            RelayVerdict.REJECTED_MISCONFIGURED, "the source registered for this key is not generic"
        )
    try:
        verification = parse_verification(source.method, source.config)
    except InvalidVerificationConfigError as exc:
        return InboundVerdict(RelayVerdict.REJECTED_MISCONFIGURED, str(exc))
    if check_generic(verification, body, headers, ip):
        return InboundVerdict(RelayVerdict.ACCEPTED, f"{source.method} check passed")
    return InboundVerdict(RelayVerdict.REJECTED_SIGNATURE, f"{source.method} check failed")


def verify_inbound(
    routing_key: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    sig_name: str | None,
    sig_value: str | None,
    client_ip: str | None,
    source: InboundSource | None,
) -> InboundVerdict:
    """The verdict for a relayed webhook; never raises (see the module docstring).

    ``source`` is what the caller found for ``routing_key`` (``None``: no row). ``sig_name`` /
    ``sig_value`` are the signature header the Platform lifted out of ``headers``; they are
    folded back in so every method finds its header where it expects it (a GitHub signature
    without a name is taken as ``x-hub-signature-256``).
    """
    try:
        kind = routing_key_type(routing_key)
        merged = {name.lower(): value for name, value in headers.items()}
        if sig_value is not None:
            name = sig_name or (GITHUB_SIGNATURE_HEADER if kind == "github" else None)
            if name:
                merged[name.lower()] = sig_value
        if kind == "github":
            return _github(body, merged, source)
        if kind == "generic":
            return _generic(body, merged, client_ip, source)
        return InboundVerdict(
            RelayVerdict.REJECTED_UNKNOWN_SOURCE, "routing key prefix does not accept webhooks"
        )
    except Exception as exc:  # a verdict is owed whatever happens
        return InboundVerdict(
            RelayVerdict.REJECTED_MISCONFIGURED, f"verification failed unexpectedly ({type(exc).__name__})"
        )


__all__ = [
    "DEFAULT_BEARER_HEADER",
    "DEFAULT_HMAC_HEADER",
    "GITHUB_SIGNATURE_HEADER",
    "SIGNATURE_PREFIX",
    "BearerTokenVerification",
    "GenericSourceVerification",
    "GenericVerification",
    "GithubSourceSecrets",
    "HmacSha256Verification",
    "InboundSource",
    "InboundVerdict",
    "InvalidVerificationConfigError",
    "IpAllowlistVerification",
    "NoVerification",
    "VerificationMethod",
    "check_generic",
    "parse_verification",
    "resolve_client_ip",
    "sign_body",
    "verify_hmac",
    "verify_hmac_any",
    "verify_hmac_value",
    "verify_inbound",
]
