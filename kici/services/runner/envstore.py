"""Env and PATH chaining between steps (EXE-23, ENV-10): ``set_env``, ``add_path``, the env files.

One ``JobEnv`` per job holds the deltas; every ``ctx.sh`` gets ``snapshot()``. Keys that are secret names
(or the reserved ``KICI_ENV``/``KICI_PATH``) cannot be set: a step must not be able to shadow an operator
secret with a value of its choosing. Parallel steps share the store, so the last write wins, as for
sequential steps.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path

RESERVED_KEYS = frozenset({"KICI_ENV", "KICI_PATH"})


def parse_env_lines(text: str) -> list[tuple[str, str]]:
    """``KEY=value`` lines, split at the first ``=``; blank, ``=``-less and empty-key lines are skipped."""
    pairs: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or "=" not in line:
            continue
        key, value = line.split("=", 1)
        key = key.strip()
        if key:
            pairs.append((key, value))
    return pairs


def parse_path_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


class JobEnv:
    def __init__(
        self,
        base: Mapping[str, str],
        protected: Collection[str],
        warn: Callable[[str], None],
    ) -> None:
        self._lock = threading.Lock()
        self._values = dict(base)
        self._prepends: list[str] = []
        self._protected = frozenset(protected) | RESERVED_KEYS
        self._warn = warn

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            env = dict(self._values)
            prepends = list(self._prepends)
        if prepends:
            current = env.get("PATH", "")
            env["PATH"] = os.pathsep.join(prepends + ([current] if current else []))
        return env

    def set(self, key: str, value: str) -> bool:
        if key in self._protected or not key or "=" in key or "\0" in key or "\0" in value:
            self._warn(f"[kici] set_env('{key}') ignored: the name is protected or invalid")
            return False
        with self._lock:
            self._values[key] = value
        return True

    def add_path(self, directory: str) -> None:
        if not directory or "\0" in directory:
            return
        with self._lock:
            if directory in self._prepends:
                self._prepends.remove(directory)
            self._prepends.insert(0, directory)

    def add_paths(self, directories: Iterable[str]) -> None:
        """Prepend so the first listed directory ends up first on ``PATH``."""
        for directory in reversed(list(directories)):
            self.add_path(directory)

    def apply_files(self, env_file: Path, path_file: Path) -> None:
        """Apply what a step wrote to ``$KICI_ENV`` / ``$KICI_PATH``, then truncate both files."""
        env_text = _read_and_truncate(env_file)
        path_text = _read_and_truncate(path_file)
        for key, value in parse_env_lines(env_text):
            self.set(key, value)
        self.add_paths(parse_path_lines(path_text))


def _read_and_truncate(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    with contextlib.suppress(OSError):
        path.write_text("", encoding="utf-8")
    return text


__all__ = ["RESERVED_KEYS", "JobEnv", "parse_env_lines", "parse_path_lines"]
