"""Feature IDs of the specification, read from ``shared/spec/*.md``.

The spec lists every feature once, either as a table row ``| EXE-01 | summary | core |``
or as a bullet ``- CLU-01 C summary``. Tests claim IDs with ``@pytest.mark.feature``;
this module is the single reader of the spec so that the test collector (which
rejects unknown IDs) and ``scripts/features`` (which reports coverage) agree.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_TABLE_ROW = re.compile(r"^\|\s*([A-Z]+-\d+)\s*\|\s*(.*?)\s*\|\s*([^|]*?)\s*\|\s*$")
_BULLET = re.compile(r"^-\s+([A-Z]+-\d+)\s+([CAH](?:/[CAH])?)\s+(.*)$")
_TAGS = {"c": "core", "core": "core", "a": "advanced", "advanced": "advanced", "h": "hosted-only"}


@dataclass(frozen=True)
class Feature:
    id: str
    summary: str
    tier: str
    source: str

    @property
    def prefix(self) -> str:
        return self.id.split("-", 1)[0]


def _tier(raw: str) -> str:
    word = raw.strip().lower()
    if word.startswith("hosted"):
        return "hosted-only"
    first = re.split(r"[\s/(]", word, maxsplit=1)[0]
    return _TAGS.get(first, word or "?")


def spec_dir(repo_root: Path) -> Path | None:
    """Where the spec lives: ``$KICI_SPEC_DIR``, else ``<repo>/../shared/spec``."""
    env = os.environ.get("KICI_SPEC_DIR")
    candidate = Path(env) if env else repo_root.parent / "shared" / "spec"
    return candidate if candidate.is_dir() else None


def read_features(directory: Path) -> dict[str, Feature]:
    """Every feature ID the spec declares, in spec order (first declaration wins)."""
    found: dict[str, Feature] = {}
    for path in sorted(directory.glob("*.md")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = _TABLE_ROW.match(line)
            bullet = _BULLET.match(line) if row is None else None
            if row is not None:
                fid, summary, tier = row.group(1), row.group(2), _tier(row.group(3))
            elif bullet is not None:
                fid, tier, summary = bullet.group(1), _tier(bullet.group(2)), bullet.group(3)
            else:
                continue
            found.setdefault(fid, Feature(fid, summary, tier, path.name))
    return found
