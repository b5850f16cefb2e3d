"""The live engine: short real runs, checked against invariants, against the DES, and under a blocked loop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from aif_sim.app.run import build_samplers, simulate
from aif_sim.cli import main
from aif_sim.live import stages as live_stages
from aif_sim.live.run import run_live
from aif_sim.scenario import Scenario, validate_scenario
from tests.simtools import RowSink, write_yaml

ROOT = Path(__file__).resolve().parents[2]


def live_dict(**changes: Any) -> dict[str, Any]:
    """A small scenario every pipeline of which runs live in a few seconds on 2 cores."""
    data: dict[str, Any] = {
        "name": "live-test",
        "seed": 3,
        "duration_s": 3.0,
        "warmup_s": 0.5,
        "drain_s": 2.0,
        "pipelines": ["sequential", "aif", "uic"],
        "traffic": {
            "arrival": {"kind": "poisson", "qps": 40},
            "users": {"count": 500, "zipf_s": 1.0},
            "items": {"count": 2000, "zipf_s": 0.9},
            "candidates": 100,
        },
        "stages": {
            "merger": {"servers": 4, "latency": {"dist": "constant", "ms": 1}},
            "retrieval": {"servers": 16, "latency": {"dist": "lognormal", "median_ms": 4, "p99_ms": 10}},
            "feature_fetch": {"servers": 16, "latency": {"dist": "gamma", "mean_ms": 2, "cv": 0.5}},
            "item_fetch": {"servers": 16, "latency": {"dist": "gamma", "mean_ms": 1.5, "cv": 0.5}},
            "user_inference": {"servers": 1, "latency": {"dist": "constant", "ms": 1}, "batch": {"max_size": 4, "max_wait_ms": 1}},
            "prerank": {"servers": 1, "latency": {"dist": "constant", "ms": 1}},
            "rtp": {"servers": 1, "latency": {"dist": "constant", "ms": 1}},
            "light_prerank": {"servers": 1, "latency": {"dist": "constant", "ms": 1}},
        },
        "caches": {
            "user_vector": {"capacity": 100, "ttl_s": 60},
            "sim_features": {"capacity": 100, "miss_latency": {"dist": "constant", "ms": 2}},
        },
        "nearline": {"item_updates_per_s": 50, "refresh": {"mode": "on_update", "workers": 1, "latency": {"dist": "constant", "ms": 1}}},
    }
    for dotted, value in changes.items():
        node = data
        *path, last = dotted.split(".")
        for key in path:
            node = node[key]
        node[last] = value
    return data


def live_scenario(**changes: Any) -> Scenario:
    return validate_scenario(live_dict(**changes), source="<test>")


def test_a_short_live_run_conserves_requests_and_writes_the_run_files(tmp_path):
    scenario = write_yaml(tmp_path / "live.yaml", live_dict())
    out = tmp_path / "out"
    assert main(["live", str(scenario), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine"] == "live" and summary["partial"] is False
    table = pq.read_table(out / "requests.parquet")
    columns = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    for name, metrics in summary["pipelines"].items():
        req = metrics["requests"]
        assert req["offered"] == req["completed"] + req["rejected"] + req["timed_out"] + req["in_flight_at_end"] > 60
        assert req["completed"] == req["offered"], name  # far below capacity: everything completes in the drain
        live = metrics["live"]
        assert live["scheduled_qps"] == pytest.approx(40, rel=0.35) and live["achieved_qps"] == pytest.approx(
            live["scheduled_qps"], rel=0.1
        )
        assert 0 <= live["schedule_lag_ms"]["p50"] <= live["schedule_lag_ms"]["p99"] <= live["schedule_lag_ms"]["max"]
        mine = columns["pipeline"] == name
        assert np.count_nonzero(mine) == req["completed"]
        # a request's latency covers the stages it went through one after the other (the parallel pair: the longer)
        stage_ms = {s: np.nan_to_num(columns[f"{s}_ms"][mine].astype(float)) for s in metrics["stages"]}
        path = stage_ms["merger"] + np.maximum(stage_ms["retrieval"], stage_ms.get("user_inference", 0.0))
        path += sum(stage_ms[s] for s in ("feature_fetch", "item_fetch", "prerank", "rtp", "light_prerank") if s in stage_ms)
        assert (columns["latency_ms"][mine] >= path - 1e-6).all(), name
    aif = summary["pipelines"]["aif"]
    assert aif["caches"]["user_vector"]["hits"] > 0 and aif["staleness"]["item_vector_age_s"]["mean"] > 0
    for name in ("summary.json", "timeseries.csv", "latency_cdf.png", "stage_breakdown.png", "timeseries.png"):
        assert (out / name).stat().st_size > 0


def test_a_store_of_its_own_naming_keeps_the_des_staleness_rules_live(tmp_path):
    """AIF reading a store of items of its own naming, swept every T = 1 s by a pass of 2,000 items at 2 workers /
    0.05 ms (0.05 s): each entity's vector is re-made every T (at the same offset into each pass), so read at a
    uniform time its age is uniform on [0, T], mean T/2, and never above T + pass (the vectors made at time 0 wait
    for the first pass to reach them), live as in the DES; the store's pool is billed as `refresh:NAME` and its index as `index:NAME`."""
    data = live_dict(
        pipelines=[{"name": "own", "steps": ["merger", "retrieval", {"stage": "item_fetch", "vectors": "rank_vectors"}, "rtp"]}]
    )
    refresh = {"mode": "periodic", "interval_s": 1, "workers": 2, "latency": {"dist": "constant", "ms": 0.05}}
    data["nearline"] = {"item_updates_per_s": 50, "stores": {"rank_vectors": {"entities": "items", "refresh": refresh}}}
    data["duration_s"], data["warmup_s"] = 4.0, 1.0
    path = write_yaml(tmp_path / "named.yaml", data)
    assert main(["live", str(path), "--out", str(tmp_path / "live"), "--quiet"]) == 0
    live = json.loads((tmp_path / "live" / "summary.json").read_text())["pipelines"]["own"]
    scenario = validate_scenario(data, "<test>")
    des = simulate(scenario, build_samplers(scenario, "<test>"))["own"].summary()
    for summary, late_s in ((des, 1e-9), (live, 0.05)):  # live, the loop may resume the pool up to a few ticks late
        ages = summary["staleness"]["rank_vectors_vector_age_s"]
        assert ages["mean"] == pytest.approx(0.5, rel=0.1)
        assert ages["max"] <= 1.0 + 0.05 + late_s
        assert "refresh:rank_vectors" in summary["compute"]
        assert summary["memory_bytes"] == {"index:rank_vectors": 2000 * 512}


def _cache_counts(summaries: dict[str, dict[str, Any]]) -> dict[str, dict[str, tuple[int, int]]]:
    return {
        pipeline: {cache: (counts["hits"], counts["misses"]) for cache, counts in metrics["caches"].items()}
        for pipeline, metrics in summaries.items()
    }


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_the_cache_policy_gives_the_same_hits_and_misses_live_and_in_the_des(backend, request, tmp_path):
    """Requests 100 ms apart (each is over long before the next arrives) make cache decisions independent of
    timing: the live engine, on either storage, must count exactly the hits and misses of the DES (one policy,
    one request stream), evictions included."""
    trace = tmp_path / "arrivals.csv"
    trace.write_text("t_s\n" + "\n".join(f"{0.1 * (i + 1):.1f}" for i in range(50)) + "\n")
    caches: dict[str, Any] = {
        "user_vector": {"capacity": 8},
        "sim_features": {"capacity": 8, "miss_latency": {"dist": "constant", "ms": 2}},
    }
    if backend == "redis":
        caches |= {"backend": "redis", "redis_url": request.getfixturevalue("redis_url")}
    scenario = live_scenario(
        pipelines=["sequential", "aif"],
        duration_s=5.5,
        caches=caches,
        **{"traffic.arrival": {"kind": "trace", "path": str(trace)}, "traffic.users": {"count": 20, "zipf_s": 1.0}},
    )
    samplers = build_samplers(scenario, "<test>")
    des = {name: r.summary() for name, r in simulate(scenario, samplers).items()}
    live, _ = run_live(scenario, samplers, None, lambda *a: None, lambda: False)
    counts = _cache_counts({name: r.summary() for name, r in live.items()})
    assert counts == _cache_counts(des)
    assert counts["aif"]["user_vector"][0] > 0 and counts["sequential"]["sim_features"][0] > 0  # hits happen
    assert des["aif"]["caches"]["user_vector"]["evictions"] > 0  # and so do evictions


def test_a_cache_guarding_the_user_side_is_dropped_at_each_version_switch_live_as_in_the_des(tmp_path):
    """A cache of the user's naming guarding the user side, 5 users, requests 50 ms apart and a model version
    published every second: the live engine drops the cache at each switch exactly as the DES does (the same
    hits and misses), so each user misses again after each switch. The requests come in the middle 0.4 s of each
    second, at least 0.3 s from a switch (at whole seconds), so that no lookup races a drop even on a host that
    stalls the loop for a while (such stalls move a live lookup past a switch the DES has it before)."""
    trace = tmp_path / "arrivals.csv"
    trace.write_text("t_s\n" + "\n".join(f"{k + 0.3 + 0.05 * i:.2f}" for k in range(5) for i in range(9)) + "\n")
    pipeline = {
        "name": "mine",
        "steps": [
            "merger",
            {"parallel": ["retrieval", {"cached": "interest", "stage": "user_inference"}]},
            {"stage": "item_fetch", "vectors": "items"},
            "rtp",
        ],
    }
    scenario = live_scenario(
        pipelines=[pipeline],
        duration_s=5.5,
        caches={"interest": {"capacity": 100}},
        nearline={
            "model_publish_interval_s": 1,
            "version_policy": "latest",
            "refresh": {"mode": "on_update", "workers": 1, "latency": {"dist": "constant", "ms": 1}},
        },
        **{
            "traffic.arrival": {"kind": "trace", "path": str(trace)},
            "traffic.users": {"count": 5, "zipf_s": 1.0},
            "traffic.items": {"count": 200, "zipf_s": 0.9},
        },
    )
    samplers = build_samplers(scenario, "<test>")
    des = {name: r.summary() for name, r in simulate(scenario, samplers).items()}
    live, _ = run_live(scenario, samplers, None, lambda *a: None, lambda: False)
    counts = _cache_counts({name: r.summary() for name, r in live.items()})
    assert counts == _cache_counts(des)
    assert counts["mine"]["interest"][1] > 10  # 5 users: the misses after the switches come on top of the first 5


def test_a_request_keyed_cache_live_as_in_the_des(tmp_path):
    """Feature fetch reads a request-keyed cache (a miss: the features are read and stored under the request), the
    sequential pre-ranker reads it again (a hit: it takes them from storage): live, every request misses once and
    hits once, as in the DES, and nothing is left in storage when the requests have ended."""
    trace = tmp_path / "arrivals.csv"
    trace.write_text("t_s\n" + "\n".join(f"{0.1 * (i + 1):.1f}" for i in range(30)) + "\n")
    pipeline = {
        "name": "mine",
        "steps": ["merger", "retrieval", {"stage": "feature_fetch", "reads": "features"}, {"stage": "prerank", "reads": "features"}],
    }
    scenario = live_scenario(
        pipelines=[pipeline],
        duration_s=3.5,
        caches={"features": {"key": "request", "miss_latency": {"dist": "constant", "ms": 2}}},
        **{"traffic.arrival": {"kind": "trace", "path": str(trace)}},
    )
    samplers = build_samplers(scenario, "<test>")
    des = {name: r.summary() for name, r in simulate(scenario, samplers).items()}
    live, _ = run_live(scenario, samplers, None, lambda *a: None, lambda: False)
    counts = _cache_counts({name: r.summary() for name, r in live.items()})
    measured = des["mine"]["requests"]["completed"]  # those after the warm-up
    assert counts == _cache_counts(des) == {"mine": {"features": (measured, measured)}} and measured > 20
    assert len(live["mine"].caches["features"]) == 0


def test_a_blocked_loop_shows_as_schedule_lag_and_in_the_latency(monkeypatch):
    """Block the event loop for 300 ms at t = 1 s: requests scheduled meanwhile are issued late, the lag says so,
    and their latency, measured from the scheduled time, includes the time they could not be issued."""
    block_s, at_s = 0.3, 1.0
    original = live_stages.LiveStage.__call__
    blocked = []

    async def blocking(self, requests):
        if not blocked and self.call.stage == "merger" and self.clock() >= at_s:
            blocked.append(self.clock())
            time.sleep(block_s)  # a synchronous call on the loop thread: nothing else runs meanwhile
        await original(self, requests)

    monkeypatch.setattr(live_stages.LiveStage, "__call__", blocking)
    scenario = live_scenario(pipelines=["sequential"], warmup_s=0.0)
    sink = RowSink()
    live, blocks = run_live(scenario, build_samplers(scenario, "<test>"), sink, lambda *a: None, lambda: False)
    lag = blocks["sequential"]["schedule_lag_ms"]
    assert blocks["sequential"]["kept_schedule"] is False
    assert lag["max"] > 0.5 * block_s * 1000
    start = blocked[0]
    during = [(arrival, latency) for _, _, arrival, latency, _ in sink.rows if start < arrival < start + block_s * 0.9]
    assert during, "no request was scheduled while the loop was blocked"
    for arrival, latency in during:
        assert latency >= (start + block_s - arrival) * 1000 - 1.0  # it waited for the loop, and that counts


def test_sigterm_mid_run_leaves_a_valid_partial_summary(tmp_path):
    scenario = write_yaml(tmp_path / "long.yaml", live_dict(duration_s=120.0, pipelines=["aif"]))
    for wait_s in (8.0, 20.0, 45.0):  # start-up (torch, model warm-up) takes longer on a busy host
        out = tmp_path / f"out-{wait_s:g}"
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "run_sim.py"), "live", str(scenario), "--out", str(out), "--quiet"],
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(wait_s)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 143, err
        assert time.monotonic() - sent < 10
        assert "Traceback" not in err
        summary = json.loads((out / "summary.json").read_text())
        assert summary["partial"] is True
        if "aif" in summary["pipelines"]:  # the signal came once requests were being served
            break
    else:
        pytest.fail("the live run never started serving within 45 s")
    req = summary["pipelines"]["aif"]["requests"]
    assert req["offered"] == req["completed"] + req["rejected"] + req["timed_out"] + req["in_flight_at_end"] > 0
    assert pq.read_table(out / "requests.parquet").num_rows == req["completed"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_live_refuses_what_it_cannot_run(tmp_path, capsys):
    big = write_yaml(tmp_path / "big.yaml", live_dict(**{"traffic.items": {"count": 10_000_000, "zipf_s": 0.9}}))
    assert main(["live", str(big), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "traffic.items.count" in err and "at most" in err
    nowhere = live_dict(caches={"user_vector": {"capacity": 10}, "backend": "redis", "redis_url": "redis://127.0.0.1:1/0"})
    assert main(["live", str(write_yaml(tmp_path / "noredis.yaml", nowhere)), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "caches.redis_url" in err and "no Redis server" in err
