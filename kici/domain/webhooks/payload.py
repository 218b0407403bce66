"""Reading untrusted webhook JSON without tripping over its shape.

Providers change payloads, omit keys and send ``null`` where a value is usually present; a
normalizer must treat every such case as "not there" instead of raising, because an exception
in the pipeline would drop the delivery without a trace.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

_REPO_SEGMENT: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_BRANCH_PREFIXES: Final = ("refs/heads/", "refs/tags/")


def dig(payload: Any, *keys: str | int) -> Any:
    """``payload[k1][k2]…`` or ``None`` as soon as a step is missing or of the wrong kind."""
    node = payload
    for key in keys:
        if isinstance(key, int):
            if not isinstance(node, list | tuple) or not -len(node) <= key < len(node):
                return None
            node = node[key]
        elif isinstance(node, Mapping):
            node = node.get(key)
        else:
            return None
    return node


def text(value: Any) -> str | None:
    """A non-empty string, else ``None``."""
    return value if isinstance(value, str) and value else None


def identifier(value: Any) -> str | None:
    """A provider id as text: numbers become their decimal string (``True`` is not an id)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    return text(value)


def strip_ref(ref: str) -> str:
    """``refs/heads/main`` -> ``main``, ``refs/tags/v1`` -> ``v1``; anything else unchanged."""
    for prefix in _BRANCH_PREFIXES:
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    return ref


def tag_name(ref: str) -> str | None:
    """The tag a ``refs/tags/…`` ref names, else ``None``."""
    return ref[len("refs/tags/") :] if ref.startswith("refs/tags/") else None


def owner_repo(payload: Any) -> str | None:
    """``repository.full_name`` or ``repository.owner.login/repository.name`` (GitHub-shaped payloads)."""
    full = text(dig(payload, "repository", "full_name"))
    if full is not None:
        return full
    owner = text(dig(payload, "repository", "owner", "login")) or text(
        dig(payload, "repository", "owner", "username")
    )
    name = text(dig(payload, "repository", "name"))
    return f"{owner}/{name}" if owner is not None and name is not None else None


def is_safe_repo_identifier(repo: str) -> bool:
    """``owner/name`` (or deeper, for GitLab subgroups) made of plain path segments.

    Repository identifiers come from webhook bodies and end up in file paths and clone URLs, so
    anything that could climb out of a directory (``..``), start an option (``-x``), carry a
    scheme or whitespace is refused.
    """
    return all(_REPO_SEGMENT.fullmatch(part) for part in repo.split("/"))


class InvalidRepoIdentifierError(ValueError):
    """A repository identifier that must not reach a path or a URL (see :func:`is_safe_repo_identifier`)."""

    def __init__(self, repo: str) -> None:
        super().__init__(f"refusing repository identifier {repo!r}: expected owner/name path segments")
        self.repo = repo


def require_safe_repo(repo: str) -> str:
    """``repo`` when :func:`is_safe_repo_identifier`, else :class:`InvalidRepoIdentifierError`."""
    if not is_safe_repo_identifier(repo):
        raise InvalidRepoIdentifierError(repo)
    return repo


__all__ = [
    "InvalidRepoIdentifierError",
    "dig",
    "identifier",
    "is_safe_repo_identifier",
    "owner_repo",
    "require_safe_repo",
    "strip_ref",
    "tag_name",
    "text",
]
