"""How long a link may stay silent before the monitor acts on it.

Senders heartbeat every 30 s, so 90 s of silence is three missed beats: worth a
log line (UNHEALTHY) but not a disconnect, because a busy or briefly stalled
peer still recovers on its own. Past 180 s the link is STALE: the monitor closes
it with 4004 and runs disconnect handling, which starts job recovery. Any
inbound frame counts as a sign of life, not only heartbeats.

Elapsed times are milliseconds since the last inbound frame; a negative value
(a clock that stepped backwards) counts as fresh.
"""

from __future__ import annotations

import enum

import attrs

HEARTBEAT_INTERVAL_MS = 30_000
UNHEALTHY_AFTER_MS = 90_000
STALE_AFTER_MS = 180_000
SWEEP_INTERVAL_MS = 30_000


class InvalidLivenessError(ValueError):
    """Thresholds that are not positive or not in order."""


class Liveness(enum.StrEnum):
    OK = "ok"
    UNHEALTHY = "unhealthy"
    STALE = "stale"


@attrs.frozen
class LivenessThresholds:
    """Both bounds are inclusive on the healthier side: exactly 90 s is still OK."""

    unhealthy_after_ms: float = UNHEALTHY_AFTER_MS
    stale_after_ms: float = STALE_AFTER_MS

    def __attrs_post_init__(self) -> None:
        if not 0 < self.unhealthy_after_ms <= self.stale_after_ms:
            raise InvalidLivenessError(
                "need 0 < unhealthy_after_ms <= stale_after_ms, got "
                f"{self.unhealthy_after_ms} and {self.stale_after_ms}"
            )


DEFAULT_THRESHOLDS = LivenessThresholds()


def classify_liveness(elapsed_ms: float, thresholds: LivenessThresholds = DEFAULT_THRESHOLDS) -> Liveness:
    if elapsed_ms > thresholds.stale_after_ms:
        return Liveness.STALE
    if elapsed_ms > thresholds.unhealthy_after_ms:
        return Liveness.UNHEALTHY
    return Liveness.OK
