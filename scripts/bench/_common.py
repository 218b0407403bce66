"""What every benchmark in ``scripts/bench/`` shares: figures, output, processes, an orchestrator, webhooks.

A benchmark prints exactly ONE JSON line of figures on stdout (:func:`emit`) so a script or CI can
collect it; everything else (progress, warnings) goes to stderr (:func:`progress`). Benchmarks are
never pass/fail: they measure, and the numbers are read by people against the targets of issue 7.

Processes a benchmark starts run in their own session (process group), are stopped with SIGTERM so
they shut down the way an operator's stop would, and are killed as a group only when that takes
longer than a grace period: a benchmark that leaves servers behind skews the next one.

The orchestrator launcher is the pattern of ``tests/e2e/test_orchestrator_process.py``: the real
``kici-orchestrator`` console script with its embedded PostgreSQL in a scratch data dir, listening on
a free loopback port, driven only from outside (HTTP, WebSocket, signals, its JSON log lines).

Webhooks are GitHub-shaped push deliveries signed the way GitHub signs them: both
``X-Hub-Signature`` (HMAC-SHA1, what buildbot checks) and ``X-Hub-Signature-256`` (HMAC-SHA256, what
kici checks), so one helper feeds both systems of ``vs-buildbot`` the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import httpx
import trio

from kici.adapters.postgres import embedded
from kici.domain.webhooks.verification import sign_body
from kici.testing.git_http import commit_files, create_repo

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
BENCH_ROOT: Final = Path(tempfile.gettempdir()) / "kici-bench"
ADMIN_TOKEN: Final = "kadm_bench-admin-token"
STOP_GRACE_S: Final = 30.0
START_TIMEOUT_S: Final = 90.0

# The one step both systems run in ``vs-buildbot``: write the wall-clock time it started to argv[1].
STAMP_SCRIPT: Final = 'import sys,time;open(sys.argv[1],"w").write(repr(time.time()))'


# --- output -------------------------------------------------------------------------------------


def progress(message: str) -> None:
    """A progress line on stderr; stdout is reserved for the figures."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def emit(figures: Mapping[str, Any]) -> None:
    """The benchmark's single JSON line of figures on stdout."""
    print(json.dumps(figures, separators=(",", ":")), flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), interpolated linearly between the closest ranks.

    Interpolation (numpy's default) rather than nearest rank: with 30 samples p99 would otherwise
    always be the maximum, and the figure would hide how close the tail is to the rest.
    """
    if not values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile out of range: {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_figures(seconds: Sequence[float]) -> dict[str, float]:
    """Median, p90, p99, min and max of latencies given in seconds, as milliseconds (0.1 ms)."""
    ms = [s * 1000 for s in seconds]
    return {
        "median": round(percentile(ms, 50), 1),
        "p90": round(percentile(ms, 90), 1),
        "p99": round(percentile(ms, 99), 1),
        "min": round(min(ms), 1),
        "max": round(max(ms), 1),
    }


def machine() -> dict[str, Any]:
    """What the figures were measured on, for the figures table of docs/benchmarks.md."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d"),
    }


# --- processes ----------------------------------------------------------------------------------


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session with stdout and stderr appended to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_process(
    process: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, grace_s: float = STOP_GRACE_S
) -> int:
    """Ask ``process`` to stop with ``sig``; after ``grace_s`` kill its whole group. Returns its exit code.

    The signal goes to the process alone, not its group: a service stops its own children in
    order (the orchestrator its PostgreSQL, a buildbot worker its running step).
    """
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            progress(f"pid {process.pid} ignored signal {sig} for {grace_s:.0f}s; killing its group")
    kill_group(process.pid)
    return process.wait()


def kill_group(pgid: int) -> None:
    """SIGKILL what is left of the process group ``pgid`` (a no-op when it is gone)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def processes_mentioning(marker: str) -> list[int]:
    """Pids (not ours) whose command line contains ``marker``: strays a benchmark must not leave."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry.name))
    return found


def rss_kib(pid: int) -> int:
    """The resident set size of ``pid`` (``VmRSS`` of /proc/<pid>/status), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft open-file limit towards ``wanted`` (children inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def free_port() -> int:
    """A free TCP port on 127.0.0.1, for servers that cannot bind port 0 and report it back."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def bench_workdir(name: str) -> Iterator[Path]:
    """A fresh scratch directory ``<tmp>/kici-bench/<name>-<pid>-<id>``, removed afterwards.

    World-traversable (0755) because the embedded PostgreSQL runs as its own system user when the
    benchmark runs as root, and must reach its data dir below this one.
    """
    BENCH_ROOT.mkdir(mode=0o755, exist_ok=True)
    BENCH_ROOT.chmod(0o755)
    path = BENCH_ROOT / f"{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- the orchestrator ---------------------------------------------------------------------------


def kici_command(script: str, module: str) -> list[str]:
    """A kici console script of this venv, else its module run by this interpreter."""
    path = Path(sys.executable).with_name(script)
    return [str(path)] if path.exists() else [sys.executable, "-m", module]


def orchestrator_env() -> dict[str, str]:
    """The environment without any ``KICI_*`` of the caller's shell, plus a known admin token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KICI_")}
    env["KICI_BOOTSTRAP_ADMIN_TOKEN"] = ADMIN_TOKEN
    env.setdefault("XDG_RUNTIME_DIR", str(Path(tempfile.gettempdir()) / f"kici-runtime-{os.getuid()}"))
    Path(env["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, exist_ok=True)
    return env


def universal_git_source(
    name: str, git_base_url: str, secret: str, *, max_payload_bytes: int = 1_048_576
) -> dict[str, Any]:
    """A universal-git source with the ``github-repo`` preset: GitHub-shaped deliveries, GitHub signing,
    the repository ``<owner>/<name>`` cloned from ``<git_base_url>/<owner>/<name>.git``."""
    return {
        "name": name,
        "provider": "universal-git",
        "secret": secret,
        "maxPayloadBytes": max_payload_bytes,
        "gitConfig": {"preset": "github-repo", "gitUrlTemplate": f"{git_base_url}/{{repo}}.git"},
    }


@attrs.define
class Orchestrator:
    """A running ``kici-orchestrator`` process; :meth:`stop` is the ordered SIGTERM shutdown."""

    process: subprocess.Popen[bytes]
    workdir: Path
    config_path: Path
    log_path: Path
    url: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/ws"

    def webhook_url(self, source: str) -> str:
        return f"{self.url}/webhooks/universal-git/{source}"

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    out.append(entry)
        return out

    def wait_for_log(self, message: str, *, timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
        """The first log line whose ``message`` is ``message``, waiting for it (blocking)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [entry for entry in self.log_lines() if entry.get("message") == message]
            if found:
                return found[0]
            if self.process.poll() is not None:
                raise RuntimeError(f"orchestrator exited {self.process.returncode}:\n{self.log_tail()}")
            time.sleep(0.05)
        raise TimeoutError(f"no {message!r} from the orchestrator within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def create_agent_token(self, labels: Sequence[str] = ()) -> str:
        """A new static agent token through ``kici-orchestrator agent-token create`` (blocking)."""
        argv = [
            *kici_command("kici-orchestrator", "kici.services.orchestrator.main"),
            "agent-token",
            "create",
            "--config",
            str(self.config_path),
        ]
        if labels:
            argv += ["--labels", ",".join(labels)]
        done = subprocess.run(
            argv, capture_output=True, env=orchestrator_env(), check=False, timeout=START_TIMEOUT_S
        )
        if done.returncode != 0:
            raise RuntimeError(f"agent-token create failed: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode().strip().splitlines()[-1]

    def stop(self) -> int:
        """SIGTERM (the orchestrator stops its embedded PostgreSQL itself); returns the exit code."""
        code = stop_process(self.process)
        pgdata = embedded.pgdata_for(self.data_dir)
        if embedded.is_running(pgdata):
            progress("the orchestrator left its PostgreSQL running; stopping it")
            embedded.stop(pgdata)
        return code


def start_orchestrator(
    workdir: Path,
    *,
    sources: Sequence[Mapping[str, Any]] = (),
    extra_config: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Orchestrator:
    """Start ``kici-orchestrator`` (independent mode, 127.0.0.1, a free port, JSON logs) in ``workdir``.

    Blocks until it logs ``orchestrator listening`` (the first boot runs initdb: about 2 s); from
    trio call it through ``trio.to_thread.run_sync``. ``extra_config`` keys are merged over the
    defaults at the top level.
    """
    config: dict[str, Any] = {
        "instance": {"mode": "independent"},
        "server": {"host": "127.0.0.1", "port": 0},
        "logging": {"format": "json"},
        "dataDir": str(workdir / "data"),
        "sources": list(sources),
    }
    config.update(extra_config or {})
    config_path = workdir / "orchestrator.yaml"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = workdir / "orchestrator.log"
    process = spawn(
        [*kici_command("kici-orchestrator", "kici.services.orchestrator.main"), "--config", str(config_path)],
        log_path=log_path,
        env={**orchestrator_env(), **(env or {})},
    )
    orch = Orchestrator(process, workdir, config_path, log_path)
    try:
        listening = orch.wait_for_log("orchestrator listening")
    except BaseException:
        orch.stop()
        raise
    orch.url = str(listening["url"]).rstrip("/")
    return orch


@contextlib.contextmanager
def running_orchestrator(
    workdir: Path,
    *,
    sources: Sequence[Mapping[str, Any]] = (),
    extra_config: Mapping[str, Any] | None = None,
) -> Iterator[Orchestrator]:
    """:func:`start_orchestrator`, stopped on the way out whatever happened."""
    orch = start_orchestrator(workdir, sources=sources, extra_config=extra_config)
    try:
        yield orch
    finally:
        code = orch.stop()
        if code != 0:
            progress(f"orchestrator exited {code}; last log lines:\n{orch.log_tail()}")


# --- git repositories and webhooks --------------------------------------------------------------


def make_repo(root: Path, repo: str, files: Mapping[str, bytes | str], branch: str = "main") -> str:
    """A bare repository ``<root>/<repo>.git`` with one commit of ``files`` on ``branch``; its SHA.

    Serve ``root`` with :class:`kici.testing.git_http.GitHttpServer` to clone it over HTTP.
    """
    bare = create_repo(root, repo, default_branch=branch)
    return commit_files(bare, branch, files, message="bench: initial commit")


def commit(root: Path, repo: str, files: Mapping[str, bytes | str | None], branch: str = "main") -> str:
    """One more commit on ``branch`` of ``<root>/<repo>.git``; its SHA."""
    return commit_files(root / f"{repo}.git", branch, files, message="bench: change")


def fake_sha(index: int, salt: str = "") -> str:
    """A distinct 40-hex commit id, for systems that never fetch the commit (buildbot's one step)."""
    return hashlib.sha1(f"{salt}:{index}".encode()).hexdigest()


def github_push(
    repo: str,
    sha: str,
    *,
    secret: str,
    branch: str = "main",
    before: str | None = None,
    delivery: str | None = None,
    html_base: str = "https://github.com",
) -> tuple[dict[str, str], bytes]:
    """A GitHub ``push`` delivery of one commit ``sha`` to ``repo`` (``owner/name``): headers and body.

    Signed as GitHub signs: ``X-Hub-Signature`` (sha1) and ``X-Hub-Signature-256`` over the raw body.
    ``before`` defaults to a made-up parent: an all-zero one would announce a new branch.
    """
    owner, name = repo.split("/", 1)
    before = before or hashlib.sha1(f"parent:{sha}".encode()).hexdigest()
    commit_entry = {
        "id": sha,
        "tree_id": sha,
        "distinct": True,
        "message": f"bench commit {sha[:8]}",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "url": f"{html_base}/{repo}/commit/{sha}",
        "author": {"name": "Bench", "email": "bench@kici.invalid", "username": "bench"},
        "committer": {"name": "Bench", "email": "bench@kici.invalid", "username": "bench"},
        "added": [],
        "removed": [],
        "modified": ["README.md"],
    }
    payload = {
        "ref": f"refs/heads/{branch}",
        "before": before,
        "after": sha,
        "created": False,
        "deleted": False,
        "forced": False,
        "compare": f"{html_base}/{repo}/compare/{before[:12]}...{sha[:12]}",
        "commits": [commit_entry],
        "head_commit": commit_entry,
        "repository": {
            "id": 5001,
            "name": name,
            "full_name": repo,
            "private": False,
            "owner": {"login": owner, "name": owner, "id": 1001, "type": "Organization"},
            "default_branch": branch,
            "html_url": f"{html_base}/{repo}",
            "clone_url": f"{html_base}/{repo}.git",
        },
        "pusher": {"name": "bench", "email": "bench@kici.invalid"},
        "sender": {"login": "bench", "id": 583231, "type": "User"},
    }
    body = json.dumps(payload).encode()
    headers = {
        "content-type": "application/json",
        "user-agent": "GitHub-Hookshot/bench",
        "x-github-event": "push",
        "x-github-delivery": delivery or str(uuid.uuid4()),
        "x-hub-signature": "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest(),
        "x-hub-signature-256": sign_body(body, secret),
    }
    return headers, body


@attrs.frozen
class BurstResult:
    """When a burst of POSTs started and was fully answered (``time.time()`` seconds) and the statuses."""

    first_post: float
    last_answer: float
    statuses: tuple[int, ...]

    @property
    def failures(self) -> int:
        return sum(1 for status in self.statuses if status >= 300)


async def post_burst(
    client: httpx.AsyncClient,
    url: str,
    deliveries: Sequence[tuple[Mapping[str, str], bytes]],
    *,
    concurrency: int = 8,
) -> BurstResult:
    """POST every delivery to ``url`` as fast as the receiver answers, ``concurrency`` in flight.

    A bounded number in flight, like a forge's delivery workers, rather than all at once: the
    burst then measures the receiver's pace, not how many sockets loopback accepts in one go.
    """
    statuses = [0] * len(deliveries)
    pending = iter(enumerate(deliveries))

    async def worker() -> None:
        for index, (headers, body) in pending:
            response = await client.post(url, content=body, headers=dict(headers))
            statuses[index] = response.status_code

    first = time.time()
    async with trio.open_nursery() as nursery:
        for _ in range(max(1, concurrency)):
            nursery.start_soon(worker)
    return BurstResult(first, time.time(), tuple(statuses))
