"""The demo's sample repository compiles with kici's compiler into the pipeline the demo promises, and
its push is a GitHub delivery the ``github-repo`` preset reads and verifies."""

from __future__ import annotations

import json
from functools import cache

import pytest

from kici.demo import sample
from kici.domain.lockfile import LockFile, LockJob, LockStaticMatrix, Need, NeedsEntry, load_lock
from kici.domain.triggers import match_lock
from kici.domain.webhooks.models import LOCK_FILE_PATH
from kici.domain.webhooks.normalizers.universal_git import UniversalGitNormalizer, parse_git_config
from kici.domain.webhooks.sources import GenericSource, SourceKind
from kici.domain.webhooks.verification import verify_hmac

SHA = "ab" * 20
SECRET = "demo-secret"


@cache
def lock() -> LockFile:
    return load_lock(sample.repository_files()[LOCK_FILE_PATH])


def job(name: str) -> LockJob:
    (found,) = [j for j in lock().workflows[0].jobs if isinstance(j, LockJob) and j.name == name]
    return found


def need_name(need: Need) -> str:
    if isinstance(need, str):
        return need
    assert isinstance(need, NeedsEntry)
    return need.name


def forge() -> UniversalGitNormalizer:
    source = GenericSource(org_id="o", source_id="s", name="app", kind=SourceKind.UNIVERSAL_GIT)
    config = parse_git_config({"preset": "github-repo", "gitUrlTemplate": "http://git.local/{repo}.git"})
    return UniversalGitNormalizer(source, config)


@pytest.mark.feature("CLI-03", "SDK-07", "SDK-17", "SDK-32")
def test_the_sample_compiles_into_lint_a_three_entry_matrix_test_and_a_deploy_needing_it() -> None:
    (workflow,) = lock().workflows
    assert workflow.name == sample.WORKFLOW_NAME
    assert [j.name for j in workflow.jobs if isinstance(j, LockJob)] == list(sample.JOB_NAMES)
    assert job("lint").needs == ()
    assert [need_name(n) for n in job("test").needs] == ["lint"]
    assert [need_name(n) for n in job("deploy").needs] == ["test"]
    matrix = job("test").matrix
    assert isinstance(matrix, LockStaticMatrix)
    assert dict(matrix.values) == {"python": sample.MATRIX}
    assert [s.name for s in job("deploy").steps] == ["package", "deploy"]
    assert all(label.value == "kici:os:linux" for j in sample.JOB_NAMES for label in job(j).runs_on)


@pytest.mark.feature("CLI-03")
def test_the_failing_variant_changes_only_the_app_so_the_pipeline_is_the_same() -> None:
    good, bad = sample.source_files(), sample.source_files(failing=True)
    assert good[sample.WORKFLOW_PATH] == bad[sample.WORKFLOW_PATH]
    assert "return a + b" in good[sample.APP_PATH]
    assert "return a - b" in bad[sample.APP_PATH]
    assert sample.compile_lock(bad) == sample.compile_lock(good)


@pytest.mark.feature("CLI-03")
def test_a_broken_workflow_is_a_compile_error_with_the_diagnostics() -> None:
    files = {**sample.source_files(), sample.WORKFLOW_PATH: "from kici.sdk import nothing_here\n"}
    with pytest.raises(sample.SampleCompileError, match="nothing_here"):
        sample.compile_lock(files)


@pytest.mark.feature("HOOK-02", "HOOK-09", "SDK-09")
def test_the_push_is_signed_read_by_the_github_repo_preset_and_matches_the_workflow() -> None:
    files = sample.repository_files()
    headers, body = sample.signed_push(SHA, files, secret=SECRET, delivery_id="d-1")
    assert verify_hmac(body, headers["x-hub-signature-256"], SECRET)
    assert not verify_hmac(body, headers["x-hub-signature-256"], "another secret")
    normalizer = forge()
    assert normalizer.verify_signature(body, headers, SECRET)
    assert normalizer.extract_event_type(headers) == "push"
    assert normalizer.extract_delivery_id(headers) == "d-1"
    payload = json.loads(body)
    assert normalizer.extract_repo_identifier(payload) == sample.REPO
    assert normalizer.extract_ref("push", payload) == SHA
    assert sorted(normalizer.changed_files(payload)) == sorted(files)
    event = normalizer.normalize_event("push", None, payload)
    assert event is not None
    assert (event.type, event.target_branch) == ("push", sample.BRANCH)
    assert [w.name for w in match_lock(lock(), event).matched] == [sample.WORKFLOW_NAME]
