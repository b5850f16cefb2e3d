"""NumPy's float64 summation written out for numba kernels: `pairwise_sum(values, start, n)` adds
`values[start : start + n]` exactly as `values[start : start + n].sum()` does (the pairwise summation of
NumPy's add reduction: blocks of up to 128 values in eight running sums, larger spans halved at multiples of
eight), so a kernel's sums are NumPy's to the last bit. Imported by the kernels only, so that importing the
metrics does not import numba."""

from __future__ import annotations

import numpy as np
from numba import njit

BLOCK = 128  # NumPy's PW_BLOCKSIZE: spans up to this long are summed in eight running sums


@njit(cache=True, nogil=True, _nrt=False)  # no reference counting: cheap to call once per row
def block_sum(values: np.ndarray, start: int, n: int) -> float:
    """NumPy's sum of a span of at most `BLOCK` values (`pairwise_sum` of a short span): one running sum below eight values, else eight running
    sums over the multiples of eight, combined pairwise, then the rest added in turn."""
    if n < 8:
        total = 0.0
        for i in range(start, start + n):
            total += values[i]
        return total
    r0, r1, r2, r3 = values[start], values[start + 1], values[start + 2], values[start + 3]
    r4, r5, r6, r7 = values[start + 4], values[start + 5], values[start + 6], values[start + 7]
    i = start + 8
    whole = start + n - n % 8
    while i < whole:
        r0 += values[i]
        r1 += values[i + 1]
        r2 += values[i + 2]
        r3 += values[i + 3]
        r4 += values[i + 4]
        r5 += values[i + 5]
        r6 += values[i + 6]
        r7 += values[i + 7]
        i += 8
    total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < start + n:
        total += values[i]
        i += 1
    return total


@njit(cache=True, nogil=True)
def pairwise_sum(values: np.ndarray, start: int, n: int) -> float:
    """The sum of `values[start : start + n]`, as NumPy's `sum` gives it (0.0 when n is 0)."""
    return block_sum(values, start, n) if n <= BLOCK else _tree_sum(values, start, n)


@njit(cache=True, nogil=True)
def _tree_sum(values: np.ndarray, start: int, n: int) -> float:
    """NumPy's sum of a span longer than `BLOCK`. NumPy recurses: a span longer than `BLOCK` is the sum of its first
    `half` values (half its length, down to a multiple of eight) and the rest. Here the recursion runs on a stack
    of spans (a cached numba function may not call itself)."""
    depth = 64  # spans halve at each level: more than enough for any array
    starts, lengths = np.empty(depth, np.int64), np.empty(depth, np.int64)
    lefts = np.empty(depth)  # a span's left half's sum, once known
    right = np.zeros(depth, np.bool_)  # whether the span's left half is summed and its right half is being summed
    top = 0
    starts[0], lengths[0] = start, n
    while True:
        s, m = starts[top], lengths[top]
        if m > BLOCK and not right[top]:  # descend into the left half
            half = m // 2
            half -= half % 8
            top += 1
            starts[top], lengths[top], right[top] = s, half, False
            continue
        total = block_sum(values, s, m)
        while True:  # hand the span's sum up to the spans it completes
            top -= 1
            if top < 0:
                return total
            if right[top]:  # its right half: the span is done
                total = lefts[top] + total
                continue
            lefts[top], right[top] = total, True  # its left half: now its right half
            half = lengths[top] // 2
            half -= half % 8
            top += 1
            starts[top], lengths[top], right[top] = starts[top - 1] + half, lengths[top - 1] - half, False
            break


@njit(cache=True, nogil=True)
def array_sum(values: np.ndarray, start: int, n: int) -> float:
    """`float(values[start : start + n].sum())`: NumPy's reduction starts from 0.0 (so an empty span, or one of
    negative zeros, sums to 0.0)."""
    return 0.0 + pairwise_sum(values, start, n)
