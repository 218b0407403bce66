"""When the pipeline asks a provider for an event's changed files (HOOK-13).

Changed files cost provider API calls (GitHub paginates a big pull request over many requests),
and only ``paths`` filters of ``pr`` and ``push`` triggers read them. So they are fetched only
when the dispatching bundle has a fetcher and some workflow has such a trigger.

Choice beyond the spec's wording: the trigger must also be of the event's own kind (a ``push``
trigger's paths for a ``push`` event, a ``pr`` trigger's for ``pull_request``). Any other
trigger fails its type guard before its paths are read, so skipping the fetch there never
changes a match and saves the call for every tag, comment or release event.
"""

from __future__ import annotations

from collections.abc import Iterable

from kici.domain.events import SimulatedEvent
from kici.domain.lockfile.triggers import PrTrigger, PushTrigger
from kici.domain.triggers import WorkflowLike, needs_changed_files


def changed_files_needed(
    workflows: Iterable[WorkflowLike], event: SimulatedEvent, *, fetcher_available: bool
) -> bool:
    """Whether to fetch ``event``'s changed files before matching ``workflows``."""
    if not fetcher_available:
        return False
    kind = {"push": PushTrigger, "pull_request": PrTrigger}.get(event.type)
    if kind is None:
        return False
    return any(needs_changed_files(t for t in w.triggers if isinstance(t, kind)) for w in workflows)


__all__ = ["changed_files_needed"]
