"""``kici hook install [--git]``: keep ``.kici/kici.lock.json`` in step with the workflows on commit (CLI-12).

The hook goes where the repository already manages its git hooks, found by priority: husky
(``.husky/``), lefthook (``lefthook.yml``, ``.lefthook.yml``, ``.config/lefthook.yml``),
pre-commit (``.pre-commit-config.yaml``), prek (``prek.toml``, ``.prek.toml``). None of them, or
``--git``, means the raw ``pre-commit`` script in git's hooks directory. With several managers a
person at a terminal picks one; without a terminal (or with ``CI`` set) the highest priority wins,
so scripted installs are deterministic.

What each gets, and why:

* husky and the raw git hook: ``#!/bin/sh`` + the marker + ``kici compile && git add
  .kici/kici.lock.json``, appended to an existing script rather than replacing the user's commands.
  The raw hook is not committed, so it names this interpreter by absolute path
  (``<python> -m kici``, PY+) and works without ``kici`` on ``PATH`` (a virtualenv not activated
  in the shell that runs ``git commit``); husky's script is committed and says plain ``kici``.
* lefthook: a ``kici-compile`` command with the same ``run:`` under ``pre-commit`` (a ``jobs:``
  list gets a job of that name instead, for lefthook's newer syntax).
* pre-commit and prek: the ``kici-lock`` local hook running ``kici compile --locked``. It checks
  instead of staging because pre-commit fails any hook that modifies files (PY+).

Editing keeps what the user wrote: YAML goes through ruamel.yaml's round-trip mode with the file's
own indentation and quoting, so comments, order and style survive. TOML is appended as text (the
standard library reads TOML but cannot write it); the result is parsed again and, when the
append would not be valid (``repos`` written as an inline array), nothing is written and the
error shows the snippet to add by hand.

Idempotent: a file that already holds the marker ``# KiCI: compile workflows on commit``,
``kici compile`` or ``kici-compile`` is left alone. Scripts are made executable (0755).

The raw hook follows a ``.git`` *file* (``gitdir: …``, as in worktrees and submodules) and then
the git directory's ``commondir``, because git runs a worktree's hooks from the main repository's
``hooks/``. When ``core.hooksPath`` points elsewhere, git would never run that script: the command
says so instead of pretending it worked.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import click
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.util import load_yaml_guess_indent

from kici.cli.output import Printer
from kici.services.compiler.api import find_repo_root

MARKER: Final = "# KiCI: compile workflows on commit"
INSTALLED_SIGNS: Final = (MARKER, "kici compile", "kici-compile")
LOCK_FILE: Final = ".kici/kici.lock.json"
COMPILE_AND_STAGE: Final = f"kici compile && git add {LOCK_FILE}"
LEFTHOOK_COMMAND: Final = "kici-compile"
SCRIPT_MODE: Final = 0o755

GIT: Final = "git"
HUSKY: Final = "husky"
LEFTHOOK: Final = "lefthook"
PRE_COMMIT: Final = "pre-commit"
PREK: Final = "prek"
PRIORITY: Final = (HUSKY, LEFTHOOK, PRE_COMMIT, PREK)

_CONFIG_FILES: Final[dict[str, tuple[str, ...]]] = {
    HUSKY: (".husky",),
    LEFTHOOK: ("lefthook.yml", ".lefthook.yml", ".config/lefthook.yml"),
    PRE_COMMIT: (".pre-commit-config.yaml",),
    PREK: ("prek.toml", ".prek.toml"),
}

PRE_COMMIT_HOOK: Final = {
    "id": "kici-lock",
    "name": "KiCI lock file up to date",
    "entry": "kici compile --locked",
    "language": "system",
    "pass_filenames": False,
    "files": r"^\.kici/",
}

PREK_SNIPPET: Final = f"""\
{MARKER}
[[repos]]
repo = "local"

[[repos.hooks]]
id = "kici-lock"
name = "KiCI lock file up to date"
entry = "kici compile --locked"
language = "system"
pass_filenames = false
files = '^\\.kici/'
"""

_HINTS: Final = {
    GIT: f"Every commit now compiles the workflows and stages {LOCK_FILE}.",
    HUSKY: f"Every commit now compiles the workflows and stages {LOCK_FILE} (needs `kici` on PATH).",
    LEFTHOOK: "Run `lefthook install` if git does not call lefthook yet.",
    PRE_COMMIT: "Run `pre-commit install` if git does not call pre-commit yet; "
    "a stale lock then fails the commit until you run `kici compile`.",
    PREK: "Run `prek install` if git does not call prek yet; "
    "a stale lock then fails the commit until you run `kici compile`.",
}


class HookInstallError(click.ClickException):
    """The hook cannot be installed; nothing was written (exit 1)."""

    exit_code = 1


@attrs.frozen
class Detected:
    """A hook manager found in the repository, and the file or directory that gave it away."""

    manager: str
    path: Path


@attrs.frozen
class InstallResult:
    manager: str
    path: Path
    installed: bool


def detect_managers(root: Path) -> list[Detected]:
    """The hook managers configured in ``root``, highest priority first."""
    found: list[Detected] = []
    for manager in PRIORITY:
        for name in _CONFIG_FILES[manager]:
            path = root / name
            if path.is_dir() if manager == HUSKY else path.is_file():
                found.append(Detected(manager, path))
                break
    return found


def git_dir(root: Path) -> Path:
    """The git directory of the working tree at ``root``, following a ``gitdir:`` file."""
    dot_git = root / ".git"
    if dot_git.is_dir():
        return dot_git
    if dot_git.is_file():
        text = dot_git.read_text(encoding="utf-8").strip()
        if text.startswith("gitdir:"):
            target = Path(text.removeprefix("gitdir:").strip())
            return target if target.is_absolute() else (root / target).resolve()
        raise HookInstallError(f"{dot_git} is a file without a `gitdir:` line")
    raise HookInstallError(f"{root} is not a git repository: run `git init` first")


def git_hooks_dir(root: Path) -> Path:
    """Where git looks for this working tree's hooks (the common directory's ``hooks/``)."""
    directory = git_dir(root)
    common = directory / "commondir"
    if common.is_file():
        directory = (directory / common.read_text(encoding="utf-8").strip()).resolve()
    return directory / "hooks"


def configured_hooks_path(root: Path) -> str | None:
    """``core.hooksPath`` when set (git then ignores ``.git/hooks``); ``None`` without git or unset."""
    try:
        done = subprocess.run(
            ["git", "config", "--get", "core.hooksPath"],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = done.stdout.strip()
    return value if done.returncode == 0 and value else None


def _already_installed(text: str) -> bool:
    return any(sign in text for sign in INSTALLED_SIGNS)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HookInstallError(f"cannot read {path}: {exc}") from None


def _ending_in_newline(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"


def install_script(path: Path, command: str) -> bool:
    """Append the marker and ``command`` to the script at ``path`` (created if missing); False if present."""
    if path.exists():
        text = _read(path)
        if _already_installed(text):
            return False
        text = f"{_ending_in_newline(text)}\n{MARKER}\n{command}\n"
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = f"#!/bin/sh\n{MARKER}\n{command}\n"
    path.write_text(text, encoding="utf-8")
    path.chmod(SCRIPT_MODE)
    return True


# --- YAML (lefthook, pre-commit) -------------------------------------------------------------------

_KEY_LINE = re.compile(r"^(\s*)[^\s#-][^#]*:\s*(#.*)?$")


def _mapping_indent(text: str) -> int:
    """The indentation of a mapping nested in a mapping, as the file writes it (2 when it has none)."""
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    for line, following in itertools.pairwise(lines):
        match = _KEY_LINE.match(line)
        if match is None:
            continue
        outer = len(match.group(1))
        inner = len(following) - len(following.lstrip())
        if inner > outer and not following.lstrip().startswith("-"):
            return inner - outer
    return 2


def _round_trip(path: Path, text: str) -> tuple[YAML, Any]:
    """A round-trip loader/dumper set to the file's own indentation, and the loaded document."""
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    try:
        _, sequence, offset = load_yaml_guess_indent(text)
        data = yaml.load(text)
    except YAMLError as exc:
        raise HookInstallError(f"cannot parse {path}: {exc}") from None
    mapping = _mapping_indent(text)
    if sequence is None:
        sequence, offset = mapping + 2, mapping
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset or 0)
    if data is None:
        data = CommentedMap()
    if not isinstance(data, CommentedMap):
        raise HookInstallError(f"{path} must hold a mapping at the top level")
    return yaml, data


def _dump(yaml: YAML, data: Any) -> str:
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def _block_list(parent: CommentedMap, key: str, path: Path) -> CommentedSeq:
    value = parent.get(key)
    if value is None:
        value = CommentedSeq()
        parent[key] = value
    if not isinstance(value, CommentedSeq):
        raise HookInstallError(f"`{key}` in {path} must be a list")
    if not value:
        value.fa.set_block_style()
    return value


def _block_map(parent: CommentedMap, key: str, path: Path) -> CommentedMap:
    value = parent.get(key)
    if value is None:
        value = CommentedMap()
        parent[key] = value
    if not isinstance(value, CommentedMap):
        raise HookInstallError(f"`{key}` in {path} must be a mapping")
    return value


def add_lefthook_command(path: Path, text: str) -> str:
    """``text`` of a lefthook config with the ``kici-compile`` pre-commit command added."""
    yaml, data = _round_trip(path, text)
    pre_commit = _block_map(data, "pre-commit", path)
    if "jobs" in pre_commit and "commands" not in pre_commit:
        jobs = _block_list(pre_commit, "jobs", path)
        jobs.append(CommentedMap(name=LEFTHOOK_COMMAND, run=COMPILE_AND_STAGE))
    else:
        commands = _block_map(pre_commit, "commands", path)
        commands[LEFTHOOK_COMMAND] = CommentedMap(run=COMPILE_AND_STAGE)
    return _dump(yaml, data)


def add_pre_commit_hook(path: Path, text: str) -> str:
    """``text`` of a ``.pre-commit-config.yaml`` with the ``kici-lock`` local hook added."""
    yaml, data = _round_trip(path, text)
    repos = _block_list(data, "repos", path)
    hook = CommentedMap(PRE_COMMIT_HOOK)
    repos.append(CommentedMap(repo="local", hooks=CommentedSeq([hook])))
    return _dump(yaml, data)


# --- TOML (prek) -----------------------------------------------------------------------------------


def add_prek_hook(path: Path, text: str) -> str:
    """``text`` of a ``prek.toml`` with the ``kici-lock`` local hook appended."""
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HookInstallError(f"cannot parse {path}: {exc}") from None
    updated = f"{_ending_in_newline(text)}\n{PREK_SNIPPET}" if text.strip() else PREK_SNIPPET
    try:
        tomllib.loads(updated)
    except tomllib.TOMLDecodeError:
        raise HookInstallError(
            f"cannot append the KiCI hook to {path} (is `repos` an inline array?). "
            f"Add this local hook to its repos by hand:\n\n{PREK_SNIPPET}"
        ) from None
    return updated


# --- install ---------------------------------------------------------------------------------------

_CONFIG_EDITORS: Final[dict[str, Callable[[Path, str], str]]] = {
    LEFTHOOK: add_lefthook_command,
    PRE_COMMIT: add_pre_commit_hook,
    PREK: add_prek_hook,
}


def install_hook(root: Path, target: Detected | None, *, python: str | None = None) -> InstallResult:
    """Install into ``target`` (``None``: the raw git hook); ``installed`` is False when already there."""
    if target is None:
        path = git_hooks_dir(root) / "pre-commit"
        command = f"{shlex.quote(python or sys.executable)} -m kici compile && git add {LOCK_FILE}"
        return InstallResult(GIT, path, install_script(path, command))
    if target.manager == HUSKY:
        path = target.path / "pre-commit"
        return InstallResult(HUSKY, path, install_script(path, COMPILE_AND_STAGE))
    text = _read(target.path)
    if _already_installed(text):
        return InstallResult(target.manager, target.path, False)
    updated = _CONFIG_EDITORS[target.manager](target.path, text)
    target.path.write_text(updated, encoding="utf-8")
    return InstallResult(target.manager, target.path, True)


def prompts_allowed() -> bool:
    """A person can answer: both ends are a terminal and ``CI`` is not set (00 §3.2)."""
    ci = os.environ.get("CI", "").strip().lower()
    return sys.stdin.isatty() and sys.stdout.isatty() and ci in ("", "0", "false", "no")


def choose_target(found: Sequence[Detected], *, interactive: bool) -> Detected:
    """The manager to install into: asked for when several are configured and someone can answer."""
    if len(found) == 1 or not interactive:
        return found[0]
    names = [item.manager for item in found]
    answer = click.prompt(
        "Several git hook managers are configured. Install the KiCI hook into",
        type=click.Choice(names),
        default=names[0],
        show_choices=True,
        err=True,
    )
    return found[names.index(answer)]


def _shown(root: Path, path: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


@click.group("hook", context_settings={"help_option_names": ["-h", "--help"]})
def hook_group() -> None:
    """Git hooks that keep the lock file in step with the workflows."""


@hook_group.command("install")
@click.option("--git", "raw_git", is_flag=True, help="Install the raw .git/hooks/pre-commit script.")
def hook_install_command(raw_git: bool) -> None:
    """Compile the workflows on every commit.

    Installs into husky, lefthook, pre-commit or prek when the repository uses one (in that
    order of priority), else into .git/hooks/pre-commit. Running it again changes nothing.
    """
    install_and_report(find_repo_root(Path.cwd()), raw_git=raw_git)


def install_and_report(root: Path, *, raw_git: bool) -> None:
    """Install the hook for ``root`` and print what happened (shared with ``kici init --hook``)."""
    if not (root / ".kici" / "workflows").is_dir():
        raise HookInstallError(
            f"no .kici/workflows/ in {root}: run `kici init` first (the hook would fail every commit)"
        )
    found = [] if raw_git else detect_managers(root)
    target = choose_target(found, interactive=prompts_allowed()) if found else None
    result = install_hook(root, target)
    out = Printer()
    shown = _shown(root, result.path)
    if not result.installed:
        out.ok(f"KiCI hook already installed ({result.manager}): {shown}")
        return
    out.ok(f"Installed the KiCI hook ({result.manager}): {shown}")
    out.line(_HINTS[result.manager], "dim")
    if result.manager == GIT:
        hooks_path = configured_hooks_path(root)
        if hooks_path is not None:
            Printer(err=True).line(
                f"Warning: git runs hooks from {hooks_path} (core.hooksPath), so it will not run "
                f"{shown}. Unset core.hooksPath or install into the manager that set it.",
                "yellow",
            )
