"""The workflow-authoring API imported by ``.kici/workflows/*.py``.

Standard library only (D1): the sandboxed runner imports this package on every job
start, and a bare interpreter is what keeps that start cheap. Every factory
validates its arguments when called and records the caller's ``file:line:col``, so a
mistake is reported at the ``job()``/``step()`` line that made it.
"""

from kici.sdk.approvals import Approval, team, user
from kici.sdk.cache import CacheSpec
from kici.sdk.context import NeedInfo, Outcome, ShellResult, StepContext
from kici.sdk.dag import (
    DagCycle,
    DagMissingDependency,
    DagNode,
    DagOk,
    DagSelfReference,
    validate_dag,
)
from kici.sdk.diagnostics import KiciWarning
from kici.sdk.dynamic import DynamicJob, dynamic_job
from kici.sdk.errors import (
    InputValidationError,
    KiciDefinitionError,
    KiciUsageError,
    OutputsNotReady,
    OutputValidationError,
    SecretNotFoundError,
    ShellError,
    StepCancelled,
    WaitForTimeoutError,
)
from kici.sdk.events import EventDefinition, define_event, is_event_type
from kici.sdk.fixtures import Fixture, fixture
from kici.sdk.hooks import Hook
from kici.sdk.idempotent import Applied, Skipped, check_step, idempotent, idempotent_step
from kici.sdk.inputs import DispatchInputs, I, InputDescriptor, define_dispatch_inputs
from kici.sdk.job_init import Init, Mise
from kici.sdk.jobs import Job, job
from kici.sdk.location import SourceLocation
from kici.sdk.needs import DynamicGroupNeed, Need, dynamic_group
from kici.sdk.resources import Container, Resources, ResourceSpec, Spec
from kici.sdk.retry import Retry
from kici.sdk.rules import (
    Fanout,
    Rule,
    RuleContext,
    RuleEvaluation,
    RuleResult,
    evaluate_rules,
    only_on_fanout_index,
    only_on_first_host,
    only_on_last_host,
    rule,
    skip,
)
from kici.sdk.steps import Parallel, Step, parallel, step
from kici.sdk.targeting import All, RunsOn, RunsOnAll
from kici.sdk.triggers import (
    ApiKey,
    Hmac,
    comment,
    create,
    cron,
    delete,
    dispatch,
    fork,
    generic_webhook,
    job_complete,
    kici_event,
    lifecycle,
    manual,
    pr,
    push,
    release,
    review,
    review_comment,
    schedule,
    star,
    status,
    tag,
    watch,
    webhook,
    workflow_complete,
    workflow_run,
)
from kici.sdk.waits import Succeeded, TimedOut, wait_for, wait_for_step
from kici.sdk.workflow import Concurrency, Registry, Workflow, workflow

__all__ = [
    "All",
    "ApiKey",
    "Applied",
    "Approval",
    "CacheSpec",
    "Concurrency",
    "Container",
    "DagCycle",
    "DagMissingDependency",
    "DagNode",
    "DagOk",
    "DagSelfReference",
    "DispatchInputs",
    "DynamicGroupNeed",
    "DynamicJob",
    "EventDefinition",
    "Fanout",
    "Fixture",
    "Hmac",
    "Hook",
    "I",
    "Init",
    "InputDescriptor",
    "InputValidationError",
    "Job",
    "KiciDefinitionError",
    "KiciUsageError",
    "KiciWarning",
    "Mise",
    "Need",
    "NeedInfo",
    "Outcome",
    "OutputValidationError",
    "OutputsNotReady",
    "Parallel",
    "Registry",
    "ResourceSpec",
    "Resources",
    "Retry",
    "Rule",
    "RuleContext",
    "RuleEvaluation",
    "RuleResult",
    "RunsOn",
    "RunsOnAll",
    "SecretNotFoundError",
    "ShellError",
    "ShellResult",
    "Skipped",
    "SourceLocation",
    "Spec",
    "Step",
    "StepCancelled",
    "StepContext",
    "Succeeded",
    "TimedOut",
    "WaitForTimeoutError",
    "Workflow",
    "check_step",
    "comment",
    "create",
    "cron",
    "define_dispatch_inputs",
    "define_event",
    "delete",
    "dispatch",
    "dynamic_group",
    "dynamic_job",
    "evaluate_rules",
    "fixture",
    "fork",
    "generic_webhook",
    "idempotent",
    "idempotent_step",
    "is_event_type",
    "job",
    "job_complete",
    "kici_event",
    "lifecycle",
    "manual",
    "only_on_fanout_index",
    "only_on_first_host",
    "only_on_last_host",
    "parallel",
    "pr",
    "push",
    "release",
    "review",
    "review_comment",
    "rule",
    "schedule",
    "skip",
    "star",
    "status",
    "step",
    "tag",
    "team",
    "user",
    "validate_dag",
    "wait_for",
    "wait_for_step",
    "watch",
    "webhook",
    "workflow",
    "workflow_complete",
    "workflow_run",
]
