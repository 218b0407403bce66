"""The plain-process adapter against the Sandbox contract (ISO-01, ISO-06)."""

from __future__ import annotations

import pytest

from kici.adapters.sandbox.process import ProcessSandbox
from kici.domain.ports import Sandbox
from kici.testing.sandbox_contract import SandboxContract


@pytest.mark.feature("ISO-06")
class TestProcessSandbox(SandboxContract):
    @pytest.fixture
    def sandbox(self) -> Sandbox:
        return ProcessSandbox()
