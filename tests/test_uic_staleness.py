"""UIC's user-interest embeddings go stale only through users' behaviour events: without them (the default
`nearline.user_events_per_s: 0`) the summary says the events are off and gives no stale share."""

from __future__ import annotations

import math
from typing import Any

import pytest

from aif_sim.app.run import build_samplers, simulate
from aif_sim.scenario import Scenario
from tests.simtools import make_scenario, negligible

PERIODIC = {"mode": "periodic", "interval_s": 4, "workers": 4, "latency": {"dist": "constant", "ms": 0.001}}
UIC = ("merger", "retrieval", "feature_fetch", "light_prerank")
AIF = ("merger", "retrieval", "user_inference", "item_fetch", "rtp")


def _scenario(pipeline: str, nearline: dict[str, Any]) -> Scenario:
    stages = {name: negligible() for name in (UIC if pipeline == "uic" else AIF)}
    return make_scenario(stages, pipelines=[pipeline], qps=200, duration_s=12.0, warmup_s=2.0, drain_s=1.0, nearline=nearline)


def _staleness(scenario: Scenario, engine: str) -> dict[str, Any]:
    (recorder,) = simulate(scenario, build_samplers(scenario, "<test>"), engine=engine).values()
    return recorder.summary()["staleness"]


@pytest.mark.parametrize("engine", ["simpy", "compiled"])
def test_without_behaviour_events_uic_staleness_is_off_not_zero(engine):
    staleness = _staleness(_scenario("uic", {"user_refresh": PERIODIC}), engine)
    assert staleness["user_events"] == "off"
    assert math.isnan(staleness["stale_fraction"])  # nothing could change: not a measured 0%
    assert staleness["vectors_measured"] > 1000 and staleness["user_vector_age_s"]["max"] <= 4.0 + 1e-6


@pytest.mark.parametrize("engine", ["simpy", "compiled"])
def test_behaviour_events_make_user_vectors_stale(engine):
    staleness = _staleness(_scenario("uic", {"user_events_per_s": 200, "user_refresh": PERIODIC}), engine)
    assert staleness["user_events"] == "on"
    assert 0 < staleness["stale_fraction"] < 1


def test_item_vectors_without_updates_say_so_too():
    staleness = _staleness(_scenario("aif", {"refresh": PERIODIC}), "compiled")
    assert staleness["item_updates"] == "off" and math.isnan(staleness["stale_fraction"])
    staleness = _staleness(_scenario("aif", {"item_updates_per_s": 100, "refresh": PERIODIC}), "compiled")
    assert staleness["item_updates"] == "on" and 0 < staleness["stale_fraction"] < 1


def test_the_run_table_says_when_a_store_never_changes():
    from rich.console import Console

    from aif_sim.app.run import summary_document
    from aif_sim.report.tables import comparison_table

    scenario = _scenario("uic", {"user_refresh": PERIODIC})
    summary = summary_document(scenario, simulate(scenario, build_samplers(scenario, "<test>")), {})
    console = Console(width=300, record=True)
    console.print(comparison_table(summary, "t"))
    text = " ".join(console.export_text().split())  # the caption wraps at the table's width
    assert "uic: user vectors never change (nearline.user_events_per_s is 0): no user vector can be stale" in text
