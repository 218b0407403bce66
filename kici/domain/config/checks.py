"""Cross-field rules of a config (50 §9): settings that are each valid but do not work together.

Each check names the leaves it looks at, so that the loader can drop a cross-field complaint about a
leaf that already failed its own type check (one problem per mistake, not two). Rules beyond the
spec's list, all cheap ways to catch a config that cannot work:

* the lease renew interval must be under half its TTL (50 §5 ``2·renew < ttl``);
* a peer must be declared stale later than it is expected to heartbeat;
* the event router's base retry backoff may not exceed its maximum;
* a secret key and a key file are alternatives, and a given key must be 32 bytes (hex64 or base64);
* the test-only event failure knob needs ``KICI_TEST_MODE``;
* ``KICI_DEPLOY_MODE`` must be a known installer (OPS-18).
"""

import binascii
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urlsplit

import attrs

from kici.domain.config.layering import Source, Sourced, TierTable
from kici.domain.config.problems import HIDDEN, Problem, YamlSource, how_to_set, where_set
from kici.domain.config.schema import AgentConfig, ClusterRole, Mode, OrchestratorConfig, StorageType

DEPLOY_MODES = ("systemd", "launchd", "windows", "compose")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
KEY_BYTES = 32


@attrs.frozen
class CheckContext:
    """Names the place of each leaf for messages: where it was set, or how one would set it."""

    table: TierTable
    origins: Mapping[str, Sourced] = attrs.field(hash=False)
    yaml: YamlSource

    def where(self, attr: str) -> str:
        return where_set(self.table.by_attr[attr], self.origins[attr], self.yaml)

    def how(self, attr: str) -> str:
        return how_to_set(self.table.by_attr[attr])

    def is_set(self, attr: str) -> bool:
        return self.origins[attr].source is not Source.DEFAULT


@attrs.frozen
class CrossProblem:
    leaves: tuple[str, ...]
    problem: Problem


OrchestratorCheck = Callable[[OrchestratorConfig, CheckContext], list[CrossProblem]]
AgentCheck = Callable[[AgentConfig, CheckContext], list[CrossProblem]]


def _problem(leaves: Sequence[str], where: str, message: str, fix: str) -> CrossProblem:
    return CrossProblem(tuple(leaves), Problem(where, message, fix))


def worker_needs_coordinator(config: OrchestratorConfig, ctx: CheckContext) -> list[CrossProblem]:
    cluster = config.cluster
    if cluster.role is not ClusterRole.WORKER or cluster.coordinator_url or cluster.coordinator_urls:
        return []
    leaves = ("cluster.role", "cluster.coordinator_url", "cluster.coordinator_urls")
    return [
        _problem(
            leaves,
            ctx.where("cluster.role"),
            "a worker needs the address of its coordinator",
            f"Set {ctx.how('cluster.coordinator_url')} or {ctx.how('cluster.coordinator_urls')}",
        )
    ]


def platform_link_needs_url_and_token(config: OrchestratorConfig, ctx: CheckContext) -> list[CrossProblem]:
    if config.server.mode is Mode.INDEPENDENT or config.cluster.role is not ClusterRole.COORDINATOR:
        return []
    out = []
    for attr, what in (("platform.url", "the Platform's URL"), ("platform.token", "a Platform token")):
        if not getattr(config.platform, attr.split(".")[1]):
            out.append(
                _problem(
                    ("server.mode", "cluster.role", attr),
                    ctx.where("server.mode"),
                    f"{config.server.mode} mode needs {what}",
                    f"Set {ctx.how(attr)}, or set {ctx.how('server.mode')} to independent",
                )
            )
    return out


def peers_need_address(config: OrchestratorConfig, ctx: CheckContext) -> list[CrossProblem]:
    if not config.cluster.peers or config.cluster.address:
        return []
    return [
        _problem(
            ("cluster.peers", "cluster.address"),
            ctx.where("cluster.peers"),
            "static peers need this node's own address",
            f"Set {ctx.how('cluster.address')} to the host:port the peers dial",
        )
    ]


def storage_backend_complete(config: OrchestratorConfig, ctx: CheckContext) -> list[CrossProblem]:
    storage = config.storage
    if storage.type is StorageType.S3 and not storage.bucket:
        return [
            _problem(
                ("storage.type", "storage.bucket"),
                ctx.where("storage.type"),
                "s3 storage needs a bucket",
                f"Set {ctx.how('storage.bucket')}",
            )
        ]
    if storage.type is StorageType.FILESYSTEM and not (storage.fs_path or "").startswith("/"):
        return [
            _problem(
                ("storage.type", "storage.fs_path"),
                ctx.where("storage.fs_path") if ctx.is_set("storage.fs_path") else ctx.where("storage.type"),
                "filesystem storage needs an absolute directory",
                f"Set {ctx.how('storage.fs_path')} to an absolute path",
            )
        ]
    return []


def is_loopback_url(url: str) -> bool:
    """Whether an agent on another host could not reach ``url`` (loopback or unspecified address)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def scaled_agents_reach_storage(config: OrchestratorConfig, ctx: CheckContext) -> list[CrossProblem]:
    """Agents started by a scaler fetch caches and upload logs themselves, so the URL must leave the host."""
    if not (config.scaler.config_path or config.scaler.config_dir):
        return []
    storage = config.storage
    if storage.type is StorageType.S3:
        attr = "storage.external_endpoint" if storage.external_endpoint else "storage.endpoint"
        fix_attr = "storage.external_endpoint"
    elif storage.type is StorageType.FILESYSTEM:
        attr = fix_attr = "storage.fs_base_url"
    else:
        return []
    url = getattr(storage, attr.split(".")[1])
    if not isinstance(url, str) or not is_loopback_url(url):
        return []
    scaler = "scaler.config_path" if config.scaler.config_path else "scaler.config_dir"
    return [
        _problem(
            (attr, scaler),
            ctx.where(attr),
            "is a loopback address, which agents started by the scaler cannot reach",
            f"Set {ctx.how(fix_attr)} to an address agents can reach",
        )
    ]


def lease_timing(config: OrchestratorConfig, ctx: CheckContext) -> list[CrossProblem]:
    cluster = config.cluster
    if 2 * cluster.lease_renew_ms < cluster.lease_ttl_ms:
        return []
    return [
        _problem(
            ("cluster.lease_renew_ms", "cluster.lease_ttl_ms"),
            ctx.where("cluster.lease_renew_ms"),
            f"the leader lease is renewed every {cluster.lease_renew_ms} ms but expires after "
            f"{cluster.lease_ttl_ms} ms; one late renewal would lose leadership",
            f"Keep 2 × {ctx.how('cluster.lease_renew_ms')} below {ctx.how('cluster.lease_ttl_ms')}",
        )
    ]


def peer_liveness_timing(config: OrchestratorConfig, ctx: CheckContext) -> list[CrossProblem]:
    cluster = config.cluster
    if cluster.peer_stale_timeout_ms > cluster.peer_heartbeat_interval_ms:
        return []
    return [
        _problem(
            ("cluster.peer_stale_timeout_ms", "cluster.peer_heartbeat_interval_ms"),
            ctx.where("cluster.peer_stale_timeout_ms"),
            "peers would be evicted as stale between two heartbeats",
            f"Make {ctx.how('cluster.peer_stale_timeout_ms')} larger than "
            f"{ctx.how('cluster.peer_heartbeat_interval_ms')}",
        )
    ]


def retry_backoff_order(config: OrchestratorConfig, ctx: CheckContext) -> list[CrossProblem]:
    router = config.event_router
    if router.retry_base_backoff_ms <= router.retry_max_backoff_ms:
        return []
    return [
        _problem(
            ("event_router.retry_base_backoff_ms", "event_router.retry_max_backoff_ms"),
            ctx.where("event_router.retry_base_backoff_ms"),
            "the base retry backoff exceeds the maximum backoff",
            f"Lower it or raise {ctx.how('event_router.retry_max_backoff_ms')}",
        )
    ]


def is_master_key(text: str) -> bool:
    """32 bytes as 64 hex digits or as base64 (SEC-01)."""
    if _HEX64.match(text.strip()):
        return True
    try:
        return len(binascii.a2b_base64(text.strip(), strict_mode=True)) == KEY_BYTES
    except binascii.Error:
        return False


def secret_keys(config: OrchestratorConfig, ctx: CheckContext) -> list[CrossProblem]:
    out = []
    secrets = config.secrets
    for key_attr, file_attr in (
        ("secrets.key", "secrets.key_file"),
        ("secrets.key_old", "secrets.key_file_old"),
    ):
        key = getattr(secrets, key_attr.split(".")[1])
        if key is not None and getattr(secrets, file_attr.split(".")[1]) is not None:
            out.append(
                _problem(
                    (key_attr, file_attr),
                    ctx.where(key_attr),
                    f"both the key and {ctx.how(file_attr)} are set",
                    "Set only one of them",
                )
            )
        elif key is not None and not is_master_key(key):
            out.append(
                _problem(
                    (key_attr,),
                    ctx.where(key_attr),
                    f"expected 32 bytes as 64 hex digits or base64, got {HIDDEN}",
                    "Generate one with `openssl rand -hex 32`",
                )
            )
    return out


def test_knobs(config: OrchestratorConfig, ctx: CheckContext) -> list[CrossProblem]:
    if not config.testing.event_fail_first_n or config.testing.test_mode:
        return []
    return [
        _problem(
            ("testing.event_fail_first_n", "testing.test_mode"),
            ctx.where("testing.event_fail_first_n"),
            "only works in test mode",
            f"Remove it, or set {ctx.how('testing.test_mode')} to 1 in a test environment",
        )
    ]


def deploy_mode(config: OrchestratorConfig | AgentConfig, ctx: CheckContext) -> list[CrossProblem]:
    mode = config.deploy.get("MODE")
    if mode is None or mode in DEPLOY_MODES:
        return []
    return [
        _problem(
            ("deploy",),
            "KICI_DEPLOY_MODE",
            f"expected one of {', '.join(DEPLOY_MODES)}, got {mode!r}",
            "Fix the value or remove the variable",
        )
    ]


def orchestrator_url_required(config: AgentConfig, ctx: CheckContext) -> list[CrossProblem]:
    if config.connection.orchestrator_url:
        return []
    return [
        _problem(
            ("connection.orchestrator_url",),
            ctx.where("connection.orchestrator_url"),
            "is required: the agent has no orchestrator to connect to",
            f"Set {ctx.how('connection.orchestrator_url')}, e.g. ws://orchestrator.example:4000",
        )
    ]


ORCHESTRATOR_CHECKS: tuple[OrchestratorCheck, ...] = (
    worker_needs_coordinator,
    platform_link_needs_url_and_token,
    peers_need_address,
    storage_backend_complete,
    scaled_agents_reach_storage,
    lease_timing,
    peer_liveness_timing,
    retry_backoff_order,
    secret_keys,
    test_knobs,
    deploy_mode,
)
AGENT_CHECKS: tuple[AgentCheck, ...] = (orchestrator_url_required, deploy_mode)
