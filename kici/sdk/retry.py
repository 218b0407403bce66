"""Step retry (SDK-25): how many attempts, and how long to wait between them.

``max_delay`` defaults to 30 s, or to ``delay`` when that is larger, so that
``Retry(3, delay=60, backoff="fixed")`` waits 60 s as written instead of being cut
to 30 s or refused. An explicit ``max_delay`` below ``delay`` is an error: waits
are never longer than ``max_delay`` and never shrink from one attempt to the next
(property S3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from kici.sdk.checks import (
    INVALID_OPTION,
    Seconds,
    as_seconds,
    check_optional_callable,
    is_number,
    one_of,
)
from kici.sdk.diagnostics import error
from kici.sdk.location import SourceLocation, caller_location

BackoffKind = Literal["exponential", "fixed"]
BACKOFF_KINDS = ("exponential", "fixed")
DEFAULT_MAX_DELAY: Seconds = 30
_MAX_EXPONENT = 1023  # 2.0 ** 1024 overflows a float; far beyond any max_delay anyway


@dataclass(frozen=True, eq=False)
class Retry:
    max_attempts: int
    delay: Seconds = 1
    backoff: BackoffKind = "exponential"
    max_delay: Seconds | None = None
    retry_if: Callable[[BaseException], Any] | None = None
    location: SourceLocation = field(default_factory=caller_location, repr=False)

    def __post_init__(self) -> None:
        loc = self.location
        if (
            not is_number(self.max_attempts)
            or not isinstance(self.max_attempts, int)
            or self.max_attempts < 1
        ):
            raise error(INVALID_OPTION, f"retry.max_attempts must be >= 1 (got {self.max_attempts!r})", loc)
        delay = as_seconds(self.delay, "retry.delay", loc, allow_zero=True)
        one_of(self.backoff, BACKOFF_KINDS, "retry.backoff", loc)
        if self.max_delay is None:
            max_delay = max(DEFAULT_MAX_DELAY, delay)
        else:
            max_delay = as_seconds(self.max_delay, "retry.max_delay", loc, allow_zero=True)
            if max_delay < delay:
                raise error(
                    INVALID_OPTION, f"retry.max_delay ({max_delay}) must be >= retry.delay ({delay})", loc
                )
        check_optional_callable(self.retry_if, "retry.retry_if", loc)
        object.__setattr__(self, "delay", delay)
        object.__setattr__(self, "max_delay", max_delay)

    def wait_after(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) before the next one."""
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1, got {attempt}")
        cap = float(self.max_delay if self.max_delay is not None else DEFAULT_MAX_DELAY)
        if self.backoff == "fixed":
            return min(float(self.delay), cap)
        return min(self.delay * 2.0 ** min(attempt - 1, _MAX_EXPONENT), cap)


def as_retry(value: object, location: SourceLocation) -> Retry | None:
    """``retry=N`` is ``Retry(max_attempts=N)``; ``None`` means a single attempt."""
    if value is None or isinstance(value, Retry):
        return value
    if is_number(value) and isinstance(value, int):
        return Retry(max_attempts=value, location=location)
    raise error(INVALID_OPTION, f"retry must be an int or Retry(...), got {value!r}", location)
