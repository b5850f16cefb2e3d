"""Streaming metrics: the log histogram against numpy, and the summary's derived figures against theory."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aif_sim.app.run import build_samplers, simulate
from aif_sim.core.request import Outcome
from aif_sim.core.traffic import request_blocks
from aif_sim.metrics.histogram import LogHistogram
from aif_sim.metrics.recorder import Recorder
from aif_sim.metrics.timeseries import quantiles
from aif_sim.scenario import load_scenario
from tests.simtools import MANY, make_scenario, negligible, run_summaries

QUANTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}


def _filled(values: np.ndarray) -> LogHistogram:
    """Values added in blocks of 4096, as the recorder adds them."""
    hist = LogHistogram()
    for start in range(0, len(values), 4096):
        hist.add(values[start : start + 4096])
    return hist


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.5])
def test_log_histogram_quantiles_match_numpy_on_lognormal(sigma):
    values = np.random.default_rng(int(sigma * 10)).lognormal(mean=math.log(8.0), sigma=sigma, size=200_000)
    hist = _filled(values)
    summary = hist.summary()
    for key, q in QUANTILES.items():
        exact = np.percentile(values, q, method="inverted_cdf")
        assert summary[key] == pytest.approx(exact, rel=0.005), key
        assert summary[key] == pytest.approx(np.percentile(values, q), rel=0.005), key
    for q in (0.001, 0.1, 0.25, 0.75, 0.95):
        assert hist.quantile(q) == pytest.approx(np.percentile(values, 100 * q, method="inverted_cdf"), rel=0.005)
    assert summary["mean"] == pytest.approx(values.mean(), rel=1e-12)
    assert summary["max"] == values.max()
    assert hist.min == values.min()
    assert hist.count == len(values)
    assert hist.quantile(1.0) == values.max()
    if values.min() >= LogHistogram.LOW:  # below LOW all values share the first bucket (documented)
        assert hist.quantile(0.0) == pytest.approx(values.min(), rel=0.005)


def test_log_histogram_edge_values():
    empty = LogHistogram().summary()
    assert all(math.isnan(v) for v in empty.values())
    zeros = _filled(np.zeros(100))
    assert zeros.summary()["p50"] == 0.0 and zeros.summary()["max"] == 0.0 and zeros.summary()["mean"] == 0.0
    one = _filled(np.array([12.345]))
    assert all(v == 12.345 for v in one.summary().values())
    # blocks accumulate; an empty block changes nothing
    hist = LogHistogram()
    for block in ([1.0, 2.0], [], [3.0]):
        hist.add(np.array(block))
    assert hist.summary()["mean"] == 2.0 and hist.summary()["max"] == 3.0 and hist.count == 3


def test_log_histogram_quantile_of_zeros_is_zero():
    values = np.concatenate([np.zeros(700), np.random.default_rng(2).exponential(5.0, 300)])
    summary = _filled(values).summary()
    assert summary["p50"] == np.percentile(values, 50, method="inverted_cdf") == 0.0


def test_log_histogram_buckets_follow_their_definition_at_the_edges():
    """Value v >= LOW falls in bucket 1 + floor(ln(v / LOW) / ln(GROWTH)), capped at the last; below LOW (zero,
    negative) in bucket 0: checked one value at a time on bucket edges, the values just beside them, and beyond HIGH."""
    hist = LogHistogram()
    edges = LogHistogram.LOW * LogHistogram.GROWTH ** np.arange(-2, hist.bins + 2, 37).astype(float)
    values = np.concatenate([edges, np.nextafter(edges, 0), np.nextafter(edges, np.inf), [0.0, -1.0, LogHistogram.HIGH * 10]])
    for value in values:
        one = LogHistogram()
        one.add(np.array([value]))
        with np.errstate(divide="ignore", invalid="ignore"):  # numpy's logarithm, as the histogram's
            logarithm = float(np.log(np.array([value]) / LogHistogram.LOW)[0])
        expected = 0 if value < LogHistogram.LOW else min(1 + math.floor(logarithm / math.log(1.005)), hist.bins - 1)
        assert np.flatnonzero(one.counts).tolist() == [expected], value
    hist.add(values)  # all at once: the same buckets
    assert hist.count == len(values) == hist.counts.sum()
    assert hist.min == -1.0 and hist.max == LogHistogram.HIGH * 10


@pytest.mark.parametrize("size", [1, 2, 3, 100, 1999, 5000])
def test_each_seconds_quantiles_are_numpys_linear_percentiles(size):
    """The time series' p50 and p99 of a second are np.percentile's (linear interpolation between order statistics),
    to the last bit, with ties and a single value."""
    rng = np.random.default_rng(size)
    for values in (rng.lognormal(2.0, 1.0, size), np.round(rng.exponential(3.0, size), 1), np.full(size, 7.25)):
        assert quantiles(values).tobytes() == np.percentile(values, [50, 99]).tobytes()


def test_critical_path_and_no_contention_of_a_parallel_step_by_hand():
    """AIF's steps: merger, (retrieval || user_inference), item_fetch, rtp, no waiting. A request's critical path runs
    through the longer branch (the first on a tie, a branch skipped by a cache hit never); its no-contention latency
    sums each step's longest service. Checked against sums written out by hand, with a request that was not measured
    and one that timed out (neither counts)."""
    scenario = load_scenario("scenarios/staleness_day.yaml", [])  # every pool one shared queue
    recorder = Recorder.for_pipeline(scenario, "aif", None, {}, [])
    assert recorder.stage_names == ["merger", "retrieval", "user_inference", "item_fetch", "rtp"]
    nan = math.nan
    ms = np.array(  # per request, each stage's service (ms; NaN: not visited)
        [
            [1.0, 10.0, 4.0, 2.0, 3.0],  # retrieval on the path
            [1.0, 3.0, 7.0, 2.0, 3.0],  # user_inference on the path
            [1.0, 5.0, 5.0, 2.0, 3.0],  # a tie: the first branch
            [1.0, 6.0, nan, 2.0, 3.0],  # user_inference skipped (a cache hit)
            [1.0, 50.0, 1.0, 2.0, 3.0],  # not measured
            [1.0, 40.0, 1.0, nan, nan],  # timed out after the parallel step
        ]
    )
    arrival = 100.0 + np.arange(len(ms))
    times = np.full((len(ms), 5, 3), nan)
    for i, row in enumerate(ms):
        clock = arrival[i]
        for step in ([0], [1, 2], [3], [4]):
            ends = [clock + row[slot] / 1000 for slot in step if not math.isnan(row[slot])]
            for slot in step:
                if not math.isnan(row[slot]):
                    times[i, slot] = (clock, clock, clock + row[slot] / 1000)
            clock = max(ends) if ends else clock
    end = np.nanmax(times[..., 2], axis=1)
    outcome = np.array([Outcome.COMPLETED] * 5 + [Outcome.TIMED_OUT])
    measured = np.array([True, True, True, True, False, True])
    recorder.account(
        np.arange(6),
        arrival,
        np.zeros(6, np.int64),
        np.ones(6, np.int64),
        measured,
        times,
        np.nan_to_num(ms) / 1000,
        outcome,
        end,
        np.empty((6, 0)),
    )
    critical = {name: stage.critical_ms for name, stage in zip(recorder.stage_names, recorder.stages)}
    assert critical == pytest.approx({"merger": 4.0, "retrieval": 10 + 5 + 6, "user_inference": 7.0, "item_fetch": 8.0, "rtp": 12.0})
    no_contention = [1 + 10 + 2 + 3, 1 + 7 + 2 + 3, 1 + 5 + 2 + 3, 1 + 6 + 2 + 3]
    assert recorder.no_contention.count == 4 and recorder.no_contention.total == pytest.approx(sum(no_contention))
    assert recorder.latency.total == pytest.approx(sum(no_contention))  # nothing waited
    assert recorder.stages[2].useful_s == pytest.approx((4 + 7 + 5) / 1000)  # the skipped visit costs nothing
    assert recorder.stages[1].latency.count == 5 and recorder.stages[1].compute_s == pytest.approx((10 + 3 + 5 + 6 + 40) / 1000)


def test_slo_missed_share_matches_exponential_tail():
    """Unlimited servers, exponential prerank (mean 10 ms): P(latency > 20 ms) = exp(-2)."""
    stages = {name: negligible() for name in ("merger", "retrieval", "feature_fetch")}
    stages["prerank"] = {"servers": MANY, "latency": {"dist": "exponential", "mean_ms": 10}}
    scenario = make_scenario(stages, qps=2000, duration_s=10.0, slo={"p99_ms": 20})
    summary = run_summaries(scenario)["sequential"]
    n = summary["requests"]["offered"]
    p = math.exp(-2)
    assert summary["slo"]["missed_share"] == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n))
    assert summary["slo"]["valid"] is False
    # latency quantiles of an exponential: -mean ln(1 - q)
    for key, q in QUANTILES.items():
        if key != "p999":
            assert summary["latency_ms"][key] == pytest.approx(-10 * math.log(1 - q / 100), rel=0.05), key


def test_slo_counts_lost_requests_as_missed():
    stages = {name: negligible() for name in ("merger", "retrieval", "feature_fetch")}
    stages["prerank"] = {"servers": 1, "latency": {"dist": "constant", "ms": 10}, "queue_limit": 0}
    # at most one request in service, none queued: arrivals during a service are rejected
    scenario = make_scenario(stages, qps=50, duration_s=20.0, slo={"p99_ms": 1000})
    summary = run_summaries(scenario)["sequential"]
    req = summary["requests"]
    assert req["rejected"] > 0
    assert summary["slo"]["missed_share"] == pytest.approx(req["rejected"] / req["offered"])
    # M/D/1/1 (Erlang loss with one server): blocking = a / (1 + a), a = 50/s * 10 ms = 0.5
    assert req["rejected"] / req["offered"] == pytest.approx(0.5 / 1.5, abs=4 * math.sqrt(0.22 / req["offered"]))
    assert summary["stages"]["prerank"]["wait_ms"]["max"] == 0.0


def test_compute_utilization_and_bottleneck_with_constant_services():
    stages = {
        "merger": {"servers": 10, "latency": {"dist": "constant", "ms": 1}},
        "retrieval": {"servers": 50, "latency": {"dist": "constant", "ms": 4}},
        "feature_fetch": {"servers": 100, "latency": {"dist": "constant", "ms": 2}},
        "prerank": {"servers": 20, "latency": {"dist": "constant", "ms": 5}},
    }
    qps, duration = 500.0, 20.0
    scenario = make_scenario(stages, qps=qps, duration_s=duration, warmup_s=2.0)
    summary = run_summaries(scenario)["sequential"]
    completed = summary["requests"]["completed"]
    assert completed == summary["requests"]["offered"]
    window = duration - 2.0
    for name, stage in stages.items():
        ms = stage["latency"]["ms"]
        assert summary["compute"][name]["ms_per_request"] == pytest.approx(ms, rel=1e-9)
        assert summary["compute"][name]["busy_s"] == pytest.approx(completed * ms / 1000, rel=1e-9)
        # offered load in Erlangs over servers, up to Poisson noise in the count
        expected = completed / window * ms / 1000 / stage["servers"]
        assert summary["stages"][name]["utilization"] == pytest.approx(expected, rel=0.02)
    # highest busy time per server: prerank (500/s * 5 ms / 20 = 0.125) vs merger (0.05) etc.
    assert summary["bottleneck"] == "prerank"
    assert summary["latency_ms"]["max"] == pytest.approx(12.0, rel=1e-6)  # p999 <= max <= sum of constants
    assert summary["offered_qps"] == pytest.approx(qps, rel=4 / math.sqrt(qps * window))


def test_timeseries_counts_every_completion():
    stages = {name: negligible() for name in ("merger", "retrieval", "feature_fetch")}
    stages["prerank"] = {"servers": MANY, "latency": {"dist": "constant", "ms": 3}}
    scenario = make_scenario(stages, qps=400, duration_s=6.0, warmup_s=1.0)
    metrics = simulate(scenario, build_samplers(scenario, "<test>"))["sequential"]
    rows = metrics.timeseries.rows
    assert [r["t_s"] for r in rows] == list(range(len(rows)))
    total = sum(r["completed"] for r in rows)
    # warm-up completions are in the timeseries too: every arrival completed, after a constant 3 ms
    arrivals = sum(len(b.arrival_s) for b in request_blocks(scenario.traffic, scenario.duration_s, scenario.seed))
    assert total == arrivals and metrics.completed < arrivals
    for r in rows:
        if r["completed"]:
            assert r["p50_ms"] == pytest.approx(3.0) and r["p99_ms"] == pytest.approx(3.0)
