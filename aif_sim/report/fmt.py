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
    if unit in ("cost", "gib"):  # a cost per hour, a memory size
        return f"{value:,.2f}"
    if unit in ("count", "qps") or (unit == "s" and abs(value) >= 100):
        return f"{value:,.0f}"
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:,.2f}"


def spread(value: float, unit: str = "ms") -> str:
    """A half-width in its unit's precision, with one significant digit where that precision would show 0."""
    text = number(value, unit)
    if value > 0 and not any(digit in text for digit in "123456789"):
        return f"{100 * value:.1g}%" if unit == "share" else f"{value:.1g}"
    return text


def interval(value: Any, unit: str, half: float | None, low: float | None, high: float | None, runs: int) -> str:
    """A mean and its 95% confidence interval: 'mean ± half-width'; 'mean [low, high]' when the interval was clipped
    to what the metric can be; 'mean (all N agree)' when the N runs gave the same value (agreement, not certainty);
    the mean alone without an interval."""
    text = number(value, unit)
    if half is None or text == "–":
        return text
    if half == 0:
        return f"{text} (all {runs} agree)"
    if low is not None and high is not None and (low > value - half or high < value + half):
        return f"{text} [{number(low, unit)}, {number(high, unit)}]"
    return f"{text} ± {spread(half, unit)}"


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
