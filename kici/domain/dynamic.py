"""Dynamic jobs and dynamic matrices, the pure rules (EXE-19/20/21/34, SDK-18/20).

Generators and dynamic matrices are user code, so they run where the workflow module is loaded (the
sandboxed runner, 10 §4 special job types); what comes back is data, and this module decides what
that data means, identically for ``kici run local`` and, later, the agent and orchestrator:

* P-DYN1, the serializer limits of 10 §9: at most 100 jobs per evaluation, unique names, with the
  spec's exact messages; plus what the needs scheduler must be able to accept (no group needs, no
  collision with a job of the run, no need of a job the run does not have);
* the runner's generated-job JSON -> :class:`LockJob`. The runner may not import the domain (D1), so
  it writes each job in lock JSON except for labels, which it leaves raw (``{"kind": "label",
  "value": ...}`` / ``{"kind": "pattern", "source": ..., "flags": <re flags>}``): turning globs into
  regexes and the ReDoS gate need the domain's helpers, and running them here applies exactly the
  compiler's rule (:func:`kici.domain.labels.label_matcher`);
* P-DYN2, the determinism guard on the executing runner: ok / warn with dropped siblings / fail, a
  function of (expected names, re-evaluated names, target) only;
* P-DYN3, the frozen upstream snapshot of a result-aware generator and the ``ctx.needs`` it shows;
* dynamic matrix expansion, whose failures carry the ``matrix_expansion`` category.

Choices where the spec is silent:

* The guard compares names as sets: a re-evaluation that only reorders the jobs is not drift.
* A ``ctx.needs`` entry reads flat (``needs["build"].result.version``) for an upstream whose only step
  is the unnamed ``step-1`` (a ``run=`` job), as ``job.result`` does; otherwise by step name.
* Fan-out children and dynamic-group members are listed in the order the snapshot records them
  (expansion order, generation order); each child is also reachable under its own name. A group and a
  job of the same name: the job wins, as a name ``needs`` entry names jobs.
* The runtime matrix cap counts ``product + len(include)`` like the compile-time E104 estimate (so a
  huge product is refused before it is expanded), and then refuses an expansion that is empty or that
  names two children alike.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any

import attrs

from kici.domain.labels import InvalidLabelPatternError, label_matcher
from kici.domain.lockfile import (
    FrozenDict,
    JsonValue,
    LockFileParseError,
    LockJob,
    NeedsGroupEntry,
    freeze_json,
    from_json,
    thaw_json,
    to_json,
)
from kici.domain.lockfile import Need as LockNeed
from kici.domain.lockfile import NeedsEntry as LockNeedsEntry
from kici.domain.matrix import (
    MAX_MATRIX_JOBS,
    InvalidMatrixError,
    MatrixChild,
    MatrixValues,
    expand_job_matrix,
    matrix_size,
)

MAX_DYNAMIC_JOBS = 100
DEFAULT_EVAL_TIMEOUT_MS = 120_000
INIT_VALUE_TIMEOUT_MS = 60_000

DYNAMIC_EVAL = "dynamic_eval"
MATRIX_EXPANSION = "matrix_expansion"
DRIFT_DROPPED_REASON = "determinism drift: job dropped by re-evaluation on executing agent"
FLAT_STEP = "step-1"


def eval_job_name(workflow: str, index: int) -> str:
    """The special job that evaluates generator ``index`` (10 §4: ``__dynamic__<workflow>__<index>``)."""
    return f"__dynamic__{workflow}__{index}"


def init_job_name(job: str) -> str:
    """The special job that evaluates a job's dynamic values (10 §4: ``__init__…``)."""
    return f"__init__{job}"


def group_tag(index: int, group: str | None) -> str:
    """The tag generated jobs carry: the group, or ``__dynamic__<index>`` for an untagged generator."""
    return group if group is not None else f"__dynamic__{index}"


# --- P-DYN1: limits and acceptance ---------------------------------------------------------------


class DynamicEvalError(ValueError):
    """A generator's output cannot become jobs of the run; the message is the evaluation's error."""


def too_many_jobs_message(count: int) -> str:
    return f"DynamicJobFn generated {count} jobs, exceeding the limit of {MAX_DYNAMIC_JOBS}"


def duplicate_job_message(name: str) -> str:
    return f"Duplicate job name '{name}' in DynamicJobFn output"


def check_generated_names(names: Sequence[str]) -> None:
    """The serializer limits (P-DYN1): the count first, then the first repeated name."""
    if len(names) > MAX_DYNAMIC_JOBS:
        raise DynamicEvalError(too_many_jobs_message(len(names)))
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DynamicEvalError(duplicate_job_message(name))
        seen.add(name)


def _need_name(need: LockNeed) -> str | None:
    if isinstance(need, str):
        return need
    if isinstance(need, LockNeedsEntry):
        return need.name
    return None


def check_generated_jobs(
    jobs: Sequence[LockJob], *, existing: Collection[str], upstreams: Collection[str]
) -> None:
    """Everything the needs scheduler requires of generated jobs, as an evaluation error.

    ``existing`` are the names of the run's jobs (a generated job may not reuse one); ``upstreams``
    are the names a generated job may need besides its siblings (jobs and fan-out bases of the run).
    """
    names = [job.name for job in jobs]
    check_generated_names(names)
    for name in names:
        if name in existing:
            raise DynamicEvalError(
                f"DynamicJobFn generated job '{name}', but the workflow already has a job of that name"
            )
    allowed = set(upstreams) | set(names)
    for job in jobs:
        for need in job.needs:
            if isinstance(need, NeedsGroupEntry):
                raise DynamicEvalError(
                    f"Job '{job.name}' in DynamicJobFn output needs dynamic group '{need.group}': "
                    "generated jobs may only need jobs by name, never a DynamicJobFn"
                )
            target = _need_name(need)
            if target is not None and target not in allowed:
                raise DynamicEvalError(
                    f"Job '{job.name}' in DynamicJobFn output needs unknown job '{target}'"
                )


# --- the runner's JSON -> LockJob ----------------------------------------------------------------


def _matcher(raw: object) -> Any:
    if isinstance(raw, Mapping):
        kind = raw.get("kind")
        try:
            if kind == "label" and isinstance(raw.get("value"), str):
                return to_json(label_matcher(raw["value"]))
            source, flags = raw.get("source"), raw.get("flags")
            if kind == "pattern" and isinstance(source, str) and type(flags) is int:
                return to_json(label_matcher(re.compile(source, flags)))
        except (InvalidLabelPatternError, re.error, ValueError) as exc:
            raise DynamicEvalError(f"invalid runs_on label: {exc}") from None
    raise DynamicEvalError(f"invalid runs_on label {raw!r}")


def _matchers(raw: object) -> list[Any]:
    if not isinstance(raw, list):
        raise DynamicEvalError(f"labels must be a list, got {type(raw).__name__}")
    return [_matcher(item) for item in raw]


def _finish_labels(raw: Mapping[str, Any]) -> dict[str, Any]:
    data = dict(raw)
    for key in ("runsOn", "excludeLabels"):
        if key in data:
            data[key] = _matchers(data[key])
    fan = data.get("runsOnAll")
    if isinstance(fan, Mapping):
        fan = dict(fan)
        if isinstance(fan.get("include"), list):
            fan["include"] = [_matchers(group) for group in fan["include"]]
        if "exclude" in fan:
            fan["exclude"] = _matchers(fan["exclude"])
        data["runsOnAll"] = fan
    return data


def lock_job_from_generated(raw: object) -> LockJob:
    """One job of the runner's ``dynamicJobs`` as a lock model, or :class:`DynamicEvalError`."""
    if not isinstance(raw, Mapping):
        raise DynamicEvalError(f"DynamicJobFn output must be jobs, got {type(raw).__name__}")
    label = raw.get("name") if isinstance(raw.get("name"), str) else "?"
    try:
        return from_json(_finish_labels(raw), LockJob)
    except LockFileParseError as exc:
        raise DynamicEvalError(f"DynamicJobFn output: job '{label}' is not a valid job: {exc}") from None


def parse_generated_jobs(
    raw: Sequence[object], *, existing: Collection[str], upstreams: Collection[str]
) -> tuple[LockJob, ...]:
    """The runner's ``dynamicJobs`` as lock jobs the scheduler can take, or :class:`DynamicEvalError`."""
    if len(raw) > MAX_DYNAMIC_JOBS:
        raise DynamicEvalError(too_many_jobs_message(len(raw)))
    jobs = tuple(lock_job_from_generated(item) for item in raw)
    check_generated_jobs(jobs, existing=existing, upstreams=upstreams)
    return jobs


# --- P-DYN2: the determinism guard ---------------------------------------------------------------


class GuardVerdict(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@attrs.frozen
class GuardOutcome:
    """``dropped`` are the expected siblings the re-evaluation no longer produced (reported as
    ``droppedJobs`` and marked ``drift_dropped``); ``added`` the new names it produced instead."""

    verdict: GuardVerdict
    dropped: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    message: str | None = None


def _unique(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "none"


def determinism_guard(expected: Sequence[str], actual: Sequence[str], target: str) -> GuardOutcome:
    """The executing runner's verdict after re-running the generator with the frozen inputs (10 §9)."""
    wanted, got = _unique(expected), _unique(actual)
    if target not in got:
        return GuardOutcome(
            GuardVerdict.FAIL,
            message=(
                f"determinism drift: job '{target}' is not generated by re-evaluation "
                f"(expected: {_listed(wanted)}; re-evaluated: {_listed(got)})"
            ),
        )
    dropped = tuple(name for name in wanted if name not in got)
    added = tuple(name for name in got if name not in wanted)
    if not dropped and not added:
        return GuardOutcome(GuardVerdict.OK)
    return GuardOutcome(
        GuardVerdict.WARN,
        dropped,
        added,
        f"determinism drift: re-evaluation generated different jobs (dropped: {_listed(dropped)}; "
        f"added: {_listed(added)}); job '{target}' runs with its re-evaluated steps",
    )


# --- P-DYN3: the upstream snapshot and ctx.needs -------------------------------------------------


@attrs.frozen
class UpstreamSnapshot:
    """What a result-aware generator sees of its upstreams, frozen when its evaluation is dispatched.

    ``jobs`` holds each upstream job's outputs (``{step: outputs}``) and ``statuses`` its terminal
    status, by job name (fan-out children by child name); ``groups`` the members of each needed
    dynamic group and ``fanouts`` the children of each needed fan-out base, in order; ``flat`` the
    jobs whose result reads flat (single unnamed ``step-1``).
    """

    jobs: FrozenDict[str, JsonValue] = attrs.field(factory=FrozenDict)
    statuses: FrozenDict[str, str] = attrs.field(factory=FrozenDict)
    groups: FrozenDict[str, tuple[str, ...]] = attrs.field(factory=FrozenDict)
    fanouts: FrozenDict[str, tuple[str, ...]] = attrs.field(factory=FrozenDict)
    flat: frozenset[str] = frozenset()


def freeze_snapshot(
    outputs: Mapping[str, Mapping[str, Any] | None],
    statuses: Mapping[str, str],
    *,
    groups: Mapping[str, Sequence[str]] | None = None,
    fanouts: Mapping[str, Sequence[str]] | None = None,
    flat: Iterable[str] = (),
) -> UpstreamSnapshot:
    """A snapshot independent of the order results arrived in: names sorted, member orders kept."""
    names = sorted(set(outputs) | set(statuses))
    return UpstreamSnapshot(
        jobs=FrozenDict({name: freeze_json(dict(outputs.get(name) or {})) for name in names}),
        statuses=FrozenDict({name: statuses.get(name, "success") for name in names}),
        groups=FrozenDict({g: tuple((groups or {})[g]) for g in sorted(groups or {})}),
        fanouts=FrozenDict({b: tuple((fanouts or {})[b]) for b in sorted(fanouts or {})}),
        flat=frozenset(flat),
    )


@attrs.frozen
class NeedView:
    """One upstream as ``ctx.needs`` shows it."""

    name: str
    result: JsonValue
    status: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "result": thaw_json(self.result), "status": self.status}


NeedsView = dict[str, NeedView | tuple[NeedView, ...]]


def _base_of(snapshot: UpstreamSnapshot, name: str) -> str:
    return next((base for base, children in snapshot.fanouts.items() if name in children), name)


def _view(snapshot: UpstreamSnapshot, name: str) -> NeedView:
    outputs = snapshot.jobs.get(name) or FrozenDict()
    result: JsonValue = outputs
    if _base_of(snapshot, name) in snapshot.flat and isinstance(outputs, Mapping):
        steps = list(outputs.values())
        result = steps[0] if len(steps) == 1 and isinstance(steps[0], Mapping) else FrozenDict()
    return NeedView(name, result, snapshot.statuses.get(name, "success"))


def needs_view(snapshot: UpstreamSnapshot) -> NeedsView:
    """``ctx.needs`` of a generator replaying ``snapshot`` (10 §9: job -> {result, status}, group ->
    ordered [{name, result, status}]); a fan-out base lists its children like a group."""
    view: NeedsView = {}
    for group, members in snapshot.groups.items():
        view[group] = tuple(_view(snapshot, member) for member in members)
    for base, children in snapshot.fanouts.items():
        view[base] = tuple(_view(snapshot, child) for child in children)
    for name in snapshot.jobs:
        view[name] = _view(snapshot, name)
    return view


def needs_view_json(snapshot: UpstreamSnapshot) -> dict[str, Any]:
    """The view as the JSON the runner turns into ``ctx.needs``."""
    return {
        name: [v.to_json() for v in entry] if isinstance(entry, tuple) else entry.to_json()
        for name, entry in needs_view(snapshot).items()
    }


# --- dynamic matrices ----------------------------------------------------------------------------


class MatrixExpansionError(ValueError):
    """A dynamic matrix that cannot fan out; the message starts with the ``matrix_expansion`` category."""


def _expansion_error(job: str, why: str) -> MatrixExpansionError:
    return MatrixExpansionError(f"{MATRIX_EXPANSION}: dynamic matrix of job '{job}' {why}")


def expand_dynamic_matrix(
    job: str,
    values: MatrixValues,
    include: Sequence[Mapping[str, Any]] = (),
    exclude: Sequence[Mapping[str, Any]] = (),
) -> list[MatrixChild]:
    """The children of a job whose matrix function returned ``values`` (0 or > 256 fails the job)."""
    try:
        estimate = matrix_size(values) + len(include)
    except InvalidMatrixError as exc:
        raise _expansion_error(job, f"is invalid: {exc}") from None
    if estimate > MAX_MATRIX_JOBS:
        raise _expansion_error(
            job, f"would generate {estimate} jobs, exceeding the limit of {MAX_MATRIX_JOBS}"
        )
    children = expand_job_matrix(job, values, include, exclude)
    if not children:
        raise _expansion_error(job, f"produced no combinations (a matrix needs 1 to {MAX_MATRIX_JOBS})")
    seen: set[str] = set()
    for child in children:
        if child.name in seen:
            raise _expansion_error(job, f"produces the job '{child.name}' twice")
        seen.add(child.name)
    return children


__all__ = [
    "DEFAULT_EVAL_TIMEOUT_MS",
    "DRIFT_DROPPED_REASON",
    "DYNAMIC_EVAL",
    "FLAT_STEP",
    "INIT_VALUE_TIMEOUT_MS",
    "MATRIX_EXPANSION",
    "MAX_DYNAMIC_JOBS",
    "DynamicEvalError",
    "GuardOutcome",
    "GuardVerdict",
    "MatrixExpansionError",
    "NeedView",
    "NeedsView",
    "UpstreamSnapshot",
    "check_generated_jobs",
    "check_generated_names",
    "determinism_guard",
    "duplicate_job_message",
    "eval_job_name",
    "expand_dynamic_matrix",
    "freeze_snapshot",
    "group_tag",
    "init_job_name",
    "lock_job_from_generated",
    "needs_view",
    "needs_view_json",
    "parse_generated_jobs",
    "too_many_jobs_message",
]
