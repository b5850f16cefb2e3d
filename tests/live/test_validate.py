"""`validate` at low load: the DES, timed from this host's profile, agrees with the live engine."""

from __future__ import annotations

import json

from aif_sim.app.validate import TOLERANCE
from aif_sim.cli import main
from tests.live.test_live_engine import live_dict
from tests.simtools import write_yaml


def test_validate_at_low_load_is_within_tolerance(tmp_path):
    """At low load the DES agrees with the live engine within the fidelity target, as far as a run of a few hundred
    requests on a shared 2-core host can tell: the 95% interval of the p50 and of the p99 error reaches into the
    tolerance band, and no point estimate is off by more than twice the tolerance."""
    scenario = write_yaml(tmp_path / "validate.yaml", live_dict(duration_s=8.0, pipelines=["sequential", "aif"]))
    out = tmp_path / "out"
    assert main(["validate", str(scenario), "--qps", "30", "--out", str(out), "--quiet"]) == 0
    document = json.loads((out / "validate.json").read_text())
    assert (out / "validate_cdf.png").stat().st_size > 0 and (out / "profile_30qps.json").exists()
    assert [(p["pipeline"], p["qps"]) for p in document["points"]] == [("sequential", 30.0), ("aif", 30.0)]
    for point in document["points"]:
        assert point["samples"] > 150 and point["des_samples"] > 150
        for name in ("p50", "p99"):
            low, high = point["ci95"]["error"][name]
            assert low <= TOLERANCE and high >= -TOLERANCE, (name, point)
            assert abs(point["error"][name]) <= 2 * TOLERANCE, (name, point)
        assert point["utilization"] < 0.5
        des_ci = point["ci95"]["des"]["p50_ms"]
        assert des_ci[0] <= point["des"]["p50_ms"] <= des_ci[1]
