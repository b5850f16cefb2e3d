"""Caches keyed by request, and caches consulted at several steps of a pipeline: a request-keyed cache misses at a
request's first lookup and hits at its later ones once the call that missed has put the entry in (the branches of a
parallel group look up together, so they all miss), its entries leave when the request ends, and its memory is the
entries held on average (Little's law); every lookup counts. The compiled engine gives simpy's results request for
request."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from aif_sim.app.run import build_samplers, simulate
from aif_sim.cli import main
from aif_sim.compiled.support import unsupported
from aif_sim.core.cache import RequestCache
from aif_sim.scenario import validate_scenario
from aif_sim.scenario.schema import OTHER_ENTRY_BYTES
from tests.simtools import MANY, scenario_dict, write_yaml
from tests.test_compiled import assert_equivalent

MISS = {"dist": "constant", "ms": 2}


def _stage(ms: float = 1.0, servers: int = MANY, dist: str = "constant") -> dict[str, Any]:
    latency = {"dist": "constant", "ms": ms} if dist == "constant" else {"dist": "exponential", "mean_ms": ms}
    return {"servers": servers, "latency": latency}


def _scenario(steps: list[Any], stages: dict[str, Any], caches: dict[str, Any], qps: float = 400.0, **extra: Any):
    data = scenario_dict(stages, pipelines=[{"name": "mine", "steps": steps}], qps=qps, duration_s=4.0, caches=caches, **extra)
    return validate_scenario(data, "<test>")


def test_the_request_cache_policy():
    """A request misses until it has put its entry in, then hits; other requests never see it; released with its hold."""
    cache = RequestCache()
    assert not cache.lookup(7, 0.0)
    cache.insert(7, 0.002)
    cache.insert(7, 0.003)  # a second branch that missed too: the first entry stays
    assert cache.lookup(7, 0.004) and not cache.lookup(8, 0.004)
    assert (cache.hits, cache.misses, len(cache)) == (1, 2, 1)
    assert cache.release(7, 0.010) and not cache.release(8, 0.010)
    assert len(cache) == 0 and cache.held_s == pytest.approx(0.008)


def test_a_later_step_hits_what_an_earlier_one_fetched():
    """Pre-ranking reads the item features through a request-keyed cache (a miss: 2 ms more), rank reads them again
    (a hit): every request misses once and hits once, rank never pays the miss, and the entry is held for exactly
    rank's 1 ms, so the cache holds qps x 1 ms entries on average (Little's law)."""
    stages = {"merger": _stage(0.5), "prerank": _stage(3.0, dist="exponential"), "rank": _stage(1.0)}
    steps = ["merger", {"stage": "prerank", "reads": "features"}, {"stage": "rank", "reads": "features"}]
    scenario = _scenario(steps, stages, {"features": {"key": "request", "miss_latency": MISS}})
    recorder = assert_equivalent(scenario, "mine")
    summary = recorder.summary()
    completed = summary["requests"]["completed"]
    assert summary["requests"]["offered"] == completed > 1000
    assert summary["caches"]["features"] == {"hits": completed, "misses": completed, "hit_ratio": 0.5, "evictions": 0}
    cache = recorder.caches["features"]
    assert isinstance(cache, RequestCache) and len(cache) == 0  # every entry left with its request
    assert cache.held_s == pytest.approx(completed * 0.001, rel=1e-9)
    held = cache.held_s / recorder.end_s
    assert summary["memory_bytes"]["cache:features"] == round(held * OTHER_ENTRY_BYTES)
    assert held == pytest.approx(400 * 0.001, rel=0.1)  # the arrival rate times the 1 ms hold


def test_parallel_branches_all_miss_and_a_later_step_hits():
    """Two branches of one parallel group read through a request-keyed cache, then a third step does: the branches
    look up together when the step starts (two misses), the third hits. Hit ratio 1/3 over lookups, on both engines."""
    stages = {"a": _stage(2.0, servers=4, dist="exponential"), "b": _stage(1.0, servers=4, dist="exponential"), "c": _stage(0.5)}
    steps = [{"parallel": [{"stage": "a", "reads": "features"}, {"stage": "b", "reads": "features"}]}, {"stage": "c", "reads": "features"}]
    scenario = _scenario(steps, stages, {"features": {"key": "request", "miss_latency": MISS}}, qps=800.0)
    summary = assert_equivalent(scenario, "mine").summary()
    completed = summary["requests"]["completed"]
    assert summary["caches"]["features"]["misses"] == 2 * completed and summary["caches"]["features"]["hits"] == completed


def test_a_request_keyed_guard_skips_the_second_call():
    """A call guarded by a request-keyed cache is made once per request: the second guarded call, later in the
    pipeline, is skipped (a hit), and a request that failed before putting the entry in has none to find."""
    stages = {"fetch": {**_stage(2.0, servers=2, dist="exponential"), "queue_limit": 2}, "prerank": _stage(1.0), "refetch": _stage(5.0)}
    steps = [{"cached": "fetched", "stage": "fetch"}, "prerank", {"cached": "fetched", "stage": "refetch"}]
    scenario = _scenario(steps, stages, {"fetched": {"key": "request"}}, qps=800.0)
    summary = assert_equivalent(scenario, "mine").summary()
    completed, rejected = summary["requests"]["completed"], summary["requests"]["rejected"]
    assert rejected > 0  # fetch is overloaded: the rejected requests end there, before the second lookup
    assert summary["stages"]["refetch"]["visits"] == 0
    assert summary["caches"]["fetched"]["hits"] == completed


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_pipelines_with_repeated_lookups_give_the_simpy_results(seed):
    """Pipelines of 3 to 5 steps, some parallel, whose calls consult request-keyed caches at random (guards and
    read-throughs, several times each), over queueing, batching and overloaded stages: compiled equals simpy."""
    rng = np.random.default_rng(seed)
    steps: list[Any] = []
    stages: dict[str, Any] = {}
    for k in range(int(rng.integers(3, 6))):
        branches = []
        for b in range(int(rng.choice([1, 1, 2, 3]))):
            name = f"s{k}_{b}"
            stage = _stage(float(rng.uniform(0.3, 4.0)), servers=int(rng.integers(1, 6)), dist="exponential")
            if rng.random() < 0.3:
                stage["queue_limit"] = int(rng.integers(0, 6))
            elif rng.random() < 0.3:
                stage["batch"] = {"max_size": int(rng.integers(1, 5)), "max_wait_ms": float(rng.uniform(0.1, 2.0))}
            stages[name] = stage
            call: dict[str, Any] = {"stage": name}
            if rng.random() < 0.5:
                call["reads"] = str(rng.choice(["f", "g"]))
            if rng.random() < 0.4:
                call["cached"] = "h" if call.get("reads") == "f" else str(rng.choice(["f", "h"]))
            branches.append(call)
        steps.append(branches[0] if len(branches) == 1 else {"parallel": branches})
    caches = {name: {"key": "request", "miss_latency": {"dist": "exponential", "mean_ms": 1.0}} for name in ("f", "g", "h")}
    used = {c for step in steps for branch in step.get("parallel", [step]) for c in (branch.get("reads"), branch.get("cached")) if c}
    scenario = _scenario(steps, stages, {name: caches[name] for name in used}, qps=600.0, seed=seed)
    assert_equivalent(scenario, "mine", chunk=64)


def test_a_user_keyed_cache_consulted_at_two_steps():
    """One user, a user-keyed cache read at two steps: a request's second lookup finds what its first one's call put
    in. simpy runs it; the compiled engine says it does not model it, and `auto` runs simpy. The requests file has
    a column per lookup."""
    stages = {"a": _stage(1.0), "b": _stage(1.0)}
    steps = [{"stage": "a", "reads": "profile"}, {"stage": "b", "reads": "profile"}]
    data = scenario_dict(stages, pipelines=[{"name": "mine", "steps": steps}], qps=100, duration_s=2.0)
    data["caches"] = {"profile": {"capacity": 10, "miss_latency": MISS}}
    data["traffic"]["users"] = {"count": 1, "zipf_s": 1.0}
    scenario = validate_scenario(data, "<test>")
    assert "user-keyed cache consulted at several steps (profile)" in unsupported(scenario, "mine", build_samplers(scenario, "<test>"))
    summary = simulate(scenario, build_samplers(scenario, "<test>"))["mine"].summary()
    counts = summary["caches"]["profile"]
    assert counts["hits"] + counts["misses"] == 2 * summary["requests"]["completed"]
    assert counts["misses"] < 4  # only the lookups before the first request's entry went in (3 ms after it came)


def test_the_requests_file_has_a_column_per_lookup(tmp_path):
    """A cache consulted at two steps writes a column per lookup, `CACHE@STAGE_hit`: a miss at the first, a hit at the
    second."""
    stages = {"a": _stage(1.0), "b": _stage(1.0)}
    steps = [{"stage": "a", "reads": "features"}, {"stage": "b", "reads": "features"}]
    data = scenario_dict(stages, pipelines=[{"name": "mine", "steps": steps}], qps=100, duration_s=1.0)
    data["caches"] = {"features": {"key": "request", "miss_latency": MISS}}
    out = tmp_path / "out"
    assert main([str(write_yaml(tmp_path / "s.yaml", data)), "--out", str(out), "--quiet"]) == 0
    table = pq.read_table(out / "requests.parquet").to_pydict()
    assert not any(table["features@a_hit"]) and all(table["features@b_hit"]) and len(table["features@b_hit"]) > 50
