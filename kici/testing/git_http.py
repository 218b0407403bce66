"""A real git smart-HTTP server on loopback, and helpers to build the repositories it serves.

Tests of the universal-git provider need a git server that behaves like a forge: smart HTTP with
protocol v2, partial clone (``--filter=blob:none``), fetching a commit by SHA, and HTTP Basic
authentication. ``git http-backend`` already is that server; this module only bridges HTTP to it
as CGI, from a stdlib ``ThreadingHTTPServer`` on a background thread, so it works from sync tests
and from trio tests alike (trio's own clients reach it over loopback like any remote).

Usage::

    with GitHttpServer(root, credentials=("alice", "s3cret")) as server:
        url = server.url_for("acme/app")      # http://127.0.0.1:<port>/acme/app.git

``root`` holds bare repositories named ``<repo>.git`` (see :func:`create_repo`). With
``credentials`` every request must carry ``Authorization: Basic …`` for that user and password,
else the answer is 401 with a ``WWW-Authenticate`` challenge. ``server.requests`` records
``(method, path, authorized)`` for assertions.
"""

from __future__ import annotations

import base64
import hmac
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Final
from urllib.parse import urlsplit

_HTTP_BACKEND: Final = "http-backend"
_GIT_IDENTITY: Final = {
    "GIT_AUTHOR_NAME": "kici test",
    "GIT_AUTHOR_EMAIL": "test@kici.invalid",
    "GIT_COMMITTER_NAME": "kici test",
    "GIT_COMMITTER_EMAIL": "test@kici.invalid",
}
_FORWARDED_HEADERS: Final = (("Git-Protocol", "GIT_PROTOCOL"), ("Content-Encoding", "HTTP_CONTENT_ENCODING"))
# What a forge enables so that partial clones and fetch-by-SHA work.
_SERVER_CONFIG: Final = (
    ("uploadpack.allowFilter", "true"),
    ("uploadpack.allowAnySHA1InWant", "true"),
    ("http.receivepack", "false"),
)


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A hermetic environment for git: no user or system config, no prompts, a fixed identity."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": tempfile.gettempdir(),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "LC_ALL": "C",
        **_GIT_IDENTITY,
    }
    env.update(extra or {})
    return env


def _git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, env=git_env(), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def create_repo(root: Path, repo: str, default_branch: str = "main") -> Path:
    """An empty bare repository ``<root>/<repo>.git`` whose HEAD names ``default_branch``."""
    bare = root / f"{repo}.git"
    bare.parent.mkdir(parents=True, exist_ok=True)
    _git("init", "--quiet", "--bare", f"--initial-branch={default_branch}", str(bare))
    return bare


def commit_files(
    bare: Path, branch: str, files: Mapping[str, bytes | str | None], message: str = "change"
) -> str:
    """Commit ``files`` on ``branch`` of ``bare`` (``None`` deletes a path); returns the commit SHA.

    The branch starts from its current tip, or empty when it does not exist yet.
    """
    with tempfile.TemporaryDirectory(prefix="kici-git-work-") as work_dir:
        work = Path(work_dir)
        _git("init", "--quiet", str(work))
        exists = _git("ls-remote", "--heads", str(bare), branch, cwd=work) != ""
        if exists:
            _git("fetch", "--quiet", str(bare), f"refs/heads/{branch}:refs/remotes/origin/{branch}", cwd=work)
            _git("checkout", "--quiet", "-B", branch, f"origin/{branch}", cwd=work)
        else:
            _git("checkout", "--quiet", "--orphan", branch, cwd=work)
        for name, content in files.items():
            path = work / name
            if content is None:
                _git("rm", "--quiet", "-r", "--ignore-unmatch", name, cwd=work)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode() if isinstance(content, str) else content)
            _git("add", name, cwd=work)
        _git("commit", "--quiet", "--allow-empty", "-m", message, cwd=work)
        _git("push", "--quiet", str(bare), f"HEAD:refs/heads/{branch}", cwd=work)
        return _git("rev-parse", "HEAD", cwd=work)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    disable_nagle_algorithm = True  # else each small response waits ~40 ms for the client's delayed ACK

    def log_message(self, format: str, *args: object) -> None:
        """Silent: a test server must not write to stderr."""

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _authorized(self) -> bool:
        expected = self.server.expected_authorization
        if expected is None:
            return True
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), expected.encode())

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        authorized = self._authorized()
        target = urlsplit(self.path)
        self.server.record(self.command, target.path, authorized)
        if not authorized:
            self.send_response(HTTPStatus.UNAUTHORIZED)
            self.send_header("WWW-Authenticate", 'Basic realm="kici-test-git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self._read_body()
        env = git_env(
            {
                "GIT_PROJECT_ROOT": str(self.server.root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "GATEWAY_INTERFACE": "CGI/1.1",
                "REQUEST_METHOD": self.command,
                "PATH_INFO": target.path,
                "QUERY_STRING": target.query,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "REMOTE_ADDR": self.client_address[0],
                "GIT_CONFIG_COUNT": str(len(_SERVER_CONFIG)),
            }
        )
        for index, (key, value) in enumerate(_SERVER_CONFIG):
            env[f"GIT_CONFIG_KEY_{index}"] = key
            env[f"GIT_CONFIG_VALUE_{index}"] = value
        if self.server.credentials is not None:
            env["REMOTE_USER"] = self.server.credentials[0]
        for header, variable in _FORWARDED_HEADERS:
            forwarded = self.headers.get(header)
            if forwarded:
                env[variable] = forwarded
        done = subprocess.run(["git", _HTTP_BACKEND], input=body, env=env, capture_output=True, check=False)
        self._relay_cgi(done.stdout)

    def _relay_cgi(self, output: bytes) -> None:
        head, separator, payload = output.partition(b"\r\n\r\n")
        if not separator:
            head, separator, payload = output.partition(b"\n\n")
        status = HTTPStatus.OK
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = HTTPStatus(int(value.strip().split()[0]))
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, credentials: tuple[str, str] | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.credentials = credentials
        self.expected_authorization = (
            None
            if credentials is None
            else "Basic " + base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
        )
        self.requests: list[tuple[str, str, bool]] = []
        self._lock = threading.Lock()

    def record(self, method: str, path: str, authorized: bool) -> None:
        with self._lock:
            self.requests.append((method, path, authorized))


class GitHttpServer:
    """``git http-backend`` over HTTP on ``127.0.0.1:<ephemeral port>``; see the module docstring."""

    def __init__(self, root: Path, credentials: tuple[str, str] | None = None) -> None:
        if shutil.which("git") is None:
            raise RuntimeError("git is not installed")
        self._server = _Server(root, credentials)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def requests(self) -> list[tuple[str, str, bool]]:
        with self._server._lock:
            return list(self._server.requests)

    def url_for(self, repo: str) -> str:
        return f"{self.base_url}/{repo}.git"

    def __enter__(self) -> GitHttpServer:
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


__all__ = ["GitHttpServer", "commit_files", "create_repo", "git_env"]
