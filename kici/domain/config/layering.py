"""Where each setting comes from: the key table and the per-leaf merge of defaults < YAML < env (CFG-03).

Every leaf of :mod:`kici.domain.config.schema` has one row here: its attribute path in the attrs tree,
its dotted camelCase path in the YAML file (KiCI's config paths, CFG-01/CFG-04, so existing KiCI files
keep working) and its ``KICI_*`` names, the primary name first and then the aliases the spec keeps
(``KICI_INSTANCE_MODE`` for ``KICI_MODE`` ...). Keys without an env name are YAML-only.

The merge is per leaf, not per tree: a leaf takes the env value when one is set, else the YAML value,
else the shared (database) value, else the default. A list is one leaf, so a higher layer replaces it
whole, and a ``null`` in YAML or in the shared layer means "not set here", so it never hides a lower
layer. The merge keeps values raw (env strings, YAML scalars); :mod:`kici.domain.config.validate`
coerces them, because only there is it known whether a problem should name the env variable or the
YAML path.

Choices where the spec is silent:

* An env variable set to the empty string counts as not set (systemd ``EnvironmentFile`` templates
  leave placeholders empty), except for plain string and list leaves, where empty is a real value
  (``KICI_STORAGE_PREFIX=`` is the empty prefix, ``KICI_ROLES=`` means "no roles").
* When a name and its alias are both set to different values the merge uses the primary name and
  reports an :class:`AliasConflict`; the loader turns it into an error, because silently preferring
  one of two contradicting settings hides a misconfiguration.
"""

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import attrs

from kici.domain.config.schema import AgentConfig, Kind, OrchestratorConfig, SchemaLeaf, schema_leaves


class Tier(StrEnum):
    ORCHESTRATOR = "orchestrator"
    AGENT = "agent"


@attrs.frozen
class Key:
    """One leaf's addresses: attribute path, YAML path and env names (primary first)."""

    attr: str
    yaml: str
    env: tuple[str, ...] = ()


@attrs.frozen
class Family:
    """An env-only prefix whose variables are collected by suffix into one mapping leaf."""

    prefix: str
    attr: str


def _k(attr: str, yaml: str, *env: str) -> Key:
    return Key(attr, yaml, env)


ORCHESTRATOR_KEYS: tuple[Key, ...] = (
    # server
    _k("server.mode", "instance.mode", "KICI_MODE", "KICI_INSTANCE_MODE"),
    _k("server.host", "server.host", "KICI_SERVER_HOST"),
    _k("server.port", "server.port", "KICI_PORT", "KICI_SERVER_PORT"),
    _k("server.base_path", "server.basePath", "KICI_BASE_PATH", "KICI_SERVER_BASE_PATH"),
    _k("server.tls_cert_path", "server.tlsCertPath", "KICI_SERVER_TLS_CERT_PATH"),
    # Not KICI_ENV (50 §9): that name is the step env-delta file the runner sets in every step (EXE-23).
    _k("server.env", "server.env", "KICI_RUNTIME_ENV"),
    # logging
    _k("logging.level", "server.logLevel", "KICI_LOG_LEVEL", "KICI_SERVER_LOG_LEVEL"),
    _k("logging.format", "logging.format", "KICI_LOG_FORMAT"),
    _k("logging.dir", "logging.dir", "KICI_LOG_DIR"),
    _k("logging.retention_days", "logging.retentionDays", "KICI_LOG_RETENTION_DAYS"),
    _k("logging.max_size", "logging.maxSize", "KICI_LOG_MAX_SIZE"),
    # database
    _k("database.url", "database.url", "KICI_DATABASE_URL"),
    _k("database.auto_migrate", "database.autoMigrate", "KICI_AUTO_MIGRATE"),
    # platform
    _k("platform.url", "platform.url", "KICI_PLATFORM_URL"),
    _k("platform.token", "platform.token", "KICI_PLATFORM_TOKEN"),
    _k("platform.dashboard_url", "platform.dashboardUrl", "KICI_DASHBOARD_URL"),
    _k("platform.webhook_public_url", "platform.webhookPublicUrl", "KICI_WEBHOOK_PUBLIC_URL"),
    _k("platform.provenance_issuer", "provenanceIssuer", "KICI_PROVENANCE_ISSUER"),
    _k(
        "platform.replay_window_hours",
        "platform.reconnectReplayWindowHours",
        "KICI_ORCH_RECONNECT_REPLAY_WINDOW_HOURS",
    ),
    # secrets
    _k("secrets.key", "secrets.key", "KICI_SECRET_KEY"),
    _k("secrets.key_file", "secrets.keyFile", "KICI_SECRET_KEY_FILE"),
    _k("secrets.key_old", "secrets.keyOld", "KICI_SECRET_KEY_OLD"),
    _k("secrets.key_file_old", "secrets.keyFileOld", "KICI_SECRET_KEY_FILE_OLD"),
    _k("secrets.bootstrap_admin_token", "secrets.bootstrapAdminToken", "KICI_BOOTSTRAP_ADMIN_TOKEN"),
    _k("secrets.pg_customer_secrets", "pgCustomerSecrets", "KICI_PG_CUSTOMER_SECRETS"),
    # agents and dispatch
    _k("agents.auth", "agentAuth", "KICI_AGENT_AUTH"),
    _k("agents.token_ttl_ms", "agentTokenTtlMs", "KICI_AGENT_TOKEN_TTL_MS"),
    _k("agents.max_reconnect_delay_ms", "agentMaxReconnectDelayMs", "KICI_AGENT_MAX_RECONNECT_DELAY_MS"),
    _k("agents.dispatch_ack_timeout_ms", "dispatchAckTimeoutMs", "KICI_DISPATCH_ACK_TIMEOUT_MS"),
    _k("agents.concurrency_wait_timeout_ms", "concurrencyWaitTimeoutMs", "KICI_CONCURRENCY_WAIT_TIMEOUT_MS"),
    _k("agents.worker_concurrency", "workerConcurrency", "KICI_WORKER_CONCURRENCY"),
    _k("agents.roster_grace_ms", "rosterGraceMs", "KICI_ROSTER_GRACE_MS"),
    _k("agents.roster_ttl_ms", "rosterTtlMs", "KICI_ROSTER_TTL_MS"),
    _k("agents.host_reboot_deadline_ms", "hostRebootDeadlineMs", "KICI_HOST_REBOOT_DEADLINE_MS"),
    _k("agents.orchestrator_host_agent_id", "orchestratorHostAgentId", "KICI_ORCHESTRATOR_HOST_AGENT_ID"),
    _k("agents.max_fanout_hosts", "maxFanoutHosts", "KICI_MAX_FANOUT_HOSTS"),
    _k(
        "agents.github_app_name_refresh_interval_ms",
        "githubAppNameRefreshIntervalMs",
        "KICI_GITHUB_APP_NAME_REFRESH_INTERVAL_MS",
    ),
    _k("queue.max_depth", "queue.maxDepth", "KICI_QUEUE_MAX_DEPTH"),
    _k("queue.timeout_ms", "queue.timeoutMs", "KICI_QUEUE_TIMEOUT_MS"),
    _k("queue.backpressure_threshold", "queue.backpressureThreshold", "KICI_QUEUE_BACKPRESSURE_THRESHOLD"),
    _k("lockfile_cache.max_entries", "lockfileCache.max", "KICI_LOCKFILE_CACHE_MAX"),
    _k("lockfile_cache.ttl_ms", "lockfileCache.ttlMs", "KICI_LOCKFILE_CACHE_TTL_MS"),
    _k(
        "stale_detector.scan_interval_ms",
        "staleDetector.scanIntervalMs",
        "KICI_STALE_DETECTOR_SCAN_INTERVAL_MS",
    ),
    _k(
        "stale_detector.threshold_multiplier",
        "staleDetector.thresholdMultiplier",
        "KICI_STALE_DETECTOR_THRESHOLD_MULTIPLIER",
    ),
    _k(
        "stale_detector.heartbeat_interval_ms",
        "staleDetector.heartbeatIntervalMs",
        "KICI_JOB_HEARTBEAT_INTERVAL_MS",
    ),
    # events
    _k("event_router.max_chain_depth", "eventRouter.maxChainDepth", "KICI_EVENT_ROUTER_MAX_CHAIN_DEPTH"),
    _k(
        "event_router.rate_limit_per_workflow_per_minute",
        "eventRouter.rateLimitPerWorkflowPerMinute",
        "KICI_EVENT_ROUTER_RATE_LIMIT_PER_WORKFLOW_PER_MINUTE",
    ),
    _k(
        "event_router.event_ttl_seconds", "eventRouter.eventTtlSeconds", "KICI_EVENT_ROUTER_EVENT_TTL_SECONDS"
    ),
    _k(
        "event_router.cleanup_interval_ms",
        "eventRouter.cleanupIntervalMs",
        "KICI_EVENT_ROUTER_CLEANUP_INTERVAL_MS",
    ),
    _k(
        "event_router.max_dispatch_attempts",
        "eventRouter.maxDispatchAttempts",
        "KICI_EVENT_ROUTER_MAX_DISPATCH_ATTEMPTS",
    ),
    _k(
        "event_router.lease_duration_ms",
        "eventRouter.leaseDurationMs",
        "KICI_EVENT_ROUTER_LEASE_DURATION_MS",
    ),
    _k(
        "event_router.retry_base_backoff_ms",
        "eventRouter.retryBaseBackoffMs",
        "KICI_EVENT_ROUTER_RETRY_BASE_BACKOFF_MS",
    ),
    _k(
        "event_router.retry_max_backoff_ms",
        "eventRouter.retryMaxBackoffMs",
        "KICI_EVENT_ROUTER_RETRY_MAX_BACKOFF_MS",
    ),
    _k(
        "event_router.retry_scan_interval_ms",
        "eventRouter.retryScanIntervalMs",
        "KICI_EVENT_ROUTER_RETRY_SCAN_INTERVAL_MS",
    ),
    _k("event_log.max_payload_bytes", "eventLog.maxPayloadBytes", "KICI_EVENT_LOG_MAX_PAYLOAD_BYTES"),
    # storage
    _k("storage.type", "storage.type", "KICI_STORAGE_TYPE"),
    _k("storage.bucket", "storage.bucket", "KICI_STORAGE_BUCKET"),
    _k("storage.prefix", "storage.prefix", "KICI_STORAGE_PREFIX"),
    _k("storage.region", "storage.region", "KICI_STORAGE_REGION"),
    _k("storage.endpoint", "storage.endpoint", "KICI_STORAGE_ENDPOINT"),
    _k("storage.external_endpoint", "storage.externalEndpoint", "KICI_STORAGE_EXTERNAL_ENDPOINT"),
    _k("storage.upload_endpoint", "storage.uploadEndpoint", "KICI_STORAGE_UPLOAD_ENDPOINT"),
    _k("storage.force_path_style", "storage.forcePathStyle", "KICI_STORAGE_FORCE_PATH_STYLE"),
    _k("storage.log_bucket", "storage.logBucket", "KICI_STORAGE_LOG_BUCKET"),
    _k("storage.fs_path", "storage.fsPath", "KICI_STORAGE_FS_PATH"),
    _k("storage.fs_base_url", "storage.fsBaseUrl", "KICI_STORAGE_FS_BASE_URL"),
    _k("storage.path", "storage.path", "KICI_STORAGE_PATH"),
    _k(
        "storage.skip_sentinel_validation",
        "storage.skipSentinelValidation",
        "KICI_SKIP_S3_SENTINEL_VALIDATION",
    ),
    # cache
    _k("cache.ttl_days", "cacheTtlDays", "KICI_CACHE_TTL_DAYS"),
    _k("cache.build_timeout_ms", "cacheBuildTimeoutMs", "KICI_CACHE_BUILD_TIMEOUT_MS"),
    _k("cache.max_tarball_bytes", "cacheMaxTarballBytes", "KICI_CACHE_MAX_TARBALL_BYTES"),
    _k("cache.user_quota_bytes", "userCacheQuotaBytes", "KICI_USER_CACHE_QUOTA_BYTES"),
    _k("cache.user_ttl_ms", "userCacheTtlMs", "KICI_USER_CACHE_TTL_MS"),
    # paths and scaler files
    _k("paths.data_dir", "dataDir", "KICI_DATA_DIR"),
    _k("paths.webhook_payload_dir", "webhookPayloadDir", "KICI_WEBHOOK_PAYLOAD_DIR"),
    _k("paths.machine_ledger_dir", "machineLedgerDir", "KICI_MACHINE_LEDGER_DIR"),
    _k("scaler.config_path", "scaler.configPath", "KICI_SCALER_CONFIG_PATH"),
    _k("scaler.config_dir", "scaler.configDir", "KICI_SCALER_CONFIG_DIR"),
    # cluster
    _k("cluster.name", "cluster.name", "KICI_CLUSTER_NAME"),
    _k("cluster.instance_id", "instance.id", "KICI_CLUSTER_INSTANCE_ID", "KICI_INSTANCE_ID"),
    _k("cluster.role", "cluster.role", "KICI_CLUSTER_ROLE"),
    _k("cluster.coordinator_url", "cluster.coordinatorUrl", "KICI_CLUSTER_COORDINATOR_URL"),
    _k("cluster.coordinator_urls", "cluster.coordinatorUrls", "KICI_CLUSTER_COORDINATOR_URLS"),
    _k("cluster.address", "cluster.address", "KICI_CLUSTER_ADDRESS"),
    _k("cluster.peers", "cluster.peers", "KICI_CLUSTER_PEERS"),
    _k("cluster.trusted_proxies", "cluster.trustedProxies", "KICI_CLUSTER_TRUSTED_PROXIES"),
    _k("cluster.join_token", "cluster.joinToken", "KICI_CLUSTER_JOIN_TOKEN"),
    _k("cluster.credential_file", "cluster.credentialFile", "KICI_CLUSTER_CREDENTIAL_FILE"),
    _k(
        "cluster.auto_rotate_credentials",
        "cluster.autoRotateCredentials",
        "KICI_CLUSTER_AUTO_ROTATE_CREDENTIALS",
    ),
    _k(
        "cluster.peer_heartbeat_interval_ms",
        "cluster.peerHeartbeatIntervalMs",
        "KICI_CLUSTER_PEER_HEARTBEAT_INTERVAL_MS",
    ),
    _k(
        "cluster.peer_stale_timeout_ms",
        "cluster.peerStaleTimeoutMs",
        "KICI_CLUSTER_PEER_STALE_TIMEOUT_MS",
    ),
    _k(
        "cluster.peer_max_reconnect_delay_ms",
        "cluster.peerMaxReconnectDelayMs",
        "KICI_CLUSTER_PEER_MAX_RECONNECT_DELAY_MS",
    ),
    _k("cluster.lease_ttl_ms", "cluster.leaseTtlMs", "KICI_CLUSTER_LEASE_TTL_MS"),
    _k("cluster.lease_renew_ms", "cluster.leaseRenewMs", "KICI_CLUSTER_LEASE_RENEW_MS"),
    _k("cluster.lease_poll_ms", "cluster.leasePollMs", "KICI_CLUSTER_LEASE_POLL_MS"),
    # misc
    _k("telemetry.otlp_endpoint", "telemetry.otlpEndpoint", "OTEL_EXPORTER_OTLP_ENDPOINT"),
    _k("testing.test_mode", "testing.testMode", "KICI_TEST_MODE"),
    _k("testing.event_fail_first_n", "testing.eventFailFirstN", "KICI_TEST_EVENT_FAIL_FIRST_N"),
)

AGENT_KEYS: tuple[Key, ...] = (
    _k("connection.orchestrator_url", "orchestratorUrl", "KICI_ORCHESTRATOR_URL"),
    _k("connection.agent_id", "agentId", "KICI_AGENT_ID"),
    _k("connection.token", "agentToken", "KICI_AGENT_TOKEN"),
    _k("connection.heartbeat_interval_ms", "link.heartbeatIntervalMs"),
    _k("connection.max_reconnect_delay_ms", "link.maxReconnectDelayMs"),
    _k("connection.event_buffer_size", "link.eventBufferSize"),
    _k("connection.log_buffer_lines", "link.logBufferLines"),
    _k("identity.labels", "labels", "KICI_LABELS"),
    _k("identity.roles", "roles", "KICI_ROLES"),
    _k("identity.properties", "properties", "KICI_PROPERTIES"),
    _k("identity.is_orchestrator_host", "isOrchestratorHost", "KICI_AGENT_IS_ORCHESTRATOR_HOST"),
    _k("execution.mode", "executionMode", "KICI_EXECUTION_MODE"),
    _k("execution.sandbox", "sandbox.enabled", "KICI_SANDBOX"),
    _k("execution.sandbox_network", "sandbox.network", "KICI_SANDBOX_NETWORK"),
    _k("execution.docker_keep_failed", "docker.keepFailed", "KICI_DOCKER_KEEP_FAILED"),
    _k("execution.default_step_timeout_ms", "defaultStepTimeoutMs", "KICI_DEFAULT_STEP_TIMEOUT_MS"),
    _k("execution.max_concurrent_jobs", "maxConcurrentJobs", "KICI_MAX_CONCURRENT_JOBS"),
    _k("execution.github_token", "githubToken", "KICI_GITHUB_TOKEN"),
    _k(
        "execution.concurrency_wait_timeout_ms",
        "concurrencyWaitTimeoutMs",
        "KICI_CONCURRENCY_WAIT_TIMEOUT_MS",
    ),
    _k("execution.job_heartbeat_interval_ms", "jobHeartbeatIntervalMs", "KICI_JOB_HEARTBEAT_INTERVAL_MS"),
    _k("scaler.managed", "scaler.managed", "KICI_SCALER_MANAGED"),
    _k("scaler.idle_timeout_ms", "scaler.idleTimeoutMs", "KICI_SCALER_IDLE_TIMEOUT"),
    _k(
        "scaler.pending_dispatch_timeout_ms",
        "scaler.pendingDispatchTimeoutMs",
        "KICI_SCALER_PENDING_DISPATCH_TIMEOUT",
    ),
    _k("logs.backpressure_mode", "backpressureMode", "KICI_BACKPRESSURE_MODE"),
    _k("logs.max_log_size_bytes", "maxLogSizeBytes", "KICI_MAX_LOG_SIZE_BYTES"),
    _k("server.port", "port", "KICI_PORT"),
    _k("logging.level", "logging.level", "KICI_LOG_LEVEL"),
    _k("logging.format", "logging.format", "KICI_LOG_FORMAT"),
    _k("logging.dir", "logging.dir", "KICI_LOG_DIR"),
    _k("logging.retention_days", "logging.retentionDays", "KICI_LOG_RETENTION_DAYS"),
    _k("logging.max_size", "logging.maxSize", "KICI_LOG_MAX_SIZE"),
    _k("paths.data_dir", "dataDir", "KICI_DATA_DIR"),
    _k("telemetry.otlp_endpoint", "telemetry.otlpEndpoint", "OTEL_EXPORTER_OTLP_ENDPOINT"),
)

ORCHESTRATOR_FAMILIES: tuple[Family, ...] = (
    Family("KICI_AGENT_ENV_", "agent_env"),
    Family("KICI_DEPLOY_", "deploy"),
    Family("KICI_COLD_STORE_", "cold_store"),
)
AGENT_FAMILIES: tuple[Family, ...] = (Family("KICI_DEPLOY_", "deploy"),)


@attrs.frozen
class TierTable:
    """Everything the loader needs to know about one tier's addresses."""

    tier: Tier
    config_class: type[OrchestratorConfig] | type[AgentConfig]
    keys: tuple[Key, ...]
    families: tuple[Family, ...]
    leaves: Mapping[str, SchemaLeaf] = attrs.field(hash=False)

    @property
    def by_attr(self) -> dict[str, Key]:
        return {key.attr: key for key in self.keys}

    @property
    def yaml_paths(self) -> dict[str, Key]:
        return {key.yaml: key for key in self.keys}

    @property
    def env_names(self) -> dict[str, Key]:
        return {name: key for key in self.keys for name in key.env}

    @property
    def yaml_groups(self) -> frozenset[str]:
        """Every proper prefix of a YAML path: the keys that must hold a mapping."""
        parts = (key.yaml.split(".") for key in self.keys)
        return frozenset(".".join(p[:n]) for p in parts for n in range(1, len(p)))


def _table(
    tier: Tier,
    cls: type[OrchestratorConfig] | type[AgentConfig],
    keys: tuple[Key, ...],
    families: tuple[Family, ...],
) -> TierTable:
    return TierTable(tier, cls, keys, families, schema_leaves(cls))


TABLES: Mapping[Tier, TierTable] = {
    Tier.ORCHESTRATOR: _table(
        Tier.ORCHESTRATOR, OrchestratorConfig, ORCHESTRATOR_KEYS, ORCHESTRATOR_FAMILIES
    ),
    Tier.AGENT: _table(Tier.AGENT, AgentConfig, AGENT_KEYS, AGENT_FAMILIES),
}


# --- the merge ----------------------------------------------------------------------------------


class Source(StrEnum):
    DEFAULT = "default"
    SHARED = "shared"
    YAML = "yaml"
    ENV = "env"


@attrs.frozen
class Sourced:
    """A raw leaf value and where it came from: the env name, the YAML path, or nowhere (default)."""

    value: object
    source: Source
    name: str = ""


@attrs.frozen
class AliasConflict:
    attr: str
    names: tuple[str, ...]


@attrs.frozen
class Layered:
    """The merge's result: each leaf's winning raw value, the env families, and alias conflicts."""

    leaves: Mapping[str, Sourced] = attrs.field(hash=False)
    families: Mapping[str, Mapping[str, str]] = attrs.field(hash=False)
    conflicts: tuple[AliasConflict, ...] = ()


_MISSING = object()


def lookup(tree: Mapping[str, Any] | None, dotted: str) -> object:
    """The value at a dotted path of a nested mapping, or ``None`` when any step is absent or not a map."""
    node: object = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def empty_env_is_value(leaf: SchemaLeaf) -> bool:
    """Whether ``KICI_X=`` sets the leaf (to ``""`` or ``()``) rather than leaving it unset."""
    kind = leaf.type.kind
    return kind is Kind.LIST or (kind is Kind.STR and not leaf.type.optional)


def _env_value(
    key: Key, leaf: SchemaLeaf, env: Mapping[str, str]
) -> tuple[Sourced | None, AliasConflict | None]:
    keep_empty = empty_env_is_value(leaf)
    present = [(name, env[name]) for name in key.env if name in env and (env[name] != "" or keep_empty)]
    if not present:
        return None, None
    name, value = present[0]
    distinct = {v for _, v in present}
    conflict = AliasConflict(key.attr, tuple(n for n, _ in present)) if len(distinct) > 1 else None
    return Sourced(value, Source.ENV, name), conflict


def layer(
    table: TierTable,
    yaml_tree: Mapping[str, Any] | None,
    env: Mapping[str, str],
    shared_tree: Mapping[str, Any] | None = None,
) -> Layered:
    """Per leaf: env > YAML > shared > default; ``None`` never overrides, lists are replaced whole."""
    leaves: dict[str, Sourced] = {}
    conflicts: list[AliasConflict] = []
    for key in table.keys:
        leaf = table.leaves[key.attr]
        chosen, conflict = _env_value(key, leaf, env)
        if conflict is not None:
            conflicts.append(conflict)
        if chosen is None:
            for tree, source in ((yaml_tree, Source.YAML), (shared_tree, Source.SHARED)):
                value = lookup(tree, key.yaml)
                if value is not None:
                    chosen = Sourced(value, source, key.yaml)
                    break
        leaves[key.attr] = chosen if chosen is not None else Sourced(leaf.default, Source.DEFAULT)
    families = {
        family.attr: {
            name[len(family.prefix) :]: value for name, value in env.items() if name.startswith(family.prefix)
        }
        for family in table.families
    }
    return Layered(leaves, families, tuple(conflicts))
