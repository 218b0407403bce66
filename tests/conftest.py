"""Suite-wide configuration: hypothesis profiles and the ``feature`` marker.

``@pytest.mark.feature("EXE-01", ...)`` ties a test to spec feature IDs. Unknown
IDs fail collection (a typo would otherwise silently claim nothing), and
``--feature-map FILE`` writes the node-id -> IDs map that ``scripts/features`` reads.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from kici.testing.features import read_features, spec_dir

REPO_ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = ["kici.testing.pg_plugin"]

settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile(
    "ci",
    max_examples=150,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--feature-map",
        metavar="FILE",
        default=None,
        help="write a JSON map of test node id -> feature IDs after collection",
    )


def _feature_ids(item: pytest.Item) -> list[str]:
    ids: list[str] = []
    for mark in item.iter_markers("feature"):
        ids.extend(str(a) for a in mark.args)
    return sorted(set(ids))


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    directory = spec_dir(REPO_ROOT)
    known = read_features(directory) if directory is not None else None
    mapping: dict[str, list[str]] = {}
    unknown: list[str] = []
    for item in items:
        ids = _feature_ids(item)
        if ids:
            mapping[item.nodeid] = ids
        if known is not None:
            unknown.extend(f"{item.nodeid}: {fid}" for fid in ids if fid not in known)
    if unknown:
        raise pytest.UsageError(
            "tests claim feature IDs the spec does not declare (check the spelling against "
            f"{directory}):\n  " + "\n  ".join(unknown)
        )
    out = config.getoption("--feature-map")
    if out:
        Path(out).write_text(json.dumps(mapping, indent=1, sort_keys=True), encoding="utf-8")


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """A daemon's ``main`` run in-process installs root log handlers on pytest's capture streams; left in
    place they write to closed files in whichever test runs next on the worker."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
