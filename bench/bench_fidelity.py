"""The simulator's fidelity on this host: `validate` at each load, the DES against the live run, against the 10% target.

Per pipeline and load, three rows: the profile DES (service times from the host's profile and the scenario's draws),
the replay DES (the live run's own arrivals, measured service times and pauses between steps: only the queueing
model differs from live)
and the live run, with p50 and p99, each model's error against live with its 95% interval (batch means over time),
and whether it is within the target. Then, per point:
- the replay's error on each stage's mean wait (replay/live ms, where either waits at least `WAIT_FLOOR_MS`);
- the service-time model's error per stage (`service_error`: the profile DES's mean service against live's measured);
- the live time outside any stage visit (load generator lag, the loop's hand-offs at forks and joins) and the part
  of it the replay pauses for (its trace's pauses between steps);
- the host's await lateness (idle, and with the model running as at the load) and executor hand-off (`live.host`).
The figures depend on the host (its cores, its load, its idle wake-up), which is why they are measured here and not
asserted in the test suite.

    python bench/bench_fidelity.py [SCENARIO] [--qps q1,q2,...] [--duration S] [--keep DIR]
    python bench/bench_fidelity.py --from DIR/validate.json     (the tables of a validate run already made)
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from aif_sim.app.validate import TOLERANCE, WAIT_FLOOR_MS
from aif_sim.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _error(error: float, interval: list[float] | None) -> str:
    mark = "yes" if abs(error) <= TOLERANCE else "no"
    spread = f" [{interval[0]:+.0%}, {interval[1]:+.0%}]" if interval else ""
    return f"{error:+.1%}{spread} {mark}"


def _fidelity_table(points: list[dict[str, Any]]) -> Table:
    table = Table(title=f"fidelity: model/live - 1 [95% CI] within ±{TOLERANCE:.0%}?")
    columns = ("pipeline", "QPS", "utilisation", "requests", "run", "p50 ms", "p50 error", "p99 ms", "p99 error")
    for column in columns:
        table.add_column(column, justify="left" if column in ("pipeline", "run") else "right")
    for point in points:
        head = [point["pipeline"], f"{point['qps']:g}", f"{point['utilization']:.0%} ({point['bottleneck']})", f"{point['samples']:,}"]
        replay, live = point["replay"], point["live"]
        for run, figures, error, intervals in (
            ("profile DES", point["des"], point["error"], point["ci95"].get("error", {})),
            ("replay DES", replay, replay["error"], replay["ci95"].get("error", {})),
        ):
            cells = [f"{figures['p50_ms']:.1f}", _error(error["p50"], intervals.get("p50"))]
            cells += [f"{figures['p99_ms']:.1f}", _error(error["p99"], intervals.get("p99"))]
            table.add_row(*head, run, *cells)
            head = ["", "", "", ""]
        table.add_row(*head, "live", f"{live['p50_ms']:.1f}", "", f"{live['p99_ms']:.1f}", "", end_section=True)
    return table


def _stage_table(points: list[dict[str, Any]]) -> Table:
    table = Table(title="per stage: mean wait replay / live ms (error); mean service profile DES / live ms (error)")
    for column in ("pipeline", "QPS", "stage", "wait replay/live", "wait error", "service DES/live", "service error"):
        table.add_column(column, justify="left" if column in ("pipeline", "stage") else "right")
    for point in points:
        replay, live = point["replay"], point["live"]
        for stage, service in point["service_error"].items():
            wait_error = replay["error"]["wait"][stage]
            table.add_row(
                point["pipeline"],
                f"{point['qps']:g}",
                stage,
                f"{replay['wait_ms'][stage]:.2f} / {live['wait_ms'][stage]:.2f}",
                f"{wait_error:+.0%}" if wait_error is not None else f"both < {WAIT_FLOOR_MS:g}",
                f"{service['des_ms']:.2f} / {service['live_ms']:.2f}",
                f"{service['error']:+.0%}",
            )
        table.rows[-1].end_section = True
    return table


def _host_table(points: list[dict[str, Any]]) -> Table:
    table = Table(title="time outside stage visits, live and replayed, and what the host adds (ms: mean / p99)")
    columns = (
        "pipeline",
        "QPS",
        "outside stages live",
        "replayed",
        "schedule lag p50 / p99",
        "await late idle",
        "await late, model busy",
        "executor hand-off",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "pipeline" else "right")
    for point in points:
        outside, lag, host = point["live"]["outside_stages_ms"], point["live_schedule"]["schedule_lag_ms"], point["host"]
        replayed = point["replay"]["outside_stages_ms"]
        late, handoff = host["await_lateness_ms"], host["executor_handoff_ms"]
        table.add_row(
            point["pipeline"],
            f"{point['qps']:g}",
            f"{outside['mean']:.2f} / {outside['p99']:.2f}",
            f"{replayed['mean']:.2f} / {replayed['p99']:.2f}",
            f"{lag['p50']:.2f} / {lag['p99']:.2f}",
            f"{late['idle']['mean']:.3f} / {late['idle']['p99']:.3f}",
            f"{late['model_running']['mean']:.3f} / {late['model_running']['p99']:.3f}",
            f"{handoff['mean']:.3f} / {handoff['p99']:.3f}",
        )
    return table


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default=str(ROOT / "scenarios" / "validate.yaml"))
    parser.add_argument("--qps", help="comma-separated loads (default: validate's, 20-80%% of capacity)")
    parser.add_argument("--duration", help="seconds of arrivals per load")
    parser.add_argument("--keep", help="copy validate's outputs (validate.json, profiles, plot) to this folder")
    parser.add_argument("--from", dest="document", help="print the tables of this validate.json instead of running validate")
    args = parser.parse_args()
    points = json.loads(Path(args.document).read_text())["points"] if args.document else _run(args)
    console = Console(width=220)
    for table in (_fidelity_table(points), _stage_table(points), _host_table(points)):
        console.print(table)
    for run, key in (("profile DES", None), ("replay DES", "replay")):
        within = sum(ok for point in points for ok in (point[key] if key else point)["within_tolerance"].values())
        print(f"{run}: {within} of {2 * len(points)} p50/p99 figures within ±{TOLERANCE:.0%}")


def _run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """validate's points, run now."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["validate", args.scenario, "--out", f"{tmp}/out", "--quiet"]
        argv += ["--qps", args.qps] if args.qps else []
        argv += ["--duration", args.duration] if args.duration else []
        if main(argv) != 0:
            raise SystemExit("validate failed")
        points = json.loads(Path(f"{tmp}/out/validate.json").read_text())["points"]
        if args.keep:
            shutil.copytree(f"{tmp}/out", args.keep, dirs_exist_ok=True)
    return points


if __name__ == "__main__":
    main_bench()
