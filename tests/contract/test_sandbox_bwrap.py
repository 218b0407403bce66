"""The bubblewrap adapter against the Sandbox contract, including the isolation guarantees (ISO-07)."""

from __future__ import annotations

import pytest

from kici.adapters.sandbox.bwrap import BwrapSandbox, probe
from kici.domain.ports import Sandbox
from kici.testing.sandbox_contract import IsolatingSandboxContract

PROBLEM = probe()

pytestmark = pytest.mark.skipif(PROBLEM is not None, reason=f"bwrap unusable here: {PROBLEM}")


class TestBwrapSandbox(IsolatingSandboxContract):
    @pytest.fixture
    def sandbox(self) -> Sandbox:
        return BwrapSandbox()
