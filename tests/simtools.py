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


def overload_stages() -> dict:
    """Every pipeline has a limited stage offered about 2-3x its capacity, with a queue limit and a
    timeout shorter than a full queue's wait (so both rejections and timeouts happen)."""
    return {
        "merger": negligible(),
        "retrieval": {"servers": MANY, "latency": {"dist": "lognormal", "median_ms": 5, "p99_ms": 12}},
        "feature_fetch": {"servers": MANY, "latency": {"dist": "gamma", "mean_ms": 2, "cv": 0.5}},
        "item_fetch": {"servers": MANY, "latency": {"dist": "gamma", "mean_ms": 1, "cv": 0.5}},
        # capacity 400/s; a full queue (20) waits ~50 ms > 25 ms timeout
        "prerank": {"servers": 4, "latency": {"dist": "exponential", "mean_ms": 10}, "queue_limit": 20, "timeout_ms": 25},
        # capacity 400/s; full queue (10) waits ~25 ms > 12 ms
        "user_inference": {"servers": 2, "latency": {"dist": "gamma", "mean_ms": 5, "cv": 0.4}, "queue_limit": 10, "timeout_ms": 12},
        # one batching server: 4 requests per 8 ms = 500/s; full queue (20) waits ~40 ms > 20 ms
        "rtp": {
            "servers": 1,
            "latency": {"dist": "exponential", "mean_ms": 8},
            "batch": {"max_size": 4, "max_wait_ms": 1},
            "queue_limit": 20,
            "timeout_ms": 20,
        },
        # capacity 333/s
        "light_prerank": {"servers": 2, "latency": {"dist": "gamma", "mean_ms": 6, "cv": 0.3}, "queue_limit": 10, "timeout_ms": 20},
    }


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


def refused(argv: list[str], out: Path, capsys: Any) -> str:
    """Run the CLI on argv (writing to `out`), which must refuse it as bad input: exit 2, one line on stderr and
    nothing written. Returns that line."""
    from aif_sim.cli import main

    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and not out.exists(), err
    return err


def assert_same_samples(mine: list[Any], theirs: list[Any]) -> None:
    """Two engines' shadow samples (`core.shadow.ShadowSample`) are the same, field by field (arrays with their dtype)."""
    import dataclasses

    import numpy as np

    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs):
        for field in dataclasses.fields(a):
            x, y = getattr(a, field.name), getattr(b, field.name)
            if isinstance(x, np.ndarray):
                assert x.dtype == y.dtype and np.array_equal(x, y), field.name
            else:
                assert x == y, field.name
