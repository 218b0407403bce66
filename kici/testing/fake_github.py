"""A loopback fake of the few GitHub REST endpoints the GitHub provider calls.

Serves, from a stdlib ``ThreadingHTTPServer`` on a background thread at ``127.0.0.1:<ephemeral>``
(so it works from trio tests, reached over loopback like the real API):

* ``POST /app/installations/{id}/access_tokens``: checks the App JWT (RS256 signature against the
  App's public key, ``iss`` = App id, ``exp`` after ``iat`` and at most 600 s later), mints
  ``ghs_fake_<n>`` expiring at ``token_expires_at``;
* ``GET /repos/{o}/{r}/installation`` (JWT);
* with an installation token of the repository's installation: ``contents/{path}?ref=``,
  ``pulls/{n}/files?per_page=&page=``, ``compare/{base}...{head}``,
  ``collaborators/{user}/permission``.

Scripted faults: ``fail_next(status, count)`` answers the next ``count`` requests with ``status``.
``calls`` records ``(method, path_with_query)`` for assertions. Anything unauthenticated is 401,
anything unknown 404.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

DIRECTORY: Final = object()
"""A contents entry that is a directory (the API answers a list)."""
NO_CONTENT: Final = object()
"""A contents entry served without inline content (a file over the API's 1 MB limit)."""


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def new_app_key() -> tuple[rsa.RSAPrivateKey, bytes]:
    """A fresh 2048-bit key and its unencrypted PKCS#8 PEM, as GitHub hands an App."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key, pem


@attrs.define
class _State:
    app_id: str
    public_key: rsa.RSAPublicKey
    installations: dict[str, str] = attrs.Factory(dict)
    contents: dict[tuple[str, str | None, str], object] = attrs.Factory(dict)
    pull_files: dict[tuple[str, int], list[dict[str, str]]] = attrs.Factory(dict)
    compares: dict[tuple[str, str, str], list[str]] = attrs.Factory(dict)
    permissions: dict[tuple[str, str], tuple[str, str]] = attrs.Factory(dict)
    token_expires_at: str = "2030-01-01T00:00:00Z"
    tokens: dict[str, str] = attrs.Factory(dict)
    minted: int = 0
    faults: list[int] = attrs.Factory(list)
    calls: list[tuple[str, str]] = attrs.Factory(list)
    jwt_claims: list[dict[str, Any]] = attrs.Factory(list)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    disable_nagle_algorithm = True  # else each small response waits ~40 ms for the client's delayed ACK

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, status: int, body: Any = None) -> None:
        data = json.dumps(body if body is not None else {"message": str(status)}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        status, body = self.server.answer(method, self.path, self.headers.get("Authorization", ""))
        self._send(status, body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: _State) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state
        self.lock = threading.Lock()

    def _verify_jwt(self, auth: str) -> bool:
        scheme, _, jwt = auth.partition(" ")
        parts = jwt.split(".")
        if scheme != "Bearer" or len(parts) != 3:
            return False
        try:
            header = json.loads(_b64url_decode(parts[0]))
            claims = json.loads(_b64url_decode(parts[1]))
            self.state.public_key.verify(
                _b64url_decode(parts[2]),
                f"{parts[0]}.{parts[1]}".encode("ascii"),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (ValueError, InvalidSignature):
            return False
        iat, exp = claims.get("iat"), claims.get("exp")
        valid = (
            header.get("alg") == "RS256"
            and claims.get("iss") == self.state.app_id
            and isinstance(iat, int)
            and isinstance(exp, int)
            and iat < exp <= iat + 600
        )
        if valid:
            self.state.jwt_claims.append(claims)
        return valid

    def _token_installation(self, auth: str) -> str | None:
        scheme, _, token = auth.partition(" ")
        return self.state.tokens.get(token) if scheme.lower() in ("token", "bearer") else None

    def answer(self, method: str, raw_path: str, auth: str) -> tuple[int, Any]:
        with self.lock:
            self.state.calls.append((method, raw_path))
            if self.state.faults:
                return self.state.faults.pop(0), None
            split = urlsplit(raw_path)
            segments = [unquote(s) for s in split.path.strip("/").split("/")]
            query = {k: v[0] for k, v in parse_qs(split.query).items()}
            if segments[:2] == ["app", "installations"] and segments[3:] == ["access_tokens"]:
                return self._mint(method, segments[2], auth)
            if segments[0] != "repos" or len(segments) < 4 or method != "GET":
                return 404, None
            repo, rest = f"{segments[1]}/{segments[2]}", segments[3:]
            installation = self.state.installations.get(repo)
            if rest == ["installation"]:
                if not self._verify_jwt(auth):
                    return 401, None
                return (200, {"id": int(installation)}) if installation else (404, None)
            if installation is None or self._token_installation(auth) != installation:
                return 401, None
            return self._repo_call(repo, rest, query)

    def _mint(self, method: str, installation: str, auth: str) -> tuple[int, Any]:
        if method != "POST":
            return 404, None
        if not self._verify_jwt(auth):
            return 401, None
        if installation not in self.state.installations.values():
            return 404, None
        self.state.minted += 1
        token = f"ghs_fake_{self.state.minted}"
        self.state.tokens[token] = installation
        return 201, {"token": token, "expires_at": self.state.token_expires_at}

    def _repo_call(self, repo: str, rest: list[str], query: Mapping[str, str]) -> tuple[int, Any]:
        if rest[0] == "contents":
            path = "/".join(rest[1:])
            entry = self.state.contents.get((repo, query.get("ref"), path), None)
            if entry is None:
                return 404, None
            if entry is DIRECTORY:
                return 200, [{"type": "file", "name": "x", "path": f"{path}/x"}]
            if entry is NO_CONTENT:
                return 200, {
                    "type": "file",
                    "path": path,
                    "size": 2_000_000,
                    "encoding": "none",
                    "content": "",
                }
            assert isinstance(entry, bytes)
            encoded = base64.encodebytes(entry).decode("ascii")
            return 200, {
                "type": "file",
                "path": path,
                "size": len(entry),
                "encoding": "base64",
                "content": encoded,
            }
        if rest[0] == "pulls" and len(rest) == 3 and rest[2] == "files":
            files = self.state.pull_files.get((repo, int(rest[1])))
            if files is None:
                return 404, None
            per_page = min(int(query.get("per_page", "30")), 100)
            page = int(query.get("page", "1"))
            return 200, files[(page - 1) * per_page : page * per_page]
        if rest[0] == "compare" and len(rest) == 2:
            base, _, head = rest[1].partition("...")
            names = self.state.compares.get((repo, base, head))
            if names is None:
                return 404, None
            return 200, {"status": "ahead", "files": [{"filename": n, "status": "modified"} for n in names]}
        if rest[0] == "collaborators" and len(rest) == 3 and rest[2] == "permission":
            found = self.state.permissions.get((repo, rest[1]))
            if found is None:
                return 404, None
            return 200, {"permission": found[0], "role_name": found[1], "user": {"login": rest[1]}}
        return 404, None


class FakeGitHub:
    """The fake API server; see the module docstring. Configure through the methods, then call."""

    def __init__(self, app_id: str, public_key: rsa.RSAPublicKey) -> None:
        self._server = _Server(_State(app_id, public_key))
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def install(self, repo: str, installation_id: str) -> None:
        with self._server.lock:
            self._server.state.installations[repo] = installation_id

    def put_file(self, repo: str, ref: str | None, path: str, content: bytes | object) -> None:
        """``content``: bytes, :data:`DIRECTORY` or :data:`NO_CONTENT`; ``ref=None`` is the default branch."""
        with self._server.lock:
            self._server.state.contents[(repo, ref, path)] = content

    def put_pull_files(self, repo: str, number: int, files: list[dict[str, str]]) -> None:
        with self._server.lock:
            self._server.state.pull_files[(repo, number)] = files

    def put_compare(self, repo: str, base: str, head: str, names: list[str]) -> None:
        with self._server.lock:
            self._server.state.compares[(repo, base, head)] = names

    def put_permission(self, repo: str, user: str, permission: str, role_name: str) -> None:
        with self._server.lock:
            self._server.state.permissions[(repo, user)] = (permission, role_name)

    def set_token_expiry(self, expires_at: str) -> None:
        with self._server.lock:
            self._server.state.token_expires_at = expires_at

    def fail_next(self, status: int, count: int = 1) -> None:
        with self._server.lock:
            self._server.state.faults.extend([status] * count)

    @property
    def calls(self) -> list[tuple[str, str]]:
        with self._server.lock:
            return list(self._server.state.calls)

    @property
    def minted(self) -> int:
        with self._server.lock:
            return self._server.state.minted

    @property
    def jwt_claims(self) -> list[dict[str, Any]]:
        with self._server.lock:
            return list(self._server.state.jwt_claims)

    def __enter__(self) -> FakeGitHub:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


__all__ = ["DIRECTORY", "NO_CONTENT", "FakeGitHub", "new_app_key"]
