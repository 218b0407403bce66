"""Drift between a lock and its sources (spec 00 §2.6): D1 on the runner, D2 for ``kici compile --locked``.

Both are pure: the runner passes the extracted entry file's text and the asset
digest it rebuilt from ``resolvedHashFiles``; the CLI passes the committed lock
and the one it regenerated in memory. Locks are compared semantically (as
models), never bytewise, so formatting of the committed file does not matter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import attrs

from kici.domain.lockfile.codec import to_json
from kici.domain.lockfile.hashing import workflow_content_hash
from kici.domain.lockfile.model import COMPILE_SCHEMA_VERSION, LockFile, LockWorkflow

STALE_LOCK_MESSAGE: Final = (
    "lock file is out of date (workflow source changed without regenerating the lock file)"
)
HASH_PREFIX: Final = 12


def _short(value: str | None) -> str:
    if not value:
        return "(none)"
    return value[:HASH_PREFIX] + ("…" if len(value) > HASH_PREFIX else "")


def check_source_drift(
    workflow: LockWorkflow, raw_text: str, asset_digest: str | None, *, sdk_version: str
) -> str | None:
    """D1: ``None`` when the source matches the lock, else the message the run fails with.

    ``asset_digest`` must be ``None`` exactly when the workflow has no
    ``resolvedHashFiles``, as at compile time.
    """
    actual = workflow_content_hash(raw_text, asset_digest)
    if workflow.compile_schema_version == COMPILE_SCHEMA_VERSION and workflow.content_hash == actual:
        return None
    locked = f"{_short(workflow.content_hash)} (compile schema {workflow.compile_schema_version})"
    return (
        f'{STALE_LOCK_MESSAGE}: workflow "{workflow.name}" ({workflow.source.file}): lock contentHash '
        f"{locked}, source hashes to {_short(actual)} (compile schema {COMPILE_SCHEMA_VERSION}, "
        f"kici SDK {sdk_version}). Run `kici compile` and commit .kici/kici.lock.json."
    )


_IDENTITY_KEYS: Final = ("name", "contentHash", "compileSchemaVersion")


def _structure(workflow: LockWorkflow) -> dict[str, Any]:
    data: dict[str, Any] = to_json(workflow)
    return {key: value for key, value in data.items() if key not in _IDENTITY_KEYS}


def _structure_changes(committed: LockWorkflow, regenerated: LockWorkflow) -> list[str]:
    before, after = _structure(committed), _structure(regenerated)
    return [key for key in dict.fromkeys([*after, *before]) if before.get(key) != after.get(key)]


def _pair_by_name(workflows: Sequence[LockWorkflow]) -> dict[str, LockWorkflow]:
    paired: dict[str, LockWorkflow] = {}
    for workflow in workflows:
        paired.setdefault(workflow.name, workflow)
    return paired


def diff_locks(committed: LockFile, regenerated: LockFile) -> list[str]:
    """D2: what differs, one line each, per workflow; ``[]`` when the committed lock is up to date."""
    lines: list[str] = []
    if committed.schema_version != regenerated.schema_version:
        lines.append(
            f"schemaVersion differs: committed {committed.schema_version}, "
            f"regenerated {regenerated.schema_version}"
        )
    if committed.lockfile_hash != regenerated.lockfile_hash:
        lines.append(
            f"lockfileHash differs (dependencies changed): committed {_short(committed.lockfile_hash)}, "
            f"regenerated {_short(regenerated.lockfile_hash)}"
        )
    before, after = _pair_by_name(committed.workflows), _pair_by_name(regenerated.workflows)
    for name, workflow in after.items():
        old = before.get(name)
        if old is None:
            lines.append(f'workflow "{name}": added ({workflow.source.file})')
            continue
        if (old.content_hash, old.compile_schema_version) != (
            workflow.content_hash,
            workflow.compile_schema_version,
        ):
            lines.append(
                f'workflow "{name}": source edited (contentHash {_short(old.content_hash)} -> '
                f"{_short(workflow.content_hash)})"
            )
        changed = _structure_changes(old, workflow)
        if changed:
            lines.append(f'workflow "{name}": structure changed ({", ".join(changed)})')
    lines.extend(
        f'workflow "{name}": removed ({workflow.source.file})'
        for name, workflow in before.items()
        if name not in after
    )
    if not lines and committed != attrs.evolve(regenerated, content_hash=committed.content_hash):
        order_before = [w.name for w in committed.workflows]
        order_after = [w.name for w in regenerated.workflows]
        if order_before != order_after:
            lines.append(f"workflow order differs: committed {order_before}, regenerated {order_after}")
        else:
            lines.append("lock file differs (top-level source)")
    return lines
