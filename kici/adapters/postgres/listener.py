"""LISTEN/NOTIFY for trio on one dedicated connection.

The listener owns a single autocommit connection that only ever LISTENs. trio
waits on its socket (``trio.lowlevel.wait_readable(conn.pgconn.socket)``), then
``consume_input()`` reads what arrived and ``notifies()`` hands out the
notifications, so no thread is parked on it.

PostgreSQL drops notifications sent while a session is not listening, so every
(re)connection is followed by LISTEN on all channels and then the catch-up
callback, which must re-read from tables whatever the notifications would have
announced (ready jobs, pending queue rows). The catch-up also runs after the
first connection: nothing sent before LISTEN can be assumed seen. A lost
connection is retried at once, then with the shared reconnect backoff
(``kici.domain.backoff``: 1 s x 1.5 per attempt, jittered, capped).

Exceptions raised by the callbacks propagate to the listener's owner: losing
the connection is the listener's business, a failing handler is not.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence

import attrs
import psycopg
import trio
from psycopg import sql
from psycopg.pq import ConnStatus

from kici.domain.backoff import DEFAULT_MAX_DELAY_MS, ReconnectBackoff

CONNECT_TIMEOUT_S = 10


@attrs.frozen
class Notification:
    channel: str
    payload: str
    pid: int


NotifyHandler = Callable[[Notification], Awaitable[None]]
CatchUp = Callable[[], Awaitable[None]]


class Listener:
    """Deliver NOTIFYs on ``channels`` to ``on_notify``; run ``on_catch_up`` after every (re)connect.

    Start it in a nursery with ``await nursery.start(listener.run)``: ``start``
    returns once the first LISTEN and catch-up are done.
    """

    def __init__(
        self,
        conninfo: str,
        channels: Sequence[str],
        on_notify: NotifyHandler,
        on_catch_up: CatchUp,
        *,
        max_delay_ms: float = DEFAULT_MAX_DELAY_MS,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if not channels:
            raise ValueError("a listener needs at least one channel")
        self._conninfo = conninfo
        self._channels = tuple(channels)
        self._on_notify = on_notify
        self._on_catch_up = on_catch_up
        self._max_delay_ms = max_delay_ms
        self._jitter = jitter
        self.connection_count = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        backoff = ReconnectBackoff(self._max_delay_ms)
        started = False
        retry_now = True
        while True:
            try:
                conn = await trio.to_thread.run_sync(self._connect)
            except psycopg.OperationalError:
                if retry_now:
                    retry_now = False
                    continue
                delay_ms, backoff = backoff.schedule(self._jitter())
                await trio.sleep(delay_ms / 1000)
                continue
            backoff = backoff.reset()
            retry_now = True
            self.connection_count += 1
            try:
                await self._on_catch_up()
                if not started:
                    started = True
                    task_status.started()
                await self._pump(conn)
            finally:
                conn.close()

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        try:
            for channel in self._channels:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        except BaseException:
            conn.close()
            raise
        return conn

    async def _pump(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        """Deliver notifications until the connection is lost."""
        pgconn = conn.pgconn
        encoding = conn.info.encoding
        while True:
            try:
                socket = pgconn.socket
            except psycopg.OperationalError:
                return
            await trio.lowlevel.wait_readable(socket)
            try:
                pgconn.consume_input()
            except psycopg.OperationalError:
                return
            if pgconn.status != ConnStatus.OK:
                return
            while (raw := pgconn.notifies()) is not None:
                notification = Notification(
                    raw.relname.decode(encoding), raw.extra.decode(encoding), raw.be_pid
                )
                await self._on_notify(notification)
