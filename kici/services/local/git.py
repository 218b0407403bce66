"""What ``kici preview`` / ``kici run local`` read from the working tree: branch, commit, changes.

Plain blocking ``git`` calls: they run before the trio loop starts (or in a worker thread) and
take milliseconds. A directory that is not a git repository, or one without commits yet, is not
an error here: the caller decides what it means (00 §3.3).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import attrs

from kici.domain.event_args import DEFAULT_TARGET_BRANCH, ZERO_SHA

GIT_TIMEOUT_S = 60


class GitError(RuntimeError):
    """A git command the caller cannot do without failed."""


def git(repo: Path, *args: str, check: bool = True) -> str:
    """Run ``git -C repo args...`` and return stdout; raises :class:`GitError` when ``check`` fails."""
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=GIT_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GitError(f"git {' '.join(args)}: {exc}") from exc
    if check and done.returncode != 0:
        raise GitError(f"git {' '.join(args)} failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def git_bytes(repo: Path, *args: str) -> bytes:
    """Like :func:`git` but binary (``-z`` listings with arbitrary file names)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args],
            capture_output=True,
            check=False,
            timeout=GIT_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GitError(f"git {' '.join(args)}: {exc}") from exc
    if done.returncode != 0:
        raise GitError(f"git {' '.join(args)} failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def is_git_repo(path: Path) -> bool:
    try:
        return git(path, "rev-parse", "--is-inside-work-tree", check=False).strip() == "true"
    except GitError:
        return False


@attrs.frozen
class WorkingTree:
    """``sha`` is :data:`ZERO_SHA` and ``has_head`` False in a repository without commits."""

    branch: str
    sha: str
    has_head: bool
    changed_files: tuple[str, ...]


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line]


def read_working_tree(repo: Path) -> WorkingTree:
    """Branch, commit and changed files (``git diff --name-only HEAD`` ∪ ``--cached``, 00 §3.3)."""
    if not is_git_repo(repo):
        return WorkingTree(DEFAULT_TARGET_BRANCH, ZERO_SHA, False, ())
    head = git(repo, "rev-parse", "--verify", "--quiet", "HEAD", check=False).strip()
    branch = git(repo, "symbolic-ref", "--quiet", "--short", "HEAD", check=False).strip()
    if not branch:
        branch = head[:12] if head else DEFAULT_TARGET_BRANCH
    changed: dict[str, None] = {}
    if head:
        changed.update(dict.fromkeys(_lines(git(repo, "diff", "--name-only", "HEAD", check=False))))
    changed.update(dict.fromkeys(_lines(git(repo, "diff", "--name-only", "--cached", check=False))))
    return WorkingTree(branch, head or ZERO_SHA, bool(head), tuple(sorted(changed)))
