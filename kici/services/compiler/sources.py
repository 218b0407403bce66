"""The files a lock is computed from: entry modules, ``hash_files`` assets, the dependency lock.

The hashing itself is pure (:mod:`kici.domain.lockfile.hashing`); this module
does the reading it needs, inside the compiler child. Paths written into the
lock are repo-relative POSIX so that the same tree compiles to the same bytes
wherever it is checked out (L1).

``hash_files`` expansion (00 §2.3): patterns are picomatch globs relative to the
repo root, a leading ``!`` excludes; only regular files count; wildcards never
match a dotfile or dot-directory (picomatch's rule) while a pattern that spells
one out (``.kici/workflows/_lib.py``) selects it; symlinks are neither followed
nor hashed (a link could point anywhere on the compiling machine). Where the
spec is silent: a
pattern list holding only exclusions selects nothing, since "hash every file of
the repository" is never what an author means, and a pattern that climbs out
of the repository (``../x``) matches nothing.
"""

from __future__ import annotations

import functools
import os
import site
import sys
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import kici
from kici.domain.globs import compile_glob, is_glob, split_negations
from kici.domain.lockfile import LOCKFILE_CANDIDATES, asset_digest, pick_lockfile_hash, workflow_content_hash


class RepoFiles:
    """Repo-relative naming and reading of files under one repository root."""

    def __init__(self, repo_root: Path) -> None:
        self.root = repo_root.resolve()

    def relative(self, path: str | Path) -> str | None:
        """The repo-relative POSIX path of ``path``, or ``None`` when it lies outside the repo."""
        try:
            return Path(path).resolve().relative_to(self.root).as_posix()
        except (ValueError, OSError):
            return None

    def project_module(self, name: str, file: str) -> str | None:
        """The repo-relative file of a module that belongs to the project, else ``None``.

        kici itself and installed packages (under ``sys.prefix`` or any
        ``site-packages``) never count, even when a virtualenv lives inside the
        repository: they are not the author's workflow code.
        """
        if name == "kici" or name.startswith("kici."):
            return None
        relative = self.relative(file)
        if relative is None:
            return None
        path = Path(file).resolve()
        if "site-packages" in path.parts or any(path.is_relative_to(root) for root in _installed_roots()):
            return None
        return relative

    def shown(self, path: str | Path) -> str:
        """How diagnostics name a file: repo-relative when possible, else as given."""
        return self.relative(path) or str(path)

    def expand_hash_files(self, patterns: Sequence[str]) -> tuple[str, ...]:
        """The sorted repo-relative files the ``hash_files`` patterns select (``resolvedHashFiles``).

        Raises :class:`kici.domain.globs.InvalidGlobError` for a pattern that does not compile.
        """
        includes, excludes = split_negations([_clean(p) for p in patterns])
        include_matchers = [compile_glob(p) for p in includes]
        exclude_matchers = [compile_glob(p) for p in excludes]
        into_dot_dirs = any(part.startswith(".") for p in includes for part in p.split("/")[:-1])
        found: set[str] = set()
        for base in {_literal_base(p) for p in includes}:
            for relative in self._walk(base, into_dot_dirs=into_dot_dirs):
                if any(m(relative) for m in include_matchers) and not any(
                    m(relative) for m in exclude_matchers
                ):
                    found.add(relative)
        return tuple(sorted(found))

    def _walk(self, base: str, *, into_dot_dirs: bool) -> list[str]:
        """Regular files below ``base``; dot-directories are entered only if a pattern names one."""
        if ".." in PurePosixPath(base).parts:
            return []
        start = (self.root / base) if base else self.root
        if start.is_symlink() or not start.is_dir():
            return []
        files: list[str] = []
        for directory, dirnames, filenames in os.walk(start, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if into_dot_dirs or not d.startswith("."))
            here = Path(directory)
            for name in filenames:
                path = here / name
                if path.is_symlink() or not path.is_file():
                    continue
                files.append(path.relative_to(self.root).as_posix())
        return files

    def read_assets(self, paths: Sequence[str]) -> list[tuple[str, bytes | None]]:
        out: list[tuple[str, bytes | None]] = []
        for relative in paths:
            try:
                out.append((relative, (self.root / relative).read_bytes()))
            except OSError:
                out.append((relative, None))
        return out

    def content_hash(
        self, entry_file: Path, hash_files: Sequence[str] | None
    ) -> tuple[str, tuple[str, ...] | None]:
        """``(contentHash, resolvedHashFiles)`` of a workflow whose entry module is ``entry_file``."""
        raw = entry_file.read_bytes().decode("utf-8", "surrogateescape")
        if not hash_files:
            return workflow_content_hash(raw, None), None
        resolved = self.expand_hash_files(hash_files)
        return workflow_content_hash(raw, asset_digest(self.read_assets(resolved))), resolved


@functools.cache
def _installed_roots() -> tuple[Path, ...]:
    roots = {Path(sys.prefix), Path(sys.base_prefix), Path(kici.__file__).parent}
    roots.update(Path(p) for p in site.getsitepackages())
    return tuple(root.resolve() for root in roots)


def _clean(pattern: str) -> str:
    negated = pattern.startswith("!")
    body = pattern[1:] if negated else pattern
    while body.startswith("./"):
        body = body[2:]
    body = body.lstrip("/")
    return ("!" if negated else "") + body


def _literal_base(pattern: str) -> str:
    """The directory part before the first glob segment: where a walk for ``pattern`` can start."""
    parts = pattern.split("/")
    literal: list[str] = []
    for part in parts[:-1]:
        if is_glob(part):
            break
        literal.append(part)
    return "/".join(literal)


def read_lockfile_hash(kici_dir: Path) -> str | None:
    """``lockfileHash`` from ``<kici>/uv.lock`` or ``<kici>/requirements.txt`` (first present wins)."""
    files: dict[str, bytes | None] = {}
    for candidate, _manager in LOCKFILE_CANDIDATES:
        path = kici_dir / PurePosixPath(candidate).name
        try:
            files[candidate] = path.read_bytes()
        except OSError:
            files[candidate] = None
    return pick_lockfile_hash(files)


__all__ = ["RepoFiles", "read_lockfile_hash"]
