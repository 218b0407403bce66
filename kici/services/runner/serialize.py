"""Generated jobs -> lock JSON, inside the runner (10 §9 "serialize to LockJob[]").

Only the process that ran the generator holds the SDK ``Job`` objects, and that process is the
standard-library runner (D1), so the translation the compiler does with attrs models
(:mod:`kici.services.compiler.build`) is written here a second time, producing the same JSON
directly. A unit test builds the same jobs both ways and compares the lock models, so the two
cannot drift apart silently.

Two things are left to the parent, which may import the domain
(:func:`kici.domain.dynamic.lock_job_from_generated`): labels are written raw (``{"kind": "label",
"value": ...}`` or ``{"kind": "pattern", "source": ..., "flags": <re flags>}``) because globs become
regexes and every regex passes the ReDoS gate through domain helpers; and the lock's structural
checks, which the parent runs when it parses the JSON.

Callable values are resolved before serialization (the caller passes :class:`Resolved`): a
generated job has no compile step where a dynamic ``matrix``/``env``/``environment``/
``concurrency_group`` could become a reference, so they are written as the static values they
evaluated to. A ``None`` from such a function leaves the value unset. Job rule references use
``position * 100 + rule`` where ``position`` is the job's place in the generator's output (the
compiler uses the place in ``workflow.jobs``, which a generated job does not have).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kici.sdk.naming import NamedEntry, name_steps
from kici.sdk.needs import DynamicGroupNeed, Need, run_on
from kici.sdk.outputs import output_fields
from kici.sdk.steps import Parallel, Step

RULES_PER_JOB = 100


@dataclass(frozen=True)
class Resolved:
    """The evaluated dynamic values of one job; ``dynamic`` lists which ones were functions."""

    matrix: Any = None
    env: Mapping[str, str] | None = None
    environments: tuple[str, ...] | None = None
    concurrency_group: str | None = None
    dynamic: frozenset[str] = field(default_factory=frozenset)


def ms(seconds: float) -> int:
    return round(float(seconds) * 1000)


def raw_label(label: Any) -> dict[str, Any]:
    if isinstance(label, re.Pattern):
        return {"kind": "pattern", "source": label.pattern, "flags": int(label.flags)}
    return {"kind": "label", "value": str(label)}


def _labels(labels: Sequence[Any]) -> list[dict[str, Any]]:
    return [raw_label(label) for label in labels]


def _cache(spec: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"key": spec.key, "paths": list(spec.paths)}
    if spec.restore_keys is not None:
        data["restoreKeys"] = list(spec.restore_keys)
    return data


def _caches(specs: Sequence[Any]) -> list[dict[str, Any]] | None:
    return [_cache(spec) for spec in specs] or None


def _approval(approval: Any) -> dict[str, Any] | None:
    if approval is None:
        return None
    clauses = [{"team": c.team} if hasattr(c, "team") else {"user": c.user} for c in approval.approvers]
    data: dict[str, Any] = {"clauses": clauses}
    if approval.reason is not None:
        data["reason"] = approval.reason
    if approval.timeout is not None:
        data["timeoutSeconds"] = approval.timeout
    data["when"] = approval.when
    return data


def _put(data: dict[str, Any], key: str, value: Any) -> None:
    """Optional keys are omitted, never ``null`` (00 §2.2); ``False`` flags are omitted too."""
    if value is not None and value is not False:
        data[key] = value


def _put_set(data: dict[str, Any], key: str, value: Any) -> None:
    """Booleans the lock writes whenever they are set, ``False`` included."""
    if value is not None:
        data[key] = value


def _rules(rules: Sequence[Any], file: str, first: int) -> list[dict[str, Any]] | None:
    built = [
        {"_type": "dynamic", "label": rule.label, "source": {"file": file, "index": first + i}}
        for i, rule in enumerate(rules)
    ]
    return built or None


def _resources(resources: Any) -> dict[str, Any] | None:
    if resources is None:
        return None

    def side(spec: Any) -> dict[str, Any] | None:
        if spec is None:
            return None
        data: dict[str, Any] = {}
        _put(data, "cpus", spec.cpus)
        _put(data, "memory", spec.memory)
        return data

    data: dict[str, Any] = {}
    _put(data, "requests", side(resources.requests))
    _put(data, "limits", side(resources.limits))
    return data


def _init_entry(entry: Any) -> Any:
    if isinstance(entry, str):
        return entry
    if hasattr(entry, "run"):
        data: dict[str, Any] = {"run": entry.run, "shell": entry.shell}
        _put(data, "cache", _caches(entry.cache))
        data["timeout"] = ms(entry.timeout)
        _put(data, "env", None if entry.env is None else dict(entry.env))
        return data
    options: dict[str, Any] = {}
    cache = entry.cache
    _put_set(options, "cache", cache if cache is None or cache is False else _cache(cache))
    _put(options, "timeout", None if entry.timeout is None else ms(entry.timeout))
    _put(options, "env", None if entry.env is None else dict(entry.env))
    _put(options, "shell", entry.shell)
    return {"mise": options}


def _init(init: Any) -> Any:
    if init is None or init is False:
        return init
    if isinstance(init, tuple):
        return [_init_entry(entry) for entry in init]
    return _init_entry(init)


class JobSerializer:
    """Serializes the jobs of one generator output; ``names`` resolves job objects in ``needs``."""

    def __init__(self, *, workflow_file: str, workspace: Path, names: Mapping[int, str]) -> None:
        self.file = workflow_file
        self.workspace = workspace.resolve()
        self.names = names

    def relative(self, path: str) -> str | None:
        try:
            return Path(path).resolve().relative_to(self.workspace).as_posix()
        except (ValueError, OSError):
            return None

    # steps

    def step(self, name: str, step: Step) -> dict[str, Any]:
        step_file = self.relative(step.location.file) if step.location.line else None
        data: dict[str, Any] = {"name": name, "hasOutputs": bool(output_fields(step.outputs))}
        _put_set(data, "continueOnError", step.continue_on_error)
        _put(data, "timeout", None if step.timeout is None else ms(step.timeout))
        retry = step.retry
        if retry is not None:
            data["retry"] = {
                "maxAttempts": retry.max_attempts,
                "delayMs": ms(retry.delay),
                "backoff": retry.backoff,
                "maxDelayMs": ms(retry.max_delay if retry.max_delay is not None else retry.delay),
            }
        _put(data, "cache", _caches(step.cache))
        if step_file is not None:
            data["sourceLocation"] = {
                "file": step_file,
                "line": step.location.line,
                "column": step.location.column or 1,
            }
        _put(data, "hasRules", bool(step.rules))
        _put(data, "rules", _rules(step.rules, step_file or self.file, 0))
        _put(data, "hasOnCancel", step.on_cancel is not None)
        _put(data, "hasCleanup", step.cleanup is not None)
        _put(data, "hasCheck", step.check is not None)
        _put(data, "hasWhenInSync", step.when_in_sync is not None)
        _put(data, "approval", _approval(step.approval))
        return data

    def entry(self, entry: NamedEntry) -> dict[str, Any]:
        if isinstance(entry.entry, Parallel):
            group = entry.entry
            data: dict[str, Any] = {"kind": "parallel", "name": entry.name, "failFast": group.fail_fast}
            _put(data, "maxParallel", group.max_parallel)
            data["children"] = [self.step(child.name, child.entry) for child in entry.children]  # type: ignore[arg-type]
            return data
        return self.step(entry.name, entry.entry)

    # jobs

    def need(self, need: Need | DynamicGroupNeed) -> Any:
        if isinstance(need, DynamicGroupNeed):
            return {"group": need.group, "runOn": list(run_on(need.when))}
        target = need.target
        name = target if isinstance(target, str) else self.names.get(id(target), target.name)
        if not isinstance(name, str):
            return None
        return name if need.when is None else {"name": name, "runOn": list(run_on(need.when))}

    def targeting(self, job: Any) -> dict[str, Any]:
        if job.runs_on is not None:
            data: dict[str, Any] = {"runsOn": _labels(job.runs_on.labels)}
            _put(data, "excludeLabels", _labels(job.runs_on.exclude) or None)
            data["runsOnPick"] = job.runs_on.pick
            return data
        fan = job.runs_on_all
        return {
            "runsOnAll": {
                "include": [_labels(group.labels) for group in fan.include],
                "exclude": _labels(fan.exclude),
            }
        }

    def job(self, name: str, job: Any, position: int, resolved: Resolved) -> dict[str, Any]:
        data: dict[str, Any] = {"_type": "static", "name": name, **self.targeting(job)}
        _put(data, "onUnreachable", job.on_unreachable)
        _put_set(data, "includeUninitialized", job.include_uninitialized)
        _put(data, "maxParallel", job.max_parallel)
        _put_set(data, "failFast", job.fail_fast)
        data["needs"] = [n for n in (self.need(need) for need in job.needs) if n is not None]
        data["steps"] = [self.entry(entry) for entry in name_steps(job.steps)]
        matrix = resolved.matrix if "matrix" in resolved.dynamic else job.matrix
        if matrix is not None:
            data["matrix"] = {"_type": "static", "values": _json_matrix(matrix)}
        _put(data, "include", [dict(e) for e in job.include] or None)
        _put(data, "exclude", [dict(e) for e in job.exclude] or None)
        _put(data, "rules", _rules(job.rules, self.file, position * RULES_PER_JOB))
        _put(data, "description", job.description)
        _put_set(data, "checkout", job.checkout)
        _put(data, "cache", _caches(job.cache))
        container = job.container
        if container is not None:
            data["container"] = (
                container.image
                if container.env is None
                else {"image": container.image, "env": dict(container.env)}
            )
        environments = (
            resolved.environments
            if "environments" in resolved.dynamic
            else tuple(e for e in job.environments if isinstance(e, str))
        )
        _put(data, "environments", [{"value": e, "dynamic": False} for e in environments or ()] or None)
        env = resolved.env if "env" in resolved.dynamic else job.env
        _put(data, "env", None if env is None else dict(env))
        group = (
            resolved.concurrency_group if "concurrency_group" in resolved.dynamic else job.concurrency_group
        )
        if group is None and environments:
            group = environments[0]
        _put(data, "concurrencyGroup", group)
        for key, hook in (
            ("hasOnCancel", job.on_cancel),
            ("hasCleanup", job.cleanup),
            ("hasOnSuccess", job.on_success),
            ("hasOnFailure", job.on_failure),
            ("hasBeforeStep", job.before_step),
            ("hasAfterStep", job.after_step),
        ):
            _put(data, key, hook is not None)
        _put(data, "gracePeriod", job.grace_period)
        _put(data, "timeout", None if job.timeout is None else ms(job.timeout))
        _put(data, "resources", _resources(job.resources))
        _put_set(data, "init", _init(job.init))
        _put(data, "approval", _approval(job.approval))
        return data


def _json_matrix(values: Any) -> Any:
    if isinstance(values, Mapping):
        return {str(k): list(v) for k, v in values.items()}
    return list(values)


__all__ = ["RULES_PER_JOB", "JobSerializer", "Resolved", "ms", "raw_label"]
