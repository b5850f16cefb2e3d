"""Shadow scoring: the real model scores simulated AIF requests with the item vectors the system had
(their times and versions) and with fresh ones."""

from __future__ import annotations

import numpy as np
import pytest

from aif_sim.app.quality import score_shadow_samples
from aif_sim.app.run import build_samplers, simulate
from aif_sim.cli import main
from aif_sim.scenario import validate_scenario
from tests.simtools import negligible, scenario_dict


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("aif")
    assert main(["train", "--model", "aif", "--preset", "tiny", "--seed", "0", "--out", str(out)]) == 0
    return out / "checkpoint.pt"


def _shadow_run(checkpoint, qps: float, hours: float, seed: int, nearline: dict, candidates: int, **extra) -> dict:
    """An AIF run of zero-time stages in which every request (up to 300) is shadow-scored; its METRICS block, and
    its recorder for the samples. `extra`: more scenario sections; `users`/`items` replace the populations."""
    stages = {name: negligible() for name in ("merger", "retrieval", "user_inference", "item_fetch", "rtp")}
    model = {"checkpoint": str(checkpoint), "shadow_rate": 1.0, "shadow_candidates": candidates, "shadow_requests": 300}
    populations = {key: extra.pop(key) for key in ("users", "items") if key in extra}
    data = scenario_dict(stages, pipelines=["aif"], qps=qps, duration_s=hours * 3600.0, seed=seed, nearline=nearline, model=model, **extra)
    data["traffic"].update(populations)
    scenario = validate_scenario(data, "<test>")
    results = simulate(scenario, build_samplers(scenario, "<test>"))
    score_shadow_samples(scenario, results)
    return results["aif"]


def _quality(checkpoint, interval_s: float) -> dict:
    """Six simulated hours of AIF at 0.02 QPS; every request is shadow-scored on 300 candidates."""
    refresh = {"mode": "periodic", "interval_s": interval_s, "workers": 8, "latency": {"dist": "constant", "ms": 0.001}}
    recorder = _shadow_run(checkpoint, 0.02, 6, 3, {"refresh": refresh}, 300, items={"count": 100_000, "zipf_s": 0.9})
    return recorder.summary()["quality"]


def test_stale_vectors_cost_quality_and_the_cost_grows_with_the_interval(checkpoint):
    fresh_always = _quality(checkpoint, 0)
    assert fresh_always["scored_requests"] > 300 * 0.6
    assert fresh_always["stale"] == fresh_always["fresh"]  # vectors made when read: identical scores
    losses = []
    for interval in (3600, 6 * 3600):
        quality = _quality(checkpoint, interval)
        assert quality["fresh"] == fresh_always["fresh"]  # the same requests, candidates and labels
        losses.append(quality["fresh"]["gauc"] - quality["stale"]["gauc"])
    assert 0 < losses[0] < losses[1], losses


def test_on_update_refresh_that_follows_the_world_keeps_vectors_fresh(checkpoint):
    """With item updates taken from the world's own item changes, prompt on-update refresh re-infers every changed
    item at once: the shadow-scored vectors match fresh ones; without refresh they grow stale."""
    quality, staleness = {}, {}
    for label, refresh in (("prompt", {"mode": "on_update", "workers": 8, "latency": {"dist": "constant", "ms": 0.001}}), ("none", None)):
        nearline = {"updates_from": "world", **({"refresh": refresh} if refresh else {})}
        summary = _shadow_run(checkpoint, 0.02, 6, 3, nearline, 300, items={"count": 100_000, "zipf_s": 0.9}).summary()
        quality[label], staleness[label] = summary["quality"], summary["staleness"]
    assert staleness["prompt"]["stale_fraction"] < 0.001 < staleness["none"]["stale_fraction"]
    assert quality["prompt"]["stale"]["gauc"] == pytest.approx(quality["prompt"]["fresh"]["gauc"], abs=1e-4)
    prompt_loss = abs(quality["prompt"]["fresh"]["gauc"] - quality["prompt"]["stale"]["gauc"])
    none_loss = quality["none"]["fresh"]["gauc"] - quality["none"]["stale"]["gauc"]
    assert none_loss > max(0.0005, 5 * prompt_loss), (none_loss, prompt_loss)


def test_a_cached_user_vector_is_scored_at_its_age(checkpoint):
    """A request that took its user vector from the user-vector cache is shadow-scored with the user side as it
    was when that vector was made."""
    nearline = {"refresh": {"mode": "periodic", "interval_s": 0}}
    recorder = _shadow_run(
        checkpoint, 0.05, 2, 5, nearline, 200, caches={"user_vector": {"capacity": 10_000}}, users={"count": 20, "zipf_s": 1.0}
    )
    samples = recorder.shadow_samples
    cached = [s for s in samples if s.user_vector_s is not None]
    assert len(cached) > 100 and all(s.user_vector_s < s.t_s for s in cached)
    assert sum(s.t_s - s.user_vector_s for s in cached) / len(cached) > 600  # vectors made long before use
    assert recorder.summary()["quality"]["scored_requests"] == len(samples)


def test_the_compiled_engine_takes_the_simpy_engines_shadow_samples(checkpoint):
    """Shadow sampling with item updates, periodic refresh, a cached user vector and a micro-batched user side:
    the compiled engine takes the same requests, candidates, vector times and versions and user-vector ages."""
    stages = {
        name: {"servers": 2, "latency": {"dist": "exponential", "mean_ms": 2}} for name in ("merger", "retrieval", "item_fetch", "rtp")
    }
    stages["user_inference"] = {"servers": 1, "latency": {"dist": "exponential", "mean_ms": 3}, "batch": {"max_size": 4, "max_wait_ms": 2}}
    model = {"checkpoint": str(checkpoint), "shadow_rate": 0.3, "shadow_candidates": 100, "shadow_requests": 60}
    refresh = {"mode": "periodic", "interval_s": 4, "workers": 2, "latency": {"dist": "constant", "ms": 1}}
    nearline = {"item_updates_per_s": 50, "refresh": refresh}
    caches = {"user_vector": {"capacity": 200, "ttl_s": 3}}
    data = scenario_dict(stages, pipelines=["aif"], qps=30, duration_s=20, seed=4, nearline=nearline, model=model, caches=caches)
    scenario = validate_scenario(data, "<test>")
    samplers = build_samplers(scenario, "<test>")
    simpy = simulate(scenario, samplers, engine="simpy")["aif"].shadow_samples
    compiled = simulate(scenario, samplers, engine="compiled")["aif"].shadow_samples
    assert len(simpy) == 60 and any(s.user_vector_s is not None for s in simpy)
    assert len(compiled) == len(simpy)
    for mine, theirs in zip(compiled, simpy):
        assert (mine.user, mine.t_s, mine.serving_version, mine.user_vector_s) == (
            theirs.user,
            theirs.t_s,
            theirs.serving_version,
            theirs.user_vector_s,
        )
        for field in ("items", "made_s", "versions"):
            a, b = getattr(mine, field), getattr(theirs, field)
            assert a.dtype == b.dtype and np.array_equal(a, b), field
