"""The pieces of ``run local`` around the engine: local secret files, ``.kiciignore``, the overlay
and the isolated checkout, the job plan, and the report's JSON shape."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from kici.adapters.sandbox.bwrap import BwrapSandbox
from kici.cli.main import cli
from kici.cli.output import format_duration, summary_lines, wants_color
from kici.domain.event_args import EventOptions, simulate_event
from kici.domain.execution.run_status import DRIFT_FAILURE_REASON
from kici.domain.lockfile import (
    ExactLabelMatcher,
    LockDynamicMatrix,
    LockFile,
    LockJob,
    LockMatrixSource,
    LockParallelStep,
    LockSource,
    LockStaticMatrix,
    LockStep,
    LockWorkflow,
    PushTrigger,
    freeze_json,
)
from kici.domain.runner_ipc import ExecuteRequest, JobComplete, StepComplete, StepResult, StepStart
from kici.services.local import executor
from kici.services.local.checkout import (
    KiciIgnore,
    Overlay,
    collect_old_runs,
    create_checkout,
    list_overlay,
    new_run_root,
    slug,
)
from kici.services.local.engine import (
    JobControl,
    JobEvents,
    LocalRun,
    LocalRunOptions,
    prepare_run,
    step_names,
)
from kici.services.local.executor import RunnerExecutor, SandboxChoiceError, choose_sandbox
from kici.services.local.git import read_working_tree
from kici.services.local.plan import DYNAMIC_MATRIX_UNSUPPORTED, UnknownJobError, plan_workflow
from kici.services.local.results import JobReport, RunReport, StepReport, WorkflowReport
from kici.services.local.secrets import (
    LocalSecretsError,
    load_local_secrets,
    parse_dotenv,
    parse_secrets_ini,
    parse_secrets_yaml,
)

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


# --- .kici/secrets.yaml (CLI-11) --------------------------------------------------------------------

SECRETS_YAML = Path(".kici/secrets.yaml")
# Characters YAML accepts inside a double-quoted scalar, raw or as JSON's escapes of C0 controls.
YAML_TEXT = st.characters(
    exclude_categories=("Cs", "Co", "Cn"),
    exclude_characters=[chr(c) for c in range(0x7F, 0xA0)] + ["\ufeff"],
)


@pytest.mark.feature("CLI-11")
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("# only a comment\n", {}),
        ("~\n", {}),
        ("env:\n", {}),
        ("env: {}\n", {}),
        (
            "env:\n  TOKEN: abc  # trailing comment\n  QUOTED: 'x: y'\n  DOUBLE: \"a\\tb\"\n",
            {"TOKEN": "abc", "QUOTED": "x: y", "DOUBLE": "a\tb"},
        ),
        (
            "env:\n  N: 1e3\n  O: 0o17\n  B: true\n  F: 1.50\n",
            {"N": "1e3", "O": "0o17", "B": "true", "F": "1.50"},
        ),
        ("env:\n  ON: on\n  NO: no\n  Y: yes\n", {"ON": "on", "NO": "no", "Y": "yes"}),
        ("env:\n  EMPTY:\n  NULL: ~\n", {"EMPTY": "", "NULL": ""}),
        ("env:\n  CERT: |\n    line 1\n    line 2\n", {"CERT": "line 1\nline 2\n"}),
        ("env: {A: x, B: y}\n", {"A": "x", "B": "y"}),
        ("env:\n  A: &shared s3cret\n  B: *shared\n", {"A": "s3cret", "B": "s3cret"}),
        ("env:\n  123: numeric key\n", {"123": "numeric key"}),
    ],
)
def test_secrets_yaml_values_are_taken_as_written(text: str, expected: dict[str, str]) -> None:
    assert parse_secrets_yaml(text, SECRETS_YAML) == expected


@pytest.mark.feature("CLI-11")
@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("env:\n  A: [1\n", 3, "invalid YAML"),
        ("env:\n\tA: 1\n", 2, "invalid YAML"),
        ("env: x\nenv: y\n---\nb: 2\n", 3, "invalid YAML"),
        ("ok: 1\x07\n", 1, "invalid YAML"),
        ("- a\n", 1, "expected a mapping"),
        ("just text\n", 1, "expected a mapping"),
        ("# secrets\nevn:\n  A: 1\n", 2, "unknown key 'evn'"),
        ("env: [A, B]\n", 1, "`env:` must be a mapping"),
        ("env:\n  A: 1\n  B: [1, 2]\n", 3, "secret 'B' must be a string, number or boolean, not a list"),
        ("env:\n  A:\n    nested: 1\n", 2, "not a mapping"),
        ("env:\n  A: 1\n  A: 2\n", 3, "duplicate key 'A' (first on line 2)"),
        ("env: 1\nenv: 2\n", 2, "duplicate key 'env'"),
        ("env:\n  A: !vault abc\n", 2, "custom tags are not supported"),
        ("env:\n  <<: {A: 1}\n", 2, "merge keys"),
        ("env:\n  '': x\n", 2, "empty key"),
        ("env:\n  [a, b]: x\n", 2, "a key of `env:` must be a string"),
    ],
)
def test_malformed_secrets_yaml_names_the_file_and_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(LocalSecretsError) as caught:
        parse_secrets_yaml(text, SECRETS_YAML)
    assert caught.value.line == line
    assert fragment in caught.value.problem
    assert str(caught.value).startswith(f".kici/secrets.yaml:{line}: ")


@pytest.mark.feature("CLI-11")
@settings(max_examples=40)
@given(
    st.dictionaries(st.text(YAML_TEXT, min_size=1, max_size=8), st.text(YAML_TEXT, max_size=20), max_size=5)
)
def test_any_quoted_secret_round_trips(secrets: dict[str, str]) -> None:
    """JSON strings are YAML double-quoted scalars: whatever a user quotes comes back unchanged."""
    lines = ["env:"] + [
        f"  {json.dumps(k, ensure_ascii=False)}: {json.dumps(v, ensure_ascii=False)}"
        for k, v in secrets.items()
    ]
    assert parse_secrets_yaml("\n".join(lines) + "\n", SECRETS_YAML) == secrets


@pytest.mark.feature("CLI-11")
def test_secrets_yaml_sits_between_env_local_and_the_env_flag(tmp_path: Path) -> None:
    (tmp_path / ".secrets").write_text("A=ini\nB=ini\nC=ini\nD=ini\n", encoding="utf-8")
    (tmp_path / ".env.local").write_text("B=dotenv\nC=dotenv\nD=dotenv\n", encoding="utf-8")
    (tmp_path / "secrets.yaml").write_text("env:\n  C: yaml\n  D: yaml\n", encoding="utf-8")
    merged = load_local_secrets(tmp_path, {"D": "flag"})
    assert merged == {"A": "ini", "B": "dotenv", "C": "yaml", "D": "flag"}
    (tmp_path / ".secrets").unlink()
    (tmp_path / ".env.local").unlink()
    assert load_local_secrets(tmp_path) == {"C": "yaml", "D": "yaml"}


@pytest.mark.feature("CLI-11")
def test_unreadable_secret_files_are_errors_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "secrets.yaml").write_bytes(b"env:\n  A: \xff\xfe\n")
    with pytest.raises(LocalSecretsError, match="not UTF-8") as caught:
        load_local_secrets(tmp_path)
    assert caught.value.path == tmp_path / "secrets.yaml"
    assert caught.value.line is None
    (tmp_path / "secrets.yaml").unlink()
    (tmp_path / ".env.local").mkdir()
    with pytest.raises(LocalSecretsError, match="cannot read"):
        load_local_secrets(tmp_path)


@pytest.fixture
def kici_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``.kici/workflows`` project outside git: enough for ``run local`` to fail before compiling."""
    (tmp_path / ".kici" / "workflows").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    return tmp_path


@pytest.mark.feature("CLI-11")
def test_run_local_reports_a_malformed_secrets_yaml_without_a_traceback(kici_project: Path) -> None:
    (kici_project / ".kici" / "secrets.yaml").write_text("env:\n  A: [1, 2]\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["run", "local", "push", "--sandbox", "none"])
    assert result.exit_code == 1
    assert ".kici/secrets.yaml:2: secret 'A' must be a string" in result.stderr
    assert "Traceback" not in result.output + result.stderr
    as_json = CliRunner().invoke(cli, ["run", "local", "push", "--sandbox", "none", "--json"])
    assert as_json.exit_code == 1
    document = json.loads(as_json.stdout)
    assert document["success"] is False
    assert document["error"].startswith(".kici/secrets.yaml:2: ")


# --- check mode (CLI-09, EXE-09, SDK-28) ------------------------------------------------------------


@pytest.mark.feature("CLI-09")
def test_fail_on_drift_without_check_is_a_usage_error(kici_project: Path) -> None:
    result = CliRunner().invoke(cli, ["run", "local", "push", "--fail-on-drift", "--sandbox", "none"])
    assert result.exit_code == 2
    assert "--fail-on-drift needs --check" in result.stderr


@pytest.mark.feature("CLI-09", "EXE-09")
def test_step_names_follow_the_runner_index_order() -> None:
    job = _check_job()
    assert step_names(job) == ["prepare", "lint-a", "lint-b", "ensure", "fine"]


def _check_job(name: str = "converge") -> LockJob:
    return LockJob(
        name=name,
        runs_on=(ExactLabelMatcher(value="kici:os:linux"),),
        runs_on_pick="deterministic",
        steps=(
            LockStep(name="prepare", has_outputs=False),
            LockParallelStep(
                name="lint",
                fail_fast=True,
                children=(
                    LockStep(name="lint-a", has_outputs=False),
                    LockStep(name="lint-b", has_outputs=False),
                ),
            ),
            LockStep(name="ensure", has_outputs=False, has_check=True),
            LockStep(name="fine", has_outputs=False, has_check=True),
        ),
    )


# (status, check_outcome, started): what the runner reports per step index in each mode.
StepScript = list[tuple[str, str | None, bool]]
CHECK_SCRIPT: StepScript = [
    ("skipped", "no check", False),
    ("skipped", "no check", False),
    ("skipped", "no check", False),
    ("success", "would change", True),
    ("skipped", "in sync", True),
]
IN_SYNC_SCRIPT: StepScript = [*CHECK_SCRIPT[:3], ("skipped", "in sync", True), ("skipped", "in sync", True)]
APPLY_SCRIPT: StepScript = [
    ("success", None, True),
    ("success", None, True),
    ("success", None, True),
    ("success", "applied", True),
    ("skipped", "in sync", True),
]


class CheckModeExecutor:
    """Answers every job like the runner does in the requested mode, from a per-job step script."""

    def __init__(self, scripts: dict[str, StepScript], failing: frozenset[str] = frozenset()) -> None:
        self.scripts = scripts
        self.failing = failing
        self.requests: list[ExecuteRequest] = []

    async def execute(
        self, request: ExecuteRequest, workspace: Path, events: JobEvents, control: JobControl
    ) -> JobComplete:
        self.requests.append(request)
        names = step_names(_check_job())
        results = []
        for index, (scripted, scripted_outcome, started) in enumerate(self.scripts[request.job_name]):
            fails = request.job_name in self.failing and index == 0
            status, outcome = ("failed", None) if fails else (scripted, scripted_outcome)
            if started:
                events.step_started(StepStart(step_index=index, step_name=names[index]))
            events.step_finished(
                StepComplete(step_index=index, status=status, duration_ms=1, check_outcome=outcome)  # type: ignore[arg-type]
            )
            results.append(StepResult(name=names[index], status=status, duration_ms=1))  # type: ignore[arg-type]
        job_status = "failed" if request.job_name in self.failing else "success"
        return JobComplete(status=job_status, step_results=tuple(results))  # type: ignore[arg-type]


class Quiet:
    def workflow_started(self, workflow: str, jobs: object) -> None: ...

    def job_started(self, workflow: str, job: str, checkout: str) -> None: ...

    def step_started(self, workflow: str, job: str, step: str, step_type: str) -> None: ...

    def log_line(self, workflow: str, job: str, line: str) -> None: ...

    def step_finished(self, workflow: str, job: str, step: StepReport) -> None: ...

    def job_finished(self, workflow: str, job: JobReport) -> None: ...

    def workflow_finished(self, report: WorkflowReport) -> None: ...

    def notice(self, message: str) -> None: ...


async def run_check_mode(repo: Path, executor: CheckModeExecutor, run_mode: str, *jobs: LockJob) -> RunReport:
    workflow = _workflow(*(jobs or (_check_job(),)))
    lock = LockFile(content_hash="0" * 64, workflows=(workflow,))
    event = simulate_event("push", EventOptions(branch="main"))
    prepared, _ = prepare_run(lock, event, workflow_filter=None, job_filter=None, raw_inputs={})
    run_root = repo.parent / "runs"
    run_root.mkdir(exist_ok=True)
    options = LocalRunOptions(
        repo_root=repo,
        kici_dir=repo / ".kici",
        run_root=run_root,
        sha=git(repo, "rev-parse", "HEAD").strip(),
        overlay=Overlay(),
        run_mode=run_mode,  # type: ignore[arg-type]
    )
    return await LocalRun(options, event, Quiet(), executor).run(prepared, handle_signals=False)


def outcomes(report: RunReport) -> list[tuple[str, str, str | None]]:
    return [(s.name, s.status, s.outcome) for s in report.workflows[0].jobs[0].steps]


@pytest.mark.feature("CLI-09", "EXE-09", "SDK-28")
async def test_check_mode_reaches_the_runner_and_outcomes_are_reported(repo: Path) -> None:
    executor = CheckModeExecutor({"converge": CHECK_SCRIPT})
    report = await run_check_mode(repo, executor, "check")
    assert [r.run_mode for r in executor.requests] == ["check"]
    assert outcomes(report) == [
        ("prepare", "skipped", "no check"),
        ("lint-a", "skipped", "no check"),
        ("lint-b", "skipped", "no check"),
        ("ensure", "success", "would change"),
        ("fine", "skipped", "in sync"),
    ], "never-started steps are named from the lock, in execution order, without duplicates"
    workflow = report.workflows[0]
    assert (workflow.status, workflow.drift, workflow.reason) == ("success", True, None)
    assert (report.success, report.drift, report.drifted_steps(), report.exit_code) == (True, True, 1, 0)
    document = report.to_json()
    assert (document["runMode"], document["drift"], document["workflows"][0]["drift"]) == (
        "check",
        True,
        True,
    )
    steps = document["workflows"][0]["jobs"][0]["steps"]
    assert [s["outcome"] for s in steps] == ["no check"] * 3 + ["would change", "in sync"]
    assert "    ✓ ensure (success, 1ms) [would change]" in summary_lines(report)


@pytest.mark.feature("CLI-09", "EXE-09", "SDK-28")
async def test_fail_on_drift_exits_2_only_when_something_would_change(repo: Path) -> None:
    drifted = await run_check_mode(repo, CheckModeExecutor({"converge": CHECK_SCRIPT}), "check-fail-on-drift")
    workflow = drifted.workflows[0]
    assert (workflow.status, workflow.reason) == ("failure", DRIFT_FAILURE_REASON)
    assert workflow.jobs[0].status == "success", "drift fails the run, not the job"
    assert (drifted.success, drifted.exit_code) == (False, 2)
    in_sync = await run_check_mode(
        repo, CheckModeExecutor({"converge": IN_SYNC_SCRIPT}), "check-fail-on-drift"
    )
    assert (in_sync.workflows[0].status, in_sync.drift, in_sync.exit_code) == ("success", False, 0)
    assert in_sync.to_json()["drift"] is False


@pytest.mark.feature("CLI-09", "EXE-09")
async def test_a_failed_job_outranks_drift(repo: Path) -> None:
    executor = CheckModeExecutor(
        {"converge": CHECK_SCRIPT, "other": CHECK_SCRIPT}, failing=frozenset({"other"})
    )
    report = await run_check_mode(
        repo, executor, "check-fail-on-drift", _check_job("converge"), _check_job("other")
    )
    workflow = report.workflows[0]
    assert workflow.drift is True
    assert (workflow.status, workflow.reason) == ("failure", "Failed jobs: other")
    assert report.exit_code == 1


@pytest.mark.feature("EXE-09", "SDK-28")
async def test_apply_mode_applies_and_is_never_drift(repo: Path) -> None:
    executor = CheckModeExecutor({"converge": APPLY_SCRIPT})
    report = await run_check_mode(repo, executor, "apply")
    assert [r.run_mode for r in executor.requests] == ["apply"]
    assert [o for _, _, o in outcomes(report)] == [None, None, None, "applied", "in sync"]
    assert (report.drift, report.exit_code) == (False, 0)
    assert "runMode" not in report.to_json()


@pytest.mark.feature("CLI-09")
@pytest.mark.parametrize(
    ("statuses", "interrupted", "code"),
    [
        ([("success", None)], False, 0),
        ([("failure", DRIFT_FAILURE_REASON)], False, 2),
        ([("failure", DRIFT_FAILURE_REASON), ("success", None)], False, 2),
        ([("failure", DRIFT_FAILURE_REASON), ("failure", "Failed jobs: x")], False, 1),
        ([("cancelled", None), ("failure", DRIFT_FAILURE_REASON)], False, 1),
        ([("failure", DRIFT_FAILURE_REASON)], True, 130),
    ],
)
def test_run_exit_codes(statuses: list[tuple[str, str | None]], interrupted: bool, code: int) -> None:
    workflows = tuple(
        WorkflowReport(name=f"w{i}", status=status, duration_ms=0, reason=reason)  # type: ignore[arg-type]
        for i, (status, reason) in enumerate(statuses)
    )
    assert RunReport(workflows=workflows, interrupted=interrupted).exit_code == code
