"""Per simulated second: arrivals (the offered load), completions and their p50/p99, per-second means of per-request figures (cache hit
ratios, vector ages) and gauges sampled by background processes (refresh backlog); one second is
buffered at a time, plus the gauges of seconds not yet closed."""

from __future__ import annotations

import math

import numpy as np

from aif_sim.core.request import Window
from aif_sim.metrics.lazy import passes

QUANTILES = np.array([0.5, 0.99])  # of each second's latencies: p50, p99


def quantiles(values: np.ndarray) -> np.ndarray:
    """`np.percentile(values, [50, 99])` of a non-empty array without NaN, its default method (Hyndman and Fan's
    type 7) written out: the same two order statistics and the same interpolation arithmetic, so the same floats,
    without the generic function's overhead (three times the partition it needs, on a second's latencies)."""
    n = len(values)
    position = (n - 1) * QUANTILES
    below = np.floor(position).astype(np.intp)
    below[position >= n - 1] = -1  # the largest value
    above = np.where(below == -1, -1, below + 1)
    ordered = np.partition(values, sorted({*below.tolist(), *above.tolist()}))
    low, high = ordered[below], ordered[above]
    weight = position - below
    step = high - low
    return np.where(weight >= 0.5, high - step * (1 - weight), low + step * weight)


class Timeseries:
    """Rows `t_s, phase, offered, completed, p50_ms, p99_ms, <means...>, <gauges...>` for every second of a run,
    warm-up and drain included."""

    def __init__(self, window: Window, means: list[str] | None = None, gauges: list[str] | None = None) -> None:
        self.window = window
        self.means = means or []
        self.gauges = gauges or []
        self.rows: list[dict[str, float | str]] = []
        self._second = 0
        self._latencies: list[np.ndarray] = []  # of the open second
        self._sums = dict.fromkeys(self.means, 0.0)
        self._counts = dict.fromkeys(self.means, 0)
        self._gauge_values: dict[int, dict[str, float]] = {}
        self._offered: dict[int, int] = {}  # arrivals per second not yet closed

    @property
    def columns(self) -> list[str]:
        return ["t_s", "phase", "offered", "completed", "p50_ms", "p99_ms", *self.means, *self.gauges]

    def phase(self, second: int) -> str:
        """warmup, measured or drain: where a second falls against the measurement window."""
        if second < self.window.start_s:
            return "warmup"
        return "measured" if second < self.window.end_s else "drain"

    def add(self, end_s: np.ndarray, latency_ms: np.ndarray, means: dict[str, np.ndarray] | None = None) -> None:
        """Finished requests in time order: when they ended (s), their latency (ms; NaN when not completed)
        and, per mean column, a value each (NaN where it has none)."""
        named = list(means or {})
        columns = np.stack([means[name] for name in named]) if means else np.empty((0, len(end_s)))
        seconds, latency, latency_at, sums, counts = passes().second_figures(end_s, latency_ms, columns)
        for j, second in enumerate(seconds.tolist()):
            self.close_until(second)
            self._latencies.append(latency[latency_at[j] : latency_at[j + 1]])
            for c, name in enumerate(named):
                self._sums[name] += float(sums[c, j])
                self._counts[name] += int(counts[c, j])

    def arrive(self, arrival_s: float) -> None:
        """A request arrived at `arrival_s`."""
        second = int(arrival_s)
        self._offered[second] = self._offered.get(second, 0) + 1

    def arrive_many(self, arrival_s: np.ndarray) -> None:
        """Requests arrived at these times."""
        seconds = arrival_s.astype(np.int64)
        if len(seconds) and (seconds[1:] >= seconds[:-1]).all():  # in time order (a block of arrivals): no sort needed
            firsts = np.flatnonzero(np.diff(seconds, prepend=-1))
            seconds, counts = seconds[firsts], np.diff(firsts, append=len(seconds))
        else:
            seconds, counts = np.unique(seconds, return_counts=True)
        for second, count in zip(seconds.tolist(), counts.tolist()):
            self._offered[second] = self._offered.get(second, 0) + count

    def gauge(self, name: str, now_s: float, value: float) -> None:
        """A background process's reading for the second `now_s` falls in."""
        self._gauge_values.setdefault(int(now_s), {})[name] = value

    def close_until(self, second: int) -> None:
        """Emit rows for every second before `second`."""
        while self._second < second:
            values = np.concatenate(self._latencies) if self._latencies else np.empty(0)
            p50, p99 = quantiles(values) if len(values) else (math.nan, math.nan)
            row: dict[str, float | str] = {
                "t_s": self._second,
                "phase": self.phase(self._second),
                "offered": self._offered.pop(self._second, 0),
                "completed": len(values),
                "p50_ms": float(p50),
                "p99_ms": float(p99),
            }
            for name in self.means:
                row[name] = self._sums[name] / self._counts[name] if self._counts[name] else math.nan
            gauges = self._gauge_values.pop(self._second, {})
            for name in self.gauges:
                row[name] = gauges.get(name, math.nan)
            self.rows.append(row)
            self._latencies.clear()
            self._sums = dict.fromkeys(self.means, 0.0)
            self._counts = dict.fromkeys(self.means, 0)
            self._second += 1
