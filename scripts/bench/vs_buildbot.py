"""``vs-buildbot``: the same latency and throughput measurements on buildbot and on kici, and the ratios.

The two systems run one after the other, never at once, so each has the whole box (2 cores): first
buildbot (:func:`buildbot_side.measure_buildbot`), then kici (``kici_side.measure_kici``).

The contract with ``scripts/bench/kici_side.py``: ``measure_kici(runs, burst)`` (a plain or an async
function) measures what ``measure_buildbot`` does, with the same webhook bytes
(:func:`_common.github_push`) and the same step (:data:`_common.STAMP_SCRIPT`), and returns a dict
with at least ``latency_ms`` (``median``, ``p90``, ``p99`` in ms: signed push POST -> the step's
stamp, one warm-up run not counted) and ``throughput_per_s`` (a burst of ``burst`` pushes: jobs per
second from the first POST to the last job terminal). While that module does not exist yet the line
carries ``"kici": null`` and a note saying so.

Ratios are "how many times better kici is": buildbot's latency over kici's, kici's throughput over
buildbot's. The targets of issue 7 are checked on the kici figures: median < 100 ms and >= 10x
buildbot's throughput.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from collections.abc import Callable
from typing import Any, Final

import trio
from _common import emit, machine, progress
from buildbot_side import measure_buildbot

LATENCY_TARGET_MS: Final = 100.0
THROUGHPUT_TARGET_X: Final = 10.0
MISSING_NOTE: Final = (
    "scripts/bench/kici_side.py (measure_kici) is not there yet: only buildbot was measured; "
    "kici's side lands once the agent can run jobs"
)


def kici_measurer() -> Callable[[int, int], Any] | None:
    """``kici_side.measure_kici``, or None while that module does not exist."""
    try:
        module = importlib.import_module("kici_side")
    except ModuleNotFoundError as exc:
        if exc.name == "kici_side":
            return None
        raise
    measure: Callable[[int, int], Any] = module.measure_kici
    return measure


def measure_kici(measure: Callable[[int, int], Any], runs: int, burst: int) -> dict[str, Any]:
    if inspect.iscoroutinefunction(measure):
        return dict(trio.run(measure, runs, burst))
    return dict(measure(runs, burst))


def ratios(buildbot: dict[str, Any], kici: dict[str, Any]) -> dict[str, float]:
    out = {
        f"latency_{key}_x": round(buildbot["latency_ms"][key] / kici["latency_ms"][key], 2)
        for key in ("median", "p90", "p99")
        if kici["latency_ms"].get(key)
    }
    if kici.get("throughput_per_s") and buildbot["throughput_per_s"]:
        out["throughput_x"] = round(kici["throughput_per_s"] / buildbot["throughput_per_s"], 2)
    return out


def targets(kici: dict[str, Any], ratio: dict[str, float]) -> dict[str, bool]:
    return {
        "latency_median_lt_100ms": kici["latency_ms"]["median"] < LATENCY_TARGET_MS,
        "throughput_ge_10x_buildbot": ratio.get("throughput_x", 0.0) >= THROUGHPUT_TARGET_X,
    }


def compare(runs: int, burst: int) -> dict[str, Any]:
    measure = kici_measurer()
    progress(f"buildbot: {runs} latency runs, a burst of {burst}")
    buildbot = measure_buildbot(runs, burst)
    figures: dict[str, Any] = {"bench": "vs-buildbot", "runs": runs, "burst": burst, "buildbot": buildbot}
    if measure is None:
        progress(MISSING_NOTE)
        return {**figures, "kici": None, "ratios": None, "note": MISSING_NOTE}
    progress(f"kici: {runs} latency runs, a burst of {burst}")
    kici = measure_kici(measure, runs, burst)
    ratio = ratios(buildbot, kici)
    return {**figures, "kici": kici, "ratios": ratio, "targets": targets(kici, ratio)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30, help="sequential latency runs (after one warm-up)")
    parser.add_argument("--burst", type=int, default=200, help="webhooks in the throughput burst")
    args = parser.parse_args()
    if args.runs < 1 or args.burst < 1:
        parser.error("--runs and --burst must be positive")
    try:
        figures = compare(args.runs, args.burst)
    except (RuntimeError, TimeoutError, trio.TooSlowError) as exc:
        progress(f"vs-buildbot failed: {exc}")
        sys.exit(1)
    emit({**figures, "machine": machine()})


if __name__ == "__main__":
    main()
