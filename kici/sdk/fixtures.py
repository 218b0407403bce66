"""Test fixtures (SDK-36): named events in ``.kici/tests/*.py`` for ``kici run remote`` / ``kici fixture``.

A fixture names an event in the CLI's event grammar (``push``, ``pr:open`` ...) plus
the context to simulate it in. Its ``id`` selects it on the command line, so it must
be one shell word (E218).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kici.sdk.checks import INVALID_OPTION, check_optional_str, check_str_map
from kici.sdk.diagnostics import error
from kici.sdk.location import SourceLocation, caller_location

FIXTURE_ERROR = "E218"


@dataclass(frozen=True, eq=False)
class Fixture:
    id: str
    event: str
    branch: str | None = None
    sha: str | None = None
    repo: str | None = None
    pr: int | None = None
    secrets: dict[str, str] | None = None
    workflow_name: str | None = None
    location: SourceLocation = field(default_factory=caller_location, repr=False)

    def __post_init__(self) -> None:
        loc = self.location
        if not isinstance(self.id, str) or not self.id:
            raise error(FIXTURE_ERROR, "Fixture ID must be a non-empty string", loc)
        if any(ch.isspace() for ch in self.id):
            raise error(FIXTURE_ERROR, f'Fixture ID must not contain whitespace: "{self.id}"', loc)
        if not isinstance(self.event, str) or not self.event.strip():
            raise error(
                INVALID_OPTION, f"fixture('{self.id}'): event must be an event argument such as 'push'", loc
            )
        for what in ("branch", "sha", "repo", "workflow_name"):
            check_optional_str(getattr(self, what), f"fixture('{self.id}'): {what}", loc)
        if self.pr is not None and (isinstance(self.pr, bool) or not isinstance(self.pr, int) or self.pr < 1):
            raise error(
                INVALID_OPTION,
                f"fixture('{self.id}'): pr must be a pull request number >= 1, got {self.pr!r}",
                loc,
            )
        if self.secrets is not None:
            object.__setattr__(
                self, "secrets", check_str_map(self.secrets, f"fixture('{self.id}'): secrets", loc)
            )


def fixture(
    id: str,
    event: str,
    *,
    branch: str | None = None,
    sha: str | None = None,
    repo: str | None = None,
    pr: int | None = None,
    secrets: dict[str, str] | None = None,
    workflow_name: str | None = None,
) -> Fixture:
    return Fixture(id, event, branch, sha, repo, pr, secrets, workflow_name, location=caller_location())
