"""SDK option -> lock field, one example per shape (00 §2.2), plus the 00 §1.10 examples end to end."""

from __future__ import annotations

import re
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from kici.domain.lockfile import (
    ExactLabelMatcher,
    FrozenDict,
    LockApproval,
    LockBranchPattern,
    LockCache,
    LockContainer,
    LockDynamicJobFn,
    LockDynamicMatrix,
    LockEnvironment,
    LockInitCommand,
    LockJob,
    LockMatrixSource,
    LockMiseInit,
    LockMiseOptions,
    LockParallelStep,
    LockResources,
    LockResourceSpec,
    LockRetry,
    LockRule,
    LockRuleSource,
    LockRunsOnAll,
    LockStaticMatrix,
    LockStep,
    LockWorkflow,
    NeedsEntry,
    NeedsGroupEntry,
    RegexLabelMatcher,
    TeamClause,
    UserClause,
    dump_lock,
    parse_lock,
    trigger_type,
    validate_lock,
    workflow_content_hash,
)
from kici.domain.regex import regex_search
from kici.sdk import (
    All,
    ApiKey,
    Approval,
    Concurrency,
    Container,
    Hmac,
    Hook,
    I,
    Init,
    Mise,
    Need,
    Registry,
    Retry,
    RunsOn,
    RunsOnAll,
    comment,
    create,
    cron,
    delete,
    dispatch,
    dynamic_group,
    dynamic_job,
    fork,
    generic_webhook,
    job,
    job_complete,
    kici_event,
    lifecycle,
    manual,
    parallel,
    pr,
    push,
    release,
    review,
    review_comment,
    rule,
    schedule,
    skip,
    star,
    status,
    step,
    tag,
    team,
    user,
    watch,
    webhook,
    workflow,
    workflow_complete,
    workflow_run,
)
from kici.sdk.workflow import Workflow
from kici.services.compiler.build import LoadedWorkflow, Problems, TriggerBuilder, WorkflowBuilder, build_lock
from kici.services.compiler.child import compile_tree
from kici.services.compiler.sources import RepoFiles

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "workflows"
ENTRY = "from kici.sdk import workflow\n"


def noop(ctx: object) -> None:
    return None


def build(wf: Workflow, root: Path, export: str = "#wf") -> tuple[LockWorkflow, Problems]:
    entry = root / ".kici" / "workflows" / "ci.py"
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.write_text(ENTRY, encoding="utf-8")
    files = RepoFiles(root)
    problems = Problems(files)
    built = WorkflowBuilder(LoadedWorkflow(wf, export, entry), files, problems).build()
    assert problems.items == []
    lock = build_lock([built], None)
    assert validate_lock(lock) == []
    assert parse_lock(dump_lock(lock)) == lock
    return built, problems


def static_jobs(wf: LockWorkflow) -> dict[str, LockJob]:
    return {j.name: j for j in wf.jobs if isinstance(j, LockJob)}


@pytest.mark.feature("LOCK-03")
def test_targeting_matchers(tmp_path: Path) -> None:
    exact = job("exact", runs_on="linux", run=noop)
    selector = job(
        "selector",
        runs_on=RunsOn(["kici:os:*", re.compile("^gpu-", re.I)], exclude=["slow"], pick="any"),
        run=noop,
    )
    fan_out = job(
        "fan-out",
        runs_on_all=RunsOnAll(include=[All("role:web", "eu"), All("role:api")], exclude=["canary-*"]),
        on_unreachable="fail",
        include_uninitialized=False,
        run=noop,
    )
    built, _ = build(workflow("wf", jobs=[exact, selector, fan_out]), tmp_path)
    jobs = static_jobs(built)
    assert jobs["exact"].runs_on == (ExactLabelMatcher(value="linux"),)
    assert jobs["exact"].runs_on_pick == "deterministic"
    assert jobs["exact"].exclude_labels is None
    glob, regex = jobs["selector"].runs_on or ()
    assert isinstance(glob, RegexLabelMatcher)
    assert regex_search(glob.source, glob.flags, "kici:os:linux")
    assert not regex_search(glob.source, glob.flags, "kici:os:linux/x")
    assert regex == RegexLabelMatcher(source="^gpu-", flags="i")
    assert jobs["selector"].exclude_labels == (ExactLabelMatcher(value="slow"),)
    assert jobs["selector"].runs_on_pick == "any"
    spread = jobs["fan-out"]
    assert spread.runs_on is None
    assert spread.runs_on_pick is None
    assert isinstance(spread.runs_on_all, LockRunsOnAll)
    assert [len(group) for group in spread.runs_on_all.include] == [2, 1]
    assert isinstance(spread.runs_on_all.exclude[0], RegexLabelMatcher)
    assert spread.on_unreachable == "fail"
    assert spread.include_uninitialized is False


@pytest.mark.feature("LOCK-03", "LOCK-04")
def test_names_and_needs(tmp_path: Path) -> None:
    first = job(runs_on="x", run=noop)
    second = job(runs_on="x", run=noop, needs=[first])
    named = job(
        "named",
        runs_on="x",
        run=noop,
        needs=[first, Need(second, when="always"), Need("job-1", when=["failed", "success"])],
    )
    grouped = job("grouped", runs_on="x", run=noop, needs=[dynamic_group("g", when="on-skip")])
    generator = dynamic_job("g", lambda g: [])
    built, _ = build(workflow("wf", jobs=[first, generator, second, named, grouped]), tmp_path)
    jobs = static_jobs(built)
    assert list(jobs) == ["job-1", "job-2", "named", "grouped"]
    assert jobs["job-2"].needs == ("job-1",)
    assert jobs["named"].needs == (
        "job-1",
        NeedsEntry(
            name="job-2",
            run_on=("success", "failed", "cancelled", "skipped", "timed_out_stale", "drift_dropped"),
        ),
        NeedsEntry(name="job-1", run_on=("success", "failed")),
    )
    assert jobs["grouped"].needs == (NeedsGroupEntry(group="g", run_on=("success", "skipped")),)
    assert jobs["job-1"].steps == (LockStep(name="step-1", has_outputs=False),)


@pytest.mark.feature("LOCK-04")
def test_steps_parallel_and_flags(tmp_path: Path) -> None:
    checked = step(
        "checked",
        run=lambda ctx, drift: None,
        check=lambda ctx: None,
        summarize=lambda d: "x",
        when_in_sync=lambda ctx: None,
        approval=Approval(when="drift", approvers=[user("cto")], reason="prod", timeout=600),
    )
    steps = [
        noop,
        step("out", noop, outputs={"version": str}, timeout=timedelta(seconds=1.5)),
        parallel([step(noop), step("p", noop, continue_on_error=False)], max_parallel=1, fail_fast=False),
        step(
            noop,
            retry=Retry(3, delay=0.25, backoff="fixed", max_delay=2),
            on_cancel=noop,
            cleanup=Hook(noop, timeout=5),
            rules=[rule("always"), skip("never", lambda r: False)],
            cache={"key": "k", "paths": ["a"]},
        ),
        checked,
    ]
    built, _ = build(workflow("wf", jobs=[job("j", runs_on="x", steps=steps)]), tmp_path)
    entries = static_jobs(built)["j"].steps
    assert [e.name for e in entries] == ["step-1", "out", "parallel-0", "step-3", "checked"]
    one, out, group, retried, check = entries
    assert one == LockStep(name="step-1", has_outputs=False)
    assert isinstance(out, LockStep)
    assert out.has_outputs
    assert out.timeout == 1500
    assert isinstance(group, LockParallelStep)
    assert group.fail_fast is False
    assert group.max_parallel == 1
    assert [c.name for c in group.children] == ["step-2", "p"]
    assert group.children[1].continue_on_error is False
    assert isinstance(retried, LockStep)
    assert retried.retry == LockRetry(max_attempts=3, delay_ms=250, backoff="fixed", max_delay_ms=2000)
    assert retried.has_on_cancel
    assert retried.has_cleanup
    assert retried.has_rules
    assert retried.cache == (LockCache(key="k", paths=("a",)),)
    assert [r.source.index for r in retried.rules or ()] == [0, 1]
    assert retried.source_location is None  # defined in this test file, outside the repo
    assert isinstance(check, LockStep)
    assert check.has_check
    assert check.has_when_in_sync
    assert check.approval == LockApproval(
        clauses=(UserClause(user="cto"),), reason="prod", timeout_seconds=600, when="drift"
    )


@pytest.mark.feature("LOCK-03", "LOCK-05")
def test_job_options(tmp_path: Path) -> None:
    full = job(
        "full",
        runs_on="x",
        run=noop,
        description="all options",
        matrix={"os": ["linux", "mac"], "py": [3.11, 3.12]},
        include=[{"os": "win", "py": 3.12}],
        exclude=[{"os": "mac"}],
        max_parallel=2,
        fail_fast=False,
        checkout=False,
        container=Container("python:3.12", env={"A": "1"}),
        environments=["staging", lambda event: "prod"],
        env={"K": "v"},
        on_cancel=noop,
        cleanup=noop,
        on_success=noop,
        on_failure=noop,
        before_step=noop,
        after_step=noop,
        grace_period=2.5,
        timeout=timedelta(minutes=2),
        resources={"memory": "2g", "cpus": 1},
        init=[Init("make setup", timeout=30, env={"X": "y"}), "mise", Mise(cache=False, timeout=5)],
        cache=[{"key": "k", "paths": ["~/.cache"], "restore_keys": ["k-"]}],
        approval=[team("leads")],
        rules=[rule("r0"), rule("r1")],
    )
    dynamic = job(
        "dynamic",
        runs_on="x",
        run=noop,
        matrix=lambda m: ["a"],
        env=lambda event: {"A": "b"},
        container="alpine",
        environment=lambda event: "prod",
        concurrency_group=lambda event: "g",
        init=False,
    )
    listed = job(
        "listed", runs_on="x", run=noop, matrix=[1, 2], concurrency_group="fixed", environment="prod"
    )
    built, _ = build(workflow("wf", jobs=[full, lambda g: [], dynamic, listed]), tmp_path)
    jobs = static_jobs(built)
    j = jobs["full"]
    assert j.description == "all options"
    assert j.matrix == LockStaticMatrix(values=FrozenDict({"os": ("linux", "mac"), "py": (3.11, 3.12)}))
    assert j.include == (FrozenDict({"os": "win", "py": 3.12}),)
    assert j.exclude == (FrozenDict({"os": "mac"}),)
    assert (j.max_parallel, j.fail_fast, j.checkout) == (2, False, False)
    assert j.container == LockContainer(image="python:3.12", env=FrozenDict({"A": "1"}))
    assert j.environments == (
        LockEnvironment(value="staging", dynamic=False),
        LockEnvironment(value="", dynamic=True),
    )
    assert j.concurrency_group == "staging"
    assert j.env == FrozenDict({"K": "v"})
    assert not j.dynamic_env
    assert all(
        (
            j.has_on_cancel,
            j.has_cleanup,
            j.has_on_success,
            j.has_on_failure,
            j.has_before_step,
            j.has_after_step,
        )
    )
    assert j.grace_period == 2.5
    assert j.timeout == 120_000
    spec = LockResourceSpec(cpus=1, memory="2g")
    assert j.resources == LockResources(requests=spec, limits=spec)
    assert j.init == (
        LockInitCommand(run="make setup", timeout=30_000, env=FrozenDict({"X": "y"})),
        "mise",
        LockMiseInit(mise=LockMiseOptions(cache=False, timeout=5000)),
    )
    assert j.cache == (LockCache(key="k", paths=("~/.cache",), restore_keys=("k-",)),)
    assert j.approval == LockApproval(clauses=(TeamClause(team="leads"),))
    assert j.rules == (
        LockRule(label="r0", source=LockRuleSource(file=".kici/workflows/ci.py", index=0)),
        LockRule(label="r1", source=LockRuleSource(file=".kici/workflows/ci.py", index=1)),
    )
    d = jobs["dynamic"]
    assert d.matrix == LockDynamicMatrix(
        source=LockMatrixSource(file=".kici/workflows/ci.py", job_name="dynamic")
    )
    assert (d.env, d.dynamic_env) == (None, True)
    assert (d.concurrency_group, d.dynamic_concurrency_group) == (None, True)
    assert d.environments == (LockEnvironment(value="", dynamic=True),)
    assert d.container == "alpine"
    assert d.init is False
    assert d.rules is None
    listed_job = jobs["listed"]
    assert listed_job.matrix == LockStaticMatrix(values=(1, 2))
    assert listed_job.concurrency_group == "fixed"
    assert built.jobs[1] == LockDynamicJobFn(source=built.jobs[1].source)  # type: ignore[union-attr]


@pytest.mark.feature("LOCK-05")
def test_job_rule_index_is_job_position_times_100(tmp_path: Path) -> None:
    jobs = [job(f"j{i}", runs_on="x", run=noop, rules=[rule("a"), rule("b")]) for i in range(3)]
    built, _ = build(workflow("wf", jobs=[jobs[0], lambda g: [], jobs[1], jobs[2]]), tmp_path)
    indexes = [[r.source.index for r in j.rules or ()] for j in static_jobs(built).values()]
    assert indexes == [[0, 1], [200, 201], [300, 301]]


@pytest.mark.feature("LOCK-05")
def test_generators(tmp_path: Path) -> None:
    plain = job("plain", runs_on="x", run=noop)
    entries = [
        plain,
        lambda g: [],
        dynamic_job("tagged", lambda g: []),
        dynamic_job("aware", needs=[plain, Need("plain", when="always")], generate=lambda g: []),
    ]
    built, _ = build(workflow("wf", jobs=entries), tmp_path)
    bare, tagged, aware = built.jobs[1:]
    assert bare == LockDynamicJobFn(source=bare.source)  # type: ignore[union-attr]
    assert isinstance(tagged, LockDynamicJobFn)
    assert isinstance(aware, LockDynamicJobFn)
    assert isinstance(bare, LockDynamicJobFn)
    assert (bare.source.index, tagged.source.index, aware.source.index) == (1, 2, 3)
    assert (tagged.group, tagged.needs, tagged.result_aware) == ("tagged", None, False)
    assert aware.group == "aware"
    assert aware.result_aware
    assert aware.needs == (
        "plain",
        NeedsEntry(
            name="plain",
            run_on=("success", "failed", "cancelled", "skipped", "timed_out_stale", "drift_dropped"),
        ),
    )


@pytest.mark.feature("LOCK-05", "LOCK-06")
def test_workflow_options_and_hash_files(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("A", encoding="utf-8")
    (tmp_path / "src" / ".hidden").write_text("H", encoding="utf-8")
    (tmp_path / "src" / "skip.log").write_text("L", encoding="utf-8")
    (tmp_path / "Makefile").write_text("all:\n", encoding="utf-8")
    (tmp_path / "link").symlink_to(tmp_path / "Makefile")
    wf = workflow(
        "wf",
        jobs=[job("j", runs_on="x", run=noop)],
        rules=[rule("a"), skip("b", lambda r: True)],
        description="described",
        hash_files=["src/**", "!src/*.log", "Makefile", "link", "Makefile"],
        registries=[Registry("https://pypi.example/simple", "prod:TOKEN", scope="acme")],
        install_env=["prod:PIP_EXTRA"],
        timeout=90,
        on_cancel=noop,
        cleanup=noop,
        on_success=noop,
        on_failure=noop,
        concurrency=Concurrency(group=lambda c: "g", cancel_in_progress=False, max=2),
        approval=True,
    )
    built, _ = build(wf, tmp_path)
    assert built.source.file == ".kici/workflows/ci.py"
    assert built.source.export == "#wf"
    assert [r.source.index for r in built.rules or ()] == [0, 1]
    assert built.description == "described"
    assert built.hash_files == ("src/**", "!src/*.log", "Makefile", "link", "Makefile")
    assert built.resolved_hash_files == ("Makefile", "src/a.txt")
    digest = "Makefile\nall:\nsrc/a.txt\nA"
    assert built.content_hash == workflow_content_hash(ENTRY, digest)
    assert built.registries is not None
    assert built.registries[0].token_secret == "prod:TOKEN"
    assert built.install_env == ("prod:PIP_EXTRA",)
    assert built.timeout == 90_000
    assert (built.has_on_cancel, built.has_cleanup, built.has_on_success, built.has_on_failure) == (True,) * 4
    assert built.concurrency is not None
    assert (built.concurrency.has_group, built.concurrency.cancel_in_progress, built.concurrency.max) == (
        True,
        False,
        2,
    )
    assert built.approval == LockApproval()


@pytest.mark.feature("LOCK-06")
def test_content_hash_without_hash_files(tmp_path: Path) -> None:
    built, _ = build(workflow("wf", jobs=[job("j", runs_on="x", run=noop)]), tmp_path)
    assert built.content_hash == workflow_content_hash(ENTRY, None)
    assert built.resolved_hash_files is None
    assert built.hash_files is None


def _triggers() -> list[tuple[object, list[str]]]:
    inputs = {
        "n": I.integer(default=1, min=0),
        "flag": I.boolean(optional=True),
        "lit": I.literal("x", optional=True),
    }
    return [
        (
            pr(
                target=["main", re.compile("^rel/", re.I)], source="feat/*", paths=["src/**"], repos=["org/*"]
            ),
            ["pr"],
        ),
        (push(branches="main"), ["push"]),
        (push(branches="main", tags=["v*"], repos=["org/x"]), ["push", "tag"]),
        (tag(patterns="v*"), ["tag"]),
        (comment(actions="created", source="pr", body_match=re.compile("^/deploy")), ["comment"]),
        (review(states=["approved"]), ["review"]),
        (review_comment(), ["review_comment"]),
        (release(actions="published"), ["release"]),
        (dispatch(types=["deploy"], inputs=inputs), ["dispatch"]),
        (manual(inputs={"region": I.enum("eu", "us", default="eu")}), ["dispatch"]),
        (create(ref_types="tag", patterns="v*"), ["create"]),
        (delete(ref_types="branch"), ["delete"]),
        (status(contexts=["ci/*"], states=["failure"]), ["status"]),
        (workflow_run(actions="completed", workflows=["ci"], conclusions=["failure"]), ["workflow_run"]),
        (fork(), ["fork"]),
        (star(actions="created"), ["star"]),
        (watch(), ["watch"]),
        (webhook(events=["deployment"], actions=["created"]), ["webhook"]),
        (kici_event(name="e", match={"$.a": [1, 2]}, not_={"$.b": None}, source="org/x"), ["kici_event"]),
        (workflow_complete(name="ci", status=["failed"]), ["workflow_complete"]),
        (job_complete(workflow="ci", job="test", status="skipped"), ["job_complete"]),
        (generic_webhook(source="grafana", auth=Hmac("prod:HOOK", "x-sig")), ["generic_webhook"]),
        (generic_webhook(source="pager", auth=ApiKey("prod:KEY")), ["generic_webhook"]),
        (
            schedule(cron="0 3 * * *", timezone="Europe/Berlin", description="nightly", inputs=inputs),
            ["schedule"],
        ),
        (cron("*/5 * * * *"), ["schedule"]),
        (lifecycle(events=["job_failed"], sources=["org/*"], description="alerts"), ["lifecycle"]),
    ]


@pytest.mark.feature("LOCK-03")
@pytest.mark.parametrize(("trigger", "tags"), _triggers())
def test_trigger_table(trigger: object, tags: list[str], tmp_path: Path) -> None:
    """L6: ``push(tags=...)`` makes two triggers, every other factory exactly one."""
    problems = Problems(RepoFiles(tmp_path))
    built = TriggerBuilder(problems).build(trigger)
    assert problems.items == []
    assert [trigger_type(t) for t in built] == tags


@pytest.mark.feature("LOCK-03")
def test_trigger_details(tmp_path: Path) -> None:
    by_type: dict[str, Any] = {}
    for trigger, _ in _triggers():
        for built in TriggerBuilder(Problems(RepoFiles(tmp_path))).build(trigger):
            by_type.setdefault(trigger_type(built), built)
    pr_trigger = by_type["pr"]
    assert pr_trigger.target_branches == (
        LockBranchPattern(type="glob", pattern="main"),
        LockBranchPattern(type="regex", pattern="^rel/", flags="i"),
    )
    assert pr_trigger.source_branches == (LockBranchPattern(type="glob", pattern="feat/*"),)
    assert pr_trigger.events == ("opened", "synchronize", "reopened", "closed")
    assert by_type["push"].repos is None
    comment_trigger = by_type["comment"]
    assert comment_trigger.body_match == LockBranchPattern(type="regex", pattern="^/deploy")
    dispatch_trigger = by_type["dispatch"]
    assert dispatch_trigger.inputs["n"].default == 1
    assert dispatch_trigger.inputs["n"].min == 0
    assert dispatch_trigger.inputs["lit"].literal == "x"
    assert dispatch_trigger.inputs["flag"].optional
    assert by_type["kici_event"].event_name == "e"
    assert by_type["kici_event"].match == FrozenDict({"$.a": (1, 2)})
    assert by_type["kici_event"].not_ == FrozenDict({"$.b": None})
    assert by_type["generic_webhook"].auth.method == "hmac-sha256"
    assert by_type["generic_webhook"].auth.signature_header == "x-sig"
    schedule_trigger = by_type["schedule"]
    assert (schedule_trigger.cron_expression, schedule_trigger.timezone) == ("0 3 * * *", "Europe/Berlin")
    assert schedule_trigger.description == "nightly"
    assert by_type["lifecycle"].sources == ("org/*",)


@pytest.mark.feature("LOCK-03", "LOCK-04", "LOCK-05", "LOCK-06", "LOCK-09", "CLI-06")
def test_spec_examples_compile_and_validate(tmp_path: Path) -> None:
    workflows = tmp_path / ".kici" / "workflows"
    shutil.copytree(FIXTURES, workflows)
    (tmp_path / "Makefile").write_text("test:\n", encoding="utf-8")
    lock, diagnostics = compile_tree(tmp_path / ".kici", tmp_path)
    assert [d for d in diagnostics if d.is_error] == []
    assert lock is not None
    assert validate_lock(lock) == []
    assert [w.name for w in lock.workflows] == ["ci", "deploy", "fleet-nightly", "fleet-audit", "monorepo"]
    assert [w.source.export for w in lock.workflows] == ["#ci", "#deploy", "#nightly", "#audit", "#monorepo"]
    assert lock.source == lock.workflows[0].source
    monorepo = lock.workflows[-1]
    assert monorepo.resolved_hash_files == ("Makefile",)
    assert isinstance(monorepo.jobs[3], LockDynamicJobFn)
    assert monorepo.jobs[3].result_aware
    ci_jobs = static_jobs(lock.workflows[0])
    assert ci_jobs["deploy"].grace_period == 30
    assert ci_jobs["deploy"].steps[0].source_location is not None  # type: ignore[union-attr]
    assert ci_jobs["deploy"].steps[0].source_location.file == ".kici/workflows/ci.py"  # type: ignore[union-attr]
    assert parse_lock(dump_lock(lock)) == lock
