"""The headline metrics of a METRICS block, described once: tables, sweep CSVs and sweep plots all
read them from here, so a new metric is one entry in `HEADLINES`."""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Unit = Literal["qps", "count", "ms", "s", "share", "ratio", "cost", "gib", "text"]


@dataclass(frozen=True)
class Metric:
    """One figure of a pipeline's METRICS block."""

    key: str  # flat column name in sweep.csv
    label: str  # for people
    unit: Unit
    get: Callable[[dict[str, Any]], Any]
    ratio: bool = False  # compared against the baseline pipeline in tables
    plot: bool = False  # drawn against the swept value in a sweep
    axis: str | None = None  # the label of a plot axis, when longer than the table's

    @property
    def axis_label(self) -> str:
        return self.axis or self.label


def total_compute_ms(metrics: dict[str, Any]) -> float:
    """Compute per completed request summed over the pools (ms)."""
    values = [pool["ms_per_request"] for pool in metrics["compute"].values()]
    return sum(v for v in values if v is not None and math.isfinite(v)) if metrics["requests"]["completed"] else math.nan


def wasted_compute_ms(metrics: dict[str, Any]) -> float:
    """Wasted compute per completed request summed over the stages (ms): failed requests' work, losing copies."""
    values = [pool.get("wasted_ms_per_request") for pool in metrics["compute"].values()]
    return sum(v for v in values if v is not None and math.isfinite(v)) if metrics["requests"]["completed"] else math.nan


def _cost(part: str) -> Callable[[dict[str, Any]], Any]:
    return lambda m: m["cost_per_hour"][part] if "cost_per_hour" in m else None


def memory_gib(metrics: dict[str, Any]) -> float | None:
    """The design's caches and indexes, in GiB."""
    return sum(metrics["memory_bytes"].values()) / 2**30 if "memory_bytes" in metrics else None


def shed_share(metrics: dict[str, Any]) -> float:
    """Share of offered requests rejected or timed out."""
    requests = metrics["requests"]
    return (requests["rejected"] + requests["timed_out"]) / requests["offered"] if requests["offered"] else math.nan


def _latency(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda m: m["latency_ms"][key]


def _cache(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda m: m.get("caches", {}).get(name, {}).get("hit_ratio")


def _quality(*path: str) -> Callable[[dict[str, Any]], Any]:
    """The value at `path` in a pipeline's `quality` block (None for a run that shadow-scores nothing)."""
    return lambda m: functools.reduce(operator.getitem, path, m["quality"]) if "quality" in m else None


def _quality_loss(metric: str) -> Callable[[dict[str, Any]], Any]:
    return lambda m: m["quality"]["fresh"][metric] - m["quality"]["stale"][metric] if "quality" in m else None


def _staleness(*path: str) -> Callable[[dict[str, Any]], Any]:
    def get(m: dict[str, Any]) -> Any:
        node: Any = m.get("staleness")
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        return node

    return get


SHIPPED_AGES = ("item_vector_age_s", "user_vector_age_s")  # the shipped stores' staleness keys


def _own_store_age(m: dict[str, Any]) -> Any:
    """The mean age of the vectors a pipeline reads from a store of its own naming (a pipeline reads one store)."""
    staleness = m.get("staleness") or {}
    ages = [v["mean"] for k, v in staleness.items() if k.endswith("_vector_age_s") and k not in SHIPPED_AGES]
    return ages[0] if ages else None


HEADLINES: tuple[Metric, ...] = (
    Metric("offered_qps", "offered QPS", "qps", lambda m: m["offered_qps"], axis="offered load (QPS)"),
    Metric("throughput_qps", "throughput QPS", "qps", lambda m: m["throughput_qps"], ratio=True, plot=True, axis="throughput (QPS)"),
    Metric("completed", "completed", "count", lambda m: m["requests"]["completed"]),
    Metric("shed_share", "shed", "share", shed_share, plot=True, axis="shed: rejected + timed out (share of offered)"),
    Metric("in_flight_at_end", "in flight at end", "count", lambda m: m["requests"]["in_flight_at_end"]),
    Metric("mean_ms", "mean ms", "ms", _latency("mean"), ratio=True, axis="mean latency (ms)"),
    Metric("p50_ms", "p50 ms", "ms", _latency("p50"), ratio=True, plot=True, axis="p50 latency (ms)"),
    Metric("p90_ms", "p90 ms", "ms", _latency("p90"), axis="p90 latency (ms)"),
    Metric("p99_ms", "p99 ms", "ms", _latency("p99"), ratio=True, plot=True, axis="p99 latency (ms)"),
    Metric(
        "idealised_p99_ms",
        "p99 ms as one queue",
        "ms",
        lambda m: m.get("idealised_latency_ms", {}).get("p99"),
        ratio=True,
        axis="p99 with every pool one shared queue (ms)",
    ),
    Metric("p999_ms", "p99.9 ms", "ms", _latency("p999"), ratio=True, axis="p99.9 latency (ms)"),
    Metric("max_ms", "max ms", "ms", _latency("max"), axis="maximum latency (ms)"),
    Metric("no_contention_p50_ms", "no-contention p50", "ms", lambda m: m["no_contention_ms"]["p50"], axis="no-contention p50 (ms)"),
    Metric("no_contention_p99_ms", "no-contention p99", "ms", lambda m: m["no_contention_ms"]["p99"], axis="no-contention p99 (ms)"),
    Metric(
        "compute_ms_per_request", "compute ms/req", "ms", total_compute_ms, ratio=True, plot=True, axis="compute per completed request (ms)"
    ),
    Metric(
        "wasted_compute_ms_per_request", "wasted compute ms/req", "ms", wasted_compute_ms, axis="wasted compute per completed request (ms)"
    ),
    Metric("memory_gib", "memory GiB", "gib", memory_gib, ratio=True, axis="caches and indexes (GiB)"),
    Metric("cost_stages_per_hour", "cost/h: servers", "cost", _cost("stages"), axis="stage servers' cost per hour"),
    Metric("cost_refresh_per_hour", "cost/h: refresh", "cost", _cost("refresh"), axis="refresh workers' cost per hour"),
    Metric("cost_memory_per_hour", "cost/h: memory", "cost", _cost("memory"), axis="memory's cost per hour"),
    Metric("cost_per_hour", "cost/h: total", "cost", _cost("total"), ratio=True, plot=True, axis="cost per hour (all provisioned)"),
    Metric("bottleneck", "bottleneck", "text", lambda m: m["bottleneck"]),
    Metric(
        "bottleneck_utilization",
        "bottleneck util",
        "share",
        lambda m: m["stages"][m["bottleneck"]]["utilization"],
        plot=True,
        axis="utilisation of the busiest pool",
    ),
    Metric("critical_stage", "most time on path", "text", lambda m: m["critical_stage"]),
    Metric("slo_missed_share", "missed SLO", "share", lambda m: m["slo"]["missed_share"] if "slo" in m else None),
    Metric("user_vector_hit_ratio", "user-vec hits", "share", _cache("user_vector"), plot=True, axis="user-vector cache hit ratio"),
    Metric("sim_features_hit_ratio", "SIM hits", "share", _cache("sim_features"), plot=True, axis="SIM-feature cache hit ratio"),
    Metric(
        "item_vector_age_mean_s",
        "item age s",
        "s",
        _staleness("item_vector_age_s", "mean"),
        plot=True,
        axis="mean item-vector age (s)",
    ),
    Metric("item_vector_age_p99_s", "item age p99", "s", _staleness("item_vector_age_s", "p99"), axis="p99 item-vector age (s)"),
    Metric(
        "user_vector_age_mean_s",
        "user age s",
        "s",
        _staleness("user_vector_age_s", "mean"),
        plot=True,
        axis="mean user-vector age (s)",
    ),
    Metric("own_store_age_mean_s", "own store age s", "s", _own_store_age, axis="mean age of a named store's vectors (s)"),
    Metric(
        "stale_fraction",
        "stale",
        "share",
        _staleness("stale_fraction"),
        plot=True,
        axis="share of scored vectors older than their item's last change",
    ),
    Metric(
        "version_mismatch_fraction",
        "old version",
        "share",
        _staleness("version_mismatch_fraction"),
        plot=True,
        axis="share of scored vectors of another model version",
    ),
    Metric(
        "refresh_backlog_max",
        "backlog max",
        "count",
        _staleness("refresh_backlog_max"),
        plot=True,
        axis="largest refresh backlog (items)",
    ),
    Metric(
        "refresh_utilization",
        "refresh busy",
        "share",
        _staleness("refresh_utilization"),
        plot=True,
        axis="share of the refresh workers' time used",
    ),
    Metric("sweep_overrun_s", "pass overrun s", "s", _staleness("sweep_overrun_s"), axis="most a periodic pass ran past its interval (s)"),
    Metric(
        "scored_stale_fraction",
        "stale (scored)",
        "share",
        _quality("stale_fraction"),
        axis="share of shadow-scored candidates older than their item's last change",
    ),
    Metric(
        "scored_user_stale_fraction",
        "user stale (scored)",
        "share",
        _quality("user_stale_fraction"),
        axis="share of shadow-scored requests whose user behaved after its user vector was made",
    ),
    Metric("gauc_stale", "GAUC stale", "ratio", _quality("stale", "gauc"), axis="GAUC with the vectors the system had"),
    Metric("gauc_fresh", "GAUC fresh", "ratio", _quality("fresh", "gauc"), axis="GAUC with fresh vectors"),
    Metric("gauc_loss", "GAUC loss", "ratio", _quality_loss("gauc"), plot=True, axis="GAUC lost to staleness (fresh − stale)"),
    Metric(
        "gauc_loss_detectable",
        "GAUC loss detectable",
        "ratio",
        _quality("gauc_loss", "detectable"),
        axis="smallest GAUC loss the run detects (80% power, 5% test)",
    ),
    Metric(
        "hr_at_100_loss", "HR@100 loss", "ratio", _quality_loss("hr_at_100"), plot=True, axis="HR@100 lost to staleness (fresh − stale)"
    ),
)

NUMERIC = tuple(metric for metric in HEADLINES if metric.unit != "text")


def headline_values(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of one pipeline, flat (for tables and sweep CSVs)."""
    return {metric.key: metric.get(metrics) for metric in HEADLINES}
