"""Log-bucketed histograms: memory bounded in the number of values recorded.

Relative error below 0.25%, exact count, mean and max; values are added as arrays.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}


@functools.cache
def _bucket_counter() -> Callable[..., None]:
    """The compiled bucket counting (`metrics.buckets`), imported with numba and compiled (or loaded from numba's
    cache) when the first histogram is made: importing the metrics stays light, and no run (a live one above all)
    pays for it mid-way."""
    from aif_sim.metrics.buckets import count_buckets

    count_buckets(np.empty(0), np.empty(0), np.zeros(1, np.int64), LogHistogram.LOW, LogHistogram.STEP)
    return count_buckets


class LogHistogram:
    """Mergeable histogram of non-negative values: bucket 0 holds [0, LOW), then geometric buckets."""

    LOW = 1e-4  # values below (zeros, in practice) fall in bucket 0, reported as the minimum
    HIGH = 1e8
    GROWTH = 1.005
    STEP = math.log(GROWTH)  # of the natural logarithm, from one bucket to the next

    def __init__(self) -> None:
        self.bins = int(math.ceil(math.log(self.HIGH / self.LOW) / math.log(self.GROWTH))) + 2
        self.counts = np.zeros(self.bins, dtype=np.int64)
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf
        _bucket_counter()  # ready with the first histogram, before a run counts anything

    def add(self, values: np.ndarray) -> None:
        """Count an array of values."""
        values = np.ascontiguousarray(values, dtype=float)
        if values.size == 0:
            return
        with np.errstate(divide="ignore", invalid="ignore"):  # values below LOW: their logarithm is not used
            logs = np.log(values / self.LOW)
        total, least, greatest = _bucket_counter()(values, logs, self.counts, self.LOW, self.STEP)
        self.count += len(values)
        self.total += total
        self.min = min(self.min, least)
        self.max = max(self.max, greatest)

    def quantile(self, q: float) -> float:
        """Value at quantile q in [0, 1]: the geometric middle of its bucket, clamped to [min, max]."""
        if self.count == 0:
            return math.nan
        return self.at_rank(max(1, math.ceil(q * self.count)))

    def at_rank(self, rank: int) -> float:
        """The `rank`-th smallest value (1-based, at most `count`), as `quantile` gives it."""
        index = int(np.searchsorted(np.cumsum(self.counts), rank))
        if index == 0:
            return self.min
        value = self.LOW * self.GROWTH ** (index - 0.5)
        return min(max(value, self.min), self.max)

    def summary(self) -> dict[str, float]:
        """mean, p50, p90, p99, p999 and max."""
        out = {"mean": self.total / self.count if self.count else math.nan}
        out.update({key: self.quantile(p / 100) for key, p in PERCENTILES.items()})
        out["max"] = self.max if self.count else math.nan
        return out

    def cdf(self) -> tuple[np.ndarray, np.ndarray]:
        """(upper bucket edges, cumulative share) over the occupied buckets, for plotting."""
        occupied = np.nonzero(self.counts)[0]
        if len(occupied) == 0:
            return np.array([]), np.array([])
        span = slice(occupied[0], occupied[-1] + 1)
        edges = self.LOW * self.GROWTH ** np.arange(self.bins)[span].astype(float)
        return np.minimum(edges, self.max), np.cumsum(self.counts[span]) / self.count
