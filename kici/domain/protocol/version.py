"""Protocol versioning (20-protocol.md §3).

The version moves only on breaking schema changes; additive changes travel as new optional
fields and capability flags, which old receivers ignore. So a receiver rejects only peers
*older* than what it still supports, and accepts newer ones, gating features on their
capability manifest instead of on the number.
"""

from typing import Final

import attrs

from kici.domain.protocol.close_codes import CloseCode

PROTOCOL_VERSION: Final = 1
MIN_PROTOCOL_VERSION: Final = 1
UNSUPPORTED_VERSION_REASON: Final = "Unsupported protocol version"


@attrs.frozen(kw_only=True)
class VersionVerdict:
    """Accepted, or the ``auth.failure`` reason and the close code to send."""

    accepted: bool
    reason: str | None = None
    close_code: CloseCode | None = None


_ACCEPT: Final = VersionVerdict(accepted=True)


def check_protocol_version(version: int, minimum: int = MIN_PROTOCOL_VERSION) -> VersionVerdict:
    """Below ``minimum``: reject with close 4005; at or above it (newer too): accept."""
    if version < minimum:
        return VersionVerdict(
            accepted=False, reason=UNSUPPORTED_VERSION_REASON, close_code=CloseCode.PROTOCOL_ERROR
        )
    return _ACCEPT
