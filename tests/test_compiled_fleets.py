"""Stages of several nodes on the compiled engine against the simpy engine: the same picks, the same visits and
shards, the same per-node busy time (`Recorder.node_busy`) and shard skew, request for request; and what it does
not model yet."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from aif_sim.app.run import build_samplers, choose_engines, simulate
from aif_sim.scenario import Scenario
from aif_sim.scenario.pipelines import shipped_designs
from tests.simtools import make_scenario, negligible, overload_stages, single_queue_scenario, small_stages
from tests.test_compiled import ALL, assert_equivalent, latencies, why_not

BALANCERS = ["random", "round_robin", "least_outstanding", "p2c"]


def _fleet(servers: int, nodes: int, balance: str, latency: dict[str, Any], **limits: Any) -> dict[str, Any]:
    return {"servers": servers, "nodes": nodes, "balance": balance, "latency": latency, **limits}


@pytest.mark.parametrize("balance", ["least_outstanding", "p2c"])
@pytest.mark.parametrize("pipeline", ["sequential", "aif"])
def test_constant_services_on_several_nodes_tie_their_counts(pipeline, balance):
    """Constant services on the first step's nodes (equal outstanding counts at most picks: ties to the lowest
    index, or to the first drawn), queue limits and timeouts per node, overload, requests in flight at the end."""
    stages = small_stages(_fleet(8, 4, balance, {"dist": "exponential", "mean_ms": 5}, queue_limit=3, timeout_ms=8))
    stages["merger"] = _fleet(6, 3, balance, {"dist": "constant", "ms": 2}, queue_limit=2, timeout_ms=1.5)
    stages["item_fetch"] = _fleet(4, 2, balance, {"dist": "gamma", "mean_ms": 1, "cv": 0.5}, queue_limit=1)
    scenario = make_scenario(stages, pipelines=[pipeline], qps=2500, duration_s=2.0, warmup_s=0.3, drain_s=0.0, seed=7)
    summary = assert_equivalent(scenario, pipeline, 101).summary()
    requests, merger = summary["requests"], summary["stages"]["merger"]
    assert requests["rejected"] > 0 and requests["timed_out"] > 0 and requests["in_flight_at_end"] > 0
    assert len(merger["node_utilization"]) == 3 and min(merger["node_utilization"]) > 0


@pytest.mark.parametrize("balance", BALANCERS)
def test_every_balancer_under_overload_with_caches_and_slowdowns(balance):
    """Nodes behind every balancer on each pipeline's limited stage, caches in front of them, a slowdown of every
    node of a stage, unlimited queues on the others, a drain that empties the system."""
    stages = overload_stages()
    stages["prerank"] = _fleet(4, 2, balance, {"dist": "exponential", "mean_ms": 10}, queue_limit=10, timeout_ms=25)
    stages["user_inference"] = _fleet(4, 4, balance, {"dist": "gamma", "mean_ms": 5, "cv": 0.4})
    stages["feature_fetch"] = _fleet(6, 3, balance, {"dist": "lognormal", "median_ms": 2, "p99_ms": 9})
    caches = {"user_vector": {"capacity": 50, "ttl_s": 0.5}, "sim_features": {"capacity": 30}}
    faults = [{"kind": "stage_slowdown", "at_s": 1.0, "stage": "prerank", "factor": 3, "duration_s": 0.5}]
    scenario = make_scenario(
        stages, pipelines=["sequential", "aif"], qps=900, duration_s=2.5, warmup_s=0.5, drain_s=2.0, seed=4, caches=caches, faults=faults
    )
    for pipeline in ("sequential", "aif"):
        assert_equivalent(scenario, pipeline, 64)


@st.composite
def fleet_stages(draw: st.DrawFn) -> dict[str, Any]:
    """A stage of several nodes behind any balancer: sharded or not, a cost per candidate, a queue limit and a
    timeout per node or none, retries, hedges, or batching nodes (whole visits); now and then,
    one pool."""
    nodes = draw(st.sampled_from([1, 2, 3, 4, 6]))
    stage: dict[str, Any] = {
        "servers": nodes * draw(st.integers(1, 3)),
        "nodes": nodes,
        "balance": draw(st.sampled_from(BALANCERS)),
        "latency": draw(latencies()),
    }
    if draw(st.booleans()):
        stage["queue_limit"] = draw(st.integers(0, 6))
    if draw(st.booleans()):
        stage["timeout_ms"] = draw(st.floats(0.5, 30.0))
    if draw(st.integers(0, 3)) == 0:  # a waiter's timeout and the batch timer never tie
        max_wait_ms = draw(st.floats(0.0, 5.0).filter(lambda ms: abs(ms - stage.get("timeout_ms", -1.0)) > 1e-6))
        stage["batch"] = {"max_size": draw(st.integers(1, 6)), "max_wait_ms": max_wait_ms}
        return stage
    stage["shards"] = draw(st.integers(1, nodes))
    if draw(st.booleans()):
        stage["per_candidate_us"] = draw(st.floats(0.001, 20.0))
    if nodes > 1 and draw(st.booleans()):  # retries of rejected and timed-out visits
        stage["retries"] = draw(st.integers(1, 3))
    if nodes > 1 and draw(st.booleans()):  # hedges: a copy of a visit or shard unfinished after the delay
        stage["hedge_after_ms"] = draw(st.floats(0.1, 20.0))
    return stage


@st.composite
def fleet_cases(draw: st.DrawFn) -> tuple[Scenario, str, int]:
    """A pipeline of fleets (every stage drawn by `fleet_stages`) under light to overloading Poisson traffic, with
    caches in front of some (a miss adding latency to each shard), slowdowns of some, and nodes of some lost."""
    pipeline = draw(st.sampled_from(ALL))
    stages = {name: draw(fleet_stages()) for name in shipped_designs()[pipeline].stages}
    qps = draw(st.floats(100.0, 2500.0))
    duration_s = draw(st.floats(0.5, max(0.5, min(3.0, 4000.0 / qps))))
    slowdown = st.fixed_dictionaries(
        {"kind": st.just("stage_slowdown"), "stage": st.sampled_from(shipped_designs()[pipeline].stages), "factor": st.floats(1.1, 8.0)}
        | {"at_s": st.floats(0.01, duration_s), "duration_s": st.floats(0.01, duration_s)}
    )
    faults = draw(st.lists(slowdown, max_size=2))
    losing = [name for name, stage in stages.items() if stage["nodes"] > 1 and "batch" not in stage and "hedge_after_ms" not in stage]
    for _ in range(draw(st.integers(0, 2)) if losing else 0):  # nodes lost, and back, while visits queue and run there
        name = draw(st.sampled_from(losing))
        nodes, at_s, lost_s = (
            draw(st.integers(1, stages[name]["nodes"])),
            draw(st.floats(0.01, duration_s)),
            draw(st.floats(0.01, duration_s)),
        )
        faults.append({"kind": "node_loss", "stage": name, "nodes": nodes, "at_s": at_s, "duration_s": lost_s})
    extra: dict[str, Any] = {"faults": faults}
    hedged = any("hedge_after_ms" in stage for stage in stages.values())  # hedges with deadlines stay on simpy
    if not hedged and draw(st.booleans()):  # a request deadline: queued visits leave, running ones finish as wasted work,
        extra["deadline_ms"] = draw(st.floats(0.5, 60.0))  # batch members leave their queues (their batch runs on)
    if pipeline != "uic" and draw(st.booleans()):
        miss = {"capacity": 20, "ttl_s": 0.2, "miss_latency": {"dist": "exponential", "mean_ms": draw(st.floats(0.1, 5.0))}}
        extra["caches"] = {"user_vector": {"capacity": 50}, "sim_features": miss}
    scenario = make_scenario(
        stages,
        pipelines=[pipeline],
        qps=qps,
        duration_s=duration_s,
        warmup_s=draw(st.floats(0.0, duration_s / 2)),
        drain_s=draw(st.sampled_from([0.0, 0.05, 1.0])),
        seed=draw(st.integers(0, 2**31)),
        candidates=draw(st.integers(1, 300)),
        **extra,
    )
    return scenario, pipeline, draw(st.sampled_from([3, 16, 101, 8192]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleet_cases())
def test_random_fleets_give_the_simpy_results_request_for_request(case):
    """Nodes, balancers, shards (fewer candidates than shards too), costs per candidate, limits, retries after a
    rejection, a timeout or a node loss, hedges, batching nodes, caches, slowdowns, node losses and request deadlines
    drawn at random: the compiled engine's requests, visits, batches, node busy time, shard skew, hedges, retries and
    wasted work are
    simpy's."""
    scenario, pipeline, chunk = case
    reason = why_not(scenario, pipeline)
    assume(reason is None or "at equal times" not in reason)  # batching nodes and shards after batches stay on simpy
    assert reason is None
    assert_equivalent(scenario, pipeline, chunk)


@pytest.mark.parametrize("balance", BALANCERS)
def test_sharded_visits_under_overload(balance):
    """Shards on every node of a stage (each pick avoiding the nodes already taken), on fewer nodes than there are
    of them, queue limits and timeouts failing some shards of a visit, a cache miss each shard waits for: the same
    results, and the accounting a sharded stage adds (skew, per-node busy time) is there."""
    stages = small_stages(_fleet(8, 4, balance, {"dist": "exponential", "mean_ms": 5}, queue_limit=2, timeout_ms=6, shards=4))
    stages["item_fetch"] = _fleet(6, 3, balance, {"dist": "gamma", "mean_ms": 1, "cv": 0.5}, shards=2, per_candidate_us=2)
    stages["feature_fetch"] = _fleet(4, 2, balance, {"dist": "lognormal", "median_ms": 2, "p99_ms": 9}, shards=2, queue_limit=1)
    caches = {"sim_features": {"capacity": 30, "miss_latency": {"dist": "exponential", "mean_ms": 1}}}
    for pipeline in ("sequential", "aif"):
        scenario = make_scenario(stages, pipelines=[pipeline], qps=700, duration_s=1.5, warmup_s=0.2, drain_s=0.0, seed=3, caches=caches)
        summary = assert_equivalent(scenario, pipeline, 101).summary()
        sharded = summary["stages"]["prerank" if pipeline == "sequential" else "item_fetch"]
        assert sharded["shard_skew_ms"] > 0 and min(sharded["node_utilization"]) > 0
        if pipeline == "sequential":
            assert summary["requests"]["rejected"] > 0 and summary["requests"]["timed_out"] > 0


@pytest.mark.parametrize("shards", [2, 4, 8])
def test_sharded_visits_compiled_take_the_order_statistics_of_their_shards(shards):
    """K exponential shards (mean m) with no queueing, on the compiled engine: the visit takes the largest of K draws,
    E = m H_K, and its skew is the largest minus the median, E[X(K)] - E[median] with E[X(k)] = m (H_K - H_{K-k})
    (the median of an even K the mean of X(K/2) and X(K/2 + 1)). Measured: within 0.5% of both."""
    stages = small_stages({"servers": 64, "nodes": 8, "shards": shards, "latency": {"dist": "exponential", "mean_ms": 10}})
    stages |= {name: {"servers": 100, "latency": {"dist": "constant", "ms": 0}} for name in ("merger", "retrieval", "feature_fetch")}
    scenario = make_scenario(stages, pipelines=["sequential"], qps=5, duration_s=4000, seed=4)
    samplers = build_samplers(scenario, "<test>")
    assert choose_engines(scenario, samplers, "auto") == {"sequential": ("compiled", None)}
    prerank = simulate(scenario, samplers)["sequential"].summary()["stages"]["prerank"]

    def order_statistic(k: int) -> float:  # E[X(k)] of K exponentials of mean 10 ms
        return 10 * sum(1 / i for i in range(shards - k + 1, shards + 1))

    median = (order_statistic(shards // 2) + order_statistic(shards // 2 + 1)) / 2
    assert prerank["latency_ms"]["mean"] == pytest.approx(order_statistic(shards), rel=0.015)
    assert prerank["shard_skew_ms"] == pytest.approx(order_statistic(shards) - median, rel=0.015)


@pytest.mark.parametrize("balance", BALANCERS)
def test_timed_out_visits_and_shards_retried_later_on_other_nodes(balance):
    """Timeouts shorter than the queues: a timed-out visit or shard is sent again when it leaves its queue, among the
    stage's later arrivals, to a node not holding a part of its visit (every shard of a visit timing out at one
    instant, sent again in the order they were first sent), rejections retried at once, with and without a
    deadline, a cache miss each shard waits for: the same requests, picks, retries and wasted work as simpy."""
    stages = small_stages(_fleet(8, 4, balance, {"dist": "exponential", "mean_ms": 5}, queue_limit=3, timeout_ms=4, retries=2, shards=2))
    stages["merger"] = {"servers": 8, "latency": {"dist": "exponential", "mean_ms": 0.5}}
    stages["item_fetch"] = _fleet(6, 3, balance, {"dist": "gamma", "mean_ms": 3, "cv": 0.5}, timeout_ms=2, retries=1)
    stages["rtp"] = {"servers": 3, "latency": {"dist": "exponential", "mean_ms": 2}}
    caches = {"sim_features": {"capacity": 30, "miss_latency": {"dist": "exponential", "mean_ms": 1}}}
    for pipeline, retrying in (("sequential", "prerank"), ("aif", "item_fetch")):
        for extra in ({}, {"deadline_ms": 12}):
            scenario = make_scenario(
                stages, pipelines=[pipeline], qps=1500, duration_s=1.0, warmup_s=0.1, drain_s=0.05, seed=5, caches=caches, **extra
            )
            summary = assert_equivalent(scenario, pipeline, 101).summary()
            assert summary["stages"][retrying]["retries"] > 0 and summary["requests"]["timed_out"] > 0


@pytest.mark.parametrize("balance", BALANCERS)
def test_rejected_visits_and_shards_retried_on_other_nodes(balance):
    """Queue limits of 0 and 1 reject often: each rejected visit or shard is sent at once to a node not holding a
    part of its visit, while its retries last, the balancer drawing again; the same requests, picks and retries."""
    stages = small_stages(_fleet(8, 4, balance, {"dist": "exponential", "mean_ms": 5}, queue_limit=0, retries=2, shards=2))
    stages["item_fetch"] = _fleet(6, 3, balance, {"dist": "gamma", "mean_ms": 4, "cv": 0.5}, queue_limit=1, retries=1)
    for pipeline in ("sequential", "aif"):
        scenario = make_scenario(stages, pipelines=[pipeline], qps=900, duration_s=1.5, warmup_s=0.2, drain_s=0.0, seed=5)
        summary = assert_equivalent(scenario, pipeline, 101).summary()
        retrying = summary["stages"]["prerank" if pipeline == "sequential" else "item_fetch"]
        assert retrying["retries"] > 0 and summary["requests"]["rejected"] > 0


def test_what_it_does_not_model_on_several_nodes():
    """Deadlines with constant services, equal to a batch timer or with hedges, and hedges of constant services (a
    hedge timer can fall exactly at a service end) stay on simpy, said in one line, and so do sharded stages of
    constant services (a visit's shards end together, and the shards queued behind them on several nodes start at one
    instant, in an order simpy decides by scheduling) and node losses meeting other events at their instant (another
    loss, return or slowdown; the visits sent again at the loss, timing out together or of constant services ending
    together); plain, sharded, hedged and batching nodes, retries, deadlines and node loss run compiled."""
    pool = _fleet(8, 4, "p2c", {"dist": "exponential", "mean_ms": 2})
    batching = pool | {"batch": {"max_size": 4, "max_wait_ms": 1}}
    retrying = pool | {"shards": 2, "retries": 2, "queue_limit": 1, "timeout_ms": 3}
    merger = {"servers": 8, "latency": {"dist": "constant", "ms": 0.5}, "batch": {"max_size": 2}}
    loss = [{"kind": "node_loss", "at_s": 1, "stage": "prerank", "nodes": 2, "duration_s": 1}]
    compiled_cases = [(pool, []), (pool | {"shards": 4}, []), (retrying, []), (batching, []), (pool | {"retries": 1}, loss)]
    for compiled, faults in [*compiled_cases, (retrying | {"hedge_after_ms": 2}, [])]:
        scenario = make_scenario(small_stages(compiled), pipelines=["sequential"], faults=faults)
        assert choose_engines(scenario, build_samplers(scenario, "<test>"), "auto") == {"sequential": ("compiled", None)}
    assert why_not(make_scenario(small_stages(batching) | {"merger": merger}, pipelines=["sequential"]), "sequential") == (
        "the compiled engine may order events at equal times unlike simpy: prerank batches on several nodes whose dispatchers, "
        "woken at one instant by requests arriving together (after merger), draw the stage's batch services in simpy's "
        "scheduling order"
    )
    assert why_not(make_scenario(small_stages(pool | {"shards": 2}) | {"merger": merger}, pipelines=["sequential"]), "sequential") == (
        "the compiled engine may order events at equal times unlike simpy: prerank shards the visits of requests arriving "
        "together (after merger), whose shards simpy sends, and times out, interleaved"
    )
    cases = [
        (
            {"shards": 2, "latency": {"dist": "constant", "ms": 2}},
            {},
            "the compiled engine may order events at equal times unlike simpy: sharded visits of constant or empirical services "
            "end together on several nodes, starting the shards queued behind them at one instant (prerank)",
        ),
        (
            {"hedge_after_ms": 5, "latency": {"dist": "constant", "ms": 2}},
            {},
            "the compiled engine may order events at equal times unlike simpy: a hedge timer can fall exactly at the end of "
            "a constant service (prerank)",
        ),
        (
            {"hedge_after_ms": 5},
            {"deadline_ms": 50},
            "the compiled engine does not model request deadlines (deadline_ms) with hedged stages yet (prerank)",
        ),
        (
            {"retries": 1, "timeout_ms": 5},
            {"faults": [{"kind": "node_loss", "at_s": 1, "stage": "prerank", "nodes": 1, "duration_s": 1}]},
            "the compiled engine may order events at equal times unlike simpy: the visits prerank sends again at a node's loss time "
            "out together",
        ),
        (
            {"retries": 1, "latency": {"dist": "constant", "ms": 2}},
            {"faults": [{"kind": "node_loss", "at_s": 1, "stage": "prerank", "nodes": 1, "duration_s": 1}]},
            "the compiled engine may order events at equal times unlike simpy: the visits prerank sends again at a node's loss, "
            "of constant or empirical services, end together",
        ),
        (
            {},
            {"faults": [{"kind": "node_loss", "at_s": t, "stage": "prerank", "nodes": 1, "duration_s": 1} for t in (1, 2)]},
            "the compiled engine may order events at equal times unlike simpy: a node is lost or returns at the instant of another "
            "node loss, return or slowdown (prerank)",
        ),
    ]
    for change, extra, reason in cases:
        scenario = make_scenario(small_stages(pool | change), pipelines=["sequential"], **extra)
        assert why_not(scenario, "sequential") == reason
    deadline = make_scenario(small_stages(pool), pipelines=["sequential"], deadline_ms=50)
    assert why_not(deadline, "sequential") == (
        "the compiled engine may order events at equal times unlike simpy: a request deadline meets constant or empirical "
        "services, whose visits can end exactly at it (merger)"
    )
    stages = small_stages(pool) | {"merger": {"servers": 8, "latency": {"dist": "exponential", "mean_ms": 0.5}}}
    assert why_not(make_scenario(stages, pipelines=["sequential", "aif"], deadline_ms=50), "sequential") is None
    assert why_not(make_scenario(stages, pipelines=["sequential", "aif"], deadline_ms=50), "aif") is None  # rtp batches
    assert why_not(make_scenario(stages, pipelines=["aif"], deadline_ms=1), "aif") == (
        "the compiled engine may order events at equal times unlike simpy: a batching stage's max_wait_ms or timeout_ms equals "
        "the request deadline, so a request that arrives there at once meets both at one instant (rtp)"
    )


@pytest.mark.parametrize("balance", BALANCERS)
def test_hedges_under_overload(balance):
    """Hedged stages behind every balancer, loaded past their capacity: copies queued behind others, losing copies
    that leave their queue (moving up every visit behind them) or run on as wasted work, queue limits rejecting
    copies, timeouts, retries of failed tries, a cache miss each copy of the primary waits for, a slowdown: the same
    requests, picks, hedges, retries, node busy time and wasted work as simpy, every offered request counted once."""
    stages = small_stages(
        _fleet(8, 4, balance, {"dist": "exponential", "mean_ms": 5}, hedge_after_ms=3, queue_limit=4, timeout_ms=12, retries=1)
    )
    stages["merger"] = {"servers": 8, "latency": {"dist": "exponential", "mean_ms": 0.5}}
    stages["item_fetch"] = _fleet(6, 3, balance, {"dist": "gamma", "mean_ms": 3, "cv": 0.5}, hedge_after_ms=2.5, per_candidate_us=2)
    stages["rtp"] = {"servers": 3, "latency": {"dist": "exponential", "mean_ms": 2}}
    caches = {"sim_features": {"capacity": 30, "miss_latency": {"dist": "exponential", "mean_ms": 1}}}
    for pipeline, hedged in (("sequential", "prerank"), ("aif", "item_fetch")):
        faults = [{"kind": "stage_slowdown", "at_s": 0.3, "stage": hedged, "factor": 2, "duration_s": 0.3}]
        scenario = make_scenario(
            stages, pipelines=[pipeline], qps=1700, duration_s=1.0, warmup_s=0.1, drain_s=0.05, seed=6, caches=caches, faults=faults
        )
        summary = assert_equivalent(scenario, pipeline, 101).summary()
        requests, stage = summary["requests"], summary["stages"][hedged]
        assert stage["hedges"] > 0 and stage["wasted_busy_s"] > 0 and max(stage["node_utilization"]) > 0.9
        assert requests["offered"] == requests["completed"] + requests["rejected"] + requests["timed_out"] + requests["in_flight_at_end"]
        if pipeline == "sequential":
            assert stage["retries"] > 0 and requests["rejected"] > 0 and requests["timed_out"] > 0


@pytest.mark.parametrize("balance", BALANCERS)
def test_hedges_of_requests_arriving_together(balance):
    """A batch's members reach a hedged stage at one instant: each picks its node and its copy joins before the next
    member picks (simpy starts a copy's process before resuming the next member), and the rejected ones are sent on
    only after every member has picked, in the order they were rejected: the same requests and picks as simpy."""
    stages = small_stages(_fleet(8, 4, balance, {"dist": "exponential", "mean_ms": 5}))
    stages["merger"] = {"servers": 4, "latency": {"dist": "exponential", "mean_ms": 1}, "batch": {"max_size": 4, "max_wait_ms": 1}}
    stages["retrieval"] = _fleet(8, 4, balance, {"dist": "exponential", "mean_ms": 3}, hedge_after_ms=2, queue_limit=1, retries=2)
    scenario = make_scenario(stages, pipelines=["sequential"], qps=1500, duration_s=1.0, warmup_s=0.1, drain_s=0.0, seed=5)
    retrieval = assert_equivalent(scenario, "sequential", 101).summary()["stages"]["retrieval"]
    assert retrieval["hedges"] > 0 and retrieval["retries"] > 0


@pytest.mark.parametrize("shards", [2, 4])
def test_hedged_shards(shards):
    """Each shard of a visit hedged on its own, its copy sent to a node holding no other shard or copy of the visit
    (none left: no copy), retried on failure: the same requests, skew, hedges and busy time as simpy."""
    stages = small_stages(_fleet(8, 4, "p2c", {"dist": "lognormal", "median_ms": 2, "p99_ms": 12}, shards=shards, hedge_after_ms=3))
    stages["item_fetch"] = _fleet(
        6, 6, "least_outstanding", {"dist": "exponential", "mean_ms": 2}, shards=shards, hedge_after_ms=2, queue_limit=2, retries=2
    )
    for pipeline, hedged, nodes in (("sequential", "prerank", 4), ("aif", "item_fetch", 6)):
        scenario = make_scenario(stages, pipelines=[pipeline], qps=900, duration_s=1.0, warmup_s=0.1, drain_s=0.0, seed=8, candidates=50)
        stage = assert_equivalent(scenario, pipeline, 101).summary()["stages"][hedged]
        assert stage["shard_skew_ms"] > 0 and min(stage["node_utilization"]) > 0
        assert (stage["hedges"] > 0) == (shards < nodes)  # every node holding a shard: no node left for a copy


@pytest.mark.parametrize("pipeline", ALL)
def test_deadlines_abandon_queued_and_running_visits(pipeline):
    """A deadline shorter than an overloaded pipeline's queues: queued visits (on pools, on nodes, as shards) leave
    their queues at it, running ones finish as wasted work on their servers, parallel branches and slowed-down
    stages included; the same requests, visits and wasted work as simpy, no completed request above the deadline,
    and every offered request counted once."""
    stages = overload_stages() | {"merger": {"servers": 8, "latency": {"dist": "exponential", "mean_ms": 0.5}}}
    stages["prerank"] = _fleet(8, 4, "p2c", {"dist": "exponential", "mean_ms": 10}, queue_limit=3, shards=2, retries=1)
    stages["item_fetch"] = _fleet(4, 2, "least_outstanding", {"dist": "gamma", "mean_ms": 3, "cv": 0.5}, timeout_ms=6)
    stages["rtp"] = {"servers": 3, "latency": {"dist": "exponential", "mean_ms": 2}, "timeout_ms": 4, "queue_limit": 5}
    faults = [{"kind": "stage_slowdown", "at_s": 0.5, "stage": "retrieval", "factor": 3, "duration_s": 0.3}]
    scenario = make_scenario(
        stages, pipelines=[pipeline], qps=1500, duration_s=1.5, warmup_s=0.2, drain_s=0.05, seed=3, deadline_ms=14, faults=faults
    )
    summary = assert_equivalent(scenario, pipeline, 101).summary()
    requests = summary["requests"]
    assert requests["timed_out"] > 0 and sum(stage["wasted_busy_s"] for stage in summary["stages"].values()) > 0
    assert requests["offered"] == requests["completed"] + requests["rejected"] + requests["timed_out"] + requests["in_flight_at_end"]
    assert summary["latency_ms"]["max"] <= 14


@pytest.mark.parametrize("pipeline", ALL)
def test_deadlines_take_waiters_out_of_batching_queues(pipeline):
    """Batching stages (a pool, and nodes behind p2c) under a deadline shorter than their queues: a waiter leaves its
    queue at its request's deadline (the queue's oldest, its batch timer and its timeout follow the waiters left), a
    member of a batch in service stays in it while its request leaves; the same requests, batches and busy time as
    simpy, no completed request above the deadline, and every offered request counted once."""
    stages = overload_stages() | {"merger": {"servers": 8, "latency": {"dist": "exponential", "mean_ms": 0.5}}}
    stages["prerank"] |= {"batch": {"max_size": 3, "max_wait_ms": 2}}
    stages["rtp"] = _fleet(4, 2, "p2c", {"dist": "exponential", "mean_ms": 6}, batch={"max_size": 4, "max_wait_ms": 1}, timeout_ms=9)
    stages["light_prerank"] |= {"batch": {"max_size": 2, "max_wait_ms": 3}}
    for deadline_ms in (14, 30):
        scenario = make_scenario(
            stages, pipelines=[pipeline], qps=1200, duration_s=1.5, warmup_s=0.2, drain_s=0.05, seed=3, deadline_ms=deadline_ms
        )
        summary = assert_equivalent(scenario, pipeline, 101).summary()
        requests = summary["requests"]
        assert requests["timed_out"] > 0 and requests["completed"] > 0
        assert requests["offered"] == requests["completed"] + requests["rejected"] + requests["timed_out"] + requests["in_flight_at_end"]
        assert summary["latency_ms"]["max"] <= deadline_ms


def test_a_deadline_cuts_exponential_services_at_their_memoryless_tail():
    """One exponential stage (mean m) with no queueing and a deadline d, on the compiled engine: a request times out
    with probability P(X > d) = exp(-d / m), and the work cut off is E[X | X > d] = d + m per timed-out request
    (the server finishes it). Measured: within 2% of both."""
    scenario = single_queue_scenario({"dist": "exponential", "mean_ms": 10}, servers=1000, qps=200, duration_s=200, deadline_ms=10)
    samplers = build_samplers(scenario, "<test>")
    assert choose_engines(scenario, samplers, "auto") == {"sequential": ("compiled", None)}
    summary = simulate(scenario, samplers)["sequential"].summary()
    requests, prerank = summary["requests"], summary["stages"]["prerank"]
    assert requests["timed_out"] / requests["offered"] == pytest.approx(math.exp(-1), rel=0.02)
    assert prerank["wasted_busy_s"] * 1000 / requests["timed_out"] == pytest.approx(20, rel=0.02)


@pytest.mark.parametrize("balance", BALANCERS)
def test_batching_nodes_under_overload(balance):
    """Batching stages of several nodes behind every balancer (a node's load: its waiters and the members of its
    batches in service), queue limits and timeouts per node, batches of a stage's nodes drawing their services
    from the stage's one stream in the order they start, a slowdown: the same requests, batches and per-node busy
    time as simpy."""
    stages = small_stages(
        _fleet(8, 4, balance, {"dist": "exponential", "mean_ms": 4}, queue_limit=2, timeout_ms=3, batch={"max_size": 3, "max_wait_ms": 1})
    )
    stages["merger"] = {"servers": 8, "latency": {"dist": "exponential", "mean_ms": 0.5}}
    stages["rtp"] = _fleet(6, 3, balance, {"dist": "exponential", "mean_ms": 2}, batch={"max_size": 4, "max_wait_ms": 1})
    stages["user_inference"] = _fleet(4, 2, balance, {"dist": "gamma", "mean_ms": 3, "cv": 0.5}, queue_limit=3)
    for pipeline, slowed in (("sequential", "prerank"), ("aif", "rtp")):
        faults = [{"kind": "stage_slowdown", "at_s": 0.3, "stage": slowed, "factor": 2, "duration_s": 0.3}]
        scenario = make_scenario(stages, pipelines=[pipeline], qps=1800, duration_s=1.0, warmup_s=0.1, drain_s=0.05, seed=5, faults=faults)
        summary = assert_equivalent(scenario, pipeline, 101).summary()
        assert summary["requests"]["rejected"] > 0 and min(summary["stages"][slowed]["node_utilization"]) > 0


def test_batches_of_one_on_random_nodes_are_independent_mm1_queues():
    """N single-thread batching nodes taking batches of one at once, behind random routing, on the compiled
    engine: N independent M/M/1 queues at rate lam / N, mean sojourn 1 / (mu - lam / N) = 5 ms at mu = 500/s,
    lam / N = 300/s. Measured: within 3%."""
    prerank = {"servers": 4, "nodes": 4, "balance": "random", "latency": {"dist": "exponential", "mean_ms": 2}, "batch": {"max_size": 1}}
    stages = {name: negligible() for name in ("merger", "retrieval", "feature_fetch")} | {"prerank": prerank}
    scenario = make_scenario(stages, pipelines=["sequential"], qps=1200, duration_s=300, warmup_s=10)
    samplers = build_samplers(scenario, "<test>")
    assert choose_engines(scenario, samplers, "auto") == {"sequential": ("compiled", None)}
    summary = simulate(scenario, samplers)["sequential"].summary()
    assert summary["stages"]["prerank"]["latency_ms"]["mean"] == pytest.approx(5.0, rel=0.03)


LOSSES = [  # two nodes down, then one of them again while they are (it returns with the first: simpy's fleet brings back
    # what a loss took when that loss ends), then one of them once more
    {"kind": "node_loss", "at_s": 0.31, "stage": "STAGE", "nodes": 2, "duration_s": 0.2},
    {"kind": "node_loss", "at_s": 0.42, "stage": "STAGE", "nodes": 1, "duration_s": 0.37},
    {"kind": "node_loss", "at_s": 0.87, "stage": "STAGE", "nodes": 1, "duration_s": 0.05},
]


@pytest.mark.parametrize("balance", BALANCERS)
def test_lost_nodes_fail_what_they_hold_in_simpys_order(balance):
    """Overloaded nodes lost with long queues and visits in service: every visit and shard they hold fails at the
    loss, in the order simpy fails them (each lost node's visits in the order they came), sent again to a live node
    where retries allow (balancers skipping the lost nodes until they return), else failing its request then, the
    requests ending together in the order simpy's processes resume (a shard's process, a parallel branch's, a
    deadline's); the busy time of work cut in service stops at the loss. The same requests, picks, retries, node busy
    time and wasted work as simpy, on the node-loss stage in a parallel branch and in a step of its own, with and
    without a deadline; nothing is lost, and the lost nodes serve less than the others."""
    merger = {"servers": 8, "latency": {"dist": "exponential", "mean_ms": 0.5}}
    rtp = {"servers": 8, "latency": {"dist": "exponential", "mean_ms": 2}}
    for pipeline, stage, fleet in (
        ("aif", "user_inference", _fleet(8, 4, balance, {"dist": "gamma", "mean_ms": 5, "cv": 0.5}, shards=2)),
        ("aif", "retrieval", _fleet(8, 4, balance, {"dist": "exponential", "mean_ms": 5}, retries=1)),
        ("sequential", "prerank", _fleet(8, 4, balance, {"dist": "exponential", "mean_ms": 6}, shards=3, retries=1, queue_limit=4)),
        ("sequential", "prerank", _fleet(8, 4, balance, {"dist": "exponential", "mean_ms": 6}, shards=2)),
    ):
        stages = small_stages(_fleet(8, 4, balance, {"dist": "exponential", "mean_ms": 2})) | {"merger": merger, "rtp": rtp, stage: fleet}
        faults = [loss | {"stage": stage} for loss in LOSSES]
        for extra in ({}, {"deadline_ms": 40}):
            scenario = make_scenario(
                stages, pipelines=[pipeline], qps=1500, duration_s=1.2, warmup_s=0.1, drain_s=0.05, seed=6, faults=faults, **extra
            )
            assert why_not(scenario, pipeline) is None
            summary = assert_equivalent(scenario, pipeline, 101).summary()
            requests, lost = summary["requests"], summary["stages"][stage]
            assert (
                requests["offered"] == requests["completed"] + requests["rejected"] + requests["timed_out"] + requests["in_flight_at_end"]
            )
            assert requests["rejected"] > 0 or lost["retries"] > 0
            assert max(lost["node_utilization"][:2]) < min(lost["node_utilization"][2:])
            assert [fault["kind"] for fault in summary["faults"]] == ["node_loss"] * 3
