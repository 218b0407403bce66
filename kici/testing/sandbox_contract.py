"""The conformance suite of the ``Sandbox`` port (ISO-01): every adapter must pass it.

Use it by subclassing in ``tests/contract``::

    class TestProcessSandbox(SandboxContract):
        @pytest.fixture
        def sandbox(self) -> Sandbox:
            return ProcessSandbox()

The suite launches real processes from the adapter's ``LaunchPlan`` exactly as ``runner_client`` does (new
session, only ``pass_fds`` inherited) and checks what any sandbox must guarantee: the command runs with
the workspace as its writable cwd, sees exactly the environment it was given (bwrap adds ``PWD``, always
equal to the cwd), gets the IPC fd, reports its exit code, and dies with its process group.
``IsolatingSandboxContract`` adds what only a real sandbox guarantees (bwrap): files outside the
workspace are invisible, writes outside it fail, the network is isolated, host PIDs are hidden.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from kici.domain.ports import NetworkMode, Sandbox, SandboxSpec
from kici.domain.sandbox_env import sandbox_env

_TIMEOUT_S = 20.0


def python_paths() -> tuple[str, ...]:
    """What a Python child needs read-only inside a sandbox."""
    paths = {sys.base_prefix, sys.prefix, str(Path(sys.executable).resolve().parent)}
    return tuple(sorted(paths))


def launch(
    sandbox: Sandbox,
    workspace: Path,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    network: NetworkMode = "isolated",
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[str]:
    spec = SandboxSpec(
        workspace=str(workspace),
        argv=tuple(argv),
        env=dict(env) if env is not None else sandbox_env(os.environ),
        read_only_paths=python_paths(),
        network=network,
        pass_fds=tuple(pass_fds),
    )
    plan = sandbox.plan(spec)
    return subprocess.Popen(
        list(plan.argv),
        env=dict(plan.env),
        cwd=plan.cwd,
        pass_fds=plan.pass_fds,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(
    sandbox: Sandbox, workspace: Path, argv: Sequence[str], **kwargs: object
) -> subprocess.CompletedProcess[str]:
    proc = launch(sandbox, workspace, argv, **kwargs)  # type: ignore[arg-type]
    try:
        stdout, stderr = proc.communicate(timeout=_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _processes_with_arg(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline.split(b"\0"):
            found.append(int(entry.name))
    return found


def _wait_until(predicate: object, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


@pytest.mark.feature("ISO-01")
class SandboxContract:
    @pytest.fixture
    def sandbox(self) -> Sandbox:
        raise NotImplementedError("subclasses provide the adapter under test")

    @pytest.fixture
    def workspace(self, tmp_path: Path) -> Path:
        directory = tmp_path / "ws"
        directory.mkdir()
        return directory

    def test_runs_a_command_and_reports_its_exit_code(self, sandbox: Sandbox, workspace: Path) -> None:
        assert run(sandbox, workspace, ["sh", "-c", "echo hello"]).stdout == "hello\n"
        assert run(sandbox, workspace, ["sh", "-c", "exit 7"]).returncode == 7

    def test_cwd_is_the_workspace_and_it_is_writable(self, sandbox: Sandbox, workspace: Path) -> None:
        inside = sandbox.workspace_inside(SandboxSpec(workspace=str(workspace), argv=("true",)))
        done = run(
            sandbox, workspace, ["sh", "-c", "pwd; echo written > out.txt; mkdir -p d && echo x > d/f"]
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == inside
        assert (workspace / "out.txt").read_text() == "written\n"
        assert (workspace / "d" / "f").read_text() == "x\n"

    def test_env_is_exactly_the_given_env(
        self, sandbox: Sandbox, workspace: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KICI_AGENT_TOKEN", "kat_parent_secret")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "parent-aws")
        given = {"PATH": "/usr/bin:/bin", "ONLY_THIS": "yes", "WITH_EQ": "a=b"}
        done = run(sandbox, workspace, ["env", "-0"], env=given)
        seen = dict(item.split("=", 1) for item in done.stdout.split("\0") if item)
        pwd = seen.pop("PWD", None)
        assert seen == given
        inside = sandbox.workspace_inside(SandboxSpec(workspace=str(workspace), argv=("true",)))
        assert pwd in (None, inside)

    @pytest.mark.feature("ISO-04")
    def test_allowlisted_env_drops_parent_credentials(
        self, sandbox: Sandbox, workspace: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KICI_AGENT_TOKEN", "kat_parent_secret")
        monkeypatch.setenv("KICI_DATABASE_URL", "postgres://secret")
        done = run(sandbox, workspace, ["env"])
        assert "KICI_AGENT_TOKEN" not in done.stdout
        assert "KICI_DATABASE_URL" not in done.stdout
        assert "FORCE_COLOR=1" in done.stdout

    def test_passes_the_ipc_fd(self, sandbox: Sandbox, workspace: Path) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with parent, child:
            fd = child.fileno()
            code = "import os, sys; fd = int(sys.argv[1]); os.write(fd, b'ping:' + os.read(fd, 4))"
            proc = launch(sandbox, workspace, [sys.executable, "-I", "-c", code, str(fd)], pass_fds=[fd])
            child.close()
            parent.sendall(b"pong")
            parent.settimeout(_TIMEOUT_S)
            received = parent.recv(64)
            proc.communicate(timeout=_TIMEOUT_S)
        assert received == b"ping:pong"
        assert proc.returncode == 0

    def test_killing_the_process_group_kills_the_child(self, sandbox: Sandbox, workspace: Path) -> None:
        marker = f"3600.{uuid.uuid4().int % 10**9}"
        proc = launch(sandbox, workspace, ["sh", "-c", f"sleep {marker} & echo up; wait"])
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "up\n"
            assert _wait_until(lambda: _processes_with_arg(marker))
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=_TIMEOUT_S)
            assert _wait_until(lambda: not _processes_with_arg(marker))
        finally:
            for pid in _processes_with_arg(marker):
                os.kill(pid, signal.SIGKILL)
            proc.stdout.close() if proc.stdout else None
            proc.stderr.close() if proc.stderr else None


@contextlib.contextmanager
def loopback_server() -> Iterator[int]:
    """A TCP server on the host's loopback that answers ``ok`` to every connection."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"ok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        server.close()


_CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=3)\n"
    "    print(s.recv(2).decode())\n"
    "except OSError as exc:\n"
    "    print('refused', type(exc).__name__)\n"
)


@pytest.mark.feature("ISO-07")
class IsolatingSandboxContract(SandboxContract):
    """What a real sandbox adds on top of the basic contract (bwrap; later container, firecracker)."""

    @pytest.fixture
    def outside_files(self) -> Iterator[list[Path]]:
        token = uuid.uuid4().hex
        paths = [Path.home() / f".kici-test-secret-{token}", Path(f"/etc/kici-test-secret-{token}")]
        created = []
        for path in paths:
            try:
                path.write_text("top secret\n")
            except OSError:
                continue
            created.append(path)
        if not created:
            pytest.skip("cannot create a file outside the workspace")
        yield created
        for path in created:
            path.unlink(missing_ok=True)

    @pytest.fixture
    def server_port(self) -> Iterator[int]:
        with loopback_server() as port:
            yield port

    def test_files_outside_the_workspace_are_unreadable(
        self, sandbox: Sandbox, workspace: Path, outside_files: list[Path]
    ) -> None:
        for path in outside_files:
            done = run(sandbox, workspace, ["cat", str(path)])
            assert done.returncode != 0
            assert "top secret" not in done.stdout

    def test_writes_outside_the_workspace_fail(self, sandbox: Sandbox, workspace: Path) -> None:
        token = uuid.uuid4().hex
        targets = [
            f"/kici-{token}",
            f"/usr/kici-{token}",
            f"/etc/kici-{token}",
            str(Path.home() / f"kici-{token}"),
        ]
        script = "; ".join(f"(echo x > {t}) 2>/dev/null && echo WROTE {t}" for t in targets)
        done = run(sandbox, workspace, ["sh", "-c", script + "; echo x > /tmp/ok && echo tmp-ok"])
        assert "WROTE" not in done.stdout
        assert "tmp-ok" in done.stdout
        for target in targets:
            assert not Path(target).exists()

    def test_network_is_isolated(self, sandbox: Sandbox, workspace: Path, server_port: int) -> None:
        done = run(sandbox, workspace, [sys.executable, "-I", "-c", _CONNECT, str(server_port)])
        assert done.stdout.startswith("refused"), done.stdout + done.stderr

    def test_host_network_when_asked(self, sandbox: Sandbox, workspace: Path, server_port: int) -> None:
        argv = [sys.executable, "-I", "-c", _CONNECT, str(server_port)]
        done = run(sandbox, workspace, argv, network="host")
        assert done.stdout.strip() == "ok", done.stdout + done.stderr

    def test_host_processes_are_invisible(self, sandbox: Sandbox, workspace: Path) -> None:
        done = run(sandbox, workspace, ["sh", "-c", "ls /proc | grep -c '^[0-9]'"])
        assert int(done.stdout.strip()) < 10
        own = run(
            sandbox,
            workspace,
            ["sh", "-c", f"test -e /proc/{os.getpid()}/cmdline && cat /proc/{os.getpid()}/cmdline"],
        )
        assert "pytest" not in own.stdout

    def test_not_root_inside(self, sandbox: Sandbox, workspace: Path) -> None:
        done = run(sandbox, workspace, ["id", "-u"])
        if os.geteuid() == 0:
            assert done.stdout.strip() != "0"
        else:
            assert done.stdout.strip() == str(os.geteuid())


__all__ = ["IsolatingSandboxContract", "SandboxContract", "launch", "python_paths", "run"]
