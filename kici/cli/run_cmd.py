"""``kici run local <event>``: run the matched workflows here, each job in a sandboxed checkout (CLI-08).

The command only gathers input (event, options, secrets, working-tree state), picks the sandbox
and renders output; the run itself is :mod:`kici.services.local.engine`. The workflows are
compiled in memory from the working tree, so an uncommitted edit runs without ``kici compile``
first, exactly like the overlay puts the edit into every job's checkout.

``--check`` runs the jobs in the runner's check mode (CLI-09, EXE-09): checked steps run only their
``check`` and report ``in sync`` or ``would change``, plain steps are skipped (``no check``), and
nothing is applied. ``--fail-on-drift`` turns drift into exit 2, so a scheduled CI job can tell
"drifted" (2) from "broken" (1); without ``--check`` it is a usage error, as it would otherwise
apply changes while promising only to look.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import click
import trio

from kici.cli.common import KICI_DIR_OPTION, ProjectNotFoundError, compile_or_report, find_project
from kici.cli.output import LiveReporter, Printer, banner, make_reporter, print_summary
from kici.domain.event_args import (
    EventArgError,
    EventOptions,
    event_arg_usage,
    parse_assignments,
    parse_event_arg,
    simulate_event,
)
from kici.domain.runner_ipc import RunMode
from kici.services.local.checkout import collect_old_runs, list_overlay, new_run_root, run_base_dir
from kici.services.local.engine import LocalRun, LocalRunError, LocalRunOptions, prepare_run
from kici.services.local.executor import RunnerExecutor, SandboxChoiceError, choose_sandbox
from kici.services.local.git import GitError, is_git_repo, read_working_tree
from kici.services.local.results import RunReport
from kici.services.local.secrets import LocalSecretsError, load_local_secrets

RUN_EPILOG = """\b
Examples:
  kici run local push                      jobs a push to the current branch runs
  kici run local pr:open --branch main     a pull request from this branch into main
  kici run local push --job test           only `test` and the jobs it needs
  kici run local push --json > run.json    one JSON document on stdout
  kici run local push --sandbox none       without bubblewrap (no isolation!)
  kici run local push --check              what check steps would change; nothing applied

\b
Secrets: .kici/.secrets, then .kici/.env.local, then .kici/secrets.yaml (env: {K: V}), then
--env K=V (later wins); steps read them with ctx.secrets and they are masked as *** in all output.
Exit codes: 0 all jobs passed, 1 a job failed, 2 usage error or drift under --check
--fail-on-drift, 130 interrupted (Ctrl-C).
"""


@click.group("run", context_settings={"help_option_names": ["-h", "--help"]})
def run_group() -> None:
    """Run workflows here (`run local`) or on an orchestrator (`run remote`)."""


def _read_payload(path: Path | None) -> Mapping[str, Any] | None:
    if path is None:
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise click.BadParameter(f"cannot read JSON from {path}: {exc}", param_hint="--payload") from None
    if not isinstance(payload, dict):
        raise click.BadParameter(f"{path} must hold a JSON object", param_hint="--payload")
    return payload


def _emit_json(report: RunReport, error: str | None = None) -> None:
    document = report.to_json()
    if error is not None:
        document = {**document, "success": False, "error": error}
    click.echo(json.dumps(document, ensure_ascii=False, indent=2))


def _fail(message: str, *, json_mode: bool) -> NoReturn:
    """Report an error that stops the run before any job: stderr, plus the JSON document under ``--json``.

    ``--json`` promises one document on stdout whatever happens after the options parsed, so a
    consumer never has to tell "no output" from "crashed".
    """
    Printer(err=True).fail(message)
    if json_mode:
        _emit_json(RunReport(), message.removeprefix("Error: "))
    click.get_current_context().exit(1)


def _print_check_verdict(report: RunReport) -> None:
    drifted = report.drifted_steps()
    out = Printer()
    if drifted:
        steps = "step" if drifted == 1 else "steps"
        out.line(f"Check mode: {drifted} {steps} would change (nothing was applied).", "yellow")
    else:
        out.line("Check mode: everything is in sync.", "green")


@run_group.command("local", epilog=RUN_EPILOG)
@click.argument("event", required=False)
@click.option("--workflow", "workflow_name", metavar="NAME", help="Only this workflow.")
@click.option("--job", "job_name", metavar="NAME", help="Only this job and the jobs it needs.")
@click.option(
    "--branch", metavar="BRANCH", help="Branch (default: the current one; PR: target branch, default main)."
)
@click.option("--sha", metavar="SHA", help="Commit SHA of the simulated event (default: HEAD).")
@click.option(
    "--payload",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON file replacing the simulated event payload.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    metavar="N",
    default=lambda: os.cpu_count() or 1,
    show_default="number of CPUs",
    help="Jobs running at once.",
)
@click.option("--keep-going", is_flag=True, help="Keep starting independent jobs after a failure.")
@click.option("--env", "env_values", multiple=True, metavar="K=V", help="Secret for this run (repeatable).")
@click.option("--input", "input_values", multiple=True, metavar="K=V", help="Dispatch input (repeatable).")
@click.option("--files", multiple=True, metavar="PATH", help="Changed file (repeatable; default: git diff).")
@click.option("--quiet", "-q", is_flag=True, help="No banner or step logs; only the summary.")
@click.option("--json", "json_mode", is_flag=True, help="Print exactly one JSON document on stdout.")
@click.option("--keep", is_flag=True, help="Keep every job's checkout directory.")
@click.option(
    "--check",
    "check_mode",
    is_flag=True,
    help="Check mode: checked steps only report `in sync` / `would change`; plain steps are skipped.",
)
@click.option("--fail-on-drift", is_flag=True, help="With --check: exit 2 when any step would change.")
@click.option(
    "--sandbox",
    type=click.Choice(["bwrap", "none"]),
    default=None,
    help="Job sandbox (default: bwrap; `none` runs steps unisolated).",
)
@KICI_DIR_OPTION
def run_local_command(
    *,
    event: str | None,
    workflow_name: str | None,
    job_name: str | None,
    branch: str | None,
    sha: str | None,
    payload: Path | None,
    concurrency: int,
    keep_going: bool,
    env_values: tuple[str, ...],
    input_values: tuple[str, ...],
    files: tuple[str, ...],
    quiet: bool,
    json_mode: bool,
    keep: bool,
    check_mode: bool,
    fail_on_drift: bool,
    sandbox: str | None,
    kici_dir: Path | None,
) -> None:
    """Run the workflows an event matches, here, with the same runner as an agent.

    EVENT is an event argument such as push, pr:open, tag or dispatch. Each job runs in
    its own checkout (HEAD plus your uncommitted changes) inside a bubblewrap sandbox; logs
    stream as `[job] line` and a summary tree ends the run.
    """
    ctx = click.get_current_context()
    if fail_on_drift and not check_mode:
        raise click.UsageError("--fail-on-drift needs --check")
    run_mode: RunMode = "apply"
    if check_mode:
        run_mode = "check-fail-on-drift" if fail_on_drift else "check"
    if event is None:
        raise click.UsageError(f"missing EVENT argument\n\nEvent arguments:\n{event_arg_usage()}")
    try:
        parsed = parse_event_arg(event)
    except EventArgError as exc:
        raise click.UsageError(f"{exc}\n\nEvent arguments:\n{event_arg_usage()}") from None
    try:
        secrets_override = parse_assignments(env_values, "--env")
        raw_inputs = parse_assignments(input_values, "--input")
    except EventArgError as exc:
        raise click.UsageError(str(exc)) from None
    event_payload = _read_payload(payload)
    banner(quiet=quiet or json_mode)
    err = Printer(err=True)
    try:
        chosen = choose_sandbox(sandbox)
    except SandboxChoiceError as exc:
        _fail(f"Error: {exc}", json_mode=json_mode)
    try:
        project = find_project(kici_dir)
    except ProjectNotFoundError as exc:
        _fail(exc.message, json_mode=json_mode)
    try:
        secrets = load_local_secrets(project.kici_dir, secrets_override)
    except LocalSecretsError as exc:
        _fail(f"Error: {exc.format(project.relative(exc.path))}", json_mode=json_mode)
    if not is_git_repo(project.repo_root):
        _fail(
            f"Error: {project.repo_root} is not a git repository. `kici run local` clones HEAD into an "
            "isolated checkout: run `git init` (and commit) first.",
            json_mode=json_mode,
        )
    result = compile_or_report(project, err=err)
    if result.lock is None:
        _fail("✗ Compilation failed", json_mode=json_mode)
    tree = read_working_tree(project.repo_root)
    options = EventOptions(
        branch=branch,
        current_branch=tree.branch,
        sha=sha or tree.sha,
        changed_files=files if files else tree.changed_files,
        payload=event_payload,
        inputs=raw_inputs,
    )
    simulated = simulate_event(parsed, options)
    try:
        prepared, decisions = prepare_run(
            result.lock, simulated, workflow_filter=workflow_name, job_filter=job_name, raw_inputs=raw_inputs
        )
    except LocalRunError as exc:
        _fail(f"Error: {exc}", json_mode=json_mode)
    if not prepared:
        if json_mode:
            _emit_json(RunReport())
        elif workflow_name is not None:
            Printer().line(f'No workflow named "{workflow_name}" matched the event.')
        else:
            Printer().line("No workflows matched the event.")
            for decision in decisions:
                Printer().line(f"  ✗ {decision.workflow_name}: {decision.summary}", "dim")
        ctx.exit(0)
    try:
        overlay = list_overlay(project.repo_root)
    except GitError as exc:
        _fail(f"Error: {exc}", json_mode=json_mode)
    base = run_base_dir()
    collect_old_runs(base)
    run_root = new_run_root(base)
    run_options = LocalRunOptions(
        repo_root=project.repo_root,
        kici_dir=project.kici_dir,
        run_root=run_root,
        sha=tree.sha if tree.has_head else None,
        overlay=overlay,
        concurrency=concurrency,
        keep_going=keep_going,
        keep=keep,
        secrets=secrets,
        run_mode=run_mode,
    )
    reporter = make_reporter(quiet=quiet, json_mode=json_mode)
    reporter.multi_workflow = len(prepared) > 1
    executor = RunnerExecutor(chosen, repo_root=project.repo_root)
    engine = LocalRun(run_options, simulated, reporter, executor)

    async def go() -> RunReport:
        return await engine.run(prepared)

    if isinstance(reporter, LiveReporter):
        with reporter:
            report = trio.run(go)
    else:
        report = trio.run(go)
    if json_mode:
        _emit_json(report)
    else:
        print_summary(report, quiet=quiet)
        if run_mode != "apply":
            _print_check_verdict(report)
    sys.stdout.flush()
    ctx.exit(report.exit_code)
