"""Universal-git: lock fetch by sparse clone, changed files from the payload, clone credentials (HOOK-09).

The orchestrator never clones a repository's content; to read one file from an arbitrary git
server it asks for as little as git allows: a blob-less, depth-1, no-checkout, single-branch
clone, a cone sparse checkout of ``.kici`` and, for a commit SHA, a depth-1 fetch of that commit.
Only ``.kici``'s blobs ever cross the wire.

Budget: the whole fetch gets ``budget_s`` (30 s); no git step starts with less than
``min_step_s`` (1 s) left, and a step that overruns is killed with its whole process group (git
leaves the network to ``git-remote-https``/``ssh`` children). The temporary directory is removed
whatever happens, cancellation included.

Authentication, from the source's credential (read again at every fetch, so a rotated secret
is used at once):

* HTTPS: an ``Authorization: Basic base64(user:secret)`` header through ``http.extraHeader``.
  It is passed in git's environment (``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_0``/``_VALUE_0``),
  not as ``-c`` on the command line: argv is visible to every user of the host in ``ps``.
* SSH: ``GIT_SSH_COMMAND`` with the key in a 0600 temporary file, ``IdentitiesOnly=yes`` and
  ``BatchMode=yes``; a pinned host key policy adds ``StrictHostKeyChecking=yes`` and a temporary
  ``UserKnownHostsFile``, otherwise ``StrictHostKeyChecking=accept-new``.

A SHA that the server will not serve falls back to the default branch's lock (30 §3.2), so a
force-pushed-away commit still finds the repository's workflows. Failures of git itself are
transient (:class:`GitCommandError`): the pipeline treats the lock as absent for this delivery.

Two shortcuts keep a push to the default branch at one network round trip (the clone), where it
used to take three (clone, fetch by SHA, the checkout's lazy blob fetch):

* the clone already holds the default branch's tip; when that tip is the SHA asked for, it is not
  fetched again;
* the lock blob's id is read from the tree (``git ls-tree``, trees come with a blob-less clone)
  and the fetcher remembers the lock parsed from each blob id it has read (the newest
  :data:`REMEMBERED_LOCKS`). A new commit that did not touch the lock file (most pushes) then
  needs no sparse checkout and no blob: the same blob id is the same bytes, so the same lock. Only
  a blob first read through the full path (a regular file within the size limit, parsed without
  error) is remembered, and only a regular file's entry is looked up, so every check of
  :func:`~kici.adapters.providers.lock_files.read_lock_in` still applied to those bytes.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shlex
import shutil
import signal
import tempfile
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import trio

from kici.adapters.providers.lock_files import read_lock_in
from kici.domain.events import SimulatedEvent
from kici.domain.lockfile import LockFile
from kici.domain.providers import Credentials, GitAuth, GitAuthKind, ProviderBundle, SshHostKeyPolicy
from kici.domain.webhooks.models import HEAD_REF, LOCK_FILE_PATH, ProviderType, is_full_sha
from kici.domain.webhooks.normalizers.universal_git import (
    CredentialRef,
    GitConfig,
    UniversalGitNormalizer,
    UniversalGitUrls,
    changed_files,
    clone_url,
    git_auth,
)
from kici.domain.webhooks.payload import strip_ref
from kici.domain.webhooks.sources import GenericSource

DEFAULT_BUDGET_S: Final = 30.0
MIN_STEP_S: Final = 1.0
REMEMBERED_LOCKS: Final = 64
_REGULAR_FILE_MODES: Final = frozenset({"100644", "100755"})
_STDERR_TAIL: Final = 600

SecretReader = Callable[[CredentialRef], Awaitable[str | None]]
"""Reads a source credential from its store; ``None`` when none is stored."""


class GitCommandError(Exception):
    """A git step failed (exit status, or it could not start); transient for the pipeline."""


class GitBudgetExceededError(GitCommandError):
    """The fetch ran out of its time budget."""


def _mask(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class _Git:
    """Runs git steps for one fetch: hermetic environment, auth, deadline, masked errors."""

    def __init__(self, executable: str, env: Mapping[str, str], deadline: float, min_step_s: float) -> None:
        self.executable = executable
        self.env = dict(env)
        self.deadline = deadline
        self.min_step_s = min_step_s
        self.secrets: list[str] = []

    async def run(self, *args: str, cwd: str | None = None) -> str:
        """Run one git step; its stdout (decoded) when it succeeds."""
        left = self.deadline - trio.current_time()
        if left < self.min_step_s:
            raise GitBudgetExceededError(f"git {args[0]}: only {max(left, 0):.1f} s of the fetch budget left")
        try:
            done = await trio.run_process(
                [self.executable, *args],
                cwd=cwd,
                env=self.env,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        except OSError as exc:
            raise GitCommandError(f"git {args[0]} could not start: {exc}") from exc
        if done.returncode != 0:
            tail = done.stderr.decode("utf-8", errors="replace").strip()[-_STDERR_TAIL:]
            raise GitCommandError(
                f"git {args[0]} failed (exit {done.returncode}): {_mask(tail, self.secrets)}"
            )
        return done.stdout.decode("utf-8", errors="replace")


async def _kill_process_group(process: trio.Process) -> None:
    """On cancellation kill git and its helpers (``git-remote-https``, ``ssh``), not only git itself."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _base_env(home: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": home,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "",
        "SSH_ASKPASS": "",
        "LC_ALL": "C",
    }


async def _write_private(path: trio.Path, content: str) -> None:
    def write() -> None:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(content if content.endswith("\n") else content + "\n")

    await trio.to_thread.run_sync(write)


async def _apply_auth(git: _Git, auth: GitAuth | None, scratch: trio.Path) -> None:
    if auth is None:
        return
    git.secrets.append(auth.secret)
    if auth.kind is GitAuthKind.BASIC:
        token = base64.b64encode(f"{auth.user}:{auth.secret}".encode()).decode("ascii")
        git.secrets.append(token)
        git.env.update(
            {
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": "http.extraHeader",
                "GIT_CONFIG_VALUE_0": f"Authorization: Basic {token}",
            }
        )
        return
    key_file = scratch / "identity"
    await _write_private(key_file, auth.secret)
    options = ["-i", str(key_file), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
    if auth.user:
        options += ["-o", f"User={auth.user}"]
    if auth.ssh_host_key_policy is SshHostKeyPolicy.PINNED and auth.ssh_known_hosts_pem:
        known_hosts = scratch / "known_hosts"
        await _write_private(known_hosts, auth.ssh_known_hosts_pem)
        options += ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}"]
    else:
        options += ["-o", "StrictHostKeyChecking=accept-new"]
    git.env["GIT_SSH_COMMAND"] = shlex.join(["ssh", *options])


class UniversalGitLockFetcher:
    """:class:`~kici.domain.providers.LockFileFetcher` by sparse clone; see the module docstring.

    ``provider`` is ``generic`` (what universal-git reports). Cache keys of two universal-git
    sources only meet on a full commit SHA, which names the same tree on any server.
    """

    def __init__(
        self,
        config: GitConfig,
        read_secret: SecretReader | None = None,
        *,
        budget_s: float = DEFAULT_BUDGET_S,
        min_step_s: float = MIN_STEP_S,
        git_executable: str = "git",
    ) -> None:
        self.config = config
        self._read_secret = read_secret
        self._budget_s = budget_s
        self._min_step_s = min_step_s
        self._git_executable = git_executable
        self._by_blob: OrderedDict[str, LockFile] = OrderedDict()

    @property
    def provider(self) -> str:
        return ProviderType.GENERIC.value

    async def _auth(self) -> GitAuth | None:
        reference = self.config.credential_ref
        if reference is None or self._read_secret is None:
            return None
        return git_auth(self.config, await self._read_secret(reference))

    async def fetch_lock_file(self, repo: str, ref: str, creds: Credentials) -> LockFile | None:
        url = clone_url(self.config, repo)
        deadline = trio.current_time() + self._budget_s
        with trio.move_on_at(deadline):
            auth = await self._auth()
            return await self._fetch(url, repo, ref, auth, deadline)
        raise GitBudgetExceededError(f"fetching the lock of {repo}@{ref} exceeded {self._budget_s:g} s")

    async def _fetch(
        self, url: str, repo: str, ref: str, auth: GitAuth | None, deadline: float
    ) -> LockFile | None:
        scratch = trio.Path(await trio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="kici-lock-")))
        try:
            git = _Git(self._git_executable, _base_env(str(scratch)), deadline, self._min_step_s)
            await _apply_auth(git, auth, scratch)
            work = str(scratch / "repo")
            by_sha = is_full_sha(ref)
            clone = [
                "clone",
                "--quiet",
                "--filter=blob:none",
                "--depth=1",
                "--no-checkout",
                "--single-branch",
            ]
            if not by_sha and ref != HEAD_REF:
                clone += ["--branch", strip_ref(ref)]
            await git.run(*clone, "--", url, work)
            target = "HEAD"
            if by_sha and (await git.run("rev-parse", "HEAD", cwd=work)).strip() == ref:
                target = ref
            elif by_sha:
                try:
                    await git.run("fetch", "--quiet", "--depth=1", "origin", ref, cwd=work)
                    target = ref
                except GitBudgetExceededError:
                    raise
                except GitCommandError:
                    target = "HEAD"
            blob = await self._lock_blob(git, work, target)
            if blob is not None and blob in self._by_blob:
                self._by_blob.move_to_end(blob)
                return self._by_blob[blob]
            await git.run("sparse-checkout", "init", "--cone", cwd=work)
            await git.run("sparse-checkout", "set", ".kici", cwd=work)
            await git.run("checkout", "--quiet", "--force", target, "--", cwd=work)
            lock = await read_lock_in(trio.Path(work), repo, ref)
            if lock is not None and blob is not None:
                self._remember(blob, lock)
            return lock
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(lambda: shutil.rmtree(scratch, ignore_errors=True))

    @staticmethod
    async def _lock_blob(git: _Git, work: str, target: str) -> str | None:
        """The blob id of the lock at ``target`` when it is a regular file; trees are local, so this
        costs no network round trip."""
        listing = await git.run("ls-tree", "--full-tree", target, "--", LOCK_FILE_PATH, cwd=work)
        fields = listing.split("\t", 1)[0].split()
        if len(fields) == 3 and fields[0] in _REGULAR_FILE_MODES and fields[1] == "blob":
            return fields[2]
        return None

    def _remember(self, blob: str, lock: LockFile) -> None:
        self._by_blob[blob] = lock
        self._by_blob.move_to_end(blob)
        while len(self._by_blob) > REMEMBERED_LOCKS:
            self._by_blob.popitem(last=False)


class UniversalGitChangedFiles:
    """:class:`~kici.domain.providers.ChangedFilesFetcher` reading the push payload's commit lists."""

    def __init__(self, config: GitConfig) -> None:
        self.config = config

    async def get_changed_files(
        self, repo: str, event: SimulatedEvent, payload: Mapping[str, Any], creds: Credentials
    ) -> list[str]:
        return changed_files(self.config, payload)


class UniversalGitCredentials:
    """The :class:`~kici.domain.providers.CloneTokenProvider` and ``GitAuthIssuer`` of a source."""

    def __init__(self, config: GitConfig, read_secret: SecretReader) -> None:
        self.config = config
        self._read_secret = read_secret

    async def issue_git_auth(self, repo: str, creds: Credentials) -> GitAuth | None:
        if self.config.credential_ref is None:
            return None
        return git_auth(self.config, await self._read_secret(self.config.credential_ref))

    async def create_clone_token(self, repo: str, creds: Credentials) -> str | None:
        """The secret itself for token and password credentials; SSH keys are not tokens."""
        auth = await self.issue_git_auth(repo, creds)
        return auth.secret if auth is not None and auth.kind is GitAuthKind.BASIC else None


def universal_git_bundle(
    source: GenericSource, config: GitConfig, read_secret: SecretReader, **fetcher_options: Any
) -> ProviderBundle:
    """Normalizer, lock fetch, changed files, clone credentials and URLs (30 §1)."""
    return ProviderBundle(
        normalizer=UniversalGitNormalizer(source, config),
        lock_file_fetcher=UniversalGitLockFetcher(config, read_secret, **fetcher_options),
        changed_files_fetcher=UniversalGitChangedFiles(config),
        clone_token_provider=UniversalGitCredentials(config, read_secret),
        repo_url_builder=UniversalGitUrls(config),
    )


__all__ = [
    "DEFAULT_BUDGET_S",
    "MIN_STEP_S",
    "REMEMBERED_LOCKS",
    "GitBudgetExceededError",
    "GitCommandError",
    "SecretReader",
    "UniversalGitChangedFiles",
    "UniversalGitCredentials",
    "UniversalGitLockFetcher",
    "universal_git_bundle",
]
