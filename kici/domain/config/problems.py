"""How configuration problems are named and reported.

An operator reads these messages in a terminal or a journal after a failed start or reload, so each
one names the exact place to edit (the env variable, or ``file:line`` and the YAML path) and says
how to fix it, and all of them are reported together: fixing one problem per restart is the worst
way to learn that a config has five.
"""

import json
from collections.abc import Mapping, Sequence

import attrs

from kici.domain.config.layering import Key, Source, Sourced

_MAX_SHOWN = 60
HIDDEN = "<hidden>"


@attrs.frozen
class Problem:
    """One thing wrong (or, as a warning, doubtful) in a config, with where to look and what to do."""

    where: str
    message: str
    fix: str = ""

    def render(self) -> str:
        head = f"{self.where}: {self.message}" if self.where else self.message
        return f"{head}. {self.fix}" if self.fix else head


def render_all(title: str, problems: Sequence[Problem]) -> str:
    return title + "".join(f"\n  - {p.render()}" for p in problems)


class ConfigError(ValueError):
    """The configuration cannot be used; ``problems`` lists every reason at once."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__(render_all("Configuration validation failed:", self.problems))


@attrs.frozen
class YamlSource:
    """The YAML file as messages name it: its path and the 1-based line of each dotted key."""

    name: str = "config file"
    lines: Mapping[str, int] = attrs.field(factory=dict, hash=False)

    def where(self, dotted: str) -> str:
        line = self.lines.get(dotted)
        return f"{self.name}:{line} {dotted}" if line is not None else f"{self.name} {dotted}"


def where_set(key: Key, sourced: Sourced, yaml: YamlSource) -> str:
    """The place that gave a leaf its value: an env name, a YAML line, the shared config, or the key."""
    if sourced.source is Source.ENV:
        return sourced.name
    if sourced.source is Source.YAML:
        return yaml.where(key.yaml)
    if sourced.source is Source.SHARED:
        return f"shared config {key.yaml}"
    return key.yaml


def how_to_set(key: Key) -> str:
    """``KICI_X (yaml.path)`` or just the YAML path for YAML-only keys."""
    return f"{key.env[0]} ({key.yaml})" if key.env else key.yaml


def describe(value: object, *, secret: bool = False) -> str:
    """A short rendering of a value for "got ..."; secrets are never echoed."""
    if secret:
        return HIDDEN
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    try:
        text = json.dumps(value, ensure_ascii=False)
    except TypeError:
        text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"
