"""The real stack of the agent end-to-end tests: one orchestrator process, real agent processes, a git server.

Shared by ``test_agent_orchestrator.py`` (no tests here). What it builds:

* a project: ``.kici/workflows/ci.py`` (:data:`WORKFLOW`, one workflow per scenario) compiled by
  ``kici.services.compiler`` into ``.kici/kici.lock.json``, both committed to a bare repository. Every
  workflow triggers on a push to its own branch, and every branch points at the same commit, so a push
  webhook for branch ``steps`` starts workflow ``steps`` and nothing else;
* a ``git http-backend`` server on loopback that demands the clone token (:data:`CLONE_TOKEN`), which the
  orchestrator reads from its environment (a universal-git source with ``credentialRef``, GitHub-shaped
  ``github-repo`` preset) both to fetch the lock and to hand it to agents in ``job.dispatch``;
* ``kici-orchestrator`` with its embedded PostgreSQL in a scratch data dir, on a fixed loopback port so
  a restarted process comes back where the agents reconnect; timers shortened through its config
  (``agentMaxReconnectDelayMs`` 3 s, so the recovery grace is 6 s);
* ``kici-agent`` processes under bubblewrap (the default sandbox), each with its own YAML config, data
  dir, labels and a 300 ms reconnect cap.

Everything is driven from outside: webhooks, the REST API, signals, files in a job's workspace (the only
host directory a sandboxed step shares) and the processes' JSON log lines.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import attrs
import httpx
import trio

from kici.adapters.postgres import embedded
from kici.domain.webhooks.verification import sign_body
from kici.services.compiler import compile_project, write_lock
from kici.testing.git_http import GitHttpServer, commit_files, create_repo, git_env

GUARD: Final = 60
REPO: Final = "acme/app"
ADMIN: Final = "kadm_e2e-agent-stack-admin"
AUTH: Final = {"authorization": f"Bearer {ADMIN}"}
WEBHOOK_SECRET: Final = "e2e-agent-stack-webhook-secret"
CLONE_TOKEN: Final = "ghs_" + hashlib.sha256(b"kici-e2e-clone").hexdigest()[:36]
CLONE_TOKEN_ENV: Final = "E2E_CLONE_TOKEN"
ORCH_MAX_RECONNECT_MS: Final = 3_000
AGENT_MAX_RECONNECT_MS: Final = 300
TERMINAL: Final = frozenset({"success", "failed", "cancelled", "skipped", "timed_out_stale"})
PROBE_KEY: Final = "kiciE2eProbe"
LABEL_A: Final = "e2e-a"
LABEL_B: Final = "e2e-b"
LABEL_PROXIED: Final = "e2e-proxied"
LABEL_DOOMED: Final = "e2e-doomed"

WORKFLOW: Final = """
import base64
import hashlib
import time

from kici.sdk import job, push, step, workflow

A = "e2e-a"
B = "e2e-b"
TOKEN = "ghs_" + hashlib.sha256(b"kici-e2e-clone").hexdigest()[:36]


def hold(ctx, name):
    flag = ctx.workspace / name
    while not flag.exists():
        time.sleep(0.02)


@step("compile", outputs={"version": str})
def compile_(ctx):
    for i in range(3):
        print(f"compile line {i}")
    ctx.set_env("GREETING", "hello-from-compile")
    return {"version": "1.2.3"}


def package(ctx):
    ctx.sh('echo "greeting=$GREETING"')
    print(f"packaging version {compile_.result.version}")


steps = workflow("steps", on=push(branches=["steps"]), jobs=[
    job("build", runs_on=A, steps=[
        compile_, step("package", package), step("report", lambda ctx: print("report done")),
    ]),
])

failing = workflow("failing", on=push(branches=["failing"]), jobs=[
    job("build", runs_on=A, steps=[
        step("ok", lambda ctx: print("fine so far")),
        step("bad", lambda ctx: ctx.sh("echo about to fail; exit 3")),
        step("never", lambda ctx: print("never printed")),
    ]),
])


def show(ctx):
    print(f"flavor={ctx.matrix.flavor}")


matrix = workflow("matrix", on=push(branches=["matrix"]), jobs=[
    job("test", runs_on=A, matrix={"flavor": ["red", "green", "blue"]}, steps=[step("show", show)]),
])


@step("make", outputs={"artifact": str})
def make(ctx):
    print("made pkg-42")
    return {"artifact": "pkg-42"}


produce = job("produce", runs_on=A, steps=[make])


def use(ctx):
    got = ctx.needs["produce"].result["make"]["artifact"]
    print(f"consumed {got} from an upstream that ended {ctx.needs['produce'].status}")
    return {"got": got}


needs = workflow("needs", on=push(branches=["needs"]), jobs=[
    produce, job("consume", runs_on=B, needs=[produce], steps=[step("use", use)]),
])


def through_an_outage(ctx):
    print("before the outage")
    hold(ctx, "release")
    for i in range(3):
        print(f"during the outage {i}")
    ctx.sh("echo shell line during the outage")


outage_proxy = workflow("outage-proxy", on=push(branches=["outage-proxy"]), jobs=[
    job("ride", runs_on="e2e-proxied", steps=[step("through", through_an_outage)]),
])

outage_restart = workflow("outage-restart", on=push(branches=["outage-restart"]), jobs=[
    job("ride", runs_on=A, steps=[step("through", through_an_outage)]),
])


def forever(ctx):
    print("doomed step started")
    ctx.sh("sleep 97.25")


doomed = workflow("doomed", on=push(branches=["doomed"]), jobs=[
    job("orphan", runs_on="e2e-doomed", steps=[step("wait", forever)]),
])


def leak(ctx):
    print(f"plain {TOKEN}")
    print("b64 " + base64.b64encode(TOKEN.encode()).decode())
    ctx.sh("echo shell " + TOKEN)
    return {"echo": TOKEN}


def leak_error(ctx):
    raise RuntimeError("boom " + TOKEN)


secret = workflow("secret", on=push(branches=["secret"]), jobs=[
    job("leak", runs_on=A, steps=[step("leak", leak), step("leak-error", leak_error)]),
])


def peek(ctx):
    probe = (ctx.raw_payload or {}).get("kiciE2eProbe") or {}
    for path in probe.get("paths", []):
        ctx.sh(f'cat "{path}" || echo "unreadable: {path}"', check=False)
    ctx.sh("echo uid=$(id -u)", check=False)
    ctx.sh("echo '--- env'; env | sort", check=False)
    ctx.sh("echo '--- environ of every visible process'", check=False)
    ctx.sh("cat /proc/[0-9]*/environ | tr '\\\\0' '\\\\n'", check=False)


def marathon(ctx):
    print("marathon started")
    ctx.sh("sleep 13")
    print("still alive after 13 s")


long_step = workflow("long-step", on=push(branches=["long-step"]), jobs=[
    job("marathon", runs_on=B, steps=[step("run", marathon)]),
])

isolation = workflow("isolation", on=push(branches=["isolation"]), jobs=[
    job("peek", runs_on=A, steps=[step("peek", peek)]),
])
"""

WORKFLOWS: Final = (
    "steps",
    "failing",
    "matrix",
    "needs",
    "outage-proxy",
    "outage-restart",
    "doomed",
    "secret",
    "isolation",
    "long-step",
)


def command(script: str, module: str) -> list[str]:
    """The console script next to this interpreter, else ``python -m module``."""
    path = Path(sys.executable).with_name(script)
    return [str(path)] if path.exists() else [sys.executable, "-m", module]


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KICI_")}
    env.update(extra or {})
    return env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# --- the project --------------------------------------------------------------------------------


@attrs.frozen
class Project:
    served: Path
    sha: str


def build_project(base: Path) -> Project:
    """Compile :data:`WORKFLOW`, commit it with its lock on ``main`` and point a branch per workflow at it."""
    source = base / "src"
    kici_dir = source / ".kici"
    (kici_dir / "workflows").mkdir(parents=True)
    text = textwrap.dedent(WORKFLOW)
    (kici_dir / "workflows" / "ci.py").write_text(text, encoding="utf-8")
    result = compile_project(kici_dir, source)
    if not result.ok or result.lock is None:
        raise RuntimeError(f"the e2e workflow does not compile: {[d.message for d in result.diagnostics]}")
    lock_path = write_lock(kici_dir, result.lock)
    served = base / "served"
    bare = create_repo(served, REPO)
    sha = commit_files(
        bare, "main", {".kici/workflows/ci.py": text, ".kici/kici.lock.json": lock_path.read_text()}, "ci"
    )
    for branch in WORKFLOWS:
        subprocess.run(
            ["git", "--git-dir", str(bare), "update-ref", f"refs/heads/{branch}", sha],
            check=True,
            env=git_env(),
            capture_output=True,
        )
    return Project(served, sha)


# --- processes ----------------------------------------------------------------------------------


@attrs.define
class Service:
    """A child process writing JSON log lines to a file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                out.append(entry)
        return out

    def check_running(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited {self.process.returncode}:\n{self.text()}")

    def found(self, message: str, after: int = 0) -> dict[str, Any] | None:
        """The first line after line ``after`` with this message; None (while running) if there is none."""
        hits = [entry for entry in self.lines()[after:] if entry.get("message") == message]
        if hits:
            return hits[0]
        self.check_running()
        return None

    def wait_for_log_sync(self, message: str, after: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + GUARD
        while time.monotonic() < deadline:
            entry = self.found(message, after)
            if entry is not None:
                return entry
            time.sleep(0.05)
        raise AssertionError(f"{self.name} never logged {message!r}:\n{self.text()}")

    async def wait_for_log(self, message: str, after: int = 0) -> dict[str, Any]:
        with trio.fail_after(GUARD):
            while True:
                entry = self.found(message, after)
                if entry is not None:
                    return entry
                await trio.sleep(0.05)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(GUARD)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def spawn(name: str, argv: list[str], log_path: Path, env: Mapping[str, str]) -> Service:
    with log_path.open("ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=dict(env))
    return Service(name, process, log_path)


@attrs.define
class Agent:
    """A ``kici-agent`` process, its config file and data dir."""

    agent_id: str
    service: Service
    config_path: Path
    data_dir: Path

    def job_dirs(self) -> list[Path]:
        jobs = self.data_dir / "work" / "jobs"
        return sorted(path for path in jobs.iterdir() if path.is_dir()) if jobs.is_dir() else []

    async def workspace(self, api: Api, run_id: str) -> Path:
        """The workspace of the one job of ``run_id`` this agent runs (its only directory shared with the
        sandbox); job directories without a checkout are spare ones a warm runner waits in."""
        with trio.fail_after(GUARD):
            while True:
                checkouts = [d / "workspace" for d in self.job_dirs() if (d / "workspace" / ".kici").is_dir()]
                if len(checkouts) == 1:
                    return checkouts[0]
                run = await api.run(run_id)
                if run["status"] in TERMINAL:
                    raise AssertionError(f"the run ended before its workspace was seen: {run}")
                self.service.check_running()
                await trio.sleep(0.02)

    @staticmethod
    async def wait_removed(workspace: Path) -> None:
        """The job's directory is gone: the runner reported and cleanup (phase 8) ran."""
        with trio.fail_after(GUARD):
            while workspace.parent.exists():  # noqa: ASYNC110 - a directory has no change event to wait on
                await trio.sleep(0.02)


# --- the stack ----------------------------------------------------------------------------------


@attrs.define
class Stack:
    """The orchestrator site (fixed port, data dir, config) and the agents started against it."""

    home: Path
    git: GitHttpServer
    project: Project
    port: int
    orchestrators: list[Service] = attrs.field(factory=list)
    agents: list[Agent] = attrs.field(factory=list)
    token: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def data_dir(self) -> Path:
        return self.home / "orchestrator-data"

    @property
    def config_path(self) -> Path:
        return self.home / "orchestrator.yaml"

    @property
    def orchestrator(self) -> Service:
        return self.orchestrators[-1]

    def orchestrator_env(self) -> dict[str, str]:
        return base_env({"KICI_BOOTSTRAP_ADMIN_TOKEN": ADMIN, CLONE_TOKEN_ENV: CLONE_TOKEN})

    def write_config(self) -> None:
        config = {
            "instance": {"mode": "independent"},
            "server": {"host": "127.0.0.1", "port": self.port},
            "logging": {"format": "json"},
            "dataDir": str(self.data_dir),
            "agentMaxReconnectDelayMs": ORCH_MAX_RECONNECT_MS,
            "sources": [
                {
                    "name": "app",
                    "provider": "universal-git",
                    "secret": WEBHOOK_SECRET,
                    "gitConfig": {
                        "preset": "github-repo",
                        "gitUrlTemplate": f"{self.git.base_url}/{{repo}}.git",
                        "credentialRef": {"store": "env", "key": CLONE_TOKEN_ENV},
                        "credentialType": "pat",
                    },
                }
            ],
        }
        self.config_path.write_text(json.dumps(config), encoding="utf-8")

    def launch_orchestrator(self) -> Service:
        """Start the process (not waiting for it); the same data dir and port every time."""
        index = len(self.orchestrators)
        service = spawn(
            f"orchestrator-{index}",
            [
                *command("kici-orchestrator", "kici.services.orchestrator.main"),
                "--config",
                str(self.config_path),
            ],
            self.home / f"orchestrator-{index}.log",
            self.orchestrator_env(),
        )
        self.orchestrators.append(service)
        return service

    def create_token(self) -> str:
        created = subprocess.run(
            [
                *command("kici-orchestrator", "kici.services.orchestrator.main"),
                "agent-token",
                "create",
                "--config",
                str(self.config_path),
            ],
            capture_output=True,
            env=self.orchestrator_env(),
            check=False,
            timeout=GUARD,
        )
        if created.returncode != 0:
            raise AssertionError(f"agent-token create failed: {created.stderr.decode()}")
        return created.stdout.decode().strip()

    def launch_agent(
        self,
        agent_id: str,
        labels: list[str],
        *,
        concurrency: int = 1,
        url: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Agent:
        """Start ``kici-agent`` with a YAML config of its own (not waiting for its registration)."""
        home = self.home / agent_id
        home.mkdir(parents=True, exist_ok=True)
        config_path = home / "agent.yaml"
        data_dir = home / "data"
        config_path.write_text(
            f"orchestratorUrl: {url or self.ws_url}\n"
            f"agentToken: {self.token}\n"
            f"agentId: {agent_id}\n"
            f"dataDir: {data_dir}\n"
            f"labels: [{', '.join(labels)}]\n"
            f"maxConcurrentJobs: {concurrency}\n"
            "jobHeartbeatIntervalMs: 1000\n"
            "logging:\n  format: json\n"
            f"link:\n  heartbeatIntervalMs: 1000\n  maxReconnectDelayMs: {AGENT_MAX_RECONNECT_MS}\n",
            encoding="utf-8",
        )
        service = spawn(
            agent_id,
            [*command("kici-agent", "kici.services.agent"), "--config", str(config_path)],
            home / "agent.log",
            base_env(env),
        )
        agent = Agent(agent_id, service, config_path, data_dir)
        self.agents.append(agent)
        return agent

    def close(self) -> None:
        for agent in self.agents:
            agent.service.stop(signal.SIGKILL)
        for service in self.orchestrators:
            service.stop(signal.SIGKILL)
        embedded.stop(embedded.pgdata_for(self.data_dir))


@contextlib.contextmanager
def running_stack(home: Path) -> Iterator[Stack]:
    """The git server, the orchestrator (up and listening) and an agent token; agents are added by callers."""
    project = build_project(home / "project")
    with GitHttpServer(project.served, credentials=("x-access-token", CLONE_TOKEN)) as git:
        stack = Stack(home, git, project, free_port())
        try:
            stack.write_config()
            stack.launch_orchestrator().wait_for_log_sync("orchestrator listening")
            stack.token = stack.create_token()
            yield stack
        finally:
            stack.close()


# --- driving it: webhooks and the REST API ------------------------------------------------------


def push_payload(sha: str, branch: str, probe: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A GitHub-shaped push of ``sha`` to ``branch`` of :data:`REPO`."""
    payload: dict[str, Any] = {
        "ref": f"refs/heads/{branch}",
        "before": "0" * 40,
        "after": sha,
        "created": False,
        "deleted": False,
        "forced": False,
        "commits": [{"id": sha, "added": [], "removed": [], "modified": [".kici/workflows/ci.py"]}],
        "head_commit": {"id": sha, "added": [], "removed": [], "modified": [".kici/workflows/ci.py"]},
        "repository": {"id": 4242, "full_name": REPO, "name": "app", "owner": {"login": "acme"}},
        "pusher": {"name": "e2e"},
        "sender": {"login": "e2e", "id": 7},
    }
    if probe is not None:
        payload[PROBE_KEY] = dict(probe)
    return payload


class Api:
    """The orchestrator's HTTP surface as the tests use it."""

    def __init__(self, client: httpx.AsyncClient, stack: Stack) -> None:
        self.client = client
        self.stack = stack

    async def push(self, workflow: str, probe: Mapping[str, Any] | None = None) -> str:
        """Push the project's commit to branch ``workflow``: exactly one run of that workflow starts."""
        body = json.dumps(push_payload(self.stack.project.sha, workflow, probe)).encode()
        headers = {
            "x-github-event": "push",
            "x-github-delivery": f"e2e-{uuid.uuid4()}",
            "content-type": "application/json",
            "x-hub-signature-256": sign_body(body, WEBHOOK_SECRET),
        }
        response = await self.client.post("/webhooks/universal-git/app", content=body, headers=headers)
        assert response.status_code == 202, response.text
        (run_id,) = response.json()["runIds"]
        return str(run_id)

    async def run(self, run_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/v1/runs/{run_id}", headers=AUTH)
        assert response.status_code == 200, response.text
        shown: dict[str, Any] = response.json()
        return shown

    async def job(self, run_id: str, name: str) -> dict[str, Any]:
        jobs: dict[str, dict[str, Any]] = {job["name"]: job for job in (await self.run(run_id))["jobs"]}
        return jobs[name]

    async def wait_run(self, run_id: str) -> dict[str, Any]:
        """The run once its status is terminal."""
        with trio.fail_after(GUARD):
            while True:
                shown = await self.run(run_id)
                if shown["status"] in TERMINAL:
                    return shown
                await trio.sleep(0.05)

    async def wait_job(self, run_id: str, name: str, status: str) -> dict[str, Any]:
        with trio.fail_after(GUARD):
            while True:
                job = await self.job(run_id, name)
                if job["status"] == status:
                    return job
                await trio.sleep(0.05)

    async def chunks(self, run_id: str, job: str) -> list[dict[str, Any]]:
        """Every stored log chunk of ``job``, all pages."""
        out: list[dict[str, Any]] = []
        cursor = 0
        while True:
            response = await self.client.get(
                f"/api/v1/runs/{run_id}/jobs/{job}/logs", params={"cursor": cursor}, headers=AUTH
            )
            assert response.status_code == 200, response.text
            page = response.json()
            out += page["chunks"]
            if not page["chunks"] or page["nextCursor"] in (None, cursor):
                return out
            cursor = page["nextCursor"]

    async def lines(self, run_id: str, job: str, step: int | None = None) -> list[str]:
        return [
            line
            for chunk in await self.chunks(run_id, job)
            if step is None or chunk["stepIndex"] == step
            for line in chunk["lines"]
        ]

    async def wait_line(self, run_id: str, job: str, text: str) -> list[str]:
        """The job's stored lines once one of them contains ``text``; the run must not end first."""
        with trio.move_on_after(GUARD):
            while True:
                lines = await self.lines(run_id, job)
                if any(text in line for line in lines):
                    return lines
                run = await self.run(run_id)
                if run["status"] in TERMINAL:
                    break
                await trio.sleep(0.05)
        run = await self.run(run_id)
        raise AssertionError(f"no line {text!r} in {job} of {run}; stored lines: {lines}")


__all__ = [
    "ADMIN",
    "AGENT_MAX_RECONNECT_MS",
    "AUTH",
    "CLONE_TOKEN",
    "GUARD",
    "LABEL_A",
    "LABEL_B",
    "LABEL_DOOMED",
    "LABEL_PROXIED",
    "PROBE_KEY",
    "Agent",
    "Api",
    "Project",
    "Service",
    "Stack",
    "build_project",
    "running_stack",
]
