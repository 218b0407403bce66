"""``kici hook install`` then ``git commit``, for real: the hook compiles and stages the lock file.

A fresh repository is scaffolded with ``kici init`` and committed; the raw git hook is installed by
the real ``kici`` entry point in a child interpreter, and plain ``git commit`` runs it. Git runs with
no global or system configuration so a developer's ``core.hooksPath`` cannot change the outcome.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.feature("CLI-12")]

TIMEOUT_S = 120
BROKEN = "from kici.sdk import workflow\n\nbroken = workflow(\n"


class Repo:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {
            **os.environ,
            "NO_COLOR": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.com",
        }
        self.env.pop("KICI_DEBUG", None)

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )

    def kici(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, "-m", "kici", *args)

    def git(self, *args: str) -> str:
        done = self.run("git", *args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def committed_files(self) -> set[str]:
        return set(self.git("show", "--name-only", "--format=", "HEAD").split())


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    tool = Repo(tmp_path / "repo")
    tool.root.mkdir()
    tool.git("init", "-q", "-b", "main")
    assert tool.kici("init").returncode == 0
    assert tool.kici("compile").returncode == 0
    tool.git("add", "-A")
    tool.git("commit", "-qm", "scaffold")
    return tool


def test_a_commit_through_the_raw_git_hook_compiles_and_stages_the_lock(repo: Repo) -> None:
    installed = repo.kici("hook", "install")
    assert installed.returncode == 0, installed.stderr
    assert "Installed the KiCI hook (git): .git/hooks/pre-commit" in installed.stdout
    again = repo.kici("hook", "install", "--git")
    assert again.returncode == 0
    assert "already installed" in again.stdout

    lock = repo.root / ".kici" / "kici.lock.json"
    before = lock.read_text(encoding="utf-8")
    workflow = repo.root / ".kici" / "workflows" / "hello_world.py"
    workflow.write_text(
        workflow.read_text(encoding="utf-8").replace('workflow("hello-world"', 'workflow("hello-there"'),
        encoding="utf-8",
    )
    repo.git("add", ".kici/workflows/hello_world.py")
    committed = repo.run("git", "commit", "-m", "rename the workflow")
    assert committed.returncode == 0, committed.stdout + committed.stderr
    assert "Compiled workflows" in committed.stdout + committed.stderr, "the hook ran kici compile"

    assert repo.committed_files() == {".kici/workflows/hello_world.py", ".kici/kici.lock.json"}
    assert repo.git("status", "--porcelain") == "", "nothing left unstaged"
    assert lock.read_text(encoding="utf-8") != before
    assert '"hello-there"' in repo.git("show", "HEAD:.kici/kici.lock.json")
    assert repo.kici("compile", "--locked").returncode == 0


def test_a_workflow_that_does_not_compile_blocks_the_commit(repo: Repo) -> None:
    assert repo.kici("hook", "install", "--git").returncode == 0
    head = repo.git("rev-parse", "HEAD")
    (repo.root / ".kici" / "workflows" / "broken.py").write_text(BROKEN, encoding="utf-8")
    repo.git("add", "-A")
    committed = repo.run("git", "commit", "-m", "broken")
    assert committed.returncode != 0
    assert "broken.py" in committed.stderr
    assert repo.git("rev-parse", "HEAD") == head, "no commit was made"
