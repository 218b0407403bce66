"""Capability manifests: what a connected orchestrator or peer says it can do.

A manifest is advisory and forward compatible: newer senders add keys older receivers do
not model, so both manifests keep unknown keys (passthrough) and hand them back unchanged
when rebroadcast. Reading a manifest follows two rules of 20-protocol.md §3:
- a flag counts only when it is literally ``true`` (``1``, ``"true"``, ``{}`` do not);
- an absent manifest means "unknown", never "nothing supported": callers get ``None``
  and fall back to the pre-capability behaviour (e.g. forward the dashboard request).
"""

from enum import StrEnum
from typing import Any

import attrs

from kici.domain.protocol.base import (
    PASSTHROUGH,
    WireModel,
    check_passthrough,
    is_passthrough,
    model_fields,
    wire_key,
)


class OrchRole(StrEnum):
    COORDINATOR = "coordinator"
    WORKER = "worker"


class LogRoutingOverride(StrEnum):
    DIRECT = "direct"
    COORDINATOR = "coordinator"


@attrs.frozen(kw_only=True)
class OrchCapabilities(WireModel):
    """Sent in ``auth.request`` and whole again in ``orch.capabilities.update``.

    ``dashboard_writes`` lists write operations the orchestrator has switched off: a
    present key disables the operation, a missing key allows it (§3).
    """

    orch_role: OrchRole | None = None
    dashboard_writes: dict[str, bool] | None = None
    supported_dashboard_requests: list[str] | None = None
    extra: dict[str, Any] = attrs.field(factory=dict, metadata=PASSTHROUGH, validator=check_passthrough)


@attrs.frozen(kw_only=True)
class PeerCapabilities(WireModel):
    """Carried by ``peer.heartbeat`` and ``peer.auth.response``."""

    s3_log_access: bool
    log_routing_override: LogRoutingOverride | None = None
    extra: dict[str, Any] = attrs.field(factory=dict, metadata=PASSTHROUGH, validator=check_passthrough)


def capability_flag(manifest: OrchCapabilities | PeerCapabilities | None, key: str) -> bool | None:
    """Whether the wire key ``key`` is set to literally ``true``; ``None`` without a manifest."""
    if manifest is None:
        return None
    for field in model_fields(type(manifest)):
        if not is_passthrough(field) and wire_key(field) == key:
            return getattr(manifest, field.name) is True
    return manifest.extra.get(key) is True


def dashboard_write_allowed(manifest: OrchCapabilities | None, operation: str) -> bool:
    """A write operation is allowed unless the manifest names it under ``dashboardWrites``."""
    if manifest is None or manifest.dashboard_writes is None:
        return True
    return operation not in manifest.dashboard_writes


def dashboard_request_supported(manifest: OrchCapabilities | None, request_type: str) -> bool | None:
    """Pre-flight of a dashboard request: ``None`` (unknown, so forward it) without a list."""
    if manifest is None or manifest.supported_dashboard_requests is None:
        return None
    return request_type in manifest.supported_dashboard_requests
