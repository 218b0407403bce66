"""``kici run remote <event>``: submit a simulated event to an orchestrator and follow its runs (CLI-14).

This is the minimal form of the 00 §3.4 row, for a self-hosted orchestrator reached directly
(``--url`` and the admin ``--token``) rather than through the Platform: the workflows are compiled
in memory from the working tree and the lock travels inline with the event, so an uncommitted edit
to ``.kici/`` is what runs, as the spec's "no git remote: lock inline" case. The event is built on
the orchestrator from the same fields ``kici run local`` uses (branch, current branch, sha,
changed files), so both commands match the same workflows.

Choices where the spec is silent: the repository the agents clone is ``--repo``, by default the
``origin`` remote's URL, else the repository root's path (useful when agent and CLI share a
machine); a transport failure or a rejected token is exit 1 with one ``Error:`` line, since the
command line itself was valid; with several runs, log lines are prefixed ``[workflow/job]`` so
jobs of the same name stay apart.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import click
import httpx

from kici.cli.common import KICI_DIR_OPTION, ProjectNotFoundError, compile_or_report, find_project
from kici.cli.output import Printer, banner
from kici.domain.event_args import EventArgError, event_arg_usage, parse_event_arg
from kici.domain.execution.states import TERMINAL_RUN_STATES
from kici.domain.lockfile import dump_lock
from kici.services.local.git import git, is_git_repo, read_working_tree

POLL_INTERVAL_S = 0.5
REQUEST_TIMEOUT_S = 30.0
LOG_PAGE = 500
TERMINAL = frozenset(status.value for status in TERMINAL_RUN_STATES)

REMOTE_EPILOG = """\b
Examples:
  kici run remote push --url http://ci.internal:8080 --token kadm_...
  kici run remote pr:open --branch main --no-wait --json

\b
Environment: KICI_ORCHESTRATOR_API_URL and KICI_ADMIN_TOKEN stand in for --url and --token.
Exit codes: 0 every run succeeded (or --no-wait), 1 a run failed or the orchestrator could not be
reached or refused the token, 2 usage error, 130 interrupted (first Ctrl-C cancels the runs,
a second one force-cancels them).
"""


class RemoteError(click.ClickException):
    """A failure talking to the orchestrator: one red ``Error:`` line and exit 1."""

    exit_code = 1

    def show(self, file: object = None) -> None:
        Printer(err=True).fail(f"Error: {self.message}")


class OrchestratorClient:
    """The four ``/api/v1`` calls the command needs, turning HTTP failures into :class:`RemoteError`."""

    def __init__(self, url: str, token: str, *, transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={"authorization": f"Bearer {token}"},
            timeout=REQUEST_TIMEOUT_S,
            transport=transport,
        )

    def __enter__(self) -> OrchestratorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        try:
            response = self._http.request(method, path, json=body, params=params)
        except httpx.HTTPError as exc:
            raise RemoteError(f"cannot reach the orchestrator at {self.url}: {exc}") from None
        if response.status_code == 401:
            raise RemoteError(
                "unauthorized: the orchestrator rejected the token (--token / KICI_ADMIN_TOKEN)"
            )
        return response

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            raise RemoteError(
                f"the orchestrator at {self.url} did not answer JSON ({response.status_code})"
            ) from None
        if response.status_code >= 400:
            reason = data.get("error") if isinstance(data, dict) else None
            raise RemoteError(f"the orchestrator answered {response.status_code}: {reason or response.text}")
        if not isinstance(data, dict):
            raise RemoteError(f"the orchestrator at {self.url} answered an unexpected document")
        return data

    def submit(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._json(self._call("POST", "/api/v1/runs", body=body))

    def run(self, run_id: str) -> dict[str, Any]:
        return self._json(self._call("GET", f"/api/v1/runs/{run_id}"))

    def logs(self, run_id: str, job_id: str, cursor: int) -> dict[str, Any]:
        params = {"cursor": cursor, "limit": LOG_PAGE}
        return self._json(self._call("GET", f"/api/v1/runs/{run_id}/jobs/{job_id}/logs", params=params))

    def cancel(self, run_id: str, *, force: bool) -> None:
        """Ask for a cancel; a run already finished (409) or gone (404) needs none."""
        response = self._call(
            "POST", f"/api/v1/runs/{run_id}/cancel", body={"force": force, "reason": "Ctrl-C"}
        )
        if response.status_code not in (404, 409):
            self._json(response)


class LogFollower:
    """Prints each job's new log lines once, keeping one cursor per job across polls."""

    def __init__(self, client: OrchestratorClient, printer: Printer, *, qualify: bool) -> None:
        self.client = client
        self.printer = printer
        self.qualify = qualify
        self.cursors: dict[str, int] = {}

    def follow(self, run: Mapping[str, Any]) -> None:
        for job in run.get("jobs", []):
            job_id = str(job["id"])
            label = f"{run.get('workflowName')}/{job['name']}" if self.qualify else str(job["name"])
            while True:
                page = self.client.logs(str(run["id"]), job_id, self.cursors.get(job_id, 0))
                chunks = page.get("chunks", [])
                for chunk in chunks:
                    for line in chunk.get("lines", []):
                        self.printer.line(f"[{label}] {line}")
                self.cursors[job_id] = int(page.get("nextCursor") or self.cursors.get(job_id, 0))
                if len(chunks) < LOG_PAGE:
                    break


def _symbol(status: str) -> tuple[str, str]:
    if status == "success":
        return "✓", "green"
    if status in ("failed", "timed_out_stale"):
        return "✗", "red"
    return "-", "yellow"


def _print_summary(runs: list[dict[str, Any]], printer: Printer) -> None:
    printer.line()
    for run in runs:
        mark, style = _symbol(str(run["status"]))
        printer.line(f"{mark} {run.get('workflowName')} {run['status']} (run {run['id']})", style)
        for job in run.get("jobs", []):
            job_mark, job_style = _symbol(str(job["status"]))
            printer.line(f"  {job_mark} {job['name']} {job['status']}", job_style)
        if run.get("failureReason"):
            printer.line(f"  {run['failureReason']}", "dim")


def _cancel_all(client: OrchestratorClient, runs: Mapping[str, Mapping[str, Any]], *, force: bool) -> None:
    for run_id, run in runs.items():
        if str(run.get("status")) not in TERMINAL:
            client.cancel(run_id, force=force)


def watch(
    client: OrchestratorClient, run_ids: list[str], *, json_mode: bool, quiet: bool
) -> tuple[list[dict[str, Any]], bool]:
    """Poll the runs until all are terminal; returns their last views and whether Ctrl-C cancelled them.

    The first Ctrl-C asks the orchestrator to cancel (steps get their grace period) and keeps
    following so the user sees the cancel land; a second one force-cancels and stops waiting.
    """
    printer = Printer()
    err = Printer(err=True)
    follower = LogFollower(client, printer, qualify=len(run_ids) > 1)
    latest: dict[str, dict[str, Any]] = {run_id: {"id": run_id, "status": "pending"} for run_id in run_ids}
    interrupted = False
    while True:
        try:
            for run_id in run_ids:
                if str(latest[run_id]["status"]) in TERMINAL:
                    continue
                latest[run_id] = client.run(run_id)
                if not (json_mode or quiet):
                    follower.follow(latest[run_id])
            if all(str(run["status"]) in TERMINAL for run in latest.values()):
                return [latest[r] for r in run_ids], interrupted
            time.sleep(POLL_INTERVAL_S)
        except KeyboardInterrupt:
            if interrupted:
                err.line("Force-cancelling…", "yellow")
                _cancel_all(client, latest, force=True)
                return [latest[r] for r in run_ids], True
            interrupted = True
            err.line("Cancelling the runs… (Ctrl-C again to force)", "yellow")
            _cancel_all(client, latest, force=False)


def _repo_identifier(repo_root: Path) -> str:
    if is_git_repo(repo_root):
        origin = git(repo_root, "remote", "get-url", "origin", check=False).strip()
        if origin:
            return origin
    return str(repo_root)


def _fail(message: str, *, json_mode: bool) -> NoReturn:
    if json_mode:
        click.echo(json.dumps({"runIds": [], "error": message}, ensure_ascii=False, indent=2))
    raise RemoteError(message)


@click.command("remote", epilog=REMOTE_EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("event", required=False)
@click.option(
    "--url",
    envvar="KICI_ORCHESTRATOR_API_URL",
    metavar="URL",
    help="The orchestrator's base URL (env KICI_ORCHESTRATOR_API_URL).",
)
@click.option(
    "--token", envvar="KICI_ADMIN_TOKEN", metavar="TOKEN", help="Admin token (env KICI_ADMIN_TOKEN)."
)
@click.option("--branch", metavar="NAME", help="Target branch (pr: base; push: the pushed branch).")
@click.option("--sha", metavar="SHA", help="Commit (default: HEAD).")
@click.option("--workflow", "workflow_name", metavar="NAME", help="Only the workflow with this name.")
@click.option(
    "--repo", metavar="REPO", help="Repository the agents clone (default: origin's URL, else this path)."
)
@click.option("--no-wait", is_flag=True, help="Print the run ids and return without following the runs.")
@click.option("--quiet", "-q", is_flag=True, help="No banner or logs; only the summary.")
@click.option("--json", "json_mode", is_flag=True, help="Print exactly one JSON document on stdout.")
@KICI_DIR_OPTION
def run_remote_command(
    *,
    event: str | None,
    url: str | None,
    token: str | None,
    branch: str | None,
    sha: str | None,
    workflow_name: str | None,
    repo: str | None,
    no_wait: bool,
    quiet: bool,
    json_mode: bool,
    kici_dir: Path | None,
) -> None:
    """Run the workflows an event matches on an orchestrator and follow them.

    EVENT is an event argument such as push, pr:open, tag or dispatch. The workflows are compiled
    from the working tree and sent with the event; logs stream as `[job] line` and a summary ends
    the run.
    """
    ctx = click.get_current_context()
    if event is None:
        raise click.UsageError(f"missing EVENT argument\n\nEvent arguments:\n{event_arg_usage()}")
    try:
        parse_event_arg(event)
    except EventArgError as exc:
        raise click.UsageError(f"{exc}\n\nEvent arguments:\n{event_arg_usage()}") from None
    if not url:
        raise click.UsageError("missing --url (or KICI_ORCHESTRATOR_API_URL)")
    if not url.startswith(("http://", "https://")):
        raise click.UsageError(f"--url must start with http:// or https://, got {url!r}")
    if not token:
        raise click.UsageError("missing --token (or KICI_ADMIN_TOKEN)")
    banner(quiet=quiet or json_mode)
    try:
        project = find_project(kici_dir)
    except ProjectNotFoundError as exc:
        _fail(exc.message, json_mode=json_mode)
    result = compile_or_report(project)
    if result.lock is None:
        _fail("compilation failed", json_mode=json_mode)
    tree = read_working_tree(project.repo_root)
    body: dict[str, Any] = {
        "event": event,
        "repo": repo or _repo_identifier(project.repo_root),
        "lock": json.loads(dump_lock(result.lock)),
        "currentBranch": tree.branch,
        "files": list(tree.changed_files),
    }
    if sha or tree.has_head:
        body["sha"] = sha or tree.sha
    if branch:
        body["branch"] = branch
    if workflow_name:
        body["workflow"] = workflow_name
    with OrchestratorClient(url, token) as client:
        try:
            submitted = client.submit(body)
        except RemoteError as exc:
            _fail(exc.message, json_mode=json_mode)
        run_ids = [str(r) for r in submitted.get("runIds", [])]
        out = Printer()
        if not run_ids:
            if json_mode:
                click.echo(json.dumps({"runIds": [], "decisions": submitted.get("decisions", [])}, indent=2))
            else:
                out.line("No workflows matched the event.")
                for decision in submitted.get("decisions", []):
                    out.line(f"  ✗ {decision.get('workflow')}: {decision.get('summary')}", "dim")
            ctx.exit(0)
        if no_wait:
            if json_mode:
                click.echo(
                    json.dumps({"runIds": run_ids, "decisions": submitted.get("decisions", [])}, indent=2)
                )
            else:
                for run_id in run_ids:
                    out.line(run_id)
            ctx.exit(0)
        if not json_mode:
            Printer(err=True).line(f"Submitted {len(run_ids)} run(s): {', '.join(run_ids)}", "dim")
        runs, interrupted = watch(client, run_ids, json_mode=json_mode, quiet=quiet)
    if json_mode:
        click.echo(json.dumps({"runIds": run_ids, "runs": runs}, ensure_ascii=False, indent=2))
    else:
        _print_summary(runs, out)
    sys.stdout.flush()
    if interrupted:
        ctx.exit(130)
    ctx.exit(0 if all(run.get("status") == "success" for run in runs) else 1)
