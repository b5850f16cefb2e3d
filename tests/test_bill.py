"""The whole bill of a design: refresh workers' busy time against the refresh process's own arithmetic, compute split
into useful and wasted work, memory in bytes and the cost per hour as the scenario provisions it."""

from __future__ import annotations

import math
from typing import Any

import pytest

from aif_sim.app.plan import _bill
from aif_sim.metrics.bill import GIB
from aif_sim.scenario import Scenario, validate_scenario
from tests.simtools import make_scenario, negligible, overload_stages, run_summaries, scenario_dict, small_stages


def _nearline_scenario(refresh: dict, updates_per_s: float, items: int, publish_s: float | None = None, **extra: Any) -> Scenario:
    stages = small_stages({"servers": 8, "latency": {"dist": "gamma", "mean_ms": 5, "cv": 0.3}})
    nearline = {"item_updates_per_s": updates_per_s, "refresh": refresh, "model_publish_interval_s": publish_s}
    data = scenario_dict(stages, pipelines=["sequential", "aif"], qps=50, duration_s=60, warmup_s=0, nearline=nearline, **extra)
    data["traffic"]["items"]["count"] = items
    return validate_scenario(data, source="<test>")


def test_on_update_refresh_is_busy_the_updates_times_one_re_inference():
    """Workers serving item changes at λ = 200/s, 2 ms each (40% of one worker): busy ≈ λ x window x 2 ms, less the
    changes merged while waiting (rare at this load over 10^5 items)."""
    scenario = _nearline_scenario({"mode": "on_update", "workers": 1, "latency": {"dist": "constant", "ms": 2}}, 200, 100_000)
    metrics = run_summaries(scenario)
    busy = metrics["aif"]["compute"]["refresh:items"]["busy_s"]
    expected = 200 * 60 * 0.002  # 24 s; the Poisson count's sd is 1% of it
    assert busy == pytest.approx(expected, rel=0.04)
    assert busy <= expected * 1.04
    assert "refresh:items" not in metrics["sequential"]["compute"]  # the sequential design reads no item vectors
    per_request = metrics["aif"]["compute"]["refresh:items"]["ms_per_request"]
    assert per_request == pytest.approx(1000 * busy / metrics["aif"]["requests"]["completed"])


def test_periodic_sweeps_are_busy_the_catalogue_times_one_re_inference():
    """10^4 items re-inferred every 20 s by one worker at 1 ms an item: each pass is busy 10 s; passes start at 20 and
    40 s inside the 60 s window (the one at 60 s starts as the window ends): 20 s."""
    scenario = _nearline_scenario({"mode": "periodic", "interval_s": 20, "workers": 1, "latency": {"dist": "constant", "ms": 1}}, 0, 10_000)
    busy = run_summaries(scenario)["aif"]["compute"]["refresh:items"]["busy_s"]
    assert busy == pytest.approx(20.0, abs=1e-6)


def test_failed_requests_work_is_wasted_and_the_rest_useful():
    """Overloaded pre-ranking rejects and times out requests after the merger, retrieval and feature fetch worked for
    them: on plain one-queue stages the useful work (completed requests' service) and the failed requests' work add up
    to the stage's compute, and the failed share is wasted."""
    metrics = run_summaries(make_scenario(overload_stages(), pipelines=["sequential"], qps=1000, duration_s=5))["sequential"]
    requests = metrics["requests"]
    assert requests["rejected"] + requests["timed_out"] > 0
    for stage in ("retrieval", "feature_fetch"):
        pool = metrics["compute"][stage]
        assert pool["wasted_ms_per_request"] > 0
        assert pool["useful_ms_per_request"] + pool["wasted_ms_per_request"] == pytest.approx(pool["ms_per_request"], rel=1e-9)


def test_a_run_without_failures_wastes_nothing():
    stages = {"merger": negligible(), "retrieval": negligible(), "feature_fetch": negligible(), "prerank": negligible()}
    metrics = run_summaries(make_scenario(stages, pipelines=["sequential"], qps=100, duration_s=5))["sequential"]
    assert all(pool["wasted_ms_per_request"] == 0 for pool in metrics["compute"].values())


def test_memory_and_cost_per_hour_are_what_the_scenario_provisions():
    """Caches at capacity x entry bytes, the item index at items x vector bytes (twice under the consistent policy with
    model publication), servers, refresh workers and memory each at their price."""
    scenario = _nearline_scenario(
        {"mode": "on_update", "workers": 3, "latency": {"dist": "constant", "ms": 2}, "cost_per_server_hour": 2.5},
        0,
        20_000,
        caches={"user_vector": {"capacity": 1000, "entry_bytes": 4096}, "sim_features": {"capacity": 500}},
        publish_s=3600,  # the consistent policy: two index buffers during a rollout
        cost_per_gb_hour=0.5,
    )
    metrics = run_summaries(scenario)
    aif, sequential = metrics["aif"], metrics["sequential"]
    assert aif["memory_bytes"] == {
        "cache:user_vector": 1000 * 4096,
        "cache:sim_features": 500 * 8192,  # the documented default of a SIM-feature entry
        "index:items": 2 * 20_000 * 512,
    }
    assert sequential["memory_bytes"] == {"cache:sim_features": 500 * 8192}
    servers = {"sequential": 8 + 64 + 32 + 8, "aif": 8 + 64 + 8 + 32 + 8}
    for name, m in metrics.items():
        memory = sum(m["memory_bytes"].values()) / GIB * 0.5
        refresh = 3 * 2.5 if name == "aif" else 0.0
        assert m["cost_per_hour"] == pytest.approx(
            {"stages": servers[name], "refresh": refresh, "memory": memory, "total": servers[name] + refresh + memory}
        )


def test_plan_adds_refresh_workers_and_memory_to_the_servers_it_found():
    scenario = _nearline_scenario({"mode": "on_update", "workers": 2, "latency": {"dist": "constant", "ms": 2}}, 0, 10_000)
    bill = _bill(scenario, "aif", 40.0)
    memory = 10_000 * 512 / GIB * scenario.cost_per_gb_hour
    assert bill["refresh_workers"] == {"refresh:items": 2}
    assert bill["cost"] == pytest.approx({"stages": 40.0, "refresh": 2.0, "memory": memory})
    assert bill["cost_per_hour"] == pytest.approx(42.0 + memory)
    assert "cost_per_hour" not in _bill(scenario, "aif", None)  # an infeasible design has no cost
    assert math.isclose(scenario.cost_per_gb_hour, 0.134)
