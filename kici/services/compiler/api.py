"""The parent side of the compiler: run a clean child, read its verdict, write or check the lock.

Workflows are user code, so they are imported in a fresh interpreter
(``python -m kici.services.compiler.child``) and never in the caller's process:
an edited file is re-imported from scratch each time (``--watch``), a module that
hangs, exits or crashes costs one diagnostic instead of the CLI, and nothing the
user's module does at import time leaks into the caller. This module is
synchronous and trio-free so the CLI, the local engine and tests can all call it.

Choices where the spec is silent:

* The child gets a sanitized environment (locale, ``PATH``, ``HOME``, temp dir
  and the interpreter settings it needs): module top level must be deterministic
  (00 §1.9), and a workflow reading a developer's environment at import time
  would compile differently on CI.
* A child that exits without a verdict (``os._exit``, a crash in a C extension, a
  hang past ``timeout``) is reported as E003: the only code it runs besides kici is
  the user's modules being imported.
* The D4 ``lockfileHash`` warning is reported under the code ``D4`` (the spec gives
  the drift rule, not a ``W`` number).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

import attrs

import kici
from kici.domain.lockfile import LockFile, LockFileParseError, diff_locks, dump_lock, parse_lock
from kici.services.compiler.checks import lockfile_hash_warning
from kici.services.compiler.diagnostics import Diagnostic, error, has_errors

LOCK_FILE_NAME: Final = "kici.lock.json"
DEFAULT_TIMEOUT_S: Final = 120.0
POLL_INTERVAL_S: Final = 0.2
DEBOUNCE_S: Final = 0.2
STDERR_TAIL_LINES: Final = 20

_PASSED_ENV: Final = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SYSTEMROOT")


@attrs.frozen(kw_only=True)
class CompileResult:
    """``lock`` is ``None`` exactly when some diagnostic is an error."""

    lock: LockFile | None
    diagnostics: tuple[Diagnostic, ...] = ()
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.lock is not None and not has_errors(self.diagnostics)

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.is_error)

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if not d.is_error)

    @property
    def workflow_count(self) -> int:
        return len(self.lock.workflows) if self.lock is not None else 0


def lock_path(kici_dir: Path) -> Path:
    return kici_dir / LOCK_FILE_NAME


def find_repo_root(start: Path) -> Path:
    """``git rev-parse --show-toplevel`` from ``start``, else ``start`` itself (00 §3.3).

    Outside git, a ``.kici`` directory passed as ``start`` stands for its parent:
    the kici directory always sits at the root of the project it describes, and
    lock paths (``.kici/workflows/ci.py``) are relative to that root.
    """
    fallback = (start.parent if start.name == ".kici" else start).resolve()
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=start,
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return fallback
    top = done.stdout.strip()
    return Path(top).resolve() if done.returncode == 0 and top else fallback


def find_kici_dir(argument: Path | None, cwd: Path) -> Path | None:
    """The ``--kici-dir`` rule of 00 §3.3: the argument if it has ``workflows/``, else a ``.kici`` cwd."""
    if argument is not None:
        return argument if (argument / "workflows").is_dir() else None
    for candidate in (cwd / ".kici", cwd):
        if candidate.name == ".kici" and (candidate / "workflows").is_dir():
            return candidate
    return None


def child_env(host_env: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: the allowlisted host variables plus what makes the compile reproducible."""
    env = {key: host_env[key] for key in _PASSED_ENV if key in host_env}
    env.update(
        PYTHONPATH=str(Path(kici.__file__).resolve().parent.parent),
        PYTHONHASHSEED="0",
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONIOENCODING="utf-8",
        PYTHONSAFEPATH="1",
        PYTHONNOUSERSITE="1",
    )
    return env


def _tail(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-STDERR_TAIL_LINES:])


def _child_failure(kici_dir: Path, repo_root: Path, what: str, stderr: str) -> Diagnostic:
    tail = _tail(stderr)
    workflows = kici_dir / "workflows"
    try:
        shown = workflows.resolve().relative_to(repo_root.resolve()).as_posix()
    except ValueError:
        shown = str(workflows)
    return error(
        "E003",
        f"Failed to load workflow file module: the compiler process {what}" + (f"\n{tail}" if tail else ""),
        file=shown,
        suggestion="module top level must be side-effect free: no exit(), no blocking calls at import time",
    )


def _read_verdict(stdout: str) -> tuple[LockFile | None, list[Diagnostic]]:
    """The child's JSON document; raises :class:`ValueError` or :class:`TypeError` when it is not one."""
    document = json.loads(stdout)
    if not isinstance(document, dict) or not isinstance(document.get("diagnostics"), list):
        raise TypeError("the compiler child printed no verdict")
    diagnostics = [Diagnostic.from_json(item) for item in document["diagnostics"]]
    raw = document.get("lock")
    if raw is None:
        return None, diagnostics
    try:
        return parse_lock(json.dumps(raw, ensure_ascii=False)), diagnostics
    except LockFileParseError as exc:
        return None, [*diagnostics, error("E100", f"the compiler produced an unreadable lock: {exc}")]


def _read_previous(kici_dir: Path) -> LockFile | None:
    try:
        return parse_lock(lock_path(kici_dir).read_bytes())
    except (OSError, LockFileParseError):
        return None


def compile_project(kici_dir: Path, repo_root: Path, *, timeout: float = DEFAULT_TIMEOUT_S) -> CompileResult:
    """Compile ``<kici_dir>/workflows/*.py`` in a fresh child interpreter; never raises for user errors."""
    kici_dir, repo_root = kici_dir.resolve(), repo_root.resolve()
    argv = [
        sys.executable,
        "-m",
        "kici.services.compiler.child",
        "--kici-dir",
        str(kici_dir),
        "--repo-root",
        str(repo_root),
    ]
    try:
        done = subprocess.run(
            argv,
            cwd=repo_root,
            env=child_env(os.environ),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = (exc.stderr or b"").decode("utf-8", "replace")
        failure = _child_failure(kici_dir, repo_root, f"did not finish within {timeout:g} s", stderr)
        return CompileResult(lock=None, diagnostics=(failure,), stderr=stderr)
    stderr = done.stderr.decode("utf-8", "replace")
    try:
        lock, diagnostics = _read_verdict(done.stdout.decode("utf-8", "replace"))
    except (ValueError, TypeError):
        what = f"exited with code {done.returncode} without a result"
        failure = _child_failure(kici_dir, repo_root, what, stderr)
        return CompileResult(lock=None, diagnostics=(failure,), stderr=stderr)
    if lock is not None and not has_errors(diagnostics):
        previous = _read_previous(kici_dir)
        drift = lockfile_hash_warning(previous, lock) if previous is not None else None
        if drift is not None:
            diagnostics.insert(0, drift)
    if has_errors(diagnostics):
        lock = None
    return CompileResult(lock=lock, diagnostics=tuple(diagnostics), stderr=stderr)


def write_lock(kici_dir: Path, lock: LockFile) -> Path:
    """Write the canonical lock text atomically (a reader never sees half a file)."""
    target = lock_path(kici_dir)
    temporary = target.with_name(f".{LOCK_FILE_NAME}.{os.getpid()}.tmp")
    temporary.write_bytes(dump_lock(lock).encode("utf-8"))
    os.replace(temporary, target)
    return target


def check_locked(kici_dir: Path, repo_root: Path, *, result: CompileResult | None = None) -> list[str]:
    """D2: regenerate in memory and compare with the committed lock; ``[]`` means up to date.

    Compile errors come back as their formatted diagnostics, since a project that
    does not compile cannot have an up-to-date lock. Pass ``result`` to reuse a
    compile the caller already ran (to print its warnings, say).
    """
    if result is None:
        result = compile_project(kici_dir, repo_root)
    if result.lock is None:
        return [d.format() for d in result.errors]
    path = lock_path(kici_dir)
    try:
        committed = parse_lock(path.read_bytes())
    except FileNotFoundError:
        return [f"{path.name} not found in {kici_dir}: run `kici compile` and commit it"]
    except OSError as exc:
        return [f"cannot read {path}: {exc}"]
    except LockFileParseError as exc:
        return [str(exc)]
    return diff_locks(committed, result.lock)


Snapshot = dict[str, tuple[int, int]]


def _snapshot(kici_dir: Path) -> Snapshot:
    """``mtime_ns`` and size of every ``workflows/*.py`` (helpers included: they change the output)."""
    found: Snapshot = {}
    try:
        paths = sorted((kici_dir / "workflows").glob("*.py"))
    except OSError:
        return found
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue
        found[path.name] = (stat.st_mtime_ns, stat.st_size)
    return found


def watch(
    kici_dir: Path,
    repo_root: Path,
    on_result: Callable[[CompileResult], None],
    *,
    stop: threading.Event,
    interval: float = POLL_INTERVAL_S,
    debounce: float = DEBOUNCE_S,
    write: bool = True,
    compile_fn: Callable[[Path, Path], CompileResult] = compile_project,
) -> None:
    """Compile now, then again after every settled change of ``workflows/*.py``, until ``stop`` is set.

    Polling (no inotify) keeps this portable. A change must stay unchanged for
    ``debounce`` seconds before a compile starts, so an editor's write-rename
    dance costs one compile. Compiles run in this thread one after another, so
    they never overlap; a change made during a compile is seen against the
    snapshot taken before it started and triggers exactly one more. Each compile
    is a fresh child interpreter (see :func:`compile_project`), so edited modules
    are re-imported. A successful lock is always written when ``write`` is set.
    """

    def run_once() -> None:
        result = compile_fn(kici_dir, repo_root)
        if write and result.lock is not None:
            write_lock(kici_dir, result.lock)
        on_result(result)

    seen = _snapshot(kici_dir)
    run_once()
    while not stop.wait(interval):
        current = _snapshot(kici_dir)
        if current == seen:
            continue
        while True:
            if stop.wait(debounce):
                return
            settled = _snapshot(kici_dir)
            if settled == current:
                break
            current = settled
        seen = current
        run_once()


__all__ = [
    "DEBOUNCE_S",
    "DEFAULT_TIMEOUT_S",
    "LOCK_FILE_NAME",
    "POLL_INTERVAL_S",
    "CompileResult",
    "check_locked",
    "child_env",
    "compile_project",
    "find_kici_dir",
    "find_repo_root",
    "lock_path",
    "watch",
    "write_lock",
]
