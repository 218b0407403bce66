"""Definition-time diagnostics: the error every factory raises and the warnings objects collect.

Codes (00 §4) are fixed per condition so the compiler can print
``file:line:col: error [CODE]: message``. Where §4 gives no code for a PY+ check,
the SDK uses the nearest family and says so here:

* E208 also covers every literal-union check of a trigger factory (``pr(): unknown
  event 'x' (allowed: ...)``), as §4 itself does for ``pr()``.
* E212 also covers a label that is not a non-empty string or a ``re.Pattern``, and
  an empty ``runs_on`` / ``runs_on_all`` group.
* E217 also covers a ``needs`` entry that is not a job, a name, ``Need`` or
  ``dynamic_group``.
* E220 also covers every other invalid option value of a job, step, hook, matrix,
  retry, cache or duration (wrong type, out of range, unknown literal): §4 lists
  retry and cache there, and all of them are "an option the runner could not honour".

Warnings never stop a build; the object that noticed the problem keeps them in
``.warnings`` for the compiler to print (a job's list includes its parallel groups',
so printing every job's ``.warnings`` reports each warning once):

* W002 ``on_unreachable`` without ``runs_on_all`` (ignored)
* W003 ``include_uninitialized`` without ``runs_on_all`` (ignored)
* W004 ``max_parallel`` / ``fail_fast`` on a job without fan-out (ignored)
* W005 a ``parallel()`` group with a single child
* W006 two steps of one job share a name
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kici.sdk.errors import KiciDefinitionError
from kici.sdk.location import SourceLocation


@dataclass(frozen=True)
class KiciWarning:
    """A problem worth telling the author about that does not invalidate the definition."""

    code: str
    message: str
    location: SourceLocation

    def __str__(self) -> str:
        return f"{self.location}: warning [{self.code}]: {self.message}"


def error(code: str, message: str, location: SourceLocation) -> KiciDefinitionError:
    """The located error to raise: ``raise error("E201", "...", location)``."""
    return KiciDefinitionError(message, code=code, location=location)


def show_allowed(values: Iterable[str]) -> str:
    return ", ".join(values)


def subject(kind: str, name: str | None) -> str:
    """``job('x')`` or ``job(<unnamed>)``: how messages name the object at fault."""
    return f"{kind}('{name}')" if name is not None else f"{kind}(<unnamed>)"
