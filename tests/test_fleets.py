"""Stages of several nodes behind a balancer: the balancers' rules, the schema, what each engine runs, and the
cost per candidate. The queueing theory of the balancers is in test_fleet_theory.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from aif_sim.app.run import build_samplers, choose_engines, simulate
from aif_sim.cli import main
from aif_sim.core.balance import BALANCERS, LeastOutstanding, PowerOfTwo, RandomBalancer, RoundRobin, Uniforms
from aif_sim.scenario.schema import BALANCERS as SCHEMA_BALANCERS
from tests.simtools import make_scenario, negligible, run_summaries, scenario_dict, small_stages, write_yaml


class Fixed(Uniforms):
    """Given uniforms, in order."""

    def __init__(self, values: list[float]) -> None:
        self.values = list(values)

    def take(self) -> float:
        return self.values.pop(0)


def test_every_balancer_the_schema_names_is_implemented():
    assert set(BALANCERS) == set(SCHEMA_BALANCERS)


def test_least_outstanding_takes_the_fewest_and_ties_go_to_the_lowest_index():
    balancer = LeastOutstanding(4, Fixed([]))
    assert balancer.choose([3, 1, 1, 2], [0, 1, 2, 3]) == 1
    assert balancer.choose([3, 1, 1, 2], [0, 2, 3]) == 2  # node 1 not eligible (down, or holds another shard)


def test_p2c_draws_two_distinct_nodes_and_a_tie_keeps_the_first_drawn():
    # u = 0.6 of 4 nodes -> node 2; v = 0.0 of the other 3 -> node 0
    assert PowerOfTwo(4, Fixed([0.6, 0.0])).choose([5, 9, 5, 9], [0, 1, 2, 3]) == 2  # tie: the first drawn
    assert PowerOfTwo(4, Fixed([0.6, 0.0])).choose([4, 9, 5, 9], [0, 1, 2, 3]) == 0  # fewer outstanding
    assert PowerOfTwo(4, Fixed([0.6, 0.99])).choose([9, 9, 5, 4], [0, 1, 2, 3]) == 3  # v skips the first: nodes 0, 1, 3
    one = Fixed([0.3, 0.7])
    assert PowerOfTwo(4, one).choose([0, 0, 0, 0], [1]) == 1 and one.values == []  # two draws whatever the state


def test_p2c_never_draws_the_same_node_twice():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        u, v = rng.random(), rng.random()
        count = int(rng.integers(2, 6))
        first = int(u * count)
        outstanding = [0] * count
        outstanding[first] = 1  # the other one always wins unless it is the same node
        assert PowerOfTwo(count, Fixed([u, v])).choose(outstanding, list(range(count))) != first


def test_round_robin_takes_the_live_nodes_in_turn():
    balancer = RoundRobin(4, Fixed([]))
    assert [balancer.choose([0] * 4, [0, 1, 2, 3]) for _ in range(5)] == [0, 1, 2, 3, 0]
    assert [balancer.choose([0] * 4, [0, 2, 3]) for _ in range(4)] == [2, 3, 0, 2]


def test_random_spreads_uniformly_over_the_eligible_nodes():
    balancer = RandomBalancer(5, Uniforms(np.random.default_rng(3)))
    picks = np.bincount([balancer.choose([0] * 5, [0, 2, 4]) for _ in range(30_000)], minlength=5)
    assert picks[1] == picks[3] == 0
    assert np.allclose(picks[[0, 2, 4]] / 30_000, 1 / 3, atol=0.01)


def _fleet_stages(balance: str = "random") -> dict:
    stages = small_stages({"servers": 8, "nodes": 4, "balance": balance, "latency": {"dist": "exponential", "mean_ms": 5}})
    stages["merger"] = {"servers": 8, "nodes": 4, "balance": balance, "latency": {"dist": "exponential", "mean_ms": 1}}
    return stages


def test_every_pipeline_of_a_run_makes_the_same_random_choices():
    scenario = make_scenario(_fleet_stages(), pipelines=["sequential", "aif"], qps=400, duration_s=5.0)
    summaries = run_summaries(scenario)
    merger = [summaries[p]["stages"]["merger"] for p in ("sequential", "aif")]
    assert merger[0]["nodes"] == 4 and len(merger[0]["node_utilization"]) == 4
    assert merger[0]["node_utilization"] == merger[1]["node_utilization"]  # same arrivals, same draws, same nodes


def test_node_utilization_adds_up_to_the_stage_and_one_node_is_the_stage():
    scenario = make_scenario(_fleet_stages("p2c"), pipelines=["sequential"], qps=400, duration_s=5.0)
    stages = run_summaries(scenario)["sequential"]["stages"]
    prerank = stages["prerank"]
    assert np.mean(prerank["node_utilization"]) == pytest.approx(prerank["utilization"], rel=0.01)
    assert stages["retrieval"]["nodes"] == 1 and stages["retrieval"]["node_utilization"] == [stages["retrieval"]["utilization"]]


def test_fleets_run_compiled_and_what_the_compiled_engine_lacks_runs_on_simpy_saying_why():
    scenario = make_scenario(_fleet_stages(), pipelines=["sequential"], qps=100, duration_s=1.0)
    assert choose_engines(scenario, build_samplers(scenario, "<test>"), "auto")["sequential"] == ("compiled", None)
    stages = _fleet_stages()
    stages["prerank"]["hedge_after_ms"] = 5
    scenario = make_scenario(stages, pipelines=["sequential"], qps=100, duration_s=1.0)
    assert choose_engines(scenario, build_samplers(scenario, "<test>"), "auto")["sequential"] == ("compiled", None)
    scenario = make_scenario(stages, pipelines=["sequential"], qps=100, duration_s=1.0, deadline_ms=50)
    engine, reason = choose_engines(scenario, build_samplers(scenario, "<test>"), "auto")["sequential"]
    assert engine == "simpy" and "hedged stages" in reason and "prerank" in reason


@pytest.mark.parametrize(
    "change,expected",
    [
        ({"servers": 6, "nodes": 4}, ["stages.prerank", "servers", "multiple of nodes"]),
        ({"balance": "p2d"}, ["stages.prerank.balance", "unknown balancer", "did you mean p2c?"]),
        ({"nodes": 0}, ["stages.prerank.nodes"]),
        ({"per_candidate_us": -1}, ["stages.prerank.per_candidate_us"]),
        ({"shards": 5}, ["stages.prerank", "shards", "at most nodes (4)"]),
        ({"shards": 2, "batch": {"max_size": 4}}, ["stages.prerank", "shards", "batch"]),
        ({"hedge_after_ms": 0}, ["stages.prerank.hedge_after_ms"]),
        ({"nodes": 1, "retries": 1}, ["stages.prerank", "retries", "nodes of 2 or more"]),
        ({"nodes": 1, "hedge_after_ms": 5}, ["stages.prerank", "hedge_after_ms", "nodes of 2 or more"]),
    ],
)
def test_bad_fleet_fields_are_one_line_errors(tmp_path, capsys, change, expected):
    stages = small_stages({"servers": 8, "nodes": 4, "latency": {"dist": "constant", "ms": 1}} | change)
    path = write_yaml(tmp_path / "bad.yaml", scenario_dict(stages, duration_s=1.0))
    assert main([str(path), "--quiet", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(part in err for part in expected), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "fault,expected",
    [
        ({"stage": "prerank", "nodes": 5}, ["faults.0.nodes", "4 nodes"]),
        ({"stage": "merger", "nodes": 1}, ["faults.0.stage", "one pool"]),
        ({"stage": "ranker", "nodes": 1}, ["faults.0.stage", "'ranker'"]),
    ],
)
def test_a_node_loss_names_nodes_the_stage_has(tmp_path, capsys, fault, expected):
    stages = small_stages({"servers": 8, "nodes": 4, "latency": {"dist": "constant", "ms": 1}})
    faults = [{"kind": "node_loss", "at_s": 0.5, "duration_s": 1} | fault]
    path = write_yaml(tmp_path / "bad.yaml", scenario_dict(stages, duration_s=1.0, faults=faults))
    assert main([str(path), "--quiet", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(part in err for part in expected), err


def test_a_deadline_must_be_positive(tmp_path, capsys):
    path = write_yaml(tmp_path / "d.yaml", scenario_dict(small_stages(negligible()), duration_s=1.0, deadline_ms=0))
    assert main([str(path), "--quiet", "--out", str(tmp_path / "out")]) == 2
    assert "deadline_ms" in capsys.readouterr().err


def test_the_compiled_engine_refuses_what_it_lacks_in_one_line(tmp_path, capsys):
    stages = _fleet_stages()
    stages["prerank"] |= {"shards": 2, "hedge_after_ms": 20}
    path = write_yaml(tmp_path / "fleet.yaml", scenario_dict(stages, duration_s=1.0, deadline_ms=50))
    assert main(["run", str(path), "--engine", "compiled", "--quiet", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "deadline_ms" in err and "hedged stages" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("engine", ["simpy", "compiled"])
def test_the_cost_per_candidate_adds_to_each_visit(engine):
    stages = {
        "merger": negligible(),
        "retrieval": negligible(),
        "feature_fetch": {"servers": 1000, "latency": {"dist": "constant", "ms": 1.0}, "per_candidate_us": 2.0},
        "prerank": negligible(),
    }
    candidates = {"dist": "lognormal", "median": 1000, "p99": 5000, "min": 10, "max": 10_000}
    scenario = make_scenario(stages, qps=200, duration_s=2.0, candidates=candidates)

    class Rows:
        def __init__(self) -> None:
            self.rows: list[tuple[np.ndarray, np.ndarray]] = []

        def write(self, pipeline, stage_names, caches, block) -> None:
            slot = stage_names.index("feature_fetch")
            self.rows.append((block.candidates, block.stage_ms[:, slot]))  # no queueing: the service itself

    rows = Rows()
    simulate(scenario, build_samplers(scenario, "<test>"), rows, engine=engine)
    candidates_seen = np.concatenate([c for c, _ in rows.rows])
    service_ms = np.concatenate([s for _, s in rows.rows])
    assert len(service_ms) > 300 and candidates_seen.min() < 500 < 3000 < candidates_seen.max()
    assert np.allclose(service_ms, 1.0 + 0.002 * candidates_seen, rtol=1e-9)


def _one_stage(prerank: dict, engine: str = "auto", **kwargs) -> dict:
    stages = {"merger": negligible(), "retrieval": negligible(), "feature_fetch": negligible(), "prerank": prerank}
    scenario = make_scenario(stages, pipelines=["sequential"], **kwargs)
    return simulate(scenario, build_samplers(scenario, "<test>"), engine=engine)["sequential"].summary()


@pytest.mark.parametrize("shards", [2, 4, 8])
def test_k_shards_with_no_queueing_take_the_maximum_of_k_draws(shards):
    """E[max of K exponential(mean m)] = m H_K (order statistics); no waiting, so the no-contention time is the same."""
    summary = _one_stage(
        {"servers": 64, "nodes": 8, "shards": shards, "latency": {"dist": "exponential", "mean_ms": 10}}, qps=5, duration_s=4000, seed=4
    )
    prerank = summary["stages"]["prerank"]
    harmonic = sum(1 / i for i in range(1, shards + 1))
    assert prerank["latency_ms"]["mean"] == pytest.approx(10 * harmonic, rel=0.03)
    assert summary["no_contention_ms"]["mean"] == pytest.approx(prerank["latency_ms"]["mean"], rel=1e-9)
    # the median of K exponentials ends at mean x (H_K - H_{K - ceil(K/2)}) ... the gap to the slowest is measured
    assert 0 < prerank["shard_skew_ms"] < prerank["latency_ms"]["mean"]
    # each shard keeps its own node busy: the stage does K visits' work per request
    assert prerank["utilization"] == pytest.approx(5 * shards * 0.010 / 64, rel=0.05)


def test_each_shard_is_timed_at_its_own_candidates():
    summary = _one_stage(
        {"servers": 400, "nodes": 4, "shards": 3, "latency": {"dist": "constant", "ms": 0.0}, "per_candidate_us": 10.0},
        qps=20,
        duration_s=5,
        candidates=1000,
    )
    # 1000 candidates in 3 shards: 334, 333, 333; the visit takes the largest at 10 us a candidate
    assert summary["latency_ms"]["max"] == pytest.approx(3.34, rel=0.003) and summary["latency_ms"]["p50"] == pytest.approx(3.34, rel=0.003)


def test_no_request_completes_after_its_deadline_and_every_one_is_counted():
    plain = _one_stage({"servers": 2, "latency": {"dist": "exponential", "mean_ms": 10}}, qps=250, duration_s=20, seed=3)
    bounded = _one_stage({"servers": 2, "latency": {"dist": "exponential", "mean_ms": 10}}, qps=250, duration_s=20, seed=3, deadline_ms=30)
    assert plain["latency_ms"]["max"] > 1000  # overloaded: the queue grows without the deadline
    assert bounded["latency_ms"]["max"] <= 30.0
    req = bounded["requests"]
    assert req["offered"] == req["completed"] + req["rejected"] + req["timed_out"] + req["in_flight_at_end"]
    assert req["timed_out"] > 0.3 * req["offered"] and req["in_flight_at_end"] == 0
    assert bounded["stages"]["prerank"]["wasted_busy_s"] > 0  # visits cut off in service ran to their end for nothing
    tail = bounded["latency_offered_ms"]
    assert tail["p50"] is not None and tail["p99"] is None and tail["failed_share"] == pytest.approx(req["timed_out"] / req["offered"])


def test_a_deadline_abandons_queued_shards_and_parallel_branches_too():
    stages = small_stages({"servers": 4, "nodes": 4, "shards": 2, "latency": {"dist": "exponential", "mean_ms": 20}})
    scenario = make_scenario(stages, pipelines=["sequential", "aif"], qps=300, duration_s=10, seed=2, deadline_ms=25)
    for name, summary in run_summaries(scenario).items():
        req = summary["requests"]
        assert summary["latency_ms"]["max"] <= 25.0, name
        assert req["offered"] == req["completed"] + req["rejected"] + req["timed_out"] + req["in_flight_at_end"], name
    assert run_summaries(scenario)["sequential"]["requests"]["timed_out"] > 0


def test_the_offered_tail_counts_failures_as_slower_than_any_completion():
    summary = _one_stage({"servers": 1, "latency": {"dist": "constant", "ms": 9.0}, "queue_limit": 0}, qps=100, duration_s=20, seed=1)
    req, tail = summary["requests"], summary["latency_offered_ms"]
    failed = req["rejected"] / req["offered"]
    assert 0.3 < failed < 0.7 and tail["failed_share"] == pytest.approx(failed)
    assert (
        tail["p90"] is None and tail["p99"] is None and summary["latency_ms"]["p99"] == pytest.approx(9.0, rel=0.003)
    )  # completed ones all took 9 ms


@pytest.mark.parametrize("engine", ["simpy", "compiled"])
def test_a_hedge_with_no_queueing_takes_the_first_of_two_copies(engine):
    """A hedge after d: min(X1, d + X2) when X1 > d; for exponential X of mean m, E = m(1 - e^(-d/m)) + (m/2) e^(-d/m),
    and the hedged share is P(X1 > d) = e^(-d/m), on either engine."""
    mean, delay = 10.0, 10.0
    summary = _one_stage(
        {"servers": 64, "nodes": 8, "hedge_after_ms": delay, "latency": {"dist": "exponential", "mean_ms": mean}},
        engine,
        qps=5,
        duration_s=4000,
        seed=5,
    )
    prerank = summary["stages"]["prerank"]
    share = math.exp(-delay / mean)
    assert prerank["latency_ms"]["mean"] == pytest.approx(mean * (1 - share) + mean / 2 * share, rel=0.03)
    assert prerank["hedges"] / prerank["visits"] == pytest.approx(share, rel=0.05)
    assert summary["no_contention_ms"]["mean"] == pytest.approx(prerank["latency_ms"]["mean"], rel=1e-9)  # nothing waited
    assert prerank["wasted_busy_s"] > 0  # the losing copies ran to their end


def test_retries_send_failed_visits_to_another_node():
    stage = {"servers": 8, "nodes": 4, "queue_limit": 0, "latency": {"dist": "exponential", "mean_ms": 10}}
    once = _one_stage(stage, qps=300, duration_s=20, seed=5)
    twice = _one_stage(stage | {"retries": 1}, qps=300, duration_s=20, seed=5)
    assert once["requests"]["rejected"] > 100 and once["stages"]["prerank"]["retries"] == 0
    assert twice["requests"]["rejected"] < once["requests"]["rejected"] / 2
    assert twice["stages"]["prerank"]["retries"] >= once["requests"]["rejected"] / 2


@pytest.mark.parametrize("retries", [0, 2])
def test_a_lost_node_fails_what_it_holds_and_gets_no_visit_until_it_returns(retries):
    losses = [{"kind": "node_loss", "at_s": t, "stage": "prerank", "nodes": 2, "duration_s": 0.5} for t in (10.0, 15.3, 20.7, 25.1)]
    stage = {"servers": 8, "nodes": 4, "retries": retries, "latency": {"dist": "exponential", "mean_ms": 10}}
    summary = _one_stage(stage, qps=700, duration_s=40, warmup_s=2, seed=5, faults=losses)
    req, prerank = summary["requests"], summary["stages"]["prerank"]
    assert req["offered"] == req["completed"] + req["rejected"] + req["timed_out"] + req["in_flight_at_end"]  # nothing lost
    if retries:
        assert req["rejected"] == 0 and prerank["retries"] > 0
    else:
        assert req["rejected"] > 0
    assert summary["faults"][0]["kind"] == "node_loss" and len(summary["faults"]) == 4
    long_loss = [{"kind": "node_loss", "at_s": 5, "stage": "prerank", "nodes": 1, "duration_s": 20}]
    lost = _one_stage(stage, qps=300, duration_s=30, seed=5, faults=long_loss)["stages"]["prerank"]["node_utilization"]
    assert lost[0] < 0.6 * min(lost[1:])  # down for 2/3 of the window


def test_idealised_runs_every_fleet_as_one_shared_queue_beside_the_fleet(tmp_path):
    stages = {
        "merger": negligible(),
        "retrieval": negligible(),
        "feature_fetch": negligible(),
        "prerank": {"servers": 16, "nodes": 16, "balance": "random", "latency": {"dist": "exponential", "mean_ms": 10}},
    }
    path = write_yaml(tmp_path / "f.yaml", scenario_dict(stages, qps=1200, duration_s=20, warmup_s=2))
    out = tmp_path / "out"
    assert main([str(path), "--idealised", "--quiet", "--out", str(out)]) == 0
    metrics = json.loads((out / "summary.json").read_text())["pipelines"]["sequential"]
    shared = make_scenario(
        {**stages, "prerank": {"servers": 16, "latency": {"dist": "exponential", "mean_ms": 10}}}, qps=1200, duration_s=20, warmup_s=2
    )
    assert metrics["idealised_latency_ms"] == run_summaries(shared)["sequential"]["latency_ms"]  # the same scenario, one queue
    assert metrics["latency_ms"]["p99"] > 2 * metrics["idealised_latency_ms"]["p99"]  # random routing at 75%: M/M/1s vs M/M/16


def test_every_shard_waits_for_the_visits_cache_miss():
    stages = {
        "merger": negligible(),
        "retrieval": negligible(),
        "feature_fetch": {"servers": 64, "nodes": 4, "shards": 2, "latency": {"dist": "constant", "ms": 1.0}},
        "prerank": negligible(),
    }
    caches = {"sim_features": {"capacity": 0, "miss_latency": {"dist": "constant", "ms": 5.0}}}  # every read misses
    summary = run_summaries(make_scenario(stages, qps=50, duration_s=4, caches=caches))["sequential"]
    fetch = summary["stages"]["feature_fetch"]["latency_ms"]
    assert fetch["p50"] == pytest.approx(6.0, rel=0.003) and fetch["max"] == pytest.approx(6.0, rel=1e-9)


def test_a_part_sent_again_after_its_node_was_lost_is_slowed_down_once():
    """A visit cut by its node's loss is the same work on the next node, slowed down as the stage is then: under a
    slowdown of 2, a 10 ms visit takes 20 ms wherever it runs, however often it was sent (no-contention time 20 ms)."""
    losses = [{"kind": "node_loss", "at_s": 1.0123 + k / 2, "stage": "prerank", "nodes": 1, "duration_s": 0.01} for k in range(300)]
    slow = [{"kind": "stage_slowdown", "stage": "prerank", "at_s": 0.5, "duration_s": 1000, "factor": 2.0}]
    stage = {"servers": 2, "nodes": 2, "retries": 3, "balance": "round_robin", "latency": {"dist": "constant", "ms": 10.0}}
    summary = _one_stage(stage, qps=20, duration_s=160, warmup_s=1, seed=3, faults=slow + losses)
    assert summary["stages"]["prerank"]["retries"] > 10  # visits were cut in service and sent again
    assert summary["no_contention_ms"]["mean"] == pytest.approx(20.0, rel=1e-9)
    req = summary["requests"]
    assert req["rejected"] == 0 and req["offered"] == req["completed"] + req["in_flight_at_end"]
