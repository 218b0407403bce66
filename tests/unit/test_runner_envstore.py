"""Env/PATH chaining (EXE-23, ENV-10): ``$KICI_ENV``/``$KICI_PATH`` parsing and the protected keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kici.services.runner.envstore import JobEnv, parse_env_lines, parse_path_lines

pytestmark = pytest.mark.feature("EXE-23")


def test_env_lines_split_at_the_first_equals_and_skip_junk() -> None:
    text = "A=1\n\n  B = two=2 \nno-equals\n=empty-key\nC=\nA=last\n"
    assert parse_env_lines(text) == [("A", "1"), ("B", " two=2"), ("C", ""), ("A", "last")]


def test_path_lines_keep_order_and_skip_blanks() -> None:
    assert parse_path_lines("/a\n\n  /b  \n") == ["/a", "/b"]


def test_files_apply_then_truncate_and_paths_prepend_in_order(tmp_path: Path) -> None:
    warnings: list[str] = []
    env = JobEnv({"PATH": "/usr/bin", "KEEP": "k"}, protected={"TOKEN"}, warn=warnings.append)
    env_file, path_file = tmp_path / "env", tmp_path / "path"
    env_file.write_text("X=1\nTOKEN=stolen\nKICI_PATH=/evil\n")
    path_file.write_text("/first\n/second\n")
    env.apply_files(env_file, path_file)
    snapshot = env.snapshot()
    assert snapshot["X"] == "1"
    assert snapshot["KEEP"] == "k"
    assert "TOKEN" not in snapshot
    assert "KICI_PATH" not in snapshot
    assert snapshot["PATH"] == "/first:/second:/usr/bin"
    assert env_file.read_text() == ""
    assert path_file.read_text() == ""
    assert len(warnings) == 2
    env.add_path("/third")
    assert env.snapshot()["PATH"] == "/third:/first:/second:/usr/bin"


@given(
    st.lists(
        st.tuples(st.from_regex(r"[A-Z_][A-Z0-9_]{0,6}", fullmatch=True), st.text(max_size=6)), max_size=6
    )
)
def test_last_write_wins(pairs: list[tuple[str, str]]) -> None:
    clean = [(k, v.replace("\n", "").replace("\r", "").replace("\0", "")) for k, v in pairs]
    env = JobEnv({}, protected=(), warn=lambda _: None)
    for key, value in clean:
        env.set(key, value)
    assert env.snapshot() == dict(clean)
