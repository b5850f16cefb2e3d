"""Results for people and programs: rich tables, timeseries CSV and PNG plots (written atomically)."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from aif_sim.atomic import atomic_path  # noqa: E402
from aif_sim.metrics import PipelineMetrics  # noqa: E402
from aif_sim.pipelines import PIPELINES, stages_of  # noqa: E402

BASELINE = "sequential"


def make_console() -> Console:
    """A console for results: 120 columns when the output is not a terminal (files, pipes, CI logs)."""
    return Console() if sys.stdout.isatty() else Console(width=120)


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:,.{digits}f}"


def total_compute_ms(metrics: dict[str, Any]) -> float:
    """Compute per completed request summed over the pools (ms)."""
    return sum(pool["ms_per_request"] for pool in metrics["compute"].values() if math.isfinite(pool["ms_per_request"] or math.nan))


HEADLINES: list[tuple[str, str, Any]] = [
    ("offered QPS", "offered_qps", lambda m: m["offered_qps"]),
    ("throughput QPS", "throughput_qps", lambda m: m["throughput_qps"]),
    ("completed", "completed", lambda m: m["requests"]["completed"]),
    ("rejected", "rejected", lambda m: m["requests"]["rejected"]),
    ("timed out", "timed_out", lambda m: m["requests"]["timed_out"]),
    ("in flight at end", "in_flight_at_end", lambda m: m["requests"]["in_flight_at_end"]),
    ("latency mean ms", "mean_ms", lambda m: m["latency_ms"]["mean"]),
    ("latency p50 ms", "p50_ms", lambda m: m["latency_ms"]["p50"]),
    ("latency p90 ms", "p90_ms", lambda m: m["latency_ms"]["p90"]),
    ("latency p99 ms", "p99_ms", lambda m: m["latency_ms"]["p99"]),
    ("latency p99.9 ms", "p999_ms", lambda m: m["latency_ms"]["p999"]),
    ("latency max ms", "max_ms", lambda m: m["latency_ms"]["max"]),
    ("compute ms/request", "compute_ms_per_request", total_compute_ms),
]
RATIO_KEYS = {"throughput_qps", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "compute_ms_per_request"}


def headline_values(metrics: dict[str, Any]) -> dict[str, float]:
    """The headline figures of one pipeline, flat (for tables and sweep CSVs)."""
    return {key: get(metrics) for _, key, get in HEADLINES}


def comparison_table(summary: dict[str, Any], title: str) -> Table:
    """Pipelines side by side, with ratios against the sequential pipeline and the SLO verdict."""
    pipelines = summary["pipelines"]
    others = [name for name in pipelines if name != BASELINE] if BASELINE in pipelines else []
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    for name in pipelines:
        table.add_column(name, justify="right")
    for name in others:
        table.add_column(f"{name}/{BASELINE}", justify="right", style="cyan")
    for label, key, get in HEADLINES:
        values = [get(m) for m in pipelines.values()]
        digits = 0 if key in {"completed", "rejected", "timed_out", "in_flight_at_end"} else 2
        row = [label] + [_fmt(v, digits) for v in values]
        base = get(pipelines[BASELINE]) if others else None
        for name in others:
            value = get(pipelines[name])
            row.append(_fmt(value / base, 3) + "×" if key in RATIO_KEYS and base else "")
        table.add_row(*row)
    table.add_row("bottleneck", *[m["bottleneck"] for m in pipelines.values()], *[""] * len(others))
    if all("slo" in m for m in pipelines.values()):
        verdicts = []
        for m in pipelines.values():
            slo = m["slo"]
            word = "[green]VALID[/]" if slo["valid"] else "[red]INVALID[/]"
            verdicts.append(f"{word} {100 * slo['missed_share']:.1f}%>{slo['p99_ms']:g}ms")
        table.add_row("SLO p99", *verdicts, *[""] * len(others))
    return table


def stage_table(summary: dict[str, Any]) -> Table:
    """Per pipeline and stage: latency, wait, utilization and compute."""
    table = Table(title="stages (ms; ◀ bottleneck)", title_justify="left")
    for column in ("pipeline", "stage", "mean", "p99", "wait", "wait p99", "util", "compute/req"):
        table.add_column(column, justify="left" if column in ("pipeline", "stage") else "right", no_wrap=True)
    for pipeline, metrics in summary["pipelines"].items():
        for index, (stage, stats) in enumerate(metrics["stages"].items()):
            table.add_row(
                pipeline if index == 0 else "",
                stage + (" ◀" if stage == metrics["bottleneck"] else ""),
                _fmt(stats["latency_ms"]["mean"]),
                _fmt(stats["latency_ms"]["p99"]),
                _fmt(stats["wait_ms"]["mean"]),
                _fmt(stats["wait_ms"]["p99"]),
                f"{100 * stats['utilization']:.1f}%",
                _fmt(metrics["compute"][stage]["ms_per_request"]),
                end_section=index == len(metrics["stages"]) - 1,
            )
    return table


def write_timeseries(path: Path, results: dict[str, PipelineMetrics]) -> None:
    """One row per simulated second and pipeline."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["t_s", "pipeline", "completed", "p50_ms", "p99_ms"])
        writer.writeheader()
        for pipeline, metrics in results.items():
            for row in metrics.timeseries.rows:
                writer.writerow({"pipeline": pipeline, **row})


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_latency_cdf(path: Path, results: dict[str, PipelineMetrics], slo_ms: float | None) -> None:
    """End-to-end latency CDF per pipeline (log time axis), with the SLO."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for pipeline, metrics in results.items():
        edges, share = metrics.latency.cdf()
        if len(edges):
            ax.step(edges, share, where="post", label=f"{pipeline} (p99 {metrics.latency.quantile(0.99):.1f} ms)")
    if slo_ms is not None:
        ax.axvline(slo_ms, color="red", linestyle="--", linewidth=1, label=f"SLO p99 {slo_ms:g} ms")
    ax.axhline(0.99, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency (ms)")
    ax.set_ylabel("share of completed requests")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Latency CDF")
    _save(fig, path)


def plot_stage_breakdown(path: Path, summary: dict[str, Any]) -> None:
    """Mean service and queue wait per stage, one panel per pipeline; ∥ marks stages that run in parallel."""
    pipelines = summary["pipelines"]
    height = sum(0.8 + 0.35 * len(m["stages"]) for m in pipelines.values())
    fig, axes = plt.subplots(len(pipelines), 1, figsize=(7.5, height), squeeze=False)
    limit = max(m["latency_ms"]["mean"] for m in pipelines.values())
    for ax, (pipeline, metrics) in zip(axes[:, 0], pipelines.items()):
        names = stages_of(pipeline)
        wait = [metrics["stages"][s]["wait_ms"]["mean"] or 0.0 for s in names]
        total = [metrics["stages"][s]["latency_ms"]["mean"] or 0.0 for s in names]
        service = [max(t - w, 0.0) for t, w in zip(total, wait)]
        rows = range(len(names))
        ax.barh(rows, service, color="tab:blue", label="service")
        ax.barh(rows, wait, left=service, color="tab:orange", label="queue wait")
        parallel = {name for step in PIPELINES[pipeline] if isinstance(step, tuple) for name in step}
        ax.set_yticks(list(rows), [f"{name} ∥" if name in parallel else name for name in names])
        ax.invert_yaxis()
        ax.set_xlim(0, limit * 1.05)
        ax.set_title(f"{pipeline}: end-to-end mean {metrics['latency_ms']['mean']:.1f} ms, p99 {metrics['latency_ms']['p99']:.1f} ms", fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
    axes[0, 0].legend(loc="lower right", fontsize=8)
    axes[-1, 0].set_xlabel("mean time in stage (ms)")
    fig.tight_layout()
    _save(fig, path)


def plot_sweep(path: Path, rows: list[dict[str, Any]], param: str, metric: str, slo_ms: float | None) -> None:
    """One headline metric against the swept value, a line per pipeline."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for pipeline in dict.fromkeys(r["pipeline"] for r in rows):
        points = sorted((r["value"], r[metric]) for r in rows if r["pipeline"] == pipeline and _numeric(r["value"]))
        if points:
            ax.plot(*zip(*points), marker="o", label=pipeline)
    if slo_ms is not None and metric.startswith("p99"):
        ax.axhline(slo_ms, color="red", linestyle="--", linewidth=1, label=f"SLO {slo_ms:g} ms")
    ax.set_xlabel(param)
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(f"{metric} against {param}")
    _save(fig, path)


def plot_latency_throughput(path: Path, rows: list[dict[str, Any]], slo_ms: float | None) -> None:
    """p99 latency against achieved throughput: the latency–throughput curve of a load sweep."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for pipeline in dict.fromkeys(r["pipeline"] for r in rows):
        points = sorted((r["throughput_qps"], r["p99_ms"]) for r in rows if r["pipeline"] == pipeline)
        ax.plot(*zip(*points), marker="o", label=pipeline)
    if slo_ms is not None:
        ax.axhline(slo_ms, color="red", linestyle="--", linewidth=1, label=f"SLO p99 {slo_ms:g} ms")
    ax.set_yscale("log")
    ax.set_xlabel("throughput (QPS)")
    ax.set_ylabel("p99 latency (ms)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("Latency–throughput")
    _save(fig, path)


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
