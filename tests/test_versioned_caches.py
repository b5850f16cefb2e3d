"""Versioned caches: a cache whose entries are model output of the serving version (by default one guarding the
user side) is dropped at each switch of the serving model version, whatever its name, on every engine alike;
one that holds features is not, unless the scenario says `versioned: true`."""

from __future__ import annotations

from typing import Any

import pytest

from aif_sim.app.run import build_samplers, simulate
from aif_sim.scenario import validate_scenario
from tests.simtools import negligible, scenario_dict

AIF = ("merger", "retrieval", "user_inference", "item_fetch", "rtp")


def _published(cache: str, spec: dict[str, Any], reads: bool = False, policy: str = "latest") -> dict[str, Any]:
    """50 users, a cache that holds them all guarding the user side (or, `reads`, read through by it), a new model
    version every 10 s rolled out at once (no refresh workers)."""
    stages = {name: negligible() for name in AIF}
    stages["user_inference"] = {"servers": 1000, "latency": {"dist": "constant", "ms": 5}}
    user_side = {"stage": "user_inference", "reads": cache} if reads else {"cached": cache, "stage": "user_inference"}
    pipeline = {
        "name": "mine",
        "steps": ["merger", {"parallel": ["retrieval", user_side]}, {"stage": "item_fetch", "vectors": "items"}, "rtp"],
    }
    data = scenario_dict(stages, pipelines=[pipeline], qps=300, duration_s=30.0, caches={cache: {"capacity": 100_000, **spec}})
    data["traffic"]["users"] = {"count": 50, "zipf_s": 0.5}
    data["nearline"] = {"model_publish_interval_s": 10, "version_policy": policy}
    return data


def _misses(data: dict[str, Any], cache: str) -> int:
    """The cache's misses, the same on the simpy and the compiled engine."""
    scenario = validate_scenario(data, "<test>")
    samplers = build_samplers(scenario, "<test>")
    counts = [simulate(scenario, samplers, engine=engine)["mine"].summary()["caches"][cache] for engine in ("simpy", "compiled")]
    assert counts[0] == counts[1]
    return counts[0]["misses"]


@pytest.mark.parametrize("policy", ["latest", "consistent"])
@pytest.mark.parametrize("cache", ["user_vector", "interest_vectors"])
def test_a_cache_guarding_the_user_side_is_dropped_at_each_version_switch(cache, policy):
    """Each of the 50 users misses once at the start and once after each of the two switches (10 s, 20 s): about
    150 misses (a request arriving while its user's inference runs misses too), whatever the cache's name."""
    assert 150 <= _misses(_published(cache, {}, policy=policy), cache) < 210


def test_versioned_false_keeps_the_entries_across_switches():
    """The same cache declared `versioned: false`: each user misses about once in the whole run."""
    assert 50 <= _misses(_published("interest_vectors", {"versioned": False}), "interest_vectors") < 70


def test_a_feature_cache_is_kept_unless_declared_versioned():
    """A read-through cache holds features, not model output: kept across switches (about 50 misses), dropped at
    each (about 150) when declared `versioned: true`."""
    assert 50 <= _misses(_published("features", {"miss_latency": {"dist": "constant", "ms": 1}}, reads=True), "features") < 70
    declared = {"miss_latency": {"dist": "constant", "ms": 1}, "versioned": True}
    assert 150 <= _misses(_published("features", declared, reads=True), "features") < 210


def test_which_caches_are_versioned():
    """By default the caches guarding a stage whose result is model output (user_inference); `versioned` overrides."""
    data = _published("mine", {})
    data["caches"] |= {"sim_features": {"capacity": 10}, "scores": {"capacity": 10, "versioned": True}, "user_vector": {"capacity": 10}}
    data["pipelines"].append("aif")
    assert validate_scenario(data, "<test>").versioned_caches == ["mine", "scores", "user_vector"]
    data["caches"]["user_vector"]["versioned"] = False
    assert validate_scenario(data, "<test>").versioned_caches == ["mine", "scores"]
