"""``StepContext`` (00 §1.9) over a fake runtime, the ``ctx.sh`` quoting rule, and the runtime errors."""

from __future__ import annotations

import pickle
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.sdk.context import Matrix, ShellResult, StepContext, build_argv, format_command
from kici.sdk.errors import (
    KiciUsageError,
    SecretNotFoundError,
    ShellError,
    StepCancelled,
)

pytestmark = pytest.mark.feature("SDK-33")


class FakeRuntime:
    def __init__(self, exit_code: int = 0) -> None:
        self.cancelled = False
        self.calls: list[tuple[list[str], str, bool]] = []
        self.lines: list[str] = []
        self.env: dict[str, str] = {"PATH": "/bin"}
        self.accessed: list[str] = []
        self.exit_code = exit_code

    def run_shell(self, argv: Sequence[str], *, display: str, quiet: bool, **_: Any) -> ShellResult:
        self.calls.append((list(argv), display, quiet))
        return ShellResult("out\nlast\n", "err\n", self.exit_code, 5)

    def log(self, text: str) -> None:
        self.lines.append(text)

    def env_snapshot(self) -> Mapping[str, str]:
        return dict(self.env)

    def set_env(self, key: str, value: str) -> None:
        self.env[key] = value

    def add_path(self, directory: str) -> None:
        self.env["PATH"] = directory + ":" + self.env["PATH"]

    def outputs_of(self, step_or_fn: Any) -> Mapping[str, Any]:
        return {}

    def job_outputs(self, job: Any) -> Any:
        return {}

    def set_secret_output(self, key: str, value: str) -> None:
        pass

    def secret_accessed(self, key: str) -> None:
        self.accessed.append(key)

    def emit(self, name: str, payload: Any, target_repos: Sequence[str] | None) -> Any:
        return "delivery"


def make(runtime: FakeRuntime, **kwargs: Any) -> StepContext:
    return StepContext(
        runtime,
        workspace=Path("/ws"),
        workflow_name="ci",
        job_name="build",
        step_name="s",
        secrets={"TOKEN": "abc123", "OTHER": "x"},
        **kwargs,
    )


def test_fmt_placeholders_become_quoted_words() -> None:
    assert format_command("echo {name}", {"name": "it's; rm -rf /"}) == "echo 'it'\"'\"'s; rm -rf /'"
    assert format_command("ls {files}", {"files": ["a b", "c"]}) == "ls 'a b' c"
    assert format_command("echo {{literal}} {x}", {"x": 1}) == "echo {literal} 1"
    assert format_command("echo ${HOME} {x}", {}) == "echo ${HOME} {x}"


def test_bad_placeholders_are_usage_errors() -> None:
    with pytest.raises(KiciUsageError, match="placeholder"):
        format_command("echo {missing}", {"x": 1})
    with pytest.raises(KiciUsageError, match="format specs"):
        format_command("echo {x:>5}", {"x": 1})
    with pytest.raises(KiciUsageError):
        build_argv(["echo", "{x}"], "bash", {"x": 1})
    with pytest.raises(KiciUsageError, match="empty"):
        build_argv([], "bash", {})


@given(st.text(max_size=20), st.lists(st.text(max_size=8), max_size=3))
def test_quoting_survives_the_shell_lexer(value: str, values: list[str]) -> None:
    assert shlex.split(format_command("echo {v}", {"v": value})) == ["echo", value]
    assert shlex.split(format_command("echo {v}", {"v": values})) == ["echo", *values]


def test_string_commands_run_in_strict_bash_and_sequences_exec() -> None:
    assert build_argv("echo hi", "bash", {}) == (["bash", "-c", "set -euo pipefail; echo hi"], "echo hi")
    assert build_argv(("ls", "-l", "a b"), "bash", {}) == (["ls", "-l", "a b"], "ls -l 'a b'")


def test_sh_raises_shell_error_with_the_tail_when_checked() -> None:
    runtime = FakeRuntime(exit_code=2)
    ctx = make(runtime)
    with pytest.raises(ShellError) as caught:
        ctx.sh("false")
    assert caught.value.exit_code == 2
    assert str(caught.value) == "Command failed with exit code 2: false\nout\nlast\nerr"
    assert not ctx.sh("false", check=False).ok


def test_shell_error_keeps_only_the_last_twenty_lines_and_pickles() -> None:
    out = "\n".join(f"line {i}" for i in range(30))
    error = ShellError(["make", "all"], 1, out, "")
    assert str(error).splitlines()[1:] == [f"line {i}" for i in range(10, 30)]
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.cmd, clone.exit_code, str(clone)) == (["make", "all"], 1, str(error))
    assert str(ShellError("sleep 9", 143, timeout_s=0.5)) == "Command timed out after 0.5s: sleep 9"


def test_secrets_api_records_access_and_lists_keys_on_miss() -> None:
    runtime = FakeRuntime()
    ctx = make(runtime)
    assert ctx.secrets.get("TOKEN") == "abc123"
    assert ctx.secrets.has("OTHER")
    assert not ctx.secrets.has("NOPE")
    assert ctx.secrets.list() == ["OTHER", "TOKEN"]
    with pytest.raises(SecretNotFoundError) as caught:
        ctx.secrets.get("NOPE")
    assert str(caught.value) == "Secret 'NOPE' not found. Available secrets: OTHER, TOKEN"
    assert ctx.secrets.expose("TOKEN", "GH_TOKEN") == "abc123"
    assert runtime.env["GH_TOKEN"] == "abc123"
    assert runtime.accessed == ["TOKEN", "TOKEN"]


@pytest.mark.feature("EXE-13")
def test_after_cancel_every_working_call_raises_step_cancelled() -> None:
    runtime = FakeRuntime()
    ctx = make(runtime)
    runtime.cancelled = True
    assert ctx.cancelled
    for call in (ctx.raise_if_cancelled, lambda: ctx.sh("true"), lambda: ctx.set_env("A", "b")):
        with pytest.raises(StepCancelled):
            call()
    assert runtime.calls == []


def test_log_is_percent_style_and_line_split() -> None:
    runtime = FakeRuntime()
    ctx = make(runtime)
    ctx.log.info("%s + %d", "a", 2)
    ctx.log.warn("two\nlines")
    ctx.log.error("100%")
    assert runtime.lines == ["[info] a + 2", "[warn] two", "[warn] lines", "[error] 100%"]


def test_metadata_and_matrix() -> None:
    ctx = make(FakeRuntime(), matrix={"os": "linux", "value": 3}, dispatch_inputs={"n": 1})
    assert (ctx.workflow.name, ctx.job.name, ctx.workspace) == ("ci", "build", Path("/ws"))
    assert ctx.matrix.os == "linux"
    assert ctx.matrix["value"] == 3
    assert ctx.dispatch_inputs == {"n": 1}
    with pytest.raises(AttributeError, match="no dimension 'arch'"):
        _ = Matrix({}).arch
    assert ctx.env == {"PATH": "/bin"}
    ctx.add_path("/tools")
    assert ctx.env["PATH"] == "/tools:/bin"


def test_shell_result_helpers() -> None:
    result = ShellResult("a\nb\n", "", 0, 3)
    assert (str(result), result.lines(), result.ok) == ("a\nb", ["a", "b"], True)
