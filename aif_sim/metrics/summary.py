"""The headline metrics of a METRICS block, described once: tables, sweep CSVs and sweep plots all
read them from here, so a new metric is one entry in `HEADLINES`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Unit = Literal["qps", "count", "ms", "share", "text"]


@dataclass(frozen=True)
class Metric:
    """One figure of a pipeline's METRICS block."""

    key: str  # flat column name in sweep.csv
    label: str  # for people
    unit: Unit
    get: Callable[[dict[str, Any]], Any]
    ratio: bool = False  # compared against the baseline pipeline in tables
    plot: bool = False  # drawn against the swept value in a sweep


def total_compute_ms(metrics: dict[str, Any]) -> float:
    """Compute per completed request summed over the pools (ms)."""
    values = [pool["ms_per_request"] for pool in metrics["compute"].values()]
    return sum(v for v in values if v is not None and math.isfinite(v)) if metrics["requests"]["completed"] else math.nan


def shed_share(metrics: dict[str, Any]) -> float:
    """Share of offered requests rejected or timed out."""
    requests = metrics["requests"]
    return (requests["rejected"] + requests["timed_out"]) / requests["offered"] if requests["offered"] else math.nan


def _latency(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda m: m["latency_ms"][key]


HEADLINES: tuple[Metric, ...] = (
    Metric("offered_qps", "offered QPS", "qps", lambda m: m["offered_qps"]),
    Metric("throughput_qps", "throughput QPS", "qps", lambda m: m["throughput_qps"], ratio=True, plot=True),
    Metric("completed", "completed", "count", lambda m: m["requests"]["completed"]),
    Metric("shed_share", "shed (rejected+timeout)", "share", shed_share, plot=True),
    Metric("in_flight_at_end", "in flight at end", "count", lambda m: m["requests"]["in_flight_at_end"]),
    Metric("mean_ms", "latency mean ms", "ms", _latency("mean"), ratio=True),
    Metric("p50_ms", "latency p50 ms", "ms", _latency("p50"), ratio=True, plot=True),
    Metric("p90_ms", "latency p90 ms", "ms", _latency("p90")),
    Metric("p99_ms", "latency p99 ms", "ms", _latency("p99"), ratio=True, plot=True),
    Metric("p999_ms", "latency p99.9 ms", "ms", _latency("p999"), ratio=True),
    Metric("max_ms", "latency max ms", "ms", _latency("max")),
    Metric("no_contention_p50_ms", "no-contention p50 ms", "ms", lambda m: m["no_contention_ms"]["p50"]),
    Metric("no_contention_p99_ms", "no-contention p99 ms", "ms", lambda m: m["no_contention_ms"]["p99"]),
    Metric("compute_ms_per_request", "compute ms/request", "ms", total_compute_ms, ratio=True, plot=True),
    Metric("bottleneck", "bottleneck (util)", "text", lambda m: m["bottleneck"]),
    Metric("bottleneck_utilization", "bottleneck util", "share", lambda m: m["stages"][m["bottleneck"]]["utilization"], plot=True),
    Metric("critical_stage", "most time on path", "text", lambda m: m["critical_stage"]),
    Metric("slo_missed_share", "missed SLO", "share", lambda m: m["slo"]["missed_share"] if "slo" in m else None),
)

NUMERIC = tuple(metric for metric in HEADLINES if metric.unit != "text")


def headline_values(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of one pipeline, flat (for tables and sweep CSVs)."""
    return {metric.key: metric.get(metrics) for metric in HEADLINES}
