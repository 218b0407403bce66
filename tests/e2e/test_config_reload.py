"""SIGHUP hot reload with real signals: to the test process itself and to a small child process.

Nothing here asserts on elapsed time: the tests wait for reload results (bounded by generous
``fail_after`` guards) and check what was applied, what was held back and what was rejected.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio

from kici.services.config_reload import (
    DEBOUNCE_SECONDS,
    ConfigHolder,
    ConfigReloader,
    load_orchestrator,
    reload_on_sighup,
    threaded,
)

pytestmark = [pytest.mark.e2e, pytest.mark.feature("OPS-03", "CFG-07", "CFG-08")]

BASE = "instance:\n  mode: independent\nserver:\n  port: 4100\nqueue:\n  maxDepth: 10\n"
GUARD = 20
REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


async def test_sighup_to_this_process_reloads_debounces_and_rejects(tmp_path: Path) -> None:
    path = tmp_path / "orchestrator.yaml"
    write(path, BASE)
    env = {"KICI_CONFIG": str(path)}
    holder = ConfigHolder(load_orchestrator(environ=env).config)
    reloader = ConfigReloader(holder, threaded(lambda: load_orchestrator(environ=env)))
    async with trio.open_nursery() as nursery:
        await nursery.start(reloader.run)
        await nursery.start(reload_on_sighup, reloader)

        write(path, BASE.replace("maxDepth: 10", "maxDepth: 20").replace("4100", "4200"))
        os.kill(os.getpid(), signal.SIGHUP)
        with trio.fail_after(GUARD):
            first = await reloader.wait_for_reloads(1)
        assert first is not None
        assert first.success
        assert first.restart_required == ("server.port",)
        assert (holder.current.queue.max_depth, holder.current.server.port) == (20, 4100)

        write(path, BASE.replace("maxDepth: 10", "maxDepth: 30"))
        for _ in range(5):
            os.kill(os.getpid(), signal.SIGHUP)
        with trio.fail_after(GUARD):
            second = await reloader.wait_for_reloads(2)
        await trio.sleep(DEBOUNCE_SECONDS * 3)
        assert second is not None
        assert second.success
        assert reloader.completed == 2
        assert holder.current.queue.max_depth == 30

        current = holder.current
        write(path, BASE.replace("maxDepth: 10", "maxDepth: -1"))
        os.kill(os.getpid(), signal.SIGHUP)
        with trio.fail_after(GUARD):
            third = await reloader.wait_for_reloads(3)
        assert third is not None
        assert not third.success
        assert "queue.maxDepth: expected a number of at least 1, got -1" in third.errors[0]
        assert holder.current is current
        nursery.cancel_scope.cancel()
    assert reloader.counts["sighup", "success"] == 2
    assert reloader.counts["sighup", "failed"] == 1


CHILD = textwrap.dedent(
    """
    import itertools, json, trio
    from kici.services.config_reload import (
        ConfigHolder, ConfigReloader, load_orchestrator, reload_on_sighup, threaded,
    )

    async def main():
        holder = ConfigHolder(load_orchestrator().config)
        reloader = ConfigReloader(holder, threaded(load_orchestrator))
        async with trio.open_nursery() as nursery:
            await nursery.start(reloader.run)
            await nursery.start(reload_on_sighup, reloader)
            print("RESULT " + json.dumps({"ready": True}), flush=True)
            for count in itertools.count(1):
                result = await reloader.wait_for_reloads(count)
                config = holder.current
                line = {"success": result.success, "maxDepth": config.queue.max_depth,
                        "port": config.server.port, "errors": list(result.errors)}
                print("RESULT " + json.dumps(line), flush=True)

    trio.run(main)
    """
)


class Lines:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def result(self) -> dict[str, Any]:
        while True:
            line, sep, rest = self.buffer.partition(b"\n")
            if sep:
                self.buffer = rest
                if line.startswith(b"RESULT "):
                    return dict(json.loads(line[len(b"RESULT ") :]))
                continue
            chunk = await self.stream.receive_some()
            if not chunk:
                raise EOFError("the child exited")
            self.buffer += chunk


async def test_sighup_to_a_child_process(tmp_path: Path) -> None:
    path = tmp_path / "orchestrator.yaml"
    write(path, BASE)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "KICI_CONFIG": str(path)}
    env["PYTHONPATH"] = str(REPO)
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", CHILD], stdout=-1, env=env, cwd=str(REPO)
    )
    try:
        assert process.stdout is not None
        lines = Lines(process.stdout)
        with trio.fail_after(GUARD):
            assert await lines.result() == {"ready": True}
        write(path, BASE.replace("maxDepth: 10", "maxDepth: 50"))
        process.send_signal(signal.SIGHUP)
        with trio.fail_after(GUARD):
            applied = await lines.result()
        assert applied == {"success": True, "maxDepth": 50, "port": 4100, "errors": []}
        write(path, BASE + "sever: {}\n")
        process.send_signal(signal.SIGHUP)
        with trio.fail_after(GUARD):
            rejected = await lines.result()
        assert rejected["success"] is False
        assert rejected["maxDepth"] == 50
        assert rejected["errors"] == [f"{path}:7 sever: unknown key. Did you mean server?"]
        assert process.poll() is None
    finally:
        process.kill()
        await process.wait()
