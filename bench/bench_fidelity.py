"""The simulator's fidelity on this host: `validate` at each load, the DES against the live run, against the 10% target.

Prints, per pipeline and load, the p50 and p99 errors (DES/live - 1) with their 95% intervals and whether each is within
the target, and how many are; and the stage whose mean latency diverges most (DES/live means, ms). The figure depends on the host (its cores, its load, its idle wake-up), which is why it is
measured here and not asserted in the test suite.

    python bench/bench_fidelity.py [SCENARIO] [--qps q1,q2,...] [--duration S]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from aif_sim.app.validate import TOLERANCE
from aif_sim.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _error(point: dict, name: str) -> str:
    low, high = point["ci95"]["error"][name]
    mark = "yes" if point["within_tolerance"][name] else "no"
    return f"{point['error'][name]:+.1%} [{low:+.0%}, {high:+.0%}] {mark}"


def _diverging(stage: dict) -> str:
    return f"{stage['stage']} {stage['des_ms']:.2f}/{stage['live_ms']:.2f} ({stage['error']:+.0%})"


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default=str(ROOT / "scenarios" / "validate.yaml"))
    parser.add_argument("--qps", help="comma-separated loads (default: validate's, 20-80%% of capacity)")
    parser.add_argument("--duration", help="seconds of arrivals per load")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["validate", args.scenario, "--out", f"{tmp}/out", "--quiet"]
        argv += ["--qps", args.qps] if args.qps else []
        argv += ["--duration", args.duration] if args.duration else []
        if main(argv) != 0:
            raise SystemExit("validate failed")
        points = json.loads(Path(f"{tmp}/out/validate.json").read_text())["points"]
    table = Table(title=f"fidelity: DES/live - 1 [95% CI] within ±{TOLERANCE:.0%}?")
    for column in (
        "pipeline",
        "QPS",
        "utilisation",
        "requests",
        "p50 error",
        "p99 error",
        "schedule lag p99 ms",
        "diverging stage DES/live ms",
    ):
        table.add_column(column, justify="left" if column in ("pipeline", "diverging stage DES/live ms") else "right")
    for point in points:
        table.add_row(
            point["pipeline"],
            f"{point['qps']:g}",
            f"{point['utilization']:.0%} ({point['bottleneck']})",
            f"{point['samples']:,}",
            _error(point, "p50"),
            _error(point, "p99"),
            f"{point['live_schedule']['schedule_lag_ms']['p99']:.2f}",
            _diverging(point["diverging_stage"]),
        )
    within = sum(ok for point in points for ok in point["within_tolerance"].values())
    Console(width=200).print(table)
    print(f"{within} of {2 * len(points)} p50/p99 figures within ±{TOLERANCE:.0%}")


if __name__ == "__main__":
    main_bench()
