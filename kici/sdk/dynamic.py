"""Dynamic jobs (SDK-20, 10 §9): generators that return jobs when a run starts.

A workflow's ``jobs`` may hold generator callables besides jobs:

* a bare function ``fn(g) -> list[Job]`` (or ``async def``), evaluated on an agent for
  each event, untagged;
* ``dynamic_job("g", fn)``: the same, tagged so static jobs can wait for every job it
  produces with ``needs=[dynamic_group("g", when=...)]``;
* ``dynamic_job("g", needs=[...], generate=fn)``: result-aware, evaluated only once
  the declared upstreams are terminal, with their outputs in ``g.needs``.

The generator context ``g`` (``sh``, ``ctx``, ``needs``, ``log``, ``env``, ``kici``) is
built by the runner. A :class:`DynamicJob` is itself callable, so the runner and
:mod:`kici.sdk.naming` treat every generator alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kici.sdk.checks import INVALID_OPTION, as_tuple, check_callable, check_name
from kici.sdk.diagnostics import error
from kici.sdk.location import SourceLocation, caller_location
from kici.sdk.needs import DynamicGroupNeed, Need, as_need


@dataclass(frozen=True, eq=False)
class DynamicJob:
    group: str
    generate: Callable[..., Any]
    needs: tuple[Need | DynamicGroupNeed, ...] = ()
    result_aware: bool = False
    location: SourceLocation = field(default_factory=caller_location, repr=False)

    def __post_init__(self) -> None:
        check_name(self.group, "dynamic_job group", self.location)
        check_callable(self.generate, f"dynamic_job('{self.group}'): generate", self.location)
        object.__setattr__(
            self, "needs", tuple(as_need(item, self.location) for item in as_tuple(self.needs))
        )

    def __call__(self, context: Any) -> Any:
        return self.generate(context)


def dynamic_job(
    group: str,
    fn: Callable[..., Any] | None = None,
    *,
    needs: Any = None,
    generate: Callable[..., Any] | None = None,
) -> DynamicJob:
    """A tagged generator; with ``needs`` it is result-aware (deferred until they finish)."""
    location = caller_location()
    if fn is not None and generate is not None:
        raise error(
            INVALID_OPTION, f"dynamic_job('{group}'): pass the generator once, as fn or generate=", location
        )
    generator = fn if fn is not None else generate
    if generator is None:
        raise error(INVALID_OPTION, f"dynamic_job('{group}'): a generator function is required", location)
    declared = as_tuple(needs)
    return DynamicJob(group, generator, declared, result_aware=bool(declared), location=location)
