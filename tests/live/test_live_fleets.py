"""Fleets and deadlines in the live engine keep the DES's rules: nodes behind a balancer (the same random choices
as the DES), sharded visits joined in candidate order, abandoned requests that leave their queues and whose work
in service ends as wasted, hedge copies whose loser is cancelled, retries on another node, nodes that go down."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from aif_sim.app.run import build_samplers, simulate
from aif_sim.core.latency import Constant
from aif_sim.core.request import Outcome, Request
from aif_sim.live.fleet import LiveFleet
from aif_sim.live.loop import Clock, new_loop
from aif_sim.live.pools import LiveBatchingPool, LivePool
from aif_sim.live.run import check_live, run_live
from aif_sim.metrics.recorder import Recorder
from aif_sim.scenario.schema import Stage
from tests.live.test_live_engine import live_scenario
from tests.simtools import RowSink, make_scenario, negligible

FLEET = {"stages.retrieval.nodes": 4, "stages.retrieval.shards": 2}  # 16 servers: 4 nodes of 4 threads


def _recorder(merger: dict[str, Any]) -> Recorder:
    """A recorder whose slot 0 (the merger) is configured as `merger`."""
    stages = {"merger": merger, "retrieval": negligible(), "feature_fetch": negligible(), "prerank": negligible()}
    return Recorder.for_pipeline(make_scenario(stages), "sequential", None, {}, [])


def _on_loop(scenario: Callable[[Clock], Awaitable[Any]]) -> Any:
    loop = new_loop()
    try:
        return loop.run_until_complete(scenario(Clock(loop)))
    finally:
        loop.close()


def _request(rid: int, candidates: int = 10) -> Request:
    request = Request(rid, 0.0, rid, candidates, True, [0.0])
    request.payload = {"candidates": np.arange(candidates) + 100}
    return request


def test_a_cancelled_visit_leaves_the_queue_and_one_in_service_keeps_its_server_as_wasted_work():
    config = {"servers": 1, "latency": {"dist": "constant", "ms": 1}}
    recorder = _recorder(config)
    served: list[int] = []
    work_ends: dict[int, float] = {}

    async def scenario(clock: Clock) -> dict[str, Any]:
        async def work(requests: list[Request]) -> None:
            served.append(requests[0].id)
            await asyncio.sleep(0.05)
            work_ends[requests[0].id] = clock()

        pool = LivePool(clock, 0, Stage(**config), work, recorder, abandonable=True)
        a, b, c = (_request(i) for i in range(3))
        tasks = [clock.loop.create_task(pool.serve(r)) for r in (a, b, c)]
        await asyncio.sleep(0.01)  # a in service, b and c queued
        queued_before = pool.queued
        tasks[1].cancel()  # b leaves the queue
        tasks[0].cancel()  # a is abandoned in service: its work goes on, holding the server
        await asyncio.sleep(0)
        state = {"queued_before": queued_before, "queued_after": pool.queued, "busy_after": pool.busy}
        outcome_c = await tasks[2]
        await asyncio.sleep(0)  # the wasted visit's accounting runs after its work
        return state | {"c": outcome_c, "c_started": c.times[1], "cancelled": [t.cancelled() for t in tasks[:2]], "pool": pool}

    result = _on_loop(scenario)
    pool = result["pool"]
    assert result["queued_before"] == 2 and result["queued_after"] == 1 and result["busy_after"] == 1
    assert result["cancelled"] == [True, True] and result["c"] is Outcome.COMPLETED
    assert served == [0, 2]  # b never reached a server
    assert result["c_started"] >= work_ends[0]  # c waited for a's work to end: the server was held meanwhile
    assert pool.queued == 0 and pool.busy == 0 and pool.outstanding == 0
    assert recorder.stages[0].wasted_busy_s == pytest.approx(0.05, abs=0.04)


def test_a_cancelled_request_leaves_a_batching_queue_and_a_running_batch_carries_on_without_it():
    config = {"servers": 1, "latency": {"dist": "constant", "ms": 1}, "batch": {"max_size": 3, "max_wait_ms": 30}}
    recorder = _recorder(config)
    batches: list[list[int]] = []

    async def scenario(clock: Clock) -> dict[str, Any]:
        async def work(requests: list[Request]) -> None:
            batches.append([r.id for r in requests])
            await asyncio.sleep(0.03)

        pool = LiveBatchingPool(clock, 0, Stage(**config), work, recorder)
        requests = [_request(i) for i in range(5)]
        first = [clock.loop.create_task(pool.serve(r)) for r in requests[:3]]  # a full batch, served at once
        await asyncio.sleep(0.01)
        first[1].cancel()  # abandoned in its running batch
        second = [clock.loop.create_task(pool.serve(r)) for r in requests[3:]]
        await asyncio.sleep(0.005)
        second[0].cancel()  # abandoned while it waits for its batch to fill
        await asyncio.sleep(0)
        waiting = pool.waiting.live
        outcomes = await asyncio.gather(*first, *second, return_exceptions=True)
        pool.close()
        return {"waiting": waiting, "outcomes": outcomes, "pool": pool, "requests": requests}

    result = _on_loop(scenario)
    outcomes = result["outcomes"]
    assert result["waiting"] == 1
    assert [type(o) for o in outcomes] == [Outcome, asyncio.CancelledError, Outcome, asyncio.CancelledError, Outcome]
    assert batches == [[0, 1, 2], [4]]
    assert math.isnan(result["requests"][1].times[2]) and not math.isnan(result["requests"][2].times[2])
    assert result["pool"].waiting.live == 0 and result["pool"].outstanding == 0


def test_a_sharded_visit_runs_its_shards_on_distinct_nodes_and_joins_their_scores_in_candidate_order():
    config = {"servers": 4, "nodes": 4, "shards": 3, "balance": "p2c", "latency": {"dist": "constant", "ms": 1}}
    recorder = _recorder(config)
    seen: dict[int, list[int]] = {}  # node -> sizes of the shards it served

    async def scenario(clock: Clock) -> Request:
        def work_of(node: int) -> Callable[[list[Request]], Awaitable[None]]:
            async def work(requests: list[Request]) -> None:
                (shard,) = requests
                seen.setdefault(node, []).append(len(shard.payload["candidates"]))
                await asyncio.sleep(shard.service_s[0])  # the shard's own drawn service
                shard.payload["scores"] = shard.payload["candidates"] * 10.0

            return work

        nodes = [LivePool(clock, 0, Stage(**config), work_of(i), recorder, i) for i in range(4)]
        fleet = LiveFleet(clock, "merger", Stage(**config), nodes, 7, recorder)
        request = _request(0, candidates=8)
        request.shard_s = {0: [0.002, 0.02, 0.004]}
        assert await fleet.serve(request) is Outcome.COMPLETED
        assert all(node.outstanding == 0 for node in nodes)
        return request

    request = _on_loop(scenario)
    assert sorted(len(sizes) for sizes in seen.values()) == [1, 1, 1]  # three distinct nodes, one shard each
    assert sorted(size for sizes in seen.values() for size in sizes) == [2, 3, 3]
    np.testing.assert_array_equal(request.payload["scores"], (np.arange(8) + 100) * 10.0)
    np.testing.assert_array_equal(request.payload["candidates"], np.arange(8) + 100)
    sent, started, ended = request.times[:3]
    assert sent <= started < ended and ended - sent >= 0.02  # the visit ends with its slowest shard
    assert request.service_s[0] >= 0.02
    stage = recorder.stages[0]
    assert stage.sharded_visits == 1 and stage.shard_skew_s > 0


def test_a_fleet_with_shards_runs_live_and_accounts_each_node():
    """retrieval: an awaited stage of 4 nodes, 2 shards a visit; prerank: the model on each shard's candidates."""
    model_fleet = {"stages.prerank.servers": 2, "stages.prerank.nodes": 2, "stages.prerank.shards": 2}
    scenario = live_scenario(pipelines=["sequential"], **FLEET, **model_fleet, **{"stages.retrieval.balance": "p2c"})
    live, _ = run_live(scenario, build_samplers(scenario, "<test>"), None, lambda *a: None, lambda: False)
    summary = live["sequential"].summary()
    req = summary["requests"]
    assert req["offered"] == req["completed"] + req["rejected"] + req["timed_out"] + req["in_flight_at_end"] > 60
    retrieval = summary["stages"]["retrieval"]
    assert retrieval["nodes"] == 4 and len(retrieval["node_utilization"]) == 4
    assert np.mean(retrieval["node_utilization"]) == pytest.approx(retrieval["utilization"], rel=1e-9)
    assert all(u > 0 for u in retrieval["node_utilization"])
    assert retrieval["shard_skew_ms"] > 0
    assert retrieval["visits"] == req["completed"]  # a visit counts once, whatever its shards
    prerank = summary["stages"]["prerank"]
    assert prerank["nodes"] == 2 and prerank["visits"] == req["completed"] and prerank["shard_skew_ms"] >= 0
    assert summary["stages"]["merger"]["nodes"] == 1


def test_the_random_balancer_sends_the_same_visits_to_the_same_nodes_live_as_in_the_des(monkeypatch):
    """Random picks depend only on the stage's stream and the visits' order: each node serves as many visits
    (shards) live as in the DES."""
    scenario = live_scenario(pipelines=["sequential"], **FLEET, **{"stages.retrieval.balance": "random"})
    samplers = build_samplers(scenario, "<test>")
    counts: Counter[tuple[int, int]] = Counter()
    node_busy = Recorder.node_busy

    def counting(self: Recorder, slot: int, node: int, *args: Any) -> None:
        counts[slot, node] += 1
        node_busy(self, slot, node, *args)

    monkeypatch.setattr(Recorder, "node_busy", counting)
    des = simulate(scenario, samplers, engine="simpy")["sequential"].summary()  # simpy: one node_busy call per visit
    des_counts = dict(counts)
    counts.clear()
    live = run_live(scenario, samplers, None, lambda *a: None, lambda: False)[0]["sequential"].summary()
    assert des["requests"]["completed"] == live["requests"]["completed"] == des["requests"]["offered"]
    assert dict(counts) == des_counts
    assert sum(des_counts.values()) >= 2 * des["requests"]["offered"] and len(des_counts) == 4  # two shards a visit, every node


def test_a_deadline_shorter_than_the_service_times_every_request_out_and_wastes_the_work_in_service():
    scenario = live_scenario(
        pipelines=["sequential"], deadline_ms=10.0, **FLEET, **{"stages.feature_fetch.latency": {"dist": "constant", "ms": 30}}
    )
    samplers = build_samplers(scenario, "<test>")
    des = simulate(scenario, samplers)["sequential"].summary()
    live = run_live(scenario, samplers, None, lambda *a: None, lambda: False)[0]["sequential"].summary()
    for summary in (des, live):
        req = summary["requests"]
        assert req["timed_out"] == req["offered"] > 60 and req["completed"] == req["in_flight_at_end"] == 0
        assert math.isnan(summary["latency_ms"]["p50"]) and math.isnan(summary["latency_ms"]["max"])
        fetch = summary["stages"]["feature_fetch"]
        assert fetch["visits"] == 0 and fetch["wasted_busy_s"] > 0
        assert summary["stages"]["prerank"]["visits"] == 0


def test_no_request_completes_after_its_deadline_and_abandoned_ones_leave_nothing_behind():
    deadline_ms, slack_ms = 12.0, 25.0  # slack: how late a busy loop may resume a request that completed in time
    scenario = live_scenario(pipelines=["sequential", "aif"], deadline_ms=deadline_ms, **FLEET)
    sink = RowSink()
    live, _ = run_live(scenario, build_samplers(scenario, "<test>"), sink, lambda *a: None, lambda: False)
    timed_out = 0
    for name, recorder in live.items():
        req = recorder.summary()["requests"]
        assert req["offered"] == req["completed"] + req["rejected"] + req["timed_out"] > 60, name
        assert req["in_flight_at_end"] == 0 and recorder.live == 0, name
        timed_out += req["timed_out"]
    assert timed_out > 0
    assert all(latency <= deadline_ms + slack_ms for _, _, _, latency, _ in sink.rows)


HEDGED = {"stages.retrieval.nodes": 4, "stages.retrieval.latency": {"dist": "constant", "ms": 30}}


def _fleet(clock: Clock, config: dict[str, Any], recorder: Recorder, sampler: Any = None) -> tuple[LiveFleet, list[LivePool], list[int]]:
    """A fleet at slot 0 whose work awaits each send's own service (an awaited stage's); the ids of the sends whose
    work ended, in order."""
    ended: list[int] = []

    async def work(requests: list[Request]) -> None:
        (send,) = requests
        await asyncio.sleep(send.service_s[0])
        ended.append(send.id)

    stage = Stage(**config)
    nodes = [LivePool(clock, 0, stage, work, recorder, i, abandonable=True) for i in range(stage.nodes)]
    return LiveFleet(clock, "merger", stage, nodes, 7, recorder, sampler), nodes, ended


def _timed(rid: int, service_s: float) -> Request:
    request = _request(rid)
    request.service_s = [service_s]
    return request


def test_a_hedge_copy_that_completes_first_wins_and_the_primary_finishes_as_wasted_work():
    config = {"servers": 2, "nodes": 2, "hedge_after_ms": 5, "latency": {"dist": "constant", "ms": 20}}
    recorder = _recorder(config)

    async def scenario(clock: Clock) -> dict[str, Any]:
        fleet, nodes, ended = _fleet(clock, config, recorder, Constant(20.0))
        request = _timed(0, 0.1)  # the primary takes 100 ms; the copy, sent after 5 ms, 20 ms
        outcome = await fleet.serve(request)
        held = sum(node.outstanding for node in nodes)  # the primary still runs, for nothing
        ended_at_win = list(ended)
        await asyncio.sleep(0.15)
        return {"outcome": outcome, "request": request, "held": held, "won": ended_at_win, "nodes": nodes}

    result = _on_loop(scenario)
    request = result["request"]
    assert result["outcome"] is Outcome.COMPLETED and result["held"] == 1 and result["won"] == [0]
    sent, started, ended = request.times[:3]
    assert started - sent >= 0.005 and ended - sent < 0.1  # the copy's times
    assert request.service_s[0] == pytest.approx(0.025)  # alone: min(X1, d + X2) with the drawn services
    assert all(node.outstanding == 0 for node in result["nodes"])
    stage = recorder.stages[0]
    assert stage.hedges == 1 and stage.retries == 0
    assert stage.wasted_busy_s == pytest.approx(0.1, abs=0.05)


def test_a_losing_copy_still_queued_leaves_its_queue_unserved():
    config = {"servers": 2, "nodes": 2, "balance": "round_robin", "hedge_after_ms": 5, "latency": {"dist": "constant", "ms": 20}}
    recorder = _recorder(config)

    async def scenario(clock: Clock) -> dict[str, Any]:
        fleet, nodes, ended = _fleet(clock, config, recorder, Constant(20.0))
        blocker = clock.loop.create_task(nodes[0].serve(_timed(9, 0.2)))  # node 0's one thread, busy for 200 ms
        await asyncio.sleep(0)
        request = _timed(0, 0.03)
        outcome = await fleet.serve(request)  # queued on node 0 (round robin), hedged to node 1
        await asyncio.sleep(0)
        queued = nodes[0].queued
        await blocker
        return {"outcome": outcome, "request": request, "queued": queued, "ended": ended}

    result = _on_loop(scenario)
    assert result["outcome"] is Outcome.COMPLETED and result["queued"] == 0
    assert result["ended"] == [0, 9]  # the copy, then the blocker: the primary never reached a server
    assert result["request"].service_s[0] == pytest.approx(0.025)
    assert recorder.stages[0].hedges == 1 and recorder.stages[0].wasted_busy_s == 0


def test_a_hedge_on_an_idle_fleet_sends_a_copy_per_visit_and_every_request_completes():
    scenario = live_scenario(pipelines=["sequential"], warmup_s=0.0, **HEDGED, **{"stages.retrieval.hedge_after_ms": 2})
    check_live(scenario, "<test>")
    live, _ = run_live(scenario, build_samplers(scenario, "<test>"), None, lambda *a: None, lambda: False)
    summary = live["sequential"].summary()
    req, retrieval = summary["requests"], summary["stages"]["retrieval"]
    assert req["completed"] == req["offered"] > 60 and req["in_flight_at_end"] == 0
    assert retrieval["hedges"] == retrieval["visits"] == req["completed"]  # every visit outlived the hedge delay
    assert retrieval["wasted_busy_s"] > 0 and retrieval["retries"] == 0


@pytest.mark.parametrize("retries", [0, 3])
def test_retries_send_a_visit_rejected_by_a_full_node_to_another(retries):
    config = {"servers": 4, "nodes": 4, "balance": "random", "queue_limit": 0, "retries": retries, "latency": {"dist": "constant", "ms": 1}}
    recorder = _recorder(config)

    async def scenario(clock: Clock) -> list[Outcome]:
        fleet, _, _ = _fleet(clock, config, recorder)
        return await asyncio.gather(*(fleet.serve(_timed(i, 0.05)) for i in range(4)))  # one thread a node, 4 visits

    outcomes = _on_loop(scenario)
    rejected = outcomes.count(Outcome.REJECTED)
    if retries:  # a visit tries every node in turn: one is free
        assert rejected == 0 and recorder.stages[0].retries > 0
    else:
        assert rejected > 0 and recorder.stages[0].retries == 0


@pytest.mark.parametrize("retries", [0, 1])
def test_a_lost_node_fails_its_running_and_queued_visits_at_once_and_they_are_retried_elsewhere(retries):
    config = {"servers": 2, "nodes": 2, "balance": "round_robin", "retries": retries, "latency": {"dist": "constant", "ms": 1}}
    recorder = _recorder(config)

    async def scenario(clock: Clock) -> dict[str, Any]:
        fleet, nodes, ended = _fleet(clock, config, recorder)
        requests = [_timed(i, 0.2) for i in range(3)]  # nodes 0, 1, 0 in turn: 2 queues behind 0
        tasks = [clock.loop.create_task(fleet.serve(r)) for r in requests]
        await asyncio.sleep(0.01)
        loss = clock.loop.create_task(fleet.lose(1, 0.5))
        await asyncio.sleep(0)
        down = {"outstanding": nodes[0].outstanding, "live": list(fleet.policy.live)}
        outcomes = await asyncio.gather(*tasks)
        loss.cancel()
        return down | {"outcomes": outcomes, "requests": requests, "ended": ended}

    result = _on_loop(scenario)
    assert result["outstanding"] == 0 and result["live"] == [1]
    stage = recorder.stages[0]
    node_0, node_1 = stage.node_busy_window_s
    assert node_0 < 0.1 < node_1  # node 0's work stopped at the loss
    if retries:
        assert result["outcomes"] == [Outcome.COMPLETED] * 3 and stage.retries == 2
        assert result["ended"][0] == 1 and sorted(result["ended"]) == [0, 1, 2]  # both sent again to node 1, behind it
        assert all(r.times[1] >= 0.2 for r in (result["requests"][0], result["requests"][2]))
    else:
        assert result["outcomes"] == [Outcome.REJECTED, Outcome.COMPLETED, Outcome.REJECTED] and result["ended"] == [1]


@pytest.mark.parametrize("retries", [0, 2])
def test_a_node_lost_mid_run_conserves_requests_and_with_retries_rejects_none(retries):
    loss = {"kind": "node_loss", "at_s": 1.0, "stage": "retrieval", "nodes": 1, "duration_s": 1.5}
    scenario = live_scenario(pipelines=["sequential"], faults=[loss], **HEDGED, **{"stages.retrieval.retries": retries})
    check_live(scenario, "<test>")
    summary = run_live(scenario, build_samplers(scenario, "<test>"), None, lambda *a: None, lambda: False)[0]["sequential"].summary()
    req, retrieval = summary["requests"], summary["stages"]["retrieval"]
    assert req["offered"] == req["completed"] + req["rejected"] + req["timed_out"] + req["in_flight_at_end"] > 60
    lost, *others = retrieval["node_utilization"]
    assert lost < min(others)
    assert summary["faults"][0]["kind"] == "node_loss"
    if retries:
        assert req["rejected"] == 0
