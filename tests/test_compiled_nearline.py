"""The compiled engine's nearline reads (`compiled.nearline`) against the simpy engine's: every vector read a
simpy run made (its time, entities, ages, stale and mismatched counts, from `Request.vectors`) is replayed
through `CompiledNearline.read` in time order, and the results and the background's gauges must be equal, exactly."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aif_sim.app.run import build_samplers
from aif_sim.compiled.nearline import CompiledNearline
from aif_sim.core.request import Request
from aif_sim.metrics.recorder import Recorder
from aif_sim.scenario import Scenario, validate_scenario
from aif_sim.sim.engine import PipelineSimulation
from tests.simtools import negligible, scenario_dict

STORE = {"aif": "items", "uic": "users"}


def _stages(pipeline: str) -> dict[str, Any]:
    """Stages with some queueing at the vector fetch, so reads come at varied times."""
    fetch = {"servers": 2, "latency": {"dist": "gamma", "mean_ms": 2, "cv": 0.5}}
    retrieval = {"servers": 64, "latency": {"dist": "lognormal", "median_ms": 3, "p99_ms": 8}}
    if pipeline == "aif":
        rtp = {"servers": 4, "latency": {"dist": "exponential", "mean_ms": 1}}
        return {"merger": negligible(), "retrieval": retrieval, "user_inference": negligible(), "item_fetch": fetch, "rtp": rtp}
    return {"merger": negligible(), "retrieval": retrieval, "feature_fetch": fetch, "light_prerank": negligible()}


def _scenario(
    pipeline: str, nearline: dict[str, Any], faults: list[dict[str, Any]], entities: int = 2000, zipf_s: float = 0.9, **kwargs: Any
) -> Scenario:
    """A scenario of one pipeline whose store holds `entities` (items for aif, users for uic) of Zipf popularity."""
    data = scenario_dict(_stages(pipeline), pipelines=[pipeline], nearline=nearline, faults=faults, **kwargs)
    data["traffic"][STORE[pipeline]] = {"count": entities, "zipf_s": zipf_s}
    return validate_scenario(data, "<test>")


def _traced_gauges(calls: list[tuple[str, float, float]]) -> Callable[[Recorder, str, float, float], None]:
    """`Recorder.gauge` that also keeps every reading given: (name, time, value), in order."""
    gauge = Recorder.gauge

    def traced(recorder: Recorder, name: str, now_s: float, value: float) -> None:
        calls.append((name, now_s, value))
        gauge(recorder, name, now_s, value)

    return traced


def _simpy_run(
    scenario: Scenario, pipeline: str
) -> tuple[list[Request], np.ndarray, float, list[tuple[str, float, float]], list[list[float]]]:
    """The simpy run's requests that read vectors and when (the end of the visit that reads), in order of their read;
    its final clock, the gauge readings its recorder got and the gauge columns of its time series."""
    finished: list[Request] = []
    finish, gauges = Recorder.finish, []

    def traced_finish(recorder: Recorder, request: Request, outcome: Any, now_s: float) -> None:
        finished.append(request)
        finish(recorder, request, outcome, now_s)

    with patch.object(Recorder, "finish", traced_finish), patch.object(Recorder, "gauge", _traced_gauges(gauges)):
        sim = PipelineSimulation(scenario, pipeline, build_samplers(scenario, "<test>"))
        recorder = sim.run()
    slot = next(slot for slot, call in enumerate(sim.flow.calls) if call.vectors)
    reads = sorted((r for r in finished if r.vectors is not None), key=lambda r: r.times[3 * slot + 2])
    times = np.array([r.times[3 * slot + 2] for r in reads])
    columns = [[row[name] for name in recorder.timeseries.gauges] for row in recorder.timeseries.rows]
    return reads, times, sim.env.now, gauges, columns


def _check_replay(scenario: Scenario, pipeline: str, parts: int = 5) -> int:
    """Replay the simpy run's reads through `CompiledNearline` in `parts` calls (advancing the background to each
    call's first read in between) and compare; the number of reads."""
    store = STORE[pipeline]
    reads, times, end, simpy_gauges, simpy_columns = _simpy_run(scenario, pipeline)
    assert reads and all(r.vectors is not None and r.vectors[0] == store for r in reads)
    entities = np.array([r.sample for r in reads]) if store == "items" else np.array([[r.user] for r in reads])
    gauges: list[tuple[str, float, float]] = []
    with patch.object(Recorder, "gauge", _traced_gauges(gauges)):
        recorder = Recorder.for_pipeline(scenario, pipeline, None, {}, [store])
        nearline = CompiledNearline(scenario, pipeline, build_samplers(scenario, "<test>"), recorder)
        results = []
        for index in np.array_split(np.arange(len(reads)), parts):
            if len(index):
                nearline.advance(float(times[index[0]]))
            results.append(nearline.read(store, times[index], entities[index]))
        nearline.advance(end)
    made, _, stale, mismatched = (np.concatenate(columns) for columns in zip(*results))
    ages = times[:, None] - made  # as the engine takes them
    assert ages.dtype == np.float64 and stale.dtype == mismatched.dtype == np.int64
    np.testing.assert_array_equal(ages, np.array([r.vectors[1] for r in reads]))
    np.testing.assert_array_equal(stale, [r.vectors[2] for r in reads])
    np.testing.assert_array_equal(mismatched, [r.vectors[3] for r in reads])
    assert gauges == simpy_gauges
    recorder.close(math.ceil(end))
    assert [[row[name] for name in recorder.timeseries.gauges] for row in recorder.timeseries.rows] == simpy_columns
    return len(reads)


ON_UPDATE = {"mode": "on_update", "workers": 2, "latency": {"dist": "gamma", "mean_ms": 4, "cv": 0.5}}
PERIODIC = {"mode": "periodic", "interval_s": 3, "workers": 2, "latency": {"dist": "constant", "ms": 1}}  # a 1 s sweep
OUTAGE = [{"kind": "nearline_outage", "at_s": 4, "duration_s": 3}]
CASES = {
    "aif_on_update": ("aif", {"item_updates_per_s": 400, "refresh": ON_UPDATE}, []),
    "aif_on_update_outage": ("aif", {"item_updates_per_s": 400, "refresh": ON_UPDATE}, OUTAGE),
    "aif_periodic": ("aif", {"item_updates_per_s": 100, "refresh": PERIODIC}, []),
    "aif_always_fresh": ("aif", {"item_updates_per_s": 100, "refresh": {"mode": "periodic", "interval_s": 0}}, []),
    # rollouts of ~8 s (2,000 items at 1 worker / 4 ms = 250/s) published every 3 s: the newest waits for the last
    "publish_consistent": ("aif", {"item_updates_per_s": 200, "refresh": {**ON_UPDATE, "workers": 1}, "model_publish_interval_s": 3}, []),
    "publish_latest": (
        "aif",
        {"item_updates_per_s": 200, "refresh": {**ON_UPDATE, "workers": 1}, "model_publish_interval_s": 3, "version_policy": "latest"},
        [],
    ),
    "publish_periodic_outage": (
        "aif",
        {"item_updates_per_s": 200, "refresh": PERIODIC, "model_publish_interval_s": 2.5, "version_policy": "latest"},
        OUTAGE,
    ),
    # passes of 2 s (2,000 items at 1,000/s) due every second run back to back; rollouts cut them short
    "periodic_overrun_publish": (
        "aif",
        {"item_updates_per_s": 200, "refresh": {**PERIODIC, "interval_s": 1, "workers": 1}, "model_publish_interval_s": 2.5},
        OUTAGE,
    ),
    "uic_on_update": ("uic", {"user_events_per_s": 300, "user_refresh": {**ON_UPDATE, "workers": 1}}, OUTAGE),
    "uic_periodic": ("uic", {"user_events_per_s": 300, "user_refresh": PERIODIC}, []),
}


@pytest.mark.parametrize("case", list(CASES))
def test_replayed_reads_equal_simpy_reads(case):
    pipeline, nearline, faults = CASES[case]
    reads = _check_replay(_scenario(pipeline, nearline, faults, qps=150, duration_s=10.0), pipeline)
    assert reads > 1000


@settings(max_examples=20, deadline=None)
@given(
    pipeline=st.sampled_from(["aif", "uic"]),
    entities=st.integers(20, 3000),
    zipf_s=st.sampled_from([0.0, 0.9, 1.2]),
    updates=st.sampled_from([0.0, 50.0, 400.0]),
    refresh=st.one_of(
        st.none(),
        st.builds(
            lambda w, ms: {"mode": "on_update", "workers": w, "latency": {"dist": "exponential", "mean_ms": ms}},
            st.integers(1, 3),
            st.floats(0.5, 8),
        ),
        st.builds(lambda w, s: {"mode": "periodic", "interval_s": s, "workers": w}, st.integers(1, 3), st.sampled_from([0.0, 0.7, 2.0])),
    ),
    publish_s=st.sampled_from([None, 0.9, 2.0]),
    policy=st.sampled_from(["consistent", "latest"]),
    outage=st.one_of(st.none(), st.tuples(st.floats(0, 4), st.floats(0.1, 3))),
    sample=st.integers(1, 16),
    seed=st.integers(0, 1000),
)
def test_random_scenarios_replay_equal(pipeline, entities, zipf_s, updates, refresh, publish_s, policy, outage, sample, seed):
    if pipeline == "aif":
        nearline = {"item_updates_per_s": updates, "refresh": refresh, "model_publish_interval_s": publish_s, "version_policy": policy}
        nearline["staleness_sample"] = sample
    else:
        nearline = {"user_events_per_s": updates, "user_refresh": refresh, "version_policy": policy}
    faults = [] if outage is None else [{"kind": "nearline_outage", "at_s": outage[0], "duration_s": outage[1]}]
    scenario = _scenario(pipeline, nearline, faults, entities, zipf_s, qps=150, duration_s=6.0, drain_s=1.0, seed=seed)
    _check_replay(scenario, pipeline, parts=3)


def test_reads_out_of_time_order_are_refused():
    scenario = _scenario("aif", {"item_updates_per_s": 100, "refresh": ON_UPDATE}, [], duration_s=2.0)
    nearline = CompiledNearline(
        scenario, "aif", build_samplers(scenario, "<test>"), Recorder.for_pipeline(scenario, "aif", None, {}, ["items"])
    )
    entities = np.zeros((2, 16), np.int64)
    with pytest.raises(ValueError):
        nearline.read("items", np.array([1.0, 0.5]), entities)
    nearline.advance(1.0)
    with pytest.raises(ValueError):
        nearline.read("items", np.array([0.5, 1.5]), entities)
