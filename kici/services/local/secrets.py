"""Local secret sources of ``kici run local`` (CLI-11).

Precedence, low to high: ``.kici/.secrets`` → ``.kici/.env.local`` → ``.kici/secrets.yaml`` →
``--env K=V``. The files are read from the real ``.kici/`` of the working tree (never from the
isolated checkout, where they would only exist if someone committed them). Values go to the runner,
which exposes them as ``ctx.secrets`` and masks them in every output line; they never enter the
step environment.

``.kici/.secrets`` is INI-like: ``KEY=value`` lines before any ``[section]`` are flat secrets,
lines inside ``[ctx]`` are context secrets; contexts flatten into ``ctx.secrets`` (a later line
wins). ``#`` and ``;`` start comments; the value is everything after the first ``=``, stripped.
``.kici/.env.local`` is dotenv: ``KEY=value`` or ``export KEY=value``; one pair of matching
surrounding quotes is removed (double quotes also unescape ``\\n``, ``\\"`` and ``\\\\``). In both,
a line without ``=`` is ignored, like a blank line, rather than failing the run: these formats
have no syntax to get wrong.

``.kici/secrets.yaml`` is ``{env: {KEY: scalar}}``, read as YAML 1.2 (ruamel.yaml's safe
loader: ``on``/``yes``/``no`` stay strings). A secret is the scalar *as written*: ``1e3``,
``0o17`` and ``true`` stay those characters rather than going through a number or a boolean and
coming back spelled differently, since the value is handed to tools as text. An empty value
(``KEY:`` or ``~``) is the empty string, like ``KEY=`` in the other files. Unlike the line
formats, YAML can be wrong in ways that silently lose secrets (a typo'd ``evn:``, a nested list,
a duplicated key, a custom tag such as ``!vault`` whose ciphertext would become the secret), so
every such file is rejected with :class:`LocalSecretsError` naming the file and the line.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode

SECRETS_FILE = ".secrets"
ENV_LOCAL_FILE = ".env.local"
SECRETS_YAML_FILE = "secrets.yaml"

_DOUBLE_QUOTE_ESCAPES = {"n": "\n", '"': '"', "\\": "\\", "t": "\t"}
_STANDARD_TAG = "tag:yaml.org,2002:"
_NULL_TAG = _STANDARD_TAG + "null"
_MERGE_TAG = _STANDARD_TAG + "merge"
_ENV_KEY = "env"


class LocalSecretsError(ValueError):
    """A local secret file cannot be used; ``line`` is 1-based (``None`` when the whole file is at fault)."""

    def __init__(self, path: Path, line: int | None, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        super().__init__(self.format(str(path)))

    def format(self, shown_path: str) -> str:
        where = shown_path if self.line is None else f"{shown_path}:{self.line}"
        return f"{where}: {self.problem}"


def parse_secrets_ini(text: str) -> dict[str, str]:
    """The flattened secrets of a ``.kici/.secrets`` file; see the module docstring."""
    found: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            continue
        key, eq, value = line.partition("=")
        key = key.strip()
        if eq and key:
            found[key] = value.strip()
    return found


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        inner = value[1:-1]
        if value[0] == "'":
            return inner
        out: list[str] = []
        index = 0
        while index < len(inner):
            char = inner[index]
            if char == "\\" and index + 1 < len(inner) and inner[index + 1] in _DOUBLE_QUOTE_ESCAPES:
                out.append(_DOUBLE_QUOTE_ESCAPES[inner[index + 1]])
                index += 2
                continue
            out.append(char)
            index += 1
        return "".join(out)
    return value


def parse_dotenv(text: str) -> dict[str, str]:
    """The pairs of a ``.env.local`` file; see the module docstring."""
    found: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, eq, value = line.partition("=")
        key = key.strip()
        if eq and key:
            found[key] = _unquote(value.strip())
    return found


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _syntax_error(path: Path, text: str, exc: YAMLError) -> LocalSecretsError:
    if isinstance(exc, MarkedYAMLError):
        mark = exc.problem_mark if exc.problem_mark is not None else exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        line = int(mark.line) + 1 if mark is not None else None
        return LocalSecretsError(path, line, f"invalid YAML: {problem}")
    position = getattr(exc, "position", None)
    line = text.count("\n", 0, position) + 1 if isinstance(position, int) else None
    return LocalSecretsError(path, line, f"invalid YAML: {str(exc).splitlines()[0]}")


def _scalar_text(path: Path, node: Node, what: str, *, key_line: int | None = None) -> str:
    """A scalar's text as written; anything else is an error at its key's line (a value) or its own.

    A null value is the empty string (``KEY:`` means "set, but empty", like ``KEY=``); a key
    spelled ``NULL`` or ``~`` is that name.
    """
    line = key_line if key_line is not None else _line(node)
    if not isinstance(node, ScalarNode):
        kind = "a mapping" if isinstance(node, MappingNode) else "a list"
        raise LocalSecretsError(path, line, f"{what} must be a string, number or boolean, not {kind}")
    if node.tag == _MERGE_TAG:
        raise LocalSecretsError(path, line, "merge keys (<<) are not supported; list every secret")
    if not str(node.tag).startswith(_STANDARD_TAG):
        raise LocalSecretsError(path, line, f"{what} has the tag {node.tag}: custom tags are not supported")
    return "" if node.tag == _NULL_TAG and key_line is not None else str(node.value)


def _pairs(path: Path, node: MappingNode, what: str) -> list[tuple[str, Node, int]]:
    """``(key, value node, key line)`` of a mapping whose keys are non-empty and unique."""
    seen: dict[str, int] = {}
    pairs: list[tuple[str, Node, int]] = []
    for key_node, value_node in node.value:
        key = _scalar_text(path, key_node, f"a key of {what}")
        line = _line(key_node)
        if not key:
            raise LocalSecretsError(path, line, f"{what} has an empty key")
        if key in seen:
            raise LocalSecretsError(path, line, f"duplicate key {key!r} (first on line {seen[key]})")
        seen[key] = line
        pairs.append((key, value_node, line))
    return pairs


def parse_secrets_yaml(text: str, path: Path) -> dict[str, str]:
    """The secrets of a ``secrets.yaml`` (``path`` only names it in errors); see the module docstring."""
    try:
        root = YAML(typ="safe").compose(text)
    except YAMLError as exc:
        raise _syntax_error(path, text, exc) from None
    if root is None or (isinstance(root, ScalarNode) and root.tag == _NULL_TAG):
        return {}
    if not isinstance(root, MappingNode):
        raise LocalSecretsError(path, _line(root), "expected a mapping with an `env:` key: env: {KEY: value}")
    found: dict[str, str] = {}
    for key, value, line in _pairs(path, root, "the file"):
        if key != _ENV_KEY:
            raise LocalSecretsError(
                path, line, f"unknown key {key!r}: secrets go under `env:` (env: {{KEY: value}})"
            )
        if isinstance(value, ScalarNode) and value.tag == _NULL_TAG:
            continue
        if not isinstance(value, MappingNode):
            raise LocalSecretsError(path, line, "`env:` must be a mapping of KEY: value")
        for name, item, item_line in _pairs(path, value, "`env:`"):
            found[name] = _scalar_text(path, item, f"secret {name!r}", key_line=item_line)
    return found


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise LocalSecretsError(path, None, "not UTF-8 text") from None
    except OSError as exc:
        raise LocalSecretsError(path, None, f"cannot read: {exc.strerror or exc}") from None


def load_local_secrets(kici_dir: Path, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """All local secrets merged low → high (``.secrets``, ``.env.local``, ``secrets.yaml``, ``overrides``).

    ``overrides`` are the ``--env`` values. Raises :class:`LocalSecretsError` for an unreadable file
    or an invalid ``secrets.yaml``.
    """
    merged: dict[str, str] = {}
    text = _read(kici_dir / SECRETS_FILE)
    if text is not None:
        merged.update(parse_secrets_ini(text))
    text = _read(kici_dir / ENV_LOCAL_FILE)
    if text is not None:
        merged.update(parse_dotenv(text))
    yaml_path = kici_dir / SECRETS_YAML_FILE
    text = _read(yaml_path)
    if text is not None:
        merged.update(parse_secrets_yaml(text, yaml_path))
    if overrides:
        merged.update(overrides)
    return merged
