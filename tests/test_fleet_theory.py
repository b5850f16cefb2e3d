"""Fleets of nodes behind a balancer against queueing theory.

The pipeline is `sequential` with merger, retrieval and feature_fetch at 0 ms on unlimited servers, so it is exactly
the prerank stage: `servers` threads split over `nodes` machines, each with its own FIFO queue, exponential service.
Every expected value is computed here from the parameters alone:

- random routing splits Poisson arrivals into independent Poisson streams: N independent M/M/c queues at lambda / N;
- round robin gives each node every N-th arrival, Erlang-N interarrivals: N independent E_N/M/1 queues (GI/M/1 theory);
- p2c at large N approaches the mean-field (supermarket) limit of Mitzenmacher;
- least outstanding (join the shortest queue) lies between p2c and one shared queue (M/M/N, Erlang C).

Reference numbers quoted in comments (in units of the mean service time) come from an independent continuous-time
Markov chain of the same fleets (uniformised, 2-6 x 10^7 events), not from this simulator; the relative standard
deviations quoted are the spread of this simulator's result over seeds at the test's size, and each tolerance is
at least about 3 of them.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from scipy.optimize import brentq

from aif_sim.scenario import Scenario
from tests.simtools import make_scenario, negligible, overload_stages, run_summaries

MEAN_MS = 10.0  # mean service time of every prerank visit
WARMUP_SERVICES = 300  # warm-up, in mean service times: many relaxation times of the busiest queue here (M/M/1 at 0.8: ~90)


# ---------------------------------------------------------------------------------------------------------------------
# theory (service rate mu per thread, arrival rate lam, both per unit time; results in the same unit)


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability that an arrival waits in an M/M/c queue (offered load a = lambda / mu, in Erlangs)."""
    c, a = servers, offered_load
    assert a < c
    top = a**c / math.factorial(c) / (1 - a / c)
    return top / (sum(a**k / math.factorial(k) for k in range(c)) + top)


def mmc_mean_sojourn(servers: int, lam: float, mu: float) -> float:
    """Mean time in an M/M/c queue: C / (c mu - lambda) + 1 / mu."""
    return erlang_c(servers, lam / mu) / (servers * mu - lam) + 1 / mu


def mmc_sojourn_quantile(servers: int, lam: float, mu: float, q: float) -> float:
    """Quantile q of the time in an M/M/c queue: no wait with probability 1 - C, else Exp(c mu - lambda) + Exp(mu)."""
    p_wait, drain = erlang_c(servers, lam / mu), servers * mu - lam
    if math.isclose(drain, mu):
        raise ValueError("drain rate equals the service rate; the hypoexponential form below does not apply")

    def survival(t: float) -> float:
        waited = (drain * math.exp(-mu * t) - mu * math.exp(-drain * t)) / (drain - mu)
        return (1 - p_wait) * math.exp(-mu * t) + p_wait * waited

    return brentq(lambda t: survival(t) - (1 - q), 0.0, 1e3 / mu)


def exponential_quantile(rate: float, q: float) -> float:
    """Quantile q of an exponential distribution."""
    return -math.log1p(-q) / rate


def en_m1_sigma(phases: int, lam_node: float, mu: float) -> float:
    """GI/M/1 root for Erlang-`phases` interarrivals of rate lam_node: sigma = A*(mu (1 - sigma)) in (0, 1), with
    A*(s) = (k lam_node / (k lam_node + s))^k. The time in system is then Exp(mu (1 - sigma)).

    Fixed-point iteration from 0 increases monotonically to the smallest root, the one in (0, 1) when lam_node < mu."""
    assert lam_node < mu
    k, sigma = phases, 0.0
    for _ in range(100_000):
        nxt = (k * lam_node / (k * lam_node + mu * (1 - sigma))) ** k
        if abs(nxt - sigma) < 1e-14:
            return nxt
        sigma = nxt
    raise RuntimeError("GI/M/1 fixed point did not converge")


def supermarket_mean_sojourn(rho: float) -> float:
    """Mean time in system, in units of 1/mu, of the two-choice supermarket model as N -> infinity: the fraction of
    queues holding at least i requests is s_i = rho^(2^i - 1), so by Little's law T = sum_i s_i / rho = sum_i rho^(2^i - 2)."""
    assert 0 < rho < 1
    total, i = 0.0, 1
    while (term := rho ** (2**i - 2)) > 1e-16:
        total += term
        i += 1
    return total


# ---------------------------------------------------------------------------------------------------------------------
# helpers


def fleet_scenario(nodes: int, servers: int, balance: str | None, rho: float, requests: int, seed: int) -> Scenario:
    """A one-queue pipeline whose prerank is `servers` threads on `nodes` nodes at load rho, exponential service,
    `requests` measured arrivals after a warm-up of WARMUP_SERVICES mean services."""
    prerank: dict[str, Any] = {"servers": servers, "nodes": nodes, "latency": {"dist": "exponential", "mean_ms": MEAN_MS}}
    if balance is not None:
        prerank["balance"] = balance
    stages = {"merger": negligible(), "retrieval": negligible(), "feature_fetch": negligible(), "prerank": prerank}
    qps = rho * servers * 1000.0 / MEAN_MS
    warmup_s = WARMUP_SERVICES * MEAN_MS / 1000.0
    return make_scenario(
        stages,
        pipelines=["sequential"],
        qps=qps,
        duration_s=warmup_s + requests / qps,
        warmup_s=warmup_s,
        drain_s=60.0,
        seed=seed,
    )


def run_prerank(nodes: int, servers: int, balance: str | None, rho: float, requests: int, seed: int) -> dict[str, Any]:
    """The prerank block of the summary of `fleet_scenario(...)`; every offered request completes."""
    summary = run_summaries(fleet_scenario(nodes, servers, balance, rho, requests, seed))["sequential"]
    assert summary["requests"]["completed"] == summary["requests"]["offered"] > 0.95 * requests
    prerank = summary["stages"]["prerank"]
    assert prerank["nodes"] == nodes
    assert len(prerank["node_utilization"]) == nodes
    return prerank


def flatten(value: Any, path: str = "") -> dict[str, str]:
    """Every leaf of a nested summary as path -> JSON text (so NaN equals NaN)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{path}/{key}").items()}
    if isinstance(value, (list, tuple)):
        return {k: v for i, item in enumerate(value) for k, v in flatten(item, f"{path}[{i}]").items()}
    return {path: json.dumps(value, default=str)}


# ---------------------------------------------------------------------------------------------------------------------
# the theory helpers themselves


def test_erlang_c_helpers_match_known_values():
    assert erlang_c(1, 0.7) == pytest.approx(0.7)  # M/M/1: P(wait) = rho
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)  # textbook M/M/2 at a = 1
    assert mmc_mean_sojourn(1, 0.8, 1.0) == pytest.approx(5.0)  # M/M/1: 1 / (mu - lambda)
    # M/M/1: the sojourn is Exp(mu - lambda)
    assert mmc_sojourn_quantile(1, 0.6, 1.0, 0.99) == pytest.approx(exponential_quantile(0.4, 0.99), rel=1e-9)
    assert exponential_quantile(0.2, 0.99) == pytest.approx(math.log(100) / 0.2)
    # M/M/16 at 0.8: P(wait) ~ 0.30, mean 1.095 and p99 4.735 service times
    assert mmc_mean_sojourn(16, 12.8, 1.0) == pytest.approx(1.0953, abs=1e-4)
    assert mmc_sojourn_quantile(16, 12.8, 1.0, 0.99) == pytest.approx(4.735, abs=1e-3)


def test_gi_m1_root_matches_known_limits():
    # one phase: Poisson arrivals, M/M/1, sigma = rho
    for rho in (0.3, 0.7, 0.9):
        assert en_m1_sigma(1, rho, 1.0) == pytest.approx(rho, rel=1e-9)
    # many phases: deterministic arrivals, D/M/1, sigma = exp(-(1 - sigma) / rho)
    rho = 0.8
    dm1 = brentq(lambda s: math.exp(-(1 - s) / rho) - s, 1e-9, 1 - 1e-6)
    assert en_m1_sigma(20_000, rho, 1.0) == pytest.approx(dm1, abs=1e-4)
    # more regular arrivals wait less: sigma falls with the number of phases
    sigmas = [en_m1_sigma(k, rho, 1.0) for k in (1, 2, 4, 16, 100)]
    assert sigmas == sorted(sigmas, reverse=True)
    # E_16/M/1 at 0.8: sigma ~ 0.6474, mean 2.836, p99 13.06 service times
    assert en_m1_sigma(16, 0.8, 1.0) == pytest.approx(0.6474, abs=1e-4)
    # the root solves its equation, and scales with mu (time units do not matter)
    sigma = en_m1_sigma(8, 70.0, 100.0)
    assert sigma == pytest.approx((8 * 70.0 / (8 * 70.0 + 100.0 * (1 - sigma))) ** 8, abs=1e-12)
    assert sigma == pytest.approx(en_m1_sigma(8, 0.7, 1.0), abs=1e-12)


def test_supermarket_limit_matches_known_values():
    # small load: 1 + rho^2 + rho^6 + ...
    assert supermarket_mean_sojourn(0.1) == pytest.approx(1 + 0.1**2 + 0.1**6, rel=1e-12)
    # Mitzenmacher's predicted means for d = 2
    assert supermarket_mean_sojourn(0.5) == pytest.approx(1.2657, abs=1e-4)
    assert supermarket_mean_sojourn(0.9) == pytest.approx(2.6141, abs=1e-4)
    # two choices beat one (M/M/1: 1 / (1 - rho)) at every load
    for rho in (0.2, 0.5, 0.8, 0.95, 0.99):
        assert 1 <= supermarket_mean_sojourn(rho) < 1 / (1 - rho)


# ---------------------------------------------------------------------------------------------------------------------
# balancers against theory


def test_random_routing_is_independent_mm1_queues():
    """16 single-thread nodes at 60%: each node is M/M/1 at lambda / 16; the sojourn is Exp(mu - lambda / N)."""
    nodes, rho = 16, 0.6
    prerank = run_prerank(nodes, nodes, "random", rho, requests=200_000, seed=31)
    rate = (1 - rho) / MEAN_MS  # mu - lambda / N, per ms
    latency = prerank["latency_ms"]
    # relative sd over seeds at this size: mean 0.3-0.7%, p50 0.5%, p99 1.0%
    assert latency["mean"] == pytest.approx(1 / rate, rel=0.03)
    assert latency["p50"] == pytest.approx(exponential_quantile(rate, 0.50), rel=0.03)
    assert latency["p90"] == pytest.approx(exponential_quantile(rate, 0.90), rel=0.04)
    assert latency["p99"] == pytest.approx(exponential_quantile(rate, 0.99), rel=0.06)
    # each node: lambda / (N mu); ~12,500 visits a node, relative sd ~1.3%
    for utilization in prerank["node_utilization"]:
        assert utilization == pytest.approx(rho, rel=0.05)
    assert prerank["utilization"] == pytest.approx(rho, rel=0.02)


def test_round_robin_is_independent_en_m1_queues():
    """8 single-thread nodes at 70%: each node sees Erlang-8 interarrivals; GI/M/1 gives an Exp(mu (1 - sigma)) sojourn."""
    nodes, rho = 8, 0.7
    prerank = run_prerank(nodes, nodes, "round_robin", rho, requests=200_000, seed=32)
    sigma = en_m1_sigma(nodes, rho / MEAN_MS, 1 / MEAN_MS)  # sigma ~ 0.5136: mean 2.056, p99 9.47 services
    rate = (1 - sigma) / MEAN_MS
    latency = prerank["latency_ms"]
    # distinct from M/M/1 (random routing: mean 3.33 services), so the check separates the balancers
    assert 1 / rate < 0.7 * MEAN_MS / (1 - rho)
    # relative sd over seeds at this size: mean 1.1%, p50 0.6%, p99 1.5%
    assert latency["mean"] == pytest.approx(1 / rate, rel=0.03)
    assert latency["p50"] == pytest.approx(exponential_quantile(rate, 0.50), rel=0.03)
    assert latency["p99"] == pytest.approx(exponential_quantile(rate, 0.99), rel=0.06)
    # turns split arrivals evenly: every node does 1/8 of the work
    for utilization in prerank["node_utilization"]:
        assert utilization == pytest.approx(rho, rel=0.03)


def test_p2c_approaches_the_supermarket_limit():
    """100 single-thread nodes at 90%, two choices: mean sojourn near Mitzenmacher's limit sum rho^(2^i - 2) / mu.

    Finite N sits a little above the limit: the independent CTMC gives 2.646 service times at N = 100 (+1.2% over
    2.614; +3.7% at N = 16, rho = 0.8). This simulator over six seeds: 2.668 (+2.0%), relative sd 1.3% at 2 x 10^5
    requests, so 5% leaves about 2.3 sds above that average."""
    nodes, rho = 100, 0.9
    prerank = run_prerank(nodes, nodes, "p2c", rho, requests=200_000, seed=33)
    limit_ms = supermarket_mean_sojourn(rho) * MEAN_MS
    assert prerank["latency_ms"]["mean"] == pytest.approx(limit_ms, rel=0.05)
    # far below random routing's 1 / (mu - lambda / N) = 10 services
    assert prerank["latency_ms"]["mean"] < 0.4 * MEAN_MS / (1 - rho)
    # s_1 = rho: every node busy a fraction rho of the time (2,000 visits a node, relative sd ~3%)
    for utilization in prerank["node_utilization"]:
        assert utilization == pytest.approx(rho, rel=0.12)
    assert sum(prerank["node_utilization"]) / nodes == pytest.approx(rho, rel=0.02)


FLEET_NODES, FLEET_RHO, FLEET_REQUESTS = 16, 0.8, 100_000
BALANCED = ("random", "round_robin", "p2c", "least_outstanding")


@pytest.fixture(scope="module")
def fleet16() -> dict[str, dict[str, Any]]:
    """16 single-thread nodes at 80% under each balancer, and one shared queue of 16 threads ("shared")."""
    runs = {
        balance: run_prerank(FLEET_NODES, FLEET_NODES, balance, FLEET_RHO, FLEET_REQUESTS, seed=40 + i)
        for i, balance in enumerate(BALANCED)
    }
    runs["shared"] = run_prerank(1, FLEET_NODES, None, FLEET_RHO, FLEET_REQUESTS, seed=45)
    return runs


def test_least_outstanding_lies_between_p2c_and_one_shared_queue(fleet16):
    """Mean sojourn: p2c (CTMC 2.02 services) > least outstanding (1.20) > shared M/M/16 (Erlang C: 1.095).
    Relative sds at 10^5 requests ~1.3% (p2c) and below, so both gaps (70% and 10%) are many sds wide."""
    mean = {name: run["latency_ms"]["mean"] for name, run in fleet16.items()}
    shared_ms = mmc_mean_sojourn(FLEET_NODES, FLEET_NODES * FLEET_RHO / MEAN_MS, 1 / MEAN_MS)
    assert mean["shared"] == pytest.approx(shared_ms, rel=0.03)
    assert mean["p2c"] > mean["least_outstanding"] > mean["shared"]
    # joining the shortest queue is nearly the shared queue (CTMC: +9.7%), far from p2c (+84%)
    assert mean["least_outstanding"] < 1.15 * mean["shared"] < mean["p2c"]
    # and both beat random routing's M/M/1 (5 services)
    assert mean["random"] > mean["p2c"]
    assert mean["random"] == pytest.approx(MEAN_MS / (1 - FLEET_RHO), rel=0.10)  # sd ~3.4% at this size


def test_tail_order_of_the_balancers(fleet16):
    """p99 in mean services at 16 nodes and 80%: random ln(100) / 0.2 = 23.0 > round robin (E_16/M/1: 13.06)
    > p2c (CTMC 7.70) > least outstanding (CTMC 5.37) >= shared M/M/16 (4.735)."""
    p99 = {name: run["latency_ms"]["p99"] for name, run in fleet16.items()}
    mu, lam = 1 / MEAN_MS, FLEET_NODES * FLEET_RHO / MEAN_MS
    random_ms = exponential_quantile(mu - lam / FLEET_NODES, 0.99)
    sigma = en_m1_sigma(FLEET_NODES, lam / FLEET_NODES, mu)
    round_robin_ms = exponential_quantile(mu * (1 - sigma), 0.99)
    shared_ms = mmc_sojourn_quantile(FLEET_NODES, lam, mu, 0.99)
    assert random_ms == pytest.approx(23.03 * MEAN_MS, rel=1e-3)
    # M/M/1 at 0.8 mixes slowly: at 10^5 requests the p99's relative sd is ~6.7% (the slow test checks it tightly)
    assert p99["random"] == pytest.approx(random_ms, rel=0.20)
    assert p99["round_robin"] == pytest.approx(round_robin_ms, rel=0.15)  # sd ~3-6%: the nodes' queues are correlated
    assert p99["shared"] == pytest.approx(shared_ms, rel=0.04)  # sd < 1%
    assert p99["random"] > p99["round_robin"] > p99["p2c"] > p99["least_outstanding"] >= p99["shared"]


@pytest.mark.slow
def test_random_and_round_robin_tails_at_two_million_requests():
    """16 nodes at 80%, 2 x 10^6 requests each: random's p99 within 5% of ln(100) / (mu - lambda / N) (relative sd
    ~1.5%), round robin's within 5% of the E_16/M/1 value (sd ~1.4%: round robin correlates the nodes' queues, since
    every burst of arrivals reaches all of them, so its results vary more than random routing's)."""
    mu, lam = 1 / MEAN_MS, FLEET_NODES * FLEET_RHO / MEAN_MS
    random = run_prerank(FLEET_NODES, FLEET_NODES, "random", FLEET_RHO, 2_000_000, seed=51)
    rate = mu - lam / FLEET_NODES
    assert random["latency_ms"]["mean"] == pytest.approx(1 / rate, rel=0.03)
    assert random["latency_ms"]["p99"] == pytest.approx(exponential_quantile(rate, 0.99), rel=0.05)
    turns = run_prerank(FLEET_NODES, FLEET_NODES, "round_robin", FLEET_RHO, 2_000_000, seed=52)
    rate = mu * (1 - en_m1_sigma(FLEET_NODES, lam / FLEET_NODES, mu))
    assert turns["latency_ms"]["mean"] == pytest.approx(1 / rate, rel=0.03)
    assert turns["latency_ms"]["p99"] == pytest.approx(exponential_quantile(rate, 0.99), rel=0.05)


def test_multi_thread_nodes_behind_random_routing_are_independent_mmc_queues():
    """4 nodes of 4 threads at 80%, random routing: four M/M/4 queues at lambda / 4 (Erlang C: mean 1.746 services,
    against 1.095 for one shared M/M/16). Relative sd of the mean at this size: 0.9% (the wait's ~2%)."""
    nodes, servers, rho = 4, 16, 0.8
    prerank = run_prerank(nodes, servers, "random", rho, requests=200_000, seed=34)
    per_node = servers // nodes
    lam_node, mu = rho * servers / MEAN_MS / nodes, 1 / MEAN_MS
    assert prerank["latency_ms"]["mean"] == pytest.approx(mmc_mean_sojourn(per_node, lam_node, mu), rel=0.04)
    wait_ms = erlang_c(per_node, lam_node / mu) / (per_node * mu - lam_node)
    assert prerank["wait_ms"]["mean"] == pytest.approx(wait_ms, rel=0.08)
    for utilization in prerank["node_utilization"]:
        assert utilization == pytest.approx(rho, rel=0.04)


# ---------------------------------------------------------------------------------------------------------------------
# one node is the old shared pool


@pytest.fixture(scope="module")
def plain_overload() -> dict[str, dict[str, Any]]:
    """The overload scenario (queue limits, timeouts, batching) with no fleet fields, every pipeline."""
    scenario = make_scenario(
        overload_stages(), pipelines=["sequential", "aif", "uic"], qps=1000, duration_s=2.0, warmup_s=0.5, drain_s=2.0, seed=5
    )
    return run_summaries(scenario)


@pytest.mark.parametrize("balance", ["p2c", "random", "round_robin", "least_outstanding"])
def test_one_node_is_the_shared_pool(plain_overload, balance):
    """`nodes: 1` under any balancer gives exactly the summary of the same scenario without fleet fields."""
    stages = {name: {**stage, "nodes": 1, "balance": balance} for name, stage in overload_stages().items()}
    scenario = make_scenario(stages, pipelines=["sequential", "aif", "uic"], qps=1000, duration_s=2.0, warmup_s=0.5, drain_s=2.0, seed=5)
    fleet = run_summaries(scenario)
    plain, one = flatten(plain_overload), flatten(fleet)
    assert set(plain) == set(one)
    assert [path for path in plain if plain[path] != one[path]] == []
    for summary in fleet.values():
        assert summary["requests"]["completed"] > 0
        for stage in summary["stages"].values():
            assert stage["nodes"] == 1
            assert stage["node_utilization"] == [stage["utilization"]]
