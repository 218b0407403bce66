"""Workflow registrations extracted from a default-branch lock (HOOK-18, spec 30 §3 phase G, §5.3).

A registration lets a workflow be started by something other than a git event of its own repository:
events, schedules, generic webhooks, lifecycle hooks, cross-source and global dispatch. The
orchestrator rewrites a repository's registrations from the lock of every push to its default
branch; this module decides *whether* a delivery registers and *what* rows it stores.

Choices where the spec is silent:

* Only an event of type ``push`` registers (a tag push is type ``tag`` and never does): the lock that
  counts is the one on the default branch's tip.
* A workflow without any trigger registers nothing, even though every trigger type is registerable.
* A global workflow (a trigger with a non-empty ``repos``) whose author repository the org policy does
  not allow is dropped whole, not registered without its global triggers: a half-registered workflow
  would behave differently from what its author wrote.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from kici.domain.lockfile import LockFile, LockWorkflow
from kici.domain.lockfile.triggers import Trigger, trigger_type

EVENT_TRIGGER_TYPES: Final = frozenset(
    {"kici_event", "workflow_complete", "job_complete", "generic_webhook", "schedule", "lifecycle", "webhook"}
)
"""Types whose only route to a run is a registration."""

GIT_TRIGGER_TYPES: Final = frozenset(
    {
        "push",
        "pr",
        "tag",
        "comment",
        "review",
        "review_comment",
        "release",
        "dispatch",
        "create",
        "delete",
        "status",
        "workflow_run",
        "fork",
        "star",
        "watch",
    }
)
"""Git types are registered too: they feed cross-source and global dispatch (spec 30 §5.3)."""

REGISTERABLE_TRIGGER_TYPES: Final = EVENT_TRIGGER_TYPES | GIT_TRIGGER_TYPES

HEAD_REF: Final = "HEAD"
SKIPPED_GLOBAL_MESSAGE: Final = "Skipping global workflow registration: not permitted"


@attrs.frozen(kw_only=True)
class NewRegistration:
    """One workflow row as ``replace_all`` stores it; ``workflow`` is the lock entry, kept whole."""

    workflow: LockWorkflow
    trigger_types: tuple[str, ...]
    source_file: str
    is_global: bool

    @property
    def workflow_name(self) -> str:
        return self.workflow.name


@attrs.frozen(kw_only=True)
class RegistrationSet:
    """Everything one repository registers under one routing key; replaces what was stored before.

    ``commit_sha`` is ``None`` when the delivery named no commit (the ref was ``HEAD``).
    """

    customer_id: str
    routing_key: str
    repo_identifier: str
    commit_sha: str | None
    provider_context: Mapping[str, Any] = attrs.field(factory=dict, converter=dict, hash=False)
    """The bundle's credentials context (``installationId``...), for fetching this repo's lock later."""
    registrations: tuple[NewRegistration, ...] = ()
    skipped_globals: tuple[str, ...] = ()

    @property
    def workflow_names(self) -> tuple[str, ...]:
        return tuple(r.workflow_name for r in self.registrations)


def _has_repos(trigger: Trigger) -> bool:
    return bool(getattr(trigger, "repos", None))


def is_global(workflow: LockWorkflow) -> bool:
    """Global iff any trigger names ``repos`` (GLB-01); types without ``repos`` never make it global."""
    return any(_has_repos(t) for t in workflow.triggers)


def is_registerable(workflow: LockWorkflow) -> bool:
    return any(trigger_type(t) in REGISTERABLE_TRIGGER_TYPES or _has_repos(t) for t in workflow.triggers)


def distinct_trigger_types(workflow: LockWorkflow) -> tuple[str, ...]:
    """The ``_type``s in first-seen order, each once (the index looks rows up by these)."""
    return tuple(dict.fromkeys(trigger_type(t) for t in workflow.triggers))


def default_source_file(workflow_name: str) -> str:
    return f".kici/workflows/{workflow_name}.py"


def registers(
    *, local: bool, event_type: str, target_branch: str, default_branches: Iterable[str | None]
) -> bool:
    """Whether a delivery rewrites registrations: a non-local push to a default branch.

    ``default_branches`` holds the normalizer's answer and ``payload.repository.default_branch``;
    either one matching is enough (a normalizer may fall back to ``main`` while the payload knows).
    """
    if local or event_type != "push" or not target_branch:
        return False
    return any(branch == target_branch for branch in default_branches if branch)


def registration_commit(ref: str) -> str | None:
    return None if ref == HEAD_REF else ref


def extract_registrations(lock: LockFile, *, globals_permitted: bool) -> tuple[NewRegistration, ...]:
    """The rows of every registerable workflow, in lock order; unpermitted globals left out."""
    rows: list[NewRegistration] = []
    for workflow in lock.workflows:
        if not is_registerable(workflow):
            continue
        global_ = is_global(workflow)
        if global_ and not globals_permitted:
            continue
        rows.append(
            NewRegistration(
                workflow=workflow,
                trigger_types=distinct_trigger_types(workflow),
                source_file=workflow.source.file or default_source_file(workflow.name),
                is_global=global_,
            )
        )
    return tuple(rows)


def registration_set(
    lock: LockFile,
    *,
    customer_id: str,
    routing_key: str,
    repo_identifier: str,
    ref: str,
    provider_context: Mapping[str, Any],
    globals_permitted: bool,
) -> RegistrationSet:
    """The full replacement for ``(routing_key, repo_identifier)``; empty when nothing registers."""
    rows = extract_registrations(lock, globals_permitted=globals_permitted)
    kept = {r.workflow_name for r in rows}
    skipped = tuple(
        w.name for w in lock.workflows if w.name not in kept and is_registerable(w) and is_global(w)
    )
    return RegistrationSet(
        customer_id=customer_id,
        routing_key=routing_key,
        repo_identifier=repo_identifier,
        commit_sha=registration_commit(ref),
        provider_context=provider_context,
        registrations=rows,
        skipped_globals=skipped,
    )


__all__ = [
    "EVENT_TRIGGER_TYPES",
    "GIT_TRIGGER_TYPES",
    "HEAD_REF",
    "REGISTERABLE_TRIGGER_TYPES",
    "SKIPPED_GLOBAL_MESSAGE",
    "NewRegistration",
    "RegistrationSet",
    "default_source_file",
    "distinct_trigger_types",
    "extract_registrations",
    "is_global",
    "is_registerable",
    "registers",
    "registration_commit",
    "registration_set",
]
