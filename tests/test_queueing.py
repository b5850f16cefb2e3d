"""Single queues against queueing theory: M/M/c (Erlang C) and M/D/1 (Pollaczek-Khinchine).

The pipeline is `sequential` with merger, retrieval and feature_fetch at 0 ms on unlimited servers,
so the pipeline is exactly the prerank queue. Theory is computed here from the parameters alone.
"""

from __future__ import annotations

import math

import pytest

from tests.simtools import run_summaries, single_queue_scenario


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability that an arrival waits in an M/M/c queue (offered load a = lambda / mu, in Erlangs)."""
    c, a = servers, offered_load
    rho = a / c
    assert rho < 1
    top = a**c / math.factorial(c) / (1 - rho)
    bottom = sum(a**k / math.factorial(k) for k in range(c)) + top
    return top / bottom


def mmc_theory(servers: int, qps: float, mean_service_ms: float) -> dict[str, float]:
    """Mean wait, mean sojourn (ms), waiting probability, utilization and the wait's p90 of M/M/c."""
    mu = 1000.0 / mean_service_ms  # per server, per second
    a = qps / mu
    p_wait = erlang_c(servers, a)
    drain_rate = servers * mu - qps  # 1/s: P(Wq > t) = p_wait * exp(-drain_rate * t)
    wq_ms = 1000.0 * p_wait / drain_rate
    wait_p90_ms = 1000.0 * math.log(p_wait / 0.10) / drain_rate if p_wait > 0.10 else 0.0
    return {
        "wait_ms": wq_ms,
        "sojourn_ms": wq_ms + mean_service_ms,
        "p_wait": p_wait,
        "utilization": a / servers,
        "wait_p90_ms": wait_p90_ms,
    }


def _run_mmc(requests: int, servers: int = 4, rho: float = 0.7, mean_ms: float = 10.0, seed: int = 11):
    qps = rho * servers * 1000.0 / mean_ms
    warmup_s = 20.0
    scenario = single_queue_scenario(
        {"dist": "exponential", "mean_ms": mean_ms},
        servers,
        qps,
        duration_s=warmup_s + requests / qps,
        warmup_s=warmup_s,
        drain_s=60.0,
        seed=seed,
    )
    return run_summaries(scenario)["sequential"], mmc_theory(servers, qps, mean_ms)


def test_erlang_c_helper_matches_known_values():
    # M/M/1: P(wait) = rho; M/M/2 with a = 1: C = 1/3 (textbook values, guarding the helper itself)
    assert erlang_c(1, 0.7) == pytest.approx(0.7)
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)


def test_mmc_mean_sojourn_matches_erlang_c():
    summary, theory = _run_mmc(requests=200_000)
    assert summary["requests"]["completed"] == summary["requests"]["offered"] > 190_000
    prerank = summary["stages"]["prerank"]
    sojourn = prerank["latency_ms"]["mean"]
    assert sojourn == pytest.approx(theory["sojourn_ms"], rel=0.05)
    # the other stages take no time, so the end-to-end mean is the prerank sojourn
    assert summary["latency_ms"]["mean"] == pytest.approx(sojourn, rel=1e-9)
    # the wait alone (its mean is ~1/4 of the sojourn, so it gets a looser bound)
    assert prerank["wait_ms"]["mean"] == pytest.approx(theory["wait_ms"], rel=0.10)
    # P(Wq > t) = C exp(-(c mu - lambda) t): the wait's p90
    assert prerank["wait_ms"]["p90"] == pytest.approx(theory["wait_p90_ms"], rel=0.05)
    # utilization = lambda / (c mu)
    assert prerank["utilization"] == pytest.approx(theory["utilization"], rel=0.02)
    # merger/retrieval/feature_fetch never queue and take no time
    for stage in ("merger", "retrieval", "feature_fetch"):
        assert summary["stages"][stage]["latency_ms"]["max"] == 0.0


@pytest.mark.slow
def test_mmc_mean_sojourn_matches_erlang_c_at_one_million_requests():
    summary, theory = _run_mmc(requests=1_000_000, seed=12)
    prerank = summary["stages"]["prerank"]
    assert prerank["latency_ms"]["mean"] == pytest.approx(theory["sojourn_ms"], rel=0.02)
    assert prerank["wait_ms"]["mean"] == pytest.approx(theory["wait_ms"], rel=0.05)
    assert prerank["utilization"] == pytest.approx(theory["utilization"], rel=0.01)


@pytest.mark.parametrize("servers,rho", [(1, 0.5), (8, 0.8)])
def test_mmc_other_server_counts(servers, rho):
    """M/M/1 (closed form W = S/(1-rho)) and a larger, busier pool."""
    summary, theory = _run_mmc(requests=40_000, servers=servers, rho=rho, mean_ms=5.0, seed=13 + servers)
    if servers == 1:
        assert theory["sojourn_ms"] == pytest.approx(5.0 / (1 - rho))
    assert summary["stages"]["prerank"]["latency_ms"]["mean"] == pytest.approx(theory["sojourn_ms"], rel=0.06)
    assert summary["stages"]["prerank"]["utilization"] == pytest.approx(rho, rel=0.03)


def test_md1_mean_wait_matches_pollaczek_khinchine():
    service_ms, rho = 10.0, 0.7
    qps = rho * 1000.0 / service_ms
    requests, warmup_s = 70_000, 30.0
    scenario = single_queue_scenario(
        {"dist": "constant", "ms": service_ms},
        1,
        qps,
        duration_s=warmup_s + requests / qps,
        warmup_s=warmup_s,
        drain_s=60.0,
        seed=21,
    )
    summary = run_summaries(scenario)["sequential"]
    prerank = summary["stages"]["prerank"]
    # P-K: Wq = lambda E[S^2] / (2 (1 - rho)); deterministic S: E[S^2] = S^2
    lam_per_ms = qps / 1000.0
    wq_ms = lam_per_ms * service_ms**2 / (2 * (1 - rho))
    assert wq_ms == pytest.approx(rho * service_ms / (2 * (1 - rho)))
    assert prerank["wait_ms"]["mean"] == pytest.approx(wq_ms, rel=0.06)
    assert prerank["latency_ms"]["mean"] == pytest.approx(wq_ms + service_ms, rel=0.04)
    # deterministic service: every sojourn is at least the service time, and wait + service = sojourn
    assert prerank["latency_ms"]["mean"] - prerank["wait_ms"]["mean"] == pytest.approx(service_ms, rel=1e-6)
    assert prerank["latency_ms"]["max"] - prerank["wait_ms"]["max"] == pytest.approx(service_ms, rel=1e-6)
    # M/D/1: P(no wait) = 1 - rho, so the wait's median is 0 for rho < 0.5 only; here p50 > 0
    assert prerank["wait_ms"]["p50"] > 0
    assert prerank["utilization"] == pytest.approx(rho, rel=0.02)


def test_gamma_service_mg1_matches_pollaczek_khinchine():
    """M/G/1 with gamma service (cv 0.5): Wq = rho S (1 + cv^2) / (2 (1 - rho))."""
    mean_ms, cv, rho = 4.0, 0.5, 0.6
    qps = rho * 1000.0 / mean_ms
    requests, warmup_s = 40_000, 10.0
    scenario = single_queue_scenario(
        {"dist": "gamma", "mean_ms": mean_ms, "cv": cv},
        1,
        qps,
        duration_s=warmup_s + requests / qps,
        warmup_s=warmup_s,
        drain_s=60.0,
        seed=22,
    )
    prerank = run_summaries(scenario)["sequential"]["stages"]["prerank"]
    wq_ms = rho * mean_ms * (1 + cv**2) / (2 * (1 - rho))
    assert prerank["latency_ms"]["mean"] == pytest.approx(wq_ms + mean_ms, rel=0.05)
