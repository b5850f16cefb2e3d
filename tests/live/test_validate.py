"""`validate` at low load: the DES, timed from this host's profile, agrees with the live engine."""

from __future__ import annotations

import json

from aif_sim.app.validate import TOLERANCE
from aif_sim.cli import main
from tests.live.test_live_engine import live_dict
from tests.simtools import write_yaml


def test_validate_at_low_load_is_within_tolerance(tmp_path):
    """At ~15% of the slowest pipeline's capacity the DES's median is within the fidelity target of the live run's,
    and its p99, a noisier figure over a few hundred requests, is consistent with it (the 95% interval of the
    error reaches into the tolerance band)."""
    scenario = write_yaml(tmp_path / "validate.yaml", live_dict(duration_s=8.0, pipelines=["sequential", "aif"]))
    out = tmp_path / "out"
    assert main(["validate", str(scenario), "--qps", "30", "--out", str(out), "--quiet"]) == 0
    document = json.loads((out / "validate.json").read_text())
    assert (out / "validate_cdf.png").stat().st_size > 0 and (out / "profile_30qps.json").exists()
    assert [(p["pipeline"], p["qps"]) for p in document["points"]] == [("sequential", 30.0), ("aif", 30.0)]
    for point in document["points"]:
        assert point["samples"] > 150 and point["des_samples"] > 150
        assert abs(point["error"]["p50"]) <= TOLERANCE, point
        low, high = point["ci95"]["error"]["p99"]
        assert low <= TOLERANCE and high >= -TOLERANCE, point
        assert point["utilization"] < 0.5
        des_ci = point["ci95"]["des"]["p50_ms"]
        assert des_ci[0] <= point["des"]["p50_ms"] <= des_ci[1]
