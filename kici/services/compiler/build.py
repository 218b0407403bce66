"""SDK objects -> lock models (00 §2.2): one function per SDK shape, nothing evaluated.

The lock is what the orchestrator schedules from without ever importing Python,
so every SDK option becomes data here and every callable becomes a reference
(a flag, a rule index, a generator index) that the runner resolves again by the
same naming (:mod:`kici.sdk.naming`). Durations become milliseconds
(``round(s * 1000)``, L8) except ``gracePeriod`` and approval timeouts, which the
lock keeps in seconds.

Choices where the spec is silent or leaves room:

* Callable ``environment`` / ``env`` / ``concurrency_group`` values are always
  written as dynamic (``{"value": "", "dynamic": true}``, ``dynamicEnv``,
  ``dynamicConcurrencyGroup``): the purity analysis that would allow inline
  expressions (LOCK-08) is not part of this compiler yet, and a dynamic value is
  always correct, only slower (the runner evaluates it).
* An unset ``concurrency_group`` is written as the first static environment name
  (00 §1.2's default), so the lock states the effective group.
* A ``needs`` entry without an explicit ``when`` is written as the plain name; an
  explicit ``when`` (even ``"on-success"``) keeps the ``{name, runOn}`` form the
  author chose. A job object in ``needs`` is resolved by identity to its name in
  this workflow, else by its own name.
* Rule references: workflow rules use their index; job rules ``jobIndex * 100 +
  ruleIndex`` where ``jobIndex`` is the job's position in ``workflow.jobs``
  (generators included, as for generator ``source.index``); step rules use their
  index in the step's ``rules`` and name the file the ``step()`` call is in (the
  workflow file when that file lies outside the repository).
* Options that are only meaningful with fan-out (``maxParallel``, ``failFast``,
  ``onUnreachable``, ``includeUninitialized``) are written whenever they are set,
  as the spec says for ``failFast``/``includeUninitialized``; the SDK already warns
  where they are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from kici.domain.execution.needs import InvalidWhenError, when_to_run_on
from kici.domain.globs import InvalidGlobError, compile_glob
from kici.domain.labels import InvalidLabelPatternError, label_matcher
from kici.domain.lockfile import (
    DEFAULT_LOCK_SOURCE,
    UNSET,
    CommentTrigger,
    CreateTrigger,
    DeleteTrigger,
    DispatchTrigger,
    ForkTrigger,
    FrozenDict,
    GenericWebhookAuth,
    GenericWebhookTrigger,
    InputDescriptor,
    JobCompleteTrigger,
    JobEntry,
    KiciEventTrigger,
    LabelMatcher,
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
    LockInit,
    LockInitCommand,
    LockJob,
    LockMatrix,
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
    Need,
    NeedsEntry,
    NeedsGroupEntry,
    PrTrigger,
    PushTrigger,
    ReleaseTrigger,
    ReviewCommentTrigger,
    ReviewTrigger,
    ScheduleTrigger,
    StarTrigger,
    StatusTrigger,
    TagTrigger,
    TeamClause,
    Trigger,
    UserClause,
    WatchTrigger,
    WebhookTrigger,
    WorkflowCompleteTrigger,
    WorkflowRunTrigger,
    freeze_json,
    with_content_hash,
)
from kici.domain.regex import UnsafeRegexError, assert_safe_regex
from kici.sdk import triggers as sdk_triggers
from kici.sdk.approvals import Approval, Team
from kici.sdk.cache import CacheSpec
from kici.sdk.dynamic import DynamicJob
from kici.sdk.hooks import Hook
from kici.sdk.inputs import DispatchInputs
from kici.sdk.inputs import InputDescriptor as SdkInputDescriptor
from kici.sdk.job_init import Init, Mise
from kici.sdk.jobs import Job
from kici.sdk.location import SourceLocation
from kici.sdk.naming import NamedEntry, job_names, name_steps
from kici.sdk.needs import DynamicGroupNeed
from kici.sdk.needs import Need as SdkNeed
from kici.sdk.outputs import output_fields
from kici.sdk.resources import Resources, ResourceSpec
from kici.sdk.rules import Rule
from kici.sdk.steps import Parallel, Step
from kici.sdk.targeting import Label, RunsOn, RunsOnAll
from kici.sdk.workflow import Workflow
from kici.services.compiler.diagnostics import Diagnostic, error
from kici.services.compiler.sources import RepoFiles

RULES_PER_JOB = 100
"""Job rule references are ``jobIndex * 100 + ruleIndex`` (00 §2.2)."""

_FLAG_LETTERS = ((re.IGNORECASE, "i"), (re.MULTILINE, "m"), (re.DOTALL, "s"))


def ms(seconds: float) -> int:
    """L8: lock milliseconds of an SDK duration in seconds."""
    return round(seconds * 1000)


def ms_or_none(seconds: float | None) -> int | None:
    return None if seconds is None else ms(seconds)


@attrs.frozen
class LoadedWorkflow:
    """A workflow found in an entry module, with what the lock needs to name it."""

    workflow: Workflow
    export: str
    entry_file: Path


class Problems:
    """Diagnostics collected while building; positions are translated to repo-relative files."""

    def __init__(self, files: RepoFiles) -> None:
        self.files = files
        self.items: list[Diagnostic] = []

    def at(self, location: SourceLocation | None) -> dict[str, Any]:
        if location is None or not location.line:
            return {}
        return {
            "file": self.files.shown(location.file),
            "line": location.line,
            "column": location.column or 1,
        }

    def error(
        self, code: str, message: str, location: SourceLocation | None, suggestion: str | None = None
    ) -> None:
        self.items.append(error(code, message, suggestion=suggestion, **self.at(location)))


# --- naming and needs ----------------------------------------------------------------------------


@attrs.frozen
class JobTable:
    """The static jobs of one workflow under their lock names, and where each sits in ``jobs``."""

    named: tuple[tuple[str, Job], ...]
    by_uid: Mapping[str, str]
    index_of: Mapping[str, int]

    @classmethod
    def of(cls, workflow: Workflow) -> JobTable:
        named = tuple(job_names(workflow))
        positions = {id(entry): index for index, entry in reversed(list(enumerate(workflow.jobs)))}
        return cls(
            named=named,
            by_uid={job.uid: name for name, job in reversed(named)},
            index_of={name: positions[id(job)] for name, job in reversed(named)},
        )

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.named]


def need_name(need: SdkNeed, table: JobTable) -> str | None:
    """The lock name a static need points at; ``None`` for a job object that has no name here."""
    target = need.target
    if isinstance(target, str):
        return target
    found = table.by_uid.get(target.uid)
    if found is not None:
        return found
    return target.name if isinstance(target.name, str) else None


def need_label(need: SdkNeed | DynamicGroupNeed, table: JobTable) -> str:
    """How messages name a need's target."""
    if isinstance(need, DynamicGroupNeed):
        return need.group
    return need_name(need, table) or str(getattr(need.target, "label", repr(need.target)))


def run_on(when: Any) -> tuple[str, ...]:
    return tuple(status.value for status in when_to_run_on(when))


def build_need(need: SdkNeed | DynamicGroupNeed, table: JobTable, problems: Problems) -> Need | None:
    try:
        if isinstance(need, DynamicGroupNeed):
            return NeedsGroupEntry(group=need.group, run_on=run_on(need.when))
        name = need_name(need, table)
        if name is None:
            return None
        return name if need.when is None else NeedsEntry(name=name, run_on=run_on(need.when))
    except InvalidWhenError:
        problems.error(
            "E217",
            f"needs '{need_label(need, table)}': when must be on-success/always/on-skip/on-failure "
            "or a non-empty list of terminal statuses",
            need.location,
        )
        return None


# --- shared shapes -------------------------------------------------------------------------------


def regex_flags(pattern: re.Pattern[str]) -> str:
    return "".join(letter for bit, letter in _FLAG_LETTERS if pattern.flags & bit)


def build_cache(spec: CacheSpec) -> LockCache:
    restore = tuple(spec.restore_keys) if spec.restore_keys is not None else None
    return LockCache(key=spec.key, paths=tuple(spec.paths), restore_keys=restore)


def build_caches(specs: Sequence[CacheSpec]) -> tuple[LockCache, ...] | None:
    return tuple(build_cache(s) for s in specs) or None


def build_approval(approval: Approval | None) -> LockApproval | None:
    if approval is None:
        return None
    clauses = tuple(
        TeamClause(team=c.team) if isinstance(c, Team) else UserClause(user=c.user)
        for c in approval.approvers
    )
    return LockApproval(
        clauses=clauses, reason=approval.reason, timeout_seconds=approval.timeout, when=approval.when
    )


def frozen_str_map(value: Mapping[str, str] | None) -> FrozenDict[str, str] | None:
    return None if value is None else FrozenDict(dict(value))


def has(hook: Hook | None) -> bool:
    return hook is not None


# --- triggers ------------------------------------------------------------------------------------


class TriggerBuilder:
    """One SDK trigger -> one lock trigger (two for ``push(tags=...)``, L6)."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems

    def pattern(self, value: sdk_triggers.Pattern, what: str, location: SourceLocation) -> LockBranchPattern:
        if isinstance(value, re.Pattern):
            flags = regex_flags(value)
            try:
                assert_safe_regex(value.pattern, flags)
            except UnsafeRegexError as exc:
                self.problems.error("E212", f"{what}: {exc}", location)
            return LockBranchPattern(type="regex", pattern=value.pattern, flags=flags or None)
        self.glob(value, what, location)
        return LockBranchPattern(type="glob", pattern=value)

    def glob(self, value: str, what: str, location: SourceLocation) -> str:
        try:
            compile_glob(value.removeprefix("!"))
        except InvalidGlobError:
            self.problems.error("E212", f"{what}: glob '{value}' is not a valid pattern", location)
        return value

    def patterns(
        self, values: Sequence[sdk_triggers.Pattern], what: str, location: SourceLocation
    ) -> tuple[LockBranchPattern, ...]:
        return tuple(self.pattern(v, what, location) for v in values)

    def globs(self, values: Sequence[str] | None, what: str, location: SourceLocation) -> tuple[str, ...]:
        return tuple(self.glob(v, what, location) for v in values or ())

    def repos(
        self, values: Sequence[str] | None, factory: str, location: SourceLocation
    ) -> tuple[str, ...] | None:
        return None if values is None else self.globs(values, f"{factory}() repos", location)

    def build(self, trigger: Any) -> list[Trigger]:
        loc: SourceLocation = trigger.location
        t = sdk_triggers
        if isinstance(trigger, t.PrTrigger):
            return [
                PrTrigger(
                    events=trigger.events,
                    target_branches=self.patterns(trigger.target, "pr() target", loc),
                    source_branches=self.patterns(trigger.source, "pr() source", loc),
                    paths=self.globs(trigger.paths, "pr() paths", loc),
                    repos=self.repos(trigger.repos, "pr", loc),
                )
            ]
        if isinstance(trigger, t.PushTrigger):
            out: list[Trigger] = [
                PushTrigger(
                    branches=self.patterns(trigger.branches, "push() branches", loc),
                    paths=self.globs(trigger.paths, "push() paths", loc),
                    repos=self.repos(trigger.repos, "push", loc),
                )
            ]
            if trigger.tags:
                out.append(TagTrigger(patterns=self.patterns(trigger.tags, "push() tags", loc)))
            return out
        if isinstance(trigger, t.TagTrigger):
            patterns = self.patterns(trigger.patterns, "tag() patterns", loc)
            return [TagTrigger(patterns=patterns, repos=self.repos(trigger.repos, "tag", loc))]
        if isinstance(trigger, t.CommentTrigger):
            body = trigger.body_match
            return [
                CommentTrigger(
                    actions=trigger.actions,
                    source=trigger.source,
                    body_match=None if body is None else self.pattern(body, "comment() body_match", loc),
                    repos=self.repos(trigger.repos, "comment", loc),
                )
            ]
        if isinstance(trigger, t.ReviewTrigger):
            repos = self.repos(trigger.repos, "review", loc)
            return [ReviewTrigger(actions=trigger.actions, states=trigger.states, repos=repos)]
        if isinstance(trigger, t.ActionsTrigger):
            actions_classes: dict[
                str, type[ReviewCommentTrigger | ReleaseTrigger | StarTrigger | WatchTrigger]
            ] = {
                "review_comment": ReviewCommentTrigger,
                "release": ReleaseTrigger,
                "star": StarTrigger,
                "watch": WatchTrigger,
            }
            cls = actions_classes[trigger.kind]
            return [cls(actions=trigger.actions, repos=self.repos(trigger.repos, trigger.kind, loc))]
        if isinstance(trigger, t.DispatchTrigger):
            return [
                DispatchTrigger(
                    types=trigger.types,
                    inputs=build_inputs(trigger.inputs),
                    repos=self.repos(trigger.repos, "dispatch", loc),
                )
            ]
        if isinstance(trigger, t.RefTrigger):
            ref_cls = CreateTrigger if trigger.kind == "create" else DeleteTrigger
            return [
                ref_cls(
                    ref_types=trigger.ref_types,
                    patterns=self.patterns(trigger.patterns, f"{trigger.kind}() patterns", loc),
                    repos=self.repos(trigger.repos, trigger.kind, loc),
                )
            ]
        if isinstance(trigger, t.StatusTrigger):
            return [
                StatusTrigger(
                    contexts=self.globs(trigger.contexts, "status() contexts", loc),
                    states=trigger.states,
                    repos=self.repos(trigger.repos, "status", loc),
                )
            ]
        if isinstance(trigger, t.WorkflowRunTrigger):
            return [
                WorkflowRunTrigger(
                    actions=trigger.actions,
                    workflows=trigger.workflows,
                    conclusions=trigger.conclusions,
                    repos=self.repos(trigger.repos, "workflow_run", loc),
                )
            ]
        if isinstance(trigger, t.ForkTrigger):
            return [ForkTrigger(repos=self.repos(trigger.repos, "fork", loc))]
        if isinstance(trigger, t.WebhookTrigger):
            repos = self.repos(trigger.repos, "webhook", loc)
            return [WebhookTrigger(events=trigger.events, actions=trigger.actions, repos=repos)]
        if isinstance(trigger, t.KiciEventTrigger):
            return [
                KiciEventTrigger(
                    event_name=trigger.name,
                    match=_frozen_json_map(trigger.match),
                    not_=_frozen_json_map(trigger.not_),
                    source=trigger.source,
                )
            ]
        if isinstance(trigger, t.WorkflowCompleteTrigger):
            return [WorkflowCompleteTrigger(name=trigger.name, status=trigger.status, source=trigger.source)]
        if isinstance(trigger, t.JobCompleteTrigger):
            return [
                JobCompleteTrigger(
                    workflow=trigger.workflow, job=trigger.job, status=trigger.status, source=trigger.source
                )
            ]
        if isinstance(trigger, t.GenericWebhookTrigger):
            return [
                GenericWebhookTrigger(
                    source=trigger.source,
                    events=trigger.events,
                    match=_frozen_json_map(trigger.match),
                    not_=_frozen_json_map(trigger.not_),
                    auth=build_auth(trigger.auth),
                    path=trigger.path,
                )
            ]
        if isinstance(trigger, t.ScheduleTrigger):
            return [
                ScheduleTrigger(
                    cron_expression=trigger.cron,
                    timezone=trigger.timezone,
                    description=trigger.description,
                    inputs=build_inputs(trigger.inputs),
                )
            ]
        if isinstance(trigger, t.LifecycleTrigger):
            return [
                LifecycleTrigger(
                    events=trigger.events,
                    sources=None if trigger.sources is None else tuple(trigger.sources),
                    description=trigger.description,
                )
            ]
        raise TypeError(f"unknown SDK trigger {trigger!r}")


def _frozen_json_map(value: Mapping[str, Any] | None) -> FrozenDict[str, Any] | None:
    return None if value is None else freeze_json(value)


def build_auth(auth: sdk_triggers.Hmac | sdk_triggers.ApiKey | None) -> GenericWebhookAuth | None:
    if auth is None:
        return None
    if isinstance(auth, sdk_triggers.Hmac):
        return GenericWebhookAuth(
            method="hmac-sha256", secret=auth.secret, signature_header=auth.signature_header
        )
    return GenericWebhookAuth(method="api-key", secret=auth.secret, header=auth.header)


def build_input(descriptor: SdkInputDescriptor) -> InputDescriptor:
    return InputDescriptor(
        type=descriptor.type,
        optional=descriptor.optional,
        nullable=descriptor.nullable,
        default=freeze_json(descriptor.default) if descriptor.has_default else UNSET,
        values=None if descriptor.values is None else tuple(freeze_json(v) for v in descriptor.values),
        literal=UNSET if descriptor.type != "literal" else freeze_json(descriptor.literal),
        min=descriptor.min,
        max=descriptor.max,
        pattern=descriptor.pattern,
        description=descriptor.description,
    )


def build_inputs(inputs: DispatchInputs | None) -> FrozenDict[str, InputDescriptor] | None:
    if inputs is None:
        return None
    return FrozenDict({key: build_input(d) for key, d in inputs.fields.items()})


# --- jobs and steps ------------------------------------------------------------------------------


class WorkflowBuilder:
    """Builds one :class:`LockWorkflow`; problems found on the way are collected, not raised."""

    def __init__(self, loaded: LoadedWorkflow, files: RepoFiles, problems: Problems) -> None:
        self.loaded = loaded
        self.workflow = loaded.workflow
        self.files = files
        self.problems = problems
        self.file = files.relative(loaded.entry_file) or loaded.entry_file.name
        self.table = JobTable.of(self.workflow)

    # targeting

    def matchers(
        self, labels: Sequence[Label], what: str, location: SourceLocation
    ) -> tuple[LabelMatcher, ...]:
        out: list[LabelMatcher] = []
        for label in labels:
            try:
                out.append(label_matcher(label))
            except InvalidLabelPatternError as exc:
                self.problems.error("E212", f"{what}: {exc}", location)
        return tuple(out)

    def targeting(self, job: Job, name: str) -> dict[str, Any]:
        loc = job.location
        if isinstance(job.runs_on, RunsOn):
            what = f"job '{name}' runsOn"
            return {
                "runs_on": self.matchers(job.runs_on.labels, what, loc),
                "exclude_labels": self.matchers(job.runs_on.exclude, what, loc) or None,
                "runs_on_pick": job.runs_on.pick,
            }
        assert isinstance(job.runs_on_all, RunsOnAll)  # the SDK requires exactly one of them (E202)
        what = f"job '{name}' runsOnAll"
        return {
            "runs_on_all": LockRunsOnAll(
                include=tuple(self.matchers(group.labels, what, loc) for group in job.runs_on_all.include),
                exclude=self.matchers(job.runs_on_all.exclude, what, loc),
            )
        }

    # steps

    def rules(self, rules: Sequence[Rule], file: str, first_index: int) -> tuple[LockRule, ...] | None:
        built = tuple(
            LockRule(label=r.label, source=LockRuleSource(file=file, index=first_index + i))
            for i, r in enumerate(rules)
        )
        return built or None

    def step(self, name: str, step: Step) -> LockStep:
        step_file = self.files.relative(step.location.file) if step.location.line else None
        location = (
            LockSourceLocation(file=step_file, line=step.location.line, column=step.location.column or 1)
            if step_file is not None
            else None
        )
        retry = step.retry
        return LockStep(
            name=name,
            has_outputs=bool(output_fields(step.outputs)),
            continue_on_error=step.continue_on_error,
            timeout=ms_or_none(step.timeout),
            retry=None
            if retry is None
            else LockRetry(
                max_attempts=retry.max_attempts,
                delay_ms=ms(retry.delay),
                backoff=retry.backoff,
                max_delay_ms=ms(retry.max_delay if retry.max_delay is not None else retry.delay),
            ),
            cache=build_caches(step.cache),
            source_location=location,
            has_rules=bool(step.rules),
            rules=self.rules(step.rules, step_file or self.file, 0),
            has_on_cancel=has(step.on_cancel),
            has_cleanup=has(step.cleanup),
            has_check=step.check is not None,
            has_when_in_sync=step.when_in_sync is not None,
            approval=build_approval(step.approval),
        )

    def step_entry(self, entry: NamedEntry) -> LockStep | LockParallelStep:
        if isinstance(entry.entry, Parallel):
            group = entry.entry
            children = tuple(self.step(child.name, child.entry) for child in entry.children)  # type: ignore[arg-type]
            return LockParallelStep(
                name=entry.name, fail_fast=group.fail_fast, max_parallel=group.max_parallel, children=children
            )
        return self.step(entry.name, entry.entry)

    # jobs

    def matrix(self, job: Job, name: str) -> LockMatrix | None:
        if job.matrix is None:
            return None
        if callable(job.matrix):
            return LockDynamicMatrix(source=LockMatrixSource(file=self.file, job_name=name))
        return LockStaticMatrix(values=freeze_json(job.matrix))

    def environments(self, job: Job) -> tuple[LockEnvironment, ...] | None:
        built = tuple(
            LockEnvironment(value="", dynamic=True)
            if callable(e)
            else LockEnvironment(value=e, dynamic=False)
            for e in job.environments
        )
        return built or None

    def concurrency_group(self, job: Job) -> dict[str, Any]:
        if callable(job.concurrency_group):
            return {"dynamic_concurrency_group": True}
        if job.concurrency_group is not None:
            return {"concurrency_group": job.concurrency_group}
        first_static = next((e for e in job.environments if isinstance(e, str)), None)
        return {"concurrency_group": first_static} if first_static is not None else {}

    def env(self, job: Job) -> dict[str, Any]:
        if job.env is None:
            return {}
        if callable(job.env):
            return {"dynamic_env": True}
        return {"env": FrozenDict(dict(job.env))}

    def job(self, name: str, job: Job) -> LockJob:
        index = self.table.index_of[name]
        needs = tuple(
            n for n in (build_need(need, self.table, self.problems) for need in job.needs) if n is not None
        )
        return LockJob(
            name=name,
            **self.targeting(job, name),
            on_unreachable=job.on_unreachable,
            include_uninitialized=job.include_uninitialized,
            max_parallel=job.max_parallel,
            fail_fast=job.fail_fast,
            needs=needs,
            steps=tuple(self.step_entry(e) for e in name_steps(job.steps)),
            matrix=self.matrix(job, name),
            include=tuple(freeze_json(e) for e in job.include) or None,
            exclude=tuple(freeze_json(e) for e in job.exclude) or None,
            rules=self.rules(job.rules, self.file, index * RULES_PER_JOB),
            description=job.description,
            checkout=job.checkout,
            cache=build_caches(job.cache),
            container=None
            if job.container is None
            else job.container.image
            if job.container.env is None
            else LockContainer(image=job.container.image, env=frozen_str_map(job.container.env)),
            environments=self.environments(job),
            **self.env(job),
            **self.concurrency_group(job),
            has_on_cancel=has(job.on_cancel),
            has_cleanup=has(job.cleanup),
            has_on_success=has(job.on_success),
            has_on_failure=has(job.on_failure),
            has_before_step=has(job.before_step),
            has_after_step=has(job.after_step),
            grace_period=job.grace_period,
            timeout=ms_or_none(job.timeout),
            resources=build_resources(job.resources),
            init=build_init(job.init),
            approval=build_approval(job.approval),
        )

    def generator(self, index: int, entry: Callable[..., Any]) -> LockDynamicJobFn:
        source = LockGeneratorSource(file=self.file, index=index)
        if not isinstance(entry, DynamicJob):
            return LockDynamicJobFn(source=source)
        needs = tuple(
            n for n in (build_need(need, self.table, self.problems) for need in entry.needs) if n is not None
        )
        return LockDynamicJobFn(
            source=source, group=entry.group, needs=needs or None, result_aware=entry.result_aware
        )

    def jobs(self) -> tuple[JobEntry, ...]:
        names = {id(job): name for name, job in self.table.named}
        out: list[JobEntry] = []
        for index, entry in enumerate(self.workflow.jobs):
            if isinstance(entry, Job):
                out.append(self.job(names[id(entry)], entry))
            else:
                out.append(self.generator(index, entry))
        return tuple(out)

    def build(self) -> LockWorkflow:
        wf = self.workflow
        triggers = TriggerBuilder(self.problems)
        content_hash, resolved = self.content_hash()
        concurrency = wf.concurrency
        return LockWorkflow(
            name=wf.name,
            source=LockSource(file=self.file, export=self.loaded.export),
            content_hash=content_hash,
            triggers=tuple(t for trigger in wf.triggers for t in triggers.build(trigger)),
            jobs=self.jobs(),
            rules=self.rules(wf.rules, self.file, 0),
            description=wf.description,
            hash_files=tuple(wf.hash_files) or None,
            resolved_hash_files=resolved,
            registries=tuple(
                LockRegistry(url=r.url, scope=r.scope, token_secret=r.token_secret, always_auth=r.always_auth)
                for r in wf.registries
            )
            or None,
            install_env=tuple(wf.install_env) or None,
            has_on_cancel=has(wf.on_cancel),
            has_cleanup=has(wf.cleanup),
            has_on_success=has(wf.on_success),
            has_on_failure=has(wf.on_failure),
            concurrency=None
            if concurrency is None
            else LockConcurrency(
                has_group=True, cancel_in_progress=concurrency.cancel_in_progress, max=concurrency.max
            ),
            timeout=ms_or_none(wf.timeout),
            approval=build_approval(wf.approval),
        )

    def content_hash(self) -> tuple[str, tuple[str, ...] | None]:
        try:
            return self.files.content_hash(self.loaded.entry_file, self.workflow.hash_files)
        except InvalidGlobError as exc:
            self.problems.error(
                "E212", f"workflow '{self.workflow.name}' hash_files: {exc}", self.workflow.location
            )
            return self.files.content_hash(self.loaded.entry_file, None)


def build_resources(resources: Resources | None) -> LockResources | None:
    if resources is None:
        return None

    def side(spec: ResourceSpec | None) -> LockResourceSpec | None:
        return None if spec is None else LockResourceSpec(cpus=spec.cpus, memory=spec.memory)

    return LockResources(requests=side(resources.requests), limits=side(resources.limits))


def _init_entry(entry: Init | Mise | str) -> Any:
    if isinstance(entry, Init):
        return LockInitCommand(
            run=entry.run,
            shell=entry.shell,
            cache=build_caches(entry.cache),
            timeout=ms(entry.timeout),
            env=frozen_str_map(entry.env),
        )
    if isinstance(entry, Mise):
        cache = entry.cache
        return LockMiseInit(
            mise=LockMiseOptions(
                cache=cache if cache is None or cache is False else build_cache(cache),
                timeout=ms_or_none(entry.timeout),
                env=frozen_str_map(entry.env),
                shell=entry.shell,
            )
        )
    return entry


def build_init(init: Any) -> LockInit | None:
    if init is None or init is False:
        return init
    if isinstance(init, tuple):
        return tuple(_init_entry(e) for e in init)
    result: LockInit = _init_entry(init)
    return result


def build_lock(workflows: Sequence[LockWorkflow], lockfile_hash: str | None) -> LockFile:
    """The lock file of the built workflows, with its top-level ``contentHash``."""
    source = workflows[0].source if workflows else DEFAULT_LOCK_SOURCE
    draft = LockFile(source=source, content_hash="", lockfile_hash=lockfile_hash, workflows=tuple(workflows))
    return with_content_hash(draft)


__all__ = [
    "RULES_PER_JOB",
    "JobTable",
    "LoadedWorkflow",
    "Problems",
    "TriggerBuilder",
    "WorkflowBuilder",
    "build_lock",
    "build_need",
    "ms",
    "need_label",
    "need_name",
    "run_on",
]
