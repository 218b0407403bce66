"""D1: ``kici.sdk`` and the sandboxed runner import only the standard library.

A fresh interpreter imports the SDK and every runner module (the entry point imports the executor lazily,
after ``ready``, so it is imported here explicitly) and reports which heavy packages got loaded. User
``async def`` steps are the documented exception: trio is imported only when one runs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

BANNED = ("attrs", "cattrs", "trio", "structlog", "wcmatch", "croniter", "kici.domain", "click", "rich")
RUNNER_MODULES = (
    "kici.sdk",
    "kici.sdk.masking",
    "kici.sdk.discovery",
    "kici.services.runner.__main__",
    "kici.services.runner.executor",
    "kici.services.runner.steps",
    "kici.services.runner.units",
    "kici.services.runner.loader",
    "kici.services.runner.hooks",
)

_PROBE = """
import importlib, json, sys
for name in {modules!r}:
    importlib.import_module(name)
banned = {banned!r}
print(json.dumps(sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in banned))))
"""


@pytest.mark.feature("SDK-04", "ISO-06")
def test_sdk_and_runner_import_only_the_standard_library() -> None:
    code = _PROBE.format(modules=RUNNER_MODULES, banned=BANNED)
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == []


@pytest.mark.feature("SDK-04")
def test_runner_entry_point_defers_the_sdk_until_after_ready() -> None:
    code = "import sys, kici.services.runner.__main__; print('kici.sdk.jobs' in sys.modules)"
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
