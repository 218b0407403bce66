"""The DRY RUN report of ``kici preview`` (00 §3.3), rendered from hand-built locks."""

from __future__ import annotations

import pytest

from kici.cli.preview_cmd import describe_runs_on, describe_trigger, preview_lines
from kici.domain.event_args import EventOptions, simulate_event
from kici.domain.lockfile import (
    ExactLabelMatcher,
    LockBranchPattern,
    LockDynamicJobFn,
    LockFile,
    LockGeneratorSource,
    LockJob,
    LockParallelStep,
    LockRule,
    LockRuleSource,
    LockRunsOnAll,
    LockSource,
    LockStaticMatrix,
    LockStep,
    LockWorkflow,
    NeedsEntry,
    PrTrigger,
    PushTrigger,
    RegexLabelMatcher,
    freeze_json,
)

pytestmark = pytest.mark.feature("CLI-07")


def step(name: str) -> LockStep:
    return LockStep(name=name, has_outputs=False)


LINT = LockJob(
    name="lint",
    runs_on=(ExactLabelMatcher(value="kici:os:linux"),),
    runs_on_pick="deterministic",
    steps=(step("install"), step("ruff")),
)
TEST = LockJob(
    name="test",
    runs_on=(ExactLabelMatcher(value="kici:os:linux"), RegexLabelMatcher(source="^py", flags="i")),
    exclude_labels=(ExactLabelMatcher(value="slow"),),
    runs_on_pick="deterministic",
    needs=("lint", NeedsEntry(name="lint", run_on=("success", "skipped"))),
    matrix=LockStaticMatrix(values=freeze_json({"python": ["3.11", "3.12"]})),
    rules=(LockRule(label="not docs", source=LockRuleSource(file="ci.py", index=0)),),
    steps=(LockParallelStep(name="checks", fail_fast=True, children=(step("a"), step("b"))),),
)


def workflow(name: str, triggers: tuple[object, ...], *jobs: object) -> LockWorkflow:
    return LockWorkflow(
        name=name,
        source=LockSource(file=f".kici/workflows/{name}.py", export=f"#{name}"),
        content_hash="0" * 64,
        triggers=triggers,  # type: ignore[arg-type]
        jobs=jobs,  # type: ignore[arg-type]
    )


LOCK = LockFile(
    content_hash="0" * 64,
    workflows=(
        workflow(
            "ci",
            (PushTrigger(branches=(LockBranchPattern(type="glob", pattern="main"),), paths=("src/**",)),),
            LINT,
            TEST,
            LockDynamicJobFn(source=LockGeneratorSource(file="ci.py", index=2), group="deploys"),
        ),
        workflow("prs", (PrTrigger(events=("opened",)),), LINT),
        workflow("none", ()),
    ),
)


def text(lines: list[tuple[str, str | None]]) -> str:
    return "\n".join(line for line, _ in lines)


def test_a_matched_workflow_is_described_in_full() -> None:
    event = simulate_event("push", EventOptions(branch="main", changed_files=("src/a.py",)))
    lines, code = preview_lines(LOCK, "push", event, None, None)
    report = text(lines)
    assert code == 0
    assert report.startswith("🔍 DRY RUN - No commands will be executed")
    assert "Workflow: ci (.kici/workflows/ci.py)" in report
    assert "1. push branches=main paths=src/**" in report
    assert "✓ Matched trigger 1" in report
    assert "runs-on: kici:os:linux, /^py/i, !slow" in report
    assert "needs: lint, lint (on success|skipped)" in report
    assert "matrix: 2 job(s): test (3.11), test (3.12)" in report
    assert 'rules: "not docs" (not evaluated)' in report
    assert "steps: checks[a ‖ b]" in report
    assert "generator jobs[2] (group deploys)" in report
    assert "Decision Summary:" in report
    assert "✓ ci: matched trigger 1 (push)" in report
    assert "✗ prs: skipped — no trigger matched" in report
    assert "✗ none: skipped — no triggers" in report
    assert report.endswith("✓ Dry run complete")


def test_every_skip_names_the_failed_check() -> None:
    event = simulate_event("push", EventOptions(branch="feature/x", changed_files=("docs/a.md",)))
    lines, code = preview_lines(LOCK, "push", event, None, None)
    report = text(lines)
    assert code == 0
    assert "✗ ci: skipped — no trigger matched" in report
    assert "push[0].branches: expected main, got feature/x (not matched)" in report
    assert "push[0].paths: expected src/**, got docs/a.md (not matched)" in report
    assert "pr[0].type: expected pull_request, got push (other event type)" in report
    assert report.endswith("No workflows matched the event.")


def test_filters_and_unknown_names() -> None:
    event = simulate_event("pr:open", EventOptions())
    lines, code = preview_lines(LOCK, "pr:opened", event, "prs", None)
    report = text(lines)
    assert code == 0
    assert "Workflow: prs" in report
    assert "Workflow: ci" not in report
    lines, code = preview_lines(LOCK, "pr:opened", event, "missing", None)
    assert code == 1
    assert 'No workflow named "missing" (workflows: ci, prs, none)' in text(lines)
    lines, code = preview_lines(LOCK, "pr:opened", event, None, "nope")
    assert code == 1
    assert 'No job named "nope"' in text(lines)
    push = simulate_event("push", EventOptions(branch="main", changed_files=("src/a",)))
    lines, code = preview_lines(LOCK, "push", push, None, "test")
    report = text(lines)
    assert "    test" in report
    assert "    lint" not in report


def test_trigger_and_target_descriptions() -> None:
    assert describe_trigger(PrTrigger()) == "pr"
    assert describe_trigger(PrTrigger(events=("opened",), repos=("a/*",))) == "pr events=opened repos=a/*"
    regex = LockBranchPattern(type="regex", pattern="^release/", flags="i")
    assert describe_trigger(PushTrigger(branches=(regex,))) == "push branches=/^release//i"
    fanout = LockJob(
        name="patch",
        runs_on_all=LockRunsOnAll(
            include=((ExactLabelMatcher(value="role:web"),),), exclude=(ExactLabelMatcher(value="canary"),)
        ),
    )
    assert describe_runs_on(fanout) == "all hosts matching role:web except canary"
