"""Examples and edge cases of the lock codec (spec 00 §2.2, §2.5, §2.6 D3)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kici.domain.lockfile import (
    COMPILE_SCHEMA_VERSION,
    SCHEMA_VERSION,
    TRIGGER_TYPES,
    UNSET,
    FrozenDict,
    InputDescriptor,
    LockFile,
    LockFileParseError,
    LockJob,
    LockSchemaVersionError,
    LockStep,
    NeedsEntry,
    ScheduleTrigger,
    dump_lock,
    format_path,
    from_json,
    parse_lock,
    to_json,
)

HASH = "0" * 63 + "1"

# A lock as the compiler writes it for spec 00 §1.10 ci.py (abridged), in canonical form.
CI_LOCK = """{
  "schemaVersion": 1,
  "source": {
    "file": ".kici/workflows/ci.py",
    "export": "#ci"
  },
  "contentHash": "HASH",
  "workflows": [
    {
      "name": "ci",
      "source": {
        "file": ".kici/workflows/ci.py",
        "export": "#ci"
      },
      "contentHash": "HASH",
      "compileSchemaVersion": 5,
      "triggers": [
        {
          "_type": "pr",
          "events": [
            "opened",
            "synchronize",
            "reopened",
            "closed"
          ],
          "targetBranches": [
            {
              "type": "glob",
              "pattern": "main"
            }
          ],
          "sourceBranches": [],
          "paths": [
            "src/**",
            "!docs/**"
          ]
        },
        {
          "_type": "push",
          "branches": [
            {
              "type": "glob",
              "pattern": "main"
            }
          ],
          "paths": []
        }
      ],
      "jobs": [
        {
          "_type": "static",
          "name": "lint",
          "runsOn": [
            {
              "kind": "exact",
              "value": "kici:os:linux"
            }
          ],
          "runsOnPick": "deterministic",
          "needs": [],
          "steps": [
            {
              "name": "install",
              "hasOutputs": false
            },
            {
              "name": "ruff",
              "hasOutputs": false
            }
          ]
        },
        {
          "_type": "static",
          "name": "test",
          "runsOn": [
            {
              "kind": "exact",
              "value": "kici:os:linux"
            },
            {
              "kind": "exact",
              "value": "py"
            }
          ],
          "runsOnPick": "deterministic",
          "maxParallel": 2,
          "needs": [
            "lint"
          ],
          "steps": [
            {
              "name": "step-1",
              "hasOutputs": false
            },
            {
              "name": "pytest",
              "hasOutputs": false
            }
          ],
          "matrix": {
            "_type": "static",
            "values": {
              "python": [
                "3.11",
                "3.12",
                "3.13"
              ]
            }
          },
          "cache": [
            {
              "key": "uv-v1",
              "paths": [
                "~/.cache/uv"
              ],
              "restoreKeys": [
                "uv-"
              ]
            }
          ]
        },
        {
          "_type": "static",
          "name": "deploy",
          "runsOn": [
            {
              "kind": "exact",
              "value": "deploy-pool"
            }
          ],
          "runsOnPick": "deterministic",
          "needs": [
            "test"
          ],
          "steps": [
            {
              "name": "build",
              "hasOutputs": true,
              "timeout": 300000,
              "retry": {
                "maxAttempts": 2,
                "delayMs": 1000,
                "backoff": "exponential",
                "maxDelayMs": 30000
              },
              "sourceLocation": {
                "file": ".kici/workflows/ci.py",
                "line": 14,
                "column": 2
              }
            },
            {
              "name": "upload",
              "hasOutputs": false
            }
          ],
          "rules": [
            {
              "_type": "dynamic",
              "label": "push to main",
              "source": {
                "file": ".kici/workflows/ci.py",
                "index": 200
              }
            }
          ],
          "environments": [
            {
              "value": "production",
              "dynamic": false
            }
          ],
          "concurrencyGroup": "production",
          "hasCleanup": true,
          "hasOnFailure": true,
          "gracePeriod": 30
        }
      ],
      "rules": [
        {
          "_type": "dynamic",
          "label": "docs only",
          "source": {
            "file": ".kici/workflows/ci.py",
            "index": 0
          }
        }
      ],
      "timeout": 1800000
    }
  ]
}
""".replace("HASH", HASH)


def _doc() -> dict[str, Any]:
    return json.loads(CI_LOCK)


def _rejects(doc: Any) -> LockFileParseError:
    with pytest.raises(LockFileParseError) as info:
        parse_lock(json.dumps(doc))
    return info.value


@pytest.mark.feature("LOCK-01", "LOCK-02", "LOCK-03", "LOCK-04", "LOCK-05", "LOCK-09")
def test_compiler_output_is_reproduced_byte_for_byte() -> None:
    lock = parse_lock(CI_LOCK)
    assert dump_lock(lock) == CI_LOCK
    deploy = lock.workflows[0].jobs[2]
    assert isinstance(deploy, LockJob)
    assert deploy.has_cleanup
    assert deploy.has_on_failure
    assert not deploy.has_on_cancel
    assert deploy.grace_period == 30


@pytest.mark.feature("LOCK-01")
def test_versions_are_exact() -> None:
    assert SCHEMA_VERSION == 1
    assert COMPILE_SCHEMA_VERSION == 5


@pytest.mark.feature("LOCK-02")
def test_the_22_trigger_types() -> None:
    assert list(TRIGGER_TYPES) == [
        "pr", "push", "tag", "comment", "review", "review_comment", "release", "dispatch", "create", "delete",
        "status", "workflow_run", "fork", "star", "watch", "webhook", "kici_event", "workflow_complete",
        "job_complete", "generic_webhook", "schedule", "lifecycle",
    ]  # fmt: skip


@pytest.mark.feature("LOCK-01", "LOCK-09")
def test_an_empty_lock_has_the_default_source() -> None:
    text = dump_lock(LockFile(content_hash=HASH))
    assert json.loads(text) == {
        "schemaVersion": 1,
        "source": {"file": ".kici/workflows", "export": "#default"},
        "contentHash": HASH,
        "workflows": [],
    }
    assert text.endswith("}\n")


@pytest.mark.feature("LOCK-01")
@pytest.mark.parametrize(("version", "shown"), [(29, "29"), (0, "0"), (2, "2"), (1.0, "1.0"), (-1, "-1")])
def test_foreign_schema_version_message_is_d3(version: Any, shown: str) -> None:
    doc = _doc()
    doc["schemaVersion"] = version
    error = _rejects(doc)
    assert isinstance(error, LockSchemaVersionError)
    assert str(error) == (
        f"Lock file schemaVersion {shown} is incompatible with this orchestrator (engine SCHEMA_VERSION 1). "
        "Recompile the lock with `kici compile` and push again."
    )


@pytest.mark.feature("LOCK-01", "LOCK-09")
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "not valid JSON (Expecting value at line 1, column 1)"),
        ("{", "not valid JSON"),
        ("[]", "expected a JSON object at the top level, got an array"),
        ('{"workflows": []}', "missing"),
        ('{"schemaVersion": "1"}', 'expected a number, got "1"'),
        ('{"schemaVersion": true}', "expected a number, got true"),
        ('{"schemaVersion": null}', "expected a number, got null"),
        ('{"schemaVersion": 1, "schemaVersion": 1}', 'duplicate key "schemaVersion"'),
        ('{"schemaVersion": NaN}', "NaN is not valid JSON"),
        ('{"schemaVersion": 1, "x": Infinity}', "Infinity is not valid JSON"),
    ],
)
def test_unusable_documents(text: str, problem: str) -> None:
    with pytest.raises(LockFileParseError) as info:
        parse_lock(text)
    assert problem in info.value.problem
    assert "Recompile the lock with `kici compile`" in str(info.value)


@pytest.mark.feature("LOCK-09")
def test_bytes_must_be_utf8() -> None:
    assert parse_lock(CI_LOCK.encode()) == parse_lock(CI_LOCK)
    with pytest.raises(LockFileParseError, match="not UTF-8"):
        parse_lock(b"\xff{}")


def _set(path: list[Any], value: Any) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        target: Any = doc
        for part in path[:-1]:
            target = target[part]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return mutate


_DELETE = object()
JOB = ["workflows", 0, "jobs", 1]


TRIGGER = ["workflows", 0, "triggers"]


@pytest.mark.feature("LOCK-01", "LOCK-03", "LOCK-04", "LOCK-09", "LOCK-12")
@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        ([*JOB, "runsOn", 0, "kind"], "glob", 'expected "exact" or "regex", got "glob"'),
        ([*JOB, "bogus"], 1, "unknown key"),
        ([*JOB, "needs"], _DELETE, 'missing required key "needs"'),
        ([*JOB, "timeout"], None, "null is not allowed here"),
        ([*JOB, "maxParallel"], "2", 'expected an integer, got "2"'),
        ([*JOB, "maxParallel"], 2.5, "expected an integer, got 2.5"),
        ([*JOB, "maxParallel"], True, "expected an integer, got true"),
        ([*JOB, "checkout"], 1, "expected a boolean, got 1"),
        ([*JOB, "_type"], "dynamc", 'expected "static" or "dynamic", got "dynamc"'),
        ([*JOB, "_type"], _DELETE, 'missing required key "_type"'),
        ([*JOB, "needs", 0], 7, "expected a string or an object, got 7"),
        ([*JOB, "needs", 0], {"job": "lint"}, 'expected an object with a "name" or "group" key'),
        ([*JOB, "needs", 0, "runOn"], _DELETE, 'missing required key "runOn"'),
        ([*JOB, "steps", 0, "kind"], "serial", 'expected "sequential" or "parallel", got "serial"'),
        ([*JOB, "steps"], "step-1", 'expected an array, got "step-1"'),
        ([*JOB, "matrix", "_type"], "fixed", 'expected "static" or "dynamic", got "fixed"'),
        ([*JOB, "matrix", "values"], "3.11", "expected an array or an object"),
        ([*JOB, "env", "A"], 1, "expected a string, got 1"),
        ([*JOB, "env", "_type"], "inlined", 'expected "inline", got "inlined"'),
        ([*JOB, "container"], 3, "expected a string or an object, got 3"),
        ([*JOB, "init"], True, "expected false, got true"),
        ([*JOB, "init"], "nix", 'expected "mise" or "auto", got "nix"'),
        ([*JOB, "runsOnPick"], "random", 'expected "deterministic" or "any", got "random"'),
        ([*TRIGGER, 0, "_type"], "pull_request", 'got "pull_request"'),
        ([*TRIGGER, 0, "paths"], _DELETE, 'missing required key "paths"'),
        ([*TRIGGER, 0, "repos"], None, "null is not allowed"),
        ([*TRIGGER, 1, "branches", 0, "type"], "exact", 'expected "glob" or "regex", got "exact"'),
        (["workflows", 0, "contentHash"], 5, "expected a string, got 5"),
        (["lockfileHash"], None, "null is not allowed"),
        (["workflows"], {}, "expected an array, got an object"),
    ],
)
def test_strict_parse_names_the_path(path: list[Any], value: Any, problem: str) -> None:
    doc = _doc()
    job = doc["workflows"][0]["jobs"][1]
    job["needs"] = [{"name": "lint", "runOn": ["success"]}]
    job["env"] = {"A": "b", "_type": "inline"} if path[-2:] == ["env", "_type"] else {"A": "b"}
    _set(path, value)(doc)
    where = format_path(path[:-1] if value is _DELETE else path)
    error = _rejects(doc)
    assert error.path == where
    assert problem in error.problem
    assert str(error).startswith(f"Lock file is invalid: {where}: ")


@pytest.mark.feature("LOCK-04", "LOCK-09")
def test_implied_and_false_values_are_accepted_and_normalized() -> None:
    doc = _doc()
    job = doc["workflows"][0]["jobs"][0]
    job["steps"][0]["kind"] = "sequential"
    job["hasOnCancel"] = False
    job["checkout"] = False
    doc["workflows"][0]["contexts"] = ["legacy-context"]
    data = json.loads(dump_lock(parse_lock(json.dumps(doc))))
    out = data["workflows"][0]
    assert "kind" not in out["jobs"][0]["steps"][0]
    assert "hasOnCancel" not in out["jobs"][0]
    assert out["jobs"][0]["checkout"] is False
    assert "contexts" not in out


@pytest.mark.feature("LOCK-09")
def test_legacy_contexts_must_still_be_strings() -> None:
    doc = _doc()
    doc["workflows"][0]["contexts"] = [1]
    assert _rejects(doc).path == "workflows[0].contexts"


@pytest.mark.feature("LOCK-02", "LOCK-09")
def test_input_defaults_may_be_null_and_unset_is_omitted() -> None:
    trigger = ScheduleTrigger(
        cron_expression="0 3 * * *",
        inputs=FrozenDict(
            {
                "mode": InputDescriptor(
                    type="enum", optional=False, nullable=False, default="full", values=("full",)
                ),
                "note": InputDescriptor(type="string", optional=False, nullable=True, default=None),
                "n": InputDescriptor(type="integer", optional=True, nullable=False, min=1, max=5),
            }
        ),
    )
    data = to_json(trigger)
    assert data["inputs"]["note"] == {"type": "string", "optional": False, "nullable": True, "default": None}
    assert "default" not in data["inputs"]["n"]
    assert data["inputs"]["n"]["min"] == 1
    assert from_json(data, ScheduleTrigger) == trigger
    assert trigger.inputs is not None
    assert trigger.inputs["n"].default is UNSET


@pytest.mark.feature("LOCK-08")
def test_inline_values_in_env_environments_and_concurrency_group() -> None:
    choice = {"_type": "inline", "expression": "'prod' if event.target_branch == 'main' else 'stg'"}
    data = {
        "_type": "static",
        "name": "release",
        "runsOn": [{"kind": "exact", "value": "linux"}],
        "runsOnPick": "deterministic",
        "needs": [],
        "steps": [],
        "environments": [
            {"value": choice, "dynamic": True},
            {"value": "", "dynamic": True},
        ],
        "env": {"_type": "inline", "expression": "{'TARGET': 'prod'}"},
        "concurrencyGroup": {"_type": "inline", "expression": "event.target_branch"},
    }
    job = from_json(data, LockJob)
    assert to_json(job) == data


@pytest.mark.feature("LOCK-03")
def test_needs_forms_and_models_are_hashable() -> None:
    data = [
        "build",
        {"name": "test", "runOn": ["success", "skipped"]},
        {"group": "deploys", "runOn": ["success"]},
    ]
    fan_out = {"include": [[{"kind": "regex", "source": "^web", "flags": ""}]], "exclude": []}
    job = from_json(
        {"_type": "static", "name": "x", "runsOnAll": fan_out, "needs": data, "steps": []}, LockJob
    )
    assert job.needs[0] == "build"
    assert job.needs[1] == NeedsEntry(name="test", run_on=("success", "skipped"))
    assert len({job, from_json(to_json(job), LockJob)}) == 1


@pytest.mark.feature("LOCK-04")
def test_parallel_children_cannot_nest() -> None:
    step = {
        "kind": "parallel",
        "name": "p",
        "failFast": True,
        "children": [{"kind": "parallel", "name": "q"}],
    }
    with pytest.raises(LockFileParseError) as info:
        from_json({"_type": "static", "name": "x", "needs": [], "steps": [step]}, LockJob)
    assert info.value.path == "steps[0].children[0].kind"
    assert from_json({"name": "s", "hasOutputs": False}, LockStep) == LockStep(name="s", has_outputs=False)


@pytest.mark.feature("LOCK-01")
def test_frozen_dict_is_a_read_only_hashable_mapping() -> None:
    first = FrozenDict({"a": 1, "b": (1, 2)})
    second = FrozenDict({"b": (1, 2), "a": 1})
    assert first == second == {"a": 1, "b": (1, 2)}
    assert hash(first) == hash(second)
    assert list(first) == ["a", "b"]
    assert first != FrozenDict({"a": 2})
    assert not hasattr(first, "__setitem__")
    assert repr(FrozenDict({"a": 1})) == "FrozenDict({'a': 1})"
