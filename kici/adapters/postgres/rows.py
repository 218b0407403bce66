"""Conversions between the stores' attrs records and PostgreSQL values.

JSON columns hold frozen JSON (``kici.domain.lockfile.frozen``) in the records;
a ``None`` value is stored as SQL NULL, so a JSON ``null`` does not survive a
round trip (no column needs to tell the two apart).
"""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from kici.domain.execution.states import InitFailure, InitFailureCategory, InitFailureScope
from kici.domain.lockfile.frozen import JsonValue, freeze_json, thaw_json


def to_jsonb(value: JsonValue) -> Jsonb | None:
    return None if value is None else Jsonb(thaw_json(value))


def from_jsonb(value: Any) -> JsonValue:
    return None if value is None else freeze_json(value)


def init_failure_to_jsonb(failure: InitFailure | None) -> Jsonb | None:
    if failure is None:
        return None
    doc: dict[str, str] = {
        "scope": failure.scope.value,
        "category": failure.category.value,
        "message": failure.message,
    }
    if failure.job_name is not None:
        doc["jobName"] = failure.job_name
    return Jsonb(doc)


def init_failure_from_jsonb(value: Any) -> InitFailure | None:
    if value is None:
        return None
    return InitFailure(
        InitFailureScope(value["scope"]),
        InitFailureCategory(value["category"]),
        value["message"],
        value.get("jobName"),
    )


def text_safe(value: str) -> str:
    """PostgreSQL text cannot hold NUL; log lines from arbitrary programs can."""
    return value.replace("\x00", "\ufffd")
