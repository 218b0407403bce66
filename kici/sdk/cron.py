"""A standard-library check of 5-field cron expressions (E209), so typos fail at definition time.

The orchestrator schedules with croniter; this parser accepts a subset of what
croniter accepts (a property test holds it to that), so a schedule the SDK lets
through never fails later. Accepted per field: ``*``, numbers, ranges ``a-b``,
lists ``a,b``, steps ``*/n``, ``a-b/n`` and ``a/n``; month (``jan``..``dec``) and
weekday (``sun``..``sat``) names in any case; weekday 7 is Sunday. A range whose
start is after its end wraps around (``fri-mon``), as in croniter. Not accepted:
macros (``@daily``), seconds or year fields, and the extensions ``L``, ``W``,
``#`` and ``?``, which not every scheduler agrees on.
"""

from __future__ import annotations

from dataclasses import dataclass

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    name_base: int = 0


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, _MONTHS, 1),
    _Field("day-of-week", 0, 7, _WEEKDAYS, 0),
)


class CronSyntaxError(ValueError):
    """The reason an expression is not a valid 5-field cron expression."""


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _value(text: str, spec: _Field) -> int:
    lowered = text.lower()
    if lowered in spec.names:
        return spec.names.index(lowered) + spec.name_base
    if not _digits(text):
        raise CronSyntaxError(
            f"{spec.name} field: '{text}' is not a number" + (" or a name" if spec.names else "")
        )
    number = int(text)
    if not spec.low <= number <= spec.high:
        raise CronSyntaxError(f"{spec.name} field: {number} is out of range {spec.low}-{spec.high}")
    return number


def _element(text: str, spec: _Field) -> None:
    base, slash, step = text.partition("/")
    if slash and (not _digits(step) or int(step) < 1):
        raise CronSyntaxError(f"{spec.name} field: step '{step}' must be a number >= 1")
    if base == "*":
        return
    start, dash, end = base.partition("-")
    if not start:
        raise CronSyntaxError(f"{spec.name} field: empty value in '{text}'")
    _value(start, spec)
    if dash:
        if not end:
            raise CronSyntaxError(f"{spec.name} field: range '{base}' has no end")
        _value(end, spec)


def check_cron(expression: str) -> None:
    """Raise :class:`CronSyntaxError` unless ``expression`` is a valid 5-field cron expression."""
    fields = expression.split()
    if len(fields) != len(_FIELDS):
        raise CronSyntaxError(
            f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}"
        )
    for text, spec in zip(fields, _FIELDS, strict=True):
        for element in text.split(","):
            if not element:
                raise CronSyntaxError(f"{spec.name} field: empty list element in '{text}'")
            _element(element, spec)
