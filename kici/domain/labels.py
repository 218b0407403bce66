"""Label targeting: the set predicate, label-set selection, lock matchers and agent picking.

Two vocabularies meet here. Scalers and cluster routing compare plain label
*sets* (:func:`matches`, :func:`select_label_set`, 50 §4 and §8). Jobs in the
lock target agents with *matchers* (the lock's exact and regex
``LabelMatcher``, 00 §1.3), which :func:`label_matcher` derives from what the
author wrote in ``runs_on`` and :func:`pick_agent` evaluates against connected
agents.

Choices where the spec is silent:

* Exact labels compare case-insensitively (labels are normalised everywhere);
  regexes see the label as offered and are case-sensitive unless they carry
  the ``i`` flag, which is what a regex author expects.
* Globs compile to a regex that behaves exactly like the glob matcher (also
  case-sensitive, as picomatch is). Glob regexes are anchored with ``\\Z`` so
  that the lock's unanchored regex search agrees with the glob's whole-string
  match even on a label with a trailing newline.
* A scaler agent's mandatory labels must be *named* by the job: only exact
  matchers count as naming a label, otherwise ``runs_on=re.compile(".*")``
  would open every gated agent to every job.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal

import attrs

from kici.domain.globs import InvalidGlobError, glob_to_regex, is_glob
from kici.domain.lockfile.model import ExactLabelMatcher, LabelMatcher, RegexLabelMatcher
from kici.domain.regex import UnsafeRegexError, assert_safe_regex, regex_search

__all__ = [
    "AgentSlot",
    "ExactLabelMatcher",
    "InvalidLabelPatternError",
    "LabelMatcher",
    "LabelSetCandidate",
    "PickMode",
    "RegexLabelMatcher",
    "agent_eligible",
    "assert_safe_regex",
    "label_matcher",
    "matcher_matches",
    "matchers_satisfied",
    "matches",
    "normalise",
    "pick_agent",
    "select_label_set",
]

PickMode = Literal["deterministic", "any"]

_FLAG_LETTERS = ((re.IGNORECASE, "i"), (re.MULTILINE, "m"), (re.DOTALL, "s"))
_IGNORED_FLAG_BITS = re.UNICODE
_ALLOWED_FLAG_BITS = re.IGNORECASE | re.MULTILINE | re.DOTALL | _IGNORED_FLAG_BITS


class InvalidLabelPatternError(ValueError):
    """E212: a ``runs_on`` element cannot become a lock matcher."""

    code = "E212"


def normalise(labels: Iterable[str]) -> tuple[str, ...]:
    """Lowercased, deduplicated, sorted: the canonical form of a label set."""
    return tuple(sorted({label.lower() for label in labels}))


def matches(
    required: Iterable[str],
    offered: Iterable[str],
    mandatory: Iterable[str] = (),
    exclude: Iterable[str] = (),
) -> bool:
    """The label predicate of 50 §4.

    ``required ⊆ offered ∧ mandatory ⊆ required ∧ offered ∩ exclude = ∅``, all
    case-insensitive. An empty ``required`` therefore matches only where no
    label is mandatory: gated capacity is never handed to an untargeted job.
    """
    req = set(normalise(required))
    off = set(normalise(offered))
    return req <= off and set(normalise(mandatory)) <= req and off.isdisjoint(normalise(exclude))


@attrs.frozen
class LabelSetCandidate:
    """One (scaler, label set) pair in configuration order."""

    owner: str
    labels: tuple[str, ...] = attrs.field(converter=normalise)
    mandatory: tuple[str, ...] = attrs.field(default=(), converter=normalise)


def select_label_set(
    required: Iterable[str], candidates: Sequence[LabelSetCandidate], exclude: Iterable[str] = ()
) -> LabelSetCandidate | None:
    """The smallest matching label set, earlier configuration winning ties; ``None`` means no backend.

    The smallest set is the least specialised machine that still satisfies the
    job, which keeps bigger (costlier) machines free for jobs that need them.
    """
    req = normalise(required)
    exc = normalise(exclude)
    best: LabelSetCandidate | None = None
    for candidate in candidates:
        if matches(req, candidate.labels, candidate.mandatory, exc) and (
            best is None or len(candidate.labels) < len(best.labels)
        ):
            best = candidate
    return best


def _regex_flags(pattern: re.Pattern[str]) -> str:
    extra = pattern.flags & ~_ALLOWED_FLAG_BITS
    if extra:
        raise InvalidLabelPatternError(
            f"regex /{pattern.pattern}/ uses unsupported flags {re.RegexFlag(extra)!r} "
            "(allowed: re.I, re.M, re.S)"
        )
    return "".join(letter for bit, letter in _FLAG_LETTERS if pattern.flags & bit)


def _checked_regex(source: str, flags: str) -> LabelMatcher:
    try:
        assert_safe_regex(source, flags)
    except UnsafeRegexError as exc:
        if exc.reason.startswith("ReDoS-prone"):
            message = f"regex /{source}/{flags} is ReDoS-prone — rejected"
        else:
            message = f"regex /{source}/{flags} is rejected: {exc.reason}"
        raise InvalidLabelPatternError(message) from exc
    return RegexLabelMatcher(source=source, flags=flags)


def label_matcher(element: str | re.Pattern[str]) -> LabelMatcher:
    """The mode rule for one ``runs_on`` element (00 §1.3).

    Plain string -> exact; a string with ``* ? [ ] { }`` -> glob, compiled to a
    regex because the lock holds only exact and regex matchers; ``re.Pattern``
    -> regex with ``re.I/M/S`` as ``i/m/s`` (``re.U`` ignored, any other flag
    rejected). Every regex passes the ReDoS gate here, at compile time.
    """
    if isinstance(element, re.Pattern):
        if not isinstance(element.pattern, str):
            raise InvalidLabelPatternError("byte-string regexes cannot match labels")
        return _checked_regex(element.pattern, _regex_flags(element))
    if not element:
        raise InvalidLabelPatternError("a label must be a non-empty string")
    if not is_glob(element):
        return ExactLabelMatcher(value=element)
    try:
        source = glob_to_regex(element)
    except InvalidGlobError as exc:
        raise InvalidLabelPatternError(f"glob '{element}' is not a valid pattern") from exc
    return _checked_regex(source, "")


def matcher_matches(matcher: LabelMatcher, label: str) -> bool:
    """Exact: case-insensitive equality. Regex: unanchored search with the matcher's flags."""
    if isinstance(matcher, ExactLabelMatcher):
        return matcher.value.lower() == label.lower()
    return regex_search(matcher.source, matcher.flags, label)


def matchers_satisfied(
    runs_on: Sequence[LabelMatcher], offered: Iterable[str], exclude: Sequence[LabelMatcher] = ()
) -> bool:
    """Every ``runs_on`` matcher is met by some offered label and no offered label is excluded."""
    labels = list(offered)
    return all(any(matcher_matches(m, label) for label in labels) for m in runs_on) and not any(
        matcher_matches(m, label) for m in exclude for label in labels
    )


@attrs.frozen
class AgentSlot:
    """What the dispatcher knows about one connected, non-draining agent."""

    agent_id: str
    labels: tuple[str, ...] = attrs.field(converter=tuple)
    active_jobs: int = 0
    max_concurrency: int = 1
    mandatory: tuple[str, ...] = attrs.field(default=(), converter=tuple)

    @property
    def has_capacity(self) -> bool:
        return self.active_jobs < self.max_concurrency


def agent_eligible(
    agent: AgentSlot, runs_on: Sequence[LabelMatcher], exclude: Sequence[LabelMatcher] = ()
) -> bool:
    """Labels fit and every mandatory label of the agent is named by an exact matcher."""
    named = {m.value.lower() for m in runs_on if isinstance(m, ExactLabelMatcher)}
    return matchers_satisfied(runs_on, agent.labels, exclude) and all(
        label.lower() in named for label in agent.mandatory
    )


def pick_agent(
    agents: Sequence[AgentSlot],
    runs_on: Sequence[LabelMatcher],
    exclude: Sequence[LabelMatcher] = (),
    pick: PickMode = "deterministic",
) -> AgentSlot | None:
    """The agent a job goes to, or ``None`` when no eligible agent has a free slot.

    ``deterministic`` takes the lowest agent id, so the same fleet always gets
    the same job on the same host. ``any`` takes the first fitting agent in the
    caller's order: the domain draws no random numbers, so a caller wanting
    spread passes the agents shuffled or rotated.
    """
    fitting = [a for a in agents if a.has_capacity and agent_eligible(a, runs_on, exclude)]
    if not fitting:
        return None
    if pick == "deterministic":
        return min(fitting, key=lambda a: a.agent_id)
    return fitting[0]
