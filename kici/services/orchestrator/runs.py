"""From a matched lock workflow to the run and job rows the store creates (30 §3 phase I, 10 §8).

Shared by the webhook pipeline and ``POST /api/v1/runs``. The job list is the one ``kici run local``
schedules (:func:`kici.services.local.plan.plan_workflow`): static matrices expand into fan-out
children (``test (3.11)``) that inherit the job's needs, ``maxParallel`` becomes a wave, and every
dynamic job generator becomes its evaluation node ``__dynamic__<workflow>__<index>``.

What the store keeps opaque is written here, in camelCase JSON, for the dispatcher and the agent:

* ``routing`` (agent targeting): :func:`kici.services.orchestrator.dispatcher.routing_json` of the
  lock job's ``runs_on`` / ``exclude_labels``, the format the dispatcher reads back;
* ``config`` (the ``job.dispatch`` ``jobConfig`` plus what the dispatcher needs to fill the
  message): ``workflowName``, ``lockJobName`` (the lock job the runner loads; the dispatcher adds the
  row's own ``jobName``), ``source {file, export}``, ``contentHash``, ``resolvedHashFiles``,
  ``timeout`` (ms, also the orchestrator's job-timeout backstop), ``gracePeriodS``, ``event``
  (the snake_case ``SimulatedEvent`` envelope), ``repoUrl``, ``ref``, ``sha``, ``provider``,
  ``routingKey``, ``providerContext`` (the provider's non-secret credentials context, e.g. the
  GitHub installation id) and the special-job flags of 10 §4 (``dynamicJobFn`` with
  ``resultAware``, ``declaredNeeds``, ``group``). The children of a fan-out share one config; each
  row's own matrix combination is its ``matrix_values`` (``ctx.matrix``).

Choices where the spec is silent:

* A job whose matrix or env is dynamic carries ``needsInit: true``: its values must come from an
  ``__init__`` evaluation (10 §4) that no orchestrator component runs yet, so today such a job is
  one row under its own name and the flag tells the dispatcher and the agent so.
* A generator's evaluation node carries its timeout twice: ``timeoutMs`` (the 10 §9 name the
  runner reads) and ``timeout`` (the orchestrator's job-timeout backstop).
* The workflow's ``timeout`` (ms) becomes the run's workflow deadline.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import attrs

from kici.domain.dynamic import DEFAULT_EVAL_TIMEOUT_MS
from kici.domain.events import SimulatedEvent
from kici.domain.execution.states import CheckMode, InitFailure, InitFailureCategory, InitFailureScope
from kici.domain.lockfile import LockDynamicMatrix, LockWorkflow
from kici.domain.lockfile.frozen import freeze_json
from kici.domain.runner_ipc import event_to_json
from kici.domain.store import NewJob, NewRun
from kici.services.local.plan import PlannedJob, WorkflowPlan, plan_workflow
from kici.services.orchestrator.dispatcher import routing_json

UNRESOLVED_WORKFLOW: Final = "(unresolved workflow)"


@attrs.frozen(kw_only=True)
class RunContext:
    """Where a run comes from: the event, the repository and the delivery that carried it."""

    event: SimulatedEvent
    event_name: str
    repo_identifier: str | None = None
    repo_url: str = ""
    ref: str | None = None
    sha: str | None = None
    routing_key: str | None = None
    org_id: str | None = None
    provider: str | None = None
    provider_context: Mapping[str, Any] = attrs.field(factory=dict)
    delivery_id: str | None = None
    request_id: str | None = None
    triggered_by: str | None = None
    check_mode: CheckMode = CheckMode.APPLY
    is_test_run: bool = False


def _event_json(event: SimulatedEvent) -> dict[str, Any]:
    data = event_to_json(event)
    data["payload"] = _plain(data["payload"])
    return data


def _plain(value: Any) -> Any:
    """JSON-safe copy of webhook data (mappings and sequences of any kind become dicts and lists)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _common_config(workflow: LockWorkflow, ctx: RunContext) -> dict[str, Any]:
    config: dict[str, Any] = {
        "workflowName": workflow.name,
        "source": {"file": workflow.source.file, "export": workflow.source.export},
        "contentHash": workflow.content_hash,
        "event": _event_json(ctx.event),
        "repoUrl": ctx.repo_url,
        "ref": ctx.ref,
        "sha": ctx.sha,
        "provider": ctx.provider,
        "routingKey": ctx.routing_key,
        "providerContext": _plain(ctx.provider_context),
    }
    if workflow.resolved_hash_files:
        config["resolvedHashFiles"] = list(workflow.resolved_hash_files)
    return config


def _job_config(planned: PlannedJob, common: Mapping[str, Any]) -> dict[str, Any]:
    job = planned.job
    config = dict(common)
    config["lockJobName"] = job.name
    if job.timeout is not None:
        config["timeout"] = job.timeout
    if job.grace_period is not None:
        config["gracePeriodS"] = job.grace_period
    if isinstance(job.matrix, LockDynamicMatrix) or job.dynamic_env:
        config["needsInit"] = True
    return config


def _new_jobs(plan: WorkflowPlan, common: Mapping[str, Any]) -> list[NewJob]:
    by_base: dict[str, list[PlannedJob]] = {}
    for planned in plan.jobs:
        by_base.setdefault(planned.base, []).append(planned)
    generators = {g.name: g for g in plan.generators}
    jobs: list[NewJob] = []
    for spec in plan.specs:
        generator = generators.get(spec.name)
        if generator is not None:
            config = dict(common)
            config.update(
                lockJobName=spec.name,
                dynamicJobFn=True,
                generatorIndex=generator.index,
                group=generator.tag,
                resultAware=generator.result_aware,
                declaredNeeds=[n.name for n in generator.needs if hasattr(n, "name")],
                timeoutMs=DEFAULT_EVAL_TIMEOUT_MS,
                timeout=DEFAULT_EVAL_TIMEOUT_MS,
            )
            jobs.append(NewJob(spec=spec, config=freeze_json(config)))
            continue
        children = by_base.get(spec.name, [])
        if not children:
            continue
        lock_job = children[0].job
        routing = routing_json(lock_job.runs_on, lock_job.exclude_labels)
        config = _job_config(children[0], common)
        matrix_values = {c.name: freeze_json(_plain(c.matrix)) for c in children if c.matrix is not None}
        jobs.append(
            NewJob(
                spec=spec,
                config=freeze_json(config),
                routing=routing,
                matrix_values=freeze_json(matrix_values),
            )
        )
    return jobs


def build_run(
    workflow: LockWorkflow, ctx: RunContext, *, run_id: uuid.UUID, now: datetime
) -> tuple[NewRun, list[NewJob]]:
    """The run and job rows for one matched workflow (status ``pending``, roots ready)."""
    plan = plan_workflow(workflow)
    run = NewRun(
        run_id=run_id,
        workflow_name=workflow.name,
        created_at=now,
        routing_key=ctx.routing_key,
        org_id=ctx.org_id,
        repo_identifier=ctx.repo_identifier,
        ref=ctx.ref,
        sha=ctx.sha,
        event=ctx.event_name,
        delivery_id=ctx.delivery_id,
        request_id=ctx.request_id,
        check_mode=ctx.check_mode,
        is_test_run=ctx.is_test_run,
        workflow_timeout_ms=workflow.timeout,
        triggered_by=ctx.triggered_by,
    )
    return run, _new_jobs(plan, _common_config(workflow, ctx))


def lock_failure_run(ctx: RunContext, message: str, *, run_id: uuid.UUID, now: datetime) -> NewRun:
    """The visible failed run of a corrupt lock (HOOK-23): no jobs, ``lock_resolution`` init failure."""
    return NewRun(
        run_id=run_id,
        workflow_name=UNRESOLVED_WORKFLOW,
        created_at=now,
        routing_key=ctx.routing_key,
        org_id=ctx.org_id,
        repo_identifier=ctx.repo_identifier,
        ref=ctx.ref,
        sha=ctx.sha,
        event=ctx.event_name,
        delivery_id=ctx.delivery_id,
        request_id=ctx.request_id,
        check_mode=ctx.check_mode,
        is_test_run=ctx.is_test_run,
        init_failure=InitFailure.of(InitFailureScope.RUN, InitFailureCategory.LOCK_RESOLUTION, message),
        triggered_by=ctx.triggered_by,
    )


__all__ = ["UNRESOLVED_WORKFLOW", "RunContext", "build_run", "lock_failure_run"]
