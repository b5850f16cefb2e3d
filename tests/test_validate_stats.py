"""validate's confidence intervals hold their 95% on autocorrelated latencies, where an i.i.d. bootstrap over requests does not.

The series are M/M/1 sojourn times (Lindley's recursion, started in the stationary state), whose quantiles are known
exactly: the sojourn time of an M/M/1 FIFO queue is exponential of rate mu - lambda. Consecutive sojourns are strongly
correlated (a busy period delays many requests in a row), as queueing delays in a validate run are.
"""

from __future__ import annotations

import numpy as np
import pytest

from aif_sim.app.validate import QUANTILES, batch_intervals, diverging_stage, outside_stages_ms, relative_errors, service_error
from aif_sim.scenario.pipelines import shipped_designs

REPLICATIONS = 300
CUSTOMERS = 4000
ARRIVAL_RATE = 1.0
NAMES = list(QUANTILES)


def mm1_sojourns(rng: np.random.Generator, service_rate: float, replications: int = REPLICATIONS, n: int = CUSTOMERS) -> np.ndarray:
    """Sojourn times of `n` consecutive customers of a stationary M/M/1 queue, per replication [replications, n]."""
    rho = ARRIVAL_RATE / service_rate
    wait = np.where(rng.random(replications) < rho, rng.exponential(1 / (service_rate - ARRIVAL_RATE), replications), 0.0)
    services = rng.exponential(1 / service_rate, (n, replications))
    gaps = rng.exponential(1 / ARRIVAL_RATE, (n, replications))
    sojourns = np.empty((n, replications))
    for i in range(n):
        sojourns[i] = wait + services[i]
        wait = np.maximum(0.0, sojourns[i] - gaps[i])
    return sojourns.T


def true_quantiles(service_rate: float) -> np.ndarray:
    """p50/p90/p99 of the M/M/1 sojourn time (exponential of rate mu - lambda)."""
    return -np.log(1 - np.array(list(QUANTILES.values())) / 100) / (service_rate - ARRIVAL_RATE)


def iid_bootstrap(des: np.ndarray, live: np.ndarray, rng: np.random.Generator, resamples: int = 100) -> dict[str, np.ndarray]:
    """The i.i.d. bootstrap over requests validate used before: percentile intervals [quantiles, 2]."""
    qs = list(QUANTILES.values())
    d = np.percentile(des[rng.integers(0, len(des), (resamples, len(des)))], qs, axis=1)
    v = np.percentile(live[rng.integers(0, len(live), (resamples, len(live)))], qs, axis=1)
    return {key: np.percentile(values, [2.5, 97.5], axis=1).T for key, values in (("des", d), ("live", v), ("error", d / v - 1))}


def batch(des: np.ndarray, live: np.ndarray) -> dict[str, np.ndarray]:
    """validate's intervals [quantiles, 2], the requests arriving in order."""
    out = batch_intervals(des, np.arange(len(des), dtype=float), live, np.arange(len(live), dtype=float))
    return {
        "des": np.array([out["des"][f"{name}_ms"] for name in NAMES]),
        "live": np.array([out["live"][f"{name}_ms"] for name in NAMES]),
        "error": np.array([out["error"][name] for name in NAMES]),
    }


def coverage(method: str) -> dict[str, np.ndarray]:
    """Per interval (a run's quantiles, their error), the share of replications whose 95% interval holds the truth."""
    rng = np.random.default_rng(7)
    des_rate, live_rate = 1 / 0.5, 1 / 0.6  # utilisation 0.5 and 0.6
    des_runs, live_runs = mm1_sojourns(rng, des_rate), mm1_sojourns(rng, live_rate)
    truth = {"des": true_quantiles(des_rate), "live": true_quantiles(live_rate)}
    truth["error"] = truth["des"] / truth["live"] - 1
    hits = {key: np.zeros(len(QUANTILES)) for key in truth}
    for des, live in zip(des_runs, live_runs):
        intervals = batch(des, live) if method == "batch" else iid_bootstrap(des, live, rng)
        for key, interval in intervals.items():
            hits[key] += (interval[:, 0] <= truth[key]) & (truth[key] <= interval[:, 1])
    return {key: value / REPLICATIONS for key, value in hits.items()}


@pytest.fixture(scope="module")
def batch_coverage() -> dict[str, np.ndarray]:
    return coverage("batch")


@pytest.fixture(scope="module")
def iid_coverage() -> dict[str, np.ndarray]:
    return coverage("iid")


@pytest.mark.parametrize("key", ["des", "live", "error"])
def test_batch_means_intervals_cover_about_95_percent_of_autocorrelated_runs(batch_coverage, key):
    # the p99 of 4,000 requests rests on 40, a handful of busy periods: its interval covers somewhat less (0.86-0.93)
    assert np.all((batch_coverage[key] >= [0.88, 0.88, 0.82]) & (batch_coverage[key] <= 0.99)), dict(zip(NAMES, batch_coverage[key]))


@pytest.mark.parametrize("key", ["des", "live", "error"])
def test_an_iid_bootstrap_covers_far_less(iid_coverage, key):
    assert np.all(iid_coverage[key] <= 0.75), dict(zip(NAMES, iid_coverage[key]))


def test_intervals_hold_their_centre_and_need_a_request_in_every_window():
    rng = np.random.default_rng(1)
    des, live = rng.exponential(2.0, 400), rng.exponential(1.0, 400)
    arrival = np.sort(rng.uniform(0, 20, 400))
    out = batch_intervals(des, arrival, live, arrival)
    for name, q in QUANTILES.items():
        d, v = np.percentile(des, q), np.percentile(live, q)
        assert out["des"][f"{name}_ms"][0] < d < out["des"][f"{name}_ms"][1]
        assert out["live"][f"{name}_ms"][0] < v < out["live"][f"{name}_ms"][1]
        assert out["error"][name][0] < d / v - 1 < out["error"][name][1]
    assert batch_intervals(des[:30], arrival[:30], live[:30], arrival[:30]) == {}  # fewer than 2 per window
    gap = np.where(arrival < 10, arrival, arrival + 100)  # windows in the gap hold no request
    assert batch_intervals(des, gap, live, gap) == {}


def test_the_diverging_stage_is_the_largest_relative_difference_of_means():
    means = {"retrieval": {"des": 9.0, "live": 10.0}, "item_fetch": {"des": 2.0, "live": 6.0}, "rtp": {"des": 8.0, "live": 4.0}}
    assert diverging_stage(means) == {"stage": "rtp", "des_ms": 8.0, "live_ms": 4.0, "error": 1.0}


def test_time_outside_stage_visits_is_the_latency_less_each_steps_longest_visit():
    """aif: merger, (retrieval || user_inference), item_fetch, rtp; a skipped stage (NaN) takes nothing."""
    nan = float("nan")
    stage_ms = np.array(
        [
            [1.0, 20.0, 5.0, 2.0, 3.0],  # retrieval is the longer branch
            [1.0, 20.0, 26.0, 2.0, 3.0],  # user_inference is
            [1.0, 20.0, nan, 2.0, 3.0],  # a user-vector hit skipped user_inference
        ]
    )
    latency = np.array([27.5, 32.0, 26.0])
    assert outside_stages_ms(shipped_designs()["aif"].step_slots, latency, stage_ms) == pytest.approx([1.5, 0.0, 0.0])


def test_the_service_error_is_each_stages_mean_service_model_against_live():
    """A stage's mean service is its mean latency less its mean wait; the error is DES/live - 1 (NaN where live's is 0)."""

    def summary(latency: float, wait: float) -> dict:
        return {"stages": {"prerank": {"latency_ms": {"mean": latency}, "wait_ms": {"mean": wait}}}}

    assert service_error(summary(12.0, 4.0), summary(15.0, 5.0)) == {
        "prerank": {"des_ms": 8.0, "live_ms": 10.0, "error": pytest.approx(-0.2)}
    }
    assert np.isnan(relative_errors({"merger": 0.0}, {"merger": 0.0})["merger"])
    assert relative_errors({"a": 3.0, "b": 1.0}, {"a": 2.0}) == {"a": 0.5}
