"""Reading the YAML config file: YAML 1.2 safe mode, file:line errors, missing files (OPS-01, CFG-01)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kici.adapters.config_file import ConfigFileError, parse_config_text, read_config_file
from kici.domain.config.location import ConfigLocation
from kici.domain.config.problems import ConfigError
from kici.domain.config.validate import load_orchestrator_config

pytestmark = pytest.mark.feature("OPS-01", "CFG-01")


def test_yaml_1_2_keeps_on_and_no_as_strings() -> None:
    document = parse_config_text("on: push\nanswer: NO\nflag: true\n", "x.yaml")
    assert document.tree == {"on": "push", "answer": "NO", "flag": True}


def test_each_key_knows_its_line() -> None:
    document = parse_config_text(
        "# kici\nserver:\n  port: 4000\n\n  basePath: /ci\nqueue: {maxDepth: 5}\n", "o.yaml"
    )
    assert document.lines == {
        "server": 2,
        "server.port": 3,
        "server.basePath": 5,
        "queue": 6,
        "queue.maxDepth": 6,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("server:\n  port: [4000\nqueue: 1\n", "o.yaml:3:6: expected ',' or ']', but got ':'"),
        ("server: 1\nserver: 2\n", 'o.yaml:2:1: found duplicate key "server"'),
        ("- a\n- b\n", "o.yaml:1: expected a mapping of settings at the top level"),
        ("a: 1\n---\nb: 2\n", "o.yaml:2:1: but found another document"),
        ("a: !!python/object:os.system x\n", "o.yaml:1:4: could not determine a constructor"),
        ("\ta: 1\n", "o.yaml:1:1: found character '\\t' that cannot start any token"),
    ],
)
def test_syntax_errors_carry_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ConfigFileError) as caught:
        parse_config_text(text, "o.yaml")
    assert str(caught.value).startswith(message)


def test_an_empty_file_is_an_empty_layer() -> None:
    assert parse_config_text("# nothing yet\n", "o.yaml").tree is None


def test_missing_files(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yaml")
    assert read_config_file(ConfigLocation(path, explicit=False)).tree is None
    with pytest.raises(ConfigFileError) as caught:
        read_config_file(ConfigLocation(path, explicit=True))
    assert str(caught.value) == f"{path}: file not found (named by --config or KICI_CONFIG); check the path"


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="cannot read the file"):
        read_config_file(ConfigLocation(str(tmp_path), explicit=True))
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigFileError, match=r"latin\.yaml: not UTF-8 text \(byte 9\)"):
        read_config_file(ConfigLocation(str(latin), explicit=True))


def test_validation_problems_point_at_the_file_line(tmp_path: Path) -> None:
    path = tmp_path / "orchestrator.yaml"
    path.write_text("instance:\n  mode: independent\nserver:\n  port: many\n  prot: 1\n")
    document = read_config_file(ConfigLocation(str(path), explicit=True))
    with pytest.raises(ConfigError) as caught:
        load_orchestrator_config(document.tree, {}, yaml=document.source)
    assert [p.where for p in caught.value.problems] == [f"{path}:5 server.prot", f"{path}:4 server.port"]
