"""Loading a tier's config: layer, coerce, check, and report every problem at once (OPS-01, OPS-04).

``load_orchestrator_config`` / ``load_agent_config`` take what the caller read (the YAML tree, the
process environment, optionally the shared database layer) and return a typed, validated config or
raise :class:`~kici.domain.config.problems.ConfigError` listing all of: unknown ``KICI_*`` variables,
unknown YAML keys (each with the nearest known name), alias conflicts, values of the wrong type or
range (naming the env variable or ``file:line`` of the YAML key that set them), and cross-field rules.
Warnings (deprecated names, unknown names under ``KICI_DEV=true``) come back with the config.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic

import attrs

from kici.domain.config.checks import AGENT_CHECKS, ORCHESTRATOR_CHECKS, CheckContext, CrossProblem
from kici.domain.config.coerce import BadValue, coerce, expected
from kici.domain.config.layering import TABLES, Source, Sourced, Tier, TierTable, layer, lookup
from kici.domain.config.problems import ConfigError, Problem, YamlSource, where_set
from kici.domain.config.schema import AgentConfig, ConfigT, OrchestratorConfig, build
from kici.domain.config.source_checks import SECTION as SOURCES_SECTION
from kici.domain.config.source_checks import SourcesSection, read_sources
from kici.domain.config.typos import check_env_names, check_yaml_keys

SHARED = YamlSource("shared config")
NO_FILE = YamlSource()


@attrs.frozen
class Loaded(Generic[ConfigT]):
    """A valid config, the warnings worth logging, and where each leaf's value came from.

    ``origins`` keeps the raw layer values, secrets included: show its ``source`` and ``name``
    (``kici-admin config get``), never its values.
    """

    config: ConfigT
    warnings: tuple[Problem, ...] = ()
    origins: Mapping[str, Sourced] = attrs.field(factory=dict, hash=False)


def _coerce_leaves(
    table: TierTable, leaves: Mapping[str, Sourced], yaml: YamlSource
) -> tuple[dict[str, object], list[Problem], set[str]]:
    values: dict[str, object] = {}
    problems: list[Problem] = []
    failed: set[str] = set()
    for key in table.keys:
        sourced, leaf = leaves[key.attr], table.leaves[key.attr]
        if sourced.source is Source.DEFAULT:
            values[key.attr] = leaf.default
            continue
        try:
            values[key.attr] = coerce(leaf, sourced.value, from_env=sourced.source is Source.ENV)
        except BadValue as exc:
            failed.add(key.attr)
            target = sourced.name if sourced.source is Source.ENV else key.yaml
            fix = exc.fix or (f"Set {target} to {expected(leaf.type)}" if exc.wrong_type else "")
            problems.append(
                Problem(
                    where_set(key, sourced, yaml if sourced.source is Source.YAML else SHARED),
                    exc.message,
                    fix,
                )
            )
    return values, problems, failed


def _load(
    table: TierTable,
    cls: type[ConfigT],
    *,
    checks: Sequence[Callable[[ConfigT, CheckContext], list[CrossProblem]]],
    yaml_tree: Mapping[str, Any] | None,
    env: Mapping[str, str],
    yaml: YamlSource,
    shared_tree: Mapping[str, Any] | None,
    sources: SourcesSection | None = None,
) -> Loaded[ConfigT]:
    referenced = sources.env_names if sources is not None else frozenset()
    errors, warnings = check_env_names(table, env, referenced)
    if sources is not None:
        errors += sources.problems
    for tree, source in ((yaml_tree, yaml), (shared_tree, SHARED)):
        key_errors, key_warnings = check_yaml_keys(table, tree, source)
        errors += key_errors
        warnings += key_warnings
    layered = layer(table, yaml_tree, env, shared_tree)
    for conflict in layered.conflicts:
        primary, *aliases = conflict.names
        errors.append(
            Problem(
                primary,
                f"disagrees with {', '.join(aliases)}, an alias of the same setting",
                f"Remove {', '.join(aliases)} or give it the same value",
            )
        )
    values, value_problems, failed = _coerce_leaves(table, layered.leaves, yaml)
    errors += value_problems
    for family in table.families:
        values[family.attr] = dict(layered.families[family.attr])
    if sources is not None:
        values["sources"] = sources.sources
    config = build(cls, values)
    ctx = CheckContext(table, layered.leaves, yaml)
    for check in checks:
        found = check(config, ctx)
        errors.extend(p.problem for p in found if not failed.intersection(p.leaves))
    if errors:
        raise ConfigError(errors)
    return Loaded(config, tuple(warnings), layered.leaves)


def load_orchestrator_config(
    yaml_tree: Mapping[str, Any] | None,
    env: Mapping[str, str],
    *,
    yaml: YamlSource = NO_FILE,
    shared_tree: Mapping[str, Any] | None = None,
) -> Loaded[OrchestratorConfig]:
    """The orchestrator's config from defaults < shared < YAML < env, or :class:`ConfigError`.

    ``sources:`` is a YAML-only section (:mod:`kici.domain.config.source_checks`): it is taken from
    the file, else from the shared layer, whole; env never overrides it.
    """
    table = TABLES[Tier.ORCHESTRATOR]
    raw_sources, where = lookup(yaml_tree, SOURCES_SECTION), yaml
    if raw_sources is None:
        raw_sources, where = lookup(shared_tree, SOURCES_SECTION), SHARED
    return _load(
        table,
        OrchestratorConfig,
        checks=ORCHESTRATOR_CHECKS,
        yaml_tree=yaml_tree,
        env=env,
        yaml=yaml,
        shared_tree=shared_tree,
        sources=read_sources(raw_sources, where, env),
    )


def load_agent_config(
    yaml_tree: Mapping[str, Any] | None,
    env: Mapping[str, str],
    *,
    yaml: YamlSource = NO_FILE,
) -> Loaded[AgentConfig]:
    """The agent's config from defaults < YAML < env, or :class:`ConfigError`."""
    return _load(
        TABLES[Tier.AGENT],
        AgentConfig,
        checks=AGENT_CHECKS,
        yaml_tree=yaml_tree,
        env=env,
        yaml=yaml,
        shared_tree=None,
    )
