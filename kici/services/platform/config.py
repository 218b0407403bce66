"""The Platform daemon's configuration: a YAML file overlaid by ``KICI_PLATFORM_*`` variables.

The file is ``--config FILE``, else ``KICI_PLATFORM_CONFIG``, else ``/etc/kici/platform.yaml`` (a file
the operator named must exist; the default one may be absent). Per setting, a non-empty environment
variable wins over the file, the file over the default:

* ``server.host`` / ``KICI_PLATFORM_HOST``: ``0.0.0.0``;
* ``server.port`` / ``KICI_PLATFORM_PORT``: ``3000`` (0 binds any free port);
* ``server.publicUrl`` / ``KICI_PLATFORM_PUBLIC_URL``: unset (sent back as each source's ``webhookUrl``);
* ``database.url`` / ``KICI_PLATFORM_DATABASE_URL``: unset, meaning the embedded PostgreSQL;
* ``dataDir`` / ``KICI_PLATFORM_DATA_DIR``: see below;
* ``webhooks.maxBodyBytes`` / ``KICI_PLATFORM_MAX_WEBHOOK_BYTES``: 26 214 400 (25 MiB, also the maximum);
* ``webhooks.ackTimeoutMs`` / ``KICI_PLATFORM_ACK_TIMEOUT_MS``: 5 000;
* ``webhooks.retryAfterSeconds`` / ``KICI_PLATFORM_RETRY_AFTER_S``: 5;
* ``webhooks.unknownSourceCacheMs`` / ``KICI_PLATFORM_UNKNOWN_SOURCE_MS``: 60 000 (0 disables the cache);
* ``orchestrators.authTimeoutMs`` / ``KICI_PLATFORM_AUTH_TIMEOUT_MS``: 5 000;
* ``orchestrators.unhealthyAfterMs`` / ``KICI_PLATFORM_UNHEALTHY_MS``: 90 000;
* ``orchestrators.staleAfterMs`` / ``KICI_PLATFORM_STALE_MS``: 180 000;
* ``orchestrators.revocationSweepMs`` / ``KICI_PLATFORM_REVOCATION_SWEEP_MS``: 60 000;
* ``orchestrators.requestTimeoutMs`` / ``KICI_PLATFORM_REQUEST_TIMEOUT_MS``: 10 000;
* ``logging.level`` / ``KICI_PLATFORM_LOG_LEVEL``: ``info``;
* ``logging.format`` / ``KICI_PLATFORM_LOG_FORMAT``: ``auto`` (``json``, ``plain``).

Why these limits: the webhook body limit cannot exceed the relay's 25 MiB (PRO-04; GitHub sends up to
25 MB); the ACK budget is the 5 s of 30 §2 within which a git host expects an answer; ``Retry-After``
tells the git host when to try again after a 503; orchestrator links are silent-unhealthy after 90 s
and closed with 4004 after 180 s (PRO-15); dashboard requests wait 10 s (PRO-28).

Choices where the spec is silent:

* The Platform reads only its own ``KICI_PLATFORM_*`` names, never the orchestrator's
  ``KICI_DATABASE_URL``: the two tiers never share a database. ``KICI_PLATFORM_URL`` and
  ``KICI_PLATFORM_TOKEN`` are the orchestrator's (where to connect, with which key) and are ignored
  here; any other unknown ``KICI_PLATFORM_*`` variable, and any unknown YAML key, is an error naming
  the closest known name, because a misspelt setting silently running on its default is worse than
  a refused start.
* The data dir (embedded PostgreSQL in ``<dir>/pg18``) follows the other tiers' rule with the tier
  name ``platform``: ``/var/lib/kici/platform`` as root, else ``$XDG_DATA_HOME/kici/platform``
  (``~/.local/share/kici/platform``).
* Every problem is reported at once (`ConfigError`), each naming the variable or ``file:line key``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Final
from urllib.parse import urlsplit

import attrs

from kici.adapters.config_file import read_config_file
from kici.domain.config.location import ConfigLocation
from kici.domain.config.problems import ConfigError, Problem, YamlSource, describe
from kici.domain.relay import MAX_RELAY_BODY_BYTES

CONFIG_ENV: Final = "KICI_PLATFORM_CONFIG"
DEFAULT_CONFIG_FILE: Final = "/etc/kici/platform.yaml"
ENV_PREFIX: Final = "KICI_PLATFORM_"
ORCHESTRATOR_NAMES: Final = frozenset({"KICI_PLATFORM_URL", "KICI_PLATFORM_TOKEN"})
LOG_LEVELS: Final = ("trace", "debug", "info", "warn", "error", "fatal", "silent")
LOG_FORMATS: Final = ("auto", "json", "plain")
MAX_PORT: Final = 65_535
TIER: Final = "platform"
SYSTEM_DATA_ROOT: Final = PurePosixPath("/var/lib/kici")


@attrs.frozen(kw_only=True)
class ServerSettings:
    host: str = "0.0.0.0"
    port: int = 3000
    public_url: str | None = None


@attrs.frozen(kw_only=True)
class DatabaseSettings:
    url: str | None = None


@attrs.frozen(kw_only=True)
class WebhookSettings:
    max_body_bytes: int = MAX_RELAY_BODY_BYTES
    ack_timeout_ms: int = 5_000
    retry_after_s: int = 5
    unknown_source_cache_ms: int = 60_000


@attrs.frozen(kw_only=True)
class OrchestratorLinkSettings:
    auth_timeout_ms: int = 5_000
    unhealthy_after_ms: int = 90_000
    stale_after_ms: int = 180_000
    revocation_sweep_ms: int = 60_000
    request_timeout_ms: int = 10_000


@attrs.frozen(kw_only=True)
class LoggingSettings:
    level: str = "info"
    format: str = "auto"


@attrs.frozen(kw_only=True)
class PlatformConfig:
    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    data_dir: str | None = None
    webhooks: WebhookSettings = WebhookSettings()
    orchestrators: OrchestratorLinkSettings = OrchestratorLinkSettings()
    logging: LoggingSettings = LoggingSettings()


# --- parsing one value ----------------------------------------------------------------------------

Parser = Callable[[Any, bool], Any]
"""``(raw, from_env) -> value``; raises ValueError with what was expected."""


def _text(raw: Any, from_env: bool) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("expected a non-empty string")
    return raw.strip()


def _integer(low: int, high: int) -> Parser:
    expected = f"expected an integer from {low} to {high}"

    def parse(raw: Any, from_env: bool) -> int:
        if from_env:
            try:
                value = int(str(raw).strip())
            except ValueError:
                raise ValueError(expected) from None
        elif isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        else:
            raise ValueError(expected)
        if not low <= value <= high:
            raise ValueError(expected)
        return value

    return parse


def _choice(options: tuple[str, ...]) -> Parser:
    def parse(raw: Any, from_env: bool) -> str:
        if not isinstance(raw, str) or raw.strip().lower() not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return raw.strip().lower()

    return parse


def _url(schemes: tuple[str, ...]) -> Parser:
    def parse(raw: Any, from_env: bool) -> str:
        text = _text(raw, from_env)
        parts = urlsplit(text)
        if parts.scheme not in schemes or not (parts.netloc or parts.query):
            raise ValueError(f"expected a URL starting with {' or '.join(s + '://' for s in schemes)}")
        return text.rstrip("/") if parts.scheme in ("http", "https") else text

    return parse


@attrs.frozen
class _Setting:
    yaml: str
    env: str
    section: str | None
    name: str
    parse: Parser


_MS_DAY: Final = 86_400_000
SETTINGS: Final[tuple[_Setting, ...]] = (
    _Setting("server.host", "KICI_PLATFORM_HOST", "server", "host", _text),
    _Setting("server.port", "KICI_PLATFORM_PORT", "server", "port", _integer(0, MAX_PORT)),
    _Setting("server.publicUrl", "KICI_PLATFORM_PUBLIC_URL", "server", "public_url", _url(("http", "https"))),
    _Setting(
        "database.url", "KICI_PLATFORM_DATABASE_URL", "database", "url", _url(("postgresql", "postgres"))
    ),
    _Setting("dataDir", "KICI_PLATFORM_DATA_DIR", None, "data_dir", _text),
    _Setting(
        "webhooks.maxBodyBytes",
        "KICI_PLATFORM_MAX_WEBHOOK_BYTES",
        "webhooks",
        "max_body_bytes",
        _integer(1, MAX_RELAY_BODY_BYTES),
    ),
    _Setting(
        "webhooks.ackTimeoutMs",
        "KICI_PLATFORM_ACK_TIMEOUT_MS",
        "webhooks",
        "ack_timeout_ms",
        _integer(1, 60_000),
    ),
    _Setting(
        "webhooks.retryAfterSeconds",
        "KICI_PLATFORM_RETRY_AFTER_S",
        "webhooks",
        "retry_after_s",
        _integer(1, 3_600),
    ),
    _Setting(
        "webhooks.unknownSourceCacheMs",
        "KICI_PLATFORM_UNKNOWN_SOURCE_MS",
        "webhooks",
        "unknown_source_cache_ms",
        _integer(0, _MS_DAY),
    ),
    _Setting(
        "orchestrators.authTimeoutMs",
        "KICI_PLATFORM_AUTH_TIMEOUT_MS",
        "orchestrators",
        "auth_timeout_ms",
        _integer(1, 600_000),
    ),
    _Setting(
        "orchestrators.unhealthyAfterMs",
        "KICI_PLATFORM_UNHEALTHY_MS",
        "orchestrators",
        "unhealthy_after_ms",
        _integer(1, _MS_DAY),
    ),
    _Setting(
        "orchestrators.staleAfterMs",
        "KICI_PLATFORM_STALE_MS",
        "orchestrators",
        "stale_after_ms",
        _integer(1, _MS_DAY),
    ),
    _Setting(
        "orchestrators.revocationSweepMs",
        "KICI_PLATFORM_REVOCATION_SWEEP_MS",
        "orchestrators",
        "revocation_sweep_ms",
        _integer(100, _MS_DAY),
    ),
    _Setting(
        "orchestrators.requestTimeoutMs",
        "KICI_PLATFORM_REQUEST_TIMEOUT_MS",
        "orchestrators",
        "request_timeout_ms",
        _integer(1, 600_000),
    ),
    _Setting("logging.level", "KICI_PLATFORM_LOG_LEVEL", "logging", "level", _choice(LOG_LEVELS)),
    _Setting("logging.format", "KICI_PLATFORM_LOG_FORMAT", "logging", "format", _choice(LOG_FORMATS)),
)

_SECTIONS: Final = frozenset(s.section for s in SETTINGS if s.section is not None)
_YAML_KEYS: Final = frozenset(s.yaml for s in SETTINGS)
_ENV_NAMES: Final = frozenset(s.env for s in SETTINGS) | {CONFIG_ENV}


def _suggest(name: str, known: frozenset[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f"did you mean {close[0]}?" if close else f"known: {', '.join(sorted(known))}"


def _flatten(tree: Mapping[str, Any] | None, yaml: YamlSource, problems: list[Problem]) -> dict[str, Any]:
    """The file's settings by dotted key; unknown keys and non-mapping sections become problems."""
    flat: dict[str, Any] = {}
    for key, value in (tree or {}).items():
        name = str(key)
        if name in _SECTIONS:
            if value is None:
                continue
            if not isinstance(value, Mapping):
                problems.append(Problem(yaml.where(name), f"expected a mapping, got {describe(value)}"))
                continue
            for sub, item in value.items():
                dotted = f"{name}.{sub}"
                if dotted in _YAML_KEYS:
                    flat[dotted] = item
                else:
                    problems.append(
                        Problem(yaml.where(dotted), "unknown setting", _suggest(dotted, _YAML_KEYS))
                    )
        elif name in _YAML_KEYS:
            flat[name] = value
        else:
            problems.append(
                Problem(yaml.where(name), "unknown setting", _suggest(name, _YAML_KEYS | _SECTIONS))
            )
    return flat


def build_config(
    tree: Mapping[str, Any] | None, env: Mapping[str, str], yaml: YamlSource | None = None
) -> PlatformConfig:
    """The validated config from a parsed file tree and the environment; raises `ConfigError`."""
    source = yaml or YamlSource()
    problems: list[Problem] = []
    flat = _flatten(tree, source, problems)
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name not in _ENV_NAMES and name not in ORCHESTRATOR_NAMES:
            problems.append(Problem(name, "unknown variable", _suggest(name, _ENV_NAMES)))
    values: dict[tuple[str | None, str], Any] = {}
    for setting in SETTINGS:
        raw_env = env.get(setting.env, "")
        if raw_env.strip():
            where, raw, from_env = setting.env, raw_env, True
        elif flat.get(setting.yaml) is not None:
            where, raw, from_env = source.where(setting.yaml), flat[setting.yaml], False
        else:
            continue
        try:
            values[(setting.section, setting.name)] = setting.parse(raw, from_env)
        except ValueError as exc:
            shown = describe(raw)
            problems.append(
                Problem(
                    where, f"{exc}, got {shown}", f"set {setting.env} or {setting.yaml} in the config file"
                )
            )

    def section(cls: type[Any], name: str) -> Any:
        fields = {field: value for (owner, field), value in values.items() if owner == name}
        return cls(**fields)

    config = PlatformConfig(
        server=section(ServerSettings, "server"),
        database=section(DatabaseSettings, "database"),
        data_dir=values.get((None, "data_dir")),
        webhooks=section(WebhookSettings, "webhooks"),
        orchestrators=section(OrchestratorLinkSettings, "orchestrators"),
        logging=section(LoggingSettings, "logging"),
    )
    links = config.orchestrators
    if links.unhealthy_after_ms > links.stale_after_ms:
        problems.append(
            Problem(
                "orchestrators.unhealthyAfterMs",
                f"{links.unhealthy_after_ms} is above orchestrators.staleAfterMs {links.stale_after_ms}",
                "a link must turn unhealthy before it is closed as stale",
            )
        )
    if problems:
        raise ConfigError(problems)
    return config


def locate(cli_path: str | None, env: Mapping[str, str]) -> ConfigLocation:
    if cli_path:
        return ConfigLocation(cli_path, explicit=True)
    named = env.get(CONFIG_ENV, "")
    if named:
        return ConfigLocation(named, explicit=True)
    return ConfigLocation(DEFAULT_CONFIG_FILE, explicit=False)


def load_platform_config(
    cli_path: str | None = None, environ: Mapping[str, str] | None = None
) -> PlatformConfig:
    """Read the file and the environment; raises ``ConfigFileError`` or `ConfigError`."""
    env = dict(os.environ if environ is None else environ)
    document = read_config_file(locate(cli_path, env))
    return build_config(document.tree, env, document.source)


def resolve_data_dir(
    configured: str | None, *, is_root: bool, home: str, xdg_data_home: str | None
) -> PurePosixPath:
    """Where the Platform keeps its state (see the module docstring)."""
    if configured:
        return PurePosixPath(configured)
    if is_root:
        return SYSTEM_DATA_ROOT / TIER
    base = (
        PurePosixPath(xdg_data_home)
        if xdg_data_home and xdg_data_home.startswith("/")
        else PurePosixPath(home) / ".local/share"
    )
    return base / "kici" / TIER


def data_dir_of(config: PlatformConfig) -> Path:
    """The resolved data dir of this process, created if missing."""
    path = Path(
        str(
            resolve_data_dir(
                config.data_dir,
                is_root=os.geteuid() == 0,
                home=str(Path.home()),
                xdg_data_home=os.environ.get("XDG_DATA_HOME"),
            )
        )
    )
    path.mkdir(parents=True, exist_ok=True)
    return path


__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_FILE",
    "SETTINGS",
    "DatabaseSettings",
    "LoggingSettings",
    "OrchestratorLinkSettings",
    "PlatformConfig",
    "ServerSettings",
    "WebhookSettings",
    "build_config",
    "data_dir_of",
    "load_platform_config",
    "locate",
    "resolve_data_dir",
]
