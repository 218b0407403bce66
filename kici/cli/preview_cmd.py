"""``kici preview <event>``: what would run for an event, and why anything would not (CLI-07).

Nothing executes: the workflows are compiled in memory (the lock file on disk is not touched),
the event is simulated like ``run local`` does, and the domain matcher explains every decision
with its trace. Rules are listed but not evaluated: they run user code, which a dry run must not.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import click

from kici.cli.common import KICI_DIR_OPTION, compile_or_report, find_project
from kici.cli.output import Printer, banner
from kici.domain.event_args import (
    EventArgError,
    EventOptions,
    event_arg_usage,
    parse_event_arg,
    simulate_event,
)
from kici.domain.events import SimulatedEvent, TraceEntry, WorkflowDecision
from kici.domain.lockfile import (
    ExactLabelMatcher,
    FrozenDict,
    LabelMatcher,
    LockBranchPattern,
    LockDynamicJobFn,
    LockDynamicMatrix,
    LockFile,
    LockJob,
    LockParallelStep,
    LockStaticMatrix,
    LockWorkflow,
    NeedsEntry,
    NeedsGroupEntry,
    Trigger,
    thaw_json,
    trigger_type,
)
from kici.domain.matrix import expand_job_matrix
from kici.domain.triggers import match_lock
from kici.services.local.git import read_working_tree

Line = tuple[str, str | None]


def _value(value: Any) -> str | None:
    """A trigger filter as text, or None when it is empty (no filter)."""
    if value is None or value in ((), ""):
        return None
    if isinstance(value, LockBranchPattern):
        return f"/{value.pattern}/{value.flags or ''}" if value.type == "regex" else value.pattern
    if isinstance(value, FrozenDict):
        return json.dumps(thaw_json(value), ensure_ascii=False, sort_keys=True)
    if isinstance(value, tuple):
        parts = [_value(v) for v in value]
        return ",".join(p for p in parts if p is not None) or None
    if attrs.has(type(value)):
        fields = [
            f"{k}={v}"
            for k, v in ((a.name, _value(getattr(value, a.name))) for a in attrs.fields(type(value)))
            if v
        ]
        return "{" + " ".join(fields) + "}"
    return str(value)


def describe_trigger(trigger: Trigger) -> str:
    """``push branches=main paths=src/**`` — the trigger kind and its non-empty filters."""
    parts = [trigger_type(trigger)]
    for attribute in attrs.fields(type(trigger)):
        shown = _value(getattr(trigger, attribute.name))
        if shown is not None:
            parts.append(f"{attribute.name.rstrip('_')}={shown}")
    return " ".join(parts)


def _matcher(matcher: LabelMatcher) -> str:
    if isinstance(matcher, ExactLabelMatcher):
        return matcher.value
    return f"/{matcher.source}/{matcher.flags}"


def describe_runs_on(job: LockJob) -> str:
    if job.runs_on_all is not None:
        groups = [" + ".join(_matcher(m) for m in group) for group in job.runs_on_all.include]
        text = "all hosts matching " + " | ".join(groups)
        if job.runs_on_all.exclude:
            text += " except " + ", ".join(_matcher(m) for m in job.runs_on_all.exclude)
        return text
    labels = [_matcher(m) for m in job.runs_on or ()]
    labels += [f"!{_matcher(m)}" for m in job.exclude_labels or ()]
    return ", ".join(labels) or "(any)"


def describe_needs(job: LockJob) -> str:
    shown: list[str] = []
    for need in job.needs:
        if isinstance(need, str):
            shown.append(need)
        elif isinstance(need, NeedsEntry):
            shown.append(f"{need.name} (on {'|'.join(need.run_on)})")
        elif isinstance(need, NeedsGroupEntry):
            shown.append(f"group {need.group} (on {'|'.join(need.run_on)})")
    shown += [f"group {g}" for g in job.depends_on_groups or ()]
    return ", ".join(shown)


def describe_matrix(job: LockJob) -> str | None:
    if isinstance(job.matrix, LockDynamicMatrix):
        return "[dynamic]"
    if not isinstance(job.matrix, LockStaticMatrix):
        return None
    children = expand_job_matrix(
        job.name,
        thaw_json(job.matrix.values),  # type: ignore[arg-type]
        [thaw_json(i) for i in job.include or ()],
        [thaw_json(e) for e in job.exclude or ()],
    )
    names = ", ".join(child.name for child in children)
    return f"{len(children)} job(s): {names}"


def describe_steps(job: LockJob) -> str:
    names: list[str] = []
    for step in job.steps:
        if isinstance(step, LockParallelStep):
            names.append(f"{step.name}[{' ‖ '.join(c.name for c in step.children)}]")
        else:
            names.append(step.name)
    return ", ".join(names) or "(none)"


def _job_lines(job: LockJob) -> list[Line]:
    lines: list[Line] = [(f"    {job.name}", "bold")]
    lines.append((f"      runs-on: {describe_runs_on(job)}", None))
    needs = describe_needs(job)
    if needs:
        lines.append((f"      needs: {needs}", None))
    matrix = describe_matrix(job)
    if matrix:
        lines.append((f"      matrix: {matrix}", None))
    if job.rules:
        labels = ", ".join(f'"{rule.label}"' for rule in job.rules)
        lines.append((f"      rules: {labels} (not evaluated)", "dim"))
    lines.append((f"      steps: {describe_steps(job)}", None))
    return lines


def _generator_lines(entry: LockDynamicJobFn) -> list[Line]:
    text = f"    generator jobs[{entry.source.index}]"
    if entry.group:
        text += f" (group {entry.group})"
    if entry.result_aware:
        text += " [result-aware]"
    return [(text + " — jobs are generated when the run starts", "dim")]


def workflow_lines(workflow: LockWorkflow, decision: WorkflowDecision, job_filter: str | None) -> list[Line]:
    lines: list[Line] = [("", None), (f"Workflow: {workflow.name} ({workflow.source.file})", "bold")]
    lines.append(("  Triggers:", None))
    lines.extend((f"    {i}. {describe_trigger(t)}", None) for i, t in enumerate(workflow.triggers, 1))
    if decision.matched_trigger is not None:
        lines.append((f"  ✓ Matched trigger {decision.matched_trigger + 1}", "green"))
    if workflow.rules:
        labels = ", ".join(f'"{rule.label}"' for rule in workflow.rules)
        lines.append((f"  Rules: {labels} (not evaluated)", "dim"))
    lines.append(("  Jobs:", None))
    for entry in workflow.jobs:
        if isinstance(entry, LockJob):
            if job_filter is None or entry.name == job_filter:
                lines.extend(_job_lines(entry))
        elif job_filter is None:
            lines.extend(_generator_lines(entry))
    return lines


def _failed_checks(checks: Iterable[TraceEntry]) -> list[str]:
    return [
        f"{c.check}: expected {c.pattern or '(any)'}, got {c.value}" + (f" ({c.reason})" if c.reason else "")
        for c in checks
        if not c.passed
    ]


def decision_lines(pairs: Sequence[tuple[LockWorkflow, WorkflowDecision]]) -> list[Line]:
    lines: list[Line] = [("", None), ("Decision Summary:", "bold")]
    for workflow, decision in pairs:
        if decision.matched_trigger is not None:
            trigger = workflow.triggers[decision.matched_trigger]
            text = f"matched trigger {decision.matched_trigger + 1} ({trigger_type(trigger)})"
            lines.append((f"  ✓ {decision.workflow_name}: {text}", "green"))
            continue
        why = "no triggers" if not workflow.triggers else "no trigger matched"
        lines.append((f"  ✗ {decision.workflow_name}: skipped — {why}", "yellow"))
        lines.extend((f"      ✗ {text}", "dim") for text in _failed_checks(decision.checks))
    return lines


def event_lines(arg: str, event: SimulatedEvent) -> list[Line]:
    text = f"Event: {arg} (type {event.type}"
    if event.action:
        text += f", action {event.action}"
    text += f", branch {event.target_branch}"
    if event.source_branch:
        text += f" ← {event.source_branch}"
    text += ")"
    files = event.changed_files or ()
    return [
        (text, None),
        (
            f"Changed files: {len(files)}"
            + (f" ({', '.join(files[:10])}{', …' if len(files) > 10 else ''})" if files else ""),
            None,
        ),
    ]


def preview_lines(
    lock: LockFile, arg: str, event: SimulatedEvent, workflow_filter: str | None, job_filter: str | None
) -> tuple[list[Line], int]:
    """The whole report and its exit code (1 for an unknown workflow or job name)."""
    lines: list[Line] = [("🔍 DRY RUN - No commands will be executed", "bold cyan"), ("", None)]
    lines += event_lines(arg, event)
    names = [w.name for w in lock.workflows]
    if workflow_filter is not None and workflow_filter not in names:
        shown = ", ".join(names) or "none"
        return [*lines, (f'No workflow named "{workflow_filter}" (workflows: {shown})', "red")], 1
    match = match_lock(lock, event)
    pairs = [
        (w, d)
        for w, d in zip(lock.workflows, match.decisions, strict=True)
        if workflow_filter is None or w.name == workflow_filter
    ]
    matched = [(w, d) for w, d in pairs if d.matched]
    if job_filter is not None:
        jobs = {e.name for w, _ in matched for e in w.jobs if isinstance(e, LockJob)}
        if matched and job_filter not in jobs:
            shown = ", ".join(sorted(jobs)) or "none"
            return [
                *lines,
                (f'No job named "{job_filter}" in the matched workflows (jobs: {shown})', "red"),
            ], 1
    for workflow, decision in matched:
        lines += workflow_lines(workflow, decision, job_filter)
    lines += decision_lines(pairs)
    lines.append(("", None))
    if not matched:
        lines.append(("No workflows matched the event.", "yellow"))
    else:
        lines.append(("✓ Dry run complete", "green"))
    return lines, 0


PREVIEW_EPILOG = """\b
Examples:
  kici preview push                        a push to main
  kici preview push --branch feature/x     a push to another branch
  kici preview pr:sync --files src/a.py    a PR update touching src/a.py
  kici preview kici_event:deployed         a kici event named "deployed"
"""


@click.command("preview", short_help="Dry run: what an event would run, and why not.", epilog=PREVIEW_EPILOG)
@click.argument("event", required=False, default="push")
@click.option("--workflow", "workflow_name", metavar="NAME", help="Only this workflow.")
@click.option("--job", "job_name", metavar="NAME", help="Only this job.")
@click.option(
    "--branch",
    metavar="BRANCH",
    default="main",
    show_default=True,
    help="Branch (PR: target; tag: tag name).",
)
@click.option("--sha", metavar="SHA", help="Commit SHA of the simulated event (default: HEAD).")
@click.option("--files", multiple=True, metavar="PATH", help="Changed file (repeatable; default: git diff).")
@KICI_DIR_OPTION
def preview_command(
    *,
    event: str,
    workflow_name: str | None,
    job_name: str | None,
    branch: str,
    sha: str | None,
    files: tuple[str, ...],
    kici_dir: Path | None,
) -> None:
    """Show which workflows and jobs an event would run, without running anything.

    EVENT is an event argument such as push, pr:open, tag, comment:created or
    kici_event:<name> (default: push). Every skipped workflow lists the checks that failed.
    """
    ctx = click.get_current_context()
    try:
        parsed = parse_event_arg(event)
    except EventArgError as exc:
        raise click.UsageError(f"{exc}\n\nEvent arguments:\n{event_arg_usage()}") from None
    banner()
    project = find_project(kici_dir)
    result = compile_or_report(project)
    if result.lock is None:
        Printer(err=True).fail("✗ Compilation failed")
        ctx.exit(1)
    tree = read_working_tree(project.repo_root)
    options = EventOptions(
        branch=branch,
        current_branch=tree.branch,
        sha=sha or tree.sha,
        changed_files=files if files else tree.changed_files,
    )
    simulated = simulate_event(parsed, options)
    lines, code = preview_lines(result.lock, str(parsed), simulated, workflow_name, job_name)
    out = Printer()
    for text, style in lines:
        out.line(text, style)
    ctx.exit(code)
