"""Log capture (EXE-10): lines routed by the current step index, masked, capped per step."""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
from typing import Any

import pytest

from kici.sdk.masking import Masker
from kici.services.runner.capture import Capture, LogRouter, RoutingStream, current_step_index

pytestmark = pytest.mark.feature("EXE-10")


def router(cap: int = 1024, secrets: tuple[str, ...] = ()) -> tuple[LogRouter, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    return LogRouter(sent.append, Masker(secrets), cap_bytes=cap), sent


def test_lines_follow_the_step_index_of_the_writing_context() -> None:
    log, sent = router()
    stream = RoutingStream(log, "stdout")

    def write(index: int, text: str) -> None:
        current_step_index.set(index)
        stream.write(text)
        stream.flush_index(index)

    threads = [
        threading.Thread(target=contextvars.copy_context().run, args=(write, i, f"from {i}\npartial {i}"))
        for i in (1, 2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stream.write("prepare\n")
    by_index: dict[int, list[str]] = {}
    for message in sent:
        by_index.setdefault(message["stepIndex"], []).append(message["line"])
    assert by_index == {1: ["from 1", "partial 1"], 2: ["from 2", "partial 2"], -1: ["prepare"]}


def test_each_step_is_capped_with_one_marker() -> None:
    log, sent = router(cap=20)
    for _ in range(5):
        log.emit(3, "0123456789")
    log.emit(4, "other step")
    assert [m["line"] for m in sent if m["stepIndex"] == 3] == [
        "0123456789",
        "[TRUNCATED: log output exceeded 20 bytes]",
    ]
    assert [m["line"] for m in sent if m["stepIndex"] == 4] == ["other step"]


def test_capture_installs_print_stderr_and_logging_and_masks() -> None:
    log, sent = router(secrets=("hunter22",))
    capture = Capture(log)
    capture.install()
    token = current_step_index.set(7)
    try:
        print("print hunter22")
        sys.stderr.write("stderr line\n")
        logging.getLogger("user").info("info via logging")
    finally:
        capture.uninstall()
        current_step_index.reset(token)
    assert [(m["stepIndex"], m["line"]) for m in sent] == [
        (7, "print ***"),
        (7, "stderr line"),
        (7, "[INFO] user: info via logging"),
    ]
