"""Sensitivity to the hardware (`sweep --scale-profiles`) and the hardware named in reports."""

from __future__ import annotations

import json

import pytest

from aif_sim.app.sensitivity import scale_overrides
from aif_sim.cli import main
from aif_sim.core.hardware import cpu_name, hardware, hardware_note
from tests.simtools import make_scenario, negligible, write_yaml

SERVICE_MS = 10.0


def _profile(tmp_path, name: str = "a test machine (1 logical CPU)"):
    """A profile whose operator takes 10 ms at any candidate count (a p99 a hair above its median: nearly constant)."""
    points = [{"candidates": n, "median_ms": SERVICE_MS, "p99_ms": SERVICE_MS * 1.0001} for n in (1, 1000)]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"hardware": name, "ops": {"op": points}}))
    return path


def _one_queue(tmp_path, qps: float, scale: float = 1.0, machine: str = "a test machine (1 logical CPU)") -> dict:
    """The sequential pipeline as one single-server queue timed by the profile (~10 ms x scale a request)."""
    stages = {
        "merger": negligible(),
        "retrieval": negligible(),
        "feature_fetch": negligible(),
        "prerank": {"servers": 1, "latency": {"dist": "profile", "path": str(_profile(tmp_path, machine)), "op": "op", "scale": scale}},
    }
    return make_scenario(stages, pipelines=["sequential"], qps=qps, duration_s=60, warmup_s=5, slo={"p99_ms": 200}).model_dump(
        mode="json", exclude_none=True
    )


def test_scale_overrides_multiply_every_profile_stage_and_nothing_else(tmp_path):
    from aif_sim.scenario import validate_scenario

    scenario = validate_scenario(_one_queue(tmp_path, 50, scale=1.5), source="<test>")
    assert scale_overrides(scenario, 2.0) == [("stages.prerank.latency.scale", 3.0, "--scale-profiles")]


def test_a_single_server_keeps_up_until_the_scaled_service_exceeds_the_arrival_gap(tmp_path, capsys):
    """One server, 10 ms a request, 80 requests/s: utilisation 0.8 x factor (0.4, 0.8, 1.2): it keeps up at 0.5 and 1,
    not at 1.5, where the queue grows without bound and the SLO is missed."""
    path = write_yaml(tmp_path / "one.yaml", _one_queue(tmp_path, 80))
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--scale-profiles", "1.5,0.5,1", "--out", str(out), "--jobs", "1", "--no-cache"]) == 0
    document = json.loads((out / "sweep.json").read_text())
    design = document["sensitivity"]["designs"]["sequential"]
    assert [p["scale"] for p in design["points"]] == [0.5, 1.0, 1.5]
    for point in design["points"]:
        assert point["bottleneck"] == "prerank"
        assert point["bottleneck_utilization"] == pytest.approx(min(1.0, 0.8 * point["scale"]), rel=0.04)
    assert [p["keeps_up"] for p in design["points"]] == [True, True, False]
    assert design["keeps_up_to"] == 1.0
    assert design["points"][0]["slo_met"] and not design["points"][2]["slo_met"]
    assert design["slo_met_up_to"] in (0.5, 1.0)
    assert document["hardware"]["profiles"] == {str(tmp_path / "profile.json"): "a test machine (1 logical CPU)"}
    err = capsys.readouterr().err
    assert err.count("a test machine") == 1 and "calibrate --device cpu" in err  # said once, with the command to calibrate here


def test_without_a_profile_stage_the_sensitivity_sweep_is_refused(tmp_path, capsys):
    stages = {"merger": negligible(), "retrieval": negligible(), "feature_fetch": negligible(), "prerank": negligible()}
    path = write_yaml(tmp_path / "flat.yaml", make_scenario(stages).model_dump(mode="json", exclude_none=True))
    assert main(["sweep", str(path), "--scale-profiles", "1,2", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no stage is timed by a profile" in err
    assert not (tmp_path / "out").exists()


def test_the_hardware_note_appears_only_when_a_profile_is_not_this_hosts(tmp_path):
    from aif_sim.scenario import validate_scenario

    other = hardware(validate_scenario(_one_queue(tmp_path, 50), source="<test>"))
    assert other["differs"] and "a test machine" in hardware_note(other)
    here = tmp_path / "here"  # another file: profiles are read once per path
    here.mkdir()
    same = hardware(validate_scenario(_one_queue(here, 50, machine=cpu_name()), source="<test>"))
    assert not same["differs"] and hardware_note(same) is None
