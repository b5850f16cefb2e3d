"""The faults block of summary.json: a fault is reported on the pipelines it touches, says whether the per-second
p99 left its band, and both DES engines report the same block."""

from __future__ import annotations

from typing import Any

import pytest

from aif_sim.app.run import build_samplers, simulate
from aif_sim.core.system import touches
from aif_sim.scenario import Scenario, validate_scenario
from tests.simtools import MANY, make_scenario, scenario_dict

ONE_MS = {"dist": "constant", "ms": 1}
STAGES = ("merger", "retrieval", "user_inference", "feature_fetch", "item_fetch", "prerank", "rtp", "light_prerank")
ON_UPDATE = {"mode": "on_update", "workers": 1, "latency": ONE_MS}
SLOWDOWN = {"kind": "stage_slowdown", "at_s": 5, "stage": "rtp", "factor": 3, "duration_s": 5}
FLUSH = {"kind": "cache_flush", "at_s": 20, "cache": "sim_features"}
OUTAGE = {"kind": "nearline_outage", "at_s": 30, "duration_s": 5}


def _faults(scenario: Scenario, engine: str) -> dict[str, Any]:
    """Per pipeline, its faults block (None: none)."""
    results = simulate(scenario, build_samplers(scenario, "<test>"), engine=engine)
    return {name: recorder.summary().get("faults") for name, recorder in results.items()}


@pytest.fixture(scope="module")
def three_faults() -> Scenario:
    """Every stage 1 ms on unlimited servers (every pipeline's latency is a constant 4 ms); rtp three times slower
    from 5 to 10 s (AIF: 6 ms); a flush of a cache without miss latency at 20 s and a nearline outage at 30 s,
    which move no latency."""
    return make_scenario(
        {name: {"servers": MANY, "latency": ONE_MS} for name in STAGES},
        pipelines=["sequential", "aif", "uic"],
        qps=100,
        duration_s=40.0,
        drain_s=1.0,
        caches={"sim_features": {"capacity": 1000}},
        nearline={"item_updates_per_s": 10, "refresh": ON_UPDATE},
        faults=[SLOWDOWN, FLUSH, OUTAGE],
    )


def test_a_fault_is_reported_only_on_the_pipelines_it_touches(three_faults):
    faults = _faults(three_faults, "compiled")
    assert [f["kind"] for f in faults["sequential"]] == ["cache_flush"]  # no rtp, no nearline store
    assert [f["kind"] for f in faults["aif"]] == ["stage_slowdown", "cache_flush", "nearline_outage"]
    assert faults["uic"] is None  # no rtp, no SIM-feature cache, its user vectors have no refresh to stop
    assert faults["aif"][0] | {"stage": "rtp", "factor": 3.0, "duration_s": 5.0} == faults["aif"][0]  # the fault as stated


def test_a_fault_that_moves_nothing_is_not_affected_and_a_slowdown_is(three_faults):
    aif = {f["kind"]: f for f in _faults(three_faults, "compiled")["aif"]}
    for kind in ("cache_flush", "nearline_outage"):
        assert aif[kind]["affected"] is False and aif[kind]["recovery_s"] == 0
        assert aif[kind]["peak_p99_ms"] == pytest.approx(aif[kind]["p99_before_ms"], rel=0.01)
    slow = aif["stage_slowdown"]
    assert slow["affected"] is True and slow["p99_before_ms"] == pytest.approx(4.0, rel=0.01)
    assert slow["peak_p99_ms"] == pytest.approx(6.0, rel=0.01)
    assert slow["recovery_s"] == 6.0  # seconds 5-9 slow, 10 back in the band: to its end


def test_both_engines_report_the_same_faults(three_faults):
    assert _faults(three_faults, "simpy") == _faults(three_faults, "compiled")


def test_a_miss_storm_is_affected_and_recovers_on_both_engines():
    """A SIM-feature flush at 15 s before 10 feature-fetch servers: 2 ms per hit (1000 QPS: 2 servers busy), 22 ms
    per miss; 500 users of about 2 requests per second each, so nearly every request misses for a second, the
    servers queue, and the users' entries are back within seconds."""
    stages = {name: {"servers": MANY, "latency": {"dist": "constant", "ms": 0}} for name in ("merger", "retrieval", "prerank")}
    stages["feature_fetch"] = {"servers": 10, "latency": {"dist": "constant", "ms": 2}}
    data = scenario_dict(
        stages,
        qps=1000,
        duration_s=30.0,
        warmup_s=2.0,
        drain_s=1.0,
        caches={"sim_features": {"capacity": 1000, "miss_latency": {"dist": "constant", "ms": 20}}},
        faults=[{"kind": "cache_flush", "at_s": 15, "cache": "sim_features"}],
    )
    data["traffic"]["users"] = {"count": 500, "zipf_s": 0.3}
    scenario = validate_scenario(data, "<test>")
    compiled = _faults(scenario, "compiled")
    assert compiled == _faults(scenario, "simpy")
    (storm,) = compiled["sequential"]
    assert storm["affected"] is True and storm["p99_before_ms"] == pytest.approx(2.0, rel=0.01)
    assert storm["peak_p99_ms"] > 22.0  # a miss's own time, and waiting
    assert storm["recovery_s"] is not None and 1 < storm["recovery_s"] < 10


@pytest.mark.parametrize(
    ("fault", "nearline", "touched"),
    [
        (SLOWDOWN, None, ["aif"]),
        ({**SLOWDOWN, "stage": "feature_fetch"}, None, ["sequential", "uic"]),
        (FLUSH, None, ["sequential", "aif"]),
        ({**FLUSH, "cache": "user_vector"}, None, []),  # not configured
        (OUTAGE, None, []),  # no nearline store
        (OUTAGE, {"item_updates_per_s": 10}, []),  # no refresh to stop
        (OUTAGE, {"model_publish_interval_s": 60}, ["aif"]),  # rollouts wait for the outage's end
        (OUTAGE, {"user_events_per_s": 10, "user_refresh": ON_UPDATE}, ["uic"]),
    ],
)
def test_which_pipelines_a_fault_touches(fault, nearline, touched):
    extra = {"nearline": nearline} if nearline is not None else {}
    scenario = make_scenario(
        {name: {"servers": 1, "latency": ONE_MS} for name in STAGES},
        pipelines=["sequential", "aif", "uic"],
        caches={"sim_features": {"capacity": 10}},
        faults=[fault],
        **extra,
    )
    assert [p for p in scenario.pipelines if touches(scenario.faults[0], scenario, p)] == touched
