"""``kici compile``: workflow modules -> ``.kici/kici.lock.json`` (00 §2, §3.3, §4).

The parent API (:mod:`~kici.services.compiler.api`) is synchronous and runs each
compile in a fresh child interpreter (:mod:`~kici.services.compiler.child`), which
imports the workflows, checks them (:mod:`~kici.services.compiler.checks`) and
translates the SDK objects into lock models (:mod:`~kici.services.compiler.build`).
"""

from kici.services.compiler.api import (
    CompileResult,
    check_locked,
    compile_project,
    find_kici_dir,
    find_repo_root,
    lock_path,
    watch,
    write_lock,
)
from kici.services.compiler.diagnostics import Diagnostic, format_all

__all__ = [
    "CompileResult",
    "Diagnostic",
    "check_locked",
    "compile_project",
    "find_kici_dir",
    "find_repo_root",
    "format_all",
    "lock_path",
    "watch",
    "write_lock",
]
