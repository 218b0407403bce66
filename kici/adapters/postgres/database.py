"""psycopg from trio: a sync connection pool driven through worker threads.

psycopg has no trio support, so :class:`Database` wraps a sync
``psycopg_pool.ConnectionPool`` and runs each unit of work with
``trio.to_thread.run_sync`` under a ``CapacityLimiter`` sized to the pool (a
thread never waits for a connection another thread holds; ~0.13 ms a hop).

A unit of work is a plain function of a connection, run as one transaction:
``await db.run(fn)``. It may be called more than once (see retries below), so
it must not have effects outside the connection. That shape was chosen over ``async with db.transaction()``
because the whole transaction then happens in one thread hop: it cannot hold
row locks across a trio ``await`` (a network round trip, a slow peer), it costs
one hop instead of one per statement, and it is trivially safe to re-run after
a connection loss because the server rolled it back.

Failure handling:

* Connections are *not* checked at checkout (``check=``): that was one extra
  round trip, and one extra server transaction, per transaction (~29 per job in
  issue 7's throughput benchmark). A connection that died with
  a PostgreSQL restart fails the transaction's ``BEGIN`` instead, before any work
  ran, and is handled like any connection lost mid-transaction: every idle
  pooled connection is then checked once (``pool.check()``, the dead ones are
  replaced) and the work retried, so one restart costs one failed ``BEGIN`` and
  one sweep, not one failure per dead connection against a bounded retry count.
* A connection lost mid-transaction (or a deadlock / serialization failure) is
  retried a few times on a fresh connection: the work never committed.
* A connection lost *during* COMMIT raises :class:`CommitUnknownError`: the
  outcome is unknown and only the caller can tell whether a re-run is safe.
* Anything else (constraint violations, SQL errors) propagates unchanged.

Worker threads are never abandoned on cancellation (``to_thread`` default):
a cancelled caller waits for its transaction to finish rather than leaking a
connection in an unknown state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
import trio
from psycopg import errors as pg_errors
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from kici.domain.store import CommitUnknownError, StoreUnavailableError

T = TypeVar("T")

Connection = psycopg.Connection[DictRow]
UnitOfWork = Callable[[Connection], T]

DEFAULT_POOL_TIMEOUT_S = 10.0
RETRY_DELAYS_S = (0.05, 0.2, 0.5)

_CONNECTION_LOST_CLASSES = ("08", "57P")


class _Retry(Exception):
    """The unit of work did not commit and may run again."""


def _configure(conn: psycopg.Connection[Any]) -> None:
    # Every timestamptz comes back in UTC, whatever the server's or URL's time zone.
    conn.execute("SET TIME ZONE 'UTC'")


def _connection_lost(exc: psycopg.OperationalError, conn: psycopg.Connection[Any] | None) -> bool:
    if conn is None or conn.closed or conn.broken:
        return True
    state = exc.sqlstate or ""
    return state.startswith(_CONNECTION_LOST_CLASSES)


class Database:
    """A pool of PostgreSQL connections usable from trio; see the module docstring."""

    def __init__(self, pool: ConnectionPool[Connection], limiter: trio.CapacityLimiter) -> None:
        self._pool = pool
        self._limiter = limiter

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        conninfo: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT_S,
        name: str = "kici",
    ) -> AsyncIterator[Database]:
        """Open the pool (waiting for ``min_size`` connections) and close it on the way out.

        Raises :class:`StoreUnavailableError` when the first connections cannot be
        made within ``pool_timeout`` seconds (also the wait for a free connection).
        """
        pool: ConnectionPool[Connection] = ConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            open=False,
            timeout=pool_timeout,
            name=name,
            configure=_configure,
            kwargs={"autocommit": True, "row_factory": dict_row},
        )
        try:
            await trio.to_thread.run_sync(lambda: pool.open(wait=True, timeout=pool_timeout))
        except PoolTimeout as exc:
            await trio.to_thread.run_sync(pool.close)
            raise StoreUnavailableError(f"cannot connect to PostgreSQL: {exc}") from exc
        try:
            yield cls(pool, trio.CapacityLimiter(max_size))
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(pool.close)

    async def run(self, work: UnitOfWork[T]) -> T:
        """Run ``work`` in one transaction on a pooled connection and return its result."""
        for delay in (*RETRY_DELAYS_S, None):
            try:
                return await trio.to_thread.run_sync(self._transaction, work, limiter=self._limiter)
            except _Retry as retry:
                if delay is None:
                    raise StoreUnavailableError(
                        f"PostgreSQL unavailable: {retry.__cause__}"
                    ) from retry.__cause__
                await trio.sleep(delay)
        raise AssertionError("unreachable")

    async def run_autocommit(self, work: UnitOfWork[T]) -> T:
        """Run ``work`` outside a transaction (``CREATE DATABASE``, ``VACUUM``); never retried."""
        return await trio.to_thread.run_sync(self._autocommit, work, limiter=self._limiter)

    def _transaction(self, work: UnitOfWork[T]) -> T:
        conn: Connection | None = None
        committing = False
        try:
            with self._pool.connection() as conn:
                with conn.transaction():
                    result = work(conn)
                    committing = True
                return result
        except PoolTimeout as exc:
            raise StoreUnavailableError(f"no PostgreSQL connection available: {exc}") from exc
        except (
            pg_errors.TransactionRollback,
            pg_errors.DeadlockDetected,
            pg_errors.SerializationFailure,
        ) as exc:
            # psycopg files 40P01 and 40001 under OperationalError, not under TransactionRollback (40000).
            raise _Retry from exc
        except psycopg.OperationalError as exc:
            if not _connection_lost(exc, conn):
                raise
            if committing:
                raise CommitUnknownError(f"connection lost while committing: {exc}") from exc
            self._sweep()
            raise _Retry from exc

    def _autocommit(self, work: UnitOfWork[T]) -> T:
        # Not retried once the work started (it may be half done), so the connection is checked
        # first: a dead one costs a sweep and one more checkout, as the transactions' BEGIN does.
        for last in (False, True):
            try:
                with self._pool.connection() as conn:
                    try:
                        ConnectionPool.check_connection(conn)
                    except psycopg.OperationalError:
                        if last:
                            raise
                        self._sweep()
                        continue
                    return work(conn)
            except PoolTimeout as exc:
                raise StoreUnavailableError(f"no PostgreSQL connection available: {exc}") from exc
        raise AssertionError("unreachable")

    def _sweep(self) -> None:
        # A lost connection usually means a server restart: every idle connection died with it.
        self._pool.check()

    def stats(self) -> dict[str, int]:
        """The pool's counters (for metrics such as ``kici_orch_pg_pool_client_errors_total``)."""
        return dict(self._pool.get_stats())
