"""The busy time of a fleet's visits as one compiled pass (`recorder.Recorder.node_busy_rows`): the sums
`Recorder.node_busy` and `Recorder.cut` make one call at a time, the same float operations in the same order.
Imported when the first rows are accounted, so that importing the metrics does not import numba."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, _nrt=False)  # allocates nothing: no reference counting of its arrays
def add_busy(
    rows: np.ndarray, firsts: np.ndarray, lo: float, hi: float, busy: np.ndarray, compute: np.ndarray, node_busy: np.ndarray
) -> None:
    """Add the rows `rows[firsts[slot] : firsts[slot + 1]]` of each slot, in order, to its totals: a visit's row
    (node, start, service, measured 1.0 / 0.0 in columns 1-4) adds its busy time inside the window [lo, hi) to
    `busy[slot]` and `node_busy[slot, node]`, and a measured one its service to `compute[slot]`; a cut row (column
    4 -1.0: a visit stopped at column 2 that was counted busy until column 3) takes that time inside the window back."""
    for slot in range(len(firsts) - 1):
        for q in range(firsts[slot], firsts[slot + 1]):
            node, start = np.int64(rows[q, 1]), rows[q, 2]
            if rows[q, 4] < 0:
                lost = max(0.0, min(rows[q, 3], hi) - max(start, lo))
                busy[slot] -= lost
                node_busy[slot, node] -= lost
                continue
            service = rows[q, 3]
            inside = max(0.0, min(start + service, hi) - max(start, lo))
            busy[slot] += inside
            node_busy[slot, node] += inside
            if rows[q, 4] != 0:
                compute[slot] += service
