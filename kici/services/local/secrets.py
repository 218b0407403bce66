"""Local secret sources of ``kici run local`` (CLI-11).

Precedence, low to high: ``.kici/.secrets`` → ``.kici/.env.local`` → ``--env K=V``. The files are
read from the real ``.kici/`` of the working tree (never from the isolated checkout, where they
would only exist if someone committed them). Values go to the runner, which exposes them as
``ctx.secrets`` and masks them in every output line; they never enter the step environment.

``.kici/.secrets`` is INI-like: ``KEY=value`` lines before any ``[section]`` are flat secrets,
lines inside ``[ctx]`` are context secrets; contexts flatten into ``ctx.secrets`` (a later line
wins). ``#`` and ``;`` start comments; the value is everything after the first ``=``, stripped.
``.kici/.env.local`` is dotenv: ``KEY=value`` or ``export KEY=value``; one pair of matching
surrounding quotes is removed (double quotes also unescape ``\\n``, ``\\"`` and ``\\\\``).

Not read: ``.kici/secrets.yaml`` (YAML is not among the CLI's dependencies); a line without
``=`` is ignored, like a blank line, rather than failing the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

SECRETS_FILE = ".secrets"
ENV_LOCAL_FILE = ".env.local"

_DOUBLE_QUOTE_ESCAPES = {"n": "\n", '"': '"', "\\": "\\", "t": "\t"}


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


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def load_local_secrets(kici_dir: Path, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """All local secrets, merged low → high: ``.secrets``, ``.env.local``, then ``overrides`` (``--env``)."""
    merged: dict[str, str] = {}
    text = _read(kici_dir / SECRETS_FILE)
    if text is not None:
        merged.update(parse_secrets_ini(text))
    text = _read(kici_dir / ENV_LOCAL_FILE)
    if text is not None:
        merged.update(parse_dotenv(text))
    if overrides:
        merged.update(overrides)
    return merged
