"""Loading a tier config: every error path and the spec's defaults (OPS-01, OPS-04, CFG-03, CFG-04)."""

from __future__ import annotations

from typing import Any

import pytest

from kici.domain.config.problems import ConfigError, Problem, YamlSource
from kici.domain.config.schema import (
    AgentAuth,
    BackpressureMode,
    ClusterRole,
    LogLevel,
    Mode,
    SandboxNetwork,
    StorageType,
)
from kici.domain.config.typos import PLATFORM_NAMES
from kici.domain.config.validate import load_agent_config, load_orchestrator_config
from kici.services.platform import config as platform_config

FILE = YamlSource("/etc/kici/orchestrator.yaml", {"server.prot": 7, "server.port": 3, "queue": 9})
INDEPENDENT = {"KICI_MODE": "independent"}
AGENT = {"KICI_ORCHESTRATOR_URL": "ws://orchestrator.example:4000"}


def problems(tree: Any, env: dict[str, str], yaml: YamlSource = FILE) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        load_orchestrator_config(tree, env, yaml=yaml)
    return list(caught.value.problems)


def rendered(tree: Any, env: dict[str, str], yaml: YamlSource = FILE) -> list[str]:
    return [p.render() for p in problems(tree, env, yaml)]


# --- defaults -----------------------------------------------------------------------------------


@pytest.mark.feature("OPS-01", "CFG-03")
def test_orchestrator_defaults_are_the_spec_values() -> None:
    config = load_orchestrator_config(None, INDEPENDENT).config
    assert config.server.port == 4000
    assert config.server.base_path == "/"
    assert config.logging.level is LogLevel.INFO
    assert config.database.url is None
    assert config.database.auto_migrate is True
    assert config.agents.auth is AgentAuth.TOKEN
    assert config.agents.token_ttl_ms == 3_600_000
    assert config.agents.max_reconnect_delay_ms == 60_000
    assert config.agents.dispatch_ack_timeout_ms == 10_000
    assert config.agents.worker_concurrency == 5
    assert config.agents.max_fanout_hosts == 1024
    assert (config.queue.max_depth, config.queue.timeout_ms, config.queue.backpressure_threshold) == (
        1000,
        3_600_000,
        100,
    )
    assert (config.lockfile_cache.max_entries, config.lockfile_cache.ttl_ms) == (500, 3_600_000)
    assert config.stale_detector.threshold_multiplier == 2
    assert config.stale_detector.heartbeat_interval_ms == 60_000
    assert config.event_router.max_chain_depth == 10
    assert config.event_router.retry_max_backoff_ms == 300_000
    assert config.event_log.max_payload_bytes == 5_242_880
    assert config.storage.type is None
    assert config.storage.prefix == ""
    assert config.cache.ttl_days == 30
    assert config.cache.user_quota_bytes == 5_368_709_120
    assert config.cluster.role is ClusterRole.COORDINATOR
    assert config.cluster.credential_file == "~/.kici/peer-credential"
    assert (config.cluster.lease_ttl_ms, config.cluster.lease_renew_ms, config.cluster.lease_poll_ms) == (
        15_000,
        5_000,
        5_000,
    )
    assert config.platform.replay_window_hours == 24


@pytest.mark.feature("OPS-04")
def test_agent_defaults_are_the_spec_values() -> None:
    config = load_agent_config(None, AGENT).config
    assert config.server.port == 8080
    assert config.logs.backpressure_mode is BackpressureMode.PAUSE
    assert config.logs.max_log_size_bytes == 10_485_760
    assert config.execution.default_step_timeout_ms == 1_800_000
    assert config.execution.sandbox is True  # ARCHITECTURE.md: bwrap by default
    assert config.execution.sandbox_network is SandboxNetwork.ISOLATED
    assert config.scaler.idle_timeout_ms == 5_000
    assert config.scaler.pending_dispatch_timeout_ms == 60_000
    assert config.connection.heartbeat_interval_ms == 30_000
    assert config.connection.log_buffer_lines == 10_000
    assert config.identity.roles is None


# --- typo catcher -------------------------------------------------------------------------------


@pytest.mark.feature("OPS-01")
def test_unknown_yaml_key_gets_the_nearest_key_and_its_line() -> None:
    assert rendered({"server": {"prot": 4000}}, INDEPENDENT) == [
        "/etc/kici/orchestrator.yaml:7 server.prot: unknown key. Did you mean server.port?"
    ]


@pytest.mark.feature("OPS-01")
@pytest.mark.parametrize(
    ("tree", "suggestion"),
    [
        ({"server": {"base_path": "/x"}}, "Did you mean server.basePath?"),
        ({"logLevel": "debug"}, "Did you mean server.logLevel?"),
        ({"queue": {"maxdepth": 3}}, "Did you mean queue.maxDepth?"),
        ({"KICI_PORT": 3}, "KICI_PORT is an environment variable; in the config file write server.port"),
    ],
)
def test_yaml_suggestions(tree: dict[str, Any], suggestion: str) -> None:
    [problem] = problems(tree, INDEPENDENT)
    assert problem.message == "unknown key"
    assert problem.fix == suggestion


@pytest.mark.feature("OPS-01")
def test_unknown_yaml_key_without_a_near_match_lists_the_siblings() -> None:
    [problem] = problems({"queue": {"zzzzzzzz": 1}}, INDEPENDENT)
    assert problem.fix == "Remove it; known keys under queue: backpressureThreshold, maxDepth, timeoutMs"


@pytest.mark.feature("OPS-01")
def test_a_group_holding_a_scalar_and_non_string_keys_are_reported() -> None:
    assert rendered({"queue": 5, 1: "x"}, INDEPENDENT) == [
        "/etc/kici/orchestrator.yaml:9 queue: expected a mapping of settings, got 5. "
        "Write the settings of queue as indented keys below it",
        "/etc/kici/orchestrator.yaml: keys must be strings, got 1. Quote the key",
    ]


@pytest.mark.feature("OPS-01", "CFG-04")
def test_unknown_kici_variable_gets_the_nearest_name() -> None:
    assert rendered(None, {**INDEPENDENT, "KICI_DATABSE_URL": "postgresql://db/kici"}) == [
        "KICI_DATABSE_URL: unknown variable. Did you mean KICI_DATABASE_URL? (KICI_DEV=true only warns)"
    ]


@pytest.mark.feature("OPS-01", "CFG-04")
def test_unknown_kici_variable_without_a_near_match() -> None:
    assert rendered(None, {**INDEPENDENT, "KICI_ZZZZZZZZZZZZ": "1"}) == [
        "KICI_ZZZZZZZZZZZZ: unknown variable. Remove it (KICI_DEV=true only warns)"
    ]


@pytest.mark.feature("OPS-01", "OPS-04")
def test_a_variable_of_the_other_tier_is_named_as_such() -> None:
    assert rendered(None, {**INDEPENDENT, "KICI_ORCHESTRATOR_URL": "ws://x"}) == [
        "KICI_ORCHESTRATOR_URL: configures the agent, not the orchestrator. "
        "Remove it from the orchestrator's environment (KICI_DEV=true only warns)"
    ]
    with pytest.raises(ConfigError) as caught:
        load_agent_config(None, {**AGENT, "KICI_DATABASE_URL": "postgresql://db"})
    assert caught.value.problems[0].message == "configures the orchestrator, not the agent"
    with pytest.raises(ConfigError) as caught:
        load_agent_config(None, {**AGENT, "KICI_AGENT_ENV_FOO": "1"})
    assert caught.value.problems[0].message == "configures the orchestrator, not the agent"


@pytest.mark.feature("OPS-01", "CFG-04")
def test_the_platform_s_own_variables_are_ignored_and_misspelt_platform_names_still_caught() -> None:
    shared = dict.fromkeys(PLATFORM_NAMES, "1")
    assert load_orchestrator_config(None, {**INDEPENDENT, **shared}).warnings == ()
    assert load_agent_config(None, {**AGENT, **shared}).warnings == ()
    assert rendered(None, {**INDEPENDENT, "KICI_PLATFORM_TOKN": "key"}) == [
        "KICI_PLATFORM_TOKN: unknown variable. Did you mean KICI_PLATFORM_TOKEN? (KICI_DEV=true only warns)"
    ]
    assert rendered(None, {**INDEPENDENT, "KICI_PLATFORM_HOTS": "0.0.0.0"}) == [
        "KICI_PLATFORM_HOTS: unknown variable. Did you mean KICI_PLATFORM_HOST, a kici-platform setting? "
        "(KICI_DEV=true only warns)"
    ]


@pytest.mark.feature("OPS-01")
def test_the_platform_names_known_here_are_exactly_what_kici_platform_reads() -> None:
    assert frozenset(s.env for s in platform_config.SETTINGS) | {platform_config.CONFIG_ENV} == PLATFORM_NAMES
    assert not PLATFORM_NAMES & platform_config.ORCHESTRATOR_NAMES


@pytest.mark.feature("OPS-01")
def test_kici_dev_turns_unknown_variables_into_warnings() -> None:
    loaded = load_orchestrator_config(None, {**INDEPENDENT, "KICI_DEV": "true", "KICI_FOO_BAR": "1"})
    assert [w.where for w in loaded.warnings] == ["KICI_FOO_BAR"]


@pytest.mark.feature("OPS-01")
def test_deprecated_raft_knobs_only_warn() -> None:
    env = {**INDEPENDENT, "KICI_CLUSTER_RAFT_HEARTBEAT_MS": "2000", "KICI_CLUSTER_SINGLE_NODE": "true"}
    loaded = load_orchestrator_config(None, env)
    assert [w.where for w in loaded.warnings] == [
        "KICI_CLUSTER_RAFT_HEARTBEAT_MS",
        "KICI_CLUSTER_SINGLE_NODE",
    ]
    assert "deprecated" in loaded.warnings[0].message


@pytest.mark.feature("OPS-01")
def test_deprecated_raft_yaml_keys_only_warn() -> None:
    loaded = load_orchestrator_config({"cluster": {"raftHeartbeatMs": 2000}}, INDEPENDENT, yaml=FILE)
    assert [w.where for w in loaded.warnings] == ["/etc/kici/orchestrator.yaml cluster.raftHeartbeatMs"]


@pytest.mark.feature("OPS-01")
def test_tool_variables_and_foreign_variables_are_accepted() -> None:
    env = {**INDEPENDENT, "KICI_CONFIG": "/x.yaml", "KICI_DEBUG": "1", "HOME": "/root", "NODE_ENV": "x"}
    assert load_orchestrator_config(None, env).warnings == ()


@pytest.mark.feature("OPS-01", "EXE-23")
def test_a_daemon_started_inside_a_step_ignores_the_step_env_files() -> None:
    env = {**INDEPENDENT, "KICI_ENV": "/tmp/kici-runner-x/env-3", "KICI_PATH": "/tmp/kici-runner-x/path-3"}
    loaded = load_orchestrator_config(None, env)
    assert loaded.warnings == ()
    assert load_orchestrator_config(None, {**INDEPENDENT, "KICI_RUNTIME_ENV": "production"}).config.server.env


@pytest.mark.feature("OPS-01")
def test_families_are_collected_and_validated() -> None:
    env = {
        **INDEPENDENT,
        "KICI_AGENT_ENV_HTTP_PROXY": "http://proxy:3128",
        "KICI_DEPLOY_MODE": "systemd",
        "KICI_COLD_STORE_ENABLED": "true",
    }
    config = load_orchestrator_config(None, env).config
    assert config.agent_env == {"HTTP_PROXY": "http://proxy:3128"}
    assert config.deploy == {"MODE": "systemd"}
    assert config.cold_store == {"ENABLED": "true"}
    assert rendered(None, {**INDEPENDENT, "KICI_AGENT_ENV_": "x", "KICI_DEPLOY_MODE": "k8s"}) == [
        "KICI_AGENT_ENV_: KICI_AGENT_ENV_* needs a variable name after the prefix. "
        "Write KICI_AGENT_ENV_NAME with NAME made of letters, digits and _",
        "KICI_DEPLOY_MODE: expected one of systemd, launchd, windows, compose, got 'k8s'. "
        "Fix the value or remove the variable",
    ]


# --- values -------------------------------------------------------------------------------------


@pytest.mark.feature("OPS-01", "CFG-04")
def test_bad_type_names_the_env_variable() -> None:
    assert rendered(None, {**INDEPENDENT, "KICI_PORT": "abc"}) == [
        'KICI_PORT: expected an integer, got "abc". Set KICI_PORT to an integer'
    ]


@pytest.mark.feature("OPS-01")
def test_bad_type_in_yaml_names_file_line_and_path() -> None:
    assert rendered({"server": {"port": [1]}}, INDEPENDENT) == [
        "/etc/kici/orchestrator.yaml:3 server.port: expected an integer, got a list. "
        "Set server.port to an integer"
    ]


@pytest.mark.feature("OPS-01", "CFG-04")
@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KICI_PORT": "70000"}, "expected a number from 0 to 65535, got 70000"),
        ({"KICI_QUEUE_MAX_DEPTH": "0"}, "expected a number of at least 1, got 0"),
        ({"KICI_AUTO_MIGRATE": "ture"}, 'expected a boolean, got "ture"'),
        ({"KICI_MODE": "cloud"}, 'expected one of platform, hybrid, independent, got "cloud"'),
        ({"KICI_BASE_PATH": "api"}, 'expected a path starting with /, got "api"'),
        ({"KICI_DATA_DIR": "data"}, 'expected an absolute path, got "data"'),
        (
            {"KICI_CLUSTER_NAME": "Prod_1"},
            'expected lower-case letters, digits and -, at most 63, got "Prod_1"',
        ),
        (
            {"KICI_PLATFORM_URL": "platform.example"},
            'expected a URL starting with ws:// or wss:// or http:// or https:// got "platform.example"',
        ),
        ({"KICI_STALE_DETECTOR_THRESHOLD_MULTIPLIER": "nan"}, 'expected a number, got "nan"'),
        ({"KICI_LOG_MAX_SIZE": "5 GB"}, 'expected a size such as 500m, 2g or 1048576, got "5 GB"'),
    ],
)
def test_value_errors(env: dict[str, str], message: str) -> None:
    [problem] = problems(None, {**INDEPENDENT, **env})
    assert problem.where == next(iter(env))
    assert problem.message == message


@pytest.mark.feature("OPS-01")
def test_secret_values_are_never_echoed() -> None:
    env = {**INDEPENDENT, "KICI_DATABASE_URL": "mysql://admin:hunter2@db/kici", "KICI_SECRET_KEY": "hunter2"}
    text = "\n".join(rendered(None, env))
    assert "hunter2" not in text
    assert "<hidden>" in text


@pytest.mark.feature("OPS-01")
def test_a_yaml_number_for_a_string_asks_for_quotes() -> None:
    [problem] = problems({"instance": {"id": 123}}, INDEPENDENT)
    assert problem.fix == "Quote the value to make it a string"


@pytest.mark.feature("CFG-04")
def test_coercions_from_env() -> None:
    env = {
        **INDEPENDENT,
        "KICI_MODE": " Independent ",
        "KICI_AUTO_MIGRATE": "OFF",
        "KICI_STALE_DETECTOR_THRESHOLD_MULTIPLIER": "2.5",
        "KICI_CLUSTER_PEERS": " a.example:4000, ,b.example:4000 ",
        "KICI_CLUSTER_ADDRESS": "me.example:4000",
        "KICI_TEST_MODE": "1",
        "KICI_TEST_EVENT_FAIL_FIRST_N": '{"push": 2}',
    }
    config = load_orchestrator_config(None, env).config
    assert config.server.mode is Mode.INDEPENDENT
    assert config.database.auto_migrate is False
    assert config.stale_detector.threshold_multiplier == 2.5
    assert config.cluster.peers == ("a.example:4000", "b.example:4000")
    assert config.testing.event_fail_first_n == {"push": 2}


@pytest.mark.feature("CFG-04")
def test_yaml_strings_are_read_like_env_values() -> None:
    tree = {
        "server": {"port": "4100"},
        "database": {"autoMigrate": "no"},
        "storage": {"type": "S3", "bucket": "b"},
    }
    config = load_orchestrator_config(tree, INDEPENDENT).config
    assert (config.server.port, config.database.auto_migrate, config.storage.type) == (
        4100,
        False,
        StorageType.S3,
    )


@pytest.mark.feature("OPS-01", "CFG-04")
def test_aliases() -> None:
    assert (
        load_orchestrator_config(
            None, {"KICI_INSTANCE_MODE": "independent", "KICI_SERVER_PORT": "81"}
        ).config.server.port
        == 81
    )
    same = {**INDEPENDENT, "KICI_PORT": "81", "KICI_SERVER_PORT": "81"}
    assert load_orchestrator_config(None, same).config.server.port == 81
    assert rendered(None, {**INDEPENDENT, "KICI_PORT": "81", "KICI_SERVER_PORT": "82"}) == [
        "KICI_PORT: disagrees with KICI_SERVER_PORT, an alias of the same setting. "
        "Remove KICI_SERVER_PORT or give it the same value"
    ]


@pytest.mark.feature("CFG-03", "CFG-04")
def test_empty_env_values() -> None:
    tree = {"database": {"url": "postgresql://db/kici"}, "storage": {"prefix": "team-a"}}
    env = {**INDEPENDENT, "KICI_DATABASE_URL": "", "KICI_STORAGE_PREFIX": "", "KICI_PORT": ""}
    config = load_orchestrator_config(tree, env).config
    assert config.database.url == "postgresql://db/kici"  # empty = not set here
    assert config.storage.prefix == ""  # a plain string: empty is a value
    assert config.server.port == 4000
    agent = load_agent_config(None, {**AGENT, "KICI_ROLES": ""}).config
    assert agent.identity.roles == ()  # "empty none", unset = all


@pytest.mark.feature("CFG-03")
def test_precedence_env_over_yaml_over_shared_over_default() -> None:
    shared = {"queue": {"maxDepth": 1, "timeoutMs": 1, "backpressureThreshold": 1}}
    tree = {"queue": {"maxDepth": 2, "timeoutMs": 2}}
    env = {**INDEPENDENT, "KICI_QUEUE_MAX_DEPTH": "3"}
    loaded = load_orchestrator_config(tree, env, shared_tree=shared)
    queue = loaded.config.queue
    assert (queue.max_depth, queue.timeout_ms, queue.backpressure_threshold) == (3, 2, 1)
    assert loaded.config.lockfile_cache.max_entries == 500
    assert loaded.origins["queue.max_depth"].name == "KICI_QUEUE_MAX_DEPTH"


# --- cross-field --------------------------------------------------------------------------------


@pytest.mark.feature("OPS-01")
def test_cross_field_errors_are_all_reported_together() -> None:
    env = {
        "KICI_MODE": "hybrid",
        "KICI_CLUSTER_PEERS": "a.example:4000",
        "KICI_STORAGE_TYPE": "filesystem",
        "KICI_STORAGE_FS_PATH": "relative/dir",
        "KICI_CLUSTER_LEASE_RENEW_MS": "8000",
        "KICI_CLUSTER_PEER_STALE_TIMEOUT_MS": "1000",
        "KICI_EVENT_ROUTER_RETRY_BASE_BACKOFF_MS": "900000",
        "KICI_SECRET_KEY": "0" * 64,
        "KICI_SECRET_KEY_FILE": "/etc/kici/key",
        "KICI_SECRET_KEY_OLD": "short",
        "KICI_TEST_EVENT_FAIL_FIRST_N": "push=1",
    }
    assert rendered(None, env) == [
        "KICI_MODE: hybrid mode needs the Platform's URL. "
        "Set KICI_PLATFORM_URL (platform.url), or set KICI_MODE (instance.mode) to independent",
        "KICI_MODE: hybrid mode needs a Platform token. "
        "Set KICI_PLATFORM_TOKEN (platform.token), or set KICI_MODE (instance.mode) to independent",
        "KICI_CLUSTER_PEERS: static peers need this node's own address. "
        "Set KICI_CLUSTER_ADDRESS (cluster.address) to the host:port the peers dial",
        "KICI_STORAGE_FS_PATH: filesystem storage needs an absolute directory. "
        "Set KICI_STORAGE_FS_PATH (storage.fsPath) to an absolute path",
        "KICI_CLUSTER_LEASE_RENEW_MS: the leader lease is renewed every 8000 ms but expires after 15000 ms; "
        "one late renewal would lose leadership. Keep 2 × KICI_CLUSTER_LEASE_RENEW_MS (cluster.leaseRenewMs) "
        "below KICI_CLUSTER_LEASE_TTL_MS (cluster.leaseTtlMs)",
        "KICI_CLUSTER_PEER_STALE_TIMEOUT_MS: peers would be evicted as stale between two heartbeats. "
        "Make KICI_CLUSTER_PEER_STALE_TIMEOUT_MS (cluster.peerStaleTimeoutMs) larger than "
        "KICI_CLUSTER_PEER_HEARTBEAT_INTERVAL_MS (cluster.peerHeartbeatIntervalMs)",
        "KICI_EVENT_ROUTER_RETRY_BASE_BACKOFF_MS: the base retry backoff exceeds the maximum backoff. "
        "Lower it or raise KICI_EVENT_ROUTER_RETRY_MAX_BACKOFF_MS (eventRouter.retryMaxBackoffMs)",
        "KICI_SECRET_KEY: both the key and KICI_SECRET_KEY_FILE (secrets.keyFile) are set. "
        "Set only one of them",
        "KICI_SECRET_KEY_OLD: expected 32 bytes as 64 hex digits or base64, got <hidden>. "
        "Generate one with `openssl rand -hex 32`",
        "KICI_TEST_EVENT_FAIL_FIRST_N: only works in test mode. "
        "Remove it, or set KICI_TEST_MODE (testing.testMode) to 1 in a test environment",
    ]


@pytest.mark.feature("OPS-01")
def test_worker_and_storage_rules() -> None:
    tree = {"cluster": {"role": "worker"}, "storage": {"type": "s3"}}
    assert rendered(tree, {}, YamlSource("o.yaml", {"cluster.role": 2, "storage.type": 4})) == [
        "o.yaml:2 cluster.role: a worker needs the address of its coordinator. "
        "Set KICI_CLUSTER_COORDINATOR_URL (cluster.coordinatorUrl) or "
        "KICI_CLUSTER_COORDINATOR_URLS (cluster.coordinatorUrls)",
        "o.yaml:4 storage.type: s3 storage needs a bucket. Set KICI_STORAGE_BUCKET (storage.bucket)",
    ]
    worker = {**tree, "cluster": {"role": "worker", "coordinatorUrls": ["wss://c1.example"]}}
    worker["storage"] = {"type": "s3", "bucket": "cache", "endpoint": "http://10.0.0.5:9000"}
    config = load_orchestrator_config(worker, {}).config  # a worker needs no Platform link
    assert config.cluster.coordinator_urls == ("wss://c1.example",)


@pytest.mark.feature("OPS-01")
@pytest.mark.parametrize(
    ("storage", "name"),
    [
        (
            {
                "KICI_STORAGE_TYPE": "s3",
                "KICI_STORAGE_BUCKET": "b",
                "KICI_STORAGE_ENDPOINT": "http://127.0.0.1:9000",
            },
            "KICI_STORAGE_ENDPOINT",
        ),
        (
            {
                "KICI_STORAGE_TYPE": "s3",
                "KICI_STORAGE_BUCKET": "b",
                "KICI_STORAGE_EXTERNAL_ENDPOINT": "http://localhost:9000",
            },
            "KICI_STORAGE_EXTERNAL_ENDPOINT",
        ),
        (
            {
                "KICI_STORAGE_TYPE": "filesystem",
                "KICI_STORAGE_FS_PATH": "/srv",
                "KICI_STORAGE_FS_BASE_URL": "http://[::1]:4000/files",
            },
            "KICI_STORAGE_FS_BASE_URL",
        ),
    ],
)
def test_scaled_agents_cannot_use_loopback_storage(storage: dict[str, str], name: str) -> None:
    env = {**INDEPENDENT, **storage, "KICI_SCALER_CONFIG_PATH": "/etc/kici/scalers.yaml"}
    [problem] = problems(None, env)
    assert problem.where == name
    assert "loopback" in problem.message
    assert problem.fix.startswith("Set KICI_STORAGE_")
    without_scaler = {k: v for k, v in env.items() if k != "KICI_SCALER_CONFIG_PATH"}
    assert load_orchestrator_config(None, without_scaler).warnings == ()


@pytest.mark.feature("OPS-01")
def test_a_cross_field_rule_is_silent_about_a_leaf_that_failed_its_type() -> None:
    env = {**INDEPENDENT, "KICI_CLUSTER_LEASE_RENEW_MS": "soon", "KICI_CLUSTER_LEASE_TTL_MS": "1"}
    assert [p.where for p in problems(None, env)] == ["KICI_CLUSTER_LEASE_RENEW_MS"]


@pytest.mark.feature("OPS-01")
def test_the_error_text_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as caught:
        load_orchestrator_config(None, {"KICI_PORT": "x", "KICI_QUEUE_MAX_DEPTH": "y", **INDEPENDENT})
    assert str(caught.value) == (
        "Configuration validation failed:\n"
        '  - KICI_PORT: expected an integer, got "x". Set KICI_PORT to an integer\n'
        '  - KICI_QUEUE_MAX_DEPTH: expected an integer, got "y". Set KICI_QUEUE_MAX_DEPTH to an integer'
    )


@pytest.mark.feature("OPS-01")
def test_a_base64_master_key_is_accepted() -> None:
    env = {**INDEPENDENT, "KICI_SECRET_KEY": "A" * 43 + "="}
    assert load_orchestrator_config(None, env).config.secrets.key == "A" * 43 + "="


# --- agent --------------------------------------------------------------------------------------


@pytest.mark.feature("OPS-04")
def test_agent_needs_an_orchestrator_url() -> None:
    with pytest.raises(ConfigError) as caught:
        load_agent_config(None, {})
    assert [p.render() for p in caught.value.problems] == [
        "orchestratorUrl: is required: the agent has no orchestrator to connect to. "
        "Set KICI_ORCHESTRATOR_URL (orchestratorUrl), e.g. ws://orchestrator.example:4000"
    ]


@pytest.mark.feature("OPS-04")
def test_agent_env_surface() -> None:
    env = {
        **AGENT,
        "KICI_AGENT_ID": "builder-1",
        "KICI_AGENT_TOKEN": "kat_" + "ab" * 32,
        "KICI_LABELS": "linux, x64 ,gpu",
        "KICI_PROPERTIES": "rack=r1,zone=eu",
        "KICI_PORT": "0",
        "KICI_SCALER_MANAGED": "1",
        "KICI_SANDBOX": "false",
        "KICI_SANDBOX_NETWORK": "host",
        "KICI_BACKPRESSURE_MODE": "drop",
        "KICI_EXECUTION_MODE": "container",
    }
    config = load_agent_config(None, env).config
    assert config.connection.agent_id == "builder-1"
    assert config.identity.labels == ("linux", "x64", "gpu")
    assert config.identity.properties == {"rack": "r1", "zone": "eu"}
    assert config.server.port == 0
    assert config.scaler.managed is True
    assert config.execution.sandbox is False
    assert config.execution.sandbox_network is SandboxNetwork.HOST
    assert config.logs.backpressure_mode is BackpressureMode.DROP
    json_props = load_agent_config(None, {**AGENT, "KICI_PROPERTIES": '{"rack": "r2"}'}).config
    assert json_props.identity.properties == {"rack": "r2"}


@pytest.mark.feature("OPS-04")
@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KICI_AGENT_TOKEN": "kat_123"}, "expected kat_ followed by 64 hex digits, got <hidden>"),
        ({"KICI_PROPERTIES": "rack"}, 'expected name=value pairs separated by commas, got "rack"'),
        (
            {"KICI_PROPERTIES": "{oops"},
            "is not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        ),
        (
            {"KICI_ORCHESTRATOR_URL": "orchestrator:4000"},
            'expected a URL starting with ws:// or wss:// or http:// or https:// got "orchestrator:4000"',
        ),
    ],
)
def test_agent_value_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_agent_config(None, {**AGENT, **env})
    [problem] = caught.value.problems
    assert (problem.where, problem.message) == (next(iter(env)), message)


@pytest.mark.feature("OPS-04")
def test_agent_yaml_only_link_settings() -> None:
    tree = {"link": {"heartbeatIntervalMs": 500, "logBufferLines": 20}, "labels": ["a", "b"]}
    config = load_agent_config(tree, AGENT).config
    assert config.connection.heartbeat_interval_ms == 500
    assert config.connection.log_buffer_lines == 20
    assert config.identity.labels == ("a", "b")
    with pytest.raises(ConfigError) as caught:
        load_agent_config({"labels": ["a", 1]}, AGENT)
    assert caught.value.problems[0].message == "expected a list of strings, got a list with other values"
