"""The files ``kici init`` scaffolds (CLI-02).

Kept as strings in a module rather than package data so that an editable install, a wheel and a
zipapp all ship them without packaging configuration. Every workflow template must compile and
run under ``kici run local`` exactly as written (an e2e test does that), so the steps use only
``ctx.sh`` with POSIX tools present in any sandbox and ``ctx.log``.
"""

from __future__ import annotations

import json
from typing import Final

HELLO_WORLD: Final = '''\
"""Hello world: runs on every push.

Try it: `kici preview push`, then `kici run local push`.
"""

from kici.sdk import job, push, step, workflow


def greet(ctx):
    ctx.log.info("Hello from %s on %s", ctx.job.name, ctx.workflow.name)
    ctx.sh("echo 'Hello, world!'")


def show_workspace(ctx):
    ctx.sh("ls -a")


hello = job(
    "hello",
    runs_on="kici:os:linux",
    steps=[step("greet", greet), step("show-workspace", show_workspace)],
)

hello_world = workflow("hello-world", on=push(), jobs=[hello])
'''

PR_CHECKS: Final = '''\
"""Pull-request checks: a quick check, then a small test matrix once it passed.

Try it: `kici preview pr:open`, then `kici run local pr:open`.
"""

from kici.sdk import job, pr, step, workflow


def check_files(ctx):
    ctx.sh("test -f .kici/kici.lock.json && echo 'lock file present'")


def test(ctx):
    ctx.sh("echo testing with python {python}", python=ctx.matrix.python)


checks = job("checks", runs_on="kici:os:linux", steps=[step("check-files", check_files)])

tests = job(
    "tests",
    runs_on="kici:os:linux",
    needs=[checks],
    matrix={"python": ["3.11", "3.12"]},
    steps=[step("test", test)],
)

pr_checks = workflow("pr-checks", on=pr(), jobs=[checks, tests])
'''

TEMPLATES: Final = {"hello_world": HELLO_WORLD, "pr_checks": PR_CHECKS}
"""Workflow templates by name, written to ``.kici/workflows/<name>.py``."""

KICIIGNORE: Final = """\
# Paths left out of the working-tree overlay of `kici run local` (gitignore-style patterns).
.kici/.venv/
node_modules/
__pycache__/
*.pyc
"""

GITIGNORE_ENTRIES: Final = (".kici/.secrets", ".kici/.env.local", ".kici/secrets.yaml", ".kici/.venv/")
"""Local secret files and the dependency venv must never be committed."""

KICI_TYPES_INIT: Final = '''\
"""Generated types (``kici types`` writes ``secrets.py`` here); named ``kici_types``, not ``types``,
so it never shadows the standard library's ``types`` module on ``sys.path``."""
'''

AGENTS_MD: Final = """\
# kici workflows: notes for coding agents

Workflows are Python files in `.kici/workflows/` built with the SDK in `kici.sdk`
(`workflow`, `job`, `step`, `push`, `pr`, `rule`, `Hook`, ...). There is no YAML.

Canonical pattern:

```python
from kici.sdk import job, push, step, workflow

build = job("build", runs_on="kici:os:linux", steps=[step("make", lambda ctx: ctx.sh("make"))])
ci = workflow("ci", on=push(branches="main"), jobs=[build])
```

Rules:
- Bind every workflow at module level (`ci = workflow(...)`); files starting with `_` are helpers.
- Module top level must be deterministic and side-effect free: no I/O, no network, no secrets at
  import time. Read secrets inside steps with `ctx.secrets.get("NAME")`.
- Use `needs=[...]` for ordering; reading another job's `.result` never adds an edge.
- Quote shell arguments with placeholders: `ctx.sh("deploy {env}", env=name)`.

Loop after every change:
1. `kici compile --check` (validate) then `kici compile` (writes `.kici/kici.lock.json`; commit it).
2. `kici preview push` (what would run, and why a workflow is skipped).
3. `kici run local push` (runs the matched jobs in a sandbox; `--json` for machine output).

Local secrets live in `.kici/.secrets` or `.kici/.env.local` (never committed).
"""


def push_test(branch: str) -> str:
    """``.kici/tests/push_test.py``: a fixture replaying a push to the repository's branch."""
    name, fixture_id, quoted = _identifier(branch), _fixture_id(branch), json.dumps(branch)
    return (
        '"""Test fixtures: named events that `kici run remote <id>` replays on your cluster."""\n\n'
        "from kici.sdk import fixture\n\n"
        f'push_to_{name} = fixture("push-{fixture_id}", event="push", branch={quoted})\n'
    )


def _identifier(branch: str) -> str:
    cleaned = "".join(ch if ch.isalnum() else "_" for ch in branch).strip("_").lower()
    return cleaned or "default"


def _fixture_id(branch: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in branch) or "default"


def requirements_txt(version: str, *, dev: bool) -> str:
    """``.kici/requirements.txt``: pins the installed kici; ``KICI_DEV`` allows pre-releases instead."""
    spec = f"kici>={version}.dev0" if dev else f"kici=={version}"
    return f"# Dependencies of the workflows in .kici/workflows (hashed into the lock file).\n{spec}\n"
