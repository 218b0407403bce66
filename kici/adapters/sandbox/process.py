"""The plain-process "sandbox" (ISO-06): no isolation beyond a clean environment and an own session.

Only credential isolation: the command sees exactly the allowlisted env it is given, runs in its own
session (so the whole process group can be killed) with the workspace as cwd — but it can read and write
whatever the agent's user can. It must therefore be chosen explicitly (``--sandbox none``); nothing picks
it by default.
"""

from __future__ import annotations

from kici.domain.ports import LaunchPlan, SandboxSpec


class ProcessSandbox:
    name = "process"

    def workspace_inside(self, spec: SandboxSpec) -> str:
        return spec.workspace

    def plan(self, spec: SandboxSpec) -> LaunchPlan:
        return LaunchPlan(argv=spec.argv, env=spec.env, cwd=spec.workspace, pass_fds=spec.pass_fds)


__all__ = ["ProcessSandbox"]
