"""Lifecycle hooks (SDK-23): a callable, or ``Hook(run, timeout)`` when the default 300 s cap is wrong.

Which hook runs when is the runner's business (10 §5); here a hook is only validated
and normalized, so every hook attribute on a workflow, job or step is a ``Hook`` or
``None``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kici.sdk.checks import INVALID_OPTION, Seconds, as_seconds, check_callable
from kici.sdk.diagnostics import error
from kici.sdk.location import SourceLocation, caller_location

DEFAULT_HOOK_TIMEOUT: Seconds = 300


@dataclass(frozen=True, eq=False)
class Hook:
    run: Callable[..., Any]
    timeout: Seconds = DEFAULT_HOOK_TIMEOUT
    location: SourceLocation = field(default_factory=caller_location, repr=False)

    def __post_init__(self) -> None:
        check_callable(self.run, "Hook.run", self.location)
        object.__setattr__(self, "timeout", as_seconds(self.timeout, "Hook.timeout", self.location))


def as_hook(value: object, what: str, location: SourceLocation) -> Hook | None:
    """``None``, a ``Hook``, or a bare callable wrapped with the default timeout."""
    if value is None or isinstance(value, Hook):
        return value
    if callable(value):
        return Hook(run=value, location=location)
    raise error(
        INVALID_OPTION, f"{what} must be a callable or Hook(run, timeout=...), got {value!r}", location
    )
