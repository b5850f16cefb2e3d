"""Sweeps: one run per value of a scenario field, pipeline and replication, in parallel processes;
or a bisection of the offered load for the capacity under the SLO.

With N replications a point runs with seeds seed, seed+1, …, seed+N−1 and every metric is reported
as the mean, the 95% confidence half-width of the mean (Student's t) and the interval's bounds clipped
to what the metric can be (a latency percentile not below its no-contention counterpart's interval, a
share within [0, 1], a count or a time not negative). A point meets the SLO when the upper bounds of
its p99 and of its missed share (lost or over the bound) meet `slo.p99_ms` and the 1% budget; with one
replication the bounds are the values themselves. With fewer than 5 replications an interval wider
than its mean is reported in `warnings`: at 2 or 3 runs the t quantile (12.7, 4.3) makes intervals too
wide to decide on.
"""

from __future__ import annotations

import math
import multiprocessing
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from aif_sim.app.interrupt import StopSignal, ignore_in_worker
from aif_sim.app.point_cache import PointCache, point_key
from aif_sim.app.quality import score_shadow_samples, shadow_scorer, shadow_scores
from aif_sim.app.run import build_samplers, simulate
from aif_sim.atomic import json_safe, write_csv, write_json
from aif_sim.core.hardware import hardware
from aif_sim.errors import InputError
from aif_sim.metrics.recorder import SLO_MISS_BUDGET
from aif_sim.metrics.summary import HEADLINES, NUMERIC, Metric, headline_values
from aif_sim.report.fmt import param_label, run_title
from aif_sim.report.html import write_report
from aif_sim.report.plots import plot_sweep
from aif_sim.report.tables import sweep_table
from aif_sim.scenario import Override, Scenario, ScenarioSource, load_scenario

LOAD_PARAMS = ("traffic.arrival.qps", "traffic.arrival.mean_qps")
CAPACITY_TOLERANCE = 0.02  # bisection stops when the bracket is within 2% of the load
P99 = next(m for m in HEADLINES if m.key == "p99_ms")
FEW_REPLICATIONS = 5  # below this, an interval wider than its mean is reported as a warning
# a request's latency is at least its critical path with no waiting: each latency figure's floor
LATENCY_FLOORS = {
    "p50_ms": "no_contention_p50_ms",
    "p90_ms": "no_contention_p50_ms",
    "p99_ms": "no_contention_p99_ms",
    "p999_ms": "no_contention_p99_ms",
    "max_ms": "no_contention_p99_ms",
}
DIFFERENCES = ("gauc_loss", "hr_at_100_loss")  # differences of two shares: within [-1, 1]


@dataclass(frozen=True)
class Job:
    """One simulation of a sweep: a value of the swept field, a pipeline, a replication."""

    value: Any
    pipeline: str
    replication: int


@dataclass
class SweepContext:
    """What every job of a sweep shares (`path`: the scenario file, or its fields as a mapping)."""

    path: ScenarioSource
    scenario: Scenario
    param: str
    base: list[Override]
    replications: int
    jobs: int | None
    console: Console
    quiet: bool
    stop: StopSignal
    cache: PointCache = field(default_factory=lambda: PointCache(None))
    backend: str = "process"
    engine: str = "auto"

    def value_overrides(self, value: Any) -> list[Override]:
        """The overrides that set a swept value."""
        return [(self.param, value, "--param")]


def simulate_job(path: ScenarioSource, overrides: list[Override], engine: str) -> dict[str, Any]:
    """Run one pipeline of one sweep point; its METRICS block as JSON has it (in a worker process)."""
    scenario = load_scenario(path, overrides)
    if shadow_scores(scenario):
        shadow_scorer(scenario, path)  # the scored world, checked against the point's scenario
    results = simulate(scenario, build_samplers(scenario, path), engine=engine)
    score_shadow_samples(scenario, results)
    return json_safe(results[scenario.pipelines[0]].summary())


def job_overrides(ctx: SweepContext, job: Job) -> list[Override]:
    """The overrides of one job: the swept value, its seed, its one pipeline."""
    return (
        ctx.base
        + ctx.value_overrides(job.value)
        + [
            ("seed", ctx.scenario.seed + job.replication, "--replications"),
            ("pipelines", [job.pipeline], "--param"),
        ]
    )


def run_jobs(ctx: SweepContext, jobs: list[Job], label: str) -> dict[Job, dict[str, Any]]:
    """Run the jobs in a process pool with a progress bar; stops early (returning what finished) when asked."""
    results: dict[Job, dict[str, Any]] = {}
    keys = {job: point_key(load_scenario(ctx.path, job_overrides(ctx, job))) for job in jobs} if ctx.cache.folder else {}
    for job in keys:
        cached = ctx.cache.get(keys[job])
        if cached is not None:
            results[job] = cached
    todo = [job for job in jobs if job not in results]
    if not todo:
        return results
    pool = _pool(ctx, len(todo))
    try:
        with Progress(console=ctx.console, disable=ctx.quiet or not ctx.console.is_terminal, transient=True) as progress:
            task = progress.add_task(label, total=len(jobs), completed=len(jobs) - len(todo))
            pending = {job: pool.apply_async(simulate_job, (ctx.path, job_overrides(ctx, job), ctx.engine)) for job in todo}
            while pending and not ctx.stop():
                for job in [j for j, handle in pending.items() if handle.ready()]:
                    results[job] = pending.pop(job).get()
                    if job in keys:
                        ctx.cache.put(keys[job], results[job])
                    progress.advance(task)
                time.sleep(0.05)
    finally:
        pool.terminate()
        pool.join()
    return results


def _pool(ctx: SweepContext, jobs: int) -> Any:
    """Worker processes for `jobs` jobs: a local process pool, or Ray's (a local instance, or the cluster named by
    RAY_ADDRESS; `--jobs` then bounds the workers, by default Ray's CPUs)."""
    if ctx.backend == "ray":
        try:
            from ray.util.multiprocessing import Pool as RayPool
        except ImportError:
            raise InputError("--backend ray: Ray is not installed (pip install 'aif-sim[ray]')") from None
        pool = RayPool(min(ctx.jobs, jobs) if ctx.jobs else None, initializer=ignore_in_worker)
        ctx.stop.rearm()  # ray.init replaced the SIGTERM handler
        return pool
    return multiprocessing.Pool(max(1, min(ctx.jobs or multiprocessing.cpu_count(), jobs)), initializer=ignore_in_worker)


def aggregate(value: Any, pipeline: str, runs: list[dict[str, Any]], slo_ms: float | None) -> dict[str, Any]:
    """One sweep.csv row: per headline metric its mean over the replications, the 95% half-width (`_ci95`) and the
    interval's bounds clipped to the metric's feasible range (`_lo`, `_hi`); None without an interval."""
    flats = [headline_values(metrics) for metrics in runs]
    means: dict[str, Any] = {}
    halves: dict[str, float | None] = {}
    for metric in HEADLINES:
        values = [flat[metric.key] for flat in flats]
        if metric.unit == "text":
            means[metric.key] = Counter(values).most_common(1)[0][0]
            continue
        finite = [v for v in values if v is not None and v == v]
        means[metric.key] = statistics.fmean(finite) if finite else None
        halves[metric.key] = _half_width(finite) if len(runs) > 1 else None
    row: dict[str, Any] = {"value": value, "pipeline": pipeline, "replications": len(runs)}
    for metric in HEADLINES:
        row[metric.key] = mean = means[metric.key]
        if metric.unit == "text":
            continue
        half = halves[metric.key]
        row[f"{metric.key}_ci95"] = half
        if mean is None or half is None:
            row[f"{metric.key}_lo"] = row[f"{metric.key}_hi"] = None
            continue
        floor, ceiling = feasible_range(metric, means, halves)
        row[f"{metric.key}_lo"] = min(max(mean - half, floor), mean)
        row[f"{metric.key}_hi"] = max(min(mean + half, ceiling), mean)
    if slo_ms is not None:
        row["slo_met"] = meets_slo(row, slo_ms)
    return row


def feasible_range(metric: Metric, means: dict[str, Any], halves: dict[str, float | None]) -> tuple[float, float]:
    """Where a metric's mean can lie, given the point's means and half-widths: a latency percentile not below the
    lower bound of its no-contention counterpart (each run's percentile is at least that of the same requests with no
    waiting, so their means are ordered too), a share or a GAUC within [0, 1], a loss of one within [-1, 1], anything
    else (loads, counts, times) not negative."""
    if metric.key in DIFFERENCES:
        return -1.0, 1.0
    if metric.unit in ("share", "ratio"):
        return 0.0, 1.0
    floor = LATENCY_FLOORS.get(metric.key)
    if floor is None or means.get(floor) is None:
        return 0.0, math.inf
    return max(means[floor] - (halves.get(floor) or 0.0), 0.0), math.inf


def _half_width(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    from scipy.stats import t as student_t  # imported here: scipy.stats takes half a second to import

    return float(student_t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5)


def wide_intervals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per point and metric, an interval wider than its mean from fewer than 5 replications: sweep.json `warnings`."""
    found = []
    for row in rows:
        if row["replications"] >= FEW_REPLICATIONS:
            continue
        for metric in NUMERIC:
            mean, half = row.get(metric.key), row.get(f"{metric.key}_ci95")
            if mean is not None and half is not None and half > abs(mean):
                found.append(
                    {
                        "kind": "wide_interval",
                        "value": row["value"],
                        "pipeline": row["pipeline"],
                        "metric": metric.key,
                        "replications": row["replications"],
                        "mean": mean,
                        "ci95": half,
                    }
                )
    return found


def upper(row: dict[str, Any], key: str) -> float:
    """Upper 95% bound of a row's metric (the value itself without replications)."""
    value = row.get(key)
    return float("inf") if value is None else value + (row.get(f"{key}_ci95") or 0.0)


def meets_slo(row: dict[str, Any], slo_ms: float) -> bool:
    return upper(row, "p99_ms") <= slo_ms and upper(row, "slo_missed_share") <= SLO_MISS_BUDGET


def rows_of(ctx: SweepContext, values: list[Any], results: dict[Job, dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of every (value, pipeline) that has at least one finished replication."""
    rows = []
    for value in values:
        for pipeline in ctx.scenario.pipelines:
            runs = [results[job] for job in sorted(results, key=lambda j: j.replication) if job.value == value and job.pipeline == pipeline]
            if runs:
                rows.append({"param": ctx.param, **aggregate(value, pipeline, runs, ctx.scenario.slo_p99_ms)})
    return rows


def grid_sweep(ctx: SweepContext, values: list[Any]) -> tuple[list[dict[str, Any]], dict[Job, dict[str, Any]], dict[str, Any]]:
    """Every value × pipeline × replication; capacity (highest value that met the SLO) for a load sweep."""
    jobs = [Job(value, pipeline, r) for value in values for pipeline in ctx.scenario.pipelines for r in range(ctx.replications)]
    results = run_jobs(ctx, jobs, f"sweep {ctx.param}")
    rows = rows_of(ctx, values, results)
    extra: dict[str, Any] = {}
    if ctx.scenario.slo_p99_ms is not None and ctx.param in LOAD_PARAMS:
        capacity: dict[str, float | None] = {}
        bound: dict[str, str] = {}
        for pipeline in ctx.scenario.pipelines:
            tried = [r["value"] for r in rows if r["pipeline"] == pipeline]
            met = [r["value"] for r in rows if r["pipeline"] == pipeline and r["slo_met"]]
            capacity[pipeline] = max(met, default=None)
            if not tried:
                bound[pipeline] = "unknown"
            elif not met:
                bound[pipeline] = "none"
            else:
                bound[pipeline] = "at_least" if max(met) == max(tried) else "found"
        extra |= {"capacity_qps": capacity, "capacity_bound": bound}
    return rows, results, extra


def find_capacity(ctx: SweepContext, low: float, high: float) -> tuple[list[dict[str, Any]], dict[Job, dict[str, Any]], dict[str, Any]]:
    """Per pipeline, bisect the load in [low, high] for the highest load that meets the SLO, to 2% of the
    load: None when `low` already misses it, `high` when even `high` meets it (`capacity_bound` says which)."""
    slo_ms = ctx.scenario.slo_p99_ms
    assert slo_ms is not None
    bracket = {p: [low, high] for p in ctx.scenario.pipelines}
    capacity: dict[str, float | None] = {}
    bound: dict[str, str] = {}
    results: dict[Job, dict[str, Any]] = {}
    probes = {p: [low, high] for p in ctx.scenario.pipelines}
    while probes and not ctx.stop():
        jobs = [Job(load, p, r) for p, loads in probes.items() for load in loads for r in range(ctx.replications)]
        done = run_jobs(ctx, jobs, f"capacity search: {len(jobs)} runs")
        results.update(done)
        if len(done) < len(jobs):
            break
        following = {}
        for pipeline, loads in probes.items():
            met = {
                load: meets_slo(aggregate(load, pipeline, [done[Job(load, pipeline, r)] for r in range(ctx.replications)], slo_ms), slo_ms)
                for load in loads
            }
            lo, hi = bracket[pipeline]
            if len(loads) == 2 and not met[low]:
                capacity[pipeline], bound[pipeline] = None, "none"
                continue
            if len(loads) == 2 and met[high]:
                capacity[pipeline], bound[pipeline] = high, "at_least"
                continue
            if len(loads) == 1:
                lo, hi = (loads[0], hi) if met[loads[0]] else (lo, loads[0])
                bracket[pipeline] = [lo, hi]
            if hi - lo <= CAPACITY_TOLERANCE * lo:
                capacity[pipeline], bound[pipeline] = lo, "found"
            else:
                following[pipeline] = [round((lo + hi) / 2, 3)]
        probes = following
    rows = rows_of(ctx, sorted({job.value for job in results}), results)
    search = {"low": low, "high": high, "tolerance": CAPACITY_TOLERANCE, "bracket": bracket}
    return (
        rows,
        results,
        {
            "capacity_qps": {p: capacity.get(p) for p in ctx.scenario.pipelines},
            "capacity_bound": {p: bound.get(p, "unknown") for p in ctx.scenario.pipelines},
            "capacity_search": search,
        },
    )


def write_sweep(
    ctx: SweepContext, folder: Path, rows: list[dict[str, Any]], results: dict[Job, dict[str, Any]], extra: dict[str, Any]
) -> dict[str, Any]:
    """sweep.csv, sweep.json, a PNG per plotted headline metric, for a load sweep the latency–throughput curve, and
    report.html; the sweep.json document."""
    scenario, slo_ms = ctx.scenario, ctx.scenario.slo_p99_ms
    partial = ctx.stop()
    document: dict[str, Any] = {
        "scenario": scenario.name,
        "seed": scenario.seed,
        "param": ctx.param,
        "values": list(dict.fromkeys(r["value"] for r in rows)),
        "replications": ctx.replications,
        "partial": partial,
        "hardware": hardware(scenario),
        **extra,
        "warnings": wide_intervals(rows),
        "rows": rows,
        "points": [
            {"value": j.value, "pipeline": j.pipeline, "seed": scenario.seed + j.replication, "metrics": results[j]}
            for j in sorted(results, key=lambda j: (str(j.value), j.pipeline, j.replication))
        ],
    }
    write_csv(folder / "sweep.csv", rows)
    write_json(folder / "sweep.json", document)
    title = run_title(scenario, with_load=ctx.param not in LOAD_PARAMS)
    title += f", {ctx.replications} replications" if ctx.replications > 1 else ""
    x_label = param_label(ctx.param)
    plots = []
    for metric in NUMERIC:
        if metric.plot and any(row.get(metric.key) is not None for row in rows):
            plots.append(f"sweep_{metric.key}.png")
            plot_sweep(folder / plots[-1], rows, "value", x_label, metric, slo_ms, title, extra.get("capacity_qps"))
    if ctx.param in LOAD_PARAMS:
        plots.insert(0, "latency_throughput.png")
        plot_sweep(folder / plots[0], rows, "throughput_qps", "throughput (QPS)", P99, slo_ms, title, extra.get("capacity_qps"))
    table = sweep_table(document, load=ctx.param in LOAD_PARAMS)
    facts = {
        "scenario": scenario.name,
        "seed": scenario.seed,
        "swept": ctx.param,
        "values": ", ".join(map(str, document["values"])),
        "replications": ctx.replications,
        "engine": ctx.engine,
        "partial": partial,
    }
    warnings = [_warning_line(w) for w in document["warnings"]] + (["interrupted: the sweep is partial"] if partial else [])
    write_report(folder, f"sweep of {ctx.param}: {title}", facts, warnings, [table], scenario, plots)
    if not ctx.quiet:
        ctx.console.print(table)
    return document


def _warning_line(warning: dict[str, Any]) -> str:
    """A sweep.json warning as one line of the report."""
    return (
        f"{warning['pipeline']} at {warning['value']}: {warning['metric']} {warning['mean']:.4g} ± {warning['ci95']:.4g} "
        f"from {warning['replications']} replications: the interval is wider than the mean"
    )


def load_param(scenario: Scenario) -> str:
    """The field that sets the offered load of the scenario's arrival process."""
    kind = scenario.traffic.arrival.kind
    if kind == "poisson":
        return "traffic.arrival.qps"
    if kind == "diurnal":
        return "traffic.arrival.mean_qps"
    raise InputError(f"--find-capacity: the scenario's {kind} arrivals have no single load field; give --param")
