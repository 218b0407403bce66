"""The main job through every tier, as real processes on loopback (issue 7): the demo's path as a test.

A signed GitHub push goes to the Platform, which relays it to the orchestrator (platform mode), which
verifies it, matches the sample repository's lock and dispatches the jobs to a real agent, whose
sandboxed steps' statuses and logs come back to the orchestrator's API and, as telemetry, to the
Platform's dashboard API. The stack is :mod:`kici.demo.stack` (the demo's own launcher) under the
test's scratch dir; the repository is served by a real git server. Also: a forged signature is
refused by the orchestrator and the Platform answers the git host with that verdict; ``kici run
remote`` against the same orchestrator runs the pipeline on the same agent; and ``python -m
kici.demo --fail`` exits 1 because a step failed, after a clean shutdown.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from kici.adapters.postgres import embedded
from kici.demo import sample
from kici.demo.stack import (
    Stack,
    StackOptions,
    child_env,
    open_stack,
    postgres_data_dirs,
    stray_processes,
)
from kici.testing.git_http import GitHttpServer, commit_files, create_repo, git_env

pytestmark = [pytest.mark.e2e, pytest.mark.pg]

GUARD = 120
SECRET = "e2e-full-stack-secret"
TERMINAL = ("success", "failed", "cancelled")


@attrs.frozen
class World:
    stack: Stack
    git: GitHttpServer
    sha: str
    files: dict[str, str]


@pytest.fixture
async def world(pg_scratch_dir: Path) -> AsyncIterator[World]:
    files = sample.repository_files()
    git_root = pg_scratch_dir / "git"
    sha = commit_files(create_repo(git_root, sample.REPO), sample.BRANCH, files)
    with GitHttpServer(git_root) as git:
        options = StackOptions(git_url_template=f"{git.base_url}/{{repo}}.git", webhook_secret=SECRET)
        async with open_stack(pg_scratch_dir / "stack", options) as stack:
            yield World(stack, git, sha, files)


def admin(stack: Stack) -> dict[str, str]:
    return {"authorization": f"Bearer {stack.admin_token}"}


def dashboard(stack: Stack) -> dict[str, str]:
    return {"authorization": f"Bearer {stack.dashboard_token}"}


async def wait_run(client: httpx.AsyncClient, stack: Stack, delivery_id: str) -> dict[str, Any]:
    """The run the delivery created, once terminal."""
    with trio.fail_after(GUARD):
        run_id = None
        while run_id is None:
            runs = (await client.get(f"{stack.orchestrator_url}/api/v1/runs", headers=admin(stack))).json()
            run_id = next((r["id"] for r in runs["runs"] if r["deliveryId"].endswith(delivery_id)), None)
            await trio.sleep(0.1)
        while True:
            run: dict[str, Any] = (
                await client.get(f"{stack.orchestrator_url}/api/v1/runs/{run_id}", headers=admin(stack))
            ).json()
            if run["status"] in TERMINAL:
                return run
            await trio.sleep(0.1)


async def orchestrator_log(client: httpx.AsyncClient, stack: Stack, run_id: str, job: str) -> list[str]:
    url = f"{stack.orchestrator_url}/api/v1/runs/{run_id}/jobs/{job}/logs"
    page = (await client.get(url, params={"limit": 1000}, headers=admin(stack))).json()
    return [line for chunk in page["chunks"] for line in chunk["lines"]]


async def platform_run(client: httpx.AsyncClient, stack: Stack, run_id: str) -> dict[str, Any]:
    """The run on the Platform's dashboard API once its telemetry says it succeeded with every job."""
    with trio.fail_after(GUARD):
        while True:
            answer = await client.get(f"{stack.platform_url}/api/v1/runs/{run_id}", headers=dashboard(stack))
            if answer.status_code == 200:
                run: dict[str, Any] = answer.json()
                if run["status"] == "success" and {j["status"] for j in run["jobs"]} == {"success"}:
                    return run
            await trio.sleep(0.1)


async def platform_log(client: httpx.AsyncClient, stack: Stack, run_id: str, job: str) -> list[str]:
    url = f"{stack.platform_url}/api/v1/runs/{run_id}/jobs/{job}/logs"
    with trio.fail_after(GUARD):
        while True:
            answer = await client.get(url, params={"limit": 1000}, headers=dashboard(stack))
            lines = [line for chunk in answer.json().get("chunks", []) for line in chunk["lines"]]
            if answer.status_code == 200 and lines:
                return lines
            await trio.sleep(0.1)


async def kici_run_remote(stack: Stack, checkout: Path) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KICI_")}
    env["NO_COLOR"] = "1"
    argv = [sys.executable, "-m", "kici.cli.main", "run", "remote", "push"]
    argv += ["--url", stack.orchestrator_url, "--token", stack.admin_token]
    with trio.fail_after(GUARD):
        return await trio.run_process(
            argv, cwd=checkout, env=env, capture_stdout=True, capture_stderr=True, check=False
        )


def clone(url: str, into: Path) -> Path:
    subprocess.run(["git", "clone", "--quiet", url, str(into)], env=git_env(), check=True, timeout=GUARD)
    return into


@pytest.mark.feature(
    "PRO-20",
    "PRO-21",
    "PRO-22",
    "HOOK-02",
    "HOOK-05",
    "HOOK-09",
    "EXE-06",
    "EXE-10",
    "EXE-16",
    "OPS-17",
    "CLI-14",
)
async def test_a_push_runs_on_the_agent_and_reports_to_the_orchestrator_and_the_platform(
    world: World,
) -> None:
    stack = world.stack
    async with httpx.AsyncClient(timeout=GUARD) as client:
        forged_headers, forged_body = sample.signed_push(
            world.sha, world.files, secret="wrong", delivery_id="forged"
        )
        forged = await client.post(stack.webhook_url(), content=forged_body, headers=forged_headers)
        assert forged.status_code == 401, forged.text
        assert (forged.json()["accepted"], forged.json()["result"]) == (False, "rejected_signature")
        judged = await stack.service("orchestrator").wait_for(
            "relayed webhook judged", GUARD, lambda entry: entry.get("deliveryId") == "forged"
        )
        assert judged["result"] == "rejected_signature"

        headers, body = sample.signed_push(world.sha, world.files, secret=SECRET, delivery_id="push-1")
        accepted = await client.post(stack.webhook_url(), content=body, headers=headers)
        assert accepted.status_code == 200, accepted.text
        assert accepted.json() == {"accepted": True, "deliveryId": "push-1"}
        run = await wait_run(client, stack, "push-1")
        assert (run["status"], run["workflowName"], run["sha"]) == ("success", "ci", world.sha)
        jobs = {job["name"]: job for job in run["jobs"]}
        assert list(jobs) == ["lint", "test (3.11)", "test (3.12)", "test (3.13)", "deploy"]
        assert {job["status"] for job in jobs.values()} == {"success"}
        assert {job["agentId"] for job in jobs.values()} == {"demo-agent-1"}
        assert jobs["deploy"]["startedAt"] > max(jobs[f"test ({v})"]["completedAt"] for v in sample.MATRIX)
        assert "[info] lint ok" in await orchestrator_log(client, stack, run["id"], "lint")
        for version in sample.MATRIX:
            assert f"tests pass on {version}" in await orchestrator_log(
                client, stack, run["id"], f"test ({version})"
            )
        assert "deploying version 1.0.0" in await orchestrator_log(client, stack, run["id"], "deploy")

        seen = await platform_run(client, stack, run["id"])
        assert (seen["orgId"], seen["workflowName"], seen["repoIdentifier"]) == (
            stack.org_id,
            "ci",
            sample.REPO,
        )
        assert [job["name"] for job in seen["jobs"]] == list(jobs)
        assert "deploying version 1.0.0" in await platform_log(client, stack, run["id"], "deploy")
        unauthorized = await client.get(f"{stack.platform_url}/api/v1/runs/{run['id']}")
        assert unauthorized.status_code == 401

    checkout = clone(world.git.url_for(sample.REPO), stack.root / "checkout")
    remote = await kici_run_remote(stack, checkout)
    out = remote.stdout.decode()
    assert remote.returncode == 0, out + remote.stderr.decode()
    assert "[test (3.12)] tests pass on 3.12" in out
    assert "[deploy] deploying version 1.0.0" in out
    assert "✓ ci success" in out

    deliveries = json.loads(
        (
            await trio.run_process(
                stack.platform_admin("delivery", "list", "--json"), capture_stdout=True, env=child_env()
            )
        ).stdout
    )
    assert [(d["deliveryId"], d["status"], d["httpStatus"]) for d in deliveries] == [
        ("push-1", "accepted", 200),
        ("forged", "rejected_signature", 401),
    ]

    report = await stack.stop()
    assert report.clean, report.problems()
    assert set(report.exit_codes) == {"platform", "orchestrator", "agent-1"}
    assert all(not embedded.is_running(pgdata) for pgdata in postgres_data_dirs(stack.root))
    assert stray_processes(stack.root, set()) == []
    assert SECRET not in stack.service("orchestrator").log_path.read_text()
    assert stack.admin_token not in stack.service("orchestrator").log_path.read_text()


@pytest.mark.feature("EXE-07", "EXE-16", "OPS-17")
async def test_the_demo_exits_1_when_a_step_fails_and_leaves_nothing_running(pg_scratch_dir: Path) -> None:
    root = pg_scratch_dir / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KICI_")}
    env["NO_COLOR"] = "1"
    with trio.fail_after(3 * GUARD):
        done = await trio.run_process(
            [sys.executable, "-m", "kici.demo", "--fail", "--root", str(root)],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = done.stdout.decode()
    assert done.returncode == 1, out + done.stderr.decode()
    rows = {line.strip().split("  ")[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "✓ success" in rows["lint"]
    assert all("✗ failed" in rows[f"test ({version})"] for version in sample.MATRIX)
    assert "○ skipped" in rows["deploy"]
    assert "Run failed" in out
    assert "Shut down cleanly" in out
    assert "total" in out
    failed_log = (root / "logs" / "jobs" / "01-test-3.11.log").read_text()
    assert "AssertionError" in failed_log
    assert not (root / "platform" / "data").exists()
    assert stray_processes(root, set()) == []
