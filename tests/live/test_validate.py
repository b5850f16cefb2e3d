"""`validate` runs both engines and writes every field, with the errors and intervals computed from the figures it reports.

How close the DES comes to the live run depends on how busy the host is, so the fidelity figure itself is measured
by `bench/bench_fidelity.py` (and the README's table), not asserted here.
"""

from __future__ import annotations

import json

import pytest

from aif_sim.app.validate import QUANTILES, TOLERANCE, WAIT_FLOOR_MS
from aif_sim.cli import main
from tests.live.test_live_engine import live_dict
from tests.simtools import write_yaml

FIGURES = [f"{name}_ms" for name in QUANTILES] + ["throughput_qps"]
SUMMARY = ("mean", "p50", "p99")


def test_validate_writes_every_field_and_computes_its_errors(tmp_path):
    scenario = write_yaml(tmp_path / "validate.yaml", live_dict(duration_s=6.0, pipelines=["sequential", "aif"]))
    out = tmp_path / "out"
    assert main(["validate", str(scenario), "--qps", "30", "--out", str(out), "--quiet"]) == 0
    document = json.loads((out / "validate.json").read_text())
    assert (out / "validate_cdf.png").stat().st_size > 0 and (out / "profile_30qps.json").exists()
    assert document["tolerance"] == TOLERANCE and document["partial"] is False and document["profiles"] == {"30": "profile_30qps.json"}
    assert [(p["pipeline"], p["qps"]) for p in document["points"]] == [("sequential", 30.0), ("aif", 30.0)]
    for point in document["points"]:
        assert point["samples"] > 50 and point["des_samples"] > 50
        assert set(point["des"]) == {*FIGURES, "wait_ms"} and set(point["live"]) == {*FIGURES, "wait_ms", "outside_stages_ms"}
        assert point["des"]["p50_ms"] <= point["des"]["p90_ms"] <= point["des"]["p99_ms"]
        assert point["live"]["p50_ms"] <= point["live"]["p90_ms"] <= point["live"]["p99_ms"]
        for name in QUANTILES:
            error = point["des"][f"{name}_ms"] / point["live"][f"{name}_ms"] - 1
            assert point["error"][name] == pytest.approx(error, rel=1e-12)
            for side in ("des", "live"):
                low, high = point["ci95"][side][f"{name}_ms"]
                assert 0 < low <= high
            low, high = point["ci95"]["error"][name]
            assert -1 < low <= high
        assert point["error"]["throughput"] == pytest.approx(point["des"]["throughput_qps"] / point["live"]["throughput_qps"] - 1)
        assert point["within_tolerance"] == {name: abs(point["error"][name]) <= TOLERANCE for name in ("p50", "p99")}
        assert point["bottleneck"] in point["stage_mean_ms"] and 0 < point["utilization"] < 1
        assert all(v["des"] > 0 and v["live"] > 0 for v in point["stage_mean_ms"].values())
        assert {"scheduled_qps", "achieved_qps", "schedule_lag_ms"} <= set(point["live_schedule"])
        means = point["stage_mean_ms"]
        errors = {stage: v["des"] / v["live"] - 1 for stage, v in means.items()}
        diverging = point["diverging_stage"]
        assert diverging["stage"] in means and abs(diverging["error"]) == pytest.approx(max(abs(e) for e in errors.values()))
        assert (diverging["des_ms"], diverging["live_ms"]) == (means[diverging["stage"]]["des"], means[diverging["stage"]]["live"])
        assert diverging["error"] == pytest.approx(errors[diverging["stage"]])
        _check_replay(point)
        # the service-time model's error: the profile DES's mean service against live's, each a stage's mean latency
        # less its mean wait (the DES draws them; live measures them)
        stages = set(point["stage_mean_ms"])
        assert set(point["service_error"]) == stages
        for stage, entry in point["service_error"].items():
            assert entry["live_ms"] == pytest.approx(means[stage]["live"] - point["live"]["wait_ms"][stage], rel=1e-9, abs=1e-12)
            assert entry["des_ms"] == pytest.approx(means[stage]["des"] - point["des"]["wait_ms"][stage], rel=1e-9, abs=1e-12)
            assert entry["live_ms"] > 0 and entry["error"] == pytest.approx(entry["des_ms"] / entry["live_ms"] - 1)
        host = point["host"]
        for block in (host["await_lateness_ms"]["idle"], host["await_lateness_ms"]["model_running"], host["executor_handoff_ms"]):
            assert set(block) == set(SUMMARY) and block["p50"] <= block["p99"]
        assert host["executor_handoff_ms"]["p50"] > 0
    # the DES of the aif pipeline gives item_fetch the per-candidate cost its live fetches measured (the profile's)
    measured = json.loads((out / "profile_30qps.json").read_text())["per_candidate_us"]
    assert set(measured) == {"item_fetch"} and measured["item_fetch"] >= 0
    assert [p["per_candidate_us"] for p in document["points"]] == [{}, measured]


def _check_replay(point: dict) -> None:
    """The replay DES's fields, and its errors computed from the figures it reports."""
    replay, live = point["replay"], point["live"]
    assert {*FIGURES, "samples", "wait_ms", "error", "ci95", "within_tolerance", "outside_stages_ms", "engine"} == set(replay)
    assert replay["engine"] in ("simpy", "compiled")
    assert replay["samples"] == point["samples"]  # every request the live run completed, replayed
    assert replay["p50_ms"] <= replay["p90_ms"] <= replay["p99_ms"]
    for name in QUANTILES:
        assert replay["error"][name] == pytest.approx(replay[f"{name}_ms"] / live[f"{name}_ms"] - 1, rel=1e-12)
        low, high = replay["ci95"]["error"][name]
        assert -1 < low <= high
        low, high = replay["ci95"]["replay"][f"{name}_ms"]
        assert 0 < low <= replay[f"{name}_ms"] <= high
    assert replay["within_tolerance"] == {name: abs(replay["error"][name]) <= TOLERANCE for name in ("p50", "p99")}
    assert set(replay["wait_ms"]) == set(live["wait_ms"]) == set(point["stage_mean_ms"])
    for stage, error in replay["error"]["wait"].items():
        model_ms, live_ms = replay["wait_ms"][stage], live["wait_ms"][stage]
        if max(model_ms, live_ms) < WAIT_FLOOR_MS:
            assert error is None  # no wait on either side: no relative error (NaN, written as null)
        else:
            assert error == pytest.approx(model_ms / live_ms - 1)
    # live spends time outside stage visits (its issue lag, the loop's hand-offs); the replay pauses for the part of
    # it between steps (its trace's hops), at most all of it (live also counts a parallel step's later branch's start)
    assert 0 < replay["outside_stages_ms"]["mean"] <= live["outside_stages_ms"]["mean"] + 1e-6
