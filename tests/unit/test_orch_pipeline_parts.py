"""The pipeline's parts without a database: run building, trust side, sources, auth, logs, metrics."""

from __future__ import annotations

import io
import json
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog

from kici.domain.config.sources import SecretKind, SecretRef, SourceConfig, SourceProvider
from kici.domain.events import SimulatedEvent
from kici.domain.execution.needs import NameNeed
from kici.domain.execution.states import InitFailureCategory
from kici.domain.lockfile import (
    ExactLabelMatcher,
    LockDynamicJobFn,
    LockGeneratorSource,
    LockJob,
    LockSource,
    LockStaticMatrix,
    LockStep,
    LockWorkflow,
    PushTrigger,
)
from kici.domain.lockfile.frozen import freeze_json, thaw_json
from kici.domain.webhooks.verification import GenericSourceVerification, GithubSourceSecrets, sign_body
from kici.services.orchestrator.api import AdminAuth, token_digest
from kici.services.orchestrator.logging import MASK, SecretMasker, configure_logging, request_scope, run_scope
from kici.services.orchestrator.metrics import OrchestratorMetrics
from kici.services.orchestrator.pipeline import LockSide, lock_ref, lock_side
from kici.services.orchestrator.runs import UNRESOLVED_WORKFLOW, RunContext, build_run, lock_failure_run
from kici.services.orchestrator.sources import SecretReadError, build_source_book, read_secret

NOW = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
LINUX = (ExactLabelMatcher(value="linux"),)


def step() -> tuple[LockStep, ...]:
    return (LockStep(name="step-1", has_outputs=False),)


def workflow() -> LockWorkflow:
    return LockWorkflow(
        name="ci",
        source=LockSource(file=".kici/workflows/ci.py", export="#ci"),
        content_hash="ab" * 32,
        triggers=(PushTrigger(),),
        timeout=900_000,
        jobs=(
            LockJob(name="lint", runs_on=LINUX, runs_on_pick="deterministic", steps=step(), timeout=60_000),
            LockJob(
                name="test",
                needs=("lint",),
                runs_on=LINUX,
                runs_on_pick="deterministic",
                exclude_labels=(ExactLabelMatcher(value="slow"),),
                steps=step(),
                matrix=LockStaticMatrix(values=freeze_json({"py": ("3.11", "3.12")})),  # type: ignore[arg-type]
                max_parallel=1,
            ),
            LockDynamicJobFn(source=LockGeneratorSource(file=".kici/workflows/ci.py", index=0), group="more"),
        ),
    )


def context(**extra: object) -> RunContext:
    event = SimulatedEvent(type="push", target_branch="main", payload={"ref": "refs/heads/main"})
    values: dict[str, object] = {
        "event": event,
        "event_name": "push",
        "repo_identifier": "acme/app",
        "repo_url": "http://git.example/acme/app.git",
        "ref": "refs/heads/main",
        "sha": "a" * 40,
        "routing_key": "github:1",
        "org_id": "__default__",
        "provider": "github",
        "provider_context": {"installationId": "9"},
        "delivery_id": "d1",
        "request_id": "r1",
    }
    values.update(extra)
    return RunContext(**values)  # type: ignore[arg-type]


@pytest.mark.feature("HOOK-14")
def test_a_matched_workflow_becomes_a_pending_run_with_matrix_children_needs_and_routing() -> None:
    run_id = uuid.uuid4()
    run, jobs = build_run(workflow(), context(), run_id=run_id, now=NOW)
    assert (run.run_id, run.workflow_name, run.workflow_timeout_ms) == (run_id, "ci", 900_000)
    assert (run.repo_identifier, run.ref, run.sha, run.delivery_id, run.request_id) == (
        "acme/app",
        "refs/heads/main",
        "a" * 40,
        "d1",
        "r1",
    )
    lint, test, generator = jobs
    assert lint.spec.name == "lint"
    assert lint.spec.needs == ()
    config = thaw_json(lint.config)
    assert (config["lockJobName"], config["timeout"], config["workflowName"]) == ("lint", 60_000, "ci")
    assert config["source"] == {"file": ".kici/workflows/ci.py", "export": "#ci"}
    assert config["providerContext"] == {"installationId": "9"}
    assert config["event"]["type"] == "push"
    assert config["event"]["target_branch"] == "main"
    assert thaw_json(lint.routing) == {"runsOn": [{"kind": "exact", "value": "linux"}]}
    assert test.spec.fanout == ("test (3.11)", "test (3.12)")
    assert test.spec.needs == (NameNeed("lint"),)
    assert test.spec.wave is not None
    assert test.spec.wave.max_parallel == 1
    assert thaw_json(test.matrix_values) == {"test (3.11)": {"py": "3.11"}, "test (3.12)": {"py": "3.12"}}
    assert thaw_json(test.routing)["exclude"] == [{"kind": "exact", "value": "slow"}]
    assert generator.spec.name == "__dynamic__ci__0"
    assert thaw_json(generator.config)["dynamicJobFn"] is True
    assert thaw_json(generator.config)["group"] == "more"


@pytest.mark.feature("HOOK-23")
def test_a_corrupt_lock_becomes_an_unresolved_run_with_a_lock_resolution_failure() -> None:
    run = lock_failure_run(context(), "x" * 5000, run_id=uuid.uuid4(), now=NOW)
    assert run.workflow_name == UNRESOLVED_WORKFLOW
    assert run.init_failure is not None
    assert run.init_failure.category is InitFailureCategory.LOCK_RESOLUTION
    assert len(run.init_failure.message) == 2000


@pytest.mark.feature("HOOK-15")
@pytest.mark.parametrize(
    ("event", "side", "ref"),
    [
        (SimulatedEvent(type="push", target_branch="main"), LockSide.HEAD, "sha"),
        (
            SimulatedEvent(type="pull_request", target_branch="main", base_branch="main", is_fork_pr=False),
            LockSide.HEAD,
            "sha",
        ),
        (
            SimulatedEvent(type="pull_request", target_branch="main", base_branch="main", is_fork_pr=True),
            LockSide.BASE,
            "main",
        ),
        (SimulatedEvent(type="review", target_branch="dev", is_fork_pr=None), LockSide.BASE, "dev"),
    ],
)
def test_untrusted_pull_requests_read_the_base_lock(event: SimulatedEvent, side: LockSide, ref: str) -> None:
    assert lock_side(event) is side
    assert lock_ref(event, "sha") == ref


def source(**extra: object) -> SourceConfig:
    values: dict[str, object] = {
        "name": "hook",
        "provider": SourceProvider.GENERIC,
        "routing_key": "generic:__default__:hook",
        "verification": "hmac_sha256",
        "signature_header": "x-signature-256",
    }
    values.update(extra)
    return SourceConfig(**values)  # type: ignore[arg-type]


@pytest.mark.feature("HOOK-01", "HOOK-02")
async def test_a_source_book_finds_sources_and_reads_every_rotation_secret(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    hook = source(
        secrets=(
            SecretRef(SecretKind.VALUE, "v1"),
            SecretRef(SecretKind.ENV, "HOOK_SECRET"),
            SecretRef(SecretKind.FILE, str(secret_file)),
        ),
    )
    gh = SourceConfig(
        name="gh",
        provider=SourceProvider.GITHUB,
        routing_key="github:1",
        secrets=(SecretRef(SecretKind.VALUE, "g"),),
    )
    book = build_source_book((hook, gh), environ={"HOOK_SECRET": "v2"})
    assert book.find("generic", "hook") is hook
    assert book.find("generic", "generic:__default__:hook") is hook
    assert book.find("github", "hook") is None
    assert "github:1" in book.registry
    assert "generic:__default__:hook" in book.registry
    inbound = await book.inbound(hook)
    assert [c.config["secret"] for c in inbound if isinstance(c, GenericSourceVerification)] == [
        "v1",
        "v2",
        "from-file",
    ]
    assert await book.inbound(gh) == [GithubSourceSecrets(("g",))]
    assert sign_body(b"x", "v2").startswith("sha256=")


@pytest.mark.feature("HOOK-03")
async def test_unreadable_secrets_are_misconfiguration_not_a_crash(tmp_path: Path) -> None:
    missing = SecretRef(SecretKind.FILE, str(tmp_path / "nope"))
    with pytest.raises(SecretReadError, match="cannot read secret file"):
        await read_secret(missing, {})
    book = build_source_book((source(secrets=(missing,)),), environ={})
    with pytest.raises(SecretReadError):
        await book.inbound(book.sources[0])
    gh = SourceConfig(name="gh", provider=SourceProvider.GITHUB, routing_key="github:1", secrets=(missing,))
    assert await build_source_book((gh,), environ={}).inbound(gh) == [
        GithubSourceSecrets((), read_failed=True)
    ]


@pytest.mark.feature("OPS-05")
def test_admin_auth_compares_digests_of_bearer_tokens() -> None:
    auth = AdminAuth(frozenset({token_digest("kadm_good")}))
    assert auth.allows("Bearer kadm_good")
    assert auth.allows("bearer  kadm_good ")
    assert not auth.allows("Bearer kadm_bad")
    assert not auth.allows("kadm_good")
    assert not auth.allows(None)


@pytest.mark.feature("OPS-12", "CACHE-10")
def test_json_logs_carry_context_ids_in_camel_case_and_never_a_secret() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    masker = SecretMasker()
    masker.add("s3cret-webhook-value", "ab")
    configure_logging(level="info", fmt="json", instance="orch-1", stream=stream, masker=masker)
    try:
        log = structlog.get_logger("test")
        with request_scope("req-1", delivery_id="d-1"), run_scope("run-9"):
            log.info("used s3cret-webhook-value here", token="kat_abc", attempts=3, note="ab")
        log.info("outside")
    finally:
        structlog.reset_defaults()
        root.handlers[:], level = saved
        root.setLevel(level)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == f"used {MASK} here"
    assert (first["requestId"], first["runId"], first["deliveryId"]) == ("req-1", "run-9", "d-1")
    assert (first["token"], first["attempts"], first["note"]) == (MASK, 3, "ab")
    assert (first["service"], first["instance"], first["level"]) == ("orchestrator", "orch-1", "info")
    assert "timestamp" in first
    assert "requestId" not in second
    assert "runId" not in second


@pytest.mark.feature("OPS-10")
def test_metrics_render_counters_and_state_gauges() -> None:
    metrics = OrchestratorMetrics()
    metrics.webhooks_rejected.labels(reason="signature").inc()
    metrics.set_runs({"pending": 2, "failed": 1})
    metrics.sync_lock_cache(3, 1)
    metrics.sync_lock_cache(5, 1)
    metrics.sync_reloads({("sighup", "failed"): 2})
    metrics.sync_reloads({("sighup", "failed"): 2})
    text = metrics.render().decode()
    assert 'kici_orch_webhooks_rejected_total{reason="signature"} 1.0' in text
    assert 'kici_orch_runs{status="pending"} 2.0' in text
    assert 'kici_orch_runs{status="success"} 0.0' in text
    assert "kici_lockfile_cache_hits_total 5.0" in text
    assert 'kici_orch_config_reload_total{result="failed",source="sighup"} 2.0' in text
