"""The typo catcher: unknown YAML keys and unknown ``KICI_*`` variables, each with the nearest known name.

A misspelt setting is worse than a wrong one: it is silently ignored and the default runs in
production. So the loader refuses both unknown YAML keys and unknown ``KICI_*`` variables (OPS-01),
and says what was probably meant: a key that differs only by case, ``_`` or ``-`` (``base_path`` for
``basePath``), an env name used as a YAML key, or the closest name by :mod:`difflib`.

Which ``KICI_*`` names are known:

* every env name and alias of the tier's key table;
* the tier's env-only families (``KICI_AGENT_ENV_*``, ``KICI_DEPLOY_*``, ``KICI_COLD_STORE_*``);
  the logger variables (``KICI_LOG_*``) are ordinary keys of the table, so they are typo-checked;
* the names kici's own tools read, which an operator's shell or unit file may well export
  (``KICI_CONFIG``, ``KICI_DEV``, ``KICI_ADMIN_URL`` ...);
* deprecated names (the Raft knobs replaced by the PostgreSQL lease, 50 §5): accepted with a warning,
  as are their YAML keys (``cluster.raftHeartbeatMs`` ...), so existing KiCI files keep loading.

``KICI_DEV=true`` turns unknown variables into warnings (50 §9). A variable that belongs to the other
tier (``KICI_DATABASE_URL`` in an agent's environment) is named as such instead of as a typo.

The Platform's own variables (`PLATFORM_NAMES`: ``KICI_PLATFORM_HOST``, ``KICI_PLATFORM_PORT`` ...,
read by kici-platform) are ignored: an environment shared with the Platform is a normal deployment,
and the names cannot be taken for this tier's, the way kici-platform ignores the orchestrator's
``KICI_PLATFORM_URL`` and ``KICI_PLATFORM_TOKEN``. Any other ``KICI_PLATFORM_*`` name is still an
unknown variable, with the nearest name of this tier or of the Platform as the hint, so a misspelt
``KICI_PLATFORM_TOKEN`` is caught.
"""

import difflib
import re
from collections.abc import Mapping
from typing import Any

from kici.domain.config.layering import TABLES, Tier, TierTable
from kici.domain.config.problems import Problem, YamlSource, describe
from kici.domain.config.schema import section_names

ENV_PREFIX = "KICI_"
TOOL_NAMES = frozenset(
    {
        "KICI_CONFIG",
        "KICI_DEV",
        "KICI_DEBUG",
        "KICI_RUN_DIR",
        "KICI_ADMIN_URL",
        "KICI_ADMIN_TOKEN",
        "KICI_CONFIG_ROOT",
        "KICI_SPEC_DIR",
        "KICI_PYTHON",
        "KICI_TEST_WORKERS",
        # Set by the runner inside every step (EXE-23): a daemon started from a step inherits them.
        "KICI_ENV",
        "KICI_PATH",
    }
)
PLATFORM_NAMES = frozenset(
    {
        "KICI_PLATFORM_CONFIG",
        "KICI_PLATFORM_HOST",
        "KICI_PLATFORM_PORT",
        "KICI_PLATFORM_PUBLIC_URL",
        "KICI_PLATFORM_DATABASE_URL",
        "KICI_PLATFORM_DATA_DIR",
        "KICI_PLATFORM_MAX_WEBHOOK_BYTES",
        "KICI_PLATFORM_ACK_TIMEOUT_MS",
        "KICI_PLATFORM_RETRY_AFTER_S",
        "KICI_PLATFORM_UNKNOWN_SOURCE_MS",
        "KICI_PLATFORM_AUTH_TIMEOUT_MS",
        "KICI_PLATFORM_UNHEALTHY_MS",
        "KICI_PLATFORM_STALE_MS",
        "KICI_PLATFORM_REVOCATION_SWEEP_MS",
        "KICI_PLATFORM_REQUEST_TIMEOUT_MS",
        "KICI_PLATFORM_LOG_LEVEL",
        "KICI_PLATFORM_LOG_FORMAT",
    }
)
"""What kici-platform reads (``kici.services.platform.config``; a unit test keeps the two equal)."""
DEPRECATED_NAMES: Mapping[Tier, frozenset[str]] = {
    Tier.ORCHESTRATOR: frozenset({"KICI_CLUSTER_ELECTION_GRACE_PERIOD_MS", "KICI_CLUSTER_SINGLE_NODE"}),
    Tier.AGENT: frozenset(),
}
DEPRECATED_PREFIXES: Mapping[Tier, tuple[str, ...]] = {
    Tier.ORCHESTRATOR: ("KICI_CLUSTER_RAFT_",),
    Tier.AGENT: (),
}
DEPRECATED_YAML: Mapping[Tier, frozenset[str]] = {
    Tier.ORCHESTRATOR: frozenset(
        {
            "cluster.raftElectionTimeoutMinMs",
            "cluster.raftElectionTimeoutMaxMs",
            "cluster.raftHeartbeatMs",
            "cluster.electionGracePeriodMs",
            "cluster.singleNode",
        }
    ),
    Tier.AGENT: frozenset(),
}
LEASE_FIX = (
    "Remove it; tune the cluster lease settings (KICI_CLUSTER_LEASE_TTL_MS, _RENEW_MS, _POLL_MS) instead"
)
LEASE_NOTE = "is deprecated and ignored: leadership is a PostgreSQL lease now"
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_LISTED = 12
_CUTOFF = 0.6


def _squash(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


def _last(dotted: str) -> str:
    return dotted.rpartition(".")[2]


def nearest(name: str, candidates: list[str]) -> str | None:
    """The known name ``name`` most likely stands for, or ``None`` when nothing is close.

    Tried in order: the same name up to case, ``_`` and ``-``; the same last segment under another
    parent (``base_path`` for ``server.basePath``); the closest whole name; the closest last segment.
    """
    squashed = _squash(name)
    for candidate in candidates:
        if _squash(candidate) == squashed:
            return candidate
    last = _squash(_last(name))
    for candidate in candidates:
        if _squash(_last(candidate)) == last:
            return candidate
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=_CUTOFF)
    if close:
        return close[0]
    by_last = {_last(candidate): candidate for candidate in candidates}
    close = difflib.get_close_matches(_last(name), sorted(by_last), n=1, cutoff=_CUTOFF)
    return by_last[close[0]] if close else None


def is_truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


# --- YAML keys ----------------------------------------------------------------------------------


def _yaml_suggestion(table: TierTable, path: str) -> str:
    env_key = table.env_names.get(path)
    if env_key is not None:
        return f"{path} is an environment variable; in the config file write {env_key.yaml}"
    candidates = sorted(set(table.yaml_paths) | table.yaml_groups)
    guess = nearest(path, candidates)
    if guess is not None:
        return f"Did you mean {guess}?"
    parent = path.rpartition(".")[0]
    prefix = f"{parent}." if parent else ""
    children = sorted(
        {c[len(prefix) :].split(".")[0] for c in candidates if c.startswith(prefix) and c != parent}
    )
    shown = ", ".join(children[:_MAX_LISTED]) + (", ..." if len(children) > _MAX_LISTED else "")
    return f"Remove it; known keys{f' under {parent}' if parent else ''}: {shown}"


def check_yaml_keys(
    table: TierTable, tree: Mapping[Any, Any] | None, yaml: YamlSource
) -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings): keys that are no known leaf or group, groups that are no mapping, old keys."""
    problems: list[Problem] = []
    warnings: list[Problem] = []
    leaves, groups = table.yaml_paths, table.yaml_groups
    sections = frozenset(section_names(table.config_class).values())

    def walk(node: Mapping[Any, Any], prefix: str) -> None:
        for name, value in node.items():
            if not isinstance(name, str):
                where = yaml.where(prefix.rstrip(".")) if prefix else yaml.name
                problems.append(
                    Problem(where, f"keys must be strings, got {describe(name)}", "Quote the key")
                )
                continue
            path = f"{prefix}{name}"
            if path in leaves or (not prefix and path in sections):
                continue
            if path in DEPRECATED_YAML[table.tier]:
                warnings.append(Problem(yaml.where(path), LEASE_NOTE, LEASE_FIX))
            elif path not in groups:
                problems.append(Problem(yaml.where(path), "unknown key", _yaml_suggestion(table, path)))
            elif isinstance(value, Mapping):
                walk(value, f"{path}.")
            elif value is not None:
                problems.append(
                    Problem(
                        yaml.where(path),
                        f"expected a mapping of settings, got {describe(value)}",
                        f"Write the settings of {path} as indented keys below it",
                    )
                )

    if tree is not None:
        walk(tree, "")
    return problems, warnings


# --- env names ----------------------------------------------------------------------------------


def _other_tier(tier: Tier, name: str) -> Tier | None:
    for other, table in TABLES.items():
        families = tuple(family.prefix for family in table.families)
        if other is not tier and (name in table.env_names or name.startswith(families)):
            return other
    return None


def _is_deprecated(tier: Tier, name: str) -> bool:
    return name in DEPRECATED_NAMES[tier] or name.startswith(DEPRECATED_PREFIXES[tier])


def _family_problems(table: TierTable, name: str) -> list[Problem]:
    for family in table.families:
        if name.startswith(family.prefix):
            suffix = name[len(family.prefix) :]
            if not _ENV_KEY.match(suffix):
                return [
                    Problem(
                        name,
                        f"{family.prefix}* needs a variable name after the prefix",
                        f"Write {family.prefix}NAME with NAME made of letters, digits and _",
                    )
                ]
            return []
    return []


def check_env_names(
    table: TierTable, env: Mapping[str, str], referenced: frozenset[str] = frozenset()
) -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings) about the ``KICI_*`` names present in ``env``.

    ``referenced`` are names the config itself points at (a source's ``secretEnv``): known by design.
    """
    errors: list[Problem] = []
    warnings: list[Problem] = []
    dev = is_truthy(env.get("KICI_DEV"))
    known = set(table.env_names) | TOOL_NAMES | referenced
    suggestable = known | PLATFORM_NAMES
    stems = {name[len(ENV_PREFIX) :]: name for name in suggestable if name.startswith(ENV_PREFIX)}
    candidates = sorted(stems)
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in known or name in PLATFORM_NAMES:
            continue
        if any(name.startswith(family.prefix) for family in table.families):
            errors.extend(_family_problems(table, name))
            continue
        if _is_deprecated(table.tier, name):
            warnings.append(Problem(name, LEASE_NOTE, LEASE_FIX))
            continue
        other = _other_tier(table.tier, name)
        if other is not None:
            problem = Problem(
                name,
                f"configures the {other}, not the {table.tier}",
                f"Remove it from the {table.tier}'s environment",
            )
        else:
            guess = nearest(name[len(ENV_PREFIX) :], candidates)
            if guess is None:
                hint = "Remove it"
            elif stems[guess] in PLATFORM_NAMES:
                hint = f"Did you mean {stems[guess]}, a kici-platform setting?"
            else:
                hint = f"Did you mean {stems[guess]}?"
            problem = Problem(name, "unknown variable", hint)
        if dev:
            warnings.append(problem)
        else:
            errors.append(
                Problem(problem.where, problem.message, f"{problem.fix} (KICI_DEV=true only warns)")
            )
    return errors, warnings
