"""Step-index allocation (EXE-05): every executed unit of a job gets its own ``step_index``.

``(run_id, job_id, step_index)`` keys ``execution_steps`` and routes log chunks,
so two units sharing an index would overwrite each other's row and interleave
their logs. The layout, for ``n`` flattened steps (parallel children included):

* steps ``0 .. n-1``; the beforeStep hook of step ``i`` at ``n+2i``, its afterStep at ``n+2i+1``;
* job completion / cancel hooks sequentially from ``3n`` (the reference started at ``n``,
  colliding with step 0's beforeStep; we start at ``3n``);
* cache pseudo-steps from ``3n+100``, in blocks of 1000 per cache owner;
* the init spec ``k`` at ``1_000_000+k``; the prepare phase logs to ``-1``.

A cache owner is a dense ordinal the caller assigns to each unit that uses a
cache (a step or an init spec), in execution order; only units with caches get
a block, which keeps the layout below the init range for large jobs. Anything
that would leave its region raises :class:`StepIndexError` instead of colliding.
"""

from __future__ import annotations

from enum import StrEnum

import attrs

PREPARE_STEP_INDEX = -1
INIT_STEP_BASE = 1_000_000
CACHE_BASE_OFFSET = 100
CACHE_BLOCK_SIZE = 1000
MAX_COMPLETION_HOOKS = CACHE_BASE_OFFSET


class StepIndexError(ValueError):
    """An index requested outside its region of the layout."""


class SlotKind(StrEnum):
    PREPARE = "prepare"
    STEP = "step"
    BEFORE_STEP = "before_step"
    AFTER_STEP = "after_step"
    COMPLETION_HOOK = "completion_hook"
    CACHE = "cache"
    INIT = "init"


def _non_negative(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise StepIndexError(f"{attribute.name} must be >= 0, got {value}")


@attrs.frozen
class StepIndexLayout:
    """The index layout of one job with ``step_count`` flattened steps."""

    step_count: int = attrs.field(validator=_non_negative)

    def _step(self, i: int) -> int:
        if not 0 <= i < self.step_count:
            raise StepIndexError(f"step {i} is outside 0..{self.step_count - 1}")
        return i

    def step(self, i: int) -> int:
        return self._step(i)

    def before_step(self, i: int) -> int:
        return self.step_count + 2 * self._step(i)

    def after_step(self, i: int) -> int:
        return self.step_count + 2 * self._step(i) + 1

    def completion_hook(self, k: int) -> int:
        """The ``k``-th completion or cancel hook run, in execution order."""
        if not 0 <= k < MAX_COMPLETION_HOOKS:
            raise StepIndexError(f"completion hook {k} is outside 0..{MAX_COMPLETION_HOOKS - 1}")
        return 3 * self.step_count + k

    def cache(self, owner: int, k: int) -> int:
        """The ``k``-th cache pseudo-step (restore or save) of cache owner ``owner``."""
        if owner < 0:
            raise StepIndexError(f"cache owner must be >= 0, got {owner}")
        if not 0 <= k < CACHE_BLOCK_SIZE:
            raise StepIndexError(f"cache pseudo-step {k} is outside 0..{CACHE_BLOCK_SIZE - 1}")
        index = 3 * self.step_count + CACHE_BASE_OFFSET + CACHE_BLOCK_SIZE * owner + k
        if index >= INIT_STEP_BASE:
            raise StepIndexError(
                f"cache owner {owner} of a {self.step_count}-step job reaches the init range"
            )
        return index

    def init(self, k: int) -> int:
        return init_step_index(k)


def init_step_index(k: int) -> int:
    if k < 0:
        raise StepIndexError(f"init spec must be >= 0, got {k}")
    return INIT_STEP_BASE + k


@attrs.frozen
class Slot:
    kind: SlotKind
    index: int
    # Step number, hook ordinal, init spec number, or the ordinal inside a cache owner's block.
    ordinal: int
    owner: int | None = None


@attrs.frozen
class JobStepShape:
    """What one job will execute, as far as index allocation cares.

    ``steps_with_hooks`` lists the steps that run beforeStep/afterStep hooks;
    ``cache_ops`` gives, per cache owner in order, how many cache pseudo-steps it runs.
    """

    step_count: int
    steps_with_hooks: frozenset[int] = frozenset()
    completion_hooks: int = 0
    cache_ops: tuple[int, ...] = ()
    init_specs: int = 0


def allocate_step_indices(shape: JobStepShape) -> tuple[Slot, ...]:
    """Every slot the job may write, in layout order; raises :class:`StepIndexError` on overflow."""
    layout = StepIndexLayout(shape.step_count)
    slots: list[Slot] = [Slot(SlotKind.PREPARE, PREPARE_STEP_INDEX, 0)]
    slots.extend(Slot(SlotKind.STEP, layout.step(i), i) for i in range(shape.step_count))
    for i in sorted(shape.steps_with_hooks):
        slots.append(Slot(SlotKind.BEFORE_STEP, layout.before_step(i), i))
        slots.append(Slot(SlotKind.AFTER_STEP, layout.after_step(i), i))
    slots.extend(
        Slot(SlotKind.COMPLETION_HOOK, layout.completion_hook(k), k) for k in range(shape.completion_hooks)
    )
    for owner, count in enumerate(shape.cache_ops):
        slots.extend(Slot(SlotKind.CACHE, layout.cache(owner, k), k, owner) for k in range(count))
    slots.extend(Slot(SlotKind.INIT, init_step_index(k), k) for k in range(shape.init_specs))
    return tuple(slots)
