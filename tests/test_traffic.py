"""Traffic: Zipf popularity, Poisson, diurnal, bursty (MMPP) and trace arrivals against theory."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from aif_sim.core.traffic import ZipfSampler, arrival_times, mean_rate, request_blocks
from aif_sim.scenario.schema import Population
from tests.simtools import RowSink, make_scenario, negligible, run_summaries

SEQ_STAGES = {name: negligible() for name in ("merger", "retrieval", "feature_fetch", "prerank")}


def _arrival_spec(arrival: dict):
    return make_scenario(SEQ_STAGES, arrival=arrival).traffic.arrival


def _arrivals(arrival: dict, until_s: float, seed: int = 0) -> np.ndarray:
    chunks = list(arrival_times(_arrival_spec(arrival), until_s, np.random.default_rng(seed)))
    times = np.concatenate(chunks) if chunks else np.array([])
    assert (np.diff(times) >= 0).all() and (times < until_s).all() and (times >= 0).all()
    return times


# --- Zipf --------------------------------------------------------------------------------------------
def _zipf_pmf(count: int, s: float) -> np.ndarray:
    weights = np.arange(1, count + 1, dtype=float) ** -s
    return weights / weights.sum()


@pytest.mark.parametrize("s", [0.0, 0.6, 0.9, 1.1, 1.5])
def test_zipf_frequencies_match_power_law(s):
    count, draws = 2000, 1_000_000
    sampler = ZipfSampler(Population(count=count, zipf_s=s))
    ranks = sampler.sample(np.random.default_rng(int(s * 10) + 1), draws)
    assert ranks.min() >= 0 and ranks.max() < count
    pmf = _zipf_pmf(count, s)
    np.testing.assert_allclose(np.diff(sampler.head_cdf, prepend=0.0), pmf, rtol=1e-9, atol=1e-15)
    observed = np.bincount(ranks, minlength=count)
    # chi-square goodness of fit over ranks pooled so that every cell expects >= 20 draws
    expected = pmf * draws
    edges = [0]
    acc = 0.0
    for i, e in enumerate(expected):
        acc += e
        if acc >= 20:
            edges.append(i + 1)
            acc = 0.0
    edges[-1] = count
    obs_cells = np.add.reduceat(observed, edges[:-1])
    exp_cells = np.add.reduceat(expected, edges[:-1])
    assert stats.chisquare(obs_cells, exp_cells).pvalue > 1e-4
    # and the head, rank by rank: max abs error within 5 binomial standard deviations
    head = slice(0, 20)
    sd = np.sqrt(pmf[head] * (1 - pmf[head]) / draws)
    assert np.all(np.abs(observed[head] / draws - pmf[head]) < 5 * sd + 1e-12)


def test_zipf_detects_wrong_exponent():
    """The goodness-of-fit check above has power: draws with s=1.1 are rejected against s=1.0."""
    count, draws = 2000, 1_000_000
    ranks = ZipfSampler(Population(count=count, zipf_s=1.1)).sample(np.random.default_rng(3), draws)
    observed = np.bincount(ranks, minlength=count)[:100]
    expected = _zipf_pmf(count, 1.0)[:100] * draws
    assert stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue < 1e-6


def _harmonic(n: int, s: float, exact_up_to: int = 100_000) -> float:
    """sum_{i=1}^{n} i^-s: exact head, Euler-Maclaurin tail (error ~ M^(-s-3), negligible)."""
    m = min(n, exact_up_to)
    head = float(np.sum(np.arange(1, m + 1, dtype=float) ** -s))
    if n == m:
        return head
    f = lambda x: x**-s  # noqa: E731
    df = lambda x: -s * x ** (-s - 1)  # noqa: E731
    integral = math.log(n / m) if s == 1 else (n ** (1 - s) - m ** (1 - s)) / (1 - s)
    return head + integral + (f(n) - f(m)) / 2 + (df(n) - df(m)) / 12


def _mass(lo: int, hi: int, s: float, total: float) -> float:
    """P(lo <= rank1 <= hi) for 1-based ranks."""
    return (_harmonic(hi, s) - _harmonic(lo - 1, s)) / total if lo > 1 else _harmonic(hi, s) / total


@pytest.mark.parametrize("s", [0.9, 1.1])
def test_zipf_large_population_tail_path(s):
    """count 1e8 with a 1000-rank table: ranks beyond the table come from the continuous tail."""
    count, table, draws = 100_000_000, 1000, 2_000_000
    sampler = ZipfSampler(Population(count=count, zipf_s=s), table_size=table)
    assert sampler.head == table < count
    ranks = sampler.sample(np.random.default_rng(17), draws) + 1  # 1-based
    assert ranks.min() >= 1 and ranks.max() <= count
    total = _harmonic(count, s)
    # top ranks, one by one
    for rank in range(1, 11):
        p = rank**-s / total
        freq = np.mean(ranks == rank)
        assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / draws), (rank, freq, p)
    # mass beyond the table and per decade of the tail
    bounds = [(table + 1, count), (1001, 10_000), (10_001, 100_000), (100_001, 1_000_000), (1_000_001, 10_000_000), (10_000_001, count)]
    for lo, hi in bounds:
        p = _mass(lo, hi, s, total)
        freq = np.mean((ranks >= lo) & (ranks <= hi))
        assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / draws), (lo, hi, freq, p)
    # within the tail, single ranks just past the table keep the power law (pooled over a block)
    p_block = _mass(1001, 1010, s, total)
    freq_block = np.mean((ranks >= 1001) & (ranks <= 1010))
    assert abs(freq_block - p_block) < 5 * math.sqrt(p_block / draws)


def test_zipf_single_item_population():
    ranks = ZipfSampler(Population(count=1, zipf_s=1.2)).sample(np.random.default_rng(0), 100)
    assert (ranks == 0).all()


# --- arrivals ----------------------------------------------------------------------------------------
def test_poisson_rate_and_exponential_gaps():
    qps, until = 500.0, 200.0
    times = _arrivals({"kind": "poisson", "qps": qps}, until, seed=1)
    expected = qps * until
    assert abs(len(times) - expected) < 4 * math.sqrt(expected)
    gaps = np.diff(times)
    assert stats.kstest(gaps, "expon", args=(0, 1 / qps)).pvalue > 1e-3
    # counts in 1 s windows: Poisson, so variance = mean (index of dispersion ~ 1)
    counts = np.bincount(times.astype(int), minlength=int(until))
    assert counts.var(ddof=1) / counts.mean() == pytest.approx(1.0, abs=0.3)
    assert mean_rate(_arrival_spec({"kind": "poisson", "qps": qps})) == qps


def test_poisson_gap_test_has_power():
    """The KS test above rejects gaps of the wrong rate."""
    times = _arrivals({"kind": "poisson", "qps": 500.0}, 200.0, seed=1)
    assert stats.kstest(np.diff(times), "expon", args=(0, 1 / 480.0)).pvalue < 1e-3


def test_diurnal_mean_rate_and_peak_to_trough():
    mean_qps, ratio, period, periods = 1000.0, 4.0, 100.0, 10
    until = period * periods
    spec = {"kind": "diurnal", "mean_qps": mean_qps, "peak_to_trough": ratio, "period_s": period}
    times = _arrivals(spec, until, seed=2)
    expected = mean_qps * until
    assert abs(len(times) - expected) < 4 * math.sqrt(expected)
    assert mean_rate(_arrival_spec(spec)) == mean_qps
    # rate(t) = mean (1 + a sin(2 pi t / period)) with a = (r - 1) / (r + 1): the peak (a quarter
    # period in) over the trough (three quarters) is r. Count arrivals in windows of half-width d.
    a = (ratio - 1) / (ratio + 1)
    phase = np.mod(times, period) / period  # in [0, 1)
    half = 0.025
    peak = np.sum(np.abs(phase - 0.25) < half)
    trough = np.sum(np.abs(phase - 0.75) < half)
    delta = 2 * math.pi * half
    sinc = math.sin(delta) / delta  # mean of sin over the window around its maximum
    expected_ratio = (1 + a * sinc) / (1 - a * sinc)
    assert expected_ratio == pytest.approx(ratio, rel=0.02)
    rel_sd = math.sqrt(1 / peak + 1 / trough)
    assert peak / trough == pytest.approx(expected_ratio, rel=4 * rel_sd)
    # the whole shape: counts in 20 phase bins against the integral of the sinusoid
    bins = 20
    observed = np.bincount((phase * bins).astype(int), minlength=bins)
    edges = np.arange(bins + 1) / bins
    integral = edges[1:] - edges[:-1] - a / (2 * math.pi) * (np.cos(2 * math.pi * edges[1:]) - np.cos(2 * math.pi * edges[:-1]))
    expected_bins = integral / integral.sum() * len(times)
    assert stats.chisquare(observed, expected_bins).pvalue > 1e-4


def test_bursty_mmpp_long_run_rate():
    qps, burst_qps, mean_burst, mean_calm = 50.0, 500.0, 1.0, 4.0
    until = 20_000.0
    spec = {"kind": "bursty", "qps": qps, "burst_qps": burst_qps, "mean_burst_s": mean_burst, "mean_calm_s": mean_calm}
    times = _arrivals(spec, until, seed=4)
    share = mean_burst / (mean_burst + mean_calm)
    rate = share * burst_qps + (1 - share) * qps
    assert mean_rate(_arrival_spec(spec)) == pytest.approx(rate)
    # standard error of the long-run rate over n = T / E[cycle] alternating-renewal cycles:
    # Var(arrivals - rate * length per cycle) / (n E[L]^2), with exponential burst/calm lengths
    cycle = mean_burst + mean_calm
    var_cycle = (burst_qps - rate) ** 2 * mean_burst**2 + (qps - rate) ** 2 * mean_calm**2 + rate * cycle
    se = math.sqrt(var_cycle / ((until / cycle) * cycle**2))
    assert len(times) / until == pytest.approx(rate, abs=4 * se)
    assert 4 * se / rate < 0.06
    # bursts make counts over-dispersed: variance of 1 s counts far above their mean
    counts = np.bincount(times.astype(int), minlength=int(until))
    assert counts.var() / counts.mean() > 10
    # and the busiest seconds reach the burst rate, the quietest the calm rate
    assert np.percentile(counts, 99) > 0.8 * burst_qps
    assert np.median(counts) < 2 * qps


def test_trace_replay_with_time_scale_and_named_column(tmp_path):
    raw = np.array([3.0, 0.5, 1.25, 7.5, 2.0, 10.0, 0.0, 6.0])
    path = tmp_path / "trace.csv"
    path.write_text("request,t_s\n" + "".join(f"{i},{t}\n" for i, t in enumerate(raw)))
    times = _arrivals({"kind": "trace", "path": str(path), "column": "t_s", "time_scale": 0.5}, 4.0)
    expected = np.sort(raw) * 0.5
    np.testing.assert_allclose(times, expected[expected < 4.0])
    # default column: the first one (here the row numbers 0..7)
    first = _arrivals({"kind": "trace", "path": str(path)}, 100.0)
    np.testing.assert_allclose(first, np.arange(len(raw), dtype=float))
    assert mean_rate(_arrival_spec({"kind": "trace", "path": str(path)})) is None


def test_trace_drives_the_simulation(tmp_path):
    """A trace's arrivals are exactly the simulated requests (after warm-up, before the end)."""
    raw = np.round(np.random.default_rng(0).uniform(0, 20, 500), 6)
    path = tmp_path / "trace.csv"
    path.write_text("t\n" + "".join(f"{t}\n" for t in raw))
    scenario = make_scenario(SEQ_STAGES, arrival={"kind": "trace", "path": str(path), "time_scale": 0.25}, duration_s=4.0, warmup_s=1.0)
    scaled = raw * 0.25
    blocks = list(request_blocks(scenario.traffic, scenario.duration_s, scenario.seed))
    np.testing.assert_allclose(np.concatenate([b.arrival_s for b in blocks]), np.sort(scaled[scaled < 4.0]))
    summary = run_summaries(scenario)["sequential"]
    assert summary["requests"]["offered"] == int(np.sum((scaled >= 1.0) & (scaled < 4.0)))
    assert summary["requests"]["completed"] == summary["requests"]["offered"]


def test_request_blocks_users_follow_zipf_and_ids_are_consecutive():
    scenario = make_scenario(SEQ_STAGES, qps=2000, duration_s=50.0)
    blocks = list(request_blocks(scenario.traffic, scenario.duration_s, scenario.seed))
    ids = np.concatenate([np.arange(b.first_id, b.first_id + len(b.arrival_s)) for b in blocks])
    np.testing.assert_array_equal(ids, np.arange(len(ids)))
    users = np.concatenate([b.user for b in blocks])
    assert all((b.candidates == scenario.traffic.candidates).all() for b in blocks)
    pmf = _zipf_pmf(scenario.traffic.users.count, scenario.traffic.users.zipf_s)
    observed = np.bincount(users, minlength=len(pmf))[:50]
    assert stats.chisquare(observed, pmf[:50] * len(users) * observed.sum() / (pmf[:50].sum() * len(users))).pvalue > 1e-4


def test_candidates_per_request_from_a_lognormal_clipped_to_its_range():
    spec = {"dist": "lognormal", "median": 3000, "p99": 9000, "min": 500, "max": 8000}
    scenario = make_scenario(SEQ_STAGES, qps=2000, duration_s=20.0, candidates=spec)
    counts = np.concatenate([b.candidates for b in request_blocks(scenario.traffic, scenario.duration_s, scenario.seed)])
    assert counts.min() >= 500 and counts.max() <= 8000
    assert np.median(counts) == pytest.approx(3000, rel=0.03)
    # unclipped below the cap, the 95th percentile of a lognormal with these quantiles
    sigma = math.log(3) / stats.norm.ppf(0.99)
    assert np.percentile(counts, 95) == pytest.approx(3000 * math.exp(sigma * stats.norm.ppf(0.95)), rel=0.05)
    assert (counts == 8000).mean() == pytest.approx(stats.norm.sf(math.log(8000 / 3000) / sigma), abs=0.005)
    constant = make_scenario(SEQ_STAGES, qps=100, duration_s=2.0, candidates={"dist": "constant", "n": 77})
    assert all((b.candidates == 77).all() for b in request_blocks(constant.traffic, 2.0, 1))


def test_profile_timed_stage_reads_each_requests_own_candidates(tmp_path):
    """A profile operator measured by candidates, with no spread (p99 = median), on unlimited servers: each
    request's prerank time is the log-log interpolation at its own candidate count."""
    profile = tmp_path / "profile.json"
    grid = [(100, 1.0), (1000, 4.0), (10000, 40.0)]
    profile.write_text(json.dumps({"ops": {"op": [{"candidates": c, "median_ms": m, "p99_ms": m} for c, m in grid]}}))
    stages = {**SEQ_STAGES, "prerank": {"servers": 100_000, "latency": {"dist": "profile", "path": str(profile), "op": "op"}}}
    spec = {"dist": "lognormal", "median": 1000, "p99": 20000, "min": 100, "max": 10000}
    scenario = make_scenario(stages, qps=200, duration_s=5.0, candidates=spec)
    sink = RowSink()
    run_summaries(scenario, sink)
    blocks = list(request_blocks(scenario.traffic, scenario.duration_s, scenario.seed))
    counts = dict(
        zip(
            np.concatenate([np.arange(b.first_id, b.first_id + len(b.candidates)) for b in blocks]).tolist(),
            np.concatenate([b.candidates for b in blocks]).tolist(),
        )
    )
    expected = np.interp(np.log([counts[r[1]] for r in sink.rows]), np.log([c for c, _ in grid]), np.log([m for _, m in grid]))
    measured = np.array([r[4]["prerank"] for r in sink.rows])
    assert len(measured) > 800 and len(set(counts.values())) > 100
    np.testing.assert_allclose(measured, np.exp(expected), rtol=1e-9)
