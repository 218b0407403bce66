"""A universal-git source end to end: a real git server on loopback, the real sparse-clone lock fetch,
the ingress route and the pipeline over a real PostgreSQL (HOOK-14, HOOK-04).

The Gitea-shaped push is signed the way Gitea signs (bare hex HMAC in ``x-gitea-signature``); the
repository demands HTTP Basic with the source's token, read from the environment on every fetch.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kici.domain.config import YamlSource, load_orchestrator_config
from kici.domain.execution.states import JobStatus
from kici.domain.lockfile import LockFile, PushTrigger, dump_lock
from kici.domain.protocol import GitAuthKind
from kici.domain.store import EventLogStatus
from kici.domain.webhooks.models import LOCK_FILE_PATH
from kici.domain.webhooks.verification import sign_body
from kici.services.orchestrator.sources import RegistryDispatchSources
from kici.testing.git_http import GitHttpServer, commit_files, create_repo
from kici.testing.postgres import PgStores
from tests.contract.test_orch_pipeline import FIXTURES, FakeFetcher, Service, lock_of, run_ids, service

pytestmark = pytest.mark.pg

REPO = "acme/app"
USER, TOKEN = "ci-bot", "forge-pat-value"
SECRET = "gitea-webhook-secret"


@pytest.fixture
def git_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="kici-orch-git-") as root:
        yield Path(root)


def forge_service(stores: PgStores, url_template: str) -> Service:
    yaml = {
        "instance": {"mode": "independent"},
        "sources": [
            {
                "name": "forge",
                "provider": "universal-git",
                "secret": SECRET,
                "gitConfig": {
                    "preset": "gitea",
                    "gitUrlTemplate": url_template,
                    "credentialUser": USER,
                    "credentialRef": {"key": "FORGE_TOKEN", "store": "env"},
                },
            }
        ],
    }
    env = {"FORGE_TOKEN": TOKEN}
    config = load_orchestrator_config(yaml, env, yaml=YamlSource("test.yaml")).config
    return service(stores, FakeFetcher(), *config.sources, environ=env)


def gitea_push(sha: str, ref: str = "refs/heads/main") -> tuple[dict[str, str], bytes]:
    data = json.loads((FIXTURES / "gitea_push.json").read_text())
    payload: dict[str, Any] = data["payload"]
    payload.update(ref=ref, after=sha)
    body = json.dumps(payload).encode()
    headers = {k.lower(): v for k, v in data["headers"].items()}
    headers["x-gitea-signature"] = sign_body(body, SECRET).removeprefix("sha256=")
    return headers, body


def ci_lock() -> LockFile:
    return lock_of(("ci", [PushTrigger()]))


@pytest.mark.feature("HOOK-14", "HOOK-04")
async def test_a_signed_forge_push_fetches_the_lock_over_git_and_creates_the_run(
    pg_stores: PgStores, git_root: Path
) -> None:
    bare = create_repo(git_root, REPO)
    sha = commit_files(bare, "main", {LOCK_FILE_PATH: dump_lock(ci_lock()), "src/app.py": "print(1)\n"})
    with GitHttpServer(git_root, credentials=(USER, TOKEN)) as server:
        svc = forge_service(pg_stores, f"{server.base_url}/{{repo}}.git")
        source = svc.book.sources[0]
        headers, body = gitea_push(sha)
        response = await svc.client.post("/webhooks/universal-git/forge", data=body, headers=headers)
        answer = await response.get_json()
        assert response.status_code == 202, answer
        assert answer["status"] == "processed"
        assert answer["deliveryId"] == f"{source.routing_key}:{headers['x-gitea-delivery']}"
        (run_id,) = answer["runIds"]
        assert any(authorized for _, _, authorized in server.requests)
        run = await pg_stores.execution.get_run(uuid.UUID(run_id))
        assert run is not None
        assert (run.repo_identifier, run.sha, run.routing_key) == (REPO, sha, source.routing_key)
        jobs = await pg_stores.execution.list_jobs(run.run_id)
        assert [j.status for j in jobs] == [JobStatus.PENDING] * 3
        dispatch = await RegistryDispatchSources(lambda: svc.book).resolve(run)
        assert dispatch.repo_url == f"{server.base_url}/{REPO}.git"
        assert dispatch.token == TOKEN
        assert dispatch.source_auth is not None
        assert (dispatch.source_auth.kind, dispatch.source_auth.user) == (GitAuthKind.BASIC, USER)
        replay = await svc.client.post("/webhooks/universal-git/forge", data=body, headers=headers)
        assert replay.status_code == 200
        assert len(await run_ids(pg_stores)) == 1


@pytest.mark.feature("HOOK-14", "HOOK-23")
async def test_forge_repositories_without_or_with_a_broken_lock(pg_stores: PgStores, git_root: Path) -> None:
    bare = create_repo(git_root, REPO)
    plain = commit_files(bare, "main", {"README.md": "no lock here\n"})
    with GitHttpServer(git_root, credentials=(USER, TOKEN)) as server:
        svc = forge_service(pg_stores, f"{server.base_url}/{{repo}}.git")
        missing = await svc.client.post(
            "/webhooks/universal-git/forge", data=gitea_push(plain)[1], headers=gitea_push(plain)[0]
        )
        assert (await missing.get_json())["status"] == EventLogStatus.LOCKFILE_MISSING.value
        broken = commit_files(bare, "main", {LOCK_FILE_PATH: '{"schemaVersion": 99}'}, "break the lock")
        headers, body = gitea_push(broken)
        headers["x-gitea-delivery"] = "second-delivery"
        answer = await (
            await svc.client.post("/webhooks/universal-git/forge", data=body, headers=headers)
        ).get_json()
        assert answer["status"] == EventLogStatus.LOCKFILE_CORRUPT.value
        (run_id,) = answer["runIds"]
        shown = await (await svc.client.get(f"/api/v1/runs/{run_id}", headers=svc.auth())).get_json()
        assert shown["status"] == "failed"
        assert shown["initFailure"]["category"] == "lock_resolution"
        assert "schemaVersion" in shown["initFailure"]["message"]


@pytest.mark.feature("HOOK-04")
async def test_a_forge_push_with_a_bad_signature_or_no_event_header(
    pg_stores: PgStores, git_root: Path
) -> None:
    svc = forge_service(pg_stores, "http://127.0.0.1:9/{repo}.git")
    headers, body = gitea_push("a" * 40)
    forged = {**headers, "x-gitea-signature": "0" * 64}
    assert (
        await svc.client.post("/webhooks/universal-git/forge", data=body, headers=forged)
    ).status_code == 401
    no_event = {k: v for k, v in headers.items() if k != "x-gitea-event"}
    filtered = await svc.client.post("/webhooks/universal-git/forge", data=body, headers=no_event)
    assert (filtered.status_code, (await filtered.get_json())["status"]) == (200, "filtered")
    assert await run_ids(pg_stores) == []
