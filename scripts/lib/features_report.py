"""Report of spec feature IDs against the tests that claim them (see scripts/features)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from kici.testing.features import Feature, read_features, spec_dir

ROOT = Path(__file__).resolve().parents[2]


def collect(map_file: Path) -> dict[str, list[str]]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--feature-map={map_file}",
            "tests",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode not in (0, 5):
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        raise SystemExit("features: test collection failed")
    return json.loads(map_file.read_text(encoding="utf-8")) if map_file.exists() else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--missing", action="store_true", help="list only IDs no test claims")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()

    directory = spec_dir(ROOT)
    if directory is None:
        raise SystemExit(
            "features: spec not found (set KICI_SPEC_DIR or keep ../shared/spec beside the repo)"
        )
    features = read_features(directory)
    with tempfile.TemporaryDirectory() as tmp:
        mapping = collect(Path(tmp) / "map.json")

    tests_by_id: dict[str, list[str]] = defaultdict(list)
    for nodeid, ids in mapping.items():
        for fid in ids:
            tests_by_id[fid].append(nodeid)

    totals: dict[str, dict[str, int]] = defaultdict(lambda: {"features": 0, "covered": 0, "tests": 0})
    for fid, feature in features.items():
        row = totals[feature.prefix]
        row["features"] += 1
        row["covered"] += bool(tests_by_id.get(fid))
        row["tests"] += len(tests_by_id.get(fid, []))

    if args.json:
        print(
            json.dumps(
                {
                    "features": {
                        fid: {"tier": f.tier, "summary": f.summary, "tests": sorted(tests_by_id.get(fid, []))}
                        for fid, f in features.items()
                    },
                    "totals": totals,
                },
                indent=1,
            )
        )
        return 0

    for fid, feature in features.items():
        tests = sorted(tests_by_id.get(fid, []))
        if args.missing and tests:
            continue
        print(_line(feature, len(tests)))
        if not args.missing:
            for nodeid in tests:
                print(f"      {nodeid}")
    print()
    print(f"{'prefix':<8}{'features':>9}{'covered':>9}{'tests':>7}")
    grand = {"features": 0, "covered": 0, "tests": 0}
    for prefix in sorted(totals):
        row = totals[prefix]
        print(f"{prefix:<8}{row['features']:>9}{row['covered']:>9}{row['tests']:>7}")
        for key in grand:
            grand[key] += row[key]
    print(f"{'total':<8}{grand['features']:>9}{grand['covered']:>9}{grand['tests']:>7}")
    return 0


def _line(feature: Feature, count: int) -> str:
    mark = "x" if count else " "
    return f"[{mark}] {feature.id:<9} {feature.tier:<11} {count:>3} tests  {feature.summary[:70]}"


if __name__ == "__main__":
    raise SystemExit(main())
