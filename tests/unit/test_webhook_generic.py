"""The generic and local normalizers (HOOK-08, HOOK-10), 30 §3.2."""

from __future__ import annotations

from typing import Any

import pytest

from kici.domain.lockfile import GenericWebhookTrigger
from kici.domain.lockfile.frozen import FrozenDict
from kici.domain.triggers import match_workflow
from kici.domain.webhooks.normalizers.generic import GenericNormalizer, parse_generic_body, scalar_at
from kici.domain.webhooks.normalizers.local import (
    InvalidLocalConfigError,
    LocalConfig,
    LocalNormalizer,
    LocalUrls,
    parse_local_config,
)
from kici.domain.webhooks.payload import InvalidRepoIdentifierError, is_safe_repo_identifier
from kici.domain.webhooks.sources import GenericSource, forwardable_headers
from kici.domain.webhooks.verification import sign_body
from tests.strategies.webhooks import delivery

SOURCE = GenericSource(org_id="org1", source_id="src1", name="alerts")


@pytest.mark.feature("HOOK-08")
@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b'{"a": 1}', None, {"a": 1}),
        (b"[1, 2]", "application/json", {"value": [1, 2]}),
        (b'"text"', None, {"value": "text"}),
        (b"42", None, {"value": 42}),
        (
            b"a=1&b=2&b=3&c=",
            "application/x-www-form-urlencoded; charset=utf-8",
            {"a": "1", "b": ["2", "3"], "c": ""},
        ),
        (b"a=1", "text/plain", {"body": "a=1"}),
        (b"\xff\xfe raw", None, {"body": "\ufffd\ufffd raw"}),
        (b"", None, {"body": ""}),
    ],
)
def test_generic_bodies(body: bytes, content_type: str | None, expected: dict[str, Any]) -> None:
    assert parse_generic_body(body, content_type) == expected


@pytest.mark.feature("HOOK-08")
@pytest.mark.parametrize(
    ("source", "headers", "payload", "expected"),
    [
        (SOURCE, {}, {}, "default"),
        (SOURCE, {"x-event-type": "deploy"}, {}, "deploy"),
        (
            GenericSource(org_id="o", source_id="s", name="n", event_type_path="$.kind"),
            {"x-event-type": "x"},
            {"kind": "alert"},
            "alert",
        ),
        (
            GenericSource(org_id="o", source_id="s", name="n", event_type_path="meta.kind"),
            {},
            {"meta": {"kind": 7}},
            "7",
        ),
        (
            GenericSource(org_id="o", source_id="s", name="n", event_type_path="meta.kind"),
            {"x-event-type": "x"},
            {"meta": {}},
            "x",
        ),
        (
            GenericSource(
                org_id="o", source_id="s", name="n", event_type_header="X-Kind", event_type_path="$.kind"
            ),
            {"x-kind": "from-header", "x-event-type": "x"},
            {"kind": "from-body"},
            "from-header",
        ),
    ],
)
def test_event_name_precedence(
    source: GenericSource, headers: dict[str, str], payload: dict[str, Any], expected: str
) -> None:
    assert GenericNormalizer(source).event_name(headers, payload) == expected


@pytest.mark.feature("HOOK-08")
def test_header_only_event_type() -> None:
    with_path = GenericNormalizer(GenericSource(org_id="o", source_id="s", name="n", event_type_path="$.k"))
    assert with_path.extract_event_type({"x-event-type": "x"}) is None
    assert GenericNormalizer(SOURCE).extract_event_type({"x-event-type": "x"}) == "x"
    assert GenericNormalizer(SOURCE).extract_event_type({}) is None


@pytest.mark.feature("HOOK-08")
def test_generic_event_shape_and_fixed_answers() -> None:
    normalizer = GenericNormalizer(SOURCE)
    event = normalizer.normalize_event("deploy", None, {"env": "prod", "source": "spoofed"})
    assert event is not None
    assert (event.type, event.action, event.target_branch, event.provider) == (
        "generic_webhook",
        "deploy",
        "__generic__",
        "generic",
    )
    assert event.payload == {"env": "prod", "source": "alerts", "eventType": "deploy"}
    default = normalizer.normalize_event("default", None, {})
    assert default is not None
    assert default.action is None
    assert normalizer.extract_repo_identifier({"repository": {"full_name": "a/b"}}) is None
    assert normalizer.extract_ref("deploy", {}) == "HEAD"
    assert normalizer.extract_credentials({}) == {}
    assert normalizer.extract_default_branch({}) is None
    assert normalizer.extract_routing_key({}, {}) == "generic:org1:src1"


@pytest.mark.feature("HOOK-08")
def test_generic_events_match_generic_webhook_triggers() -> None:
    event = GenericNormalizer(SOURCE).normalize_event("deploy", None, {"env": "prod"})
    assert event is not None
    trigger = GenericWebhookTrigger(source="alerts", events=("deploy",), match=FrozenDict({"$.env": "prod"}))
    assert match_workflow((trigger,), event).matched
    other = GenericWebhookTrigger(source="billing")
    assert not match_workflow((other,), event).matched


@pytest.mark.feature("HOOK-08")
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-delivery-id": "d", "x-request-id": "r", "x-idempotency-key": "i"}, "d"),
        ({"x-request-id": "r", "x-idempotency-key": "i"}, "r"),
        ({"x-idempotency-key": "i"}, "i"),
        ({"x-delivery-id": ""}, None),
    ],
)
def test_generic_delivery_id_order(headers: dict[str, str], expected: str | None) -> None:
    assert GenericNormalizer(SOURCE).extract_delivery_id(headers) == expected


@pytest.mark.feature("HOOK-08")
def test_stripped_headers_and_signature() -> None:
    headers = {
        "Authorization": "Bearer x",
        "Cookie": "c",
        "X-Api-Key": "k",
        "X-Event-Type": "e",
        "X-Trace": "t",
    }
    assert forwardable_headers(headers, SOURCE) == {"x-event-type": "e", "x-trace": "t"}
    custom = GenericSource(org_id="o", source_id="s", name="n", stripped_headers=("X-Trace",))
    assert forwardable_headers(headers, custom)["authorization"] == "Bearer x"
    body = b"payload"
    assert GenericNormalizer(SOURCE).verify_signature(body, {"x-signature-256": sign_body(body, "k")}, "k")
    assert GenericNormalizer(SOURCE).verify_signature(
        body, {"x-signature-256": sign_body(body, "k")[7:]}, b"k"
    )
    assert scalar_at("$[", {}) is None
    assert scalar_at("$.a", {"a": [1]}) is None


@pytest.mark.feature("HOOK-10")
def test_local_normalizer_on_a_github_shaped_push() -> None:
    _, payload, _ = delivery("github_push")
    local = LocalNormalizer()
    headers = {"x-kici-routing-key": "generic:org1:local1", "x-event-type": "push", "x-delivery-id": "d1"}
    assert local.extract_routing_key(headers, payload) == "generic:org1:local1"
    assert local.extract_routing_key({"x-kici-source-id": "local1"}, payload) == "local1"
    assert local.extract_event_type(headers) == "push"
    assert local.extract_delivery_id(headers) == "d1"
    event = local.normalize_event("push", None, payload)
    assert event is not None
    assert (event.type, event.target_branch, event.provider, event.sender_username) == (
        "push",
        "main",
        "local",
        "octocat",
    )
    assert local.extract_ref("push", payload) == payload["after"]
    assert local.extract_repo_identifier(payload) == "acme/app"
    assert local.extract_default_branch(payload) == "main"
    assert local.extract_credentials(payload) == {}
    assert local.verify_signature(b"", {}, "anything")


@pytest.mark.feature("HOOK-10")
def test_local_event_type_is_verbatim_and_target_falls_back() -> None:
    local = LocalNormalizer()
    event = local.normalize_event("nightly-sync", None, {"repository": {"name": "tools"}})
    assert event is not None
    assert (event.type, event.target_branch) == ("nightly-sync", "__local__")
    tag = local.normalize_event("push", None, {"ref": "refs/tags/v1"})
    assert tag is not None
    assert tag.target_branch == "v1"
    assert local.extract_repo_identifier({"repository": {"name": "tools"}}) == "tools"
    assert local.extract_ref("push", {"after": "0" * 40}) == "HEAD"
    assert local.normalize_event("", None, {}) is None


@pytest.mark.feature("HOOK-10")
def test_local_config_and_urls() -> None:
    config = parse_local_config({"repoBasePath": "/srv/repos/"})
    assert config == LocalConfig("/srv/repos")
    assert LocalUrls(config).build_clone_url("acme/app") == "file:///srv/repos/acme/app"
    served = LocalUrls(LocalConfig("/srv/repos", "http://git.local/"))
    assert served.build_clone_url("acme/app") == "http://git.local/acme/app"
    assert served.build_raw_file_url("acme/app", "HEAD", "x") is None
    with pytest.raises(InvalidRepoIdentifierError):
        served.build_clone_url("../etc")
    bad_configs: list[Any] = [
        {"repoBasePath": "relative"},
        {},
        {"repoBasePath": "/x", "cloneUrlBase": ""},
        [],
    ]
    for bad in bad_configs:
        with pytest.raises(InvalidLocalConfigError):
            parse_local_config(bad)


@pytest.mark.feature("HOOK-10")
@pytest.mark.parametrize(
    ("repo", "safe"),
    [
        ("acme/app", True),
        ("group/sub/app.v2", True),
        ("app", True),
        ("../app", False),
        ("acme/..", False),
        ("/abs", False),
        ("acme//app", False),
        ("-u/app", False),
        ("acme/app name", False),
        ("", False),
    ],
)
def test_repo_identifier_safety(repo: str, safe: bool) -> None:
    assert is_safe_repo_identifier(repo) is safe
