"""Hypothesis strategies for events, labels, patterns and JSON documents.

Names and patterns are drawn from a small alphabet so that generated patterns
and generated values actually collide; otherwise almost every example would
only exercise the "no match" side of a rule.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from kici.domain.events import EVENT_TYPES, SimulatedEvent
from kici.domain.lockfile.frozen import FrozenDict
from kici.domain.lockfile.triggers import (
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
    WatchTrigger,
    WebhookTrigger,
    WorkflowCompleteTrigger,
    WorkflowRunTrigger,
)

SEGMENT_ALPHABET = "abcx-_1"

segments = st.text(SEGMENT_ALPHABET, min_size=1, max_size=4)
"""One path or branch segment (no ``/``)."""

dotted_segments = st.one_of(segments, segments.map(lambda s: "." + s))

branch_names = st.lists(segments, min_size=1, max_size=3).map("/".join)
file_paths = st.lists(dotted_segments, min_size=1, max_size=4).map("/".join)
repo_names = st.tuples(segments, segments).map("/".join)

_glob_segments = st.one_of(
    segments,
    st.just("*"),
    st.just("**"),
    segments.map(lambda s: s + "*"),
    segments.map(lambda s: "*" + s),
    st.tuples(segments, segments).map(lambda t: f"{{{t[0]},{t[1]}}}"),
    segments.map(lambda s: s[:-1] + "?"),
)
glob_patterns = st.lists(_glob_segments, min_size=1, max_size=3).map("/".join)
"""picomatch globs over the same alphabet as :data:`branch_names` and :data:`file_paths`."""

negatable_globs = st.one_of(glob_patterns, glob_patterns.map(lambda g: "!" + g))

_regex_sources = st.one_of(
    segments.map(lambda s: "^" + s),
    segments.map(lambda s: s + "$"),
    segments,
    st.tuples(segments, segments).map(lambda t: f"^({t[0]}|{t[1]})/"),
)
regex_patterns = st.builds(
    LockBranchPattern, type=st.just("regex"), pattern=_regex_sources, flags=st.sampled_from([None, "", "i"])
)
glob_branch_patterns = st.builds(LockBranchPattern, type=st.just("glob"), pattern=negatable_globs)
branch_patterns = st.one_of(glob_branch_patterns, regex_patterns)

labels = st.text("abcAB:-", min_size=1, max_size=5)
"""Plain labels in mixed case (no glob characters)."""

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=5),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text("abxy", max_size=3),
)
json_keys = st.text("abxy", min_size=1, max_size=3)
json_documents: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(json_keys, inner, max_size=3),
    ),
    max_leaves=12,
)

event_types = st.sampled_from(sorted(EVENT_TYPES))


@st.composite
def simulated_events(draw: st.DrawFn, event_type: str | None = None) -> SimulatedEvent:
    """Events with every optional field sometimes present, sometimes absent."""
    kind = event_type if event_type is not None else draw(event_types)
    return SimulatedEvent(
        type=kind,
        action=draw(st.one_of(st.none(), st.sampled_from(["opened", "closed", "created", "synchronize"]))),
        payload=draw(st.dictionaries(json_keys, json_documents, max_size=3)),
        target_branch=draw(branch_names),
        source_branch=draw(st.one_of(st.none(), branch_names)),
        changed_files=draw(st.one_of(st.none(), st.lists(file_paths, max_size=4))),
        source_repo=draw(st.one_of(st.none(), repo_names)),
        provider=draw(st.sampled_from([None, "github", "generic", "local"])),
    )


def _few(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.lists(strategy, max_size=2).map(tuple)


actions = st.sampled_from(["opened", "closed", "created", "synchronize", "deleted", "completed"])
repo_patterns = st.one_of(
    repo_names,
    segments.map(lambda s: s + "/*"),
    repo_names.map(lambda r: "!" + r),
    segments.map(lambda s: "!" + s + "/*"),
)
repos_filters = st.one_of(st.none(), _few(repo_patterns))
path_filters = _few(st.one_of(glob_patterns, glob_patterns.map(lambda g: "!" + g)))
json_expectations = st.dictionaries(
    st.sampled_from(["$.a", "$.b", "$..a", "$.a[*]", "$['x']"]),
    st.one_of(json_scalars, st.lists(json_scalars, max_size=2).map(tuple), st.just("/^a/")),
    max_size=2,
).map(FrozenDict)
optional_names = st.one_of(st.none(), st.sampled_from(["ci", "deploy", "a"]))

trigger_strategies: dict[str, st.SearchStrategy[Any]] = {
    "pr": st.builds(
        PrTrigger,
        events=_few(actions),
        target_branches=_few(branch_patterns),
        source_branches=_few(branch_patterns),
        paths=path_filters,
        repos=repos_filters,
    ),
    "push": st.builds(PushTrigger, branches=_few(branch_patterns), paths=path_filters, repos=repos_filters),
    "tag": st.builds(TagTrigger, patterns=_few(branch_patterns), repos=repos_filters),
    "comment": st.builds(
        CommentTrigger,
        actions=_few(actions),
        source=st.sampled_from([None, "issue", "pr"]),
        body_match=st.one_of(st.none(), branch_patterns),
        repos=repos_filters,
    ),
    "review": st.builds(
        ReviewTrigger, actions=_few(actions), states=_few(st.sampled_from(["approved", "commented"]))
    ),
    "review_comment": st.builds(ReviewCommentTrigger, actions=_few(actions), repos=repos_filters),
    "release": st.builds(ReleaseTrigger, actions=_few(actions), repos=repos_filters),
    "dispatch": st.builds(
        DispatchTrigger, types=_few(st.sampled_from(["deploy", "opened"])), repos=repos_filters
    ),
    "create": st.builds(
        CreateTrigger, ref_types=_few(st.sampled_from(["branch", "tag"])), patterns=_few(branch_patterns)
    ),
    "delete": st.builds(
        DeleteTrigger, ref_types=_few(st.sampled_from(["branch", "tag"])), patterns=_few(branch_patterns)
    ),
    "status": st.builds(
        StatusTrigger, contexts=_few(glob_patterns), states=_few(st.sampled_from(["success", "error"]))
    ),
    "workflow_run": st.builds(
        WorkflowRunTrigger,
        actions=_few(actions),
        workflows=_few(st.sampled_from(["ci", "c*"])),
        conclusions=_few(st.sampled_from(["success", "failure"])),
    ),
    "fork": st.builds(ForkTrigger, repos=repos_filters),
    "star": st.builds(StarTrigger, actions=_few(actions), repos=repos_filters),
    "watch": st.builds(WatchTrigger, actions=_few(actions), repos=repos_filters),
    "webhook": st.builds(
        WebhookTrigger, events=_few(event_types), actions=_few(actions), repos=repos_filters
    ),
    "kici_event": st.builds(
        KiciEventTrigger,
        event_name=st.sampled_from(["deployed", "a"]),
        match=st.one_of(st.none(), json_expectations),
        not_=st.one_of(st.none(), json_expectations),
        source=st.one_of(st.none(), repo_names),
    ),
    "workflow_complete": st.builds(
        WorkflowCompleteTrigger,
        name=optional_names,
        status=st.one_of(st.none(), _few(st.sampled_from(["success", "failed"]))),
        source=st.one_of(st.none(), repo_names),
    ),
    "job_complete": st.builds(
        JobCompleteTrigger,
        workflow=optional_names,
        job=optional_names,
        status=st.one_of(st.none(), _few(st.sampled_from(["success", "skipped"]))),
        source=st.one_of(st.none(), repo_names),
    ),
    "generic_webhook": st.builds(
        GenericWebhookTrigger,
        source=st.sampled_from(["jira", "a"]),
        events=st.one_of(st.none(), _few(st.sampled_from(["issue", "a"]))),
        match=st.one_of(st.none(), json_expectations),
        not_=st.one_of(st.none(), json_expectations),
    ),
    "schedule": st.builds(ScheduleTrigger, cron_expression=st.sampled_from(["0 3 * * *", "*/5 * * * *"])),
    "lifecycle": st.builds(
        LifecycleTrigger,
        events=_few(st.sampled_from(["workflow_complete", "job_failed"])),
        sources=st.one_of(st.none(), _few(repo_patterns)),
    ),
}
"""One strategy per lock trigger ``_type``, with filters drawn to collide with :func:`simulated_events`."""

triggers = st.one_of(*trigger_strategies.values())
