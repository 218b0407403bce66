"""The environment a sandboxed runner starts with (ISO-04; layers 1-2 of ENV-09).

Built from an empty dict: only the allowlisted host variables are copied, then the sandbox defaults, then
the caller's ``extra`` (dispatch ``env``, job env, ...). Anything else on the host — agent tokens,
``KICI_*`` credentials, ``AWS_*``, ``PYTHONPATH``, ``VIRTUAL_ENV`` — never reaches user code, because a
denylist would miss the next credential someone adds to the agent's environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

ALLOWED_HOST_VARS: Final[tuple[str, ...]] = (
    "PATH",
    "HOME",
    "USER",
    "SHELL",
    "LANG",
    "LC_ALL",
    "TERM",
    "TMPDIR",
    "NODE_PATH",
    "TZ",
    "PATHEXT",
    "SystemRoot",
    "windir",
    "COMSPEC",
    "TEMP",
    "TMP",
    "USERPROFILE",
    "LOCALAPPDATA",
    "APPDATA",
    "PROCESSOR_ARCHITECTURE",
    "NUMBER_OF_PROCESSORS",
)

SANDBOX_DEFAULTS: Final[Mapping[str, str]] = {"FORCE_COLOR": "1"}


def allowlisted(host_env: Mapping[str, str]) -> dict[str, str]:
    """Layer 1: the allowlisted subset of ``host_env`` (exact, case-sensitive names)."""
    return {name: host_env[name] for name in ALLOWED_HOST_VARS if name in host_env}


def sandbox_env(host_env: Mapping[str, str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Allowlisted host vars < ``FORCE_COLOR=1`` < ``extra`` (later wins).

    ``extra`` is trusted caller input (the orchestrator's ``KICI_*`` metadata, environment variables, job
    env), so it may set any name, including ``KICI_*`` keys that the host allowlist drops.
    """
    env = allowlisted(host_env)
    env.update(SANDBOX_DEFAULTS)
    if extra:
        env.update({str(k): str(v) for k, v in extra.items()})
    return env


__all__ = ["ALLOWED_HOST_VARS", "SANDBOX_DEFAULTS", "allowlisted", "sandbox_env"]
