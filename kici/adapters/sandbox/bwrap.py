"""The bubblewrap sandbox (ISO-07): read-only system, writable ``/workspace``, nothing of the agent's.

The root of the sandbox is an empty tmpfs; only these are visible: the system directories (read-only;
merged-``/usr`` symlinks are recreated as symlinks), a handful of ``/etc`` files programs need (resolver,
CA certificates, passwd/group — no secrets live there), fresh ``/dev``, ``/proc`` and ``/tmp``, the extra
read-only paths of the spec (Python prefix, venv, kici package) and the workspace at ``/workspace``.
``/`` is never bound, so the agent's home, its config and any other file stays out of reach; the tmpfs
root is remounted read-only once populated, so only ``/workspace`` and ``/tmp`` are writable.

Namespaces: ``--unshare-all`` (network too unless the spec asks for the host network), a new session,
and death with the parent. As root, bwrap would otherwise run the step as uid 0: we map to 65534 and drop
every capability (STACK.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from kici.domain.ports import LaunchPlan, SandboxSpec

WORKSPACE = "/workspace"
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
ETC_PATHS = (
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/alternatives",
    "/etc/passwd",
    "/etc/group",
    "/etc/localtime",
    "/etc/ld.so.cache",
)
NOBODY = 65534


class BwrapUnavailableError(RuntimeError):
    """bubblewrap is not installed or cannot create namespaces here."""


@dataclass(frozen=True)
class HostFs:
    """The few host facts a plan depends on, injectable so plans can be unit-tested."""

    exists: Callable[[str], bool] = os.path.exists
    islink: Callable[[str], bool] = os.path.islink
    readlink: Callable[[str], str] = os.readlink


def _covered(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


class BwrapSandbox:
    name = "bwrap"

    def __init__(
        self, bwrap: str = "bwrap", *, as_root: bool | None = None, host: HostFs | None = None
    ) -> None:
        self.bwrap = bwrap
        self.as_root = os.geteuid() == 0 if as_root is None else as_root
        self.host = host or HostFs()

    def workspace_inside(self, spec: SandboxSpec) -> str:
        return WORKSPACE

    def plan(self, spec: SandboxSpec) -> LaunchPlan:
        host = self.host
        argv: list[str] = [self.bwrap]
        bound: list[str] = []
        for directory in SYSTEM_DIRS:
            if host.islink(directory):
                argv += ["--symlink", host.readlink(directory), directory]
            elif host.exists(directory):
                argv += ["--ro-bind", directory, directory]
                bound.append(directory)
        for path in ETC_PATHS:
            if host.exists(path):
                argv += ["--ro-bind", path, path]
        argv += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
        extra: list[str] = []
        for normalized in sorted({os.path.normpath(p) for p in spec.read_only_paths}, key=len):
            if _covered(normalized, (*bound, *extra)) or not host.exists(normalized):
                continue
            extra.append(normalized)
            argv += ["--ro-bind", normalized, normalized]
        argv += ["--bind", spec.workspace, WORKSPACE, "--chdir", WORKSPACE, "--remount-ro", "/"]
        argv += ["--unshare-all"]
        if spec.network == "host":
            argv += ["--share-net"]
        if self.as_root:
            argv += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY), "--cap-drop", "ALL"]
        argv += ["--die-with-parent", "--new-session", "--", *spec.argv]
        return LaunchPlan(argv=argv, env=spec.env, cwd=spec.workspace, pass_fds=spec.pass_fds)


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def probe(bwrap: str | None = None) -> str | None:
    """Why bwrap cannot sandbox here (``None`` when it can): missing, or user namespaces unavailable."""
    path = bwrap or bwrap_path()
    if path is None:
        return "Bubblewrap (bwrap) not found. Install bubblewrap or choose the process sandbox explicitly"
    try:
        done = subprocess.run(
            [path, "--ro-bind", "/", "/", "true"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap does not run: {exc}"
    if done.returncode != 0:
        return f"bwrap cannot create namespaces: {done.stderr.decode(errors='replace').strip()}"
    return None


__all__ = ["WORKSPACE", "BwrapSandbox", "BwrapUnavailableError", "HostFs", "bwrap_path", "probe"]
