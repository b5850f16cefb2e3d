"""The log histogram's bucket counting as one compiled pass (`histogram.LogHistogram.add`): the buckets the numpy
expression it replaced gave, exactly (the same comparison and float operations on the same logarithms), without
its masks, copies and passes over the values. Imported when the first histogram is made, so that importing the
metrics does not import numba."""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, _nrt=False)  # allocates nothing: no reference counting of its arrays
def count_buckets(values: np.ndarray, logs: np.ndarray, counts: np.ndarray, low: float, step: float) -> None:
    """Add to `counts` each value's bucket: 0 below `low` (or NaN), else 1 + floor(logs[i] / step), `logs[i]` the
    natural logarithm of `values[i] / low`, at most the last bucket."""
    last = len(counts) - 1
    for i in range(len(values)):
        bucket = 0
        if values[i] >= low:
            bucket = min(1 + np.int64(math.floor(logs[i] / step)), last)
        counts[bucket] += 1
