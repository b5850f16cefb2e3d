"""Pipelines written in the scenario (the step language of `scenario.pipelines`): stages, caches and flows of the
user's own, on every engine, against queueing and cache theory and the run's invariants."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from aif_sim.app.run import build_samplers, simulate
from aif_sim.cli import main
from aif_sim.live.run import run_live
from aif_sim.scenario import load_scenario, validate_scenario
from aif_sim.scenario.pipelines import shipped_designs
from tests.simtools import MANY, negligible, run_summaries, scenario_dict, write_yaml
from tests.test_nearline_caches import _che_hit_ratio

ROOT = Path(__file__).resolve().parent.parent


def constant(ms: float, servers: int = MANY) -> dict[str, Any]:
    return {"servers": servers, "latency": {"dist": "constant", "ms": ms}}


def own(steps: list[Any], name: str = "own") -> dict[str, Any]:
    return {"name": name, "steps": steps}


def summaries(data: dict[str, Any], engine: str) -> dict[str, dict[str, Any]]:
    scenario = validate_scenario(data, "<test>")
    results = simulate(scenario, build_samplers(scenario, "<test>"), engine=engine)
    return {name: recorder.summary() for name, recorder in results.items()}


@pytest.mark.parametrize("engine", ["simpy", "compiled"])
def test_a_pipeline_of_constant_stages_takes_its_critical_path_exactly(engine):
    """Unlimited servers: no request waits, so each takes the sum over steps of the longest branch: 2 + max(5, 3, 4) +
    1 = 8 ms, whatever the stages are called."""
    stages = {"gateway": constant(2), "ann": constant(5), "i2i": constant(3), "embed": constant(4), "rank": constant(1)}
    steps = ["gateway", {"parallel": ["ann", "i2i", "embed"]}, "rank"]
    summary = summaries(scenario_dict(stages, pipelines=[own(steps)], qps=300, duration_s=5.0), engine)["own"]
    assert summary["requests"]["completed"] == summary["requests"]["offered"] > 1000
    assert summary["latency_ms"]["mean"] == pytest.approx(8.0, rel=1e-9)
    assert summary["latency_ms"]["max"] == pytest.approx(8.0, rel=0.005)  # the histogram's bucket
    assert summary["no_contention_ms"]["mean"] == pytest.approx(8.0, rel=1e-9)
    assert {name: stats["visits"] for name, stats in summary["stages"].items()} == dict.fromkeys(stages, summary["requests"]["completed"])


@pytest.mark.parametrize("engine", ["simpy", "compiled"])
def test_a_parallel_group_ends_with_its_longest_branch(engine):
    """Two exponential branches (means 2 and 6 ms) with no waiting: the step takes max(X, Y), whose mean is
    1/a + 1/b - 1/(a + b) = 6.5 ms and second moment 2/a^2 + 2/b^2 - 2/(a + b)^2; the simulated mean within 4
    standard errors."""
    stages = {"fast": {"servers": MANY, "latency": {"dist": "exponential", "mean_ms": 2}}}
    stages["slow"] = {"servers": MANY, "latency": {"dist": "exponential", "mean_ms": 6}}
    data = scenario_dict(stages, pipelines=[own([{"parallel": ["fast", "slow"]}])], qps=2000, duration_s=10.0, seed=4)
    summary = summaries(data, engine)["own"]
    a, b = 1 / 2, 1 / 6
    mean, second = 1 / a + 1 / b - 1 / (a + b), 2 / a**2 + 2 / b**2 - 2 / (a + b) ** 2
    n = summary["requests"]["completed"]
    error = summary["latency_ms"]["mean"] - mean
    assert abs(error) < 4 * math.sqrt((second - mean**2) / n), error


def test_a_cache_of_the_users_own_name_follows_the_che_approximation():
    """A call guarded by a cache named `embedding` (LRU, 200 of 20,000 Zipf(0.9) users): its hit ratio is Che's within
    0.02; the guarded stage is visited exactly on a miss, the others by every request."""
    stages = {"front": negligible(), "embed": negligible(), "score": negligible()}
    steps = ["front", {"cached": "embedding", "stage": "embed"}, "score"]
    data = scenario_dict(stages, pipelines=[own(steps)], qps=2000, duration_s=40.0, warmup_s=10.0, caches={"embedding": {"capacity": 200}})
    data["traffic"]["users"] = {"count": 20_000, "zipf_s": 0.9}
    summary = run_summaries(validate_scenario(data, "<test>"))["own"]
    cache, visits = summary["caches"]["embedding"], {name: s["visits"] for name, s in summary["stages"].items()}
    assert cache["hits"] + cache["misses"] == summary["requests"]["completed"] == visits["front"] == visits["score"]
    assert visits["embed"] == cache["misses"]
    assert cache["hit_ratio"] == pytest.approx(_che_hit_ratio(20_000, 0.9, 200), abs=0.02)


def test_a_shipped_design_is_a_pipeline_of_the_language():
    """The `aif` template written out by hand under another name runs exactly as the shipped name: one definition of
    the flow, in the same language as a user's pipeline."""
    stages = {
        "merger": constant(0.5, 8),
        "retrieval": {"servers": 16, "latency": {"dist": "lognormal", "median_ms": 5, "p99_ms": 12}},
        "user_inference": {"servers": 2, "latency": {"dist": "gamma", "mean_ms": 3, "cv": 0.4}, "queue_limit": 5},
        "item_fetch": {"servers": 8, "latency": {"dist": "gamma", "mean_ms": 1, "cv": 0.5}},
        "rtp": {"servers": 2, "latency": {"dist": "exponential", "mean_ms": 2}, "batch": {"max_size": 4, "max_wait_ms": 1}},
    }
    written = shipped_designs()["aif"].model_dump(mode="json", exclude_none=True)["steps"]
    data = scenario_dict(
        stages,
        pipelines=["aif", own(written, "mine")],
        qps=600,
        duration_s=5.0,
        caches={
            "user_vector": {"capacity": 50, "ttl_s": 1},
            "sim_features": {"capacity": 30, "miss_latency": {"dist": "constant", "ms": 2}},
        },
        nearline={"item_updates_per_s": 100, "refresh": {"mode": "on_update", "workers": 1, "latency": {"dist": "constant", "ms": 1}}},
    )
    result = run_summaries(validate_scenario(data, "<test>"))
    assert result["aif"]["requests"]["rejected"] > 0 and result["aif"]["caches"]["sim_features"]["misses"] > 0
    assert result["mine"] == result["aif"]


@pytest.mark.parametrize("engine", ["simpy", "compiled"])
def test_a_pipeline_of_its_own_conserves_requests_under_overload(engine):
    """Queue limits and timeouts on stages of a pipeline's own: every offered request is completed, rejected, timed out
    or in flight; none is faster than its critical path with no waiting."""
    stages = {
        "gateway": constant(0.5),
        "ann": {"servers": 4, "latency": {"dist": "exponential", "mean_ms": 8}, "queue_limit": 10, "timeout_ms": 30},
        "i2i": {"servers": MANY, "latency": {"dist": "gamma", "mean_ms": 2, "cv": 0.5}},
        "rank": {"servers": 2, "latency": {"dist": "exponential", "mean_ms": 3}, "queue_limit": 5, "timeout_ms": 20},
    }
    steps = ["gateway", {"parallel": ["ann", "i2i"]}, "rank"]
    data = scenario_dict(stages, pipelines=[own(steps)], qps=900, duration_s=4.0, warmup_s=1.0, drain_s=0.2, seed=9)
    summary = summaries(data, engine)["own"]
    requests = summary["requests"]
    assert requests["rejected"] > 0 and requests["timed_out"] > 0
    assert requests["offered"] == requests["completed"] + requests["rejected"] + requests["timed_out"] + requests["in_flight_at_end"]
    assert summary["latency_ms"]["mean"] >= summary["no_contention_ms"]["mean"]


def test_compare_and_sweep_take_the_scenarios_own_pipelines_by_name(tmp_path):
    """`--pipelines` names a pipeline the file defines, or a shipped design; a sweep runs each defined pipeline."""
    stages = {**{name: constant(1) for name in ("merger", "retrieval", "feature_fetch", "prerank")}, "rank": constant(2)}
    cascade = own(["merger", "retrieval", "feature_fetch", "prerank", "rank"], "cascade")
    path = write_yaml(tmp_path / "own.yaml", scenario_dict(stages, pipelines=["sequential", cascade], qps=50, duration_s=2.0))
    out = tmp_path / "compare"
    assert main(["compare", str(path), "--pipelines", "cascade", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["pipelines"]) == ["cascade"]
    assert summary["pipelines"]["cascade"]["latency_ms"]["mean"] == pytest.approx(6.0, rel=1e-9)
    chosen = load_scenario(path, [("pipelines", ["cascade", "sequential"], "--pipelines")])
    assert chosen.pipelines == ["cascade", "sequential"] and chosen.pipeline("cascade").stages[-1] == "rank"
    out = tmp_path / "sweep"
    argv = ["sweep", str(path), "--param", "stages.rank.latency.ms", "--values", "2,4", "--no-cache", "--jobs", "1", "--out", str(out)]
    assert main([*argv, "--quiet"]) == 0
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    means = {(row["pipeline"], row["value"]): row["mean_ms"] for row in rows}
    assert means[("cascade", 4)] - means[("cascade", 2)] == pytest.approx(2.0, rel=1e-6)
    assert means[("sequential", 4)] == means[("sequential", 2)] == pytest.approx(4.0, rel=1e-9)


def test_the_live_engine_runs_a_pipeline_of_its_own(tmp_path):
    """Stages and a cache of the user's names, a parallel group of three and the item vectors, live: requests 100 ms
    apart (each over before the next) make the same cache decisions as the DES, every request completes, and takes
    at least its constant stages' time; a model stage that reads the vectors itself, with no user side before it,
    runs too."""
    trace = tmp_path / "arrivals.csv"
    trace.write_text("t_s\n" + "\n".join(f"{0.1 * (i + 1):.1f}" for i in range(30)) + "\n")
    stages = {
        "gateway": constant(1, 4),
        "ann": {"servers": 8, "latency": {"dist": "lognormal", "median_ms": 4, "p99_ms": 10}},
        "i2i": {"servers": 8, "latency": {"dist": "constant", "ms": 2}},
        "user_inference": {"servers": 1, "latency": {"dist": "constant", "ms": 1}},  # the real user side, live
        "vectors": {"servers": 8, "latency": {"dist": "gamma", "mean_ms": 1.5, "cv": 0.5}},
        "rtp": {"servers": 1, "latency": {"dist": "constant", "ms": 1}},  # the real real-time part, live
        "rank": {"servers": 2, "latency": {"dist": "constant", "ms": 2}},
    }
    steps = [
        "gateway",
        {"parallel": ["ann", "i2i", {"cached": "embedding", "stage": "user_inference"}]},
        {"stage": "vectors", "vectors": "items"},
        "rtp",
        "rank",
    ]
    direct = own(["gateway", {"stage": "rtp", "vectors": "items"}], "direct")  # the real-time part with no user side before it
    arrival = {"kind": "trace", "path": str(trace)}
    data = scenario_dict(stages, pipelines=[own(steps), direct], duration_s=3.5, drain_s=2.0, seed=3, arrival=arrival)
    data["traffic"]["users"] = {"count": 10, "zipf_s": 1.0}
    data["caches"] = {"embedding": {"capacity": 5}}
    scenario = validate_scenario(data, "<test>")
    samplers = build_samplers(scenario, "<test>")
    des = simulate(scenario, samplers)["own"].summary()
    live_results, _ = run_live(scenario, samplers, None, lambda *a: None, lambda: False)
    live = live_results["own"].summary()
    assert live["requests"]["completed"] == live["requests"]["offered"] == 30
    assert live_results["direct"].summary()["requests"]["completed"] == 30
    assert live["caches"]["embedding"]["hits"] == des["caches"]["embedding"]["hits"] > 0
    assert live["caches"]["embedding"]["misses"] == des["caches"]["embedding"]["misses"] > 0
    assert live["latency_ms"]["mean"] >= 1 + 2 + 2  # gateway, the group (i2i's 2 ms at the least) and rank


@pytest.mark.parametrize("name", ["cascade", "default", "staleness_day"])
def test_the_scenario_as_run_is_a_scenario_with_its_pipelines_written_out(name):
    """A validated scenario's dump names each pipeline with its steps in full (a shipped design's, as it runs with
    the scenario's caches), and reads back as the same scenario."""
    scenario = load_scenario(ROOT / "scenarios" / f"{name}.yaml")
    dumped = scenario.model_dump(mode="json")
    assert [entry["name"] for entry in dumped["pipelines"]] == scenario.pipelines
    assert all(entry["steps"] for entry in dumped["pipelines"])
    assert validate_scenario(dumped, "<dump>") == scenario
