"""Invariants of the request flow: conservation under overload, latency = critical path, and the
AIF fork-join against an independent Monte-Carlo of its critical path."""

from __future__ import annotations

import math
from unittest.mock import patch

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy.stats import norm

from aif_sim.app.run import build_samplers
from aif_sim.cli import main
from aif_sim.core import traffic
from aif_sim.core.traffic import request_blocks
from aif_sim.scenario.pipelines import shipped_designs
from aif_sim.sim.engine import PipelineSimulation
from tests.simtools import (
    MANY,
    RowSink,
    make_scenario,
    negligible,
    overload_stages,
    run_summaries,
    scenario_dict,
    single_queue_scenario,
    write_yaml,
)

ALL = ["sequential", "aif", "uic"]


def _measured_arrivals(scenario) -> int:
    """Arrivals at or after warm-up, counted from the traffic generator (independently of the engine)."""
    count = 0
    for block in request_blocks(scenario.traffic, scenario.duration_s, scenario.seed):
        count += int((block.arrival_s >= scenario.warmup_s).sum())
    return count


def _check_conservation(summaries: dict, sink: RowSink, scenario, expect_in_flight: bool | None) -> None:
    offered = _measured_arrivals(scenario)
    for pipeline, summary in summaries.items():
        req = summary["requests"]
        rows = [r for r in sink.rows if r[0] == pipeline]
        assert req["offered"] == offered, pipeline
        assert req["completed"] == len(rows), pipeline
        assert len({r[1] for r in rows}) == len(rows), f"{pipeline}: a request completed twice"
        assert all(r[2] >= scenario.warmup_s for r in rows)
        assert req["offered"] == req["completed"] + req["rejected"] + req["timed_out"] + req["in_flight_at_end"]
        assert req["in_flight_at_end"] >= 0
        assert req["rejected"] > 0 and req["timed_out"] > 0, (pipeline, req)
        assert req["completed"] > 0
        if expect_in_flight is True:
            assert req["in_flight_at_end"] > 0, (pipeline, req)
        elif expect_in_flight is False:
            assert req["in_flight_at_end"] == 0, (pipeline, req)
        window = scenario.duration_s - scenario.warmup_s  # completions inside the window: close to, not equal to, `completed`
        assert abs(summary["throughput_qps"] * window - req["completed"]) <= 0.05 * req["completed"] + 20
        for name, stage in summary["stages"].items():
            assert 0.0 <= stage["utilization"] <= 1.0 + 1e-9, (pipeline, name)


@pytest.mark.parametrize("drain_s,expect_in_flight", [(0.0, True), (10.0, False)])
def test_conservation_under_overload_every_pipeline(drain_s, expect_in_flight):
    scenario = make_scenario(overload_stages(), pipelines=ALL, qps=1000, duration_s=4.0, warmup_s=1.0, drain_s=drain_s, seed=5)
    sink = RowSink()
    summaries = run_summaries(scenario, sink)
    _check_conservation(summaries, sink, scenario, expect_in_flight)


def test_conservation_batching_stage_with_timeout():
    """Only the batching rtp stage is limited: its queue limit and timeout cause every loss."""
    stages = overload_stages()
    stages["user_inference"] = {"servers": MANY, "latency": {"dist": "gamma", "mean_ms": 5, "cv": 0.4}}
    scenario = make_scenario(stages, pipelines=["aif"], qps=1000, duration_s=4.0, warmup_s=1.0, drain_s=10.0, seed=6)
    sink = RowSink()
    summaries = run_summaries(scenario, sink)
    _check_conservation(summaries, sink, scenario, expect_in_flight=False)
    rtp = summaries["aif"]["stages"]["rtp"]
    # a batch of up to 4 every ~8 ms on one server: the server is nearly always busy
    assert rtp["utilization"] > 0.9
    # a queued request never waits (much) beyond the timeout before its batch starts
    assert rtp["wait_ms"]["max"] <= 20.0 + 1e-6
    # batches are used: throughput above one request per mean service time
    assert summaries["aif"]["throughput_qps"] > 1.5 * 1000 / 8


def test_batching_timeout_bounds_the_queue_wait_only():
    """timeout_ms bounds the wait in the stage's queue (README): a request that starts its batch at once
    never times out, however long the batch's service takes."""
    stages = {name: negligible() for name in ("merger", "retrieval", "user_inference", "item_fetch")}
    stages["rtp"] = {"servers": 10, "latency": {"dist": "constant", "ms": 10}, "batch": {"max_size": 1, "max_wait_ms": 0}, "timeout_ms": 5}
    summary = run_summaries(make_scenario(stages, pipelines=["aif"], qps=10, duration_s=10.0))["aif"]
    assert summary["stages"]["rtp"]["wait_ms"]["max"] == 0.0  # nobody waited
    assert summary["requests"]["timed_out"] == 0
    assert summary["requests"]["completed"] == summary["requests"]["offered"]


def test_last_stage_visits_equal_completions_under_overload():
    scenario = make_scenario(overload_stages(), pipelines=ALL, qps=1000, duration_s=4.0, warmup_s=1.0, drain_s=10.0, seed=5)
    for pipeline, summary in run_summaries(scenario).items():
        last = shipped_designs()[pipeline].stages[-1]
        assert summary["stages"][last]["visits"] == summary["requests"]["completed"], pipeline


def test_batch_of_one_behaves_like_an_unbatched_pool():
    """batch {max_size: 1, max_wait_ms: 0} with constant service is the plain pool, request for request."""
    stages = {name: negligible() for name in ("merger", "retrieval", "user_inference", "item_fetch")}
    plain = {"servers": 1, "latency": {"dist": "constant", "ms": 50}, "queue_limit": 5, "timeout_ms": 2}
    results = {}
    for label, rtp in (("plain", plain), ("batch", {**plain, "batch": {"max_size": 1, "max_wait_ms": 0}})):
        summary = run_summaries(make_scenario({**stages, "rtp": rtp}, pipelines=["aif"], qps=200, duration_s=10.0, seed=3))["aif"]
        results[label] = (summary["requests"], summary["latency_ms"])
    assert results["plain"][0]["completed"] > 100
    assert results["batch"] == results["plain"]


def test_batch_of_one_without_timeout_behaves_like_an_unbatched_pool():
    stages = {name: negligible() for name in ("merger", "retrieval", "user_inference", "item_fetch")}
    plain = {"servers": 2, "latency": {"dist": "constant", "ms": 12}, "queue_limit": 3}
    results = {}
    for label, rtp in (("plain", plain), ("batch", {**plain, "batch": {"max_size": 1, "max_wait_ms": 0}})):
        summary = run_summaries(make_scenario({**stages, "rtp": rtp}, pipelines=["aif"], qps=200, duration_s=10.0, seed=3))["aif"]
        results[label] = (summary["requests"], summary["latency_ms"], summary["stages"]["rtp"]["wait_ms"])
    assert results["plain"][0]["rejected"] > 0 and results["plain"][0]["completed"] > 1000
    assert results["batch"] == results["plain"]


def test_last_stage_visits_equal_completions_unbatched():
    """Without batching, the last stage books exactly the completed requests (timed-out ones never start)."""
    stages = overload_stages()
    stages["rtp"] = {"servers": 2, "latency": {"dist": "exponential", "mean_ms": 4}, "queue_limit": 20, "timeout_ms": 20}
    scenario = make_scenario(stages, pipelines=ALL, qps=1000, duration_s=4.0, warmup_s=1.0, drain_s=10.0, seed=5)
    for pipeline, summary in run_summaries(scenario).items():
        req = summary["requests"]
        assert req["rejected"] > 0 and req["timed_out"] > 0
        last = shipped_designs()[pipeline].stages[-1]
        assert summary["stages"][last]["visits"] == req["completed"], pipeline


def test_timeout_bounds_wait_and_queue_limit_bounds_queue():
    """In a plain pool, no request that started service waited longer than timeout_ms."""
    scenario = make_scenario(overload_stages(), pipelines=["sequential"], qps=1000, duration_s=3.0, drain_s=10.0, seed=8)
    prerank = run_summaries(scenario)["sequential"]["stages"]["prerank"]
    assert prerank["wait_ms"]["max"] <= 25.0 + 1e-6
    # 4 servers at capacity 400/s under 1000/s: the servers are busy nearly all the time
    assert prerank["utilization"] > 0.9


def test_no_losses_without_limits():
    stages = {k: {kk: vv for kk, vv in v.items() if kk not in ("queue_limit", "timeout_ms")} for k, v in overload_stages().items()}
    scenario = make_scenario(stages, pipelines=ALL, qps=200, duration_s=3.0, drain_s=10.0, seed=9)
    for _pipeline, summary in run_summaries(scenario).items():
        req = summary["requests"]
        assert req["rejected"] == req["timed_out"] == req["in_flight_at_end"] == 0
        assert req["completed"] == req["offered"] == _measured_arrivals(scenario)


# --- latency = critical path -----------------------------------------------------------------------
def test_latency_equals_critical_path_of_stage_times(tmp_path):
    """Per request, the end-to-end latency is the critical path of its stage times (each stage time
    includes its queueing): sum over steps, max within the parallel group. Never less, and no gaps."""
    stages = overload_stages()
    # moderate load: queueing everywhere that is limited, a few losses at most
    data = scenario_dict(stages, pipelines=ALL, qps=300, duration_s=3.0, warmup_s=0.5, seed=3)
    data["stages"]["merger"] = {"servers": 2, "latency": {"dist": "constant", "ms": 0.5}}
    path = write_yaml(tmp_path / "cp.yaml", data)
    out = tmp_path / "out"
    assert main([str(path), "--out", str(out), "--quiet"]) == 0
    columns = pq.read_table(out / "requests.parquet").to_pydict()
    n = len(columns["request_id"])
    assert n > 0
    checked = {p: 0 for p in ALL}
    for i in range(n):
        pipeline = columns["pipeline"][i]
        stage_ms = {s: columns[f"{s}_ms"][i] for s in shipped_designs()[pipeline].stages}
        assert all(v >= 0 and math.isfinite(v) for v in stage_ms.values()), (pipeline, stage_ms)
        for other in set(stages) - set(shipped_designs()[pipeline].stages):
            assert math.isnan(columns[f"{other}_ms"][i])
        assert stage_ms["merger"] >= 0.5 - 1e-9
        latency = columns["latency_ms"][i]
        names = shipped_designs()[pipeline].stages
        path_ms = sum(max(stage_ms[names[slot]] for slot in slots) for slots in shipped_designs()[pipeline].step_slots)
        assert latency >= path_ms - 1e-6
        assert latency == pytest.approx(path_ms, rel=1e-9, abs=1e-6), (pipeline, columns["request_id"][i])
        checked[pipeline] += 1
    assert all(count > 500 for count in checked.values()), checked


def test_parallel_group_time_is_the_slower_branch():
    """In AIF the (retrieval || user_inference) step takes max of the two, not their sum."""
    stages = {
        "merger": negligible(),
        "retrieval": {"servers": MANY, "latency": {"dist": "constant", "ms": 7}},
        "user_inference": {"servers": MANY, "latency": {"dist": "constant", "ms": 4}},
        "item_fetch": {"servers": MANY, "latency": {"dist": "constant", "ms": 2}},
        "rtp": {"servers": MANY, "latency": {"dist": "constant", "ms": 1}},
    }
    scenario = make_scenario(stages, pipelines=["aif"], qps=100, duration_s=2.0)
    summary = run_summaries(scenario)["aif"]
    assert summary["latency_ms"]["max"] == pytest.approx(10.0, rel=1e-6)
    assert summary["latency_ms"]["mean"] == pytest.approx(10.0, rel=1e-6)


# --- AIF fork-join vs Monte-Carlo ------------------------------------------------------------------
def _lognormal(rng, median, p99, n):
    sigma = math.log(p99 / median) / norm.ppf(0.99)
    return median * np.exp(sigma * rng.standard_normal(n))


def _gamma(rng, mean, cv, n):
    shape = 1 / cv**2
    return rng.gamma(shape, mean / shape, n)


def test_aif_fork_join_matches_monte_carlo():
    merger_ms = 0.5
    retrieval = (10.0, 25.0)  # lognormal median, p99
    user = (9.0, 0.4)  # gamma mean, cv: comparable to retrieval, so the max matters
    item = (1.5, 0.5)
    rtp_mean = 3.0
    stages = {
        "merger": {"servers": MANY, "latency": {"dist": "constant", "ms": merger_ms}},
        "retrieval": {"servers": MANY, "latency": {"dist": "lognormal", "median_ms": retrieval[0], "p99_ms": retrieval[1]}},
        "user_inference": {"servers": MANY, "latency": {"dist": "gamma", "mean_ms": user[0], "cv": user[1]}},
        "item_fetch": {"servers": MANY, "latency": {"dist": "gamma", "mean_ms": item[0], "cv": item[1]}},
        "rtp": {"servers": MANY, "latency": {"dist": "exponential", "mean_ms": rtp_mean}},  # unbatched
    }
    qps, duration_s = 2000.0, 15.0
    scenario = make_scenario(stages, pipelines=["aif"], qps=qps, duration_s=duration_s, warmup_s=0.0, seed=31)
    summary = run_summaries(scenario)["aif"]
    n = summary["requests"]["completed"]
    assert n == summary["requests"]["offered"] > 25_000
    for stage in stages:  # nothing ever waits on unlimited servers
        assert summary["stages"][stage]["wait_ms"]["max"] == 0.0

    # independent Monte-Carlo of the critical path, in batches of the simulation's sample size
    rng = np.random.default_rng(2024)
    batches = 40
    m = n * batches
    total = (
        merger_ms + np.maximum(_lognormal(rng, *retrieval, m), _gamma(rng, *user, m)) + _gamma(rng, *item, m) + rng.exponential(rtp_mean, m)
    )
    for key, q in (("mean", None), ("p50", 50.0), ("p99", 99.0)):
        reference = total.mean() if q is None else np.percentile(total, q)
        per_batch = total.reshape(batches, n)
        spread = per_batch.mean(axis=1) if q is None else np.percentile(per_batch, q, axis=1)
        # tolerance: 4 standard errors of the estimate at the simulation's sample size, plus the
        # histogram's bucket error (0.25%) for quantiles
        tol = 4 * spread.std(ddof=1) / reference + (0.0025 if q is not None else 0.0)
        assert tol < 0.05  # the check is meaningful: "a few percent" at most
        assert summary["latency_ms"][key] == pytest.approx(reference, rel=tol), (key, tol)


def _rtp_only(rtp: dict, qps: float, **kwargs) -> dict:
    stages = {name: negligible() for name in ("merger", "retrieval", "user_inference", "item_fetch")}
    return run_summaries(make_scenario({**stages, "rtp": rtp}, pipelines=["aif"], qps=qps, **kwargs))["aif"]


def test_throughput_never_exceeds_what_the_stages_can_serve():
    """One server of 10 ms offered 150/s serves at most 100/s: completions inside the window, over its length."""
    summary = run_summaries(
        single_queue_scenario({"dist": "constant", "ms": 10}, servers=1, qps=150, duration_s=10.0, warmup_s=2.0, drain_s=30.0)
    )["sequential"]
    assert summary["offered_qps"] > 140
    assert summary["requests"]["completed"] > 100 * 8  # warm-up backlog drains after the window: more completed than 100/s allows
    assert 99.0 <= summary["throughput_qps"] <= 100.0
    assert summary["stages"]["prerank"]["utilization"] == pytest.approx(1.0, abs=1e-9)


def test_batching_queue_limit_zero_rejects_nothing_while_servers_are_idle():
    """The plain pool's rule: a request is rejected only when every server is busy and queue_limit wait."""
    rtp = {"servers": 50, "latency": {"dist": "constant", "ms": 5}, "batch": {"max_size": 4, "max_wait_ms": 1}, "queue_limit": 0}
    summary = _rtp_only(rtp, qps=200, duration_s=5.0)
    assert summary["requests"]["rejected"] == 0
    assert summary["requests"]["completed"] == summary["requests"]["offered"] > 800


def test_batching_queue_limit_rejects_when_every_server_is_busy():
    """Two servers each busy 100 ms per batch of at most 2, offered 100/s: capacity 40/s, so the queue
    fills; with queue_limit 3 nobody waits behind more than 3 others, and the excess is rejected."""
    rtp = {"servers": 2, "latency": {"dist": "constant", "ms": 100}, "batch": {"max_size": 2, "max_wait_ms": 0}, "queue_limit": 3}
    summary = _rtp_only(rtp, qps=100, duration_s=10.0)
    req = summary["requests"]
    assert req["rejected"] > 0.4 * req["offered"]
    assert summary["throughput_qps"] <= 40.0 + 1e-9
    # an accepted request has at most 3 ahead of it, so it starts within the next two batches' service
    assert summary["stages"]["rtp"]["wait_ms"]["max"] <= 200.0 + 1e-6


def test_a_batch_member_left_at_its_deadline_is_not_a_visit_whatever_the_block_size():
    """A request that leaves at its deadline while its batch is in service has no visit there: the simpy engine's
    per-stage accounting is the same whether the requests are accounted in blocks of 3 or of 8192 (before, a batch
    ending before the request's block was accounted wrote its times in, and the count depended on the block)."""
    stages = overload_stages() | {"merger": {"servers": 8, "latency": {"dist": "exponential", "mean_ms": 0.5}}}
    scenario = make_scenario(stages, pipelines=["aif"], qps=1200, duration_s=1.5, warmup_s=0.2, drain_s=0.05, seed=3, deadline_ms=14)
    samplers = build_samplers(scenario, "<test>")
    rtp = []
    for chunk in (3, 8192):
        with patch.object(traffic, "CHUNK", chunk):
            rtp.append(PipelineSimulation(scenario, "aif", samplers).run().summary()["stages"]["rtp"])
    assert rtp[0]["visits"] == rtp[1]["visits"] > 0
    assert rtp[0]["latency_ms"]["max"] == rtp[1]["latency_ms"]["max"] <= 14
