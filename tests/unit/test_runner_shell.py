"""The process side of ``ctx.sh``: streaming, exit codes, timeout and cancellation kill the whole group."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from kici.services.runner.cancel import CancelToken, JobControl, group_alive
from kici.services.runner.shell import ProcessTracker, ShellTimeoutError, run_process

pytestmark = pytest.mark.feature("SDK-33", "EXE-13")


def running(pid: int) -> bool:
    """Alive and not a zombie (a container's PID 1 may never reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def _wait_gone(pid: int) -> bool:
    for _ in range(250):
        if not running(pid):
            return True
        threading.Event().wait(0.02)
    return False


def _run(argv: list[str], token: CancelToken | None = None, timeout: float | None = None, **kw: object):
    lines: list[str] = []
    result = run_process(
        argv,
        cwd=os.getcwd(),
        env={"PATH": os.environ["PATH"]},
        input=kw.get("input"),  # type: ignore[arg-type]
        timeout_s=timeout,
        on_line=lines.append,
        token=token or CancelToken(0.2),
        tracker=ProcessTracker(),
    )
    return result, lines


def test_streams_both_streams_and_captures_them() -> None:
    result, lines = _run(["bash", "-c", "echo out; echo err >&2; printf 'no newline'"])
    assert result.exit_code == 0
    assert result.stdout == "out\nno newline"
    assert result.stderr == "err\n"
    assert sorted(lines) == ["err", "no newline", "out"]


def test_input_is_fed_to_stdin() -> None:
    result, _ = _run(["cat"], input="hello")
    assert result.stdout == "hello"


def test_death_by_signal_is_128_plus_n() -> None:
    result, _ = _run(["bash", "-c", "kill -9 $$"])
    assert result.exit_code == 137


def test_timeout_kills_the_whole_group_even_when_term_is_ignored(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"trap '' TERM; sleep 30 & echo $! > {pidfile}; wait"
    with pytest.raises(ShellTimeoutError) as caught:
        _run(["bash", "-c", script], timeout=0.3)
    assert caught.value.result.exit_code == 137
    assert _wait_gone(int(pidfile.read_text()))


def test_cancel_terminates_the_group_with_term_first(tmp_path: Path) -> None:
    token = CancelToken(5.0)
    marker = tmp_path / "got-term"
    script = f"trap 'echo term > {marker}; exit 143' TERM; echo started; sleep 30 & wait"
    started = threading.Event()
    box: dict[str, object] = {}

    def target() -> None:
        box["result"] = run_process(
            ["bash", "-c", script],
            cwd=str(tmp_path),
            env={"PATH": os.environ["PATH"]},
            input=None,
            timeout_s=None,
            on_line=lambda line: started.set() if line == "started" else None,
            token=token,
            tracker=ProcessTracker(),
        )

    thread = threading.Thread(target=target)
    thread.start()
    assert started.wait(10)
    token.cancel("stop")
    thread.join(10)
    assert not thread.is_alive()
    assert marker.read_text() == "term\n"


def test_job_control_abort_cancels_loop_units_only() -> None:
    control = JobControl(0.1)
    step = control.new_token(loop_unit=True)
    hook = control.new_token(loop_unit=False)
    control.abort(force=False, reason="stop")
    control.abort(force=False, reason="again")
    assert step.cancelled
    assert not hook.cancelled
    assert control.reason == "stop"
    late = control.new_token(loop_unit=True)
    assert late.cancelled
    forced: list[str] = []
    control.on_force = forced.append
    control.abort(force=True)
    assert hook.cancelled
    assert hook.force
    assert forced == ["stop"]


def test_tracker_kills_leftover_background_groups() -> None:
    tracker = ProcessTracker()
    result = run_process(
        ["bash", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"],
        cwd=os.getcwd(),
        env={"PATH": os.environ["PATH"]},
        input=None,
        timeout_s=None,
        on_line=None,
        token=CancelToken(0.1),
        tracker=tracker,
    )
    pid = int(result.stdout)
    assert running(pid)
    assert group_alive(os.getpgid(pid))
    tracker.kill_all(9)
    assert _wait_gone(pid)
