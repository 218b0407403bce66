"""Hypothesis strategies generating *valid* lock files and their parts.

Everything drawn here parses, round-trips and passes ``validate_lock``: names are
unique where the spec requires it, ``needs`` only point backwards (so the job
graph is acyclic), regexes come from a fixed list of safe patterns, and bounded
fields respect their bounds. Reuse the building blocks (``label_matchers``,
``triggers``, ``lock_jobs`` ...) in other suites that need lock models.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any, TypeVar

import attrs
from hypothesis import strategies as st

from kici.domain.lockfile import (
    TERMINAL_JOB_STATUSES,
    UNSET,
    CommentTrigger,
    CreateTrigger,
    DeleteTrigger,
    DispatchTrigger,
    ExactLabelMatcher,
    ForkTrigger,
    FrozenDict,
    GenericWebhookAuth,
    GenericWebhookTrigger,
    InputDescriptor,
    JobCompleteTrigger,
    JsonValue,
    KiciEventTrigger,
    LifecycleTrigger,
    LockApproval,
    LockBranchPattern,
    LockCache,
    LockConcurrency,
    LockContainer,
    LockDynamicJobFn,
    LockDynamicMatrix,
    LockEnvironment,
    LockFile,
    LockGeneratorSource,
    LockInitCommand,
    LockInlineValue,
    LockJob,
    LockMatrixSource,
    LockMiseInit,
    LockMiseOptions,
    LockParallelStep,
    LockRegistry,
    LockResources,
    LockResourceSpec,
    LockRetry,
    LockRule,
    LockRuleSource,
    LockRunsOnAll,
    LockSource,
    LockSourceLocation,
    LockStaticMatrix,
    LockStep,
    LockWorkflow,
    NeedsEntry,
    NeedsGroupEntry,
    PrTrigger,
    PushTrigger,
    RegexLabelMatcher,
    ReleaseTrigger,
    ReviewCommentTrigger,
    ReviewTrigger,
    ScheduleTrigger,
    StarTrigger,
    StatusTrigger,
    TagTrigger,
    TeamClause,
    UserClause,
    WatchTrigger,
    WebhookTrigger,
    WorkflowCompleteTrigger,
    WorkflowRunTrigger,
    with_content_hash,
)
from kici.domain.lockfile.fields import json_key

T = TypeVar("T")

SAFE_REGEXES = (
    "^main$",
    r"^release/v\d+$",
    "-canary$",
    r"^py3\.1[0-9]$",
    "(a|b)+c",
    "^(web|db)-[0-9]+$",
    "x?y",
)
GLOBS = ("main", "release/*", "feature/**", "v*.*", "src/**", "**/*.py", "docs/{a,b}/*", "*.md", "kici:os:*")
FLAGS = ("", "i", "m", "s", "im")


def opt(strategy: st.SearchStrategy[T]) -> st.SearchStrategy[T | None]:
    return st.none() | strategy


def tuples(
    strategy: st.SearchStrategy[T], *, min_size: int = 0, max_size: int = 3
) -> st.SearchStrategy[tuple[T, ...]]:
    return st.lists(strategy, min_size=min_size, max_size=max_size).map(tuple)


NAMES = ("build", "test", "lint", "deploy", "docs", "pkg-a", "e2e", "release", "a", "x-1", "ci", "nightly")
names = st.sampled_from(NAMES)
# Hashed text always comes from ``bytes.decode("utf-8", "surrogateescape")``, so the only surrogates it can
# hold are the escaped bytes U+DC80..U+DCFF; other lone surrogates cannot reach the hash.
DECODED_CHARS = st.characters(exclude_categories=("Cs",)) | st.characters(
    min_codepoint=0xDC80, max_codepoint=0xDCFF
)
free_text = st.text(alphabet=st.sampled_from('abc XYZ-_./é€"\\\n\t'), max_size=8)
words = st.sampled_from(("opened", "created", "deleted", "success", "push", "main", "x"))
hex64 = st.binary(min_size=1, max_size=8).map(lambda b: hashlib.sha256(b).hexdigest())
ms = st.integers(min_value=1, max_value=10**7)
positive = st.integers(min_value=1, max_value=64)
env_keys = st.sampled_from(("A", "PATH_X", "TARGET", "_Z1"))
env_maps = st.dictionaries(env_keys, free_text, max_size=3).map(FrozenDict)
globs = st.sampled_from(GLOBS)
negatable_globs = st.builds(lambda neg, g: ("!" if neg else "") + g, st.booleans(), globs)
inline_values = st.builds(
    LockInlineValue, expression=st.sampled_from(["'prod'", "event.target_branch", "{'A': 'b'}"])
)

json_scalars: st.SearchStrategy[JsonValue] = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**12), max_value=10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | free_text
)
json_values: st.SearchStrategy[JsonValue] = st.recursive(
    json_scalars,
    lambda inner: tuples(inner) | st.dictionaries(free_text, inner, max_size=3).map(FrozenDict),
    max_leaves=6,
)
json_objects = st.dictionaries(
    st.sampled_from(["$.mode", "$.a.b", "$['x']", "$.n[0]"]), json_values, max_size=3
).map(FrozenDict)


# --- shared shapes -------------------------------------------------------------------------------

regex_matchers = st.builds(
    RegexLabelMatcher, source=st.sampled_from(SAFE_REGEXES), flags=st.sampled_from(FLAGS)
)
exact_matchers = st.builds(
    ExactLabelMatcher, value=st.sampled_from(["linux", "kici:os:linux", "py", "role:web", "gpu"])
)
label_matchers = exact_matchers | regex_matchers

branch_patterns = st.builds(LockBranchPattern, type=st.just("glob"), pattern=globs) | st.builds(
    LockBranchPattern,
    type=st.just("regex"),
    pattern=st.sampled_from(SAFE_REGEXES),
    flags=opt(st.sampled_from(FLAGS)),
)

input_descriptors = st.builds(
    InputDescriptor,
    type=st.sampled_from(["string", "number", "integer", "boolean", "enum", "literal"]),
    optional=st.booleans(),
    nullable=st.booleans(),
    default=st.just(UNSET) | json_scalars,
    values=opt(tuples(json_scalars, min_size=1)),
    literal=st.just(UNSET) | json_scalars,
    min=opt(st.integers(-100, 100) | st.floats(-1e6, 1e6)),
    max=opt(st.integers(-100, 100)),
    pattern=opt(st.sampled_from(SAFE_REGEXES)),
    description=opt(free_text),
)
inputs_maps = st.dictionaries(names, input_descriptors, min_size=1, max_size=2).map(FrozenDict)

repos = opt(tuples(st.sampled_from(["org/*", "!org/private", "acme/api", "**"])))
actions = tuples(words)

triggers = st.one_of(
    st.builds(
        PrTrigger,
        events=tuples(st.sampled_from(["opened", "synchronize", "reopened", "closed", "labeled"])),
        target_branches=tuples(branch_patterns),
        source_branches=tuples(branch_patterns),
        paths=tuples(negatable_globs),
        repos=repos,
    ),
    st.builds(PushTrigger, branches=tuples(branch_patterns), paths=tuples(negatable_globs), repos=repos),
    st.builds(TagTrigger, patterns=tuples(branch_patterns), repos=repos),
    st.builds(
        CommentTrigger,
        actions=actions,
        source=opt(st.sampled_from(["issue", "pr"])),
        body_match=opt(branch_patterns),
        repos=repos,
    ),
    st.builds(ReviewTrigger, actions=actions, states=actions, repos=repos),
    st.builds(ReviewCommentTrigger, actions=actions, repos=repos),
    st.builds(ReleaseTrigger, actions=actions, repos=repos),
    st.builds(DispatchTrigger, types=actions, inputs=opt(inputs_maps), repos=repos),
    st.builds(
        CreateTrigger,
        ref_types=tuples(st.sampled_from(["branch", "tag"])),
        patterns=tuples(branch_patterns),
        repos=repos,
    ),
    st.builds(
        DeleteTrigger,
        ref_types=tuples(st.sampled_from(["branch", "tag"])),
        patterns=tuples(branch_patterns),
        repos=repos,
    ),
    st.builds(StatusTrigger, contexts=tuples(globs), states=actions, repos=repos),
    st.builds(WorkflowRunTrigger, actions=actions, workflows=tuples(names), conclusions=actions, repos=repos),
    st.builds(ForkTrigger, repos=repos),
    st.builds(StarTrigger, actions=actions, repos=repos),
    st.builds(WatchTrigger, actions=actions, repos=repos),
    st.builds(WebhookTrigger, events=tuples(words, min_size=1), actions=actions, repos=repos),
    st.builds(
        KiciEventTrigger,
        event_name=names,
        match=opt(json_objects),
        not_=opt(json_objects),
        source=opt(free_text),
    ),
    st.builds(WorkflowCompleteTrigger, name=opt(names), status=opt(tuples(words)), source=opt(free_text)),
    st.builds(
        JobCompleteTrigger, workflow=opt(names), job=opt(names), status=opt(tuples(words)), source=opt(names)
    ),
    st.builds(
        GenericWebhookTrigger,
        source=names,
        events=opt(tuples(words)),
        match=opt(json_objects),
        not_=opt(json_objects),
        auth=opt(
            st.builds(
                GenericWebhookAuth, method=st.just("hmac-sha256"), secret=names, signature_header=opt(words)
            )
            | st.builds(GenericWebhookAuth, method=st.just("api-key"), secret=names, header=opt(words))
        ),
        path=opt(st.just("/hooks/x")),
    ),
    st.builds(
        ScheduleTrigger,
        cron_expression=st.sampled_from(["0 3 * * *", "*/5 * * * *", "0 0 1 * 1-5"]),
        timezone=st.sampled_from(["UTC", "Europe/Berlin"]),
        description=opt(free_text),
        inputs=opt(inputs_maps),
    ),
    st.builds(
        LifecycleTrigger,
        events=tuples(words, min_size=1),
        sources=opt(tuples(names)),
        description=opt(free_text),
    ),
)

rule_sources = st.builds(LockRuleSource, file=st.just(".kici/workflows/ci.py"), index=st.integers(0, 500))
lock_rules = st.builds(LockRule, label=free_text, source=rule_sources)
caches = st.builds(
    LockCache,
    key=words,
    paths=tuples(st.sampled_from(["~/.cache/uv", ".venv", "node_modules"]), min_size=1),
    restore_keys=opt(tuples(words)),
)
clauses = st.builds(TeamClause, team=names) | st.builds(UserClause, user=names)


def _approvals(*, allow_drift: bool) -> st.SearchStrategy[LockApproval]:
    return st.builds(
        LockApproval,
        clauses=tuples(clauses),
        reason=opt(free_text),
        timeout_seconds=opt(st.integers(1, 86_400) | st.floats(1, 1e6)),
        when=st.sampled_from(["always", "drift"] if allow_drift else ["always"]),
    )


approvals = _approvals(allow_drift=False)
check_step_approvals = _approvals(allow_drift=True)


def some(draw: st.DrawFn, fields: dict[str, st.SearchStrategy[Any]]) -> dict[str, Any]:
    """Draw a subset of optional fields with one mask draw (much cheaper than one draw per field)."""
    mask = draw(st.integers(0, 2 ** len(fields) - 1))
    return {key: draw(strategy) for bit, (key, strategy) in enumerate(fields.items()) if mask >> bit & 1}


def flags(draw: st.DrawFn, *keys: str) -> dict[str, bool]:
    """Draw several "only when true" flags with one draw."""
    mask = draw(st.integers(0, 2 ** len(keys) - 1))
    return {key: bool(mask >> bit & 1) for bit, key in enumerate(keys)}


def pick(draw: st.DrawFn, items: list[str]) -> str:
    return items[draw(st.integers(0, len(items) - 1))]


# --- steps ---------------------------------------------------------------------------------------

retries = st.builds(
    lambda attempts, delay, backoff, extra: LockRetry(
        max_attempts=attempts, delay_ms=delay, backoff=backoff, max_delay_ms=delay + extra
    ),
    st.integers(1, 10),
    st.integers(0, 10_000),
    st.sampled_from(["fixed", "exponential"]),
    st.integers(0, 60_000),
)
_STEP_OPTIONALS: dict[str, st.SearchStrategy[Any]] = {
    "continue_on_error": st.booleans(),
    "timeout": ms,
    "retry": retries,
    "cache": tuples(caches, min_size=1, max_size=2),
    "source_location": st.builds(
        LockSourceLocation, file=st.just(".kici/workflows/ci.py"), line=positive, column=positive
    ),
    "rules": tuples(lock_rules, min_size=1),
    "approval": approvals,
}
_CHECK_STEP_OPTIONALS = {**_STEP_OPTIONALS, "approval": check_step_approvals}
_STEP_FLAGS = ("has_outputs", "has_rules", "has_on_cancel", "has_cleanup", "has_check", "has_when_in_sync")


def step_named(draw: st.DrawFn, name: str) -> LockStep:
    bits = flags(draw, *_STEP_FLAGS)
    optional = some(draw, _CHECK_STEP_OPTIONALS if bits["has_check"] else _STEP_OPTIONALS)
    return LockStep(name=name, **bits, **optional)


@st.composite
def lock_steps(draw: st.DrawFn) -> LockStep:
    return step_named(draw, draw(names))


@st.composite
def parallel_steps(draw: st.DrawFn) -> LockParallelStep:
    child_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    return LockParallelStep(
        name=draw(names),
        fail_fast=draw(st.booleans()),
        max_parallel=draw(opt(positive)),
        children=tuple(step_named(draw, n) for n in child_names),
    )


step_entries = lock_steps() | parallel_steps()


# --- jobs ----------------------------------------------------------------------------------------

run_on = st.lists(st.sampled_from(TERMINAL_JOB_STATUSES), min_size=1, max_size=6, unique=True).map(tuple)
static_matrices = st.builds(
    LockStaticMatrix,
    values=tuples(json_scalars, min_size=1)
    | st.dictionaries(names, tuples(json_scalars, min_size=1), min_size=1, max_size=2).map(FrozenDict),
)
dynamic_matrices = st.builds(
    LockDynamicMatrix,
    source=st.builds(LockMatrixSource, file=st.just(".kici/workflows/ci.py"), job_name=names),
)
matrices = static_matrices | dynamic_matrices
matrix_entries = tuples(st.dictionaries(names, json_scalars, max_size=2).map(FrozenDict), max_size=2)
resource_specs = st.builds(
    LockResourceSpec,
    cpus=opt(st.integers(1, 256) | st.floats(0.1, 256)),
    memory=opt(st.sampled_from(["2g", "512m", "1.5G", "100 k"])),
)
init_entries = st.one_of(
    st.sampled_from(["mise", "auto"]),
    st.builds(
        LockInitCommand,
        run=st.sampled_from(["make deps", "uv sync"]),
        shell=st.sampled_from(["bash", "sh"]),
        cache=opt(tuples(caches, min_size=1, max_size=1)),
        timeout=ms,
        env=opt(env_maps),
    ),
    st.builds(
        LockMiseInit,
        mise=st.builds(
            LockMiseOptions,
            cache=opt(st.just(False) | caches),
            timeout=opt(ms),
            env=opt(env_maps),
            shell=opt(st.just("bash")),
        ),
    ),
)
inits = st.just(False) | init_entries | tuples(init_entries, min_size=1)
runs_on_alls = st.builds(
    LockRunsOnAll,
    include=tuples(tuples(label_matchers, min_size=1), min_size=1, max_size=2),
    exclude=tuples(label_matchers),
)
single_targets = st.fixed_dictionaries(
    {
        "runs_on": tuples(label_matchers, min_size=1),
        "runs_on_pick": st.sampled_from(["deterministic", "any"]),
    },
    optional={"exclude_labels": tuples(label_matchers, min_size=1)},
)
environment_lists = tuples(
    st.builds(LockEnvironment, value=names, dynamic=st.just(False))
    | st.builds(LockEnvironment, value=inline_values, dynamic=st.booleans())
    | st.just(LockEnvironment(value="", dynamic=True)),
    min_size=1,
)
_MATRIX_OPTIONALS: dict[str, st.SearchStrategy[Any]] = {"include": matrix_entries, "exclude": matrix_entries}
_JOB_OPTIONALS: dict[str, st.SearchStrategy[Any]] = {
    "on_unreachable": st.sampled_from(["hold", "skip", "fail"]),
    "include_uninitialized": st.booleans(),
    "max_parallel": positive,
    "fail_fast": st.booleans(),
    "rules": tuples(lock_rules, min_size=1),
    "description": free_text,
    "checkout": st.booleans(),
    "cache": tuples(caches, min_size=1, max_size=2),
    "container": st.just("python:3.12") | st.builds(LockContainer, image=words, env=opt(env_maps)),
    "environments": environment_lists,
    "env": env_maps | inline_values,
    "concurrency_group": names | inline_values,
    "grace_period": st.integers(0, 600) | st.floats(0, 600),
    "timeout": ms,
    "resources": st.builds(LockResources, requests=opt(resource_specs), limits=opt(resource_specs)),
    "init": inits,
    "approval": approvals,
}
_JOB_FLAGS = (
    "dynamic_env",
    "dynamic_concurrency_group",
    "has_on_cancel",
    "has_cleanup",
    "has_on_success",
    "has_on_failure",
    "has_before_step",
    "has_after_step",
)


def needs_list(draw: st.DrawFn, jobs: list[str], groups: list[str]) -> tuple[Any, ...]:
    """Needs entries pointing only at ``jobs`` and ``groups`` (all declared earlier: no cycles)."""
    targets = [*jobs, *groups]
    if not targets:
        return ()
    out: list[Any] = []
    for _ in range(draw(st.integers(0, 3))):
        target = pick(draw, targets)
        if target in groups:
            out.append(NeedsGroupEntry(group=target, run_on=draw(run_on)))
        elif draw(st.booleans()):
            out.append(NeedsEntry(name=target, run_on=draw(run_on)))
        else:
            out.append(target)
    return tuple(out)


def job_named(draw: st.DrawFn, name: str, earlier_jobs: list[str], earlier_groups: list[str]) -> LockJob:
    """A valid static job whose needs only point at the given earlier jobs and groups."""
    fields: dict[str, Any] = (
        {"runs_on_all": draw(runs_on_alls)} if draw(st.booleans()) else dict(draw(single_targets))
    )
    matrix = draw(opt(matrices))
    if matrix is not None:
        fields.update(matrix=matrix, **some(draw, _MATRIX_OPTIONALS))
    if earlier_groups and draw(st.booleans()):
        fields["depends_on_groups"] = tuple(
            pick(draw, earlier_groups) for _ in range(draw(st.integers(0, 2)))
        )
    fields.update(flags(draw, *_JOB_FLAGS))
    fields.update(some(draw, _JOB_OPTIONALS))
    return LockJob(
        name=name,
        needs=needs_list(draw, earlier_jobs, earlier_groups),
        steps=draw(tuples(step_entries, max_size=2)),
        **fields,
    )


@st.composite
def lock_jobs(draw: st.DrawFn) -> LockJob:
    """A standalone valid static job (no needs)."""
    return job_named(draw, draw(names), [], [])


@st.composite
def job_lists(draw: st.DrawFn, file: str, max_jobs: int = 3) -> tuple[LockJob | LockDynamicJobFn, ...]:
    """Static jobs and generators whose needs only point at earlier entries."""
    job_names = draw(st.lists(names, max_size=max_jobs, unique=True))
    jobs: list[LockJob | LockDynamicJobFn] = []
    static: list[str] = []
    groups: list[str] = []
    for name in job_names:
        if draw(st.integers(0, 4)) == 0:
            group = f"g-{name}" if draw(st.booleans()) else None
            jobs.append(
                LockDynamicJobFn(
                    source=LockGeneratorSource(file=file, index=len(jobs)),
                    group=group,
                    needs=needs_list(draw, static, groups) if draw(st.booleans()) else None,
                    result_aware=draw(st.booleans()),
                )
            )
            if group is not None:
                groups.append(group)
        else:
            jobs.append(job_named(draw, name, list(static), list(groups)))
            static.append(name)
    return tuple(jobs)


# --- workflows and files -------------------------------------------------------------------------

_PRIMARY = LockRegistry(url="https://pypi.example.com/simple", token_secret="prod:TOKEN")
_SCOPED = (
    LockRegistry(url="https://idx.example.com/", scope="@acme", token_secret="ci:IDX", always_auth=True),
    LockRegistry(url="https://idx.example.com/", scope="@corp", token_secret="ci:IDX"),
)
registries = st.sampled_from([(_PRIMARY,), _SCOPED, (_PRIMARY, *_SCOPED), (_SCOPED[1],)])
_WORKFLOW_OPTIONALS: dict[str, st.SearchStrategy[Any]] = {
    "rules": tuples(lock_rules, min_size=1),
    "description": free_text,
    "hash_files": tuples(globs, min_size=1),
    "registries": registries,
    "install_env": st.just(("prod:NPM_TOKEN",)),
    "concurrency": st.builds(
        LockConcurrency, has_group=st.booleans(), cancel_in_progress=opt(st.booleans()), max=opt(positive)
    ),
    "timeout": ms,
    "approval": approvals,
}
resolved_files = tuples(st.sampled_from(["Makefile", "lib/a.py"]), max_size=2)
exports = st.sampled_from(["#ci", "#flows[0]", "#x"])


def workflow_named(draw: st.DrawFn, name: str) -> LockWorkflow:
    source = LockSource(file=f".kici/workflows/{draw(names)}.py", export=draw(exports))
    unreadable = draw(st.integers(0, 9)) == 0
    optional = some(draw, _WORKFLOW_OPTIONALS)
    if "hash_files" in optional:
        optional["resolved_hash_files"] = draw(resolved_files)
    return LockWorkflow(
        name=name,
        source=source,
        content_hash="" if unreadable else draw(hex64),
        compile_schema_version=0 if unreadable else 5,
        triggers=draw(tuples(triggers, max_size=2)),
        jobs=draw(job_lists(source.file)),
        **flags(draw, "has_on_cancel", "has_cleanup", "has_on_success", "has_on_failure"),
        **optional,
    )


@st.composite
def lock_workflows(draw: st.DrawFn) -> LockWorkflow:
    return workflow_named(draw, draw(names))


@st.composite
def lock_files(draw: st.DrawFn, max_workflows: int = 2) -> LockFile:
    """A valid lock: unique workflow names, top-level source and ``contentHash`` as the compiler sets them."""
    workflow_names = draw(st.lists(names, max_size=max_workflows, unique=True))
    workflows = tuple(workflow_named(draw, n) for n in workflow_names)
    source = workflows[0].source if workflows else LockSource(file=".kici/workflows", export="#default")
    lock = LockFile(source=source, content_hash="", lockfile_hash=draw(opt(hex64)), workflows=workflows)
    return with_content_hash(lock)


def walk_models(
    model: Any, data: Any, path: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], Any, Any]]:
    """Every attrs model inside ``model`` with its JSON object (from ``to_json``) and JSON path."""
    if attrs.has(type(model)):
        yield path, model, data
        for attribute in attrs.fields(type(model)):
            key = json_key(attribute)
            if key in data:
                yield from walk_models(getattr(model, attribute.name), data[key], (*path, key))
    elif isinstance(model, tuple) and isinstance(data, list):
        for index, (item, item_data) in enumerate(zip(model, data, strict=True)):
            yield from walk_models(item, item_data, (*path, index))
    elif isinstance(model, FrozenDict) and isinstance(data, dict):
        for key, value in model.items():
            yield from walk_models(value, data[key], (*path, key))
