"""The compiled engine against the simpy engine: request for request, the same accounting, the same summary.

Both engines are traced where they hand their requests to the recorder (`Recorder.account`: ids, arrival,
outcome, finish time, stage times, service, in the groups and order simpy flushes them; `Recorder._visits`:
also the finished visits of requests in flight at the end): the traces must be equal, exactly."""

from __future__ import annotations

import math
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aif_sim.sim.engine as sim_engine
from aif_sim.app.run import build_samplers, choose_engines
from aif_sim.compiled.engine import run_compiled
from aif_sim.compiled.support import unsupported
from aif_sim.core import traffic
from aif_sim.core.system import RequestSource
from aif_sim.metrics.recorder import Recorder
from aif_sim.scenario import Scenario, load_scenario
from aif_sim.scenario.loading import parse_overrides
from aif_sim.scenario.pipelines import VECTOR_STORES, Pipeline, shipped_designs
from tests.simtools import make_scenario, negligible, overload_stages, small_stages

ALL = ["sequential", "aif", "uic"]
REPO = Path(__file__).resolve().parents[1]
ACCOUNTED = ("ids", "arrival_s", "users", "candidates", "measured", "times", "service_s", "outcome", "end_s")


class BlockSink:
    """Keeps every block of per-request rows the recorder writes."""

    def __init__(self) -> None:
        self.blocks: list[Any] = []

    def write(self, pipeline: str, stages: list[str], caches: list[str], block: Any) -> None:
        self.blocks.append(block)


def _traced_run(run, chunk: int | None) -> tuple[Recorder, list[tuple[str, dict[str, np.ndarray]]], BlockSink]:
    """Run an engine (`run(sink)` -> Recorder) with arrival blocks of `chunk` requests; the recorder, the
    trace of what it was handed, and the per-request rows it wrote."""
    trace: list[tuple[str, dict[str, np.ndarray]]] = []
    account, visits = Recorder.account, Recorder._visits

    def traced_account(self, *args, **kwargs):
        trace.append(("account", {name: np.array(value, copy=True) for name, value in zip(ACCOUNTED, args)}))
        return account(self, *args, **kwargs)

    def traced_visits(self, times, measured):
        trace.append(("visits", {"times": np.array(times, copy=True), "measured": np.array(measured, copy=True)}))
        return visits(self, times, measured)

    sink = BlockSink()
    with ExitStack() as stack:
        stack.enter_context(patch.object(Recorder, "account", traced_account))
        stack.enter_context(patch.object(Recorder, "_visits", traced_visits))
        if chunk is not None:
            stack.enter_context(patch.object(traffic, "CHUNK", chunk))
        recorder = run(sink)
    return recorder, trace, sink


def _same(a: Any, b: Any, where: str = "") -> None:
    """Equal, NaN equal to NaN, recursively."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, (where, a.dtype, b.dtype, a.shape, b.shape)
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), where
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), (where, a, b)
    else:
        assert a == b, (where, a, b)


def assert_equivalent(scenario: Scenario, pipeline: str, chunk: int | None = None) -> Recorder:
    """Run the pipeline with both engines and check they agree request for request; the compiled recorder."""
    samplers = build_samplers(scenario, "<test>")
    simpy_recorder, simpy_trace, simpy_sink = _traced_run(
        lambda sink: sim_engine.PipelineSimulation(scenario, pipeline, samplers, sink).run(), chunk
    )
    recorder, trace, sink = _traced_run(lambda sink: run_compiled(scenario, pipeline, samplers, sink), chunk)
    assert [kind for kind, _ in trace] == [kind for kind, _ in simpy_trace]
    for i, ((kind, mine), (_, theirs)) in enumerate(zip(trace, simpy_trace)):
        _same(mine, theirs, f"{kind} #{i}")
    _same(recorder.summary(), simpy_recorder.summary(), "summary")
    _same(recorder.timeseries.rows, simpy_recorder.timeseries.rows, "timeseries")
    _same([vars(block) for block in sink.blocks], [vars(block) for block in simpy_sink.blocks], "rows")
    return recorder


# --- randomised equivalence ------------------------------------------------------------------------------
@st.composite
def latencies(draw: st.DrawFn) -> dict[str, Any]:
    dist = draw(st.sampled_from(["exponential", "gamma", "lognormal"]))
    mean = draw(st.floats(0.2, 12.0))
    if dist == "exponential":
        return {"dist": dist, "mean_ms": mean}
    if dist == "gamma":
        return {"dist": dist, "mean_ms": mean, "cv": draw(st.floats(0.1, 1.0))}  # above 1: see the test of ties below
    return {"dist": dist, "median_ms": mean, "p99_ms": mean * draw(st.floats(1.1, 6.0))}


@st.composite
def pools(draw: st.DrawFn) -> dict[str, Any]:
    stage: dict[str, Any] = {"servers": draw(st.integers(1, 8)), "latency": draw(latencies())}
    queue_limit = draw(st.none() | st.integers(0, 20))
    if queue_limit is not None:
        stage["queue_limit"] = queue_limit
    timeout_ms = draw(st.none() | st.floats(0.5, 50.0))
    if timeout_ms is not None:
        stage["timeout_ms"] = timeout_ms
    if draw(st.integers(0, 3)) == 0:  # a batching stage (a waiter's timeout and the batch timer never tie)
        max_wait_ms = draw(st.floats(0.05, 5.0).filter(lambda ms: timeout_ms is None or abs(ms - timeout_ms) > 1e-6))
        stage["batch"] = {"max_size": draw(st.integers(1, 8)), "max_wait_ms": max_wait_ms}
    elif draw(st.booleans()):  # several nodes, each a pool of its own, behind a balancer
        stage["nodes"] = draw(st.sampled_from([n for n in range(2, 9) if stage["servers"] % n == 0] or [1]))
        stage["balance"] = draw(st.sampled_from(["random", "round_robin", "least_outstanding", "p2c"]))
    return stage


@st.composite
def cache_specs(draw: st.DrawFn, key: str = "user") -> dict[str, Any]:
    """A cache over the 1000 users of `simtools.scenario_dict`: small to large, with or without expiry and miss latency,
    versioned or not; or (`key` request) one entry per request in flight, with or without miss latency."""
    if key == "request":
        return {"key": "request", "miss_latency": draw(latencies())} if draw(st.booleans()) else {"key": "request"}
    spec: dict[str, Any] = {"capacity": draw(st.sampled_from([0, 1, 20, 200, 2000]))}
    ttl_s = draw(st.none() | st.floats(0.05, 3.0))
    if ttl_s is not None:
        spec["ttl_s"] = ttl_s
    if draw(st.booleans()):
        spec["miss_latency"] = draw(latencies())
    if draw(st.booleans()):  # dropped at each switch of the serving model version (with model publication)
        spec["versioned"] = True
    return spec


@st.composite
def refreshes(draw: st.DrawFn, duration_s: float) -> dict[str, Any]:
    """Refresh on update by a few workers, or periodic sweeps (an interval of 0: always fresh)."""
    latency = {"dist": "exponential", "mean_ms": draw(st.floats(0.001, 20.0))}
    if draw(st.booleans()):
        return {"mode": "on_update", "workers": draw(st.integers(1, 3)), "latency": latency}
    return {
        "mode": "periodic",
        "interval_s": draw(st.sampled_from([0.0, duration_s / 3, duration_s / 1.5])),
        "workers": 2,
        "latency": latency,
    }


@st.composite
def nearline_specs(draw: st.DrawFn, duration_s: float, named: tuple[str, ...] = ()) -> dict[str, Any]:
    """Item and user updates with their refresh, model publication under either version policy, a sample size; the
    stores of their own `named` (of items or of users, each with a refresh)."""
    spec: dict[str, Any] = {
        "item_updates_per_s": draw(st.floats(0.0, 500.0)),
        "user_events_per_s": draw(st.floats(0.0, 500.0)),
        "version_policy": draw(st.sampled_from(["consistent", "latest"])),
        "staleness_sample": draw(st.integers(1, 8)),
    }
    for field in ("refresh", "user_refresh"):
        if draw(st.booleans()):
            spec[field] = draw(refreshes(duration_s))
    if draw(st.booleans()):
        spec["model_publish_interval_s"] = draw(st.floats(0.1, duration_s))
    if named:
        spec["stores"] = {
            name: {"entities": draw(st.sampled_from(["items", "users"])), "refresh": draw(refreshes(duration_s))} for name in named
        }
    return spec


@st.composite
def own_pipelines(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, str]]:
    """A pipeline of the step language over stages of its own names: 1 to 5 steps, each a call or a parallel group of
    2 or 3 branches; a call may be guarded by the cache `embedding`, read through the cache `features`, or read
    nearline vectors, of a shipped store or of one of its own naming (at one call at most, as the language
    requires); with each cache's key (user or request). A request-keyed cache may be consulted at up to 3 calls (a
    user-keyed one at several steps is simpy's only)."""
    steps: list[Any] = []
    for index in range(draw(st.integers(1, 5))):
        width = draw(st.sampled_from([1, 1, 2, 3]))
        branches = [{"stage": f"s{index}_{k}"} for k in range(width)]
        steps.append(branches[0] if width == 1 else {"parallel": branches})
    calls = [branch for step in steps for branch in step.get("parallel", [step])]
    keys = {name: draw(st.sampled_from(["user", "user", "request"])) for name in ("embedding", "features")}
    for field, value in (
        ("cached", "embedding"),
        ("reads", "features"),
        ("vectors", draw(st.sampled_from(["items", "users", "own_vectors"]))),
    ):
        if draw(st.booleans()):
            times = draw(st.integers(1, 3)) if keys.get(value) == "request" else 1
            for call in draw(st.lists(st.integers(0, len(calls) - 1), min_size=1, max_size=times, unique=True)):
                calls[call][field] = value
    return {"name": "own", "steps": steps}, keys


@st.composite
def cases(draw: st.DrawFn) -> tuple[Scenario, str, int]:
    """A scenario of one pipeline, a shipped design or one of its own, with that pipeline's name and a block size."""
    pipeline = draw(st.sampled_from([*ALL, "own"]))
    own, keys = draw(own_pipelines()) if pipeline == "own" else (None, {})
    design = Pipeline.model_validate(own) if own is not None else shipped_designs()[pipeline]
    stages = {name: draw(pools()) for name in design.stages}
    if draw(st.booleans()):  # a constant service: no ties with continuous arrivals
        stages[design.stages[0]]["latency"] = {"dist": "constant", "ms": draw(st.floats(0.05, 2.0))}
    qps = draw(st.floats(50.0, 3000.0))
    duration_s = draw(st.floats(1.0, max(1.0, min(5.0, 6000.0 / qps))))
    kind = draw(st.sampled_from(["poisson", "poisson", "diurnal", "bursty"]))
    arrival: dict[str, Any] = {"kind": "poisson", "qps": qps}
    if kind == "diurnal":
        arrival = {"kind": "diurnal", "mean_qps": qps, "peak_to_trough": draw(st.floats(1.0, 5.0)), "period_s": draw(st.floats(0.5, 5.0))}
    elif kind == "bursty":
        arrival = {"kind": "bursty", "qps": qps / 3, "burst_qps": qps * 2, "mean_burst_s": 0.2, "mean_calm_s": 0.5}
    extra: dict[str, Any] = {"slo": {"p99_ms": draw(st.floats(5.0, 100.0))}} if draw(st.booleans()) else {}
    slowed = draw(st.lists(st.sampled_from(design.stages), max_size=3))
    if slowed:  # stage slowdowns, possibly overlapping on one stage
        extra["faults"] = [
            {
                "kind": "stage_slowdown",
                "at_s": draw(st.floats(0.01, duration_s)),
                "stage": stage,
                "factor": draw(st.floats(1.1, 8.0)),
                "duration_s": draw(st.floats(0.01, duration_s)),
            }
            for stage in slowed
        ]
    constant = any(stage["latency"]["dist"] == "constant" for stage in stages.values())
    if not constant and draw(st.integers(0, 2)) == 0:  # a request deadline (with constant services: ties, simpy's only)
        timers = {ms for stage in stages.values() if "batch" in stage for ms in (stage["batch"]["max_wait_ms"], stage.get("timeout_ms"))}
        extra["deadline_ms"] = draw(st.floats(0.5, 80.0).filter(lambda ms: ms not in timers))  # a timer at it: simpy's only
    if design.caches and (own is not None or draw(st.booleans())):  # a pipeline of its own consults what it names
        extra["caches"] = {
            name: draw(cache_specs(keys.get(name, "user"))) for name in design.caches if own is not None or draw(st.booleans())
        }
        flushed = [name for name in extra["caches"] if keys.get(name) != "request" and draw(st.booleans())]
        extra.setdefault("faults", []).extend(
            {
                "kind": "cache_flush",
                "at_s": draw(st.floats(0.01, duration_s)),
                "cache": name,
                "fraction": draw(st.sampled_from([1.0, 0.5, 0.25])),
            }
            for name in flushed
        )
    named = tuple(store for store in design.vector_stores if store not in VECTOR_STORES)  # declared, so a nearline section
    if design.vector_stores and (named or draw(st.booleans())):
        extra["nearline"] = draw(nearline_specs(duration_s, named))
        if draw(st.booleans()):
            extra.setdefault("faults", []).append(
                {"kind": "nearline_outage", "at_s": draw(st.floats(0.01, duration_s)), "duration_s": draw(st.floats(0.01, duration_s))}
            )
    scenario = make_scenario(
        stages,
        pipelines=[own if own is not None else pipeline],
        arrival=arrival,
        duration_s=duration_s,
        warmup_s=draw(st.floats(0.0, duration_s / 2)),
        drain_s=draw(st.sampled_from([0.0, 0.05, 0.5, 2.0])),
        seed=draw(st.integers(0, 2**31)),
        **extra,
    )
    return scenario, pipeline, draw(st.sampled_from([3, 16, 101, 8192]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_random_scenarios_give_the_simpy_results_request_for_request(case):
    scenario, pipeline, chunk = case
    assert_equivalent(scenario, pipeline, chunk)


# --- chosen cases ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("pipeline", ALL)
@pytest.mark.parametrize("drain_s,chunk", [(0.0, 7), (10.0, 50), (0.3, None)])
def test_overload_with_losses_and_requests_in_flight(pipeline, drain_s, chunk):
    scenario = make_scenario(overload_stages(), pipelines=ALL, qps=1000, duration_s=3.0, warmup_s=1.0, drain_s=drain_s, seed=5)
    recorder = assert_equivalent(scenario, pipeline, chunk)
    requests = recorder.summary()["requests"]
    assert requests["rejected"] > 0 and requests["timed_out"] > 0
    assert (requests["in_flight_at_end"] > 0) == (drain_s == 0.0)
    assert requests["offered"] == requests["completed"] + requests["rejected"] + requests["timed_out"] + requests["in_flight_at_end"]


@pytest.mark.parametrize("entities", ["items", "users"])
def test_a_store_of_its_own_naming_gives_the_simpy_results(entities):
    """A pipeline reading a store of its own naming, refreshed on update by one slow worker (a backlog builds) under
    model publication and a nearline outage: the same ages, stale and mismatched reads, gauges and bill."""
    steps = ["merger", {"stage": "item_fetch", "vectors": "own_vectors"}, "rtp"]
    refresh = {"mode": "on_update", "workers": 1, "latency": {"dist": "exponential", "mean_ms": 5}}
    nearline = {
        "item_updates_per_s": 300,
        "user_events_per_s": 300,
        "model_publish_interval_s": 1.0,
        "version_policy": "latest",
        "stores": {"own_vectors": {"entities": entities, "refresh": refresh}},
    }
    scenario = make_scenario(
        small_stages({"servers": 2, "latency": {"dist": "exponential", "mean_ms": 1}}),
        pipelines=[{"name": "own", "steps": steps}],
        qps=400,
        duration_s=3.0,
        warmup_s=0.5,
        drain_s=0.3,
        seed=11,
        nearline=nearline,
        faults=[{"kind": "nearline_outage", "at_s": 1.2, "duration_s": 0.5}],
    )
    staleness = assert_equivalent(scenario, "own", 101).summary()["staleness"]
    assert staleness["own_vectors_vector_age_s"]["mean"] > 0 and staleness["stale_fraction"] > 0
    assert staleness["vectors_measured"] > 0


@pytest.mark.parametrize("pipeline", ["sequential", "aif"])
def test_caches_with_expiry_evictions_and_a_flush_storm(pipeline):
    """Small caches (evictions), expiry, miss latencies and node-loss flushes under overload: the same hits,
    misses, evictions and latencies."""
    caches = {
        "user_vector": {"capacity": 50, "ttl_s": 0.5},
        "sim_features": {"capacity": 30, "miss_latency": {"dist": "exponential", "mean_ms": 2}},
    }
    faults = [
        {"kind": "cache_flush", "at_s": 1.0, "cache": "user_vector"},
        {"kind": "cache_flush", "at_s": 1.5, "cache": "sim_features", "fraction": 0.25},
    ]
    scenario = make_scenario(
        overload_stages(), pipelines=[pipeline], qps=800, duration_s=3.0, warmup_s=0.5, drain_s=0.3, seed=3, caches=caches, faults=faults
    )
    summary = assert_equivalent(scenario, pipeline, 101).summary()
    for cache in summary["caches"].values():
        assert cache["hits"] > 0 and cache["misses"] > 0 and cache["evictions"] > 0


def test_unbounded_queue_that_never_drains():
    """One server at 3x its capacity, no limit, no timeout: the queue grows for the whole run."""
    stages = {name: negligible() for name in ("merger", "retrieval", "feature_fetch")}
    stages["prerank"] = {"servers": 1, "latency": {"dist": "gamma", "mean_ms": 6, "cv": 0.5}}
    scenario = make_scenario(stages, qps=500, duration_s=3.0, drain_s=1.0, seed=11)
    requests = assert_equivalent(scenario, "sequential", 64).summary()["requests"]
    assert requests["in_flight_at_end"] > 500


def test_trace_arrivals(tmp_path):
    """A trace of distinct times at about 900 QPS, in blocks of 200 (the trace reader's CHUNK)."""
    path = tmp_path / "trace.csv"
    path.write_text("t\n" + "".join(f"{float(t)!r}\n" for t in np.random.default_rng(8).uniform(0, 3.0, 2700)))
    assert_equivalent(
        make_scenario(overload_stages(), pipelines=ALL, arrival={"kind": "trace", "path": str(path)}, duration_s=3.0), "aif", 200
    )


def test_the_array_draws_are_the_requests_draws():
    scenario = make_scenario(overload_stages(), pipelines=["aif"], qps=700, duration_s=2.0, seed=4)
    samplers = build_samplers(scenario, "<test>")
    source = RequestSource(scenario, "aif", samplers, [(1, "sim_features")], 1, 3)
    mine, theirs = list(source.draws(scenario.duration_s)), list(source.blocks(scenario.duration_s))
    assert [len(draws.block.arrival_s) for draws in mine] == [len(requests) for requests in theirs]
    for draws, requests in zip(mine, theirs):
        block, service = draws.block, draws.service_s
        assert draws.miss_s.tolist() == [r.miss_s for r in requests]
        assert draws.sample.tolist() == [r.sample.tolist() for r in requests]
        assert block.arrival_s.tolist() == [r.arrival_s for r in requests]
        assert (block.first_id + np.arange(len(requests))).tolist() == [r.id for r in requests]
        assert block.user.tolist() == [r.user for r in requests]
        assert block.candidates.tolist() == [r.candidates for r in requests]
        assert service.tolist() == [r.service_s for r in requests]


def test_stop_ends_the_run_partial():
    scenario = make_scenario(overload_stages(), pipelines=["uic"], qps=1000, duration_s=3.0, drain_s=1.0, seed=2)
    asked, seen = [], []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 5

    with patch.object(traffic, "CHUNK", 100):
        recorder = run_compiled(scenario, "uic", build_samplers(scenario, "<test>"), progress=seen.append, stop=stop)
    summary = recorder.summary()
    requests = summary["requests"]
    assert summary["partial"] and len(seen) == 5 and seen == sorted(seen)
    assert recorder.window.end_s == seen[-1] < scenario.duration_s
    assert requests["offered"] == 500  # five blocks of 100
    assert requests["offered"] == requests["completed"] + requests["rejected"] + requests["timed_out"] + requests["in_flight_at_end"]
    assert requests["in_flight_at_end"] > 0


def test_the_default_scenario_shortened_gives_the_simpy_results():
    """The shipped default (bursty traffic, a micro-batched user side timed by a measured profile, every
    pipeline) on the compiled engine, request for request."""
    scenario = load_scenario(REPO / "scenarios" / "default.yaml", parse_overrides(["duration_s=3", "warmup_s=0.5"]))
    for pipeline in scenario.pipelines:
        assert_equivalent(scenario, pipeline)


@pytest.mark.parametrize("path", sorted((REPO / "scenarios").glob("*.yaml")), ids=lambda path: path.stem)
def test_every_shipped_scenario_runs_on_the_compiled_engine(path):
    scenario = load_scenario(path)
    assert [why_not(scenario, pipeline) for pipeline in scenario.pipelines] == [None] * len(scenario.pipelines)


# --- what it does not model ------------------------------------------------------------------------------
def why_not(scenario: Scenario, pipeline: str) -> str | None:
    """`unsupported` with the scenario's own samplers."""
    return unsupported(scenario, pipeline, build_samplers(scenario, "<test>"))


def test_unsupported_names_what_it_does_not_model(tmp_path):
    """Batching stages timed per batch by candidates or by empirical samples are refused, by stage; every other
    batching stage, cache, nearline store and fault is modelled."""
    pool = {"servers": 4, "latency": {"dist": "exponential", "mean_ms": 1}}
    plain = {name: pool for pipeline in ALL for name in shipped_designs()[pipeline].stages}
    assert all(why_not(make_scenario(plain, pipelines=ALL), pipeline) is None for pipeline in ALL)
    batching = make_scenario({**small_stages(pool), "light_prerank": pool}, pipelines=ALL)
    assert all(why_not(batching, pipeline) is None for pipeline in ALL)
    samples = tmp_path / "samples.csv"
    samples.write_text("ms\n1.0\n2.0\n")
    batch = {"max_size": 4, "max_wait_ms": 1}
    drawn_per_batch = make_scenario(
        {
            **small_stages(pool),
            "rtp": {"servers": 2, "latency": {"dist": "profile", "path": "profiles/cpu.json", "op": "realtime"}, "batch": batch},
            "user_inference": {"servers": 2, "latency": {"dist": "empirical", "path": str(samples)}, "batch": batch},
        },
        pipelines=["aif"],
    )
    assert why_not(drawn_per_batch, "aif") == (
        "the compiled engine does not model batching stages timed by candidates or by empirical samples (user_inference, rtp)"
    )
    with pytest.raises(ValueError, match="batching stages timed by candidates"):
        run_compiled(drawn_per_batch, "aif", build_samplers(drawn_per_batch, "<test>"))
    caches = make_scenario(plain, pipelines=ALL, caches={"user_vector": {"capacity": 10}, "sim_features": {"capacity": 10}})
    assert all(why_not(caches, pipeline) is None for pipeline in ALL)
    nearline = make_scenario(plain, pipelines=ALL, nearline={"item_updates_per_s": 10, "refresh": {"mode": "periodic", "interval_s": 1}})
    assert all(why_not(nearline, pipeline) is None for pipeline in ALL)
    faults = make_scenario(
        plain,
        pipelines=ALL,
        faults=[
            {"kind": "stage_slowdown", "at_s": 1, "stage": "merger", "factor": 2, "duration_s": 1},
            {"kind": "cache_flush", "at_s": 1, "cache": "user_vector"},
            {"kind": "nearline_outage", "at_s": 1, "duration_s": 1},
        ],
    )
    assert all(why_not(faults, pipeline) is None for pipeline in ALL)


def test_ties_likely_at_queueing_stages_fall_back_to_simpy(tmp_path):
    """Millisecond trace times (many repeated) into constant services at stages with queue limits: visits leave
    a stage exactly as others arrive, which simpy orders as scheduled, so the engines differ; auto runs simpy and
    says why. It does too for constant services at a queueing stage after another constant stage (sums of
    services that can coincide); continuous arrivals into a constant first stage stay compiled."""
    times = np.round(np.sort(np.random.default_rng(3).uniform(0, 3.0, 6000)), 3)
    path = tmp_path / "trace.csv"
    path.write_text("t\n" + "".join(f"{float(t)!r}\n" for t in times))
    stages = {
        "merger": {"servers": 3, "latency": {"dist": "constant", "ms": 1}, "queue_limit": 2},
        "retrieval": {"servers": 9, "latency": {"dist": "constant", "ms": 2}, "queue_limit": 3, "timeout_ms": 2},
        "feature_fetch": {"servers": 3, "latency": {"dist": "constant", "ms": 1}, "queue_limit": 1},
        "prerank": {"servers": 12, "latency": {"dist": "constant", "ms": 3}, "queue_limit": 2},
    }
    scenario = make_scenario(stages, arrival={"kind": "trace", "path": str(path)}, duration_s=3.0)
    samplers = build_samplers(scenario, "<test>")
    simpy_requests = sim_engine.PipelineSimulation(scenario, "sequential", samplers).run().summary()["requests"]
    with patch("aif_sim.compiled.engine.unsupported", return_value=None):  # run it anyway
        compiled_requests = run_compiled(scenario, "sequential", samplers).summary()["requests"]
    assert simpy_requests["rejected"] != compiled_requests["rejected"]
    reason = (
        "the compiled engine may order events at equal times unlike simpy: trace arrivals into constant or empirical services "
        "(merger, retrieval, feature_fetch, prerank)"
    )
    assert choose_engines(scenario, samplers, "auto") == {"sequential": ("simpy", reason)}
    poisson = make_scenario(stages, qps=2000, duration_s=1.0)
    assert why_not(poisson, "sequential") == (
        "the compiled engine may order events at equal times unlike simpy: retrieval queues with constant or empirical services "
        "after constant, empirical or batched services at merger"
    )
    continuous = {name: {**stage, "latency": {"dist": "exponential", "mean_ms": 1}} for name, stage in stages.items()}
    assert why_not(make_scenario({**continuous, "merger": stages["merger"]}, qps=2000, duration_s=1.0), "sequential") is None


def test_gamma_services_with_cv_above_1_fall_back_to_simpy():
    """A gamma of shape 1/cv^2 below 1 draws services below the clock's resolution often enough that a visit ends at
    the very instant it starts, tied with the next arrival there; simpy orders that tie by scheduling order."""
    stages = small_stages({"servers": 4, "latency": {"dist": "gamma", "mean_ms": 8, "cv": 1.8}, "queue_limit": 0})
    scenario = make_scenario(stages, pipelines=["sequential"], qps=300, duration_s=1.0)
    engine, reason = choose_engines(scenario, build_samplers(scenario, "<test>"), "auto")["sequential"]
    assert engine == "simpy" and "cv above 1" in reason and "prerank" in reason


@pytest.mark.parametrize("count, spread", [(0, 0.0), (1, 0.0), (50, 0.01), (5000, 0.01), (5000, 100.0), (3000, 100.0)])
def test_a_steps_requests_are_ordered_by_time_then_rank_then_as_they_came(count: int, spread: float) -> None:
    """The kernel's order of the requests reaching a step, by its insertion sort (nearly sorted arrivals) and by its
    merge sort (far from sorted), is a stable sort by arrival time, then rank: numpy's lexsort."""
    from aif_sim.compiled.engine import _workspace
    from aif_sim.compiled.kernels import _stable_order

    rng = np.random.default_rng(count)
    key = np.round(np.arange(count) * 0.01 + rng.exponential(spread, count), 2)  # rounded: equal times
    tie = rng.integers(0, 3, count)
    work = _workspace(count + 7, 1)
    index = rng.permutation(count + 7)[:count]
    work[0][:count], work[1][:count], work[2][:count] = index, key, tie
    _stable_order(count, work)
    assert work[0][:count].tolist() == index[np.lexsort((tie, key))].tolist()
