"""The item change process (`core.changes`): a pure function of the scenario, Poisson in time, Zipf in items,
and drawn apart from the refresh workers' service draws."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from aif_sim.app.run import build_samplers
from aif_sim.core.changes import ChangeChunk, item_changes
from aif_sim.core.traffic import CHUNK
from aif_sim.scenario import Scenario, validate_scenario
from aif_sim.sim.engine import PipelineSimulation
from tests.simtools import negligible, scenario_dict


def _scenario(rate: float, items: int = 1000, zipf_s: float = 0.9, seed: int = 1, duration_s: float = 10.0, **nearline) -> Scenario:
    stages = {name: negligible() for name in ("merger", "retrieval", "user_inference", "item_fetch", "rtp")}
    data = scenario_dict(stages, pipelines=["aif"], seed=seed, duration_s=duration_s, nearline={"item_updates_per_s": rate, **nearline})
    data["traffic"]["items"] = {"count": items, "zipf_s": zipf_s}
    return validate_scenario(data, "<test>")


def _all(scenario: Scenario) -> ChangeChunk:
    chunks = list(item_changes(scenario))
    assert all(len(c.times_s) <= CHUNK for c in chunks)
    return ChangeChunk(*(np.concatenate([getattr(c, f) for c in chunks]) for f in ("times_s", "first", "stop")))


def test_the_same_scenario_gives_the_same_changes_and_another_seed_others():
    a, b, c = _all(_scenario(500)), _all(_scenario(500)), _all(_scenario(500, seed=2))
    assert np.array_equal(a.times_s, b.times_s) and np.array_equal(a.first, b.first) and np.array_equal(a.stop, b.stop)
    assert len(a.times_s) != len(c.times_s) or not np.array_equal(a.times_s, c.times_s)


def test_changes_are_ordered_single_items_within_the_run():
    scenario = _scenario(3000)
    changes = _all(scenario)
    until = scenario.duration_s + scenario.drain_s
    assert np.all(np.diff(changes.times_s) >= 0) and changes.times_s[0] >= 0 and changes.times_s[-1] < until
    assert np.array_equal(changes.stop, changes.first + 1)
    assert changes.first.min() >= 0 and changes.first.max() < 1000


def test_the_count_and_the_gaps_are_poisson():
    """Over 15 s at 3000/s (45,000 expected): the count within 4 standard deviations of the Poisson mean, and the
    gaps exponential (Kolmogorov-Smirnov at the 0.1% level)."""
    rate, scenario = 3000.0, _scenario(3000)
    changes = _all(scenario)
    expected = rate * (scenario.duration_s + scenario.drain_s)
    assert abs(len(changes.times_s) - expected) < 4 * math.sqrt(expected)
    gaps = np.diff(changes.times_s)
    assert stats.kstest(gaps, "expon", args=(0, 1 / rate)).pvalue > 1e-3


def test_popular_items_change_by_the_zipf_law():
    """Chi-square of the changes per item (ranks 0..49 one by one, the rest pooled) against p(i) ∝ (i+1)^-s."""
    items, s = 1000, 0.9
    changes = _all(_scenario(3000, items=items, zipf_s=s))
    p = np.arange(1, items + 1, dtype=float) ** -s
    p /= p.sum()
    counts = np.bincount(changes.first, minlength=items)
    observed = np.append(counts[:50], counts[50:].sum())
    expected = np.append(p[:50], p[50:].sum()) * len(changes.first)
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    assert counts[0] > 5 * counts[99]  # (100)^0.9 ≈ 63 times as likely: the head changes most


def test_refresh_draws_change_no_change():
    """Two refresh configurations (other workers, other latency) give the same changes, and the same store
    change times in a simpy run, though their workers draw different service times."""
    fast = {"refresh": {"mode": "on_update", "workers": 4, "latency": {"dist": "exponential", "mean_ms": 1}}}
    slow = {"refresh": {"mode": "on_update", "workers": 1, "latency": {"dist": "gamma", "mean_ms": 3, "cv": 0.5}}}
    a, b = _scenario(300, duration_s=3.0, **fast), _scenario(300, duration_s=3.0, **slow)
    assert np.array_equal(_all(a).times_s, _all(b).times_s) and np.array_equal(_all(a).first, _all(b).first)
    changed, ends = [], []
    for scenario in (a, b):
        sim = PipelineSimulation(scenario, "aif", build_samplers(scenario, "<test>"))
        sim.run()
        changed.append(sim.stores["items"].changed_s)
        ends.append(sim.env.now)
    assert ends[0] == ends[1] and np.array_equal(changed[0], changed[1])
    changes, last = _all(a), np.full(1000, -np.inf)
    seen = changes.times_s <= ends[0]  # the run ends when its last request is done
    np.maximum.at(last, changes.first[seen], changes.times_s[seen])
    assert np.array_equal(changed[0], last)  # the store saw exactly these changes


def test_no_changes_without_a_rate():
    assert list(item_changes(_scenario(0))) == []
