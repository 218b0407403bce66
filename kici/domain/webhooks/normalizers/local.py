"""The local-file provider: repositories in a directory of the orchestrator's host (HOOK-10).

Meant for a single machine and for trying kici out: ``kici-admin source trigger-local`` or a
``post-receive`` hook posts a GitHub-shaped push with ``x-event-type`` and the source's routing key
in ``x-kici-routing-key`` (or its id in ``x-kici-source-id``). The event type is that header,
verbatim; the target branch comes from ``payload.ref`` (``refs/heads/`` or ``refs/tags/``
stripped), else ``__local__``. The lock is read from the working tree
``<repoBasePath>/<repo>/.kici/kici.lock.json`` whatever the ref, and the provider never registers
workflows. Verification is ``none``: the source must only be reachable from the host.

Choices where the spec is silent: the delivery id comes from ``x-delivery-id`` /
``x-request-id`` / ``x-idempotency-key`` like a generic source; the lock ref is ``after`` when
the payload has one (so cache keys change with every commit), else ``HEAD``; the clone URL is
``<cloneUrlBase>/<repo>`` when a base is configured, else ``file://<repoBasePath>/<repo>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import attrs

from kici.domain.events import SimulatedEvent
from kici.domain.providers import Credentials
from kici.domain.webhooks.models import HEAD_REF, ProviderType, is_zero_sha
from kici.domain.webhooks.normalizers.generic import EVENT_TYPE_HEADER, delivery_id_from
from kici.domain.webhooks.payload import dig, identifier, owner_repo, require_safe_repo, strip_ref, text

LOCAL_TARGET_BRANCH: Final = "__local__"
ROUTING_KEY_HEADERS: Final = ("x-kici-routing-key", "x-kici-source-id")


class InvalidLocalConfigError(ValueError):
    """A local source whose ``repoBasePath`` is not absolute."""


def _absolute(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value.startswith("/"):
        raise InvalidLocalConfigError(f"{attribute.name} must be an absolute path")


@attrs.frozen
class LocalConfig:
    repo_base_path: str = attrs.field(validator=_absolute)
    clone_url_base: str | None = None


def parse_local_config(data: Any) -> LocalConfig:
    """``{repoBasePath, cloneUrlBase?}``; raises :class:`InvalidLocalConfigError`."""
    if not isinstance(data, Mapping) or not isinstance(data.get("repoBasePath"), str):
        raise InvalidLocalConfigError("local config needs a string repoBasePath")
    base = data.get("cloneUrlBase")
    if base is not None and (not isinstance(base, str) or not base):
        raise InvalidLocalConfigError("cloneUrlBase must be a non-empty string")
    return LocalConfig(data["repoBasePath"].rstrip("/") or "/", base)


class LocalNormalizer:
    """The :class:`~kici.domain.providers.WebhookNormalizer` of local sources."""

    @property
    def provider(self) -> ProviderType:
        return ProviderType.LOCAL

    def extract_routing_key(self, headers: Mapping[str, str], payload: Mapping[str, Any]) -> str | None:
        return next((headers[n] for n in ROUTING_KEY_HEADERS if headers.get(n)), None)

    def extract_delivery_id(self, headers: Mapping[str, str]) -> str | None:
        return delivery_id_from(headers)

    def extract_event_type(self, headers: Mapping[str, str]) -> str | None:
        return headers.get(EVENT_TYPE_HEADER) or None

    def verify_signature(self, body: bytes, headers: Mapping[str, str], secret: str | bytes) -> bool:
        """Local sources verify nothing (method ``none``)."""
        return True

    def extract_repo_identifier(self, payload: Mapping[str, Any]) -> str | None:
        return owner_repo(payload) or text(dig(payload, "repository", "name"))

    def extract_default_branch(self, payload: Mapping[str, Any]) -> str | None:
        return text(dig(payload, "repository", "default_branch"))

    def extract_credentials(self, payload: Mapping[str, Any]) -> Credentials:
        return {}

    def extract_ref(self, event: str, payload: Mapping[str, Any]) -> str:
        after = text(payload.get("after"))
        return after if after is not None and not is_zero_sha(after) else HEAD_REF

    def normalize_event(
        self, event: str, action: str | None, payload: Mapping[str, Any]
    ) -> SimulatedEvent | None:
        if not event:
            return None
        ref = text(payload.get("ref"))
        return SimulatedEvent(
            type=event,
            action=action if action is not None else text(payload.get("action")),
            payload=payload,
            target_branch=strip_ref(ref) if ref is not None else LOCAL_TARGET_BRANCH,
            provider=ProviderType.LOCAL.value,
            sender_username=text(dig(payload, "sender", "login")),
            sender_user_id=identifier(dig(payload, "sender", "id")),
        )


class LocalUrls:
    """The :class:`~kici.domain.providers.RepoUrlBuilder` of a local source."""

    def __init__(self, config: LocalConfig) -> None:
        self.config = config

    def build_clone_url(self, repo: str) -> str:
        require_safe_repo(repo)
        if self.config.clone_url_base is not None:
            return f"{self.config.clone_url_base.rstrip('/')}/{repo}"
        return f"file://{self.config.repo_base_path.rstrip('/')}/{repo}"

    def build_raw_file_url(self, repo: str, ref: str, path: str) -> str | None:
        """A working tree has no URL per ref."""
        return None


__all__ = [
    "LOCAL_TARGET_BRANCH",
    "ROUTING_KEY_HEADERS",
    "InvalidLocalConfigError",
    "LocalConfig",
    "LocalNormalizer",
    "LocalUrls",
    "parse_local_config",
]
