"""The kici side of ``vs-buildbot``: ``measure_kici(runs, burst)``, the counterpart of
``buildbot_side.measure_buildbot``.

Same webhook bytes (a signed GitHub push, :func:`_common.github_push`), same step
(``python3 -c STAMP_SCRIPT``), same measurements:

* latency: :func:`latency.measure_latency` with the default bubblewrap agent (one slot, warm: one
  run not counted), ``runs`` pushes one after the other; ``latency_ms`` is POST -> the stamp;
* throughput: :func:`throughput.measure_throughput`, a burst of ``burst`` pushes POSTed 8 at a time
  into 2 agents x 4 slots; ``throughput_per_s`` is jobs per second from the first POST to the last
  job terminal.

The two run on separate stacks, one after the other, as buildbot's two measurements run one after
the other on one cluster. Everything else the two benchmarks report (stage breakdown, CPU per job,
PostgreSQL transactions) is passed through under ``latency`` and ``throughput``.

``python scripts/bench/kici_side.py [--runs 30] [--burst 200]`` prints the kici half alone.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import trio
from _common import emit, machine, progress
from latency import measure_latency
from throughput import measure_throughput


def measure_kici(runs: int = 30, burst: int = 200) -> dict[str, Any]:
    """Both measurements on fresh stacks; ``latency_ms`` and ``throughput_per_s`` as vs_buildbot reads."""
    if runs < 1 or burst < 1:
        raise ValueError("runs and burst must be positive")
    progress(f"kici latency: {runs} runs (bwrap)")
    latency = measure_latency(runs, "bwrap")
    progress(f"kici throughput: a burst of {burst}")
    throughput = measure_throughput(burst, "bwrap")
    return {
        "bench": "kici",
        "runs": runs,
        "burst": burst,
        "latency_ms": latency["latency_ms"],
        "throughput_per_s": throughput["throughput_per_s"],
        "latency": latency,
        "throughput": throughput,
    }


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
        figures = measure_kici(args.runs, args.burst)
    except (RuntimeError, TimeoutError, trio.TooSlowError) as exc:
        progress(f"kici benchmark failed: {exc}")
        sys.exit(1)
    emit({**figures, "machine": machine()})


if __name__ == "__main__":
    main()
