"""A server daemon's ordered shutdown: parts stopped one by one, and how a signal begins it.

The orchestrator and the Platform share this shape: the HTTP front door stops before the work
behind it, so no request reaches a part that is already gone. Each part runs under its own cancel
scope (``Part``); ``Lifecycle`` turns SIGTERM/SIGINT into "cancel the start" while the daemon is
still coming up (nothing to drain yet) and into "begin the ordered stop" once it is up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import structlog
import trio

_log = structlog.get_logger("kici.lifecycle")


class Part:
    """One long-running part with its own cancel scope, so shutdown can stop parts in order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.scope = trio.CancelScope()
        self.done = trio.Event()

    async def run(
        self,
        fn: Callable[..., Awaitable[Any]],
        *,
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            with self.scope:
                await fn(task_status=task_status)
        finally:
            self.done.set()

    async def stop(self) -> None:
        self.scope.cancel()
        await self.done.wait()
        _log.info("stopped", part=self.name)


@attrs.define
class Lifecycle:
    """Signals before the service is up cancel the start outright; after, they begin the ordered stop."""

    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    up: bool = False
    stop: trio.Event = attrs.field(factory=trio.Event)

    def terminate(self, signum: int) -> None:
        _log.info("termination signal received; shutting down", signal=signum)
        if self.up:
            self.stop.set()
        else:
            self.scope.cancel()
