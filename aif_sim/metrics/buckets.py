"""The log histogram's bucket counting as one compiled pass (`histogram.LogHistogram.add`): the buckets the numpy
expression it replaced gave, exactly (the same comparison and float operations on the same logarithms), with the
values' sum (NumPy's, `sums`), least and greatest in the same pass, without masks, copies and passes over the
values. Imported when the first histogram is made, so that importing the metrics does not import numba."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from aif_sim.metrics.sums import array_sum


@njit(cache=True, nogil=True)
def count_buckets(values: np.ndarray, logs: np.ndarray, counts: np.ndarray, low: float, step: float) -> tuple[float, float, float]:
    """Add to `counts` each value's bucket: 0 below `low` (or NaN), else 1 + floor(logs[i] / step), `logs[i]` the
    natural logarithm of `values[i] / low`, at most the last bucket. Returns the values' sum, least and greatest
    as `values.sum()`, `values.min()` and `values.max()` give them (NaN if one is NaN; +-inf when there are none)."""
    last = len(counts) - 1
    least, greatest, nan = math.inf, -math.inf, False
    for i in range(len(values)):
        value = values[i]
        bucket = 0
        if value >= low:
            bucket = min(1 + np.int64(math.floor(logs[i] / step)), last)
        counts[bucket] += 1
        least = value if value < least else least
        greatest = value if value > greatest else greatest
        nan |= value != value
    if nan:
        least = greatest = math.nan
    return array_sum(values, 0, len(values)), least, greatest
