"""Numbers and labels for people: one formatter for every table and plot."""

from __future__ import annotations

import math
from typing import Any

from aif_sim.core.traffic import mean_rate
from aif_sim.scenario import Scenario

PARAM_LABELS = {
    "traffic.arrival.qps": "offered load (QPS)",
    "traffic.arrival.mean_qps": "mean offered load (QPS)",
    "traffic.candidates": "candidates per request",
    "nearline.refresh.interval_s": "refresh interval (s)",
    "nearline.refresh.workers": "refresh workers",
    "nearline.item_updates_per_s": "item updates per second",
    "caches.user_vector.capacity": "user-vector cache capacity",
    "caches.sim_features.capacity": "SIM-feature cache capacity",
}


def number(value: Any, unit: str = "ms") -> str:
    """A figure in its unit's usual precision; '–' for a missing one."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, str):
        return value
    if unit == "share":
        return f"{100 * value:.1f}%"
    if unit == "ratio":
        return f"{value:.4f}"
    if unit in ("count", "qps") or (unit == "s" and abs(value) >= 100):
        return f"{value:,.0f}"
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:,.2f}"


def param_label(param: str) -> str:
    """A swept scenario field as an axis label."""
    return PARAM_LABELS.get(param, param)


def run_title(scenario: Scenario, with_load: bool = True) -> str:
    """Scenario name, offered load and seed: what every table and plot of a run is about (a load sweep
    leaves the load out: it is on an axis)."""
    spec = scenario.traffic.arrival
    rate = mean_rate(spec)
    load = f"{spec.kind} arrivals" if rate is None or not with_load else f"{rate:,.0f} QPS {spec.kind}"
    return f"{scenario.name}: {load}, seed {scenario.seed}"
