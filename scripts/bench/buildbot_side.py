"""The buildbot side of ``vs-buildbot``: the same webhook -> step measurements on buildbot 4.

What a user who picked buildbot instead would run, set up the way its docs suggest for GitHub:

* a throwaway venv ``<tmp>/kici-bench-buildbot/venv`` with ``buildbot``, ``buildbot-worker`` and
  ``buildbot-www`` 4.3.0 (twisted, sqlalchemy, alembic, autobahn... come as their dependencies).
  ``buildbot-www`` is needed although no UI is used: buildbot 4 refuses to start its web service
  without the base UI plugin, and the change hook lives in that service. It is installed once and
  reused by later runs;
* a master (SQLite state, the default) with the GitHub change hook at ``/change_hook/github``
  (``strict``: a push must carry a valid ``X-Hub-Signature``, which buildbot 4.3 checks as HMAC-SHA1),
  a ``SingleBranchScheduler`` on ``main`` with ``treeStableTimer=None`` (a build per change at once),
  one builder whose only step is a ``ShellCommand`` writing the wall-clock time it started to
  ``stamps/<revision>`` (the same command as kici's step, :data:`_common.STAMP_SCRIPT`), and
  ``collapseRequests=False`` so every push yields its own build, as every kici push yields a job;
* two workers on loopback; each runs one build of the builder at a time.

Measured (all in ``time.time()`` seconds, the clock the step stamps with):

* latency: a signed push POSTed, then the step's stamp minus the moment before the POST; one
  warm-up build first (not counted), then ``runs`` builds one after the other, each waited for until
  buildbot reports it complete;
* throughput: ``burst`` pushes with distinct commit ids POSTed 8 at a time; builds/s from the first
  POST to the moment buildbot reports the last of them complete.

Every process runs in the foreground (``--nodaemon``) as our child and stops with SIGTERM; the run
directory is deleted afterwards and no ``twistd`` is left behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import attrs
import httpx
import trio
from _common import (
    STAMP_SCRIPT,
    BurstResult,
    emit,
    fake_sha,
    free_port,
    github_push,
    kill_group,
    latency_figures,
    machine,
    post_burst,
    processes_mentioning,
    progress,
    spawn,
    stop_process,
)

BUILDBOT_HOME: Final = Path(tempfile.gettempdir()) / "kici-bench-buildbot"
VENV: Final = BUILDBOT_HOME / "venv"
VERSION: Final = "4.3.0"
PACKAGES: Final = (f"buildbot=={VERSION}", f"buildbot-worker=={VERSION}", f"buildbot-www=={VERSION}")
SECRET: Final = "bench-webhook-secret"
REPO: Final = "acme/app"
WORKERS: Final = ("w1", "w2")
BURST_CONCURRENCY: Final = 8
START_TIMEOUT_S: Final = 120.0
BUILD_TIMEOUT_S: Final = 60.0
POLL_S: Final = 0.005
API_POLL_S: Final = 0.05
BURST_POLL_S: Final = 0.1

MASTER_CFG: Final = """\
# Written by kici's scripts/bench/buildbot_side.py: the buildbot equivalent of kici's one-step job.
from buildbot.plugins import schedulers, steps, util, worker

c = BuildmasterConfig = {{}}
c['title'] = 'kici-bench'
c['buildbotURL'] = 'http://127.0.0.1:{www_port}/'
c['buildbotNetUsageData'] = None
c['db'] = {{'db_url': 'sqlite:///state.sqlite'}}
c['protocols'] = {{'pb': {{'port': 'tcp:{pb_port}:interface=127.0.0.1'}}}}
c['workers'] = [{workers}]
c['change_source'] = []
c['collapseRequests'] = False
c['schedulers'] = [
    schedulers.SingleBranchScheduler(
        name='push',
        change_filter=util.ChangeFilter(branch='main'),
        treeStableTimer=None,
        builderNames=['bench'],
    )
]
factory = util.BuildFactory()
factory.addStep(
    steps.ShellCommand(
        name='stamp',
        command=['python3', '-c', {stamp_script!r}, util.Interpolate({stamp_path!r})],
    )
)
c['builders'] = [
    util.BuilderConfig(name='bench', workernames={worker_names!r}, factory=factory, collapseRequests=False)
]
c['www'] = {{
    'port': 'tcp:{www_port}:interface=127.0.0.1',
    'plugins': {{}},
    'change_hook_dialects': {{'github': {{'secret': {secret!r}, 'strict': True}}}},
}}
"""


def _bin(name: str) -> str:
    return str(VENV / "bin" / name)


def _installed() -> bool:
    probe = "import buildbot, buildbot_worker, buildbot_www; print(buildbot.version, buildbot_worker.version)"
    done = subprocess.run([_bin("python"), "-c", probe], capture_output=True, text=True, check=False)
    return done.returncode == 0 and done.stdout.split() == [VERSION, VERSION]


def ensure_venv() -> None:
    """Create the throwaway venv and install buildbot into it, unless a previous run already did."""
    if (VENV / "bin" / "python").exists() and _installed():
        return
    progress(f"installing {', '.join(PACKAGES)} into {VENV}")
    BUILDBOT_HOME.mkdir(parents=True, exist_ok=True)
    subprocess.run(["python3", "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [_bin("python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PACKAGES],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    if not _installed():
        raise RuntimeError(f"buildbot {VERSION} did not install into {VENV}")


def _quiet_run(argv: list[str], cwd: Path) -> None:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}")


@attrs.define
class BuildbotCluster:
    """A master and its workers under ``home``; see the module docstring."""

    home: Path
    www_port: int
    pb_port: int
    master: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = attrs.field(factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.www_port}"

    @property
    def hook_url(self) -> str:
        return f"{self.url}/change_hook/github"

    @property
    def stamps(self) -> Path:
        return self.home / "stamps"

    def create(self) -> None:
        self.stamps.mkdir(parents=True)
        _quiet_run([_bin("buildbot"), "create-master", "-q", "-r", "master"], cwd=self.home)
        workers = ", ".join(f"worker.Worker({name!r}, {name + '-pass'!r})" for name in WORKERS)
        (self.home / "master" / "master.cfg").write_text(
            MASTER_CFG.format(
                www_port=self.www_port,
                pb_port=self.pb_port,
                workers=workers,
                worker_names=list(WORKERS),
                stamp_script=STAMP_SCRIPT,
                stamp_path=f"{self.stamps}/%(src::revision)s",
                secret=SECRET,
            )
        )
        _quiet_run([_bin("buildbot"), "checkconfig", "master"], cwd=self.home)
        for name in WORKERS:
            _quiet_run(
                [
                    _bin("buildbot-worker"),
                    "create-worker",
                    "-q",
                    "-r",
                    name,
                    f"127.0.0.1:{self.pb_port}",
                    name,
                    f"{name}-pass",
                ],
                cwd=self.home,
            )

    def start(self) -> None:
        self.master = spawn(
            [_bin("buildbot"), "start", "--nodaemon", "master"],
            log_path=self.home / "master.out",
            cwd=self.home,
        )
        self._wait(lambda: self._api("/api/v2/workers") is not None, "the master's web service")
        for name in WORKERS:
            self.workers.append(
                spawn(
                    [_bin("buildbot-worker"), "start", "--nodaemon", name],
                    log_path=self.home / f"{name}.out",
                    cwd=self.home,
                )
            )
        self._wait(lambda: self.connected_workers() == len(WORKERS), "both workers to attach")

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            for process in [self.master, *self.workers]:
                if process is not None and process.poll() is not None:
                    raise RuntimeError(
                        f"a buildbot process exited while waiting for {what}:\n{self.log_tail()}"
                    )
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}:\n{self.log_tail()}")
            time.sleep(0.1)

    def _api(self, path: str) -> Any:
        try:
            response = httpx.get(self.url + path, timeout=5)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def connected_workers(self) -> int:
        found = self._api("/api/v2/workers")
        return 0 if found is None else sum(1 for w in found["workers"] if w.get("connected_to"))

    def log_tail(self, lines: int = 30) -> str:
        log = self.home / "master" / "twistd.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""

    def stop(self) -> None:
        """Workers first (their running step is interrupted), then the master; no process survives."""
        for process in self.workers:
            stop_process(process)
        if self.master is not None:
            stop_process(self.master)
        for pid in processes_mentioning(str(self.home)):
            progress(f"stray buildbot process {pid} left behind; killing its group")
            kill_group(pid)


async def completed_builds(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get(
        "/api/v2/builds",
        params=[("complete", "true"), ("field", "buildid"), ("field", "complete"), ("field", "results")],
    )
    response.raise_for_status()
    return list(response.json()["builds"])


async def wait_completed(client: httpx.AsyncClient, count: int) -> list[dict[str, Any]]:
    """The completed builds, once there are at least ``count`` (callers bound the wait)."""
    while True:
        builds = await completed_builds(client)
        if len(builds) >= count:
            return builds
        await trio.sleep(API_POLL_S)


async def wait_stamp(path: trio.Path) -> float:
    """The time a build's step recorded, polling the file (not the master, which is being measured)."""
    while True:
        text = await path.read_text() if await path.exists() else ""
        if text:
            return float(text)
        await trio.sleep(POLL_S)


async def wait_stamp_count(stamps: Path, count: int) -> None:
    """Wait until ``count`` steps have stamped; one directory listing per poll keeps this cheap."""
    while True:
        if await trio.to_thread.run_sync(lambda: len(os.listdir(stamps))) >= count:
            return
        await trio.sleep(BURST_POLL_S)


async def measure_latency(cluster: BuildbotCluster, client: httpx.AsyncClient, runs: int) -> list[float]:
    stamps = trio.Path(cluster.stamps)
    latencies = []
    for index in range(runs + 1):
        sha = fake_sha(index, "latency")
        headers, body = github_push(REPO, sha, secret=SECRET)
        posted = time.time()
        response = await client.post("/change_hook/github", content=body, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"the change hook answered {response.status_code}: {response.text}")
        with trio.fail_after(BUILD_TIMEOUT_S):
            stamp = await wait_stamp(stamps / sha)
            await wait_completed(client, index + 1)
        if index > 0:
            latencies.append(stamp - posted)
            progress(f"latency run {index}/{runs}: {(stamp - posted) * 1000:.0f} ms")
    return latencies


async def measure_burst(
    cluster: BuildbotCluster, client: httpx.AsyncClient, burst: int, before: int
) -> tuple[BurstResult, float, int]:
    """The burst, when buildbot reported its last build complete, and how many of them failed."""
    shas = [fake_sha(index, "burst") for index in range(burst)]
    deliveries = [github_push(REPO, sha, secret=SECRET) for sha in shas]
    result = await post_burst(client, cluster.hook_url, deliveries, concurrency=BURST_CONCURRENCY)
    if result.failures:
        raise RuntimeError(f"{result.failures} of {burst} webhooks were refused")
    progress(
        f"{burst} webhooks accepted in {result.last_answer - result.first_post:.1f}s; waiting for builds"
    )
    with trio.fail_after(BUILD_TIMEOUT_S + burst * 5):
        await wait_stamp_count(cluster.stamps, before + burst)
        builds = await wait_completed(client, before + burst)
    done = time.time()
    failed = sum(1 for build in builds if build.get("results") not in (0, None))
    return result, done, failed


async def _measure(cluster: BuildbotCluster, runs: int, burst: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=cluster.url, timeout=BUILD_TIMEOUT_S) as client:
        latencies = await measure_latency(cluster, client, runs)
        result, done, failed = await measure_burst(cluster, client, burst, runs + 1)
    elapsed = done - result.first_post
    return {
        "latency_ms": latency_figures(latencies),
        "burst_s": round(elapsed, 2),
        "throughput_per_s": round(burst / elapsed, 2),
        "failed_builds": failed,
    }


def measure_buildbot(runs: int = 30, burst: int = 200) -> dict[str, Any]:
    """Install (once), start, measure and stop buildbot; the figures as a dict (see the module docstring)."""
    if runs < 1 or burst < 1:
        raise ValueError("runs and burst must be positive")
    ensure_venv()
    home = Path(tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=BUILDBOT_HOME))
    cluster = BuildbotCluster(home, www_port=free_port(), pb_port=free_port())
    try:
        cluster.create()
        progress(f"starting a buildbot master (www :{cluster.www_port}) and {len(WORKERS)} workers")
        cluster.start()
        figures = trio.run(_measure, cluster, runs, burst)
    finally:
        cluster.stop()
        shutil.rmtree(home, ignore_errors=True)
    return {
        "bench": "buildbot",
        "version": VERSION,
        "workers": len(WORKERS),
        "runs": runs,
        "burst": burst,
        **figures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30, help="sequential latency runs (after one warm-up)")
    parser.add_argument("--burst", type=int, default=200, help="webhooks in the throughput burst")
    args = parser.parse_args()
    try:
        figures = measure_buildbot(args.runs, args.burst)
    except (RuntimeError, TimeoutError, ValueError, trio.TooSlowError) as exc:
        progress(f"buildbot benchmark failed: {exc}")
        sys.exit(1)
    emit({**figures, "machine": machine()})


if __name__ == "__main__":
    main()
