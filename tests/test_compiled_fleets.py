"""Stages of several nodes on the compiled engine against the simpy engine: the same picks, the same visits, the
same per-node busy time (`Recorder.node_busy`), request for request; and what it does not model yet."""

from __future__ import annotations

from typing import Any

import pytest

from aif_sim.app.run import build_samplers, choose_engines
from tests.simtools import make_scenario, overload_stages, small_stages
from tests.test_compiled import assert_equivalent, why_not

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


def test_what_it_does_not_model_on_several_nodes():
    """Shards, hedges, retries, batching nodes, node loss and deadlines stay on simpy, said in one line; plain
    nodes run compiled."""
    pool = _fleet(8, 4, "p2c", {"dist": "exponential", "mean_ms": 2})
    plain = make_scenario(small_stages(pool), pipelines=["sequential"])
    assert choose_engines(plain, build_samplers(plain, "<test>"), "auto") == {"sequential": ("compiled", None)}
    cases = [
        ({"shards": 2}, {}, "the compiled engine does not model shards on stages of several nodes yet (prerank)"),
        ({"hedge_after_ms": 5}, {}, "the compiled engine does not model hedges (hedge_after_ms) on stages of several nodes yet (prerank)"),
        ({"retries": 1}, {}, "the compiled engine does not model retries on stages of several nodes yet (prerank)"),
        ({"batch": {"max_size": 4}}, {}, "the compiled engine does not model batching on stages of several nodes yet (prerank)"),
        (
            {},
            {"faults": [{"kind": "node_loss", "at_s": 1, "stage": "prerank", "nodes": 1, "duration_s": 1}]},
            "the compiled engine does not model node loss yet (prerank)",
        ),
        ({}, {"deadline_ms": 50}, "the compiled engine does not model request deadlines yet (deadline_ms)"),
    ]
    for change, extra, reason in cases:
        scenario = make_scenario(small_stages(pool | change), pipelines=["sequential"], **extra)
        assert why_not(scenario, "sequential") == reason
