"""``python -m kici.demo`` (what ``./scripts/demo`` runs): kici's main job, end to end, on loopback.

1. A temp root; the sample repository (:mod:`.sample`) compiled by kici and committed to a bare repo
   served over smart HTTP on loopback.
2. The stack (:mod:`.stack`): Platform, orchestrator in platform mode, agents in the bwrap sandbox.
3. One signed GitHub push webhook to the Platform, relayed to the orchestrator, verified there, matched
   against the lock file and dispatched to the agents.
4. Live progress until the run ends, the result table, and where every log is (each job's log is
   saved under ``<root>/logs/jobs`` before the stack goes away); the Platform's dashboard API must
   show the same run, which proves the telemetry came back up.
5. The ordered shutdown, the leak check, the elapsed time per phase.

Exit codes: 0 the run succeeded, 1 it did not, 2 the demo itself could not complete (a tier did not
start, the webhook was refused, the run did not end within ``--timeout``, an unexpected error, or
the shutdown left something behind: the demo promises a clean machine, so a leak is a failure even
after a green run), 130 interrupted by Ctrl-C (the stack is shut down in order first; a further
Ctrl-C while it stops only says so).

Choices where the issue is silent: the root's PostgreSQL data and the agents' work dirs are deleted
after a clean shutdown, the logs, configs and the sample repository are kept (their paths are
printed); ``--keep-running`` keeps the stack up after the run, with its URLs and tokens printed,
until Ctrl-C.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import attrs
import click
import httpx
import trio
from rich.console import Console
from rich.live import Live
from rich.text import Text

from kici.demo import sample
from kici.demo.progress import (
    LogPlaces,
    StatusTracker,
    change_line,
    format_duration,
    job_lines,
    live_table,
    phases_table,
    result_view,
    run_duration_s,
    run_terminal,
)
from kici.demo.stack import Phases, Sandbox, ShutdownReport, Stack, StackError, StackOptions, open_stack
from kici.testing.git_http import GitHttpServer, commit_files, create_repo

EXIT_SUCCESS: Final = 0
EXIT_RUN_FAILED: Final = 1
EXIT_DEMO_ERROR: Final = 2
EXIT_INTERRUPTED: Final = 130
POLL_S: Final = 0.25
HTTP_TIMEOUT_S: Final = 30.0
LOG_PAGE: Final = 1000
TELEMETRY_WAIT_S: Final = 15.0
RUN_APPEARS_S: Final = 30.0
DEFAULT_RUN_TIMEOUT_S: Final = 300.0
PIPE_WIDTH: Final = 160


class DemoError(RuntimeError):
    """The demo could not complete (exit 2); the message says what went wrong."""


@attrs.frozen(kw_only=True)
class DemoOptions:
    agents: int = 1
    failing: bool = False
    sandbox: Sandbox = Sandbox.AUTO
    root: Path | None = None
    keep_running: bool = False
    run_timeout_s: float = DEFAULT_RUN_TIMEOUT_S


@attrs.define
class Outcome:
    code: int = EXIT_DEMO_ERROR
    interrupted: bool = False
    run_finished: bool = False
    report: ShutdownReport | None = None


def now() -> datetime:
    return datetime.now(UTC)


def leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, in order."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


def make_root(wanted: Path | None) -> Path:
    """``wanted`` (created, must be empty) or a fresh temp dir."""
    if wanted is None:
        return Path(tempfile.mkdtemp(prefix="kici-demo-")).resolve()
    wanted.mkdir(parents=True, exist_ok=True)
    if any(wanted.iterdir()):
        raise DemoError(f"--root {wanted} is not empty")
    return wanted.resolve()


# --- the sample repository ----------------------------------------------------------------------


@attrs.frozen
class Repository:
    git_root: Path
    sha: str
    files: Mapping[str, str]


def create_sample(root: Path, *, failing: bool) -> Repository:
    files = sample.repository_files(failing=failing)
    git_root = root / "git"
    bare = create_repo(git_root, sample.REPO, default_branch=sample.BRANCH)
    sha = commit_files(bare, sample.BRANCH, files, message="Add the kici demo pipeline")
    return Repository(git_root, sha, files)


# --- talking to the stack -----------------------------------------------------------------------


async def push_webhook(client: httpx.AsyncClient, stack: Stack, repo: Repository, delivery_id: str) -> None:
    headers, body = sample.signed_push(
        repo.sha, repo.files, secret=stack.options.webhook_secret, delivery_id=delivery_id
    )
    answer = await client.post(stack.webhook_url(), content=body, headers=headers)
    if answer.status_code != 200:
        raise DemoError(f"the Platform answered the webhook {answer.status_code}: {answer.text}")


def admin_headers(stack: Stack) -> dict[str, str]:
    return {"authorization": f"Bearer {stack.admin_token}"}


async def find_run(client: httpx.AsyncClient, stack: Stack, delivery_id: str) -> str:
    """The id of the run the delivery created (the orchestrator may prefix the id with the key)."""
    with trio.move_on_after(RUN_APPEARS_S):
        while True:
            answer = await client.get(f"{stack.orchestrator_url}/api/v1/runs", headers=admin_headers(stack))
            answer.raise_for_status()
            for run in answer.json().get("runs", []):
                if str(run.get("deliveryId") or "").endswith(delivery_id):
                    return str(run["id"])
            await trio.sleep(POLL_S)
    raise DemoError(
        f"the push created no run within {RUN_APPEARS_S:.0f} s; see {stack.service('orchestrator').log_path}"
    )


async def get_run(client: httpx.AsyncClient, stack: Stack, run_id: str) -> dict[str, Any]:
    answer = await client.get(f"{stack.orchestrator_url}/api/v1/runs/{run_id}", headers=admin_headers(stack))
    answer.raise_for_status()
    data: dict[str, Any] = answer.json()
    return data


async def follow_run(
    client: httpx.AsyncClient, stack: Stack, run_id: str, console: Console
) -> dict[str, Any]:
    """Poll the run until it is terminal, drawing its jobs live (terminal) or as lines (otherwise)."""
    run = await get_run(client, stack, run_id)
    if console.is_terminal:
        with Live(live_table(run, now()), console=console, refresh_per_second=8) as live:
            while not run_terminal(run):
                await trio.sleep(POLL_S)
                run = await get_run(client, stack, run_id)
                live.update(live_table(run, now()))
        return run
    tracker = StatusTracker()
    while True:
        for line in tracker.changes(run):
            console.print(change_line(line, now()))
        if run_terminal(run):
            return run
        await trio.sleep(POLL_S)
        run = await get_run(client, stack, run_id)


def _file_name(ordinal: int, name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._]+", "-", name).strip("-")
    return f"{ordinal:02d}-{slug}.log"


async def save_job_logs(client: httpx.AsyncClient, stack: Stack, run: Mapping[str, Any]) -> dict[str, Path]:
    """Every job's log lines, read page by page from the orchestrator, into ``<root>/logs/jobs``."""
    out_dir = stack.logs_dir / "jobs"
    out_dir.mkdir(parents=True, exist_ok=True)
    saved: dict[str, Path] = {}
    for line in job_lines(run):
        cursor, lines = 0, []
        while True:
            answer = await client.get(
                f"{stack.orchestrator_url}/api/v1/runs/{run['id']}/jobs/{line.id}/logs",
                params={"cursor": cursor, "limit": LOG_PAGE},
                headers=admin_headers(stack),
            )
            answer.raise_for_status()
            page = answer.json()
            chunks = page.get("chunks", [])
            lines += [text for chunk in chunks for text in chunk.get("lines", [])]
            cursor = int(page.get("nextCursor") or cursor)
            if len(chunks) < LOG_PAGE:
                break
        path = out_dir / _file_name(line.ordinal, line.name)
        path.write_text("".join(f"{text}\n" for text in lines), encoding="utf-8")
        saved[line.id] = path
    return saved


async def platform_view(
    client: httpx.AsyncClient, stack: Stack, run_id: str, status: str
) -> dict[str, Any] | None:
    """The run as the Platform's dashboard API shows it, once its telemetry reached ``status``."""
    if stack.dashboard_token is None:
        return None
    headers = {"authorization": f"Bearer {stack.dashboard_token}"}
    with trio.move_on_after(TELEMETRY_WAIT_S):
        while True:
            answer = await client.get(f"{stack.platform_url}/api/v1/runs/{run_id}", headers=headers)
            if answer.status_code == 200 and answer.json().get("status") == status:
                data: dict[str, Any] = answer.json()
                return data
            await trio.sleep(POLL_S)
    return None


# --- printing -----------------------------------------------------------------------------------


def print_stack(console: Console, stack: Stack) -> None:
    for warning in stack.warnings:
        console.print(Text(f"warning: {warning}", style="yellow"))
    console.print(Text("Stack up:", style="bold"))
    console.print(f"  platform      {stack.platform_url}  (webhooks: {stack.webhook_url()})")
    console.print(f"  orchestrator  {stack.orchestrator_url}  (platform mode)")
    for agent in stack.agents:
        console.print(f"  {agent.name:<13} {stack.sandbox.value} sandbox, pid {agent.process.pid}")


def print_platform(console: Console, view: Mapping[str, Any] | None, status: str) -> None:
    if view is None:
        console.print(
            Text(f"warning: the Platform's dashboard did not show the run as {status}", style="yellow")
        )
        return
    jobs = view.get("jobs") or []
    console.print(
        Text(
            f"Platform dashboard API: run {view.get('status')} with {len(jobs)} jobs "
            "(telemetry relayed by the orchestrator)",
            style="dim",
        )
    )


def print_shutdown(console: Console, report: ShutdownReport) -> None:
    if report.clean:
        codes = ", ".join(f"{name} {code}" for name, code in report.exit_codes.items())
        console.print(
            Text(f"Shut down cleanly (exit codes: {codes}); no PostgreSQL or process left.", style="dim")
        )
        return
    for problem in report.problems():
        console.print(Text(f"shutdown: {problem}", style="red"))


def print_keep_running(console: Console, stack: Stack) -> None:
    console.print(Text("The stack stays up until Ctrl-C:", style="bold"))
    console.print(f"  orchestrator admin token  {stack.admin_token}")
    if stack.dashboard_token:
        console.print(f"  Platform dashboard token  {stack.dashboard_token}")


def remove_data(root: Path) -> None:
    """The PostgreSQL data dirs and agent work dirs: large, and useless once the stack is gone."""
    for data in sorted(root.glob("*/data")):
        shutil.rmtree(data, ignore_errors=True)


# --- the demo -----------------------------------------------------------------------------------


async def drive(
    stack: Stack,
    repo: Repository,
    options: DemoOptions,
    console: Console,
    *,
    phases: Phases,
    outcome: Outcome,
) -> None:
    """Push, follow, collect and print. Its HTTP client is closed before the stack stops: the servers
    wait out their graceful timeout for a keep-alive connection left open."""
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as client:
        delivery_id = str(uuid.uuid4())
        with phases.measure("push: signed webhook -> Platform -> orchestrator"):
            await push_webhook(client, stack, repo, delivery_id)
            console.print(f"Pushed {repo.sha[:12]}: the Platform accepted the signed webhook")
            run_id = await find_run(client, stack, delivery_id)
        with phases.measure("run the pipeline"):
            with trio.move_on_after(options.run_timeout_s) as waiting:
                run = await follow_run(client, stack, run_id, console)
            if waiting.cancelled_caught:
                raise DemoError(f"the run did not finish within {options.run_timeout_s:.0f} s")
        with phases.measure("collect the logs and the Platform's view"):
            saved = await save_job_logs(client, stack, run)
            view = await platform_view(client, stack, run_id, str(run["status"]))
    places = LogPlaces(
        root=stack.root,
        job_files=saved,
        orchestrator_url=stack.orchestrator_url,
        platform_url=stack.platform_url,
        stack_logs=stack.log_files(),
    )
    console.print()
    token = stack.admin_token if options.keep_running else None
    console.print(result_view(run, places, now(), admin_token=token))
    print_platform(console, view, str(run["status"]))
    succeeded = run.get("status") == "success"
    outcome.code = EXIT_SUCCESS if succeeded else EXIT_RUN_FAILED
    outcome.run_finished = True
    console.print(
        Text(
            f"Run {run['status']} in {format_duration(run_duration_s(run))}",
            style="green bold" if succeeded else "red bold",
        )
    )


async def demo_body(
    options: DemoOptions, console: Console, root: Path, phases: Phases, outcome: Outcome
) -> None:
    with phases.measure("create and compile the sample repository"):
        repo = await trio.to_thread.run_sync(lambda: create_sample(root, failing=options.failing))
    console.print(f"Sample repository {sample.REPO} at {repo.sha[:12]} ({', '.join(sorted(repo.files))})")

    def stopped(report: ShutdownReport) -> None:
        outcome.report = report

    with GitHttpServer(repo.git_root) as git:
        stack_options = StackOptions(
            git_url_template=f"{git.base_url}/{{repo}}.git",
            webhook_secret=f"demo-{uuid.uuid4().hex}",
            agents=options.agents,
            sandbox=options.sandbox,
        )
        console.print("Starting the Platform, the orchestrator and the agents…")
        async with open_stack(root, stack_options, phases=phases, on_stopped=stopped) as stack:
            print_stack(console, stack)
            await drive(stack, repo, options, console, phases=phases, outcome=outcome)
            if options.keep_running:
                print_keep_running(console, stack)
                await trio.sleep_forever()
            with phases.measure("shut down (agents, orchestrator, Platform)"):
                await stack.stop()


async def run_demo(options: DemoOptions, console: Console) -> int:
    """The whole demo; returns the exit code (see the module docstring)."""
    started = time.monotonic()
    phases = Phases()
    outcome = Outcome()
    try:
        root = make_root(options.root)
    except DemoError as exc:
        console.print(Text(f"Error: {exc}", style="red"))
        return EXIT_DEMO_ERROR
    console.print(Text("kici demo: a push through the Platform, the orchestrator and an agent", style="bold"))
    console.print(Text(f"root {root}", style="dim"))
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            body = trio.CancelScope()

            async def interrupts() -> None:
                async for _ in signals:
                    if not outcome.interrupted:
                        outcome.interrupted = True
                        console.print(Text("\nInterrupted: shutting the stack down…", style="yellow"))
                        body.cancel()
                    else:
                        console.print(Text("still shutting down, please wait…", style="yellow"))

            nursery.start_soon(interrupts)
            try:
                with body:
                    await demo_body(options, console, root, phases, outcome)
            except* (StackError, DemoError, httpx.HTTPError) as group:
                for leaf in leaves(group):
                    console.print(Text(f"Error: {leaf}", style="red"))
                outcome.code = EXIT_DEMO_ERROR
            except* Exception as group:
                for leaf in leaves(group):
                    console.print(Text("".join(traceback.format_exception(leaf)), style="red"))
                outcome.code = EXIT_DEMO_ERROR
            nursery.cancel_scope.cancel()
    if outcome.report is not None:
        print_shutdown(console, outcome.report)
        if outcome.report.clean:
            remove_data(root)
        else:
            outcome.code = EXIT_DEMO_ERROR
    console.print(f"Logs, configs and the sample repository are kept in {root}")
    console.print()
    console.print(phases_table(phases.timings))
    console.print(Text(f"wall time {format_duration(time.monotonic() - started)}", style="dim"))
    if outcome.interrupted and not (options.keep_running and outcome.run_finished):
        return EXIT_INTERRUPTED
    return outcome.code


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--agents", type=click.IntRange(1, 8), default=1, show_default=True, help="How many agents.")
@click.option("--fail", "failing", is_flag=True, help="Push a commit whose tests fail (exit code 1).")
@click.option(
    "--sandbox",
    type=click.Choice([s.value for s in Sandbox]),
    default=Sandbox.AUTO.value,
    show_default=True,
    help="auto: bubblewrap, else the process sandbox with a warning.",
)
@click.option(
    "--root", type=click.Path(path_type=Path, file_okay=False), default=None, help="Empty dir for everything."
)
@click.option("--keep-running", is_flag=True, help="Keep the stack up after the run, until Ctrl-C.")
@click.option(
    "--timeout",
    "run_timeout_s",
    type=click.FloatRange(min=1),
    default=DEFAULT_RUN_TIMEOUT_S,
    show_default=True,
    help="Seconds the run may take.",
)
def main(
    *, agents: int, failing: bool, sandbox: str, root: Path | None, keep_running: bool, run_timeout_s: float
) -> None:
    """kici's main job on embedded defaults: Platform, orchestrator and agents on loopback run a
    sample repository's pipeline from a signed push webhook."""
    options = DemoOptions(
        agents=agents,
        failing=failing,
        sandbox=Sandbox(sandbox),
        root=root,
        keep_running=keep_running,
        run_timeout_s=run_timeout_s,
    )
    sys.exit(trio.run(run_demo, options, make_console()))


def make_console() -> Console:
    """Rich on a terminal; piped output gets long lines instead of wrapping at 80 columns, since a
    log file has no width."""
    no_color = bool(os.environ.get("NO_COLOR"))
    console = Console(highlight=False, no_color=no_color)
    if console.is_terminal or os.environ.get("COLUMNS"):
        return console
    return Console(highlight=False, no_color=no_color, width=PIPE_WIDTH, soft_wrap=True)


if __name__ == "__main__":
    main()
