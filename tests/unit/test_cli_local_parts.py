"""The pieces of ``run local`` around the engine: local secret files, ``.kiciignore``, the overlay
and the isolated checkout, the job plan, and the report's JSON shape."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from kici.adapters.sandbox.bwrap import BwrapSandbox
from kici.cli.output import format_duration, summary_lines, wants_color
from kici.domain.lockfile import (
    ExactLabelMatcher,
    LockDynamicMatrix,
    LockJob,
    LockMatrixSource,
    LockSource,
    LockStaticMatrix,
    LockStep,
    LockWorkflow,
    PushTrigger,
    freeze_json,
)
from kici.services.local import executor
from kici.services.local.checkout import (
    KiciIgnore,
    collect_old_runs,
    create_checkout,
    list_overlay,
    new_run_root,
    slug,
)
from kici.services.local.executor import RunnerExecutor, SandboxChoiceError, choose_sandbox
from kici.services.local.git import read_working_tree
from kici.services.local.plan import DYNAMIC_MATRIX_UNSUPPORTED, UnknownJobError, plan_workflow
from kici.services.local.results import JobReport, RunReport, StepReport, WorkflowReport
from kici.services.local.secrets import load_local_secrets, parse_dotenv, parse_secrets_ini

pytestmark = pytest.mark.feature("CLI-08")


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


@pytest.mark.feature("CLI-11")
def test_secrets_ini_flattens_sections_and_keeps_everything_after_the_first_equals() -> None:
    text = "# comment\nA=1\n; other comment\nURL = https://x/?a=b==\n[prod]\nB=2\nA=3\nbroken line\n"
    assert parse_secrets_ini(text) == {"A": "3", "URL": "https://x/?a=b==", "B": "2"}


@pytest.mark.feature("CLI-11")
def test_dotenv_strips_quotes_and_export() -> None:
    text = 'export A=1\nB=\'single $x\'\nC="two\\nlines \\"q\\""\n# c\nD="unterminated\nE=\n'
    assert parse_dotenv(text) == {
        "A": "1",
        "B": "single $x",
        "C": 'two\nlines "q"',
        "D": '"unterminated',
        "E": "",
    }


@pytest.mark.feature("CLI-11")
def test_local_secret_precedence(tmp_path: Path) -> None:
    (tmp_path / ".secrets").write_text("A=secrets\nB=secrets\nC=secrets\n", encoding="utf-8")
    (tmp_path / ".env.local").write_text("B=envlocal\nC=envlocal\n", encoding="utf-8")
    merged = load_local_secrets(tmp_path, {"C": "flag"})
    assert merged == {"A": "secrets", "B": "envlocal", "C": "flag"}
    assert load_local_secrets(tmp_path / "missing") == {}


@pytest.mark.parametrize(
    ("patterns", "path", "ignored"),
    [
        (["*.log"], "a/b/x.log", True),
        (["*.log"], ".hidden.log", True),
        (["build/"], "build/out/x.o", True),
        (["build/"], "build", False),
        (["build"], "build", True),
        (["/top.txt"], "top.txt", True),
        (["/top.txt"], "sub/top.txt", False),
        (["docs/*.md"], "docs/a.md", True),
        (["docs/*.md"], "x/docs/a.md", False),
        (["**/cache/**"], "a/cache/b/c", True),
        (["*.log", "!keep.log"], "keep.log", False),
        (["*.log", "!keep.log"], "other.log", True),
        (["# *.py", ""], "a.py", False),
        ([], "anything", False),
    ],
)
def test_kiciignore_follows_gitignore_rules(patterns: list[str], path: str, ignored: bool) -> None:
    assert KiciIgnore(patterns).ignored(path) is ignored


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    (root / "kept.txt").write_text("committed\n", encoding="utf-8")
    (root / "edited.txt").write_text("old\n", encoding="utf-8")
    (root / "gone.txt").write_text("bye\n", encoding="utf-8")
    (root / ".gitignore").write_text("ignored.txt\n", encoding="utf-8")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "init")
    return root


def test_overlay_and_checkout_mirror_the_working_tree(repo: Path, tmp_path: Path) -> None:
    (repo / "edited.txt").write_text("new\n", encoding="utf-8")
    (repo / "gone.txt").unlink()
    (repo / "new dir").mkdir()
    (repo / "new dir" / "untracked file.txt").write_text("fresh\n", encoding="utf-8")
    (repo / "staged.txt").write_text("staged\n", encoding="utf-8")
    git(repo, "add", "staged.txt")
    (repo / "ignored.txt").write_text("git-ignored\n", encoding="utf-8")
    (repo / "big.bin").write_text("kici-ignored\n", encoding="utf-8")
    (repo / ".kiciignore").write_text("*.bin\n", encoding="utf-8")
    (repo / ".kici").mkdir()
    (repo / ".kici" / ".secrets").write_text("T=x\n", encoding="utf-8")
    os.symlink("kept.txt", repo / "link")
    overlay = list_overlay(repo)
    assert overlay.copies == (".kiciignore", "edited.txt", "link", "new dir/untracked file.txt", "staged.txt")
    assert ".kici/.secrets" not in overlay.copies, "secret files are never copied"
    assert "big.bin" not in overlay.copies
    assert "ignored.txt" not in overlay.copies
    assert overlay.deletions == ("gone.txt",)
    tree = read_working_tree(repo)
    assert tree.has_head
    assert tree.changed_files == ("edited.txt", "gone.txt", "staged.txt")
    dest = tmp_path / "checkout"
    create_checkout(repo, dest, tree.sha, overlay)
    assert (dest / "edited.txt").read_text(encoding="utf-8") == "new\n"
    assert (dest / "kept.txt").read_text(encoding="utf-8") == "committed\n"
    assert (dest / "new dir" / "untracked file.txt").read_text(encoding="utf-8") == "fresh\n"
    assert (dest / "staged.txt").is_file()
    assert os.readlink(dest / "link") == "kept.txt"
    assert not (dest / "gone.txt").exists()
    assert not (dest / "big.bin").exists()
    assert not (dest / ".kici" / ".secrets").exists()
    assert git(dest, "rev-parse", "HEAD").strip() == tree.sha
    assert (repo / "edited.txt").read_text(encoding="utf-8") == "new\n", "the working tree is untouched"


def test_checkout_of_a_repository_without_commits(tmp_path: Path) -> None:
    repo = tmp_path / "fresh"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "a.txt").write_text("a\n", encoding="utf-8")
    tree = read_working_tree(repo)
    assert not tree.has_head
    assert tree.sha == "0" * 40
    dest = tmp_path / "checkout"
    create_checkout(repo, dest, None, list_overlay(repo))
    assert (dest / "a.txt").read_text(encoding="utf-8") == "a\n"


def test_old_kept_runs_are_collected(tmp_path: Path) -> None:
    old, fresh = new_run_root(tmp_path), new_run_root(tmp_path)
    other = tmp_path / "unrelated"
    other.mkdir()
    past = time.time() - 73 * 3600
    os.utime(old, (past, past))
    os.utime(other, (past, past))
    assert collect_old_runs(tmp_path) == [old]
    assert fresh.is_dir()
    assert other.is_dir()


def test_slugs_are_safe_directory_names() -> None:
    assert slug("test (3.11, linux)") == "test-3.11-linux"
    assert slug("../..") == "job"
    assert "/" not in slug("a/b")


def _job(name: str, *needs: str, matrix: object = None) -> LockJob:
    return LockJob(
        name=name,
        runs_on=(ExactLabelMatcher(value="x"),),
        runs_on_pick="deterministic",
        needs=tuple(needs),
        steps=(LockStep(name="s", has_outputs=False),),
        matrix=matrix,  # type: ignore[arg-type]
    )


def _workflow(*jobs: LockJob) -> LockWorkflow:
    return LockWorkflow(
        name="w",
        source=LockSource(file=".kici/workflows/w.py", export="#w"),
        content_hash="0" * 64,
        triggers=(PushTrigger(),),
        jobs=jobs,
    )


def test_plan_expands_matrices_and_filters_by_job() -> None:
    workflow = _workflow(
        _job("lint"),
        _job("test", "lint", matrix=LockStaticMatrix(values=freeze_json(["a", "b"]))),
        _job("dyn", matrix=LockDynamicMatrix(source=LockMatrixSource(file="f", job_name="dyn"))),
        _job("deploy", "test"),
    )
    plan = plan_workflow(workflow)
    assert [j.name for j in plan.jobs] == ["lint", "test (a)", "test (b)", "dyn", "deploy"]
    assert plan.by_name["dyn"].unsupported == DYNAMIC_MATRIX_UNSUPPORTED
    assert plan.by_name["test (b)"].matrix == {"value": "b"}
    assert [j.name for j in plan_workflow(workflow, "deploy").jobs] == [
        "lint",
        "test (a)",
        "test (b)",
        "deploy",
    ]
    assert [j.name for j in plan_workflow(workflow, "test (b)").jobs] == ["lint", "test (b)"]
    with pytest.raises(UnknownJobError, match="jobs: lint, test, dyn, deploy"):
        plan_workflow(workflow, "nope")


def test_report_json_has_the_documented_shape() -> None:
    step = StepReport(name="s", status="failed", duration_ms=5, error="boom")
    job = JobReport(
        name="t (a)", status="failure", duration_ms=7, steps=(step,), matrix_values={"value": "a"}
    )
    report = RunReport(workflows=(WorkflowReport(name="w", status="failure", duration_ms=9, jobs=(job,)),))
    assert report.to_json() == {
        "success": False,
        "workflows": [
            {
                "name": "w",
                "status": "failure",
                "durationMs": 9,
                "jobs": [
                    {
                        "name": "t (a)",
                        "status": "failure",
                        "matrixValues": {"value": "a"},
                        "durationMs": 7,
                        "steps": [{"name": "s", "status": "failed", "durationMs": 5, "error": "boom"}],
                    }
                ],
            }
        ],
    }
    assert report.exit_code == 1
    assert RunReport().exit_code == 0
    assert RunReport(interrupted=True).exit_code == 130
    lines = summary_lines(report)
    assert lines[1].startswith("✗ w (failure")
    assert "    ✗ s (failed, 5ms): boom" in lines


@pytest.mark.feature("CLI-01")
def test_color_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty:
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert wants_color(Tty())  # type: ignore[arg-type]
    monkeypatch.setenv("NO_COLOR", "1")
    assert not wants_color(Tty())  # type: ignore[arg-type]
    monkeypatch.delenv("NO_COLOR")
    with open(os.devnull, "w") as devnull:
        assert not wants_color(devnull)
    assert format_duration(950) == "950ms"
    assert format_duration(1500) == "1.5s"
    assert format_duration(125_000) == "2m05s"


def test_the_sandbox_is_bwrap_unless_none_is_chosen_explicitly(monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose_sandbox("none").name == "process"
    monkeypatch.setattr(executor, "bwrap_path", lambda: None)
    for requested in (None, "bwrap"):
        with pytest.raises(SandboxChoiceError) as info:
            choose_sandbox(requested)
        assert "install" in str(info.value).lower()
        assert "--sandbox none" in str(info.value)
    monkeypatch.setattr(executor, "bwrap_path", lambda: "/usr/bin/bwrap")
    monkeypatch.setattr(executor, "probe", lambda path: "bwrap cannot create namespaces: denied")
    with pytest.raises(SandboxChoiceError, match="cannot create namespaces"):
        choose_sandbox(None)


def test_runner_environment_is_allowlisted(tmp_path: Path) -> None:
    host = {"PATH": "/usr/bin", "HOME": "/root", "AWS_SECRET_ACCESS_KEY": "x", "KICI_AGENT_TOKEN": "y"}
    process_env = RunnerExecutor(choose_sandbox("none"), tmp_path, host_env=host).environment()
    assert process_env == {"PATH": "/usr/bin", "HOME": "/root", "FORCE_COLOR": "1"}
    bwrap_env = RunnerExecutor(BwrapSandbox("bwrap"), tmp_path, host_env=host).environment()
    assert bwrap_env["HOME"] == "/tmp"
    assert "AWS_SECRET_ACCESS_KEY" not in bwrap_env
