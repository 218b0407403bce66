"""Trigger factories: defaults, normalization and the lock ``_type`` each one maps to."""

from __future__ import annotations

import re

import pytest

from kici.sdk import (
    ApiKey,
    Hmac,
    I,
    KiciDefinitionError,
    comment,
    create,
    cron,
    define_dispatch_inputs,
    delete,
    dispatch,
    fork,
    generic_webhook,
    job_complete,
    kici_event,
    lifecycle,
    manual,
    pr,
    push,
    release,
    review,
    review_comment,
    schedule,
    star,
    status,
    tag,
    watch,
    webhook,
    workflow_complete,
    workflow_run,
)
from kici.sdk.triggers import DEFAULT_PR_EVENTS


@pytest.mark.feature("SDK-09")
def test_pr_push_tag() -> None:
    release_branch = re.compile(r"^release/v\d+$")
    opened = pr(target="main", paths=["src/**", "!docs/**"])
    assert opened.kind == "pr"
    assert opened.events == DEFAULT_PR_EVENTS == ("opened", "synchronize", "reopened", "closed")
    assert opened.target == ("main",)
    assert opened.source == ()
    assert opened.paths == ("src/**", "!docs/**")
    assert opened.repos is None
    pushed = push(branches=["main", release_branch], tags="v*", repos=["acme/*"])
    assert pushed.kind == "push"
    assert pushed.branches == ("main", release_branch)
    assert pushed.tags == ("v*",)
    assert pushed.repos == ("acme/*",)
    assert tag(patterns="v*").patterns == ("v*",)
    with pytest.raises(KiciDefinitionError) as info:
        push(paths=[""])
    assert info.value.code == "E208"


@pytest.mark.feature("SDK-10")
def test_other_provider_triggers() -> None:
    assert comment(actions="created", source="pr", body_match="/deploy*").body_match == "/deploy*"
    assert review(states=["approved"]).states == ("approved",)
    assert review_comment(actions=["edited"]).kind == "review_comment"
    assert release(actions="published").kind == "release"
    assert create(ref_types="tag", patterns="v*").kind == "create"
    assert delete(ref_types="branch").ref_types == ("branch",)
    assert status(contexts=["ci/*"], states=["failure"]).contexts == ("ci/*",)
    assert workflow_run(actions="completed", workflows=["ci"], conclusions="failure").conclusions == (
        "failure",
    )
    assert fork().kind == "fork"
    assert star(actions="created").kind == "star"
    assert watch().kind == "watch"
    assert webhook(events=["deployment"], actions="created").events == ("deployment",)
    with pytest.raises(
        KiciDefinitionError, match=r"comment\(\): unknown source 'commit' \(allowed: issue, pr\)"
    ):
        comment(source="commit")
    with pytest.raises(KiciDefinitionError, match="body_match takes a single glob or regex"):
        comment(body_match=["a", "b"])


@pytest.mark.feature("SDK-11", "SDK-12")
def test_dispatch_and_manual_inputs() -> None:
    inputs = define_dispatch_inputs(region=I.enum("eu", "us", default="eu"))
    typed = dispatch(types=["deploy"], inputs=inputs)
    assert typed.kind == "dispatch"
    assert typed.types == ("deploy",)
    assert typed.inputs is inputs
    alias = manual(inputs={"dry_run": I.boolean(default=False)})
    assert alias.kind == "dispatch"
    assert alias.inputs is not None
    assert set(alias.inputs.fields) == {"dry_run"}
    with pytest.raises(KiciDefinitionError) as info:
        dispatch(inputs={"n": int})
    assert info.value.code == "E216"


@pytest.mark.feature("SDK-13")
def test_schedule_and_cron_alias() -> None:
    nightly = schedule(cron="0 3 * * *", timezone="Europe/Berlin", inputs={"mode": I.string(default="x")})
    assert nightly.kind == "schedule"
    assert nightly.cron == "0 3 * * *"
    assert nightly.timezone == "Europe/Berlin"
    aliased = cron("*/15 9-17 * * mon-fri", description="office hours")
    assert aliased.cron == "*/15 9-17 * * mon-fri"
    assert aliased.timezone == "UTC"
    assert aliased.description == "office hours"
    with pytest.raises(KiciDefinitionError, match=r"cron\(\): invalid cron"):
        cron("* * *")


@pytest.mark.feature("SDK-14")
def test_kici_triggers() -> None:
    event = kici_event(name="fleet-patched", match={"$.mode": "full"}, not_={"$.dry": True}, source="acme/*")
    assert event.kind == "kici_event"
    assert event.match == {"$.mode": "full"}
    assert event.not_ == {"$.dry": True}
    assert workflow_complete(name="nightly", status=["failed"]).status == ("failed",)
    assert job_complete(workflow="ci", job="test", status="skipped").status == ("skipped",)
    assert lifecycle(events="job_failed", sources=["acme/*"]).events == ("job_failed",)
    with pytest.raises(KiciDefinitionError, match="unknown status 'skipped'"):
        workflow_complete(status="skipped")
    with pytest.raises(KiciDefinitionError, match="match values must be JSON values"):
        kici_event(name="x", match={"$.a": object()})


@pytest.mark.feature("SDK-15")
def test_generic_webhook() -> None:
    hooked = generic_webhook(
        source="stripe", events=["charge"], auth=Hmac("STRIPE_SECRET", "stripe-signature"), path="/stripe"
    )
    assert hooked.kind == "generic_webhook"
    assert isinstance(hooked.auth, Hmac)
    keyed = generic_webhook(source="grafana", auth=ApiKey("GRAFANA_KEY"))
    assert isinstance(keyed.auth, ApiKey)
    assert keyed.auth.header == "authorization"
    with pytest.raises(KiciDefinitionError, match="auth header must be a non-empty string"):
        generic_webhook(source="x", auth=Hmac("S", ""))
