"""The lock's hashes (spec 00 §2.3): workflow and top-level ``contentHash``, ``lockfileHash``.

All inputs are passed in; reading files (and expanding ``hash_files`` globs) is
the caller's job. Text is hashed as UTF-8 with ``surrogateescape`` so that asset
files which are not valid UTF-8 still contribute their exact bytes.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import attrs

from kici.domain.lockfile.codec import to_json
from kici.domain.lockfile.model import COMPILE_SCHEMA_VERSION, LockFile

LOCKFILE_CANDIDATES: Final = ((".kici/uv.lock", "uv"), (".kici/requirements.txt", "pip"))
"""Dependency lock files that key the dependency cache, in order of preference (path, manager)."""


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def sha256_hex(text: str) -> str:
    return hashlib.sha256(_encode(text)).hexdigest()


def normalize_newlines(text: str) -> str:
    """``\\r\\n`` and lone ``\\r`` become ``\\n``, so a checkout with autocrlf hashes the same."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def workflow_content_hash(raw: str, asset_digest: str | None) -> str:
    """``sha256_hex("5:" + lf(raw) [+ "\\0" + lf(asset_digest)])``; ``raw`` is the entry ``.py`` only.

    ``asset_digest`` is ``None`` when the workflow declares no ``hash_files``;
    an empty digest (patterns that matched nothing) still adds the separator.
    """
    text = f"{COMPILE_SCHEMA_VERSION}:{normalize_newlines(raw)}"
    if asset_digest is not None:
        text += "\0" + normalize_newlines(asset_digest)
    return sha256_hex(text)


def normalize_asset_path(path: str) -> str:
    """Repo-relative POSIX form: ``\\`` -> ``/``, no ``./`` or duplicate separators."""
    normalized = posixpath.normpath(path.replace("\\", "/"))
    return "" if normalized == "." else normalized


def resolved_hash_files(paths: Iterable[str]) -> tuple[str, ...]:
    """The ``resolvedHashFiles`` list: normalized, deduplicated, sorted."""
    return tuple(sorted({normalize_asset_path(p) for p in paths}))


def asset_digest(files: Sequence[tuple[str, bytes | None]]) -> str:
    """Concatenate ``path + "\\n" + content`` over the normalized, deduplicated, sorted paths.

    ``None`` content (an unreadable file) contributes ``path + "\\n"``. When a
    path is listed twice the first readable content wins, so duplicated or
    permuted inputs give the same digest.
    """
    contents: dict[str, bytes | None] = {}
    for path, content in files:
        key = normalize_asset_path(path)
        if contents.get(key) is None:
            contents[key] = content
    parts = []
    for path in sorted(contents):
        content = contents[path]
        decoded = content.decode("utf-8", "surrogateescape") if content is not None else ""
        parts.append(f"{path}\n{decoded}")
    return "".join(parts)


def top_content_hash(lock: LockFile) -> str:
    """Canonical hash of ``{schemaVersion, source, workflows}`` (informational; ignores ``contentHash``)."""
    data = to_json(lock)
    canonical = {key: data[key] for key in ("schemaVersion", "source", "workflows")}
    return sha256_hex(json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False))


def with_content_hash(lock: LockFile) -> LockFile:
    """``lock`` with its top-level ``contentHash`` recomputed."""
    return attrs.evolve(lock, content_hash=top_content_hash(lock))


def lockfile_hash(manager: str, content: str | bytes) -> str:
    """``sha256_hex(manager + "\\n" + content)``: the manager name makes a manager switch a cache miss."""
    data = content if isinstance(content, bytes) else _encode(content)
    return hashlib.sha256(_encode(f"{manager}\n") + data).hexdigest()


def pick_lockfile_hash(files: Mapping[str, bytes | None]) -> str | None:
    """``lockfileHash`` of the first candidate present in ``files`` (path -> content or ``None``)."""
    for path, manager in LOCKFILE_CANDIDATES:
        content = files.get(path)
        if content is not None:
            return lockfile_hash(manager, content)
    return None
