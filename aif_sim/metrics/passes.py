"""The recorder's passes over a flush of finished requests, compiled (`recorder.Recorder.account`): one pass per
figure family in place of numpy chains of masks, gathers and temporaries, with the same float operations in the
same order and NumPy's own summation (`sums`), so the figures are those of the numpy expressions to the last bit.
Imported when the first recorder accounts, so that importing the metrics does not import numba."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from aif_sim.metrics.sums import BLOCK, array_sum, block_sum, pairwise_sum


@njit(cache=True, nogil=True)
def visit_figures(
    times: np.ndarray, measured: np.ndarray, own: np.ndarray, lo: float, hi: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per stage of finished visits, `times` [requests, stages, (enter, start, end)] (end NaN: not visited): the
    measured visits' latencies and waits (ms; rows [stages, requests], the first `counts[stage]` of each row), and
    for the stages in `own`, the visits' busy server-seconds inside [lo, hi) (all visits) and their service
    (measured visits), each summed as NumPy sums the arrays of those values in request order."""
    n, stages = times.shape[0], times.shape[1]
    latency, wait = np.empty((stages, n)), np.empty((stages, n))
    counts = np.zeros(stages, np.int64)
    busy, compute = np.zeros(stages), np.zeros(stages)
    inside, served = np.empty(n), np.empty(n)
    for stage in range(stages):
        k = seen = 0
        for i in range(n):
            end = times[i, stage, 2]
            if end != end:
                continue
            enter, start = times[i, stage, 0], times[i, stage, 1]
            if measured[i]:
                latency[stage, k] = (end - enter) * 1000
                wait[stage, k] = (start - enter) * 1000
                served[k] = end - start
                k += 1
            if own[stage]:  # np.clip(np.minimum(end, hi) - np.maximum(start, lo), 0.0, None), NaN kept
                first = start if start != start or start >= lo else lo
                last = end if end <= hi else hi
                span = last - first
                inside[seen] = span if span != span or span >= 0.0 else 0.0
                seen += 1
        counts[stage] = k
        if own[stage]:
            busy[stage] = array_sum(inside, 0, seen)
            compute[stage] = array_sum(served, 0, k)
    return latency, wait, counts, busy, compute


@njit(cache=True, nogil=True)
def completed_figures(
    rows: np.ndarray, times: np.ndarray, service_s: np.ndarray, group_at: np.ndarray, group_slots: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Of the completed requests at `rows` of `times` [requests, stages, (enter, start, end)] (end NaN: the stage
    was skipped) and of their service times [requests, stages] (s), in that order, with the pipeline's steps (step j's slots
    `group_slots[group_at[j] : group_at[j + 1]]`): each visit's time in the stage [stages, requests] (ms; NaN where
    skipped), each request's no-contention latency (the sum over steps of the step's longest service, skipped
    stages costing nothing; ms), and per stage, the service of the visits (ms, a running sum over the requests as
    NumPy sums a column) and the time on the critical path (the visit of each step that took longest, the first
    of the longest; ms, NumPy's sum of those visits in request order)."""
    n, stages = len(rows), times.shape[1]
    stage_ms = np.empty((stages, n))
    service_ms = np.empty((n, stages))
    useful_ms = np.zeros(stages)
    for i in range(n):
        row = rows[i]
        for slot in range(stages):
            ms = (times[row, slot, 2] - times[row, slot, 0]) * 1000
            stage_ms[slot, i] = ms
            service_ms[i, slot] = 0.0 if ms != ms else service_s[row, slot] * 1000
            useful_ms[slot] += service_ms[i, slot]
    no_contention = np.zeros(n)
    critical_ms = np.zeros(stages)
    on_path = np.empty(n, np.int64)
    chosen = np.empty(n)
    for step in range(len(group_at) - 1):
        first, last = group_at[step], group_at[step + 1]
        for i in range(n):
            most = service_ms[i, group_slots[first]]
            for j in range(first + 1, last):
                other = service_ms[i, group_slots[j]]
                most = most if most >= other or most != most else other  # np.maximum, NaN kept
            no_contention[i] += most
        if last - first == 1:
            slot = group_slots[first]
            critical_ms[slot] += array_sum(stage_ms[slot], 0, n)
            continue
        for i in range(n):  # the first of the longest visits (a skipped stage: -inf)
            longest = stage_ms[group_slots[first], i]
            if longest != longest:
                longest = -math.inf
            on_path[i] = group_slots[first]
            for j in range(first + 1, last):
                ms = stage_ms[group_slots[j], i]
                if ms == ms and ms > longest:
                    on_path[i], longest = group_slots[j], ms
        for j in range(first, last):
            slot, k = group_slots[j], 0
            for i in range(n):
                if on_path[i] == slot:
                    chosen[k] = stage_ms[slot, i]
                    k += 1
            critical_ms[slot] += array_sum(chosen, 0, k)
    return stage_ms, no_contention, useful_ms, critical_ms


@njit(cache=True, nogil=True)
def vector_figures(
    read: np.ndarray, ages: np.ndarray, stale: np.ndarray, mismatched: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Of the vectors finished requests read from one store (`read`: whether each read; `ages` [requests, entities
    read]; how many were `stale` and `mismatched`): each request's mean age (NaN where it read none; its ages summed
    as `np.add.reduceat` sums a row: the first plus NumPy's sum of the rest), and of the requests in `keep` that
    read, their ages (row by row), stale and mismatched vectors."""
    n, k = ages.shape
    flat = ages.reshape(n * k)  # rows without a view each
    mean_age = np.full(n, np.nan)
    kept = np.empty(n * k)
    count = stale_sum = mismatched_sum = 0
    for i in range(n):
        if not read[i]:
            continue
        # `pairwise_sum` would choose the same way; a short row calls `block_sum` itself, which counts no references
        rest = block_sum(flat, i * k + 1, k - 1) if k - 1 <= BLOCK else pairwise_sum(flat, i * k + 1, k - 1)
        mean_age[i] = (flat[i * k] + rest) / k
        if keep[i]:
            for j in range(k):
                kept[count] = ages[i, j]
                count += 1
            stale_sum += stale[i]
            mismatched_sum += mismatched[i]
    return mean_age, kept[:count], stale_sum, mismatched_sum


@njit(cache=True, nogil=True)
def second_figures(
    end_s: np.ndarray, latency_ms: np.ndarray, means: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Finished requests in time order, split by the second they ended in (`int(end_s)`): the seconds, in order;
    the latencies that are not NaN, second after second, and where each second's start (one more offset than
    seconds); per row of `means` [columns, requests] and second, the sum of the values that are not NaN (NumPy's
    sum of them in order) and their count."""
    n, columns = len(end_s), means.shape[0]
    seconds = np.empty(n, np.int64)
    latency, latency_at = np.empty(n), np.zeros(n + 1, np.int64)
    sums, counts = np.zeros((columns, n)), np.zeros((columns, n), np.int64)
    values = np.empty(n)
    found = kept = 0
    begin = 0
    while begin < n:
        second = np.int64(end_s[begin])
        stop = begin + 1
        while stop < n and np.int64(end_s[stop]) == second:
            stop += 1
        seconds[found] = second
        for i in range(begin, stop):
            if latency_ms[i] == latency_ms[i]:
                latency[kept] = latency_ms[i]
                kept += 1
        latency_at[found + 1] = kept
        for c in range(columns):
            count = 0
            for i in range(begin, stop):
                if means[c, i] == means[c, i]:
                    values[count] = means[c, i]
                    count += 1
            sums[c, found], counts[c, found] = array_sum(values, 0, count), count
        found += 1
        begin = stop
    return seconds[:found], latency[:kept], latency_at[: found + 1], sums[:, :found], counts[:, :found]


@njit(cache=True, nogil=True)
def lookup_counts(flags: np.ndarray, measured: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cache lookup (a column of `flags` [requests, lookups]: 1.0 hit, 0.0 miss, NaN not consulted), the
    measured requests' hits and misses there."""
    hits, misses = np.zeros(flags.shape[1], np.int64), np.zeros(flags.shape[1], np.int64)
    for i in range(flags.shape[0]):
        if measured[i]:
            for j in range(flags.shape[1]):
                hits[j] += flags[i, j] == 1.0
                misses[j] += flags[i, j] == 0.0
    return hits, misses


@njit(cache=True, nogil=True, _nrt=False)  # allocates nothing: no reference counting of its arrays
def busy_rows(
    rows: np.ndarray, firsts: np.ndarray, lo: float, hi: float, busy: np.ndarray, compute: np.ndarray, node_busy: np.ndarray
) -> None:
    """The busy time of a fleet's visits (`recorder.Recorder.node_busy_rows`), the sums `Recorder.node_busy` and
    `Recorder.cut` make one call at a time, with the same float operations in the same order: each slot's rows
    `rows[firsts[slot] : firsts[slot + 1]]`, in order, added to its totals. A visit's row (node, start, service,
    measured 1.0 / 0.0 in columns 1-4) adds its busy time inside the window [lo, hi) to `busy[slot]` and
    `node_busy[slot, node]`, and a measured one its service to `compute[slot]`; a cut row (column 4 -1.0: a visit
    stopped at column 2 that was counted busy until column 3) takes that time inside the window back."""
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


def warm() -> None:
    """Compile each pass (or load it from numba's cache) for the arrays the recorder gives it."""
    times, flags, ints = np.full((1, 1, 3), np.nan), np.ones(1, np.bool_), np.zeros(1, np.int64)
    visit_figures(times, flags, flags, 0.0, 1.0)
    completed_figures(ints, times, np.zeros((1, 1)), np.array([0, 1]), ints)
    vector_figures(flags, np.zeros((1, 1)), ints, ints, flags)
    second_figures(np.zeros(1), np.zeros(1), np.zeros((1, 1)))
    lookup_counts(np.zeros((1, 1)), flags)
    busy_rows(np.zeros((1, 5)), np.zeros(2, np.int64), 0.0, 1.0, np.zeros(1), np.zeros(1), np.zeros((1, 1)))
