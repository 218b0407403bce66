"""The typed configuration of the orchestrator and the agent (OPS-01, OPS-04, CFG-01).

Each tier's settings are one frozen attrs tree whose defaults are the spec's (50 §9, 20 §17, 40 §5
CFG-03). Where a leaf's YAML path and ``KICI_*`` names live is not here but in
:mod:`kici.domain.config.layering`; this module only says what a valid value looks like, through the
field type and the :class:`Constraints` in the field's metadata, so that one reader of the types
(:func:`leaf_type`) drives coercion, validation and test-data generation alike.

Choices where the spec is silent or where the house plan overrides it:

* ``None`` means "not configured" (no platform URL, no external database, no fixed instance id); the
  tier's composition root fills generated values (instance id, agent id) and persists them.
* The agent sandboxes steps by default (``sandbox=True``): ARCHITECTURE.md wins over KiCI's
  ``KICI_SANDBOX=false``; ``KICI_SANDBOX=false`` is the explicit opt-out.
* The agent link's heartbeat, reconnect cap and buffer sizes (20 §17) have no ``KICI_*`` name in
  the spec; they are YAML-only so tests and unusual networks can tune them.
* ``port`` 0 is allowed: the server binds any free port (tests, several tiers on one host).
* ``server.host`` (``KICI_SERVER_HOST``, not in the spec) is the address the orchestrator listens
  on, every interface by default; tests and single-host setups set ``127.0.0.1``.
"""

import re
import types
from collections.abc import Mapping
from enum import Enum, StrEnum
from typing import Any, TypeVar, Union, cast, get_args, get_origin

import attrs

from kici.domain.config.sources import SourceConfig

T = TypeVar("T")

CONSTRAINTS = "kici.config"
SECTION = "kici.config.section"
"""Field metadata of a structured section (a list of settings blocks, read by its own parser): it is
not a leaf, has no env name, and is carried whole through layering and reloads."""
MAX_PORT = 65_535


class Mode(StrEnum):
    PLATFORM = "platform"
    HYBRID = "hybrid"
    INDEPENDENT = "independent"


class RunEnv(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"
    TEST = "test"


class LogLevel(StrEnum):
    TRACE = "trace"
    DEBUG = "debug"
    INFO = "info"
    WARN = "warn"
    ERROR = "error"
    FATAL = "fatal"
    SILENT = "silent"


class LogFormat(StrEnum):
    AUTO = "auto"
    PLAIN = "plain"
    JSON = "json"


class AgentAuth(StrEnum):
    TOKEN = "token"
    NONE = "none"


class StorageType(StrEnum):
    S3 = "s3"
    FILESYSTEM = "filesystem"


class ClusterRole(StrEnum):
    COORDINATOR = "coordinator"
    WORKER = "worker"


class BackpressureMode(StrEnum):
    PAUSE = "pause"
    DROP = "drop"


class SandboxNetwork(StrEnum):
    ISOLATED = "isolated"
    HOST = "host"


class ExecutionMode(StrEnum):
    BARE_METAL = "bare-metal"
    CONTAINER = "container"
    FIRECRACKER = "firecracker"


@attrs.frozen
class Constraints:
    """What a leaf accepts beyond its type; checked value by value so every problem is reported."""

    minimum: float | None = None
    maximum: float | None = None
    secret: bool = False
    pattern: str | None = None
    pattern_hint: str = ""
    absolute_path: bool = False
    url_schemes: tuple[str, ...] = ()


NO_CONSTRAINTS = Constraints()


def limits(
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    secret: bool = False,
    pattern: str | None = None,
    pattern_hint: str = "",
    absolute_path: bool = False,
    url_schemes: tuple[str, ...] = (),
) -> dict[str, Constraints]:
    """Field metadata carrying a leaf's :class:`Constraints`."""
    return {
        CONSTRAINTS: Constraints(minimum, maximum, secret, pattern, pattern_hint, absolute_path, url_schemes)
    }


WS_SCHEMES = ("ws", "wss", "http", "https")
HTTP_SCHEMES = ("http", "https")
SIZE_PATTERN = r"^\d+[kmgKMG]?$"
CLUSTER_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
AGENT_TOKEN_PATTERN = r"^kat_[0-9a-f]{64}$"


POSITIVE = limits(minimum=1)
NON_NEGATIVE = limits(minimum=0)
SECRET = limits(secret=True)
ABSOLUTE = limits(absolute_path=True)
HTTP_URL = limits(url_schemes=HTTP_SCHEMES)
WS_URL = limits(url_schemes=WS_SCHEMES)


# --- orchestrator -------------------------------------------------------------------------------


@attrs.frozen
class ServerConfig:
    mode: Mode = Mode.PLATFORM
    host: str = "0.0.0.0"
    port: int = attrs.field(default=4000, metadata=limits(minimum=0, maximum=MAX_PORT))
    base_path: str = attrs.field(
        default="/", metadata=limits(pattern=r"^/", pattern_hint="a path starting with /")
    )
    tls_cert_path: str | None = attrs.field(default=None, metadata=ABSOLUTE)
    env: RunEnv = RunEnv.DEVELOPMENT


@attrs.frozen
class LoggingConfig:
    level: LogLevel = LogLevel.INFO
    format: LogFormat = LogFormat.AUTO
    dir: str | None = attrs.field(default=None, metadata=ABSOLUTE)
    retention_days: int = attrs.field(default=7, metadata=POSITIVE)
    max_size: str = attrs.field(
        default="500m",
        metadata=limits(pattern=SIZE_PATTERN, pattern_hint="a size such as 500m, 2g or 1048576"),
    )


@attrs.frozen
class DatabaseConfig:
    url: str | None = attrs.field(
        default=None, metadata=limits(secret=True, url_schemes=("postgresql", "postgres"))
    )
    auto_migrate: bool = True


@attrs.frozen
class PlatformConfig:
    url: str | None = attrs.field(default=None, metadata=WS_URL)
    token: str | None = attrs.field(default=None, metadata=SECRET)
    dashboard_url: str | None = attrs.field(default=None, metadata=HTTP_URL)
    webhook_public_url: str | None = attrs.field(default=None, metadata=HTTP_URL)
    provenance_issuer: str | None = None
    replay_window_hours: int = attrs.field(default=24, metadata=NON_NEGATIVE)


@attrs.frozen
class SecretsConfig:
    key: str | None = attrs.field(default=None, metadata=SECRET)
    key_file: str | None = attrs.field(default=None, metadata=ABSOLUTE)
    key_old: str | None = attrs.field(default=None, metadata=SECRET)
    key_file_old: str | None = attrs.field(default=None, metadata=ABSOLUTE)
    bootstrap_admin_token: str | None = attrs.field(default=None, metadata=SECRET)
    pg_customer_secrets: bool = True


@attrs.frozen
class AgentsConfig:
    auth: AgentAuth = AgentAuth.TOKEN
    token_ttl_ms: int = attrs.field(default=3_600_000, metadata=POSITIVE)
    max_reconnect_delay_ms: int = attrs.field(default=60_000, metadata=POSITIVE)
    dispatch_ack_timeout_ms: int = attrs.field(default=10_000, metadata=POSITIVE)
    concurrency_wait_timeout_ms: int = attrs.field(default=3_600_000, metadata=POSITIVE)
    worker_concurrency: int = attrs.field(default=5, metadata=POSITIVE)
    roster_grace_ms: int = attrs.field(default=300_000, metadata=NON_NEGATIVE)
    roster_ttl_ms: int = attrs.field(default=1_800_000, metadata=POSITIVE)
    host_reboot_deadline_ms: int = attrs.field(default=900_000, metadata=POSITIVE)
    orchestrator_host_agent_id: str | None = None
    max_fanout_hosts: int = attrs.field(default=1024, metadata=POSITIVE)
    github_app_name_refresh_interval_ms: int = attrs.field(default=86_400_000, metadata=POSITIVE)


@attrs.frozen
class QueueConfig:
    max_depth: int = attrs.field(default=1000, metadata=POSITIVE)
    timeout_ms: int = attrs.field(default=3_600_000, metadata=NON_NEGATIVE)
    backpressure_threshold: int = attrs.field(default=100, metadata=NON_NEGATIVE)


@attrs.frozen
class LockfileCacheConfig:
    max_entries: int = attrs.field(default=500, metadata=POSITIVE)
    ttl_ms: int = attrs.field(default=3_600_000, metadata=POSITIVE)


@attrs.frozen
class StaleDetectorConfig:
    scan_interval_ms: int = attrs.field(default=60_000, metadata=POSITIVE)
    threshold_multiplier: float = attrs.field(default=2.0, metadata=POSITIVE)
    heartbeat_interval_ms: int = attrs.field(default=60_000, metadata=POSITIVE)


@attrs.frozen
class EventRouterConfig:
    max_chain_depth: int = attrs.field(default=10, metadata=POSITIVE)
    rate_limit_per_workflow_per_minute: int = attrs.field(default=100, metadata=POSITIVE)
    event_ttl_seconds: int = attrs.field(default=604_800, metadata=POSITIVE)
    cleanup_interval_ms: int = attrs.field(default=3_600_000, metadata=POSITIVE)
    max_dispatch_attempts: int = attrs.field(default=5, metadata=POSITIVE)
    lease_duration_ms: int = attrs.field(default=60_000, metadata=POSITIVE)
    retry_base_backoff_ms: int = attrs.field(default=5_000, metadata=POSITIVE)
    retry_max_backoff_ms: int = attrs.field(default=300_000, metadata=POSITIVE)
    retry_scan_interval_ms: int = attrs.field(default=10_000, metadata=POSITIVE)


@attrs.frozen
class EventLogConfig:
    max_payload_bytes: int = attrs.field(default=5_242_880, metadata=POSITIVE)


@attrs.frozen
class StorageConfig:
    type: StorageType | None = None
    bucket: str | None = None
    prefix: str = ""
    region: str | None = None
    endpoint: str | None = attrs.field(default=None, metadata=HTTP_URL)
    external_endpoint: str | None = attrs.field(default=None, metadata=HTTP_URL)
    upload_endpoint: str | None = attrs.field(default=None, metadata=HTTP_URL)
    force_path_style: bool = False
    log_bucket: str | None = None
    fs_path: str | None = None
    fs_base_url: str | None = attrs.field(default=None, metadata=HTTP_URL)
    path: str | None = attrs.field(default=None, metadata=ABSOLUTE)
    skip_sentinel_validation: bool = False


@attrs.frozen
class CacheConfig:
    ttl_days: int = attrs.field(default=30, metadata=POSITIVE)
    build_timeout_ms: int = attrs.field(default=600_000, metadata=POSITIVE)
    max_tarball_bytes: int = attrs.field(default=524_288_000, metadata=POSITIVE)
    user_quota_bytes: int = attrs.field(default=5_368_709_120, metadata=POSITIVE)
    user_ttl_ms: int = attrs.field(default=604_800_000, metadata=POSITIVE)


@attrs.frozen
class PathsConfig:
    data_dir: str | None = attrs.field(default=None, metadata=ABSOLUTE)
    webhook_payload_dir: str | None = attrs.field(default=None, metadata=ABSOLUTE)
    machine_ledger_dir: str | None = attrs.field(default=None, metadata=ABSOLUTE)


@attrs.frozen
class ScalerConfig:
    config_path: str | None = None
    config_dir: str | None = None


@attrs.frozen
class ClusterConfig:
    name: str | None = attrs.field(
        default=None,
        metadata=limits(
            pattern=CLUSTER_NAME_PATTERN, pattern_hint="lower-case letters, digits and -, at most 63"
        ),
    )
    instance_id: str | None = None
    role: ClusterRole = ClusterRole.COORDINATOR
    coordinator_url: str | None = attrs.field(default=None, metadata=WS_URL)
    coordinator_urls: tuple[str, ...] = ()
    address: str | None = None
    peers: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    join_token: str | None = attrs.field(default=None, metadata=SECRET)
    credential_file: str = "~/.kici/peer-credential"
    auto_rotate_credentials: bool = False
    peer_heartbeat_interval_ms: int = attrs.field(default=30_000, metadata=POSITIVE)
    peer_stale_timeout_ms: int = attrs.field(default=60_000, metadata=POSITIVE)
    peer_max_reconnect_delay_ms: int = attrs.field(default=60_000, metadata=POSITIVE)
    lease_ttl_ms: int = attrs.field(default=15_000, metadata=POSITIVE)
    lease_renew_ms: int = attrs.field(default=5_000, metadata=POSITIVE)
    lease_poll_ms: int = attrs.field(default=5_000, metadata=POSITIVE)


@attrs.frozen
class TelemetryConfig:
    otlp_endpoint: str | None = attrs.field(default=None, metadata=HTTP_URL)


@attrs.frozen
class SelfTestConfig:
    """Switches that exist only for kici's own test suites (50 §9 misc)."""

    test_mode: bool = False
    event_fail_first_n: Mapping[str, int] = attrs.field(factory=dict, hash=False)


@attrs.frozen
class OrchestratorConfig:
    """Everything one orchestrator process needs, after defaults, YAML and ``KICI_*`` are layered.

    ``agent_env``, ``deploy`` and ``cold_store`` hold the env-only families ``KICI_AGENT_ENV_<X>``
    (forwarded to spawned agents as ``<X>``), ``KICI_DEPLOY_<X>`` (OPS-18) and ``KICI_COLD_STORE_<X>``
    (OPS-16), keyed by ``<X>``; the subsystems that own them interpret their contents.
    """

    server: ServerConfig = attrs.field(factory=ServerConfig)
    logging: LoggingConfig = attrs.field(factory=LoggingConfig)
    database: DatabaseConfig = attrs.field(factory=DatabaseConfig)
    platform: PlatformConfig = attrs.field(factory=PlatformConfig)
    secrets: SecretsConfig = attrs.field(factory=SecretsConfig)
    agents: AgentsConfig = attrs.field(factory=AgentsConfig)
    queue: QueueConfig = attrs.field(factory=QueueConfig)
    lockfile_cache: LockfileCacheConfig = attrs.field(factory=LockfileCacheConfig)
    stale_detector: StaleDetectorConfig = attrs.field(factory=StaleDetectorConfig)
    event_router: EventRouterConfig = attrs.field(factory=EventRouterConfig)
    event_log: EventLogConfig = attrs.field(factory=EventLogConfig)
    storage: StorageConfig = attrs.field(factory=StorageConfig)
    cache: CacheConfig = attrs.field(factory=CacheConfig)
    paths: PathsConfig = attrs.field(factory=PathsConfig)
    scaler: ScalerConfig = attrs.field(factory=ScalerConfig)
    cluster: ClusterConfig = attrs.field(factory=ClusterConfig)
    telemetry: TelemetryConfig = attrs.field(factory=TelemetryConfig)
    testing: SelfTestConfig = attrs.field(factory=SelfTestConfig)
    agent_env: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    deploy: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    cold_store: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    sources: tuple[SourceConfig, ...] = attrs.field(default=(), metadata={SECTION: "sources"})


# --- agent --------------------------------------------------------------------------------------


@attrs.frozen
class ConnectionConfig:
    orchestrator_url: str | None = attrs.field(default=None, metadata=WS_URL)
    agent_id: str | None = None
    token: str | None = attrs.field(
        default=None,
        metadata=limits(
            secret=True, pattern=AGENT_TOKEN_PATTERN, pattern_hint="kat_ followed by 64 hex digits"
        ),
    )
    heartbeat_interval_ms: int = attrs.field(default=30_000, metadata=POSITIVE)
    max_reconnect_delay_ms: int = attrs.field(default=60_000, metadata=POSITIVE)
    event_buffer_size: int = attrs.field(default=5_000, metadata=POSITIVE)
    log_buffer_lines: int = attrs.field(default=10_000, metadata=POSITIVE)


@attrs.frozen
class IdentityConfig:
    labels: tuple[str, ...] = ()
    roles: tuple[str, ...] | None = None
    properties: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    is_orchestrator_host: bool = False


@attrs.frozen
class ExecutionConfig:
    mode: ExecutionMode | None = None
    sandbox: bool = True
    sandbox_network: SandboxNetwork = SandboxNetwork.ISOLATED
    docker_keep_failed: bool = False
    default_step_timeout_ms: int = attrs.field(default=1_800_000, metadata=POSITIVE)
    max_concurrent_jobs: int = attrs.field(default=1, metadata=POSITIVE)
    github_token: str | None = attrs.field(default=None, metadata=SECRET)
    concurrency_wait_timeout_ms: int = attrs.field(default=3_600_000, metadata=POSITIVE)
    job_heartbeat_interval_ms: int = attrs.field(default=60_000, metadata=POSITIVE)


@attrs.frozen
class AgentScalerConfig:
    managed: bool = False
    idle_timeout_ms: int = attrs.field(default=5_000, metadata=POSITIVE)
    pending_dispatch_timeout_ms: int = attrs.field(default=60_000, metadata=POSITIVE)


@attrs.frozen
class LogShippingConfig:
    backpressure_mode: BackpressureMode = BackpressureMode.PAUSE
    max_log_size_bytes: int = attrs.field(default=10_485_760, metadata=POSITIVE)


@attrs.frozen
class AgentServerConfig:
    port: int = attrs.field(default=8080, metadata=limits(minimum=0, maximum=MAX_PORT))


@attrs.frozen
class AgentPathsConfig:
    data_dir: str | None = attrs.field(default=None, metadata=ABSOLUTE)


@attrs.frozen
class AgentConfig:
    """Everything one agent process needs (OPS-04); ``deploy`` holds ``KICI_DEPLOY_<X>`` by ``<X>``."""

    connection: ConnectionConfig = attrs.field(factory=ConnectionConfig)
    identity: IdentityConfig = attrs.field(factory=IdentityConfig)
    execution: ExecutionConfig = attrs.field(factory=ExecutionConfig)
    scaler: AgentScalerConfig = attrs.field(factory=AgentScalerConfig)
    logs: LogShippingConfig = attrs.field(factory=LogShippingConfig)
    server: AgentServerConfig = attrs.field(factory=AgentServerConfig)
    logging: LoggingConfig = attrs.field(factory=LoggingConfig)
    paths: AgentPathsConfig = attrs.field(factory=AgentPathsConfig)
    telemetry: TelemetryConfig = attrs.field(factory=TelemetryConfig)
    deploy: Mapping[str, str] = attrs.field(factory=dict, hash=False)


ConfigT = TypeVar("ConfigT", bound=OrchestratorConfig | AgentConfig)


# --- reading the types --------------------------------------------------------------------------


class Kind(Enum):
    STR = "a string"
    INT = "an integer"
    FLOAT = "a number"
    BOOL = "a boolean"
    ENUM = "one of"
    LIST = "a list of strings"
    MAP = "a mapping"


@attrs.frozen
class LeafType:
    """The shape of one leaf: its kind, whether ``None`` is valid, and the enum or map value type."""

    kind: Kind
    optional: bool = False
    enum: type[StrEnum] | None = None
    map_values: Kind = Kind.STR

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(member.value for member in self.enum) if self.enum is not None else ()


_SCALARS = {str: Kind.STR, int: Kind.INT, float: Kind.FLOAT, bool: Kind.BOOL}


def leaf_type(annotation: object) -> LeafType:
    """Classify a field annotation; an annotation outside the supported set is a programming error."""
    optional = False
    origin = get_origin(annotation)
    if origin is Union or isinstance(annotation, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(members) != 1:
            raise TypeError(f"unsupported config annotation {annotation!r}")
        optional = True
        annotation = members[0]
        origin = get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, StrEnum):
        return LeafType(Kind.ENUM, optional, enum=annotation)
    if annotation in _SCALARS:
        return LeafType(_SCALARS[annotation], optional)
    if origin is tuple and get_args(annotation) == (str, ...):
        return LeafType(Kind.LIST, optional)
    if origin is Mapping and get_args(annotation)[0] is str:
        value = get_args(annotation)[1]
        if value in (str, int):
            return LeafType(Kind.MAP, optional, map_values=_SCALARS[value])
    raise TypeError(f"unsupported config annotation {annotation!r}")


@attrs.frozen
class SchemaLeaf:
    """One settable value of a config tree, addressed by its Python attribute path."""

    attr: str
    type: LeafType
    default: object
    constraints: Constraints


def _is_group(annotation: object) -> bool:
    return isinstance(annotation, type) and attrs.has(annotation)


def section_names(cls: type) -> dict[str, str]:
    """The structured sections of a config class: attribute name -> YAML key (top level only)."""
    return {field.name: field.metadata[SECTION] for field in attrs.fields(cls) if SECTION in field.metadata}


def schema_leaves(cls: type) -> dict[str, SchemaLeaf]:
    """Every leaf of a config class by attribute path (``server.port``), in declaration order."""
    out: dict[str, SchemaLeaf] = {}

    def walk(klass: type, prefix: str) -> None:
        for field in attrs.fields(klass):
            path = f"{prefix}{field.name}"
            if SECTION in field.metadata:
                continue
            if _is_group(field.type):
                walk(cast(type, field.type), f"{path}.")
                continue
            default = field.default
            if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                default = default.factory()
            constraints = field.metadata.get(CONSTRAINTS, NO_CONSTRAINTS)
            out[path] = SchemaLeaf(path, leaf_type(field.type), default, constraints)

    walk(cls, "")
    return out


def get_leaf(config: object, attr: str) -> object:
    """The value at ``attr`` (``"server.port"``) of a config tree."""
    value = config
    for part in attr.split("."):
        value = getattr(value, part)
    return value


def build(cls: type[ConfigT], values: Mapping[str, object]) -> ConfigT:
    """A config tree from leaf (and section) values by attribute path; missing ones keep their defaults."""

    def make(klass: type, prefix: str) -> Any:
        kwargs: dict[str, Any] = {}
        for field in attrs.fields(klass):
            path = f"{prefix}{field.name}"
            if _is_group(field.type):
                kwargs[field.name] = make(cast(type, field.type), f"{path}.")
            elif path in values:
                kwargs[field.name] = values[path]
        return klass(**kwargs)

    return cast(ConfigT, make(cls, ""))


def with_leaves(config: ConfigT, values: Mapping[str, object]) -> ConfigT:
    """``config`` with the leaves in ``values`` replaced; every other leaf is kept as is."""
    current = {attr: get_leaf(config, attr) for attr in schema_leaves(type(config))}
    current.update({name: getattr(config, name) for name in section_names(type(config))})
    return build(type(config), {**current, **values})


def compiled_pattern(constraints: Constraints) -> re.Pattern[str] | None:
    return re.compile(constraints.pattern) if constraints.pattern is not None else None
