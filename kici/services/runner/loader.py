"""Phase 3 (load): check the lock's content hash, import the workflow module, find the job.

The hash is the 00 §2.3 workflow ``contentHash``, reimplemented here with the standard library because the
runner may not import ``kici.domain`` (D1); a unit test pins it to ``kici.domain.lockfile.hashing``. It is
checked *before* the import, so a module edited after ``kici compile`` never runs at all (drift rule D1).
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kici
from kici.sdk.discovery import discover_workflows, load_workflow_module
from kici.sdk.naming import job_names

COMPILE_SCHEMA_VERSION = 5
_PREFIX = 12


class LoadError(Exception):
    """The job cannot be loaded; the message is the job's error."""


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _normalize(path: str) -> str:
    normalized = posixpath.normpath(path.replace("\\", "/"))
    return "" if normalized == "." else normalized


def asset_digest(repo_root: Path, files: Sequence[str]) -> str:
    """``path + "\\n" + content`` over the normalized, deduplicated, sorted ``resolvedHashFiles``."""
    parts = []
    for path in sorted({_normalize(p) for p in files}):
        try:
            content = _text((repo_root / path).read_bytes())
        except OSError:
            content = ""
        parts.append(f"{path}\n{content}")
    return "".join(parts)


def workflow_content_hash(raw: str, digest: str | None) -> str:
    text = f"{COMPILE_SCHEMA_VERSION}:{_lf(raw)}"
    if digest is not None:
        text += "\0" + _lf(digest)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def check_content_hash(
    workflow_path: Path, repo_root: Path, expected: str, hash_files: Sequence[str] | None
) -> None:
    """Raise ``LoadError`` with the D1 message when the source no longer matches the lock."""
    try:
        raw = _text(workflow_path.read_bytes())
    except OSError as exc:
        raise LoadError(f"cannot read workflow file {workflow_path}: {exc.strerror or exc}") from None
    digest = asset_digest(repo_root, hash_files) if hash_files is not None else None
    actual = workflow_content_hash(raw, digest)
    if actual != expected:
        raise LoadError(
            "lock file is out of date (workflow source changed without regenerating the lock file): "
            f"lock contentHash {expected[:_PREFIX]}…, source {actual[:_PREFIX]}… "
            f"(kici SDK {kici.__version__}). "
            "Run `kici compile` and commit .kici/kici.lock.json."
        )


@dataclass(frozen=True)
class LoadedJob:
    workflow: Any
    workflow_name: str
    job: Any
    job_name: str
    job_names: dict[int, str]


def load_workflow(
    repo_root: Path,
    workflow_file: str,
    kici_dir: str,
    *,
    export: str | None = None,
    workflow_name: str | None = None,
) -> Any:
    """Import ``workflow_file`` (repo-relative) and pick the workflow by export, else by name."""
    path = (repo_root / workflow_file).resolve()
    if not path.is_file():
        raise LoadError(f"workflow file not found: {workflow_file}")
    module = load_workflow_module(path, (repo_root / kici_dir).resolve(), repo_root)
    found = discover_workflows(module)
    chosen = None
    for attr, workflow in found:
        if (export is not None and attr == export) or (export is None and workflow.name == workflow_name):
            chosen = workflow
            break
    if chosen is None and export is None and workflow_name is None and len(found) == 1:
        chosen = found[0][1]
    if chosen is None:
        wanted = export or workflow_name or "<unspecified>"
        available = ", ".join(f"{attr} ({wf.name})" for attr, wf in found) or "none"
        raise LoadError(f"workflow {wanted} not found in {workflow_file} (available: {available})")
    return chosen


def find_job(workflow: Any, job_name: str) -> LoadedJob:
    """The static job of ``workflow`` that the lock calls ``job_name``."""
    names = job_names(workflow)
    for name, job in names:
        if name == job_name:
            return LoadedJob(workflow, workflow.name, job, name, {id(j): n for n, j in names})
    available = ", ".join(name for name, _ in names) or "none"
    raise LoadError(f"job '{job_name}' not found in workflow '{workflow.name}' (jobs: {available})")


def load_job(
    repo_root: Path,
    workflow_file: str,
    kici_dir: str,
    job_name: str,
    *,
    export: str | None = None,
    workflow_name: str | None = None,
) -> LoadedJob:
    """Import ``workflow_file`` (repo-relative) and find the workflow and the job by lock name."""
    workflow = load_workflow(repo_root, workflow_file, kici_dir, export=export, workflow_name=workflow_name)
    return find_job(workflow, job_name)


__all__ = [
    "COMPILE_SCHEMA_VERSION",
    "LoadError",
    "LoadedJob",
    "asset_digest",
    "check_content_hash",
    "find_job",
    "load_job",
    "load_workflow",
    "workflow_content_hash",
]
