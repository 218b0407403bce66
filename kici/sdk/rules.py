"""Rules (SDK-16, SDK-40): named predicates that skip a workflow, job or step when they do not pass.

Rules run where the workflow module is loaded (runner, init phase, ``kici run local``),
never in the orchestrator core. A rule that returns a false value or raises does
not pass, and the element is *skipped*, never failed: a broken predicate should not
turn a pipeline red. Checks are synchronous; an ``async def`` check is reported as
an error (and so does not pass) because rules are evaluated before any event loop
exists for the element.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kici.sdk.checks import INVALID_OPTION, check_name, check_optional_callable, is_number
from kici.sdk.diagnostics import error
from kici.sdk.location import SourceLocation, caller_location


@dataclass(frozen=True)
class Fanout:
    """Position of one fan-out child (matrix combination or host), as ``ctx.fanout`` reports it."""

    index: int = 0
    total: int = 1

    @property
    def first(self) -> bool:
        return self.index == 0

    @property
    def last(self) -> bool:
        return self.index == self.total - 1


SINGLE_CHILD = Fanout()
"""What a job without fan-out is: the only child, index 0 (00 §1.3)."""


@dataclass(frozen=True)
class RuleContext:
    """What a rule check receives (00 §1.6); built by whoever evaluates the rules."""

    event: Any = None
    changed_files: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    sh: Callable[..., Any] | None = None
    dispatch_inputs: Mapping[str, Any] = field(default_factory=dict)
    fanout: Fanout = SINGLE_CHILD


@dataclass(frozen=True, eq=False)
class Rule:
    """``negate`` turns the rule into a ``skip()``: it passes when the check is false."""

    label: str
    check: Callable[[Any], Any] | None = None
    negate: bool = False
    location: SourceLocation = field(default_factory=caller_location, repr=False)

    def __post_init__(self) -> None:
        check_name(self.label, "rule label", self.location)
        check_optional_callable(self.check, f"rule '{self.label}' check", self.location)
        if self.negate and self.check is None:
            raise error(INVALID_OPTION, f"skip('{self.label}') needs a check", self.location)

    def evaluate(self, ctx: Any) -> tuple[bool, str | None]:
        """``(passed, error text)``; a raising or asynchronous check does not pass."""
        if self.check is None:
            return True, None
        try:
            outcome = self.check(ctx)
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        if inspect.isawaitable(outcome):
            if inspect.iscoroutine(outcome):
                outcome.close()
            return False, f"rule '{self.label}': checks must be synchronous functions"
        return bool(outcome) != self.negate, None


def rule(label: str, check: Callable[[Any], Any] | None = None) -> Rule:
    """Passes when ``check(ctx)`` is true; without a check it always passes."""
    return Rule(label, check, location=caller_location())


def skip(label: str, check: Callable[[Any], Any]) -> Rule:
    """Passes when ``check(ctx)`` is false: "skip when ..." reads better for exclusions."""
    return Rule(label, check, negate=True, location=caller_location())


@dataclass(frozen=True)
class RuleResult:
    label: str
    passed: bool
    duration_ms: int
    error: str | None = None


@dataclass(frozen=True)
class RuleEvaluation:
    all_passed: bool
    results: tuple[RuleResult, ...]


def evaluate_rules(
    rules: Sequence[Rule],
    ctx: Any,
    label: str,
    on_result: Callable[[RuleResult], None] | None = None,
) -> RuleEvaluation:
    """Evaluate in order and stop at the first rule that does not pass (fail-fast).

    ``label`` names the element the rules guard; it prefixes error texts so a skipped
    job's log says which rule of which element broke.
    """
    results: list[RuleResult] = []
    for item in rules:
        started = time.perf_counter()
        passed, error = item.evaluate(ctx)
        elapsed = round((time.perf_counter() - started) * 1000)
        result = RuleResult(item.label, passed, elapsed, None if error is None else f"{label}: {error}")
        results.append(result)
        if on_result is not None:
            on_result(result)
        if not passed:
            return RuleEvaluation(False, tuple(results))
    return RuleEvaluation(True, tuple(results))


def _fanout(ctx: Any) -> Fanout:
    found = getattr(ctx, "fanout", None)
    return SINGLE_CHILD if found is None else found


def only_on_first_host() -> Rule:
    """A step rule for rolling fan-outs: run the step on the first child only."""
    return Rule("only on first host", lambda ctx: _fanout(ctx).first, location=caller_location())


def only_on_last_host() -> Rule:
    return Rule("only on last host", lambda ctx: _fanout(ctx).last, location=caller_location())


def only_on_fanout_index(index: int) -> Rule:
    location = caller_location()
    if not is_number(index) or not isinstance(index, int) or index < 0:
        raise error(
            INVALID_OPTION, f"only_on_fanout_index(): index must be an int >= 0, got {index!r}", location
        )
    return Rule(f"only on fan-out index {index}", lambda ctx: _fanout(ctx).index == index, location=location)
