"""Approval gates (SDK-35): who must approve before a workflow, job or step proceeds.

``approval=True`` asks any approval-capable member; a list of ``team()``/``user()``
clauses asks all of them (AND); ``Approval(...)`` adds a reason, a timeout (seconds,
kept as seconds in the lock) and ``when="drift"``, which only makes sense on a step
with a check facet, because only such a step knows whether it would change anything
(E206).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from kici.sdk.checks import INVALID_OPTION, Seconds, as_optional_seconds, as_tuple, check_name, one_of
from kici.sdk.diagnostics import error
from kici.sdk.location import SourceLocation, caller_location

ApprovalWhen = Literal["always", "drift"]
APPROVAL_WHEN = ("always", "drift")


@dataclass(frozen=True)
class Team:
    team: str


@dataclass(frozen=True)
class User:
    user: str


Approver = Team | User


def team(name: str) -> Team:
    return Team(check_name(name, "team()", caller_location()))


def user(name: str) -> User:
    return User(check_name(name, "user()", caller_location()))


@dataclass(frozen=True, eq=False)
class Approval:
    approvers: Sequence[Approver] = ()
    when: ApprovalWhen = "always"
    reason: str | None = None
    timeout: Seconds | None = None
    location: SourceLocation = field(default_factory=caller_location, repr=False)

    def __post_init__(self) -> None:
        loc = self.location
        approvers = as_tuple(self.approvers)
        for clause in approvers:
            if not isinstance(clause, Team | User):
                raise error(
                    INVALID_OPTION, f"approvers must be team(...) or user(...) clauses, got {clause!r}", loc
                )
        object.__setattr__(self, "approvers", approvers)
        one_of(self.when, APPROVAL_WHEN, "approval.when", loc)
        if self.reason is not None and not isinstance(self.reason, str):
            raise error(INVALID_OPTION, f"approval.reason must be a string, got {self.reason!r}", loc)
        object.__setattr__(self, "timeout", as_optional_seconds(self.timeout, "approval.timeout", loc))


def as_approval(value: object, location: SourceLocation) -> Approval | None:
    if value is None or value is False:
        return None
    if value is True:
        return Approval(location=location)
    if isinstance(value, Approval):
        return value
    if isinstance(value, Team | User | list | tuple):
        return Approval(approvers=as_tuple(value), location=location)
    raise error(
        INVALID_OPTION,
        f"approval must be True, a list of team()/user() or Approval(...), got {value!r}",
        location,
    )


def forbid_drift_outside_steps(approval: Approval | None, scope: str, location: SourceLocation) -> None:
    if approval is not None and approval.when == "drift":
        raise error(
            "E206", f'approval.when "drift" is only valid on steps (found at {scope} scope)', location
        )
