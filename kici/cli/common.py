"""Pieces every ``kici`` subcommand shares: locating the project and compiling it with diagnostics."""

from __future__ import annotations

from pathlib import Path

import attrs
import click

from kici.cli.output import Printer
from kici.services.compiler.api import CompileResult, compile_project, find_kici_dir, find_repo_root
from kici.services.compiler.diagnostics import error, format_all

KICI_DIR_OPTION = click.option(
    "--kici-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The .kici directory (default: ./.kici, or the repository root's .kici).",
)


@attrs.frozen
class Project:
    kici_dir: Path
    repo_root: Path

    def relative(self, path: Path) -> str:
        try:
            return path.resolve().relative_to(self.repo_root).as_posix()
        except ValueError:
            return str(path)


class ProjectNotFoundError(click.ClickException):
    """E001 with its suggestion; exit 1 like every compile error."""

    exit_code = 1

    def __init__(self, searched: Path) -> None:
        diagnostic = error(
            "E001",
            f".kici/workflows/ directory not found: {searched}",
            suggestion="run `kici init` to scaffold one, or pass --kici-dir",
        )
        super().__init__(diagnostic.format())

    def show(self, file: object = None) -> None:
        Printer(err=True).fail(self.message)


def find_project(kici_dir: Path | None) -> Project:
    """The ``--kici-dir`` rule of 00 §3.3, falling back to the repository root's ``.kici``.

    Running ``kici`` from a subdirectory of the repository is common; looking at the
    repository root as well saves a ``cd`` without guessing beyond it.
    """
    cwd = Path.cwd()
    found = find_kici_dir(kici_dir, cwd)
    if found is None and kici_dir is None:
        root_candidate = find_repo_root(cwd) / ".kici"
        if (root_candidate / "workflows").is_dir():
            found = root_candidate
    if found is None:
        searched = (kici_dir if kici_dir is not None else cwd / ".kici") / "workflows"
        raise ProjectNotFoundError(searched)
    found = found.resolve()
    return Project(found, find_repo_root(found))


def compile_or_report(project: Project, *, err: Printer | None = None) -> CompileResult:
    """Compile in memory and print every diagnostic (errors and warnings) to stderr."""
    result = compile_project(project.kici_dir, project.repo_root)
    if result.diagnostics:
        printer = err if err is not None else Printer(err=True)
        for block in format_all(list(result.diagnostics)).split("\n"):
            style = "red" if "error [" in block else ("yellow" if "warning [" in block else None)
            printer.line(block, style)
    return result
