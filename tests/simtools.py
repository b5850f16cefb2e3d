"""Shared helpers for the simulator tests: scenarios built in code, validated like a file would be."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from aif_sim.app.run import build_samplers, simulate
from aif_sim.scenario import Scenario, validate_scenario

ZERO = {"dist": "constant", "ms": 0}
MANY = 100_000  # "unlimited" servers: no request ever waits


def small_stages(prerank: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The stages of the sequential and aif pipelines, sized for a few hundred QPS, with the given prerank."""
    return {
        "merger": {"servers": 8, "latency": {"dist": "constant", "ms": 0.5}},
        "retrieval": {"servers": 64, "latency": {"dist": "lognormal", "median_ms": 5, "p99_ms": 12}},
        "user_inference": {"servers": 8, "latency": {"dist": "gamma", "mean_ms": 3, "cv": 0.4}},
        "feature_fetch": {"servers": 32, "latency": {"dist": "gamma", "mean_ms": 2, "cv": 0.5}},
        "item_fetch": {"servers": 32, "latency": {"dist": "gamma", "mean_ms": 1, "cv": 0.5}},
        "prerank": prerank,
        "rtp": {"servers": 8, "latency": {"dist": "exponential", "mean_ms": 2}, "batch": {"max_size": 4, "max_wait_ms": 1}},
    }


def negligible(servers: int = MANY) -> dict[str, Any]:
    """A stage that takes no time and never queues."""
    return {"servers": servers, "latency": dict(ZERO)}


def scenario_dict(
    stages: dict[str, dict[str, Any]],
    pipelines: list[str] | tuple[str, ...] = ("sequential",),
    qps: float = 100.0,
    duration_s: float = 10.0,
    warmup_s: float = 0.0,
    drain_s: float = 5.0,
    seed: int = 1,
    candidates: int = 100,
    arrival: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A scenario mapping with the given stages (stage name -> stage mapping) and Poisson arrivals."""
    data: dict[str, Any] = {
        "name": "test",
        "seed": seed,
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        "drain_s": drain_s,
        "pipelines": list(pipelines),
        "traffic": {
            "arrival": arrival or {"kind": "poisson", "qps": qps},
            "users": {"count": 1000, "zipf_s": 1.1},
            "items": {"count": 1000, "zipf_s": 0.9},
            "candidates": candidates,
        },
        "stages": copy.deepcopy(stages),
    }
    data.update(copy.deepcopy(extra))
    return data


def make_scenario(stages: dict[str, dict[str, Any]], **kwargs: Any) -> Scenario:
    """Build a scenario mapping (see `scenario_dict`) and validate it with `validate_scenario`."""
    return validate_scenario(scenario_dict(stages, **kwargs), source="<test>")


def single_queue_scenario(latency: dict[str, Any], servers: int, qps: float, **kwargs: Any) -> Scenario:
    """A `sequential` pipeline whose only non-negligible stage is `prerank` (servers, latency):
    merger, retrieval and feature_fetch take 0 ms on unlimited servers, so the pipeline is one queue."""
    stages = {
        "merger": negligible(),
        "retrieval": negligible(),
        "feature_fetch": negligible(),
        "prerank": {"servers": servers, "latency": latency},
    }
    return make_scenario(stages, pipelines=["sequential"], qps=qps, **kwargs)


def run_summaries(scenario: Scenario, sink: Any = None) -> dict[str, dict[str, Any]]:
    """Simulate every pipeline of the scenario; the METRICS block of each."""
    results = simulate(scenario, build_samplers(scenario, "<test>"), sink)
    return {name: metrics.summary() for name, metrics in results.items()}


class RowSink:
    """Collects (pipeline, request id, arrival, latency, per-stage ms) of every completed measured request."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int, float, float, dict[str, float]]] = []

    def write(self, pipeline: str, stages: list[str], caches: list[str], block: Any) -> None:
        for i, rid in enumerate(block.request_id.tolist()):
            stage_ms = dict(zip(stages, block.stage_ms[i].tolist()))
            self.rows.append((pipeline, rid, float(block.arrival_s[i]), float(block.latency_ms[i]), stage_ms))


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
