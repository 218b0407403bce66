"""Reading the ``sources:`` section into :class:`SourceConfig`s, reporting every problem at once.

YAML shape (camelCase keys, one list entry per source)::

    sources:
      - name: app                       # unique; letters, digits, . _ -
        provider: universal-git         # github | generic | universal-git | local
        routingKey: generic:acme:app    # optional, see kici.domain.config.sources
        secret: s3cret                  # and/or secretEnv: NAME, secretFile: /abs/path (each may be a list)
        gitConfig: {preset: gitea, gitUrlTemplate: "https://git.example/{repo}.git"}

Provider keys: ``github`` -> ``appId`` (required), ``privateKeyFile``, ``apiBaseUrl``,
``webBaseUrl``; ``local`` -> ``repoBasePath`` (required, absolute), ``cloneUrlBase``;
``universal-git`` -> ``gitConfig`` (30 §3.2;
in independent mode a ``credentialRef`` reads from ``store: env`` or ``store: file``, there is no
secret database); ``generic`` -> ``eventTypeHeader``, ``eventTypePath``. Every non-GitHub source also
takes ``verification``, ``signatureHeader``, ``allowlist``, ``allowedEvents``, ``strippedHeaders``;
every source ``enabled`` and ``maxPayloadBytes``.

A ``secretEnv`` variable must be set when the config loads (the environment is part of the config
the caller passes in), so a missing one stops the start instead of failing every webhook with 500.
Secret files are read at each use (rotation by replacing the file), so they are checked then.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import attrs

from kici.domain.config.problems import Problem, YamlSource, describe
from kici.domain.config.sources import (
    DIRECT_MAX_PAYLOAD_BYTES,
    GITHUB_MAX_PAYLOAD_BYTES,
    SecretKind,
    SecretRef,
    SourceConfig,
    SourceProvider,
    default_routing_key,
    default_signature_header,
    default_verification,
)
from kici.domain.config.typos import nearest
from kici.domain.webhooks.models import InvalidRoutingKeyError, RoutingKeyKind, parse_routing_key
from kici.domain.webhooks.normalizers.universal_git import GitConfig, InvalidGitConfigError, parse_git_config
from kici.domain.webhooks.sources import DEFAULT_MAX_PAYLOAD_BYTES
from kici.domain.webhooks.verification import VerificationMethod

SECTION: Final = "sources"
_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_CREDENTIAL_STORES: Final = ("env", "file")

_COMMON: Final = (
    "name",
    "provider",
    "routingKey",
    "secret",
    "secretEnv",
    "secretFile",
    "enabled",
    "maxPayloadBytes",
)
_NON_GITHUB: Final = ("verification", "signatureHeader", "allowlist", "allowedEvents", "strippedHeaders")
PROVIDER_KEYS: Final[Mapping[SourceProvider, tuple[str, ...]]] = {
    SourceProvider.GITHUB: (*_COMMON, "appId", "privateKeyFile", "apiBaseUrl", "webBaseUrl"),
    SourceProvider.GENERIC: (*_COMMON, *_NON_GITHUB, "eventTypeHeader", "eventTypePath"),
    SourceProvider.UNIVERSAL_GIT: (*_COMMON, *_NON_GITHUB, "gitConfig"),
    SourceProvider.LOCAL: (*_COMMON, *_NON_GITHUB, "repoBasePath", "cloneUrlBase"),
}


@attrs.frozen
class SourcesSection:
    """The parsed section: the sources, the problems found, and the env names its secrets read."""

    sources: tuple[SourceConfig, ...] = ()
    problems: tuple[Problem, ...] = ()
    env_names: frozenset[str] = frozenset()


class _Entry:
    """One list entry being read; collects problems under ``sources[i].key``."""

    def __init__(
        self, data: Mapping[Any, Any], index: int, yaml: YamlSource, problems: list[Problem]
    ) -> None:
        self.data = data
        self.index = index
        self.yaml = yaml
        self.problems = problems

    def where(self, key: str = "") -> str:
        return f"{self.yaml.where(SECTION)}[{self.index}]" + (f".{key}" if key else "")

    def fail(self, key: str, message: str, fix: str = "") -> None:
        self.problems.append(Problem(self.where(key), message, fix))

    def text(self, key: str, *, required: bool = False) -> str | None:
        value = self.data.get(key)
        if value is None:
            if required:
                self.fail(key, "is required")
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            self.fail(key, f"expected a string, got {describe(value)}")
            return None
        text = str(value).strip()
        if not text:
            self.fail(key, "must not be empty")
            return None
        return text

    def texts(self, key: str, *, secret: bool = False) -> tuple[str, ...]:
        value = self.data.get(key)
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) and v.strip() for v in items):
            self.fail(
                key, f"expected a string or a list of non-empty strings, got {describe(value, secret=secret)}"
            )
            return ()
        return tuple(v.strip() if not secret else v for v in items)

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            self.fail(key, f"expected true or false, got {describe(value)}")
            return default
        return value

    def integer(self, key: str, default: int, maximum: int) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
            self.fail(key, f"expected an integer from 1 to {maximum}, got {describe(value)}")
            return default
        return value

    def absolute(self, key: str, *, required: bool = False) -> str | None:
        value = self.text(key, required=required)
        if value is not None and not value.startswith("/"):
            self.fail(key, f"expected an absolute path, got {describe(value)}", "Start the path with /")
            return None
        return value

    def url(self, key: str, schemes: Sequence[str]) -> str | None:
        value = self.text(key)
        if value is not None and (urlsplit(value).scheme not in schemes or not urlsplit(value).netloc):
            wanted = " or ".join(f"{s}://" for s in schemes)
            self.fail(key, f"expected a URL starting with {wanted}, got {describe(value)}")
            return None
        return value


def _provider(entry: _Entry) -> SourceProvider | None:
    raw = entry.data.get("provider")
    try:
        return SourceProvider(raw.strip().lower() if isinstance(raw, str) else "")
    except ValueError:
        allowed = ", ".join(p.value for p in SourceProvider)
        entry.fail("provider", f"expected one of {allowed}, got {describe(raw)}")
        return None


def _unknown_keys(entry: _Entry, provider: SourceProvider) -> None:
    allowed = PROVIDER_KEYS[provider]
    for key in entry.data:
        if not isinstance(key, str):
            entry.fail("", f"keys must be strings, got {describe(key)}", "Quote the key")
        elif key not in allowed:
            guess = nearest(key, list(allowed))
            hint = (
                f"Did you mean {guess}?"
                if guess
                else f"Known keys for {provider.value}: {', '.join(allowed)}"
            )
            entry.fail(key, f"unknown key for a {provider.value} source", hint)


def _secrets(entry: _Entry, env: Mapping[str, str]) -> tuple[tuple[SecretRef, ...], set[str]]:
    refs = [SecretRef(SecretKind.VALUE, v) for v in entry.texts("secret", secret=True)]
    names: set[str] = set()
    for name in entry.texts("secretEnv"):
        names.add(name)
        if not env.get(name):
            entry.fail(
                "secretEnv",
                f"names {name}, which is not set in the environment",
                f"Export {name} or remove it from secretEnv",
            )
        refs.append(SecretRef(SecretKind.ENV, name))
    for path in entry.texts("secretFile"):
        if not path.startswith("/"):
            entry.fail(
                "secretFile", f"expected an absolute path, got {describe(path)}", "Start the path with /"
            )
            continue
        refs.append(SecretRef(SecretKind.FILE, path))
    return tuple(refs), names


def _git_config(entry: _Entry) -> GitConfig | None:
    raw = entry.data.get("gitConfig")
    if raw is None:
        entry.fail(
            "gitConfig",
            "is required for a universal-git source",
            "Give at least preset and gitUrlTemplate (30 §3.2)",
        )
        return None
    try:
        config = parse_git_config(raw)
    except InvalidGitConfigError as exc:
        entry.fail("gitConfig", str(exc))
        return None
    if config.credential_ref is not None and config.credential_ref.store not in _CREDENTIAL_STORES:
        entry.fail(
            "gitConfig.credentialRef.store",
            f"expected env or file in independent mode, got {describe(config.credential_ref.store)}",
            "Read the credential from an environment variable (store: env) or a file (store: file)",
        )
        return None
    return config


def _verification(
    entry: _Entry, provider: SourceProvider, git: GitConfig | None, secrets: tuple[SecretRef, ...]
) -> tuple[str, str | None, tuple[str, ...]]:
    if provider is SourceProvider.GITHUB:
        if not secrets:
            entry.fail(
                "secret", "a GitHub source needs its webhook secret", "Set secret, secretEnv or secretFile"
            )
        return VerificationMethod.HMAC_SHA256.value, None, ()
    method = entry.text("verification") or default_verification(provider, git, bool(secrets))
    if method not in {m.value for m in VerificationMethod}:
        entry.fail(
            "verification",
            f"expected one of {', '.join(m.value for m in VerificationMethod)}, got {describe(method)}",
        )
        return VerificationMethod.NONE.value, None, ()
    needs_secret = method in (VerificationMethod.HMAC_SHA256.value, VerificationMethod.BEARER_TOKEN.value)
    if needs_secret and not secrets:
        entry.fail("verification", f"{method} needs a secret", "Set secret, secretEnv or secretFile")
    allowlist = entry.texts("allowlist")
    if method == VerificationMethod.IP_ALLOWLIST.value:
        if not allowlist:
            entry.fail("allowlist", "ip_allowlist needs at least one IP address")
        for address in allowlist:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                entry.fail("allowlist", f"{describe(address)} is not a single IP address (no CIDR ranges)")
    header = (entry.text("signatureHeader") or default_signature_header(method, git)).lower()
    return method, header, allowlist


def _read_entry(entry: _Entry, env: Mapping[str, str]) -> tuple[SourceConfig | None, set[str]]:
    name = entry.text("name", required=True)
    if name is not None and not set(name) <= _NAME_CHARS:
        entry.fail("name", f"expected letters, digits, '.', '_' or '-', got {describe(name)}")
    provider = _provider(entry)
    if provider is None:
        return None, set()
    _unknown_keys(entry, provider)
    secrets, names = _secrets(entry, env)
    is_github = provider is SourceProvider.GITHUB
    app_id = entry.text("appId", required=is_github) if is_github else None
    git = _git_config(entry) if provider is SourceProvider.UNIVERSAL_GIT else None
    method, header, allowlist = _verification(entry, provider, git, secrets)
    limit = GITHUB_MAX_PAYLOAD_BYTES if is_github else DIRECT_MAX_PAYLOAD_BYTES
    default_limit = GITHUB_MAX_PAYLOAD_BYTES if is_github else DEFAULT_MAX_PAYLOAD_BYTES
    routing_key = entry.text("routingKey")
    if name is None or (is_github and app_id is None):
        return None, names
    routing_key = routing_key or default_routing_key(provider, name, app_id)
    if not _routing_key_fits(entry, routing_key, provider):
        return None, names
    source = SourceConfig(
        name=name,
        provider=provider,
        routing_key=routing_key,
        secrets=secrets,
        enabled=entry.flag("enabled", True),
        verification=method,
        signature_header=header,
        allowlist=allowlist,
        max_payload_bytes=entry.integer("maxPayloadBytes", default_limit, limit),
        allowed_events=entry.texts("allowedEvents"),
        event_type_header=entry.text("eventTypeHeader"),
        event_type_path=entry.text("eventTypePath"),
        repo_base_path=entry.absolute("repoBasePath", required=provider is SourceProvider.LOCAL),
        clone_url_base=entry.text("cloneUrlBase"),
        git=git,
        app_id=app_id,
        private_key_file=entry.absolute("privateKeyFile"),
        api_base_url=entry.url("apiBaseUrl", ("http", "https")),
        web_base_url=entry.url("webBaseUrl", ("http", "https")),
        stripped_headers=entry.texts("strippedHeaders"),
    )
    return source, names


def _routing_key_fits(entry: _Entry, key: str, provider: SourceProvider) -> bool:
    try:
        parsed = parse_routing_key(key)
    except InvalidRoutingKeyError as exc:
        entry.fail("routingKey", exc.reason)
        return False
    want = "github" if provider is SourceProvider.GITHUB else "generic"
    kinds = (RoutingKeyKind.GITHUB,) if want == "github" else (RoutingKeyKind.GENERIC,)
    if parsed.kind in kinds or (parsed.kind is RoutingKeyKind.DEFAULT and parsed.type == want):
        return True
    example = "github:<appId>" if want == "github" else "generic:<orgId>:<sourceId>"
    entry.fail("routingKey", f"a {provider.value} source needs a {example} key, got {describe(key)}")
    return False


def _duplicates(
    sources: Sequence[SourceConfig], yaml: YamlSource, field: Callable[[SourceConfig], str], what: str
) -> list[Problem]:
    seen: dict[str, int] = {}
    problems = []
    for index, source in enumerate(sources):
        value = field(source)
        if value in seen:
            problems.append(
                Problem(
                    f"{yaml.where(SECTION)}[{index}]",
                    f"repeats the {what} {value!r} of entry {seen[value]}",
                    f"Give every source its own {what}",
                )
            )
        seen.setdefault(value, index)
    return problems


def read_sources(raw: object, yaml: YamlSource, env: Mapping[str, str]) -> SourcesSection:
    """The ``sources:`` list of a YAML tree (``None`` = no sources) as typed sources and problems."""
    if raw is None:
        return SourcesSection()
    if not isinstance(raw, list):
        return SourcesSection(
            problems=(
                Problem(
                    yaml.where(SECTION),
                    f"expected a list of sources, got {describe(raw)}",
                    "Write each source as a '- name: ...' item",
                ),
            )
        )
    problems: list[Problem] = []
    sources: list[SourceConfig] = []
    names: set[str] = set()
    for index, item in enumerate(raw):
        if not isinstance(item, Mapping):
            problems.append(
                Problem(
                    f"{yaml.where(SECTION)}[{index}]", f"expected a mapping of settings, got {describe(item)}"
                )
            )
            continue
        source, used = _read_entry(_Entry(item, index, yaml, problems), env)
        names |= used
        if source is not None:
            sources.append(source)
    problems += _duplicates(sources, yaml, lambda s: s.name, "name")
    problems += _duplicates(sources, yaml, lambda s: s.routing_key, "routing key")
    return SourcesSection(tuple(sources), tuple(problems), frozenset(names))


__all__ = ["PROVIDER_KEYS", "SECTION", "SourcesSection", "read_sources"]
