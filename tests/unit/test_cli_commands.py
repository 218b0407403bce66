"""The ``kici`` command surface through click's CliRunner: help, exit codes, init, usage errors.

Only paths that need no child process live here (no compile, no runner); the e2e tests drive
the real commands end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kici import __version__
from kici.cli import templates
from kici.cli.init_cmd import add_gitignore_entries
from kici.cli.main import cli, main

pytestmark = pytest.mark.feature("CLI-01")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_top_level_help_lists_commands_and_examples(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("init", "compile", "validate", "preview", "run"):
        assert f"  {command} " in result.output
    assert "Examples:" in result.output
    assert "kici run local push" in result.output
    assert "  test " not in result.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["init", "--help"], "--force"),
        (["compile", "--help"], "--locked"),
        (["validate", "--help"], "drift"),
        (["preview", "--help"], "pr:open"),
        (["run", "local", "--help"], "Examples:"),
        (["run", "--help"], "local"),
    ],
)
def test_every_subcommand_has_help(runner: CliRunner, args: list[str], needle: str) -> None:
    result = runner.invoke(cli, args)
    assert result.exit_code == 0
    assert needle in result.output
    assert result.output.startswith("Usage: ")


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"kici v{__version__}"


@pytest.mark.feature("CLI-25")
def test_kici_test_is_a_stub_with_a_hint(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["test", "anything", "--flag"])
    assert result.exit_code == 2
    assert "kici preview" in result.output
    assert "kici run remote" in result.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "local"], "missing EVENT"),
        (["run", "local", "pushh"], "unknown event 'pushh'"),
        (["run", "local", "pr:merge"], "allowed: opened"),
        (["run", "local", "push", "--env", "NOEQUALS"], "--env expects KEY=VALUE"),
        (["run", "local", "push", "--input", "=x"], "--input expects KEY=VALUE"),
        (["run", "local", "push", "--concurrency", "0"], "--concurrency"),
        (["run", "local", "push", "--sandbox", "docker"], "--sandbox"),
        (["preview", "nonsense"], "known events"),
        (["compile", "--watch", "--check"], "--watch cannot be combined"),
        (["compile", "--check", "--locked"], "exclusive"),
        (["no-such-command"], "No such command"),
    ],
)
def test_usage_errors_exit_2(runner: CliRunner, args: list[str], needle: str) -> None:
    result = runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert needle in result.output


@pytest.mark.feature("CLI-07", "CLI-08")
def test_unknown_event_lists_every_form(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["run", "local", "bogus"])
    assert "kici_event[:<name>]" in result.output
    assert "pr[:opened|synchronize|closed|reopened" in result.output


@pytest.mark.feature("CLI-03")
def test_commands_outside_a_project_report_e001(runner: CliRunner, project: Path) -> None:
    for args in (
        ["compile"],
        ["validate"],
        ["preview", "push"],
        ["run", "local", "push", "--sandbox", "none"],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 1, (args, result.output)
        assert "error [E001]" in result.output
        assert "kici init" in result.output


@pytest.mark.feature("CLI-02")
def test_init_scaffolds_the_project(runner: CliRunner, project: Path) -> None:
    (project / ".gitignore").write_text("node_modules/\n.kici/.secrets\n", encoding="utf-8")
    result = runner.invoke(cli, ["init"])
    assert result.exit_code == 0, result.output
    kici = project / ".kici"
    assert (kici / "workflows" / "hello_world.py").read_text(encoding="utf-8") == templates.HELLO_WORLD
    assert (kici / "workflows" / "pr_checks.py").read_text(encoding="utf-8") == templates.PR_CHECKS
    assert f"kici=={__version__}" in (kici / "requirements.txt").read_text(encoding="utf-8")
    assert "kici compile --check" in (kici / "AGENTS.md").read_text(encoding="utf-8")
    assert (project / ".kiciignore").is_file()
    assert (kici / "kici_types" / "__init__.py").is_file()
    fixture_text = (kici / "tests" / "push_test.py").read_text(encoding="utf-8")
    assert 'fixture("push-main", event="push", branch="main")' in fixture_text
    namespace: dict[str, object] = {}
    exec(compile(fixture_text, "push_test.py", "exec"), namespace)
    assert getattr(namespace["push_to_main"], "branch", None) == "main"
    lines = (project / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert lines.count(".kici/.secrets") == 1
    for entry in templates.GITIGNORE_ENTRIES:
        assert entry in lines
    assert lines[0] == "node_modules/"
    assert 'runs_on="kici:os:linux"' in templates.HELLO_WORLD
    assert "on=push()" in templates.HELLO_WORLD


@pytest.mark.feature("CLI-02")
def test_init_refuses_an_existing_kici_dir_without_force(runner: CliRunner, project: Path) -> None:
    (project / ".kici").mkdir()
    (project / ".kici" / "mine.txt").write_text("keep me", encoding="utf-8")
    result = runner.invoke(cli, ["init"])
    assert result.exit_code == 1
    assert "--force" in result.output
    assert not (project / ".kici" / "workflows").exists()
    result = runner.invoke(cli, ["init", "--force", "--template", "hello_world", "--no-agents-md"])
    assert result.exit_code == 0, result.output
    assert (project / ".kici" / "mine.txt").read_text(encoding="utf-8") == "keep me"
    assert (project / ".kici" / "workflows" / "hello_world.py").exists()
    assert not (project / ".kici" / "workflows" / "pr_checks.py").exists()
    assert not (project / ".kici" / "AGENTS.md").exists()
    before = (project / ".gitignore").read_text(encoding="utf-8")
    assert runner.invoke(cli, ["init", "--force"]).exit_code == 0
    assert (project / ".gitignore").read_text(encoding="utf-8") == before, "entries are never duplicated"


@pytest.mark.feature("CLI-02")
def test_init_dev_requirements_allow_prereleases(runner: CliRunner, project: Path) -> None:
    result = runner.invoke(cli, ["init"], env={"KICI_DEV": "true"})
    assert result.exit_code == 0
    assert f"kici>={__version__}.dev0" in (project / ".kici" / "requirements.txt").read_text(encoding="utf-8")


@pytest.mark.feature("CLI-02")
def test_gitignore_entries_append_cleanly(tmp_path: Path) -> None:
    path = tmp_path / ".gitignore"
    path.write_text("dist", encoding="utf-8")
    assert add_gitignore_entries(path, ("a", "b")) == ["a", "b"]
    assert path.read_text(encoding="utf-8").splitlines() == [
        "dist",
        "",
        "# kici local secrets and environments",
        "a",
        "b",
    ]
    assert add_gitignore_entries(path, ("a", "b", "c")) == ["c"]
    assert add_gitignore_entries(path, ("a", "b", "c")) == []


def test_main_maps_outcomes_to_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    with pytest.raises(SystemExit) as info:
        main(["run", "local"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["test"])
    assert info.value.code == 2


def test_main_maps_ctrl_c_to_130(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "main", interrupted)
    with pytest.raises(SystemExit) as info:
        main(["compile"])
    assert info.value.code == 130


def test_main_turns_unexpected_errors_into_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cli, "main", broken)
    monkeypatch.delenv("KICI_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        main(["compile"])
    assert info.value.code == 1
    assert "RuntimeError: disk on fire" in capsys.readouterr().err


@pytest.mark.feature("CLI-08")
def test_a_payload_must_be_a_json_object(runner: CliRunner, project: Path) -> None:
    (project / "list.json").write_text("[1, 2]", encoding="utf-8")
    (project / "bad.json").write_text("{nope", encoding="utf-8")
    for name, needle in (("list.json", "must hold a JSON object"), ("bad.json", "cannot read JSON")):
        result = runner.invoke(cli, ["run", "local", "push", "--payload", name])
        assert result.exit_code == 2
        assert needle in result.output
    result = runner.invoke(cli, ["run", "local", "push", "--payload", "missing.json"])
    assert result.exit_code == 2


@pytest.mark.feature("CLI-01", "CLI-08")
def test_json_mode_prints_one_document_even_when_the_run_cannot_start(
    runner: CliRunner, project: Path
) -> None:
    result = runner.invoke(cli, ["run", "local", "push", "--json", "--sandbox", "none"])
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["success"] is False
    assert document["workflows"] == []
    assert "E001" in document["error"]
    assert "kici v" not in result.stderr, "--json suppresses the banner"
