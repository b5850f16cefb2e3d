"""The recorder's compiled passes give NumPy's figures to the last bit: each pass against the numpy expression that
defines it, on random requests with skipped stages, unmeasured requests and values of every magnitude."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aif_sim.metrics.buckets import count_buckets
from aif_sim.metrics.histogram import LogHistogram
from aif_sim.metrics.lazy import passes
from aif_sim.metrics.sums import array_sum, pairwise_sum


def _bits(a: np.ndarray | float) -> bytes:
    return np.asarray(a, dtype=float).tobytes()


def _spread(rng: np.random.Generator, n: int) -> np.ndarray:
    """Values of mixed signs over fifteen orders of magnitude: any change in the order of additions shows."""
    return rng.standard_normal(n) * 10.0 ** rng.integers(-5, 10, n)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 127, 128, 129, 136, 1000, 4097, 70001])
def test_pairwise_sum_is_numpys_sum(n):
    rng = np.random.default_rng(n)
    values = _spread(rng, n + 5)
    assert _bits(array_sum(values, 5, n)) == _bits(values[5:].sum())
    if n:  # a span inside a longer array: reduceat's sum of a row's rest
        assert _bits(values[5] + pairwise_sum(values, 6, n - 1)) == _bits(np.add.reduceat(values[5:], [0]))


def test_pairwise_sum_of_random_spans_is_numpys():
    rng = np.random.default_rng(7)
    values = _spread(rng, 20000)
    for _ in range(300):
        start = int(rng.integers(0, 20000))
        n = int(rng.integers(0, 20000 - start))
        assert array_sum(values, start, n) == float(values[start : start + n].sum())


def test_bucket_pass_gives_numpys_sum_least_and_greatest():
    rng = np.random.default_rng(3)
    values = np.abs(_spread(rng, 5000))
    values[:10] = 0.0  # below the first bucket's edge
    counts = np.zeros(LogHistogram().bins, np.int64)
    with np.errstate(divide="ignore"):
        logs = np.log(values / LogHistogram.LOW)
    total, least, greatest = count_buckets(values, logs, counts, LogHistogram.LOW, LogHistogram.STEP)
    assert (_bits(total), least, greatest) == (_bits(values.sum()), values.min(), values.max())
    assert counts.sum() == len(values) and counts[0] >= 10
    values[100] = math.nan  # NaN wins, as in NumPy's min and max
    _, least, greatest = count_buckets(values, logs, counts, LogHistogram.LOW, LogHistogram.STEP)
    assert math.isnan(least) and math.isnan(greatest)


def _requests(rng: np.random.Generator, n: int, stages: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stage times [requests, stages, (enter, start, end)] with a fifth of the visits not made (NaN), service times
    and which requests are measured."""
    enter = rng.uniform(0, 100, (n, stages))
    start = enter + rng.exponential(0.01, (n, stages)) * (rng.random((n, stages)) < 0.6)
    end = start + rng.exponential(0.02, (n, stages))
    times = np.stack([enter, start, end], axis=2)
    times[rng.random((n, stages)) < 0.2] = np.nan
    return times, rng.exponential(0.02, (n, stages)), rng.random(n) < 0.8


def test_visit_figures_are_the_numpy_expressions():
    rng = np.random.default_rng(11)
    times, _, measured = _requests(rng, 3000, 4)
    own = np.array([True, False, True, True])
    lo, hi = 20.0, 80.0
    latency, wait, counts, busy, compute = passes().visit_figures(times, measured, own, lo, hi)
    for stage in range(4):
        enter, start, end = times[:, stage].T
        visited = ~np.isnan(end)
        e, s, t = (column[visited & measured] for column in (enter, start, end))
        assert counts[stage] == len(t)
        assert _bits(latency[stage, : counts[stage]]) == _bits((t - e) * 1000)
        assert _bits(wait[stage, : counts[stage]]) == _bits((s - e) * 1000)
        if own[stage]:
            inside = np.minimum(end[visited], hi) - np.maximum(start[visited], lo)
            assert _bits(busy[stage]) == _bits(np.clip(inside, 0.0, None).sum())
            assert _bits(compute[stage]) == _bits((t - s).sum())
        else:
            assert busy[stage] == compute[stage] == 0.0


def test_completed_figures_are_the_numpy_expressions():
    """Steps [0], [1, 2, 3] (a parallel fan-out), [4]: the no-contention latency is the sum of each step's longest
    service, the critical path the first of each step's longest visits (as argmax picks it), a skipped stage costing
    nothing and never on the path."""
    rng = np.random.default_rng(5)
    times, service_s, _ = _requests(rng, 4000, 5)
    times[:50, 1:4] = np.nan  # the whole fan-out skipped
    times[50:60, 2] = times[50:60, 3] = times[50:60, 1]  # equal visits: the first is on the path
    rows = np.flatnonzero(rng.random(4000) < 0.9)
    steps = [[0], [1, 2, 3], [4]]
    group_at, group_slots = np.array([0, 1, 4, 5]), np.array([0, 1, 2, 3, 4])
    stage_ms, no_contention, useful_ms, critical_ms = passes().completed_figures(rows, times, service_s, group_at, group_slots)

    chosen = times[rows]
    by_stage_ms = (chosen[:, :, 2] - chosen[:, :, 0]).T * 1000
    assert _bits(stage_ms) == _bits(by_stage_ms)
    service = service_s[rows] * 1000
    service[np.isnan(by_stage_ms).T] = 0.0
    assert _bits(useful_ms) == _bits(service.sum(axis=0))
    assert _bits(no_contention) == _bits(sum(service[:, group].max(axis=1) for group in steps))
    on_path_ms = np.where(np.isnan(by_stage_ms), -np.inf, by_stage_ms)
    on_path = np.array(steps[1])[np.argmax(on_path_ms[steps[1]], axis=0)]
    expected = [by_stage_ms[0].sum(), *(by_stage_ms[slot][on_path == slot].sum() for slot in steps[1]), by_stage_ms[4].sum()]
    assert _bits(critical_ms) == _bits(expected)


@pytest.mark.parametrize("read_count", [1, 2, 9, 200])
def test_vector_figures_are_reduceat_means(read_count):
    rng = np.random.default_rng(read_count)
    n = 500
    ages = np.abs(_spread(rng, n * read_count)).reshape(n, read_count)
    read, keep = rng.random(n) < 0.7, rng.random(n) < 0.8
    stale, mismatched = rng.integers(0, read_count + 1, n), rng.integers(0, read_count + 1, n)
    mean_age, kept, stale_sum, mismatched_sum = passes().vector_figures(read, ages, stale, mismatched, keep)
    expected = np.full(n, np.nan)
    expected[read] = np.add.reduceat(ages[read].ravel(), np.arange(0, read.sum() * read_count, read_count)) / read_count
    assert _bits(mean_age) == _bits(expected)
    assert _bits(kept) == _bits(ages[read & keep].ravel())
    assert (stale_sum, mismatched_sum) == (stale[read & keep].sum(), mismatched[read & keep].sum())


def test_second_figures_split_requests_by_the_second_they_ended():
    rng = np.random.default_rng(2)
    end_s = np.sort(rng.uniform(3, 9, 5000))
    latency = rng.exponential(20, 5000)
    latency[rng.random(5000) < 0.1] = np.nan  # not completed
    means = _spread(rng, 2 * 5000).reshape(2, 5000)
    means[rng.random((2, 5000)) < 0.3] = np.nan  # no value
    seconds, kept, kept_at, sums, counts = passes().second_figures(end_s, latency, means)
    assert seconds.tolist() == sorted(set(end_s.astype(np.int64).tolist()))
    for j, second in enumerate(seconds.tolist()):
        here = end_s.astype(np.int64) == second
        chunk = latency[here]
        assert _bits(kept[kept_at[j] : kept_at[j + 1]]) == _bits(chunk[~np.isnan(chunk)])
        for c in range(2):
            values = means[c, here]
            values = values[~np.isnan(values)]
            assert (_bits(sums[c, j]), counts[c, j]) == (_bits(values.sum()), len(values))


def test_lookup_counts_count_measured_hits_and_misses():
    rng = np.random.default_rng(4)
    flags = rng.choice([1.0, 0.0, np.nan], (3000, 3))
    measured = rng.random(3000) < 0.7
    hits, misses = passes().lookup_counts(flags, measured)
    assert hits.tolist() == np.count_nonzero(flags[measured] == 1.0, axis=0).tolist()
    assert misses.tolist() == np.count_nonzero(flags[measured] == 0.0, axis=0).tolist()
