"""Isolated checkouts for ``kici run local`` (00 §3.3 "Isolation").

Each job runs in its own directory: a clone of ``HEAD`` plus an overlay of the working tree's
changes (modified, staged and untracked-not-ignored files, minus ``.kiciignore``), with deleted
files deleted. So a job sees exactly what the developer sees, can write freely, and can neither
damage the working tree nor see what another job wrote.

Choices where the spec is silent:

* ``.kiciignore`` uses gitignore syntax (``#`` comments, ``!`` re-includes, trailing ``/`` for
  directories, a pattern with an inner ``/`` is anchored at the root, ``*`` matches dotfiles);
  the last matching line wins. It filters the overlay only: committed files are always there.
* The local secret files (``.kici/.secrets``, ``.kici/.env.local``, ``.kici/secrets.yaml``) are
  never copied, even when not git-ignored: secrets reach steps only through ``ctx.secrets``.
* A repository without commits yields an empty repository plus the whole working tree.
* Symlinks are copied as symlinks; directories listed by git (submodules) are skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from pathlib import Path

import attrs

from kici.services.local.git import GitError, git, git_bytes

KICIIGNORE = ".kiciignore"
RUN_DIR_PREFIX = "kici-run-"
KEPT_RUN_MAX_AGE_S = 72 * 3600
NEVER_COPIED = frozenset({".kici/.secrets", ".kici/.env.local", ".kici/secrets.yaml"})


class CheckoutError(RuntimeError):
    """The isolated checkout could not be built (not a git repository, clone failed, ...)."""


@attrs.frozen
class _Rule:
    segments: tuple[str, ...]
    negate: bool
    directory_only: bool


def _rule(line: str) -> _Rule | None:
    text = line.rstrip("\n").rstrip()
    if not text or text.startswith("#"):
        return None
    negate = text.startswith("!")
    if negate:
        text = text[1:]
    if text.startswith("\\"):
        text = text[1:]
    directory_only = text.endswith("/")
    text = text.strip("/") if directory_only else text
    anchored = "/" in text
    text = text.lstrip("/")
    if not text:
        return None
    segments = tuple(text.split("/"))
    if not anchored:
        segments = ("**", *segments)
    return _Rule(segments, negate, directory_only)


def _segments_match(pattern: Sequence[str], parts: Sequence[str]) -> bool:
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_segments_match(rest, parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], head) and _segments_match(rest, parts[1:])


class KiciIgnore:
    """A compiled ``.kiciignore``; ``ignored(path)`` for repo-relative POSIX paths of files."""

    def __init__(self, lines: Iterable[str]) -> None:
        self.rules = [rule for rule in (_rule(line) for line in lines) if rule is not None]

    @classmethod
    def read(cls, repo: Path) -> KiciIgnore:
        try:
            return cls((repo / KICIIGNORE).read_text(encoding="utf-8").splitlines())
        except FileNotFoundError:
            return cls(())

    def ignored(self, path: str) -> bool:
        parts = path.split("/")
        verdict = False
        for rule in self.rules:
            hit = any(_segments_match(rule.segments, parts[:n]) for n in range(1, len(parts)))
            if not hit and not rule.directory_only:
                hit = _segments_match(rule.segments, parts)
            if hit:
                verdict = not rule.negate
        return verdict


@attrs.frozen
class Overlay:
    """Repo-relative paths to copy from the working tree and to delete from the clone."""

    copies: tuple[str, ...] = ()
    deletions: tuple[str, ...] = ()


_UNSAFE = re.compile(r"(^|/)\.\.(/|$)|^/")


def list_overlay(repo: Path, ignore: KiciIgnore | None = None) -> Overlay:
    """The working tree's difference to ``HEAD`` as an :class:`Overlay` (``git status``)."""
    ignore = ignore if ignore is not None else KiciIgnore.read(repo)
    raw = git_bytes(repo, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames")
    copies: list[str] = []
    deletions: list[str] = []
    for entry in raw.split(b"\0"):
        if len(entry) < 4:
            continue
        path = os.fsdecode(entry[3:])
        if _UNSAFE.search(path) or path == ".git" or path.startswith(".git/"):
            continue
        full = repo / path
        if full.is_symlink() or full.is_file():
            if path not in NEVER_COPIED and not ignore.ignored(path):
                copies.append(path)
        elif not full.exists():
            deletions.append(path)
    return Overlay(tuple(sorted(set(copies))), tuple(sorted(set(deletions))))


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    if source.is_symlink():
        os.symlink(os.readlink(source), target)
    else:
        shutil.copy2(source, target)


def create_checkout(repo: Path, dest: Path, sha: str | None, overlay: Overlay) -> None:
    """Clone ``repo`` at ``sha`` (``None``: no commits yet) into ``dest``, then apply ``overlay``."""
    try:
        if sha is None:
            git(dest.parent, "init", "--quiet", str(dest))
        else:
            git(dest.parent, "clone", "--quiet", "--no-checkout", str(repo), str(dest))
            git(dest, "-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", sha)
    except GitError as exc:
        raise CheckoutError(f"cannot create the isolated checkout in {dest}: {exc}") from exc
    for path in overlay.copies:
        source = repo / path
        if source.is_symlink() or source.is_file():
            _copy(source, dest / path)
    for path in overlay.deletions:
        target = dest / path
        if target.is_symlink() or target.is_file():
            target.unlink()


def run_base_dir(environ: dict[str, str] | None = None) -> Path:
    """``$KICI_RUN_DIR`` or the system temp directory."""
    env = environ if environ is not None else dict(os.environ)
    configured = env.get("KICI_RUN_DIR")
    return Path(configured) if configured else Path(tempfile.gettempdir())


def new_run_root(base: Path) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX, dir=base))


def collect_old_runs(
    base: Path, *, now: float | None = None, max_age_s: float = KEPT_RUN_MAX_AGE_S
) -> list[Path]:
    """Delete kept run directories older than 72 h (00 §3.3); returns what was removed."""
    moment = time.time() if now is None else now
    removed: list[Path] = []
    try:
        entries = list(base.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(RUN_DIR_PREFIX) or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            age = moment - entry.stat().st_mtime
        except OSError:
            continue
        if age > max_age_s:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


def slug(name: str) -> str:
    """A directory name for a workflow or job name (``test (3.11, linux)`` → ``test-3.11-linux``)."""
    return _SLUG.sub("-", name).strip("-.") or "job"
