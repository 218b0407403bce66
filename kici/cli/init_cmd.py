"""``kici init``: scaffold a working ``.kici/`` in the current directory (CLI-02).

Everything it writes compiles and runs locally as is, so the first ``kici compile`` and
``kici run local push`` succeed before the user has read any documentation.

Choices where the spec is silent: the project is the current directory (where the user stands,
as with ``git init``); ``--force`` overwrites only the files ``init`` itself writes and keeps
anything else in ``.kici/``; ``.kiciignore`` and ``.gitignore`` entries are never duplicated.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from kici import __version__
from kici.cli import templates
from kici.cli.hook_cmd import install_and_report
from kici.cli.output import Printer, banner
from kici.domain.event_args import DEFAULT_TARGET_BRANCH
from kici.services.compiler.api import find_repo_root
from kici.services.local.git import read_working_tree


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def _default_branch(root: Path) -> str:
    """The branch checked out at ``kici init`` time, the usual default branch; ``main`` otherwise."""
    tree = read_working_tree(root)
    detached = tree.has_head and tree.sha.startswith(tree.branch)
    return DEFAULT_TARGET_BRANCH if detached else tree.branch


def _choose_templates(requested: tuple[str, ...]) -> list[str]:
    if requested:
        return list(dict.fromkeys(requested))
    if sys.stdin.isatty() and sys.stdout.isatty() and not _truthy("CI"):
        chosen = [
            name
            for name in templates.TEMPLATES
            if click.confirm(f"Add the {name} workflow template?", default=True, err=True)
        ]
        return chosen or ["hello_world"]
    return list(templates.TEMPLATES)


def add_gitignore_entries(path: Path, entries: tuple[str, ...]) -> list[str]:
    """Append the entries ``path`` lacks (compared line by line, ignoring surrounding space)."""
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    present = {line.strip() for line in existing.splitlines()}
    missing = [entry for entry in entries if entry not in present]
    if missing:
        prefix = "" if not existing or existing.endswith("\n") else "\n"
        block = prefix + ("\n" if existing else "") + "# kici local secrets and environments\n"
        path.write_text(existing + block + "\n".join(missing) + "\n", encoding="utf-8")
    return missing


def _write(path: Path, text: str, written: list[Path]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    written.append(path)


INIT_EPILOG = """\b
Examples:
  kici init                          scaffold everything (asks which templates on a terminal)
  kici init --template hello_world   only the push workflow
  kici init --force                  rewrite the scaffold files in an existing .kici/
"""


@click.command("init", epilog=INIT_EPILOG)
@click.option("--force", is_flag=True, help="Overwrite the scaffold files in an existing .kici/.")
@click.option(
    "--template",
    "template_names",
    multiple=True,
    type=click.Choice(sorted(templates.TEMPLATES)),
    help="Workflow template to add (repeatable; default: all, or ask on a terminal).",
)
@click.option("--no-agents-md", is_flag=True, help="Do not write .kici/AGENTS.md.")
@click.option("--hook", is_flag=True, help="Also install the pre-commit hook (see `kici hook install`).")
@click.option("--skip-install", is_flag=True, hidden=True, help="Accepted for compatibility; does nothing.")
def init_command(
    force: bool, template_names: tuple[str, ...], no_agents_md: bool, hook: bool, skip_install: bool
) -> None:
    """Create .kici/ with example workflows in the current directory.

    Writes .kici/workflows/hello_world.py (runs on push) and pr_checks.py (runs on pull
    requests), a push fixture in .kici/tests/, .kici/requirements.txt, .kici/AGENTS.md and
    .kiciignore, and adds the local secret files to .gitignore. Refuses an existing .kici/
    unless --force is given.
    """
    ctx = click.get_current_context()
    banner()
    root = Path.cwd()
    kici_dir = root / ".kici"
    out = Printer()
    if kici_dir.exists() and not force:
        Printer(err=True).fail(
            f"Error: {kici_dir} already exists (use --force to overwrite the scaffold files)"
        )
        ctx.exit(1)
    written: list[Path] = []
    for name in _choose_templates(template_names):
        _write(kici_dir / "workflows" / f"{name}.py", templates.TEMPLATES[name], written)
    _write(
        kici_dir / "requirements.txt",
        templates.requirements_txt(__version__, dev=_truthy("KICI_DEV")),
        written,
    )
    _write(kici_dir / "kici_types" / "__init__.py", templates.KICI_TYPES_INIT, written)
    _write(kici_dir / "tests" / "push_test.py", templates.push_test(_default_branch(root)), written)
    if not no_agents_md:
        _write(kici_dir / "AGENTS.md", templates.AGENTS_MD, written)
    ignore = root / ".kiciignore"
    if not ignore.exists():
        _write(ignore, templates.KICIIGNORE, written)
    added = add_gitignore_entries(root / ".gitignore", templates.GITIGNORE_ENTRIES)
    for path in written:
        out.line(f"  created {path.relative_to(root).as_posix()}")
    if added:
        out.line(f"  updated .gitignore (+{len(added)} entries)")
    out.ok("Initialized .kici/")
    if hook:
        install_and_report(find_repo_root(root), raw_git=False)
    out.line("Next: kici compile && kici preview push && kici run local push")
