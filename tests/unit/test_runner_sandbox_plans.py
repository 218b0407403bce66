"""Sandbox launch plans (ISO-06, ISO-07) and the env allowlist (ISO-04), without spawning anything."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.adapters.sandbox.bwrap import BwrapSandbox, HostFs
from kici.adapters.sandbox.process import ProcessSandbox
from kici.domain.ports import InvalidSandboxSpecError, SandboxSpec
from kici.domain.sandbox_env import ALLOWED_HOST_VARS, sandbox_env

HOST = HostFs(
    exists=lambda p: (
        p in {"/usr", "/bin", "/etc/ssl", "/opt/py", "/opt/py/bin", "/venv", "/ws", "/usr/lib/python3"}
    ),
    islink=lambda p: p == "/bin",
    readlink=lambda p: "usr/bin",
)


def spec(**kwargs: object) -> SandboxSpec:
    base: dict[str, object] = {"workspace": "/ws", "argv": ("python", "-m", "x"), "env": {"A": "1"}}
    base.update(kwargs)
    return SandboxSpec(**base)  # type: ignore[arg-type]


def _pairs(argv: tuple[str, ...], flag: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == flag]


@pytest.mark.feature("ISO-07")
def test_bwrap_plan_binds_only_what_it_must() -> None:
    plan = BwrapSandbox("bwrap", as_root=True, host=HOST).plan(
        spec(
            read_only_paths=("/opt/py/bin", "/opt/py", "/usr/lib/python3", "/venv", "/missing"), pass_fds=(5,)
        )
    )
    argv = plan.argv
    assert argv[0] == "bwrap"
    assert argv[-4:] == ("--", "python", "-m", "x")
    binds = _pairs(argv, "--ro-bind")
    assert ("/", "/") not in binds
    assert binds[:2] == [("/usr", "/usr"), ("/etc/ssl", "/etc/ssl")]
    assert sorted(binds[2:]) == [("/opt/py", "/opt/py"), ("/venv", "/venv")]
    assert _pairs(argv, "--symlink") == [("usr/bin", "/bin")]
    assert _pairs(argv, "--bind") == [("/ws", "/workspace")]
    for flag in ("--unshare-all", "--die-with-parent", "--new-session", "--cap-drop"):
        assert flag in argv
    assert "--share-net" not in argv
    assert argv[argv.index("--uid") + 1] == "65534"
    assert argv.index("--remount-ro") > argv.index("--bind")
    assert (plan.env, plan.cwd, plan.pass_fds) == ({"A": "1"}, "/ws", (5,))


@pytest.mark.feature("ISO-07")
def test_bwrap_plan_for_host_network_and_non_root() -> None:
    argv = BwrapSandbox("/usr/bin/bwrap", as_root=False, host=HOST).plan(spec(network="host")).argv
    assert "--share-net" in argv
    assert "--uid" not in argv
    assert "--cap-drop" not in argv
    assert BwrapSandbox(host=HOST).workspace_inside(spec()) == "/workspace"


@pytest.mark.feature("ISO-06")
def test_process_plan_is_the_spec_itself() -> None:
    plan = ProcessSandbox().plan(spec(pass_fds=(7,)))
    assert (plan.argv, plan.env, plan.cwd, plan.pass_fds) == (("python", "-m", "x"), {"A": "1"}, "/ws", (7,))
    assert ProcessSandbox().workspace_inside(spec()) == "/ws"


@pytest.mark.feature("ISO-01")
@pytest.mark.parametrize(
    "kwargs",
    [{"argv": ()}, {"workspace": "relative"}, {"network": "bridge"}, {"pass_fds": (1,)}, {"argv": "python"}],
)
def test_invalid_specs_are_typed_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidSandboxSpecError):
        spec(**kwargs)


@pytest.mark.feature("ISO-04")
def test_allowlist_drops_credentials_and_adds_defaults() -> None:
    host = {
        "PATH": "/bin",
        "HOME": "/root",
        "KICI_AGENT_TOKEN": "kat_x",
        "KICI_ORCHESTRATOR_URL": "wss://x",
        "AWS_SECRET_ACCESS_KEY": "a",
        "PYTHONPATH": "/evil",
        "VIRTUAL_ENV": "/venv",
        "WEBHOOK_SECRET": "w",
        "path": "lower-case is not PATH",
    }
    assert sandbox_env(host) == {"PATH": "/bin", "HOME": "/root", "FORCE_COLOR": "1"}
    assert sandbox_env(host, {"FORCE_COLOR": "0", "KICI_RUN_ID": "r"}) == {
        "PATH": "/bin",
        "HOME": "/root",
        "FORCE_COLOR": "0",
        "KICI_RUN_ID": "r",
    }


@pytest.mark.feature("ISO-04")
@given(st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=5), max_size=8))
def test_allowlist_output_keys_are_allowlisted_or_defaults(host: dict[str, str]) -> None:
    env = sandbox_env(host)
    assert set(env) <= set(ALLOWED_HOST_VARS) | {"FORCE_COLOR"}
    assert all(env[k] == host[k] for k in env if k != "FORCE_COLOR")
