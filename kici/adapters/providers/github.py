"""The GitHub App provider over the REST API: lock fetch, changed files, clone tokens, permissions (30 §3.2).

Every call goes through the :class:`HttpClient` port (:class:`HttpxClient` in production, httpx
runs on trio), against ``api_base_url`` (``https://api.github.com`` or a GitHub Enterprise
``https://<host>/api/v3``); clone and file URLs use ``web_base_url``.

Authentication is the GitHub App's: an RS256 JWT signed with the App's private key (``iat`` 60 s
in the past against clock drift, ``exp`` at most 10 min after ``iat``, ``iss`` = App id) buys an
installation token with ``POST /app/installations/{id}/access_tokens``. Tokens live an hour; one
is reused until 5 minutes before its ``expires_at``, so a token handed to an agent for a clone
always has at least 5 minutes left. The private key is read again at every mint (a rotated key
file applies without a reload). The installation comes from the webhook's credentials
(``{installationId}``); without one (a dispatch from the API) it is looked up with
``GET /repos/{o}/{r}/installation`` and remembered per repository.

A 429 is retried 3 times, after 1, 2 and 4 s; any other non-success status is a
:class:`GitHubApiError`, which the pipeline treats as transient.

Choices where the spec is silent:

* A lock at ref ``HEAD`` is read without ``?ref=`` (the default branch).
* The contents API answers a directory with a list and a symlink or submodule with another
  ``type``: all mean "no lock file" (``None``); a file without ``content`` (over the API's 1 MB
  inline limit) or with undecodable content is a :class:`RepoLockFileParseError`.
* A renamed file in a pull request contributes both its old and its new path, so a ``paths``
  filter sees a file moved out of a watched directory.
* A push compare that returns 300 files (GitHub's cap) is used as is, with a warning.
"""

from __future__ import annotations

import base64
import binascii
import json
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Final, Protocol
from urllib.parse import quote, urlsplit

import attrs
import httpx
import structlog
import trio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from kici.domain.events import SimulatedEvent
from kici.domain.lockfile import LockFile, LockFileParseError, load_lock
from kici.domain.providers import (
    Contributor,
    Credentials,
    LockFileTooLargeError,
    Permission,
    ProviderBundle,
    RepoLockFileParseError,
)
from kici.domain.webhooks.models import (
    HEAD_REF,
    LOCK_FILE_PATH,
    MAX_LOCK_FILE_BYTES,
    ProviderType,
    is_zero_sha,
)
from kici.domain.webhooks.normalizers.github import GithubNormalizer
from kici.domain.webhooks.payload import dig, identifier, require_safe_repo, text

DEFAULT_API_BASE_URL: Final = "https://api.github.com"
DEFAULT_WEB_BASE_URL: Final = "https://github.com"
JWT_BACKDATE_S: Final = 60
JWT_LIFETIME_S: Final = 540
TOKEN_REFRESH_MARGIN_S: Final = 300
TOKEN_DEFAULT_LIFETIME_S: Final = 3600
RETRY_DELAYS_S: Final = (1.0, 2.0, 4.0)
PR_FILES_PER_PAGE: Final = 100
PR_FILES_MAX: Final = 3000
COMPARE_FILES_CAP: Final = 300
_API_VERSION: Final = "2022-11-28"
_PR_EVENTS: Final = frozenset({"pull_request", "review", "review_comment"})
_PERMISSIONS: Final[Mapping[str, Permission]] = {
    "admin": "admin",
    "maintain": "write",
    "write": "write",
    "triage": "read",
    "read": "read",
}

_log = structlog.get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]
KeyLoader = Callable[[], Awaitable[bytes]]
"""Returns the App's PEM private key; called at every token mint."""


class GitHubApiError(Exception):
    """A GitHub REST call failed (status, or 429 after every retry); transient for the pipeline."""

    def __init__(self, method: str, path: str, status: int) -> None:
        super().__init__(f"GitHub {method} {path} answered {status}")
        self.method = method
        self.path = path
        self.status = status


class GitHubConfigError(ValueError):
    """The App's configuration cannot work (unreadable or non-RSA private key, bad base URL)."""


@attrs.frozen
class HttpResponse:
    status: int
    body: bytes = attrs.field(repr=False)

    def json(self) -> Any:
        return json.loads(self.body)


class HttpClient(Protocol):
    """The one HTTP call the adapter needs; ``url`` is absolute."""

    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], json_body: Any = None
    ) -> HttpResponse: ...


class HttpxClient:
    """:class:`HttpClient` over httpx.

    A client is opened per call: the adapter lives in a config-generation bundle with no owner to
    close a pooled client, and calls are few (a token an hour, a lock per push). The TLS context is
    built once and shared by those clients: building it (the CA bundle) is what made a new httpx
    client cost ~25-50 ms of CPU, more than the API call itself (issue 7's latency benchmark).
    ``trust_env`` follows httpx (proxy variables and ``SSL_CERT_FILE`` honoured); tests turn it off.
    """

    def __init__(self, *, timeout_s: float = 30.0, trust_env: bool = True) -> None:
        self._timeout = httpx.Timeout(timeout_s)
        self._trust_env = trust_env
        self._tls: ssl.SSLContext | None = None

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = httpx.create_ssl_context(trust_env=self._trust_env)
        return self._tls

    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], json_body: Any = None
    ) -> HttpResponse:
        async with httpx.AsyncClient(
            timeout=self._timeout, trust_env=self._trust_env, verify=self._tls_context()
        ) as client:
            response = await client.request(method, url, headers=dict(headers), json=json_body)
            return HttpResponse(response.status_code, response.content)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def load_private_key(pem: bytes) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise GitHubConfigError("the GitHub App private key is not an unencrypted PEM key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise GitHubConfigError("the GitHub App private key must be an RSA key (RS256)")
    return key


def app_jwt(app_id: str, key: rsa.RSAPrivateKey, now: float) -> str:
    """The App's RS256 JWT: ``iat`` = now - 60, ``exp`` = ``iat`` + 600 (GitHub's maximum span)."""
    issued = int(now) - JWT_BACKDATE_S
    header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = {"iat": issued, "exp": int(now) + JWT_LIFETIME_S, "iss": app_id}
    payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{payload}.{_b64url(signature)}"


def web_base_for(api_base_url: str) -> str:
    """``https://api.github.com`` -> ``https://github.com``; GHES ``https://h/api/v3`` -> ``https://h``."""
    parts = urlsplit(api_base_url.rstrip("/"))
    if not parts.scheme or not parts.netloc:
        raise GitHubConfigError(f"invalid GitHub API base URL {api_base_url!r}")
    if parts.netloc == "api.github.com":
        return DEFAULT_WEB_BASE_URL
    path = parts.path.removesuffix("/api/v3")
    return f"{parts.scheme}://{parts.netloc}{path}"


def _expiry(value: Any, now: float) -> float:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return now + TOKEN_DEFAULT_LIFETIME_S


def _repo_path(repo: str) -> str:
    owner, _, name = require_safe_repo(repo).partition("/")
    if not owner or not name or "/" in name:
        raise ValueError(f"a GitHub repository is owner/name, not {repo!r}")
    return f"/repos/{quote(owner, safe='')}/{quote(name, safe='')}"


@attrs.frozen
class _Token:
    value: str = attrs.field(repr=False)
    expires_at: float


class GitHubApp:
    """One App's authenticated REST access: JWT, installation tokens (cached), retried calls."""

    def __init__(
        self,
        app_id: str,
        load_key: KeyLoader,
        http: HttpClient,
        *,
        api_base_url: str = DEFAULT_API_BASE_URL,
        web_base_url: str | None = None,
        clock: Clock = time.time,
        sleep: Sleep = trio.sleep,
    ) -> None:
        self.app_id = app_id
        self.api_base_url = api_base_url.rstrip("/")
        self.web_base_url = (web_base_url or web_base_for(self.api_base_url)).rstrip("/")
        self._load_key = load_key
        self._http = http
        self._clock = clock
        self._sleep = sleep
        self._tokens: dict[str, _Token] = {}
        self._installations: dict[str, str] = {}
        self._mint_lock = trio.Lock()

    async def request(
        self, method: str, path: str, auth: str, *, json_body: Any = None, ok: frozenset[int] = frozenset()
    ) -> HttpResponse:
        """``auth`` is the ``Authorization`` value; 2xx and the statuses in ``ok`` are returned."""
        headers = {
            "Accept": "application/vnd.github+json",
            "Authorization": auth,
            "X-GitHub-Api-Version": _API_VERSION,
            "User-Agent": "kici",
        }
        url = self.api_base_url + path
        shown = path.partition("?")[0]
        response = await self._http.request(method, url, headers=headers, json_body=json_body)
        for delay in RETRY_DELAYS_S:
            if response.status != 429:
                break
            _log.warning("github rate limited, retrying", method=method, path=shown, after_s=delay)
            await self._sleep(delay)
            response = await self._http.request(method, url, headers=headers, json_body=json_body)
        if 200 <= response.status < 300 or response.status in ok:
            return response
        raise GitHubApiError(method, shown, response.status)

    async def _jwt(self) -> str:
        return app_jwt(self.app_id, load_private_key(await self._load_key()), self._clock())

    async def installation_id(self, repo: str, creds: Credentials) -> str:
        """From the webhook's credentials, else the repository's installation (looked up once)."""
        given = identifier(creds.get("installationId"))
        if given is not None:
            return given
        known = self._installations.get(repo)
        if known is not None:
            return known
        response = await self.request(
            "GET", f"{_repo_path(repo)}/installation", f"Bearer {await self._jwt()}"
        )
        found = identifier(dig(response.json(), "id"))
        if found is None:
            raise GitHubApiError("GET", f"{_repo_path(repo)}/installation", response.status)
        self._installations[repo] = found
        return found

    async def installation_token(self, installation_id: str) -> str:
        """A token with at least 5 minutes left, minted only when the cached one has less."""
        async with self._mint_lock:
            cached = self._tokens.get(installation_id)
            if cached is not None and self._clock() < cached.expires_at - TOKEN_REFRESH_MARGIN_S:
                return cached.value
            path = f"/app/installations/{quote(installation_id, safe='')}/access_tokens"
            response = await self.request("POST", path, f"Bearer {await self._jwt()}")
            body = response.json()
            value = text(dig(body, "token"))
            if value is None:
                raise GitHubApiError("POST", path, response.status)
            token = _Token(value, _expiry(dig(body, "expires_at"), self._clock()))
            self._tokens[installation_id] = token
            return token.value

    async def token_for(self, repo: str, creds: Credentials) -> str:
        return await self.installation_token(await self.installation_id(repo, creds))

    async def get(
        self, repo: str, creds: Credentials, path: str, *, ok: frozenset[int] = frozenset()
    ) -> HttpResponse:
        token = await self.token_for(repo, creds)
        return await self.request("GET", _repo_path(repo) + path, f"token {token}", ok=ok)


def _lock_from_contents(body: Any, repo: str, ref: str) -> LockFile | None:
    if not isinstance(body, Mapping) or body.get("type") != "file":
        return None
    content = body.get("content")
    if not isinstance(content, str) or not content:
        problem = "the contents API returned no content (file too large to read inline?)"
        raise RepoLockFileParseError(repo, ref, LockFileParseError("", problem))
    size = body.get("size")
    if isinstance(size, int) and size > MAX_LOCK_FILE_BYTES:
        raise RepoLockFileParseError(repo, ref, LockFileTooLargeError(size, MAX_LOCK_FILE_BYTES))
    try:
        data = base64.b64decode("".join(content.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RepoLockFileParseError(
            repo, ref, LockFileParseError("", "the content is not valid base64")
        ) from exc
    if len(data) > MAX_LOCK_FILE_BYTES:
        raise RepoLockFileParseError(repo, ref, LockFileTooLargeError(len(data), MAX_LOCK_FILE_BYTES))
    try:
        return load_lock(data)
    except LockFileParseError as exc:
        raise RepoLockFileParseError(repo, ref, exc) from exc


class GitHubLockFetcher:
    """:class:`~kici.domain.providers.LockFileFetcher` over the contents API."""

    def __init__(self, app: GitHubApp) -> None:
        self.app = app

    @property
    def provider(self) -> str:
        return ProviderType.GITHUB.value

    async def fetch_lock_file(self, repo: str, ref: str, creds: Credentials) -> LockFile | None:
        query = "" if ref == HEAD_REF else f"?ref={quote(ref, safe='')}"
        response = await self.app.get(repo, creds, f"/contents/{LOCK_FILE_PATH}{query}", ok=frozenset({404}))
        if response.status == 404:
            return None
        return _lock_from_contents(response.json(), repo, ref)


def _filenames(files: Any) -> list[str]:
    names: list[str] = []
    for entry in files if isinstance(files, list) else []:
        for key in ("previous_filename", "filename"):
            name = text(dig(entry, key))
            if name is not None and name not in names:
                names.append(name)
    return names


class GitHubChangedFiles:
    """:class:`~kici.domain.providers.ChangedFilesFetcher`: PR files (paged) or the push's compare."""

    def __init__(self, app: GitHubApp) -> None:
        self.app = app

    async def get_changed_files(
        self, repo: str, event: SimulatedEvent, payload: Mapping[str, Any], creds: Credentials
    ) -> list[str]:
        if event.type in _PR_EVENTS:
            number = identifier(dig(payload, "pull_request", "number"))
            return [] if number is None else await self._pull_files(repo, number, creds)
        if event.type in ("push", "tag"):
            return await self._compare(repo, text(payload.get("before")), text(payload.get("after")), creds)
        return []

    async def _pull_files(self, repo: str, number: str, creds: Credentials) -> list[str]:
        names: list[str] = []
        page, seen = 1, 0
        while seen < PR_FILES_MAX:
            query = f"?per_page={PR_FILES_PER_PAGE}&page={page}"
            batch = (await self.app.get(repo, creds, f"/pulls/{quote(number, safe='')}/files{query}")).json()
            entries = batch if isinstance(batch, list) else []
            seen += len(entries)
            names.extend(n for n in _filenames(entries) if n not in names)
            if len(entries) < PR_FILES_PER_PAGE:
                break
            page += 1
        return names

    async def _compare(
        self, repo: str, before: str | None, after: str | None, creds: Credentials
    ) -> list[str]:
        if before is None or after is None or is_zero_sha(before) or is_zero_sha(after):
            return []
        span = f"{quote(before, safe='')}...{quote(after, safe='')}"
        files = dig((await self.app.get(repo, creds, f"/compare/{span}")).json(), "files")
        names = _filenames(files)
        if isinstance(files, list) and len(files) >= COMPARE_FILES_CAP:
            _log.warning(
                "github compare capped, changed files may be incomplete", repo=repo, files=len(files)
            )
        return names


class GitHubCloneTokens:
    """:class:`~kici.domain.providers.CloneTokenProvider`: the installation token (x-access-token auth)."""

    def __init__(self, app: GitHubApp) -> None:
        self.app = app

    async def create_clone_token(self, repo: str, creds: Credentials) -> str | None:
        return await self.app.token_for(repo, creds)


class GitHubUrls:
    """:class:`~kici.domain.providers.RepoUrlBuilder` under ``web_base_url``."""

    def __init__(self, web_base_url: str) -> None:
        self.web_base_url = web_base_url.rstrip("/")

    def build_clone_url(self, repo: str) -> str:
        return f"{self.web_base_url}/{require_safe_repo(repo)}.git"

    def build_raw_file_url(self, repo: str, ref: str, path: str) -> str | None:
        return f"{self.web_base_url}/{require_safe_repo(repo)}/blob/{quote(ref, safe='')}/{quote(path)}"


class GitHubContributors:
    """:class:`~kici.domain.providers.ContributorResolver` from the collaborator permission endpoint.

    ``role_name`` (finer) wins over the legacy ``permission``; 403 and 404 mean ``none``.
    ``is_fork_pr`` is not known from a permission lookup and is reported ``False``; the pipeline
    takes it from the event.
    """

    def __init__(self, app: GitHubApp) -> None:
        self.app = app

    async def resolve_contributor(self, repo: str, user: str, creds: Credentials) -> Contributor:
        path = f"/collaborators/{quote(user, safe='')}/permission"
        response = await self.app.get(repo, creds, path, ok=frozenset({403, 404}))
        if response.status in (403, 404):
            return Contributor(user, "none", False)
        body = response.json()
        role = text(dig(body, "role_name")) or text(dig(body, "permission")) or ""
        return Contributor(user, _PERMISSIONS.get(role, "none"), False)


def key_file_loader(path: str) -> KeyLoader:
    """Reads the PEM file at every call (see the module docstring)."""

    async def load() -> bytes:
        try:
            return await trio.Path(path).read_bytes()
        except OSError as exc:
            raise GitHubConfigError(
                f"cannot read the GitHub App private key {path}: {type(exc).__name__}"
            ) from exc

    return load


def github_bundle(app: GitHubApp) -> ProviderBundle:
    """The ports of 30 §1 for one GitHub App; check statuses belong to the checks adapter (CHK-*)."""
    return ProviderBundle(
        normalizer=GithubNormalizer(),
        lock_file_fetcher=GitHubLockFetcher(app),
        changed_files_fetcher=GitHubChangedFiles(app),
        clone_token_provider=GitHubCloneTokens(app),
        repo_url_builder=GitHubUrls(app.web_base_url),
        contributor_resolver=GitHubContributors(app),
    )


__all__ = [
    "COMPARE_FILES_CAP",
    "DEFAULT_API_BASE_URL",
    "DEFAULT_WEB_BASE_URL",
    "PR_FILES_MAX",
    "RETRY_DELAYS_S",
    "TOKEN_REFRESH_MARGIN_S",
    "GitHubApiError",
    "GitHubApp",
    "GitHubChangedFiles",
    "GitHubCloneTokens",
    "GitHubConfigError",
    "GitHubContributors",
    "GitHubLockFetcher",
    "GitHubUrls",
    "HttpClient",
    "HttpResponse",
    "HttpxClient",
    "app_jwt",
    "github_bundle",
    "key_file_loader",
    "load_private_key",
    "web_base_for",
]
