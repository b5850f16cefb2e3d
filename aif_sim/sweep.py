"""Sweeps: one run per value of a scenario field and per pipeline, in parallel processes."""

from __future__ import annotations

import csv
import math
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from aif_sim.atomic import atomic_path, write_json
from aif_sim.report import headline_values, plot_latency_throughput, plot_sweep
from aif_sim.runner import build_samplers, simulate
from aif_sim.scenario import Scenario, load_scenario

SWEEP_PLOTS = ("p50_ms", "p99_ms", "throughput_qps", "compute_ms_per_request")
LOAD_PARAMS = ("traffic.arrival.qps", "traffic.arrival.mean_qps")


def sweep_point(path: str, overrides: list[tuple[str, Any]], pipeline: str) -> dict[str, Any]:
    """Run one pipeline of one sweep point; its METRICS block."""
    scenario = load_scenario(path, overrides + [("pipelines", [pipeline])])
    return simulate(scenario, build_samplers(scenario, path))[pipeline].summary()


def capacity(rows: list[dict[str, Any]], pipeline: str) -> float | None:
    """Highest swept load at which the pipeline met its SLO (None if it never did)."""
    met = [r["value"] for r in rows if r["pipeline"] == pipeline and r.get("slo_valid")]
    return max(met) if met else None


def run_sweep(
    path: str,
    scenario: Scenario,
    param: str,
    values: list[Any],
    base: list[tuple[str, Any]],
    out: Path,
    jobs: int | None,
    console: Console,
    quiet: bool,
) -> list[dict[str, Any]]:
    """Run every (value, pipeline) point; write sweep.csv, sweep.json and one PNG per headline metric."""
    points = [(value, pipeline) for value in values for pipeline in scenario.pipelines]
    results: dict[tuple[int, str], dict[str, Any]] = {}
    workers = min(jobs or os.cpu_count() or 1, len(points))
    with Progress(console=console, disable=quiet) as progress, ProcessPoolExecutor(max_workers=workers) as pool:
        task = progress.add_task(f"sweep {param}", total=len(points))
        futures = {
            pool.submit(sweep_point, path, base + [(param, value)], pipeline): (index, pipeline)
            for index, value in enumerate(values)
            for pipeline in scenario.pipelines
        }
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            progress.advance(task)
    rows = []
    for index, value in enumerate(values):
        for pipeline in scenario.pipelines:
            metrics = results[(index, pipeline)]
            row = {"param": param, "value": value, "pipeline": pipeline, **headline_values(metrics)}
            row["bottleneck"] = metrics["bottleneck"]
            if "slo" in metrics:
                row["slo_valid"] = metrics["slo"]["valid"]
                row["slo_missed_share"] = metrics["slo"]["missed_share"]
            rows.append(row)
    slo_ms = scenario.slo_p99_ms
    document: dict[str, Any] = {
        "scenario": scenario.name,
        "seed": scenario.seed,
        "param": param,
        "values": values,
        "points": [{"value": values[i], "pipeline": p, "metrics": results[(i, p)]} for i, v in enumerate(values) for p in scenario.pipelines],
    }
    if slo_ms is not None and param in LOAD_PARAMS:
        document["capacity_qps"] = {p: capacity(rows, p) for p in scenario.pipelines}
    _write_csv(out / "sweep.csv", rows)
    write_json(out / "sweep.json", document)
    for metric in SWEEP_PLOTS:
        plot_sweep(out / f"sweep_{metric}.png", rows, param, metric, slo_ms)
    if param in LOAD_PARAMS:
        plot_latency_throughput(out / "latency_throughput.png", rows, slo_ms)
    if not quiet:
        console.print(_sweep_table(rows, param, document.get("capacity_qps")))
        console.print(f"outputs in [bold]{out}[/]")
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _sweep_table(rows: list[dict[str, Any]], param: str, capacities: dict[str, float | None] | None) -> Table:
    table = Table(title=f"sweep of {param}", title_justify="left")
    for column in (param, "pipeline", "offered QPS", "throughput QPS", "p50 ms", "p99 ms", "compute ms/req", "bottleneck", "SLO"):
        table.add_column(column, justify="left" if column in ("pipeline", "bottleneck") else "right")
    for row in rows:
        verdict = "" if "slo_valid" not in row else ("[green]VALID[/]" if row["slo_valid"] else "[red]INVALID[/]")
        table.add_row(
            str(row["value"]), row["pipeline"], f"{row['offered_qps']:,.0f}", f"{row['throughput_qps']:,.0f}",
            _num(row["p50_ms"]), _num(row["p99_ms"]), _num(row["compute_ms_per_request"]), row["bottleneck"], verdict,
        )
    if capacities:
        caption = ", ".join(f"{p}: {c:g} QPS" if c is not None else f"{p}: none of the values" for p, c in capacities.items())
        table.caption = f"capacity under the SLO (highest swept load that met it): {caption}"
    return table


def _num(value: float) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:,.2f}"
