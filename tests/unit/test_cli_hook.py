"""``kici hook install``: detection by priority, what each hook manager gets, idempotency, git layouts.

Every test builds a throw-away repository (a real ``git init``, no commit needed) and installs
through the same functions the command uses, or through click's CliRunner for the command's
own behaviour. The e2e test commits through an installed hook for real.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from ruamel.yaml import YAML

from kici.cli import hook_cmd
from kici.cli.hook_cmd import (
    COMPILE_AND_STAGE,
    MARKER,
    PRE_COMMIT_HOOK,
    Detected,
    HookInstallError,
    add_lefthook_command,
    add_pre_commit_hook,
    add_prek_hook,
    choose_target,
    detect_managers,
    git_hooks_dir,
    install_hook,
    prompts_allowed,
)
from kici.cli.main import cli

pytestmark = pytest.mark.feature("CLI-12")


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / ".kici" / "workflows").mkdir(parents=True)
    return root


@pytest.fixture
def in_repo(repo: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(repo)
    monkeypatch.delenv("CI", raising=False)
    return repo


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_yaml(text: str) -> object:
    return YAML(typ="safe").load(text)


def is_executable(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o755


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["hook", "install", *args])
    return result.exit_code, result.stdout, result.stderr


# --- detection --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "manager", "config"),
    [
        (".husky/", "husky", ".husky"),
        ("lefthook.yml", "lefthook", "lefthook.yml"),
        (".lefthook.yml", "lefthook", ".lefthook.yml"),
        (".config/lefthook.yml", "lefthook", ".config/lefthook.yml"),
        (".pre-commit-config.yaml", "pre-commit", ".pre-commit-config.yaml"),
        ("prek.toml", "prek", "prek.toml"),
        (".prek.toml", "prek", ".prek.toml"),
    ],
)
def test_each_manager_is_detected_from_its_files(repo: Path, layout: str, manager: str, config: str) -> None:
    if layout.endswith("/"):
        (repo / layout).mkdir()
    else:
        write(repo / layout, "")
    assert detect_managers(repo) == [Detected(manager, repo / config)]


def test_detection_lists_managers_by_priority(repo: Path) -> None:
    write(repo / "prek.toml", "")
    write(repo / ".pre-commit-config.yaml", "repos: []\n")
    write(repo / ".lefthook.yml", "")
    write(repo / "lefthook.yml", "")
    (repo / ".husky").mkdir()
    found = detect_managers(repo)
    assert [d.manager for d in found] == ["husky", "lefthook", "pre-commit", "prek"]
    assert found[1].path == repo / "lefthook.yml", "the first lefthook file in the documented order"
    assert detect_managers(repo / ".kici") == []


def test_a_file_named_husky_is_not_husky(repo: Path) -> None:
    write(repo / ".husky", "not a directory")
    assert detect_managers(repo) == []


def test_several_managers_non_interactive_take_the_highest_priority(repo: Path) -> None:
    found = [Detected("lefthook", repo / "lefthook.yml"), Detected("prek", repo / "prek.toml")]
    assert choose_target(found, interactive=False) == found[0]


def test_ci_or_a_pipe_disables_prompts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    monkeypatch.setenv("CI", "true")
    assert prompts_allowed() is False
    monkeypatch.setenv("CI", "false")
    assert prompts_allowed() is True
    monkeypatch.delenv("CI")
    assert prompts_allowed() is True
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert prompts_allowed() is False


def test_several_managers_on_a_terminal_ask_which(in_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(in_repo / "lefthook.yml", "")
    write(in_repo / ".pre-commit-config.yaml", "repos: []\n")
    monkeypatch.setattr(hook_cmd, "prompts_allowed", lambda: True)
    result = CliRunner().invoke(cli, ["hook", "install"], input="pre-commit\n")
    assert result.exit_code == 0, result.output
    assert "Install the KiCI hook into" in result.stderr
    assert "(pre-commit)" in result.stdout
    assert "kici compile --locked" in (in_repo / ".pre-commit-config.yaml").read_text()
    assert (in_repo / "lefthook.yml").read_text() == ""


def test_several_managers_without_a_terminal_install_into_the_first(in_repo: Path) -> None:
    write(in_repo / "lefthook.yml", "")
    write(in_repo / ".pre-commit-config.yaml", "repos: []\n")
    code, out, _ = invoke()
    assert code == 0
    assert "Installed the KiCI hook (lefthook): lefthook.yml" in out
    assert (in_repo / ".pre-commit-config.yaml").read_text() == "repos: []\n"


# --- the raw git hook -------------------------------------------------------------------------------


def test_raw_git_hook_uses_this_interpreter_and_is_executable(repo: Path) -> None:
    result = install_hook(repo, None, python="/opt/py env/bin/python3")
    hook = repo / ".git" / "hooks" / "pre-commit"
    assert (result.manager, result.path, result.installed) == ("git", hook, True)
    assert hook.read_text() == (
        f"#!/bin/sh\n{MARKER}\n'/opt/py env/bin/python3' -m kici compile && git add .kici/kici.lock.json\n"
    )
    assert is_executable(hook)


def test_raw_git_hook_is_appended_to_an_existing_script(repo: Path) -> None:
    hook = write(repo / ".git" / "hooks" / "pre-commit", "#!/bin/sh\nmake lint")
    hook.chmod(0o644)
    assert install_hook(repo, None).installed
    text = hook.read_text()
    assert text.startswith("#!/bin/sh\nmake lint\n\n" + MARKER + "\n")
    assert text.count("#!/bin/sh") == 1
    assert is_executable(hook)


@pytest.mark.parametrize("existing", [MARKER, "kici compile", "npx kici-compile"])
def test_any_sign_of_kici_means_installed(repo: Path, existing: str) -> None:
    hook = write(repo / ".git" / "hooks" / "pre-commit", f"#!/bin/sh\n{existing}\n")
    hook.chmod(0o644)
    assert install_hook(repo, None).installed is False
    assert hook.read_text() == f"#!/bin/sh\n{existing}\n"
    assert stat.S_IMODE(hook.stat().st_mode) == 0o644, "an installed hook is left exactly as it is"


def test_install_twice_changes_nothing(in_repo: Path) -> None:
    code, out, _ = invoke("--git")
    assert code == 0
    assert "Installed the KiCI hook (git): .git/hooks/pre-commit" in out
    hook = in_repo / ".git" / "hooks" / "pre-commit"
    first = hook.read_bytes()
    code, out, _ = invoke("--git")
    assert code == 0
    assert "already installed (git)" in out
    assert hook.read_bytes() == first


def test_git_flag_skips_the_managers(in_repo: Path) -> None:
    write(in_repo / ".pre-commit-config.yaml", "repos: []\n")
    code, _, _ = invoke("--git")
    assert code == 0
    assert (in_repo / ".git" / "hooks" / "pre-commit").is_file()
    assert (in_repo / ".pre-commit-config.yaml").read_text() == "repos: []\n"


def test_no_manager_means_the_raw_git_hook(in_repo: Path) -> None:
    code, out, _ = invoke()
    assert code == 0
    assert "(git)" in out
    assert (in_repo / ".git" / "hooks" / "pre-commit").is_file()


def test_worktree_hooks_live_in_the_main_repository(repo: Path, tmp_path: Path) -> None:
    git(repo, "commit", "-q", "--allow-empty", "-m", "first")
    worktree = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", str(worktree))
    assert (worktree / ".git").is_file()
    assert git_hooks_dir(worktree).resolve() == (repo / ".git" / "hooks").resolve()
    result = install_hook(worktree, None)
    assert result.path.resolve() == (repo / ".git" / "hooks" / "pre-commit").resolve()


def test_gitdir_file_with_a_relative_path(tmp_path: Path) -> None:
    module_git = tmp_path / "super" / ".git" / "modules" / "sub"
    module_git.mkdir(parents=True)
    sub = tmp_path / "super" / "sub"
    write(sub / ".git", "gitdir: ../.git/modules/sub\n")
    assert git_hooks_dir(sub) == module_git.resolve() / "hooks"
    install_hook(sub, None)
    assert (module_git / "hooks" / "pre-commit").is_file()


def test_not_a_repository_or_a_broken_git_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(HookInstallError, match="not a git repository"):
        git_hooks_dir(tmp_path)
    write(tmp_path / ".git", "something else\n")
    with pytest.raises(HookInstallError, match="gitdir"):
        git_hooks_dir(tmp_path)


def test_core_hooks_path_is_reported(in_repo: Path) -> None:
    git(in_repo, "config", "core.hooksPath", ".githooks")
    code, _, err = invoke("--git")
    assert code == 0
    assert "core.hooksPath" in err
    assert ".githooks" in err


def test_without_a_kici_project_nothing_is_installed(in_repo: Path) -> None:
    (in_repo / ".kici" / "workflows").rmdir()
    code, _, err = invoke()
    assert code == 1
    assert "kici init" in err
    assert not (in_repo / ".git" / "hooks" / "pre-commit").exists()


def test_outside_git_the_raw_hook_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".kici" / "workflows").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    code, _, err = invoke()
    assert code == 1
    assert "not a git repository" in err
    assert "Traceback" not in err


# --- husky ------------------------------------------------------------------------------------------


def test_husky_gets_a_committed_script_with_plain_kici(repo: Path) -> None:
    (repo / ".husky").mkdir()
    result = install_hook(repo, detect_managers(repo)[0])
    hook = repo / ".husky" / "pre-commit"
    assert (result.manager, result.path) == ("husky", hook)
    assert hook.read_text() == f"#!/bin/sh\n{MARKER}\n{COMPILE_AND_STAGE}\n"
    assert is_executable(hook)


def test_husky_keeps_the_existing_hook(repo: Path) -> None:
    write(repo / ".husky" / "pre-commit", "npm test\n")
    assert install_hook(repo, detect_managers(repo)[0]).installed
    assert (repo / ".husky" / "pre-commit").read_text() == f"npm test\n\n{MARKER}\n{COMPILE_AND_STAGE}\n"
    assert install_hook(repo, detect_managers(repo)[0]).installed is False


# --- lefthook ---------------------------------------------------------------------------------------


LEFTHOOK = """\
# lefthook config (team owned)
pre-commit:
  parallel: true
  commands:
    lint:
      glob: "*.js"   # only js
      run: npx eslint {staged_files}
pre-push:
  commands:
    test:
      run: npm test
"""


def test_lefthook_gets_a_kici_compile_command_and_keeps_the_file(repo: Path) -> None:
    config = write(repo / "lefthook.yml", LEFTHOOK)
    assert install_hook(repo, detect_managers(repo)[0]).installed
    text = config.read_text()
    for line in LEFTHOOK.splitlines():
        assert line in text, "comments, quotes and order survive"
    data = load_yaml(text)
    assert data["pre-commit"]["commands"]["kici-compile"] == {"run": COMPILE_AND_STAGE}
    assert list(data["pre-commit"]["commands"]) == ["lint", "kici-compile"]
    assert data["pre-push"] == {"commands": {"test": {"run": "npm test"}}}
    assert install_hook(repo, detect_managers(repo)[0]).installed is False
    assert config.read_text() == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {"pre-commit": {"commands": {"kici-compile": {"run": COMPILE_AND_STAGE}}}}),
        ("pre-commit:\n", {"pre-commit": {"commands": {"kici-compile": {"run": COMPILE_AND_STAGE}}}}),
        (
            "pre-commit:\n  jobs:\n    - run: make lint\n",
            {
                "pre-commit": {
                    "jobs": [{"run": "make lint"}, {"name": "kici-compile", "run": COMPILE_AND_STAGE}]
                }
            },
        ),
    ],
)
def test_lefthook_variants(text: str, expected: object) -> None:
    assert load_yaml(add_lefthook_command(Path("lefthook.yml"), text)) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- a\n", "mapping at the top level"),
        ("pre-commit: [1]\n", "must be a mapping"),
        ("pre-commit:\n  commands: [x]\n", "must be a mapping"),
        ("pre-commit: {\n", "cannot parse"),
    ],
)
def test_lefthook_files_it_cannot_edit_are_errors(text: str, problem: str) -> None:
    with pytest.raises(HookInstallError, match=problem):
        add_lefthook_command(Path("lefthook.yml"), text)


# --- pre-commit -------------------------------------------------------------------------------------


PRE_COMMIT_STYLES = [
    """\
# See https://pre-commit.com
repos:
-   repo: https://github.com/pre-commit/pre-commit-hooks
    rev: v4.6.0  # pinned
    hooks:
    -   id: check-yaml
    -   id: end-of-file-fixer
default_stages: [pre-commit]
""",
    """\
repos:
  - repo: https://github.com/psf/black
    rev: "24.4.2"
    hooks:
      - id: black   # formatter
ci:
  autofix_prs: true
""",
]


@pytest.mark.parametrize("original", PRE_COMMIT_STYLES)
def test_pre_commit_gets_the_local_hook_in_the_files_own_style(repo: Path, original: str) -> None:
    config = write(repo / ".pre-commit-config.yaml", original)
    result = install_hook(repo, detect_managers(repo)[0])
    assert (result.manager, result.installed) == ("pre-commit", True)
    text = config.read_text()
    for line in original.splitlines():
        assert line in text, f"line changed: {line!r}"
    data = load_yaml(text)
    assert data["repos"][-1] == {"repo": "local", "hooks": [PRE_COMMIT_HOOK]}
    assert data["repos"][-1]["hooks"][0]["files"] == "^\\.kici/"
    original_data = load_yaml(original)
    assert data["repos"][:-1] == original_data["repos"]
    assert install_hook(repo, detect_managers(repo)[0]).installed is False
    assert config.read_text() == text


@pytest.mark.parametrize("text", ["", "repos: []\n", "# nothing yet\n"])
def test_pre_commit_from_an_empty_config(text: str) -> None:
    updated = add_pre_commit_hook(Path(".pre-commit-config.yaml"), text)
    assert load_yaml(updated) == {"repos": [{"repo": "local", "hooks": [PRE_COMMIT_HOOK]}]}
    assert "[" not in updated.split("repos:")[1].splitlines()[0], "an empty flow list becomes a block"


def test_pre_commit_repos_must_be_a_list() -> None:
    with pytest.raises(
        HookInstallError, match=re.escape("`repos` in .pre-commit-config.yaml must be a list")
    ):
        add_pre_commit_hook(Path(".pre-commit-config.yaml"), "repos: nope\n")


# --- prek -------------------------------------------------------------------------------------------


PREK = """\
# prek hooks
[[repos]]
repo = "https://github.com/pre-commit/pre-commit-hooks"
rev = "v6.0.0"
hooks = [{ id = "trailing-whitespace" }]"""


def test_prek_gets_the_local_hook_appended(repo: Path) -> None:
    config = write(repo / "prek.toml", PREK)
    result = install_hook(repo, detect_managers(repo)[0])
    assert (result.manager, result.installed) == ("prek", True)
    text = config.read_text()
    assert text.startswith(PREK + "\n\n" + MARKER)
    repos = tomllib.loads(text)["repos"]
    assert repos[0]["hooks"] == [{"id": "trailing-whitespace"}]
    assert repos[1] == {"repo": "local", "hooks": [PRE_COMMIT_HOOK]}
    assert install_hook(repo, detect_managers(repo)[0]).installed is False


def test_prek_empty_file() -> None:
    text = add_prek_hook(Path("prek.toml"), "")
    assert tomllib.loads(text) == {"repos": [{"repo": "local", "hooks": [PRE_COMMIT_HOOK]}]}


def test_prek_inline_repos_cannot_be_appended_to(repo: Path) -> None:
    original = 'repos = [{ repo = "meta", hooks = [{ id = "identity" }] }]\n'
    config = write(repo / ".prek.toml", original)
    with pytest.raises(HookInstallError, match="by hand") as caught:
        install_hook(repo, detect_managers(repo)[0])
    assert 'entry = "kici compile --locked"' in caught.value.message
    assert config.read_text() == original


def test_prek_invalid_toml_is_an_error_naming_the_file() -> None:
    with pytest.raises(HookInstallError, match=re.escape("cannot parse prek.toml")):
        add_prek_hook(Path("prek.toml"), "[[repos]\n")


def test_help_mentions_the_managers() -> None:
    result = CliRunner().invoke(cli, ["hook", "install", "--help"])
    assert result.exit_code == 0
    for name in ("husky", "lefthook", "pre-commit", "prek", "--git"):
        assert name in result.output


def test_hook_scripts_are_created_with_the_documented_mode(repo: Path) -> None:
    old = os.umask(0o077)
    try:
        install_hook(repo, None)
    finally:
        os.umask(old)
    assert is_executable(repo / ".git" / "hooks" / "pre-commit")


@pytest.mark.feature("CLI-02", "CLI-12")
def test_init_with_hook_installs_the_raw_git_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from click.testing import CliRunner

    from kici.cli.main import cli

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["init", "--hook"])
    assert result.exit_code == 0, result.output
    hook = tmp_path / ".git" / "hooks" / "pre-commit"
    assert "# KiCI: compile workflows on commit" in hook.read_text()
