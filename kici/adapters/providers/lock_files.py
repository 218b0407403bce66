"""Reading ``.kici/kici.lock.json`` from a directory on disk, shared by the local and universal-git fetchers.

The file belongs to a repository, so it is untrusted: it may be huge, or a symlink to a file
outside the repository (whose content would then leak into a parse-error message). Both are
refused before a byte is read, as unusable locks: the author sees a failed run saying why.
"""

from __future__ import annotations

import trio

from kici.domain.lockfile import LockFile, LockFileParseError, load_lock
from kici.domain.providers import LockFileTooLargeError, RepoLockFileParseError
from kici.domain.webhooks.models import LOCK_FILE_PATH, MAX_LOCK_FILE_BYTES


async def read_lock_in(checkout: trio.Path, repo: str, ref: str) -> LockFile | None:
    """The lock of the working tree ``checkout``; ``None`` when there is none.

    Raises :class:`RepoLockFileParseError` for a lock that is present but invalid, too large or a
    symbolic link leaving the repository.
    """
    path = checkout / LOCK_FILE_PATH
    if not await path.is_file():
        return None
    resolved, root = await path.resolve(), await checkout.resolve()
    if root not in resolved.parents:
        problem = "the file is a symbolic link that leaves the repository"
        raise RepoLockFileParseError(repo, ref, LockFileParseError("", problem))
    size = (await resolved.stat()).st_size
    if size > MAX_LOCK_FILE_BYTES:
        raise RepoLockFileParseError(repo, ref, LockFileTooLargeError(size, MAX_LOCK_FILE_BYTES))
    async with await resolved.open("rb") as handle:
        data = await handle.read(MAX_LOCK_FILE_BYTES + 1)
    if len(data) > MAX_LOCK_FILE_BYTES:
        raise RepoLockFileParseError(repo, ref, LockFileTooLargeError(len(data), MAX_LOCK_FILE_BYTES))
    try:
        return load_lock(data)
    except LockFileParseError as exc:
        raise RepoLockFileParseError(repo, ref, exc) from exc
