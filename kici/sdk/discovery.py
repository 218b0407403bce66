"""Finding and loading workflow modules (CLI-06, D3): one rule for the compiler and the runner.

* :func:`workflow_files`: ``<kici>/workflows/*.py`` sorted by name, minus files
  starting with ``_`` (helpers imported by workflows, never workflows themselves);
* :func:`load_workflow_module`: imports one file as ``kici_workflows.<stem>`` with
  ``[<kici>/workflows, <repo root>]`` in front of ``sys.path`` while it runs, so
  ``import _helpers`` and ``import tools.x`` resolve the same everywhere;
* :func:`discover_workflows`: the module's ``Workflow`` attributes in definition
  order, including those inside list/tuple attributes (``#attr[i]``); an object
  bound to two names is reported once, under its first name.

Errors from the module propagate unchanged: the compiler turns them into E003 (or
keeps a ``KiciDefinitionError``'s own code), the runner into a failed job.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from kici.sdk.workflow import Workflow

MODULE_PREFIX = "kici_workflows"


def workflow_files(kici_dir: Path) -> list[Path]:
    """The workflow files of a ``.kici`` directory; empty when it has no ``workflows/``."""
    directory = kici_dir / "workflows"
    if not directory.is_dir():
        return []
    return sorted(
        (p for p in directory.glob("*.py") if p.is_file() and not p.name.startswith("_")),
        key=lambda p: p.name,
    )


def load_workflow_module(path: Path, kici_dir: Path, repo_root: Path) -> ModuleType:
    name = f"{MODULE_PREFIX}.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load workflow file {path}")
    module = importlib.util.module_from_spec(spec)
    prefix = [str(kici_dir / "workflows"), str(repo_root)]
    sys.path[:0] = prefix
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        for entry in prefix:
            if entry in sys.path:
                sys.path.remove(entry)
    return module


def discover_workflows(module: ModuleType) -> list[tuple[str, Workflow]]:
    """``(export, workflow)`` pairs; ``export`` (``#attr``, ``#attr[i]``) is the lock's ``source.export``."""
    found: list[tuple[str, Workflow]] = []
    seen: set[int] = set()

    def add(export: str, candidate: object) -> None:
        if isinstance(candidate, Workflow) and id(candidate) not in seen:
            seen.add(id(candidate))
            found.append((export, candidate))

    for attr, value in list(vars(module).items()):
        if isinstance(value, list | tuple):
            for index, item in enumerate(value):
                add(f"#{attr}[{index}]", item)
        else:
            add(f"#{attr}", value)
    return found
