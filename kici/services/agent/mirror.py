"""Warm git mirrors per repository and the job checkouts made from them (10 §4 phase 2, HOOK-22).

The first job of a repository creates a bare mirror under ``<work_dir>/mirrors/<hash>``; every job
then fetches only the commit it needs into that mirror (shallow, by SHA) and gets its own small
checkout from the mirror. A second job of the same repository therefore fetches, it never clones
again, and a commit already in the mirror costs no network round trip at all.

Credentials never touch disk, argv, a URL or a log line: the clone token travels as an HTTP
``Authorization: Basic`` header given to git through ``GIT_CONFIG_COUNT``/``KEY``/``VALUE``
environment variables (not visible in ``ps``), scoped to the repository's origin so a redirect to
another host does not carry it, and credential helpers are switched off so no helper can store it.
The mirror's config holds the plain URL only; the workspace is filled from the mirror, so its
``.git`` has no credentials and no link to the forge's auth. A URL that embeds ``user:password``
is stripped and its password used as the header instead.

Choices where the spec is silent or where we deviate:

* The mirror starts empty (``git init --bare``) instead of ``git clone --mirror``: a full mirror
  fetches every ref of the repository (on GitHub every ``refs/pull/*``), which makes the first
  job of a big repository slow for nothing. We fetch ``--depth=1`` by SHA, falling back to the
  ``ref`` (shallow, then full history) for servers that refuse fetching an unadvertised commit.
  Fetched commits stay referenced under ``refs/kici/c/<sha>`` (the newest
  :data:`KEPT_COMMITS`) so later fetches negotiate against them; ``gc.auto`` is off.
* The workspace is a shallow fetch from the mirror, not ``clone --shared`` (its alternates file
  would point outside the sandbox, where git cannot follow it) nor a hardlinked local clone (a
  step running as the agent's user could rewrite a hardlinked object and poison the mirror for
  every later job). HEAD is detached at ``sha`` and verified; ``origin`` is the plain URL.
* A commit already in a mirror is served without asking the forge, so mirrors are per tenant
  (``scope``, the dispatch's ``orgId``) and URL: two tenants never share one.
* Jobs of one repository take the mirror's lock in turn; one agent per work directory.
* Every git process costs a few milliseconds of a job's start (issue 7), so the checkout spends as
  few as it can and runs the independent local ones alongside the others: the workspace's
  ``git init`` (without hook templates) runs while the mirror fetches, the commit's keep-ref is
  written while the workspace fills; fetches skip ``FETCH_HEAD`` and the automatic maintenance run
  (``gc.auto`` is off anyway, but ``git fetch`` would still start a process to find that out); the
  workspace's ``origin`` is written into its config directly, its HEAD is verified by reading
  ``.git/HEAD``, and the commit refs are trimmed every :data:`TRIM_EVERY` checkouts of a mirror
  (so at most ``KEPT_COMMITS + TRIM_EVERY`` are ever kept).
* ``ssh`` credentials (``GitAuth{kind: ssh}``) go through ``GIT_SSH_COMMAND`` with the key in a
  0600 file in a private temporary directory outside the workspace, removed after the fetch.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Final
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

import attrs
import trio

from kici.domain.protocol import GitAuth, GitAuthKind, SshHostKeyPolicy

DEFAULT_GIT_TIMEOUT_S: Final = 600.0
KEPT_COMMITS: Final = 64
TRIM_EVERY: Final = 16
DEFAULT_TOKEN_USER: Final = "x-access-token"
_SHA: Final = re.compile(r"(?:[0-9a-f]{40}|[0-9a-f]{64})")
_COMMIT_REFS: Final = "refs/kici/c/"
_REF_SCRATCH: Final = "refs/kici/ref"
# Agent-process variables that would redirect or trace git (GIT_DIR, GIT_TRACE_CURL, ...) are dropped.
_GIT_ENV_PREFIX: Final = "GIT_"
_STDERR_LIMIT: Final = 2000


class CloneError(RuntimeError):
    """The checkout could not be made; the message is safe to show (no credentials)."""


@attrs.frozen
class GitCredentials:
    """How git authenticates; never rendered (``repr`` hides everything)."""

    kind: GitAuthKind = attrs.field(repr=False)
    user: str = attrs.field(repr=False)
    secret: str = attrs.field(repr=False)
    host_key_policy: SshHostKeyPolicy | None = attrs.field(default=None, repr=False)
    known_hosts: str | None = attrs.field(default=None, repr=False)

    @property
    def header(self) -> str:
        raw = f"{self.user}:{self.secret}".encode()
        return "Authorization: Basic " + base64.b64encode(raw).decode("ascii")

    def sensitive(self) -> tuple[str, ...]:
        """Every string that reveals the credential, for the job's masker."""
        raw = f"{self.user}:{self.secret}".encode()
        return (self.secret, base64.b64encode(raw).decode("ascii"))


@attrs.frozen
class Checkout:
    """``created``: this job made the mirror; ``fetched``: the commit had to come from the forge."""

    path: Path
    sha: str
    mirror: Path
    created: bool
    fetched: bool


def credentials_for(
    token: str | None, auth: GitAuth | None, url_password: tuple[str, str] | None = None
) -> GitCredentials | None:
    """The dispatch's clone credentials: ``sourceAuth`` wins, then ``token`` (as ``x-access-token``),
    then a password found in the URL."""
    if auth is not None:
        user = auth.user or (DEFAULT_TOKEN_USER if auth.kind is GitAuthKind.BASIC else "git")
        return GitCredentials(
            auth.kind, user, auth.secret, auth.ssh_host_key_policy, auth.ssh_known_hosts_pem
        )
    if token:
        return GitCredentials(GitAuthKind.BASIC, DEFAULT_TOKEN_USER, token)
    if url_password is not None:
        return GitCredentials(GitAuthKind.BASIC, url_password[0], url_password[1])
    return None


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without its ``user:password@`` part, and that pair when the URL carried a password."""
    if "://" not in url:
        return url, None
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port is not None else "")
    clean = urlunsplit(SplitResult(parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    if parts.password is None:
        return clean, None
    return clean, (unquote(parts.username or DEFAULT_TOKEN_USER), unquote(parts.password))


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}/"


def git_env(
    base: Mapping[str, str],
    url: str,
    credentials: GitCredentials | None,
    ssh_dir: Path | None = None,
) -> dict[str, str]:
    """The environment of one git call: ``base`` without ``GIT_*``, no prompts, no credential helper,
    and the credentials as config entries (HTTP) or ``GIT_SSH_COMMAND`` (ssh)."""
    env = {k: v for k, v in base.items() if not k.startswith(_GIT_ENV_PREFIX)}
    env.update({"GIT_TERMINAL_PROMPT": "0", "GCM_INTERACTIVE": "never", "LC_ALL": "C"})
    config: list[tuple[str, str]] = [("credential.helper", ""), ("core.askPass", "")]
    if credentials is not None and credentials.kind is GitAuthKind.BASIC:
        origin = _origin(url)
        if origin is not None:
            config.append((f"http.{origin}.extraHeader", credentials.header))
    if credentials is not None and credentials.kind is GitAuthKind.SSH and ssh_dir is not None:
        env["GIT_SSH_COMMAND"] = ssh_command(credentials, ssh_dir)
    env["GIT_CONFIG_COUNT"] = str(len(config))
    for index, (key, value) in enumerate(config):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env


def ssh_command(credentials: GitCredentials, ssh_dir: Path) -> str:
    """``ssh`` with the key file of :func:`_ssh_material`; pinned host keys refuse unknown hosts."""
    argv = [
        "ssh",
        "-i",
        str(ssh_dir / "key"),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
    ]
    if credentials.host_key_policy is SshHostKeyPolicy.PINNED:
        argv += ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={ssh_dir / 'known_hosts'}"]
    else:
        argv += ["-o", "StrictHostKeyChecking=accept-new"]
    return shlex.join(argv)


@contextmanager
def _ssh_material(credentials: GitCredentials | None) -> Iterator[Path | None]:
    if credentials is None or credentials.kind is not GitAuthKind.SSH:
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="kici-ssh-"))
    try:
        key = directory / "key"
        key.touch(mode=0o600)
        key.write_text(credentials.secret.rstrip("\n") + "\n")
        if credentials.known_hosts is not None:
            (directory / "known_hosts").write_text(credentials.known_hosts)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def origin_config(url: str) -> str:
    """The ``[remote "origin"]`` section ``git remote add origin <url>`` would write, quoted as git
    reads config values (a URL may hold ``#`` or ``;``, which start a comment unquoted)."""
    if "\n" in url or "\r" in url:
        raise CloneError("the repository URL contains a line break")
    quoted = url.replace("\\", "\\\\").replace('"', '\\"')
    return f'[remote "origin"]\n\turl = "{quoted}"\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n'


def mirror_key(url: str, scope: str = "") -> str:
    """The mirror directory name of a (credential-free) repository URL within a tenant ``scope``."""
    return hashlib.sha256(f"{scope}\n{url}".encode()).hexdigest()[:24]


def _safe_ref_name(ref: str) -> bool:
    return bool(ref) and not ref.startswith("-") and all(c.isprintable() and not c.isspace() for c in ref)


class MirrorStore:
    """The mirrors of one agent under ``root``; see the module docstring.

    ``mask`` cleans every git message before it goes into a :class:`CloneError` or the job log.
    """

    def __init__(
        self,
        root: Path,
        *,
        git: str = "git",
        timeout_s: float = DEFAULT_GIT_TIMEOUT_S,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.git = git
        self.timeout_s = timeout_s
        self.base_env = dict(os.environ if base_env is None else base_env)
        self._locks: dict[str, trio.Lock] = {}
        self._checkouts: dict[str, int] = {}

    def mirror_path(self, url: str, scope: str = "") -> Path:
        return self.root / mirror_key(split_credentials(url)[0], scope)

    async def checkout(
        self,
        *,
        repo_url: str,
        sha: str,
        ref: str,
        dest: Path,
        scope: str = "",
        credentials: GitCredentials | None = None,
        log: Callable[[str], None] = lambda _line: None,
        mask: Callable[[str], str] = lambda text: text,
    ) -> Checkout:
        """Fill ``dest`` with the repository at ``sha`` (or ``ref``'s tip).

        ``dest`` is created, or an empty directory (a pre-started runner's workspace); a checkout
        that fails before the workspace is filled leaves it as it found it.
        """
        url, in_url = split_credentials(repo_url.strip())
        if not url:
            raise CloneError("the dispatch has no repository URL to clone")
        credentials = credentials or credentials_for(None, None, in_url)
        if sha and not _SHA.fullmatch(sha):
            raise CloneError(f"invalid commit SHA {sha!r}")
        if ref and not _safe_ref_name(ref):
            raise CloneError(f"invalid ref {ref!r}")
        if not sha and not ref:
            raise CloneError("the dispatch names neither a commit nor a ref")
        key = mirror_key(url, scope)
        mirror = self.root / key
        runner = _Git(self.git, self.timeout_s, mask, git_env(self.base_env, "", None))
        lock = self._locks.setdefault(key, trio.Lock())
        async with lock:
            dest.parent.mkdir(parents=True, exist_ok=True)
            made = dest / ".git" if await trio.Path(dest).exists() else dest
            try:
                async with runner.alongside(None, "init", "--quiet", "--template=", str(dest)):
                    with _ssh_material(credentials) as ssh_dir:
                        remote_env = git_env(self.base_env, url, credentials, ssh_dir)
                        created = await self._ensure_mirror(runner, mirror, url)
                        log(f"[kici] {'Created' if created else 'Reusing'} the mirror of {url}")
                        fetched = False
                        if not sha or not await runner.ok(mirror, "cat-file", "-e", f"{sha}^{{commit}}"):
                            sha = await self._fetch(runner, mirror, env=remote_env, sha=sha, ref=ref, log=log)
                            fetched = True
            except BaseException:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(shutil.rmtree, made, True)
                raise
            count = self._checkouts.get(key, 0)
            self._checkouts[key] = count + 1
            if count % TRIM_EVERY == 0:
                await self._trim(runner, mirror)
            async with runner.alongside(mirror, "update-ref", f"{_COMMIT_REFS}{sha}", sha):
                await self._fill(runner, mirror, dest, sha, url)
        log(f"[kici] Checked out {sha[:12]} into the job workspace")
        return Checkout(path=dest, sha=sha, mirror=mirror, created=created, fetched=fetched)

    async def _ensure_mirror(self, runner: _Git, mirror: Path, url: str) -> bool:
        if await trio.Path(mirror / "HEAD").is_file() and await trio.Path(mirror / "objects").is_dir():
            return False
        await trio.Path(self.root).mkdir(parents=True, exist_ok=True)
        if await trio.Path(mirror).exists():
            await trio.to_thread.run_sync(shutil.rmtree, mirror, True)
        scratch = self.root / f".{mirror.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            await runner.run(None, "init", "--quiet", "--bare", str(scratch))
            for key, value in (
                ("remote.origin.url", url),
                ("gc.auto", "0"),
                ("core.logAllRefUpdates", "false"),
                ("uploadpack.allowAnySHA1InWant", "true"),
            ):
                await runner.run(scratch, "config", key, value)
            scratch.rename(mirror)
        finally:
            if scratch.exists():
                await trio.to_thread.run_sync(shutil.rmtree, scratch, True)
        return True

    async def _fetch(
        self,
        runner: _Git,
        mirror: Path,
        *,
        env: Mapping[str, str],
        sha: str,
        ref: str,
        log: Callable[[str], None],
    ) -> str:
        """Bring ``sha`` (or the tip of ``ref``) into the mirror; returns the commit."""
        fetch = ("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-auto-gc")
        by_sha: str | None = None
        if sha:
            log(f"[kici] Fetching {sha[:12]}")
            by_sha = await runner.attempt(mirror, *fetch, "--depth=1", "origin", sha, env=env)
            if by_sha is None:
                return sha
            if not ref:
                raise CloneError(f"could not fetch commit {sha}: {by_sha}")
            log(f"[kici] Fetching {sha[:12]} by SHA failed; fetching {ref} instead")
        else:
            log(f"[kici] Fetching {ref}")
        target = f"+{ref}:{_REF_SCRATCH}"
        problem = await runner.attempt(mirror, *fetch, "--depth=1", "origin", target, env=env)
        if problem is not None:
            raise CloneError(f"could not fetch {ref}: {problem}")
        if sha and not await runner.ok(mirror, "cat-file", "-e", f"{sha}^{{commit}}"):
            deepen = ("--unshallow",) if (mirror / "shallow").exists() else ()
            problem = await runner.attempt(mirror, *fetch, *deepen, "origin", target, env=env)
            if problem is not None:
                raise CloneError(f"could not fetch the history of {ref}: {problem}")
            if not await runner.ok(mirror, "cat-file", "-e", f"{sha}^{{commit}}"):
                raise CloneError(f"commit {sha} is not reachable from {ref} ({by_sha})")
        if not sha:
            sha = (await runner.run(mirror, "rev-parse", f"{_REF_SCRATCH}^{{commit}}")).strip()
        await runner.attempt(mirror, "update-ref", "-d", _REF_SCRATCH)
        return sha

    async def _trim(self, runner: _Git, mirror: Path) -> None:
        """Keep the newest :data:`KEPT_COMMITS` commit refs (objects stay: ``gc.auto`` is off)."""
        listing = await runner.run(
            mirror, "for-each-ref", "--sort=-creatordate", "--format=%(refname)", _COMMIT_REFS
        )
        stale = listing.split()[KEPT_COMMITS:]
        if stale:
            commands = "".join(f"delete {name}\n" for name in stale)
            await runner.run(mirror, "update-ref", "--stdin", stdin=commands.encode())

    async def _fill(self, runner: _Git, mirror: Path, dest: Path, sha: str, url: str) -> None:
        """``dest`` (already ``git init``-ed) gets the one commit from the mirror and checks it out."""
        await runner.run(
            dest,
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-auto-gc",
            "--depth=1",
            str(mirror),
            sha,
        )
        await runner.run(dest, "checkout", "--quiet", "--detach", sha)
        git_dir = trio.Path(dest / ".git")
        async with await (git_dir / "config").open("a", encoding="utf-8") as config:
            await config.write(origin_config(url))
        head = (await (git_dir / "HEAD").read_text(encoding="utf-8")).strip()
        if head != sha:
            raise CloneError(f"checked out {head} but the dispatch asked for {sha}")


class _Git:
    """One agent-side git invocation at a time, bounded and with its stderr masked."""

    def __init__(
        self, git: str, timeout_s: float, mask: Callable[[str], str], local_env: Mapping[str, str]
    ) -> None:
        self.git = git
        self.timeout_s = timeout_s
        self.mask = mask
        self.local_env = dict(local_env)

    async def _call(
        self, cwd: Path | None, args: Sequence[str], env: Mapping[str, str] | None, stdin: bytes | None
    ) -> subprocess.CompletedProcess[bytes]:
        argv = [self.git, *(("-C", str(cwd)) if cwd is not None else ()), *args]
        try:
            with trio.fail_after(self.timeout_s):
                return await trio.run_process(
                    argv,
                    env=dict(env if env is not None else self.local_env),
                    stdin=stdin if stdin is not None else b"",
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
        except trio.TooSlowError:
            raise CloneError(f"git {args[0]} timed out after {self.timeout_s:g}s") from None
        except OSError as exc:
            raise CloneError(f"git could not be started: {exc}") from None

    def _problem(self, done: subprocess.CompletedProcess[bytes]) -> str:
        text = done.stderr.decode("utf-8", "replace").strip() or f"exit status {done.returncode}"
        return self.mask(text[-_STDERR_LIMIT:])

    async def run(
        self, cwd: Path | None, *args: str, env: Mapping[str, str] | None = None, stdin: bytes | None = None
    ) -> str:
        done = await self._call(cwd, args, env, stdin)
        if done.returncode != 0:
            raise CloneError(f"git {args[0]} failed: {self._problem(done)}")
        return done.stdout.decode("utf-8", "replace")

    async def attempt(self, cwd: Path | None, *args: str, env: Mapping[str, str] | None = None) -> str | None:
        """Like :meth:`run` but a failure is returned as its (masked) message instead of raised."""
        done = await self._call(cwd, args, env, None)
        return None if done.returncode == 0 else self._problem(done)

    async def ok(self, cwd: Path | None, *args: str) -> bool:
        return (await self._call(cwd, args, None, None)).returncode == 0

    @asynccontextmanager
    async def alongside(self, cwd: Path | None, *args: str) -> AsyncIterator[None]:
        """Run one local git step while the body runs (work independent of it); the step is waited
        for when the body ends, and its failure is raised then, unless the body failed first."""
        argv = [self.git, *(("-C", str(cwd)) if cwd is not None else ()), *args]
        try:
            process = await trio.lowlevel.open_process(
                argv,
                env=dict(self.local_env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            raise CloneError(f"git could not be started: {exc}") from None
        errors = b""
        try:
            yield
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self.timeout_s):
                    if process.stderr is not None:
                        errors = b"".join([chunk async for chunk in process.stderr])
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
                if process.stderr is not None:
                    await process.stderr.aclose()
        if process.returncode != 0:
            text = errors.decode("utf-8", "replace").strip() or f"exit status {process.returncode}"
            raise CloneError(f"git {args[0]} failed: {self.mask(text[-_STDERR_LIMIT:])}")


__all__ = [
    "DEFAULT_GIT_TIMEOUT_S",
    "KEPT_COMMITS",
    "TRIM_EVERY",
    "Checkout",
    "CloneError",
    "GitCredentials",
    "MirrorStore",
    "credentials_for",
    "git_env",
    "mirror_key",
    "origin_config",
    "split_credentials",
    "ssh_command",
]
