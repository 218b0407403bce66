"""Reconnect backoff shared by every client link (agent, upstream, peer).

Delays grow by 1.5x per attempt from one second, spread by up to +50 % jitter so
that a fleet of agents cut off by one orchestrator restart does not reconnect in
lock step, and are capped (60 s by default) so that a live agent retries at least
twice inside the orchestrator's 120 s recovery grace. There is no attempt limit:
a CI agent should come back by itself after an outage of any length.

All values are milliseconds; the jitter ``r`` is drawn by the caller.
"""

from __future__ import annotations

import math

import attrs

BASE_DELAY_MS = 1_000.0
GROWTH = 1.5
JITTER_SPAN = 0.5
DEFAULT_MAX_DELAY_MS = 60_000.0


class InvalidBackoffError(ValueError):
    """An attempt number, cap or jitter value outside its domain."""


def base_delay_ms(attempt: int) -> float:
    """The un-jittered, uncapped delay ``1000 * 1.5**attempt`` (``inf`` once it overflows a float)."""
    if attempt < 0:
        raise InvalidBackoffError(f"attempt must be >= 0, got {attempt}")
    try:
        return BASE_DELAY_MS * GROWTH**attempt
    except OverflowError:
        return math.inf


def delay_ms(attempt: int, max_ms: float, r: float) -> float:
    """The wait before reconnect number ``attempt`` (0-based), given jitter ``r`` in [0, 1)."""
    if not 0.0 <= r < 1.0:
        raise InvalidBackoffError(f"jitter r must be in [0, 1), got {r}")
    if not max_ms > 0:
        raise InvalidBackoffError(f"max_ms must be > 0, got {max_ms}")
    base = base_delay_ms(attempt)
    if base >= max_ms:
        return float(max_ms)
    return min(base * (1.0 + JITTER_SPAN * r), float(max_ms))


@attrs.frozen
class ReconnectBackoff:
    """The attempt counter of one client link.

    ``attempt`` counts reconnects scheduled since the last successful handshake
    (``register.ack`` for agents, ``auth.success`` upstream, peer auth success),
    which is when the link calls :meth:`reset`.
    """

    max_ms: float = attrs.field(default=DEFAULT_MAX_DELAY_MS)
    attempt: int = attrs.field(default=0)

    @max_ms.validator
    def _check_max(self, _attribute: attrs.Attribute[float], value: float) -> None:
        if not value > 0:
            raise InvalidBackoffError(f"max_ms must be > 0, got {value}")

    @attempt.validator
    def _check_attempt(self, _attribute: attrs.Attribute[int], value: int) -> None:
        if value < 0:
            raise InvalidBackoffError(f"attempt must be >= 0, got {value}")

    def schedule(self, r: float) -> tuple[float, ReconnectBackoff]:
        """The delay for the next reconnect and the counter after it."""
        return delay_ms(self.attempt, self.max_ms, r), attrs.evolve(self, attempt=self.attempt + 1)

    def reset(self) -> ReconnectBackoff:
        return attrs.evolve(self, attempt=0)
