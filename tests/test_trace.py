"""`--trace FRACTION`: request timelines in the Chrome trace-event format, checked against the format's rules and
against the run they describe."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from aif_sim.cli import main
from aif_sim.core.sampling import sampled
from tests.simtools import scenario_dict, small_stages, write_yaml

PHASES = {"X", "i", "C", "M"}  # what aif-sim writes: complete slices, instants, counters, metadata
METADATA = {"process_name": "name", "thread_name": "name", "process_sort_index": "sort_index", "thread_sort_index": "sort_index"}
US = 1e-3  # timestamps are rounded to the nanosecond (1e-3 µs)


def _fleet_scenario(tmp_path: Path, **extra: Any) -> Path:
    """Both pipelines over fleets with shards, hedges and retries, a stage that rejects and times out, caches,
    nearline passes and rollouts, and faults: every kind of event a trace holds."""
    stages = small_stages({"servers": 4, "latency": {"dist": "exponential", "mean_ms": 4}, "queue_limit": 3, "timeout_ms": 6})
    stages["retrieval"] = {
        "servers": 8,
        "nodes": 4,
        "shards": 2,
        "hedge_after_ms": 6,
        "retries": 1,
        "queue_limit": 1,
        "latency": {"dist": "lognormal", "median_ms": 5, "p99_ms": 12},
    }
    data = scenario_dict(
        stages,
        pipelines=["sequential", "aif"],
        qps=400,
        duration_s=3.0,
        warmup_s=0.5,
        caches={
            "user_vector": {"capacity": 300, "ttl_s": 60},
            "sim_features": {"capacity": 300, "miss_latency": {"dist": "constant", "ms": 2}},
        },
        nearline={
            "item_updates_per_s": 50,
            "refresh": {"mode": "periodic", "interval_s": 1, "workers": 2, "latency": {"dist": "constant", "ms": 1}},
            "model_publish_interval_s": 1.5,
        },
        faults=[
            {"kind": "cache_flush", "at_s": 1.0, "cache": "sim_features"},
            {"kind": "stage_slowdown", "at_s": 1.5, "stage": "prerank", "factor": 3, "duration_s": 0.5},
            {"kind": "node_loss", "at_s": 2.0, "stage": "retrieval", "nodes": 1, "duration_s": 0.3},
        ],
        **extra,
    )
    return write_yaml(tmp_path / "fleet.yaml", data)


def _run(scenario: Path, out: Path, *options: str) -> None:
    assert main([str(scenario), "--out", str(out), "--quiet", "--engine", "simpy", *options]) == 0


def check_trace_format(document: dict[str, Any]) -> None:
    """The trace-event format's rules (JSON Object Format) as Perfetto's importer applies them: known phases; numeric
    `ts` (µs) and `dur` ≥ 0 on complete events; integer pid and tid; instants scoped; metadata naming processes and
    tracks; counters with numeric series; and the slices of one track properly nested (a slice that starts inside
    another ends inside it)."""
    assert set(document) >= {"traceEvents"} and document["displayTimeUnit"] in ("ms", "ns")
    tracks: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
    for event in document["traceEvents"]:
        ph = event["ph"]
        assert ph in PHASES, event
        assert isinstance(event["pid"], int) and isinstance(event["name"], str)
        if ph == "M":
            assert event["name"] in METADATA and METADATA[event["name"]] in event["args"], event
            continue
        assert isinstance(event["ts"], (int, float)) and math.isfinite(event["ts"]) and event["ts"] >= 0, event
        if ph == "C":
            assert all(isinstance(v, (int, float)) for v in event["args"].values()), event
            continue
        assert isinstance(event["tid"], int)
        if ph == "i":
            assert event["s"] in ("g", "p", "t")
            continue
        assert isinstance(event["dur"], (int, float)) and event["dur"] >= 0, event
        tracks[(event["pid"], event["tid"])].append((event["ts"], event["ts"] + event["dur"]))
    for track, slices in tracks.items():
        open_ends: list[float] = []
        for start, end in sorted(slices, key=lambda s: (s[0], -s[1])):
            while open_ends and open_ends[-1] <= start + US:
                open_ends.pop()
            assert not open_ends or end <= open_ends[-1] + US, f"track {track}: a slice [{start}, {end}] overlaps its parent's end"
            open_ends.append(end)


def _by_request(events: list[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    requests: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        args = event.get("args", {})
        if "request_id" in args:
            requests[(args["pipeline"], args["request_id"])].append(event)
    return requests


@pytest.fixture(scope="module")
def traced(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("trace")
    out = tmp / "out"
    _run(_fleet_scenario(tmp), out, "--trace", "0.2")
    return out, json.loads((out / "trace.json").read_text())


def test_the_trace_follows_the_trace_event_format(traced):
    check_trace_format(traced[1])


def test_every_request_event_names_its_request_and_pipeline_and_the_tracks_are_named(traced):
    _, document = traced
    events = document["traceEvents"]
    names = {(e["pid"], e["tid"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    processes = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert processes == {"sequential", "aif"}
    for event in events:
        if event["ph"] in ("X", "i") and event.get("cat") not in ("fault", "nearline"):
            assert {"request_id", "pipeline"} <= set(event["args"]), event
            assert (event["pid"], event["tid"]) in names


def test_each_sampled_request_spans_exactly_its_latency(traced):
    """The request's slice and the events under it run from its arrival to its end; a completed request's span is its
    latency in requests.parquet."""
    out, document = traced
    rows = pq.read_table(out / "requests.parquet").to_pandas()
    latency = {(p, int(r)): ms for p, r, ms in zip(rows["pipeline"], rows["request_id"], rows["latency_ms"])}
    checked = 0
    for key, events in _by_request(document["traceEvents"]).items():
        (request,) = [e for e in events if e.get("cat") == "request"]
        start, end = request["ts"], request["ts"] + request["dur"]
        assert min(e["ts"] for e in events) == pytest.approx(start, abs=US)
        assert max(e["ts"] + e.get("dur", 0) for e in events) == pytest.approx(end, abs=2 * US)
        if request["args"]["outcome"] == "completed" and key in latency:
            assert request["dur"] / 1000 == pytest.approx(latency[key], abs=1e-5)
            checked += 1
    assert checked > 50


def test_the_sampled_requests_are_those_the_fraction_keeps_by_id(traced):
    out, document = traced
    rows = pq.read_table(out / "requests.parquet").to_pandas()
    traced_ids = {key for key in _by_request(document["traceEvents"])}
    for pipeline in ("sequential", "aif"):
        ids = rows["request_id"][rows["pipeline"] == pipeline].to_numpy()
        kept = {int(i) for i in ids[sampled(ids, 0.2)]}
        assert kept <= {rid for p, rid in traced_ids if p == pipeline}
        assert {rid for p, rid in traced_ids if p == pipeline and rid in set(ids.tolist())} == kept


def test_parallel_branches_shards_copies_retries_failures_and_caches_appear(traced):
    _, document = traced
    events = document["traceEvents"]
    parts = [e for e in events if e.get("cat") == "part"]
    assert any(e["args"]["part"].startswith("shard 2") for e in parts)
    assert any("hedge copy" in e["args"]["part"] for e in parts)
    assert any("retry" in e["name"] for e in parts) and any(e["args"]["outcome"] == "rejected" for e in parts)
    for events_of in _by_request(events).values():  # the shards of one visit run on distinct nodes
        first = [e for e in events_of if e.get("cat") == "part" and e["args"]["part"] in ("shard 1", "shard 2")]
        if len(first) == 2:
            assert first[0]["args"]["node"] != first[1]["args"]["node"]
    visits = [e for e in events if e.get("cat") == "visit"]
    assert {e["args"]["outcome"] for e in visits} >= {"completed", "rejected", "timed_out"}
    caches = {e["name"] for e in events if e.get("cat") == "cache"}
    assert caches >= {"user_vector hit", "user_vector miss", "sim_features hit", "sim_features miss"}
    for events_of in _by_request(events).values():  # AIF's user side runs beside retrieval, on a track of its own
        by_stage = {e["args"]["stage"]: e for e in events_of if e.get("cat") == "visit"}
        if "user_inference" in by_stage and "retrieval" in by_stage:
            assert by_stage["user_inference"]["tid"] != by_stage["retrieval"]["tid"]
            assert by_stage["user_inference"]["ts"] == pytest.approx(by_stage["retrieval"]["ts"], abs=US)


def test_faults_and_nearline_passes_and_rollouts_are_tracks_of_their_own(traced):
    _, document = traced
    events = document["traceEvents"]
    tracks = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    faults = [e for e in events if e.get("cat") == "fault"]
    assert {e["name"] for e in faults} == {"cache_flush", "stage_slowdown", "node_loss"}
    assert all(tracks[(e["pid"], e["tid"])] == "faults" for e in faults)
    slowdown = next(e for e in faults if e["name"] == "stage_slowdown")
    assert (slowdown["ts"], slowdown["dur"]) == (pytest.approx(1.5e6), pytest.approx(0.5e6))
    nearline = [e for e in events if e.get("cat") == "nearline"]
    assert {tracks[(e["pid"], e["tid"])] for e in nearline} == {"nearline item vectors"}
    rollouts = sorted(e["ts"] for e in nearline if e["name"].startswith("rollout"))
    assert rollouts == pytest.approx([1.5e6, 3.0e6, 4.5e6][: len(rollouts)]) and len(rollouts) >= 2


def test_tracing_changes_no_result_and_is_deterministic(tmp_path):
    scenario = _fleet_scenario(tmp_path)
    _run(scenario, tmp_path / "plain")
    _run(scenario, tmp_path / "a", "--trace", "0.1")
    _run(scenario, tmp_path / "b", "--trace", "0.1")
    plain, a = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("plain", "a"))
    assert a == plain
    assert not (tmp_path / "plain" / "trace.json").exists()
    assert (tmp_path / "a" / "trace.json").read_bytes() == (tmp_path / "b" / "trace.json").read_bytes()


def test_the_file_grows_with_the_fraction_and_not_beyond_it(tmp_path):
    """Request events are bounded per request, and the sampled requests are a binomial draw of the fraction."""
    scenario = _fleet_scenario(tmp_path)
    counts = {}
    for fraction in (0.05, 0.2):
        _run(scenario, tmp_path / str(fraction), "--trace", str(fraction))
        document = json.loads((tmp_path / str(fraction) / "trace.json").read_text())
        requests = _by_request(document["traceEvents"])
        finished = 2 * 400 * 3.0  # two pipelines, 400 QPS for 3 s, all of them finish
        n = len(requests)
        spread = 5 * math.sqrt(finished * fraction * (1 - fraction))
        assert abs(n - finished * fraction) < spread, (fraction, n)
        assert max(len(events) for events in requests.values()) <= 60
        counts[fraction] = sum(len(events) for events in requests.values())
    assert 2 < counts[0.2] / counts[0.05] < 8


def test_the_compiled_engine_refuses_to_trace_and_auto_falls_back(tmp_path, capsys):
    scenario = write_yaml(
        tmp_path / "s.yaml", scenario_dict(small_stages({"servers": 8, "latency": {"dist": "gamma", "mean_ms": 4, "cv": 1}}))
    )
    assert main([str(scenario), "--out", str(tmp_path / "o"), "--quiet", "--engine", "compiled", "--trace", "0.1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--trace" in err and not (tmp_path / "o").exists()
    assert main([str(scenario), "--out", str(tmp_path / "o"), "--quiet", "--trace", "0.1"]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["engines"] == {"sequential": "simpy"} and "--trace" in summary["warnings"][0]
    assert main([str(scenario), "--out", str(tmp_path / "o"), "--quiet", "--trace", "2"]) == 2


def test_a_request_abandoned_at_its_deadline_ends_at_the_deadline(tmp_path):
    scenario = _fleet_scenario(tmp_path, deadline_ms=15)
    _run(scenario, tmp_path / "o", "--trace", "0.3")
    document = json.loads((tmp_path / "o" / "trace.json").read_text())
    check_trace_format(document)
    abandoned = 0
    for events in _by_request(document["traceEvents"]).values():
        (request,) = [e for e in events if e.get("cat") == "request"]
        assert max(e["ts"] + e.get("dur", 0) for e in events) <= request["ts"] + request["dur"] + 2 * US
        if request["args"]["outcome"] == "timed_out" and request["dur"] == pytest.approx(15_000, abs=US):
            abandoned += 1
    assert abandoned > 0


def test_a_live_run_traces_its_requests_by_the_same_rules(tmp_path):
    """The live engine reports the same timelines from its own visit handlers: each request's events span its
    latency, a sharded and hedged stage draws its parts on their nodes."""
    from tests.live.test_live_engine import live_dict

    fleet = {"stages.retrieval.nodes": 4, "stages.retrieval.shards": 2, "stages.retrieval.hedge_after_ms": 3}
    scenario = write_yaml(tmp_path / "live.yaml", live_dict(pipelines=["sequential", "aif"], **fleet))
    out = tmp_path / "out"
    assert main(["live", str(scenario), "--out", str(out), "--quiet", "--trace", "0.5"]) == 0
    document = json.loads((out / "trace.json").read_text())
    check_trace_format(document)
    rows = pq.read_table(out / "requests.parquet").to_pandas()
    latency = {(p, int(r)): ms for p, r, ms in zip(rows["pipeline"], rows["request_id"], rows["latency_ms"])}
    requests = _by_request(document["traceEvents"])
    checked = 0
    for key, events in requests.items():
        (request,) = [e for e in events if e.get("cat") == "request"]
        assert max(e["ts"] + e.get("dur", 0) for e in events) == pytest.approx(request["ts"] + request["dur"], abs=2 * US)
        if key in latency:
            assert request["dur"] / 1000 == pytest.approx(latency[key], abs=1e-5)
            checked += 1
    assert checked > 20
    parts = [e for e in document["traceEvents"] if e.get("cat") == "part"]
    assert {"shard 1", "shard 2"} <= {e["args"]["part"] for e in parts}
