"""Reading a tier's YAML config file with ruamel.yaml in YAML 1.2 safe mode (CFG-01).

YAML 1.2 because 1.1 (PyYAML) reads ``on:`` as ``True`` and ``NO`` as ``False``. Besides the tree the
reader returns the 1-based line of every key, so that validation problems found later in the pure
domain can say ``/etc/kici/orchestrator.yaml:12 server.port`` instead of only the key. Syntax errors,
duplicate keys, a missing file the operator named, an unreadable file and a top level that is not a
mapping all raise :class:`ConfigFileError` with ``file:line:column`` where the parser knows it.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode

from kici.domain.config.location import ConfigLocation
from kici.domain.config.problems import YamlSource


class ConfigFileError(Exception):
    """The config file cannot be read or parsed; the message starts with ``file[:line[:column]]``."""

    def __init__(self, path: str, problem: str, line: int | None = None, column: int | None = None) -> None:
        where = path + (f":{line}" if line is not None else "") + (f":{column}" if column is not None else "")
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.line = line
        self.column = column
        self.problem = problem


@attrs.frozen
class ConfigDocument:
    """A parsed config file: the tree (``None`` when absent or empty) and the line of each dotted key."""

    path: str
    tree: Mapping[str, Any] | None = attrs.field(default=None, hash=False)
    lines: Mapping[str, int] = attrs.field(factory=dict, hash=False)

    @property
    def source(self) -> YamlSource:
        return YamlSource(self.path, self.lines)


def _key_lines(node: Node, prefix: str, out: dict[str, int]) -> None:
    if not isinstance(node, MappingNode):
        return
    for key, value in node.value:
        if isinstance(key, ScalarNode):
            dotted = f"{prefix}{key.value}"
            out.setdefault(dotted, key.start_mark.line + 1)
            _key_lines(value, f"{dotted}.", out)


def _marked_error(path: str, exc: MarkedYAMLError) -> ConfigFileError:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "invalid YAML"
    if exc.context and exc.problem:
        problem = f"{exc.problem} ({exc.context})"
    if mark is None:
        return ConfigFileError(path, problem)
    return ConfigFileError(path, problem, mark.line + 1, mark.column + 1)


def parse_config_text(text: str, path: str) -> ConfigDocument:
    """Parse YAML text named ``path`` (for messages) into a :class:`ConfigDocument`."""
    yaml = YAML(typ="safe", pure=True)
    try:
        root = yaml.compose(text)
        tree = yaml.load(text)
    except MarkedYAMLError as exc:
        raise _marked_error(path, exc) from None
    except YAMLError as exc:
        raise ConfigFileError(path, str(exc)) from None
    if tree is None:
        return ConfigDocument(path)
    if not isinstance(tree, dict):
        raise ConfigFileError(path, "expected a mapping of settings at the top level", 1)
    lines: dict[str, int] = {}
    if root is not None:
        _key_lines(root, "", lines)
    return ConfigDocument(path, tree, lines)


def read_config_file(location: ConfigLocation) -> ConfigDocument:
    """Read the located file; a missing default file is an empty document, a missing named one an error."""
    path = Path(location.path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if not location.explicit:
            return ConfigDocument(location.path)
        raise ConfigFileError(
            location.path, "file not found (named by --config or KICI_CONFIG); check the path"
        ) from None
    except OSError as exc:
        raise ConfigFileError(location.path, f"cannot read the file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigFileError(location.path, f"not UTF-8 text (byte {exc.start})") from None
    return parse_config_text(text, location.path)
