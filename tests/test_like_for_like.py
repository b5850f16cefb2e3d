"""The like-for-like baseline `aif_online`: the sequential flow with its own pre-ranker (`online_prerank`), on the same
requests as the sequential pipeline."""

from __future__ import annotations

import pytest

from aif_sim.app.run import build_samplers, simulate
from tests.simtools import MANY, RowSink, make_scenario, negligible


def _stages() -> dict:
    return {
        "merger": negligible(),
        "retrieval": {"servers": MANY, "latency": {"dist": "lognormal", "median_ms": 5, "p99_ms": 12}},
        "feature_fetch": {"servers": MANY, "latency": {"dist": "gamma", "mean_ms": 2, "cv": 0.5}},
        "prerank": {"servers": MANY, "latency": {"dist": "constant", "ms": 30}},
        "online_prerank": {"servers": MANY, "latency": {"dist": "constant", "ms": 7}},
    }


@pytest.mark.parametrize("engine", ["simpy", "compiled"])
def test_aif_online_differs_from_sequential_by_its_pre_ranker_alone(engine):
    """With no waiting, every request of aif_online takes the sequential pipeline's time less the sequential pre-ranker's
    30 ms plus the online AIF model's 7 ms: the same arrivals and draws of the shared stages (common random numbers)."""
    scenario = make_scenario(_stages(), pipelines=["sequential", "aif_online"], qps=200, duration_s=5)
    sink = RowSink()
    results = simulate(scenario, build_samplers(scenario, "<test>"), sink, engine=engine)
    rows = {(pipeline, rid): (latency, stages) for pipeline, rid, _, latency, stages in sink.rows}
    ids = [rid for pipeline, rid in rows if pipeline == "sequential"]
    assert len(ids) > 500 and sorted(ids) == sorted(rid for pipeline, rid in rows if pipeline == "aif_online")
    for rid in ids:
        sequential, online = rows["sequential", rid], rows["aif_online", rid]
        assert online[0] == pytest.approx(sequential[0] - 30 + 7, abs=1e-6)
        assert online[1]["online_prerank"] == pytest.approx(7) and online[1]["retrieval"] == sequential[1]["retrieval"]
    assert list(results["aif_online"].summary()["stages"]) == ["merger", "retrieval", "feature_fetch", "online_prerank"]


def test_a_comparison_with_the_like_for_like_baseline_also_shows_aif_against_it():
    from aif_sim.report.tables import ratio_pairs

    assert ratio_pairs(["sequential", "aif_online", "aif"]) == [("aif_online", "sequential"), ("aif", "sequential"), ("aif", "aif_online")]
    assert ratio_pairs(["sequential", "aif", "uic"]) == [("aif", "sequential"), ("uic", "sequential")]
    assert ratio_pairs(["aif", "aif_online"]) == [("aif", "aif_online")]
