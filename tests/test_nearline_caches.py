"""Caches, nearline vectors and faults in the simulator, against theory and an independent LRU."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from cachetools import LRUCache
from scipy.optimize import brentq

from aif_sim.cli import main
from aif_sim.scenario import validate_scenario
from tests.simtools import negligible, run_summaries, scenario_dict, write_yaml

SEQUENTIAL = ("merger", "retrieval", "feature_fetch", "prerank")
AIF = ("merger", "retrieval", "user_inference", "item_fetch", "rtp")


def _scenario(pipelines, stages=None, **extra):
    names = set(SEQUENTIAL if "sequential" in pipelines else ()) | set(AIF if "aif" in pipelines else ())
    stages = {**{name: negligible() for name in names}, **(stages or {})}
    kwargs = {key: extra.pop(key) for key in ("qps", "duration_s", "warmup_s", "drain_s", "seed") if key in extra}
    data = scenario_dict(stages, pipelines=list(pipelines), **kwargs, **extra)
    return data


def _che_hit_ratio(count: int, s: float, capacity: int) -> float:
    p = np.arange(1, count + 1, dtype=float) ** -s
    p /= p.sum()
    t = brentq(lambda t: np.sum(1 - np.exp(-p * t)) - capacity, 1e-9, 1e12)
    return float(np.sum(p * (1 - np.exp(-p * t))))


@pytest.mark.parametrize("capacity", [200, 2000])
def test_sim_features_hit_ratio_matches_the_che_approximation(capacity):
    data = _scenario(["sequential"], qps=2000, duration_s=60.0, warmup_s=20.0, caches={"sim_features": {"capacity": capacity}})
    data["traffic"]["users"] = {"count": 20_000, "zipf_s": 0.9}
    summary = run_summaries(validate_scenario(data, "<test>"))["sequential"]
    cache = summary["caches"]["sim_features"]
    assert cache["hits"] + cache["misses"] == summary["requests"]["offered"]
    assert cache["hit_ratio"] == pytest.approx(_che_hit_ratio(20_000, 0.9, capacity), abs=0.02)


def test_per_request_hits_replay_through_an_independent_lru(tmp_path):
    """Zero-time stages: each request's entry is inserted at its arrival, so the simulated hits are those
    of an LRU fed the user sequence in arrival order."""
    data = _scenario(["sequential"], qps=500, duration_s=20.0, caches={"sim_features": {"capacity": 300}})
    data["traffic"]["users"] = {"count": 5000, "zipf_s": 1.0}
    out = tmp_path / "out"
    assert main([str(write_yaml(tmp_path / "s.yaml", data)), "--out", str(out), "--quiet"]) == 0
    table = pq.read_table(out / "requests.parquet").sort_by("request_id").to_pydict()
    lru: LRUCache = LRUCache(maxsize=300)
    expected = []
    for user in table["user"]:
        expected.append(user in lru)
        if user in lru:
            lru[user]  # a hit makes it most recently used
        else:
            lru[user] = True
    assert len(expected) > 9000 and 0.3 < np.mean(expected) < 0.9
    assert table["sim_features_hit"] == expected


def test_user_vector_hit_skips_user_inference_and_miss_adds_latency():
    stages = {"user_inference": {"servers": 1000, "latency": {"dist": "constant", "ms": 5}}}
    caches = {"user_vector": {"capacity": 100_000}, "sim_features": {"capacity": 0, "miss_latency": {"dist": "constant", "ms": 7}}}
    data = _scenario(["aif"], stages, qps=300, duration_s=10.0, caches=caches)
    data["traffic"]["users"] = {"count": 50, "zipf_s": 0.5}
    summary = run_summaries(validate_scenario(data, "<test>"))["aif"]
    user = summary["caches"]["user_vector"]
    # each of the 50 users misses once; a request arriving while its user's first inference runs misses too
    assert 50 <= user["misses"] < 70 and user["hits"] == summary["requests"]["offered"] - user["misses"]
    assert summary["stages"]["user_inference"]["visits"] == user["misses"]  # a hit skips the stage
    assert summary["caches"]["sim_features"]["misses"] == user["misses"]  # consulted only by user inference
    assert summary["stages"]["user_inference"]["latency_ms"]["p50"] == pytest.approx(12.0, rel=0.01)  # 5 ms + 7 ms miss
    assert summary["latency_ms"]["p50"] == pytest.approx(0.0, abs=1e-6)  # hits: the critical path is all zero-time stages


def test_periodic_instant_refresh_gives_mean_age_of_half_the_interval():
    nearline = {"refresh": {"mode": "periodic", "interval_s": 10, "workers": 8, "latency": {"dist": "constant", "ms": 0.001}}}
    data = _scenario(["aif"], qps=200, duration_s=200.0, warmup_s=20.0, nearline=nearline)
    data["traffic"]["items"] = {"count": 1000, "zipf_s": 0.9}
    staleness = run_summaries(validate_scenario(data, "<test>"))["aif"]["staleness"]
    assert staleness["item_vector_age_s"]["mean"] == pytest.approx(5.0, rel=0.05)
    assert staleness["item_vector_age_s"]["max"] <= 10.0 + 1e-6


def test_refresh_interval_zero_keeps_vectors_fresh():
    nearline = {"item_updates_per_s": 100, "refresh": {"mode": "periodic", "interval_s": 0}}
    data = _scenario(["aif"], qps=100, duration_s=10.0, nearline=nearline)
    staleness = run_summaries(validate_scenario(data, "<test>"))["aif"]["staleness"]
    assert staleness["item_vector_age_s"]["max"] == 0.0 and staleness["stale_fraction"] == 0.0


def test_on_update_refresh_slower_than_updates_builds_a_backlog_at_the_rate_difference(tmp_path):
    """1,000 updates/s over 10^7 items (almost never the same item twice) against one worker of 2 ms
    (500/s): the set of dirty items grows by ~500 per second."""
    nearline = {"item_updates_per_s": 1000, "refresh": {"mode": "on_update", "workers": 1, "latency": {"dist": "constant", "ms": 2}}}
    data = _scenario(["aif"], qps=50, duration_s=30.0, nearline=nearline)
    data["traffic"]["items"] = {"count": 10_000_000, "zipf_s": 0.0}
    out = tmp_path / "out"
    assert main([str(write_yaml(tmp_path / "s.yaml", data)), "--out", str(out), "--quiet"]) == 0
    rows = [r for r in csv.DictReader(open(out / "timeseries.csv")) if r["pipeline"] == "aif" and r["refresh_backlog"] not in ("", "nan")]
    t = np.array([float(r["t_s"]) for r in rows])
    backlog = np.array([float(r["refresh_backlog"]) for r in rows])
    slope = np.polyfit(t, backlog, 1)[0]
    assert slope == pytest.approx(500, rel=0.05)


def test_refresh_keeps_up_and_the_backlog_stays_small():
    nearline = {"item_updates_per_s": 200, "refresh": {"mode": "on_update", "workers": 2, "latency": {"dist": "constant", "ms": 2}}}
    data = _scenario(["aif"], qps=50, duration_s=30.0, nearline=nearline)
    staleness = run_summaries(validate_scenario(data, "<test>"))["aif"]["staleness"]
    assert staleness["refresh_backlog_max"] < 20
    assert staleness["stale_fraction"] < 0.01


@pytest.mark.parametrize("policy", ["latest", "consistent"])
def test_version_drift_only_under_the_latest_policy(policy):
    """Rollouts take 5 s (1,000 items at 200/s) at 10, 20, ..., 50 s: under `latest`, a candidate read
    during a rollout is of the old version with probability 1 - (time into the rollout) / 5 s (uniform
    popularity), so over the 60 s the mismatch share is 25/60 x 1/2."""
    nearline = {
        "refresh": {"mode": "on_update", "workers": 1, "latency": {"dist": "constant", "ms": 5}},
        "model_publish_interval_s": 10,
        "version_policy": policy,
    }
    data = _scenario(["aif"], qps=200, duration_s=60.0, nearline=nearline)
    data["traffic"]["items"] = {"count": 1000, "zipf_s": 0.0}
    staleness = run_summaries(validate_scenario(data, "<test>"))["aif"]["staleness"]
    if policy == "latest":
        assert staleness["version_mismatch_fraction"] == pytest.approx(25 / 60 / 2, abs=0.02)
        assert staleness["double_buffered_s"] == 0
        assert staleness["index_peak_bytes"] == staleness["index_bytes"] == 1000 * 512
    else:
        assert staleness["version_mismatch_fraction"] == 0.0
        assert staleness["double_buffered_s"] == pytest.approx(25, abs=1)  # the seconds of the five rollouts
        assert staleness["index_peak_bytes"] == 2 * staleness["index_bytes"] == 2 * 1000 * 512  # two buffers held


def test_cache_flush_drops_the_hit_ratio_it_recovers_and_no_request_is_lost(tmp_path):
    caches = {"sim_features": {"capacity": 1000, "miss_latency": {"dist": "constant", "ms": 20}}}
    stages = {"feature_fetch": {"servers": 40, "latency": {"dist": "constant", "ms": 2}}}
    data = _scenario(
        ["sequential"],
        stages,
        qps=1000,
        duration_s=40.0,
        warmup_s=5.0,
        caches=caches,
        faults=[{"kind": "cache_flush", "at_s": 20, "cache": "sim_features"}],
    )
    data["traffic"]["users"] = {"count": 1000, "zipf_s": 0.5}  # all fit: before the flush, (almost) every lookup hits
    out = tmp_path / "out"
    assert main([str(write_yaml(tmp_path / "s.yaml", data)), "--out", str(out), "--quiet"]) == 0
    rows = {int(r["t_s"]): r for r in csv.DictReader(open(out / "timeseries.csv"))}
    ratio = {t: float(r["sim_features_hit_ratio"]) for t, r in rows.items() if r["sim_features_hit_ratio"] not in ("", "nan")}
    assert ratio[19] > 0.99 and ratio[20] < 0.5 and ratio[30] > 0.99
    summary = json.loads((out / "summary.json").read_text())["pipelines"]["sequential"]
    req = summary["requests"]
    assert req["offered"] == req["completed"] + req["rejected"] + req["timed_out"] + req["in_flight_at_end"] == req["completed"]
    storm = summary["faults"][0]
    assert storm["p99_before_ms"] == pytest.approx(2.0, rel=0.01) and storm["peak_p99_ms"] == pytest.approx(22.0, rel=0.01)
    assert storm["recovery_s"] is not None and 1 <= storm["recovery_s"] < 15


def test_stage_slowdown_and_nearline_outage():
    stages = {"rtp": {"servers": 100, "latency": {"dist": "constant", "ms": 2}}}
    nearline = {"item_updates_per_s": 100, "refresh": {"mode": "on_update", "workers": 1, "latency": {"dist": "constant", "ms": 1}}}
    faults = [
        {"kind": "stage_slowdown", "at_s": 10, "stage": "rtp", "factor": 5, "duration_s": 5},
        {"kind": "nearline_outage", "at_s": 20, "duration_s": 10},
    ]
    data = _scenario(["aif"], stages, qps=100, duration_s=40.0, nearline=nearline, faults=faults)
    data["traffic"]["items"] = {"count": 10_000_000, "zipf_s": 0.0}
    summary = run_summaries(validate_scenario(data, "<test>"))["aif"]
    slow, outage = summary["faults"]
    assert slow["peak_p99_ms"] == pytest.approx(10.0, rel=0.01) and slow["p99_before_ms"] == pytest.approx(2.0, rel=0.01)
    assert slow["recovery_s"] == pytest.approx(6, abs=1)
    assert summary["staleness"]["refresh_backlog_max"] == pytest.approx(1000, rel=0.15)  # 10 s of 100 updates/s
    # the slowdown is the requests' own work, not waiting: no-contention sees it
    assert summary["no_contention_ms"]["p99"] == pytest.approx(summary["latency_ms"]["p99"], rel=0.01)


def test_uic_user_embedding_age_follows_its_refresh():
    """UIC reads the user's precomputed interest embedding at feature_fetch; refreshed every 10 s, its mean
    age is 5 s, and behaviour events after the last refresh make it stale."""
    nearline = {
        "user_events_per_s": 200,
        "user_refresh": {"mode": "periodic", "interval_s": 10, "workers": 4, "latency": {"dist": "constant", "ms": 0.001}},
    }
    stages = {"light_prerank": negligible()}
    data = _scenario(["uic"], stages, qps=100, duration_s=200.0, warmup_s=20.0, nearline=nearline)
    data["stages"].update({name: negligible() for name in ("merger", "retrieval", "feature_fetch")})
    data["traffic"]["users"] = {"count": 1000, "zipf_s": 1.0}
    staleness = run_summaries(validate_scenario(data, "<test>"))["uic"]["staleness"]
    assert staleness["user_vector_age_s"]["mean"] == pytest.approx(5.0, rel=0.05)
    assert staleness["vectors_measured"] > 15_000 and 0.1 < staleness["stale_fraction"] < 0.9
