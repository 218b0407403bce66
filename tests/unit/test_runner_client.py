"""``runner_client`` against scripted fake runners: the ISO-10 abort ladder, crashes, bad frames.

The fake speaks the IPC protocol from a tiny script (installed as the "python" of the launch) and records
what it receives, so the tests can check the exact ladder: ``abort`` -> ``abort{force}`` -> SIGTERM ->
SIGKILL, each step only when the previous one did not end the process.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
import trio

from kici.adapters.sandbox.process import ProcessSandbox
from kici.domain.runner_ipc import EventEmitResponse, ExecuteRequest, JobComplete
from kici.services.runner_client import AbortLadder, RunnerCallbacks, RunnerStartError, open_runner

pytestmark = pytest.mark.feature("ISO-10", "ISO-03")

FAKE = r"""
import json, os, signal, socket, sys, time
mode = os.environ["FAKE_MODE"]
log = open(os.environ["FAKE_LOG"], "a", buffering=1)
fd = int(sys.argv[sys.argv.index("--ipc-fd") + 1])
sock = socket.socket(fileno=fd)
signal.signal(signal.SIGTERM, lambda *a: log.write("SIGTERM\n"))
def send(obj):
    sock.sendall((json.dumps(obj) + "\n").encode())
if mode == "crash":
    sys.stderr.write("boom: cannot start\n"); sys.stderr.flush(); sys.exit(3)
if mode == "silent":
    time.sleep(30)
send({"type": "ready"})
reader = sock.makefile("rb")
for raw in reader:
    msg = json.loads(raw)
    log.write(json.dumps(msg) + "\n")
    if msg["type"] == "execute":
        send({"type": "step.start", "stepIndex": 0, "stepName": "s"})
        if mode == "chatty":
            sock.sendall(b"not json\n")
            send({"type": "mystery"})
            send({"type": "event.emit", "requestId": "r1", "eventName": "e", "payload": {}})
        if mode == "dies":
            sys.stderr.write("segfault-ish\n"); sys.stderr.flush(); os._exit(9)
    if msg["type"] == "event.emit.response":
        send({"type": "job.complete", "status": "success", "stepResults": []})
        sys.exit(0)
"""


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "fake-python"
    script.write_text(f"#!{sys.executable}\n" + FAKE)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "fake.log"
    log.touch()
    return script


def _env(tmp_path: Path, mode: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "FAKE_MODE": mode, "FAKE_LOG": str(tmp_path / "fake.log")}


def _received(tmp_path: Path) -> list[str]:
    """Frame types as received (aborts as ``abort:graceful`` / ``abort:force``), and SIGTERM deliveries."""
    seen = []
    for line in (tmp_path / "fake.log").read_text().splitlines():
        if line == "SIGTERM":
            seen.append(line)
            continue
        message = json.loads(line)
        if message["type"] == "abort":
            seen.append("abort:force" if message.get("force") else "abort:graceful")
        else:
            seen.append(message["type"])
    return seen


REQUEST = ExecuteRequest(workflow_file="x.py", job_name="j", workspace="/")
FAST = AbortLadder(abort_wait_s=0.3, term_wait_s=0.3, graceful_budget_s=0.3)


async def test_graceful_abort_escalates_to_force_then_sigterm_then_sigkill(
    tmp_path: Path, fake: Path
) -> None:
    started = trio.Event()

    async def on_start(_: object) -> None:
        started.set()

    callbacks = RunnerCallbacks(on_step_start=on_start)
    with trio.fail_after(20):
        async with (
            open_runner(
                ProcessSandbox(),
                workspace=str(tmp_path),
                env=_env(tmp_path, "stubborn"),
                python=str(fake),
                read_only_paths=(),
                callbacks=callbacks,
                ladder=FAST,
            ) as client,
            trio.open_nursery() as nursery,
        ):

            async def run() -> None:
                result.append(await client.execute(REQUEST))

            result: list[JobComplete] = []
            nursery.start_soon(run)
            await started.wait()
            await client.abort(reason="stop")
            await client.abort(reason="again")
    assert result[0].status == "cancelled"
    assert result[0].error is not None
    assert result[0].error.startswith("Workflow runner crashed")
    assert client.process.returncode == -9
    assert _received(tmp_path) == ["execute", "abort:graceful", "abort:force", "SIGTERM"]


async def test_force_abort_skips_the_graceful_budget(tmp_path: Path, fake: Path) -> None:
    ladder = AbortLadder(abort_wait_s=0.3, term_wait_s=0.3, graceful_budget_s=60)
    with trio.fail_after(20):
        async with (
            open_runner(
                ProcessSandbox(),
                workspace=str(tmp_path),
                env=_env(tmp_path, "stubborn"),
                python=str(fake),
                read_only_paths=(),
                ladder=ladder,
            ) as client,
            trio.open_nursery() as nursery,
        ):
            done: list[JobComplete] = []

            async def run() -> None:
                done.append(await client.execute(REQUEST))

            nursery.start_soon(run)
            await trio.sleep(0.2)
            await client.abort()
            await client.abort(force=True)
    assert done[0].status == "cancelled"
    assert _received(tmp_path) == ["execute", "abort:graceful", "abort:force", "SIGTERM"]


async def test_crash_before_ready_is_a_start_error_with_stderr(tmp_path: Path, fake: Path) -> None:
    with trio.fail_after(20), pytest.raises(RunnerStartError, match="boom: cannot start"):
        async with open_runner(
            ProcessSandbox(),
            workspace=str(tmp_path),
            env=_env(tmp_path, "crash"),
            python=str(fake),
            read_only_paths=(),
        ):
            pass


async def test_no_ready_within_the_timeout(tmp_path: Path, fake: Path) -> None:
    with trio.fail_after(20), pytest.raises(RunnerStartError, match=r"did not become ready within 0\.3s"):
        async with open_runner(
            ProcessSandbox(),
            workspace=str(tmp_path),
            env=_env(tmp_path, "silent"),
            python=str(fake),
            read_only_paths=(),
            ready_timeout_s=0.3,
        ):
            pass


async def test_death_without_job_complete_is_a_crash_with_the_stderr_tail(tmp_path: Path, fake: Path) -> None:
    with trio.fail_after(20):
        async with open_runner(
            ProcessSandbox(),
            workspace=str(tmp_path),
            env=_env(tmp_path, "dies"),
            python=str(fake),
            read_only_paths=(),
        ) as client:
            result = await client.execute(REQUEST)
    assert result == JobComplete(status="failed", error="Workflow runner crashed: segfault-ish")


@pytest.mark.feature("ISO-02")
async def test_bad_frames_are_recorded_and_requests_answered(tmp_path: Path, fake: Path) -> None:
    answered: list[object] = []

    async def on_request(message: object) -> None:
        answered.append(message)

    with trio.fail_after(20):
        async with open_runner(
            ProcessSandbox(),
            workspace=str(tmp_path),
            env=_env(tmp_path, "chatty"),
            python=str(fake),
            read_only_paths=(),
            callbacks=RunnerCallbacks(on_request=on_request),
        ) as client:
            result = await client.execute(REQUEST)
    assert result.status == "success"
    assert len(client.protocol_errors) == 2
    assert "unknown message type 'mystery'" in client.protocol_errors[1]
    assert len(answered) == 1
    assert "event.emit.response" in _received(tmp_path)
    assert EventEmitResponse.TYPE == "event.emit.response"
