"""The demo's sample repository and the GitHub push that announces it.

The repository is what a newcomer would write first: a tiny ``app.py`` and one workflow with a lint
job, a three-entry matrix test and a deploy that needs both (through the test's ``needs`` on lint).
Its lock file is compiled by kici's own compiler, never written by hand, so the demo fails loudly
the day the compiler and the sample disagree.

Choices: ``failing=True`` swaps in an ``add`` that subtracts, so the three test entries fail and the
deploy is skipped: the same pipeline shows the red path without a second workflow. The push payload
is GitHub's shape (a repository webhook, read by the ``github-repo`` preset of a universal-git
source) with the changed files listed in its one commit, so path filters would see them.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from kici.domain.lockfile import dump_lock
from kici.domain.webhooks.models import LOCK_FILE_PATH
from kici.domain.webhooks.verification import GITHUB_SIGNATURE_HEADER, sign_body
from kici.services.compiler.api import compile_project
from kici.services.compiler.diagnostics import format_all

REPO: Final = "demo/app"
BRANCH: Final = "main"
WORKFLOW_NAME: Final = "ci"
WORKFLOW_PATH: Final = ".kici/workflows/ci.py"
APP_PATH: Final = "app.py"
MATRIX: Final = ("3.11", "3.12", "3.13")
JOB_NAMES: Final = ("lint", "test", "deploy")
ZERO_SHA: Final = "0" * 40

WORKFLOW_SOURCE: Final = '''\
"""The demo pipeline: lint, a three-entry matrix test, and a deploy that needs both."""

from kici.sdk import job, push, step, workflow


def lint(ctx):
    ctx.sh("python3 -m py_compile app.py")
    ctx.log.info("lint ok")


def test(ctx):
    ctx.sh(
        "python3 -c 'import app; assert app.add(2, 3) == 5; print(\\"tests pass on\\", \\"{v}\\")'",
        v=ctx.matrix.python,
    )


@step("package", outputs={"version": str})
def package(ctx):
    return {"version": str(ctx.sh("python3 -c 'import app; print(app.VERSION)'")).strip()}


def deploy(ctx):
    ctx.sh("echo deploying version {v}", v=package.result.version)


lint_job = job("lint", runs_on="kici:os:linux", steps=[step("compile", lint)])
test_job = job(
    "test",
    runs_on="kici:os:linux",
    needs=[lint_job],
    matrix={"python": ["3.11", "3.12", "3.13"]},
    steps=[step("unit tests", test)],
)
deploy_job = job("deploy", runs_on="kici:os:linux", needs=[test_job], steps=[package, step("deploy", deploy)])
ci = workflow("ci", on=[push(branches="main")], jobs=[lint_job, test_job, deploy_job])
'''

APP_SOURCE: Final = '''\
"""The sample application the demo pipeline lints, tests and deploys."""

VERSION = "1.0.0"


def add(a, b):
    return a + b
'''

BROKEN_APP_SOURCE: Final = APP_SOURCE.replace("return a + b", "return a - b")


class SampleCompileError(RuntimeError):
    """kici's compiler refused the sample workflow; the message carries its diagnostics."""


def source_files(*, failing: bool = False) -> dict[str, str]:
    """The repository's files before compilation (``failing`` breaks ``add``)."""
    return {WORKFLOW_PATH: WORKFLOW_SOURCE, APP_PATH: BROKEN_APP_SOURCE if failing else APP_SOURCE}


def compile_lock(files: Mapping[str, str]) -> str:
    """The lock file text kici's compiler writes for ``files`` (compiled in a scratch checkout)."""
    with tempfile.TemporaryDirectory(prefix="kici-demo-compile-") as scratch:
        root = Path(scratch)
        for name, text in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        result = compile_project(root / ".kici", root)
    if result.lock is None:
        raise SampleCompileError(format_all(list(result.errors)) or result.stderr)
    return dump_lock(result.lock)


def repository_files(*, failing: bool = False) -> dict[str, str]:
    """Every file of the sample commit: the sources and their compiled lock."""
    files = source_files(failing=failing)
    return {**files, LOCK_FILE_PATH: compile_lock(files)}


def push_payload(sha: str, files: Mapping[str, str], *, before: str = ZERO_SHA) -> dict[str, object]:
    """A GitHub ``push`` of one commit ``sha`` to ``main`` adding ``files``."""
    owner, name = REPO.split("/")
    commit = {
        "id": sha,
        "message": "Add the kici demo pipeline",
        "timestamp": "2025-01-01T00:00:00Z",
        "author": {"name": "kici demo", "email": "demo@kici.invalid", "username": "kici-demo"},
        "added": sorted(files),
        "modified": [],
        "removed": [],
    }
    return {
        "ref": f"refs/heads/{BRANCH}",
        "before": before,
        "after": sha,
        "created": before == ZERO_SHA,
        "deleted": False,
        "forced": False,
        "commits": [commit],
        "head_commit": commit,
        "repository": {
            "name": name,
            "full_name": REPO,
            "private": True,
            "owner": {"login": owner, "type": "Organization"},
            "default_branch": BRANCH,
        },
        "pusher": {"name": "kici-demo", "email": "demo@kici.invalid"},
        "sender": {"login": "kici-demo", "type": "User"},
    }


def signed_push(
    sha: str, files: Mapping[str, str], *, secret: str, delivery_id: str
) -> tuple[dict[str, str], bytes]:
    """Headers and raw body of the push as GitHub sends it, signed with ``secret``."""
    body = json.dumps(push_payload(sha, files)).encode()
    headers = {
        "content-type": "application/json",
        "user-agent": "GitHub-Hookshot/kici-demo",
        "x-github-event": "push",
        "x-github-delivery": delivery_id,
        GITHUB_SIGNATURE_HEADER: sign_body(body, secret),
    }
    return headers, body


__all__ = [
    "APP_PATH",
    "APP_SOURCE",
    "BRANCH",
    "BROKEN_APP_SOURCE",
    "JOB_NAMES",
    "MATRIX",
    "REPO",
    "WORKFLOW_NAME",
    "WORKFLOW_PATH",
    "WORKFLOW_SOURCE",
    "SampleCompileError",
    "compile_lock",
    "push_payload",
    "repository_files",
    "signed_push",
    "source_files",
]
