"""One example per re-validation rule (LOCK-12; spec 00 §2.7 L5/L7, §4 messages)."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from kici.domain.lockfile import (
    ExactLabelMatcher,
    FrozenDict,
    LockApproval,
    LockBranchPattern,
    LockCache,
    LockDynamicJobFn,
    LockFile,
    LockFileParseError,
    LockGeneratorSource,
    LockInitCommand,
    LockInlineValue,
    LockJob,
    LockParallelStep,
    LockRegistry,
    LockResources,
    LockResourceSpec,
    LockRetry,
    LockRunsOnAll,
    LockSchemaVersionError,
    LockSource,
    LockStaticMatrix,
    LockStep,
    LockWorkflow,
    NeedsEntry,
    NeedsGroupEntry,
    PushTrigger,
    RegexLabelMatcher,
    StatusTrigger,
    assert_valid_lock,
    dump_lock,
    load_lock,
    validate_lock,
)

pytestmark = pytest.mark.feature("LOCK-12")

HASH = "ab" * 32
UUID = "0B6B5F5E-61B0-4C5A-9D3F-6F1F4F1E2A3B"
NOT_RUNNABLE = "runOn must be a non-empty subset"
SOURCE = LockSource(file=".kici/workflows/ci.py", export="#ci")
LINUX = (ExactLabelMatcher(value="linux"),)


def job(name: str = "build", **changes: Any) -> LockJob:
    return attrs.evolve(LockJob(name=name, runs_on=LINUX, runs_on_pick="deterministic"), **changes)


def lock(*jobs: LockJob | LockDynamicJobFn, **changes: Any) -> LockFile:
    workflow = attrs.evolve(LockWorkflow(name="ci", source=SOURCE, content_hash=HASH, jobs=jobs), **changes)
    return LockFile(source=SOURCE, content_hash=HASH, workflows=(workflow,))


def issues(value: LockFile) -> list[str]:
    return [str(issue) for issue in validate_lock(value)]


def test_a_plain_lock_is_valid() -> None:
    assert issues(lock(job("a"), job("b", needs=("a",)))) == []


@pytest.mark.feature("LOCK-03")
@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"runs_on_all": LockRunsOnAll(include=(LINUX,))},
            ": job('build'): runsOn and runsOnAll are mutually exclusive",
        ),
        (
            {"runs_on": None, "runs_on_pick": None},
            ": job('build'): one of runsOn or runsOnAll is required",
        ),
        ({"runs_on_pick": None}, ".runsOnPick: job('build'): runsOnPick is required with runsOn"),
        ({"runs_on": ()}, ".runsOn: job('build'): runsOn must name at least one label"),
        ({"exclude_labels": ()}, ".excludeLabels: job('build'): excludeLabels must be non-empty"),
        ({"max_parallel": 0}, ".maxParallel: job 'build': maxParallel must be >= 1"),
        ({"runs_on": (ExactLabelMatcher(value=""),)}, ".runsOn[0]: job 'build' runsOn: empty label"),
        (
            {"runs_on": (RegexLabelMatcher(source="(a+)+$", flags="i"),)},
            ".runsOn[0]: job 'build' runsOn: regex /(a+)+$/i is rejected: ReDoS-prone",
        ),
        (
            {"runs_on": (RegexLabelMatcher(source="(", flags=""),)},
            ".runsOn[0]: job 'build' runsOn: regex /(/ is rejected: invalid regex",
        ),
        (
            {"runs_on": (RegexLabelMatcher(source="a", flags="x"),)},
            ".runsOn[0]: job 'build' runsOn: regex /a/x is rejected: unsupported flag 'x'",
        ),
        (
            {"runs_on": None, "runs_on_pick": None, "runs_on_all": LockRunsOnAll(include=())},
            ".runsOnAll.include: job('build'): runsOnAll.include must have at least one group",
        ),
        (
            {"runs_on": None, "runs_on_pick": None, "runs_on_all": LockRunsOnAll(include=((),))},
            ".runsOnAll.include[0]: job('build'): runsOnAll group must be non-empty",
        ),
        (
            {
                "runs_on": None,
                "runs_on_pick": None,
                "runs_on_all": LockRunsOnAll(include=(LINUX,)),
                "exclude_labels": LINUX,
            },
            ".excludeLabels: job('build'): excludeLabels is only valid with runsOn",
        ),
        (
            {"name": "0b6b5f5e-61b0-4c5a-9d3f-6f1f4f1e2a3b"},
            f'.name: job name "{UUID.lower()}" is an unresolved job id',
        ),
        (
            {
                "matrix": LockStaticMatrix(values=FrozenDict({"a": tuple(range(16)), "b": tuple(range(16))})),
                "include": (FrozenDict({"a": 99}),),
            },
            '.matrix: Static matrix for job "build" in workflow "ci" would generate 257 jobs',
        ),
        ({"timeout": 0}, ".timeout: job timeout must be >= 1"),
        ({"grace_period": -1}, ".gracePeriod: gracePeriod must be >= 0"),
        ({"cache": (LockCache(key="", paths=()),)}, ".cache[0].key: cache key must be non-empty"),
        (
            {"resources": LockResources(limits=LockResourceSpec(cpus=0, memory="2 GB"))},
            '.resources.limits.cpus: Job "build": invalid resources -- cpus must be in (0, 256]',
        ),
        ({"init": LockInitCommand(run=" ")}, ".init.run: job('build'): init[0].run must be a non-empty"),
        (
            {"init": ("mise", LockInitCommand(run=""))},
            ".init[1].run: job('build'): init[1].run must be a non-empty command",
        ),
        (
            {"approval": LockApproval(when="drift")},
            '.approval.when: approval.when "drift" is only valid on steps',
        ),
        ({"env": LockInlineValue(expression=" ")}, ".env.expression: inline expression must be"),
    ],
)
def test_job_rules(changes: dict[str, Any], expected: str) -> None:
    found = issues(lock(job(**changes)))
    assert any(line.startswith("workflows[0].jobs[0]" + expected) for line in found), found


@pytest.mark.parametrize(
    ("needs", "expected"),
    [
        (("ghost",), 'needs[0]: Job "build" depends on non-existent job "ghost"'),
        (("build",), 'needs[0]: Job "build" depends on itself'),
        ((UUID,), f"needs[0]: needs '{UUID}' is an unresolved job id"),
        ((NeedsEntry(name="lint", run_on=()),), f"needs[0].runOn: needs 'lint': {NOT_RUNNABLE}"),
        ((NeedsEntry(name="lint", run_on=("done",)),), f"needs[0].runOn: needs 'lint': {NOT_RUNNABLE}"),
        (
            (NeedsGroupEntry(group="nope", run_on=("success",)),),
            'needs[0]: depends on non-existent dynamic group "nope"',
        ),
    ],
)
def test_needs_rules(needs: tuple[Any, ...], expected: str) -> None:
    found = issues(lock(job("lint"), job(needs=needs)))
    assert any(line.startswith(f"workflows[0].jobs[1].{expected}") for line in found), found


def test_cycles_and_groups() -> None:
    cyclic = lock(job("a", needs=("b",)), job("b", needs=(NeedsEntry(name="a", run_on=("success",)),)))
    assert 'workflows[0].jobs: Circular dependency in workflow "ci": a -> b -> a' in issues(cyclic)
    generator = LockDynamicJobFn(
        source=LockGeneratorSource(file=SOURCE.file, index=1), group="g", needs=("a",)
    )
    via_group = lock(job("a", depends_on_groups=("g",)), generator)
    assert any("Circular dependency" in line for line in issues(via_group))
    ok = lock(
        job("a"), generator, job("c", needs=(NeedsGroupEntry(group="g", run_on=("success", "skipped")),))
    )
    assert issues(ok) == []
    misplaced = lock(attrs.evolve(generator, source=LockGeneratorSource(file=SOURCE.file, index=3)))
    assert "workflows[0].jobs[0].source.index: source.index 3 is not this entry's position" in issues(
        misplaced
    )


@pytest.mark.feature("LOCK-04")
def test_step_rules() -> None:
    steps = (
        LockParallelStep(name="p", fail_fast=True, max_parallel=0, children=()),
        LockParallelStep(
            name="q",
            fail_fast=False,
            children=(LockStep(name="x", has_outputs=False), LockStep(name="x", has_outputs=False)),
        ),
        LockStep(
            name="r",
            has_outputs=False,
            retry=LockRetry(max_attempts=0, delay_ms=9, backoff="fixed", max_delay_ms=5),
        ),
        LockStep(name="s", has_outputs=False, approval=LockApproval(when="drift")),
        LockStep(name="t", has_outputs=False, has_check=True, approval=LockApproval(when="drift")),
    )
    found = issues(lock(job(steps=steps)))
    prefix = "workflows[0].jobs[0].steps"
    assert found == [
        f"{prefix}[0].children: job step: empty parallel group not allowed",
        f"{prefix}[0].maxParallel: maxParallel must be >= 1",
        f"{prefix}[1].children[1]: duplicate step name 'x' in parallel group",
        f"{prefix}[2].retry.maxAttempts: retry.max_attempts must be >= 1",
        f"{prefix}[2].retry.maxDelayMs: retry.maxDelayMs must be >= retry.delayMs",
        f'{prefix}[3].approval.when: approval.when "drift" requires a check facet',
    ]


@pytest.mark.feature("LOCK-02")
def test_trigger_patterns_are_checked() -> None:
    push = PushTrigger(
        branches=(
            LockBranchPattern(type="regex", pattern="(x*)*"),
            LockBranchPattern(type="glob", pattern="main", flags="i"),
            LockBranchPattern(type="glob", pattern=""),
        ),
        paths=("!",),
    )
    found = issues(lock(job(), triggers=(push, StatusTrigger(contexts=("ci/*",)))))
    assert [line.split(":")[0] for line in found] == [
        "workflows[0].triggers[0].branches[0]",
        "workflows[0].triggers[0].branches[1]",
        "workflows[0].triggers[0].branches[2]",
        "workflows[0].triggers[0].paths[0]",
    ]


def test_workflow_rules() -> None:
    registries = (
        LockRegistry(url="ftp://x", token_secret="TOKEN"),
        LockRegistry(url="https://a", token_secret="env:T"),
        LockRegistry(url="https://b", scope="@s", token_secret="env:T"),
        LockRegistry(url="https://c", scope="@s", token_secret="env:T"),
    )
    found = issues(
        lock(job(), registries=registries, compile_schema_version=4, content_hash="XYZ", timeout=0)
    )
    assert found == [
        "workflows[0].compileSchemaVersion: compileSchemaVersion 4 is not supported (expected 5)",
        "workflows[0].contentHash: contentHash must be 64 lowercase hex digits",
        "workflows[0].timeout: workflow timeout must be >= 1",
        "workflows[0].registries[0].url: registry URL must be http(s): ftp://x",
        "workflows[0].registries[0].tokenSecret: tokenSecret must use qualified <environment>:<secret-name> "
        "syntax (got: TOKEN)",
        "workflows[0].registries[3].scope: duplicate registry scope @s",
        "workflows[0].registries: at most one registry may be unscoped (the primary index)",
    ]
    assert issues(lock(job(), compile_schema_version=0, content_hash="")) == []
    assert issues(lock(job(), compile_schema_version=0)) == [
        'workflows[0].contentHash: contentHash must be "" when compileSchemaVersion is 0'
    ]


def test_duplicates() -> None:
    value = lock(job("a"), job("a"))
    value = attrs.evolve(value, workflows=value.workflows * 2)
    found = issues(value)
    assert 'workflows[0].jobs[1].name: Duplicate job name "a" in workflow "ci"' in found
    assert 'workflows[1].name: Duplicate workflow name: "ci"' in found


@pytest.mark.feature("LOCK-01")
def test_assert_and_load_raise_parse_errors() -> None:
    with pytest.raises(LockSchemaVersionError):
        assert_valid_lock(attrs.evolve(lock(job()), schema_version=2))
    assert issues(attrs.evolve(lock(job()), schema_version=2))[0].startswith(
        "schemaVersion: Lock file schemaVersion 2"
    )
    bad = lock(job(runs_on=(RegexLabelMatcher(source="(a|a)*(b+)+", flags=""),), max_parallel=0))
    with pytest.raises(LockFileParseError) as info:
        load_lock(dump_lock(bad))
    assert info.value.path == "workflows[0].jobs[0].runsOn[0]"
    assert "(and 1 more problems)" in str(info.value)
    assert load_lock(dump_lock(lock(job()))) == lock(job())
