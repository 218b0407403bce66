"""Trigger matching examples: every trigger kind, the trace, workflows and locks, the JSONPath subset."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from kici.domain.events import EVENT_TYPES, SimulatedEvent, WorkflowDecision, is_event_type
from kici.domain.jsonpath import JsonPathError, find, parse_path, path_matches, value_matches
from kici.domain.lockfile.frozen import freeze_json
from kici.domain.lockfile.model import LockFile, LockSource, LockWorkflow
from kici.domain.lockfile.triggers import (
    TRIGGER_TYPES,
    CommentTrigger,
    CreateTrigger,
    DeleteTrigger,
    DispatchTrigger,
    ForkTrigger,
    GenericWebhookTrigger,
    JobCompleteTrigger,
    KiciEventTrigger,
    LifecycleTrigger,
    LockBranchPattern,
    PrTrigger,
    PushTrigger,
    ReleaseTrigger,
    ReviewCommentTrigger,
    ReviewTrigger,
    ScheduleTrigger,
    StarTrigger,
    StatusTrigger,
    TagTrigger,
    Trigger,
    WatchTrigger,
    WebhookTrigger,
    WorkflowCompleteTrigger,
    WorkflowRunTrigger,
)
from kici.domain.regex import UnsafeRegexError
from kici.domain.triggers import (
    TRIGGER_EVENT_TYPES,
    match_lock,
    match_trigger,
    match_workflow,
    needs_changed_files,
)

TRIGGER_IDS = ("LOCK-02", "SDK-09", "SDK-10", "SDK-11", "SDK-13", "SDK-14")


def glob(pattern: str) -> LockBranchPattern:
    return LockBranchPattern(type="glob", pattern=pattern)


def regex(pattern: str, flags: str | None = None) -> LockBranchPattern:
    return LockBranchPattern(type="regex", pattern=pattern, flags=flags)


def event(kind: str, **fields: Any) -> SimulatedEvent:
    fields.setdefault("target_branch", "main")
    return SimulatedEvent(type=kind, **fields)


def fires(trigger: Trigger, ev: SimulatedEvent) -> bool:
    return match_trigger(trigger, ev).matched


@pytest.mark.feature("LOCK-02", "HOOK-01")
def test_every_trigger_kind_has_a_type_guard() -> None:
    assert set(TRIGGER_EVENT_TYPES) | {"webhook"} == set(TRIGGER_TYPES)
    assert set(TRIGGER_EVENT_TYPES.values()) <= EVENT_TYPES


@pytest.mark.feature("SDK-09", "LOCK-02")
def test_pr_trigger() -> None:
    trigger = PrTrigger(
        events=("opened", "synchronize"),
        target_branches=(glob("main"), regex(r"^release/v\d+$")),
        source_branches=(glob("!wip/**"),),
        paths=("src/**", "!src/docs/**"),
    )
    ok = event("pull_request", action="opened", source_branch="feat/x", changed_files=["src/app.py"])
    assert fires(trigger, ok)
    assert fires(trigger, attrs.evolve(ok, target_branch="release/v2"))
    assert not fires(trigger, attrs.evolve(ok, target_branch="release/v2-rc"))
    assert not fires(trigger, attrs.evolve(ok, action="closed"))
    assert not fires(trigger, attrs.evolve(ok, action=None))
    assert not fires(trigger, attrs.evolve(ok, source_branch="wip/a/b"))
    assert not fires(trigger, attrs.evolve(ok, source_branch=None))
    assert not fires(trigger, attrs.evolve(ok, changed_files=["src/docs/a.md"]))
    assert not fires(trigger, attrs.evolve(ok, changed_files=[]))
    assert not fires(trigger, attrs.evolve(ok, changed_files=None))
    assert not fires(trigger, attrs.evolve(ok, type="push"))


@pytest.mark.feature("SDK-09", "LOCK-02")
def test_push_trigger_globs_follow_picomatch() -> None:
    trigger = PushTrigger(branches=(glob("release/*"),))
    assert fires(trigger, event("push", target_branch="release/1.0"))
    assert not fires(trigger, event("push", target_branch="release/1.0/hotfix"))
    assert not fires(trigger, event("push", target_branch="release/.hidden"))
    assert fires(PushTrigger(branches=(glob("release/**"),)), event("push", target_branch="release/1/2"))
    assert fires(PushTrigger(branches=(regex("MAIN", "i"),)), event("push", target_branch="not-main"))
    assert fires(PushTrigger(), event("push", target_branch="anything"))
    assert not fires(PushTrigger(), event("tag", target_branch="v1"))


@pytest.mark.feature("SDK-09", "LOCK-02")
def test_paths_examples() -> None:
    def admits(paths: tuple[str, ...], files: list[str] | None) -> bool:
        return fires(PushTrigger(paths=paths), event("push", changed_files=files))

    assert admits((), None)
    assert not admits(("src/**",), None)
    assert not admits(("src/**",), [])
    assert admits(("src/**",), ["README.md", "src/a.py"])
    assert not admits(("src/**",), ["README.md"])
    assert admits(("!docs/**",), ["docs/a.md", "src/a.py"])
    assert not admits(("!docs/**",), ["docs/a.md"])
    assert not admits(("**/*.py", "!tests/**"), ["tests/test_a.py"])
    assert admits(("src",), ["src"])
    assert admits(("src/**",), ["src"])


@pytest.mark.feature("SDK-09", "LOCK-02", "SDK-10")
def test_repos_examples() -> None:
    trigger = PushTrigger(repos=("acme/*", "!acme/secret"))
    assert fires(trigger, event("push", source_repo="acme/web"))
    assert not fires(trigger, event("push", source_repo="acme/secret"))
    assert not fires(trigger, event("push", source_repo="other/web"))
    assert not fires(trigger, event("push"))
    assert fires(PushTrigger(repos=("!acme/secret",)), event("push", source_repo="other/web"))
    assert fires(PushTrigger(repos=()), event("push"))


@pytest.mark.feature("SDK-09", "LOCK-02")
def test_tag_trigger_matches_the_tag_name() -> None:
    trigger = TagTrigger(patterns=(glob("v*"),))
    assert fires(trigger, event("tag", target_branch="v1.2.0"))
    assert not fires(trigger, event("tag", target_branch="nightly"))
    assert not fires(trigger, event("push", target_branch="v1.2.0"))
    assert fires(TagTrigger(), event("tag", target_branch="anything"))


@pytest.mark.feature("SDK-10", "LOCK-02")
def test_comment_trigger() -> None:
    pr_comment = {"issue": {"number": 3, "pull_request": {"url": "x"}}, "comment": {"body": "/deploy prod"}}
    issue_comment = {"issue": {"number": 4}, "comment": {"body": "/deploy prod"}}
    trigger = CommentTrigger(actions=("created",), source="pr", body_match=regex(r"^/deploy\b"))
    assert fires(trigger, event("comment", action="created", payload=pr_comment))
    assert not fires(trigger, event("comment", action="created", payload=issue_comment))
    assert not fires(trigger, event("comment", action="edited", payload=pr_comment))
    assert fires(CommentTrigger(source="issue"), event("comment", payload=issue_comment))
    assert fires(CommentTrigger(body_match=glob("/deploy *")), event("comment", payload=pr_comment))
    assert not fires(CommentTrigger(body_match=glob("/deploy *")), event("comment", payload={}))


@pytest.mark.feature("SDK-10", "LOCK-02")
def test_review_triggers() -> None:
    payload = {"review": {"state": "APPROVED"}}
    trigger = ReviewTrigger(actions=("submitted",), states=("approved",))
    assert fires(trigger, event("review", action="submitted", payload=payload))
    assert not fires(trigger, event("review", action="submitted", payload={"review": {"state": "commented"}}))
    assert not fires(trigger, event("review", action="dismissed", payload=payload))
    assert fires(ReviewCommentTrigger(actions=("created",)), event("review_comment", action="created"))
    assert not fires(ReviewCommentTrigger(actions=("created",)), event("review_comment", action="deleted"))


@pytest.mark.feature("SDK-10", "LOCK-02")
@pytest.mark.parametrize(
    ("trigger", "kind", "action"),
    [
        (ReleaseTrigger(actions=("published",)), "release", "published"),
        (StarTrigger(actions=("created",)), "star", "created"),
        (WatchTrigger(actions=("started",)), "watch", "started"),
    ],
)
def test_action_only_triggers(trigger: Trigger, kind: str, action: str) -> None:
    assert fires(trigger, event(kind, action=action))
    assert not fires(trigger, event(kind, action="deleted"))
    assert not fires(trigger, event("push", action=action))


@pytest.mark.feature("SDK-11", "LOCK-02")
def test_dispatch_trigger_filters_by_type() -> None:
    assert fires(DispatchTrigger(types=("deploy",)), event("dispatch", action="deploy"))
    assert not fires(DispatchTrigger(types=("deploy",)), event("dispatch", action="rollback"))
    assert fires(DispatchTrigger(), event("dispatch"))


@pytest.mark.feature("SDK-10", "LOCK-02")
def test_create_and_delete_triggers() -> None:
    payload = {"ref": "release/2", "ref_type": "branch"}
    trigger = CreateTrigger(ref_types=("branch",), patterns=(glob("release/*"),))
    assert fires(trigger, event("create", payload=payload))
    assert not fires(trigger, event("create", payload={"ref": "v2", "ref_type": "tag"}))
    assert not fires(trigger, event("delete", payload=payload))
    assert fires(DeleteTrigger(ref_types=("tag",)), event("delete", payload={"ref": "v2", "ref_type": "tag"}))
    assert fires(DeleteTrigger(patterns=(glob("main"),)), event("delete", target_branch="main"))


@pytest.mark.feature("SDK-10", "LOCK-02")
def test_status_trigger() -> None:
    trigger = StatusTrigger(contexts=("ci/*", "!ci/flaky"), states=("failure", "error"))
    assert fires(trigger, event("status", payload={"context": "ci/build", "state": "failure"}))
    assert not fires(trigger, event("status", payload={"context": "ci/flaky", "state": "failure"}))
    assert not fires(trigger, event("status", payload={"context": "ci/build", "state": "success"}))
    assert not fires(trigger, event("status", payload={}))


@pytest.mark.feature("SDK-10", "LOCK-02")
def test_workflow_run_trigger() -> None:
    payload = {"workflow_run": {"name": "CI", "conclusion": "failure"}}
    trigger = WorkflowRunTrigger(actions=("completed",), workflows=("CI",), conclusions=("failure",))
    assert fires(trigger, event("workflow_run", action="completed", payload=payload))
    assert not fires(trigger, event("workflow_run", action="requested", payload=payload))
    assert not fires(
        trigger,
        event(
            "workflow_run",
            action="completed",
            payload={"workflow_run": {"name": "CI", "conclusion": "success"}},
        ),
    )
    assert fires(WorkflowRunTrigger(workflows=("C*",)), event("workflow_run", payload=payload))
    assert not fires(WorkflowRunTrigger(workflows=("Deploy",)), event("workflow_run", payload=payload))


@pytest.mark.feature("SDK-10", "LOCK-02")
def test_fork_trigger() -> None:
    assert fires(ForkTrigger(), event("fork"))
    assert not fires(ForkTrigger(), event("star"))


@pytest.mark.feature("SDK-10", "LOCK-02")
def test_webhook_trigger_is_guarded_by_its_events() -> None:
    trigger = WebhookTrigger(events=("deployment", "push"), actions=("created",))
    assert fires(trigger, event("deployment", action="created"))
    assert fires(trigger, event("push", action="created"))
    assert not fires(trigger, event("deployment", action="deleted"))
    assert not fires(trigger, event("issues", action="created"))
    assert not fires(WebhookTrigger(), event("push"))


@pytest.mark.feature("SDK-14", "LOCK-02", "EVT-15")
def test_kici_event_trigger() -> None:
    payload = {
        "eventName": "fleet-patched",
        "payload": {"mode": "full", "hosts": ["web-1", "web-2"], "meta": {"region": "EU-west"}},
        "sourceRepo": "acme/fleet",
    }
    ev = event("kici_event", payload=payload)

    def kici(**fields: Any) -> KiciEventTrigger:
        for key in ("match", "not_"):
            if key in fields:
                fields[key] = freeze_json(fields[key])
        return KiciEventTrigger(event_name="fleet-patched", **fields)

    assert fires(kici(), ev)
    assert not fires(KiciEventTrigger(event_name="other"), ev)
    assert fires(kici(match={"$.mode": "full", "$.hosts[*]": "web-2"}), ev)
    assert fires(kici(match={"$.mode": ["security", "full"]}), ev)
    assert fires(kici(match={"$..region": "/^eu-/i"}), ev)
    assert not fires(kici(match={"$..region": "/^eu-/"}), ev)
    assert not fires(kici(match={"$.mode": "full", "$.missing": "x"}), ev)
    assert not fires(kici(not_={"$.hosts[0]": "web-1"}), ev)
    assert fires(kici(not_={"$.missing": "x"}), ev)
    assert fires(kici(source="acme/fleet"), ev)
    assert not fires(kici(source="acme/other"), ev)
    assert fires(kici(match={"mode": "full"}), ev)


@pytest.mark.feature("SDK-14", "LOCK-02")
def test_workflow_and_job_complete_triggers() -> None:
    done = event(
        "workflow_complete",
        payload={"workflowName": "fleet-nightly", "status": "failed", "sourceRepo": "acme/fleet"},
    )
    assert fires(WorkflowCompleteTrigger(name="fleet-nightly", status=("failed",)), done)
    assert not fires(WorkflowCompleteTrigger(name="fleet-nightly", status=("success",)), done)
    assert not fires(WorkflowCompleteTrigger(name="other"), done)
    assert not fires(WorkflowCompleteTrigger(source="acme/web"), done)
    assert fires(WorkflowCompleteTrigger(), done)
    job = event(
        "job_complete",
        payload={"workflowName": "ci", "jobName": "test", "status": "skipped", "sourceRepo": "acme/web"},
    )
    assert fires(JobCompleteTrigger(workflow="ci", job="test", status=("skipped",), source="acme/web"), job)
    assert not fires(JobCompleteTrigger(job="lint"), job)
    assert not fires(JobCompleteTrigger(), done)


@pytest.mark.feature("SDK-15", "EVT-12", "LOCK-02", "EVT-15")
def test_generic_webhook_trigger() -> None:
    payload = {"source": "jira", "eventType": "issue_created", "issue": {"priority": "high"}}
    trigger = GenericWebhookTrigger(
        source="jira",
        events=("issue_created",),
        match=freeze_json({"$.issue.priority": ["high", "critical"]}),
    )
    assert fires(trigger, event("generic_webhook", payload=payload))
    assert fires(
        GenericWebhookTrigger(source="jira", events=("created",)),
        event("generic_webhook", action="created", payload={"source": "jira"}),
    )
    assert not fires(trigger, event("generic_webhook", payload={**payload, "source": "github"}))
    assert not fires(trigger, event("generic_webhook", payload={**payload, "eventType": "issue_deleted"}))
    assert not fires(
        GenericWebhookTrigger(source="jira", not_=freeze_json({"$.issue.priority": "high"})),
        event("generic_webhook", payload=payload),
    )


@pytest.mark.feature("SDK-13", "LOCK-02")
def test_schedule_trigger() -> None:
    trigger = ScheduleTrigger(cron_expression="0 3 * * *", timezone="Europe/Berlin")
    fire = {"cronExpression": "0 3 * * *", "timezone": "Europe/Berlin", "registrationId": "r1"}
    assert fires(trigger, event("schedule", payload=fire))
    assert not fires(trigger, event("schedule", payload={**fire, "cronExpression": "0 4 * * *"}))
    assert not fires(trigger, event("schedule", payload={**fire, "timezone": "UTC"}))
    assert fires(trigger, event("schedule"))
    assert not fires(trigger, event("push"))


@pytest.mark.feature("SDK-14", "LOCK-02")
def test_lifecycle_trigger() -> None:
    trigger = LifecycleTrigger(events=("job_failed",), sources=("acme/*",))
    failed = {"lifecycleEvent": "job_failed", "sourceRepo": "acme/web"}
    assert fires(trigger, event("lifecycle", payload=failed))
    assert not fires(trigger, event("lifecycle", payload={**failed, "lifecycleEvent": "workflow_complete"}))
    assert not fires(trigger, event("lifecycle", payload={**failed, "sourceRepo": "other/web"}))
    assert fires(
        LifecycleTrigger(events=("job_failed",)), event("lifecycle", payload={"lifecycleEvent": "job_failed"})
    )


@pytest.mark.feature("SDK-09", "LOCK-02")
def test_broken_patterns_fail_closed_with_a_reason() -> None:
    unsafe = PushTrigger(branches=(regex("(a+)+"),))
    result = match_trigger(unsafe, event("push", target_branch="aaaa"))
    assert not result.matched
    assert result.checks[-1].reason is not None
    assert "invalid pattern" in result.checks[-1].reason
    bad_path = KiciEventTrigger(event_name="e", match=freeze_json({"$.a[": 1}))
    assert not fires(bad_path, event("kici_event", payload={"eventName": "e", "payload": {"a": 1}}))
    bad_not = KiciEventTrigger(event_name="e", not_=freeze_json({"$.a": "/(a*)*/"}))
    assert not fires(bad_not, event("kici_event", payload={"eventName": "e", "payload": {"a": "b"}}))


@pytest.mark.feature("LOCK-02", "HOOK-01")
def test_decision_trace_and_summary() -> None:
    triggers: list[Trigger] = [PrTrigger(), PushTrigger(branches=(glob("main"),), paths=("src/**",))]
    ev = event("push", target_branch="main", changed_files=["docs/a.md"])
    decision = match_workflow(triggers, ev, "ci")
    assert decision == WorkflowDecision(
        workflow_name="ci",
        matched=False,
        matched_trigger=None,
        checks=decision.checks,
        summary="no trigger matched: pr[0].type, push[1].paths",
    )
    assert [(c.check, c.passed) for c in decision.checks] == [
        ("pr[0].type", False),
        ("push[1].type", True),
        ("push[1].branches", True),
        ("push[1].paths", False),
    ]
    assert decision.checks[3].pattern == "src/**"
    assert decision.checks[3].value == "docs/a.md"
    matched = match_workflow(triggers, attrs.evolve(ev, changed_files=["src/a.py"]), "ci")
    assert (matched.matched, matched.matched_trigger, matched.summary) == (
        True,
        1,
        "matched trigger 1 (push)",
    )
    assert match_workflow([], ev, "ci").summary == "no triggers"


@pytest.mark.feature("LOCK-02", "HOOK-01")
def test_match_lock_accepts_a_lock_or_its_workflows() -> None:
    def workflow(name: str, *triggers: Trigger) -> LockWorkflow:
        return LockWorkflow(
            name=name,
            source=LockSource(file=f".kici/workflows/{name}.py", export=f"#{name}"),
            content_hash="0",
            triggers=triggers,
        )

    ci = workflow("ci", PrTrigger(), PushTrigger())
    nightly = workflow("nightly", ScheduleTrigger(cron_expression="0 3 * * *"))
    lock = LockFile(content_hash="0", workflows=(ci, nightly))
    for source in (lock, lock.workflows, [ci, nightly]):
        result = match_lock(source, event("push"))
        assert result.matched == (ci,)
        assert [(d.workflow_name, d.matched, d.matched_trigger) for d in result.decisions] == [
            ("ci", True, 1),
            ("nightly", False, None),
        ]
    assert match_lock(LockFile(content_hash="0"), event("push")).decisions == ()


@pytest.mark.feature("HOOK-01")
def test_simulated_event_model() -> None:
    ev = SimulatedEvent(type="push", target_branch="main", changed_files=["a", "b"], payload={"ref": "x"})
    assert ev.changed_files == ("a", "b")
    assert ev.action is None
    assert ev.source_repo is None
    assert hash(ev) == hash(attrs.evolve(ev, payload={"other": 1}))
    assert is_event_type(ev, "push")
    assert not is_event_type(ev, "tag")
    with pytest.raises(ValueError, match="unknown event type"):
        is_event_type(ev, "pushh")  # type: ignore[arg-type]
    assert len(EVENT_TYPES) == 22


@pytest.mark.feature("EVT-15")
def test_jsonpath_subset() -> None:
    doc = {"a": {"b": [1, {"c": 2}], "d e": 3}, "c": 4}
    assert find("$.a.b[0]", doc) == [1]
    assert find("$.a.b[-1].c", doc) == [2]
    assert find("$['a']['d e']", doc) == [3]
    assert find('$["a"].b[*]', doc) == [1, {"c": 2}]
    assert find("$.a.*", doc) == [[1, {"c": 2}], 3]
    assert find("$..c", doc) == [4, 2]
    assert find("$..[0]", doc) == [1]
    assert find("$.a.b[5]", doc) == []
    assert find("$.a.b.c", doc) == []
    assert find("a.b[0]", doc) == [1]
    assert find("$['it\\'s']", {"it's": 1}) == [1]
    assert parse_path("$..*") == ((True, None),)


@pytest.mark.feature("EVT-15")
@pytest.mark.parametrize("bad", ["$.", "$[", "$[abc]", "$[1", "$['x", "$x", "$.a..", "$.a b"])
def test_jsonpath_rejects_what_it_cannot_read(bad: str) -> None:
    with pytest.raises(JsonPathError):
        find(bad, {})


@pytest.mark.feature("EVT-15")
def test_expectations() -> None:
    assert value_matches("full", "full")
    assert not value_matches(1, True)
    assert value_matches(1, 1.0)
    assert value_matches(("a", "b"), "b")
    assert not value_matches(["a", "b"], ["a", "b"])
    assert value_matches([["a", "b"]], ["a", "b"])
    assert value_matches("/^v\\d+$/", "v12")
    assert not value_matches("/^v\\d+$/", 12)
    assert value_matches("/A/i", "xa")
    assert value_matches(None, None)
    assert value_matches({"k": 1}, {"k": 1})
    with pytest.raises(UnsafeRegexError):
        value_matches("/(a+)+/", "a")
    assert path_matches("$.tags[*]", "/^rc/", {"tags": ["v1", "rc2"]})
    assert not path_matches("$.tags[*]", "x", {"tags": []})


@pytest.mark.feature("HOOK-13")
def test_changed_files_are_needed_only_for_paths_filters() -> None:
    assert not needs_changed_files([])
    assert not needs_changed_files([PushTrigger(branches=(glob("main"),)), PrTrigger(), TagTrigger()])
    assert needs_changed_files([TagTrigger(), PrTrigger(paths=("src/**",))])
    assert needs_changed_files([PushTrigger(paths=("!docs/**",))])
