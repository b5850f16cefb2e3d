"""Streaming metrics with memory bounded in the request count.

Latencies go into log-bucketed histograms (relative error below 0.25%, exact count, mean and
max), fed through buffers so that recording one value is a list append; the engine flushes them
after every block of arrivals. Nothing is kept per finished request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}


class LogHistogram:
    """Mergeable histogram of non-negative values: bucket 0 holds [0, LOW), then geometric buckets."""

    LOW = 1e-4  # values below (zeros, in practice) fall in bucket 0, reported as the minimum
    HIGH = 1e8
    GROWTH = 1.005

    def __init__(self) -> None:
        self.bins = int(math.ceil(math.log(self.HIGH / self.LOW) / math.log(self.GROWTH))) + 2
        self.counts = np.zeros(self.bins, dtype=np.int64)
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf
        self._buffer: list[float] = []
        self.add = self._buffer.append  # the hot path: one list append per value

    def flush(self) -> None:
        """Move buffered values into the buckets."""
        if not self._buffer:
            return
        values = np.asarray(self._buffer, dtype=float)
        self._buffer.clear()
        index = np.zeros(len(values), dtype=np.int64)
        above = values >= self.LOW
        index[above] = 1 + np.floor(np.log(values[above] / self.LOW) / math.log(self.GROWTH)).astype(np.int64)
        self.counts += np.bincount(np.minimum(index, self.bins - 1), minlength=self.bins)
        self.count += len(values)
        self.total += float(values.sum())
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))

    def merge(self, other: "LogHistogram") -> None:
        other.flush()
        self.flush()
        self.counts += other.counts
        self.count += other.count
        self.total += other.total
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)

    def quantile(self, q: float) -> float:
        """Value at quantile q in [0, 1]: the geometric middle of its bucket, clamped to [min, max]."""
        self.flush()
        if self.count == 0:
            return math.nan
        rank = max(1, math.ceil(q * self.count))
        index = int(np.searchsorted(np.cumsum(self.counts), rank))
        if index == 0:
            return self.min
        value = self.LOW * self.GROWTH ** (index - 0.5)
        return min(max(value, self.min), self.max)

    def summary(self) -> dict[str, float]:
        """mean, p50, p90, p99, p999 and max."""
        self.flush()
        out = {"mean": self.total / self.count if self.count else math.nan}
        out.update({key: self.quantile(p / 100) for key, p in PERCENTILES.items()})
        out["max"] = self.max if self.count else math.nan
        return out

    def cdf(self) -> tuple[np.ndarray, np.ndarray]:
        """(upper bucket edges, cumulative share) over the occupied buckets, for plotting."""
        self.flush()
        occupied = np.nonzero(self.counts)[0]
        if len(occupied) == 0:
            return np.array([]), np.array([])
        span = slice(occupied[0], occupied[-1] + 1)
        edges = self.LOW * self.GROWTH ** np.arange(self.bins)[span].astype(float)
        return np.minimum(edges, self.max), np.cumsum(self.counts[span]) / self.count


@dataclass
class StageStats:
    """One stage pool in one pipeline run."""

    servers: int
    latency: LogHistogram = field(default_factory=LogHistogram)
    wait: LogHistogram = field(default_factory=LogHistogram)
    busy_window_s: float = 0.0  # server-seconds busy inside the measurement window
    compute_s: float = 0.0  # service time spent on measured requests (batches split evenly)

    def summary(self, window_s: float) -> dict[str, Any]:
        return {
            "latency_ms": self.latency.summary(),
            "wait_ms": self.wait.summary(),
            "utilization": self.busy_window_s / (self.servers * window_s),
            "visits": self.latency.count,
        }

    def compute(self, completed: int) -> dict[str, float]:
        return {"busy_s": self.compute_s, "ms_per_request": 1000 * self.compute_s / completed if completed else math.nan}


@dataclass
class Timeseries:
    """Per simulated second: completions and their p50/p99, with bounded memory (one second buffered)."""

    rows: list[dict[str, float]] = field(default_factory=list)
    _second: int = 0
    _latencies: list[float] = field(default_factory=list)

    def add(self, now_s: float, latency_ms: float) -> None:
        second = int(now_s)
        if second != self._second:
            self.close_until(second)
        self._latencies.append(latency_ms)

    def close_until(self, second: int) -> None:
        """Emit rows for every second before `second`."""
        while self._second < second:
            values = np.asarray(self._latencies)
            p50, p99 = np.percentile(values, [50, 99]) if len(values) else (math.nan, math.nan)
            self.rows.append({"t_s": self._second, "completed": len(values), "p50_ms": float(p50), "p99_ms": float(p99)})
            self._latencies.clear()
            self._second += 1


@dataclass
class PipelineMetrics:
    """Everything measured in one pipeline run; `summary()` is its METRICS block of summary.json."""

    pipeline: str
    window_s: float
    stages: dict[str, StageStats]
    slo_ms: float | None = None
    offered: int = 0
    completed: int = 0
    rejected: int = 0
    timed_out: int = 0
    in_flight: int = 0  # measured requests that have arrived and not finished
    over_slo: int = 0
    latency: LogHistogram = field(default_factory=LogHistogram)
    timeseries: Timeseries = field(default_factory=Timeseries)

    def flush(self) -> None:
        self.latency.flush()
        for stats in self.stages.values():
            stats.latency.flush()
            stats.wait.flush()

    def summary(self) -> dict[str, Any]:
        self.flush()
        out: dict[str, Any] = {
            "requests": {
                "offered": self.offered,
                "completed": self.completed,
                "rejected": self.rejected,
                "timed_out": self.timed_out,
                "in_flight_at_end": self.in_flight,
            },
            "offered_qps": self.offered / self.window_s,
            "throughput_qps": self.completed / self.window_s,
            "latency_ms": self.latency.summary(),
            "stages": {name: stats.summary(self.window_s) for name, stats in self.stages.items()},
            "compute": {name: stats.compute(self.completed) for name, stats in self.stages.items()},
            "bottleneck": max(self.stages, key=lambda name: self.stages[name].busy_window_s / self.stages[name].servers),
        }
        if self.slo_ms is not None:
            missed = self.offered - self.completed + self.over_slo
            share = missed / self.offered if self.offered else 0.0
            out["slo"] = {"p99_ms": self.slo_ms, "missed_share": share, "valid": share <= 0.01}
        return out
