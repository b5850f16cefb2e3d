"""`validate` runs both engines and writes every field, with the errors and intervals computed from the figures it reports.

How close the DES comes to the live run depends on how busy the host is, so the fidelity figure itself is measured
by `bench/bench_fidelity.py` (and the README's table), not asserted here.
"""

from __future__ import annotations

import json

import pytest

from aif_sim.app.validate import QUANTILES, TOLERANCE
from aif_sim.cli import main
from tests.live.test_live_engine import live_dict
from tests.simtools import write_yaml

FIGURES = [f"{name}_ms" for name in QUANTILES] + ["throughput_qps"]


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
        assert set(point["des"]) == set(point["live"]) == set(FIGURES)
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
    # the DES of the aif pipeline gives item_fetch the per-candidate cost its live fetches measured (the profile's)
    measured = json.loads((out / "profile_30qps.json").read_text())["per_candidate_us"]
    assert set(measured) == {"item_fetch"} and measured["item_fetch"] >= 0
    assert [p["per_candidate_us"] for p in document["points"]] == [{}, measured]
