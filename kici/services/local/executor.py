"""Runs one local job in a sandboxed runner process through ``runner_client`` (D6, D7, D9).

This is the composition root of ``kici run local``'s sandbox choice: the default is bubblewrap
when it is installed and usable, otherwise the user must say ``--sandbox none`` to run steps
unisolated; nothing falls back silently (ISO-06).

Choices where the spec is silent:

* Local runs use the host network (a step installing dependencies should work like in the
  developer's shell); the filesystem stays confined.
* Under bwrap ``HOME`` and ``TMPDIR`` point at the sandbox's private ``/tmp``: the host's home is
  not visible inside, and tools that write to ``$HOME`` would otherwise fail.
* The runner's own stdout (output that bypassed the step capture, e.g. ``os.write(1, ...)``) is
  shown as a log line, masked like every other line; its stderr is kept for crash reports only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import attrs

from kici.adapters.sandbox.bwrap import BwrapSandbox, bwrap_path, probe
from kici.adapters.sandbox.process import ProcessSandbox
from kici.domain.ports import NetworkMode, Sandbox, SandboxSpec
from kici.domain.runner_ipc import ExecuteRequest, JobComplete, LogLine, StepComplete, StepStart
from kici.domain.sandbox_env import sandbox_env
from kici.services.local.engine import JobControl, JobEvents
from kici.services.runner_client import RunnerCallbacks, RunnerStartError, open_runner

PREPARE_STEP_INDEX = -1


class SandboxChoiceError(RuntimeError):
    """The requested (or default) sandbox cannot be used here."""


def choose_sandbox(name: str | None) -> Sandbox:
    """``bwrap`` (also the default) or ``none``; a missing or broken bwrap is an error, never a fallback."""
    if name == "none":
        return ProcessSandbox()
    path = bwrap_path()
    if path is None:
        raise SandboxChoiceError(
            "bubblewrap (bwrap) is not installed. Install it (e.g. `apt-get install bubblewrap`) "
            "or pass `--sandbox none` to run steps without isolation."
        )
    problem = probe(path)
    if problem is not None:
        raise SandboxChoiceError(
            f"{problem}. Fix it or pass `--sandbox none` to run steps without isolation."
        )
    return BwrapSandbox(path)


@attrs.frozen
class RunnerExecutor:
    """A :class:`~kici.services.local.engine.JobExecutor` over a real runner subprocess."""

    sandbox: Sandbox
    repo_root: Path
    network: NetworkMode = "host"
    host_env: Mapping[str, str] = attrs.field(factory=lambda: dict(os.environ))

    def environment(self) -> dict[str, str]:
        extra = {"HOME": "/tmp", "TMPDIR": "/tmp"} if self.sandbox.name == "bwrap" else {}
        return sandbox_env(self.host_env, extra)

    async def execute(
        self, request: ExecuteRequest, workspace: Path, events: JobEvents, control: JobControl
    ) -> JobComplete:
        inside = self.sandbox.workspace_inside(SandboxSpec(workspace=str(workspace), argv=("runner",)))

        async def on_step_start(message: StepStart) -> None:
            events.step_started(message)

        async def on_log_line(message: LogLine) -> None:
            events.log_line(message.step_index, message.line)

        async def on_step_complete(message: StepComplete) -> None:
            events.step_finished(message)

        async def on_output(stream: str, line: str) -> None:
            if stream == "stdout" and line.strip():
                events.log_line(PREPARE_STEP_INDEX, line)

        callbacks = RunnerCallbacks(
            on_step_start=on_step_start,
            on_log_line=on_log_line,
            on_step_complete=on_step_complete,
            on_output=on_output,
        )
        try:
            async with open_runner(
                self.sandbox,
                workspace=str(workspace),
                env=self.environment(),
                callbacks=callbacks,
                network=self.network,
            ) as client:

                async def abort(force: bool) -> None:
                    reason = "forced cancel (Ctrl-C twice)" if force else "cancelled (Ctrl-C)"
                    await client.abort(force=force, reason=reason)

                control.on_abort(abort)
                if control.requested is not None:
                    await abort(control.requested)
                return await client.execute(attrs.evolve(request, workspace=inside))
        except RunnerStartError as exc:
            error = f"the workflow runner did not start: {exc}"
            if control.requested is not None:
                return JobComplete(status="cancelled", error=error)
            return JobComplete(status="failed", error=error)
