"""`validate`: the DES against the live engine on the same scenario, at several loads.

1. At each load, time the scenario's model stages on this host through the live engine's own calls, paced
   as a server sees them at that load (`live.calibrate`); the DES times those stages from that profile
   (written beside the results as profile_<qps>qps.json).
2. At each load, run the DES and the live engine on the same arrivals and the same draws for the other
   stages (the same scenario and seed), collecting every completed measured request's latency.
3. Per pipeline and load: p50/p90/p99 and throughput of both, the relative error DES/live − 1, and 95%
   bootstrap confidence intervals of each (the two runs resampled independently).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aif_sim.app.plan import server_rates
from aif_sim.app.run import build_samplers, simulate
from aif_sim.atomic import write_json
from aif_sim.core.latency import Sampler
from aif_sim.errors import InputError
from aif_sim.live.calibrate import calibrate_live, model_stages
from aif_sim.live.run import LiveResources, check_live, live_resources, run_live
from aif_sim.metrics.recorder import CompletedBlock, Recorder
from aif_sim.scenario import Override, Scenario, load_scenario

QUANTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0}
LOAD_SHARES = (0.2, 0.4, 0.6, 0.8)  # default loads: these shares of the slowest pipeline's capacity
BOOTSTRAP = 1000
TOLERANCE = 0.10  # the fidelity target: DES within 10% of live on p50 and p99


class LatencySamples:
    """A request sink that keeps the latency of every completed measured request, per pipeline."""

    def __init__(self) -> None:
        self.blocks: dict[str, list[np.ndarray]] = defaultdict(list)

    def write(self, pipeline: str, stages: list[str], caches: list[str], block: CompletedBlock) -> None:
        self.blocks[pipeline].append(block.latency_ms)

    def of(self, pipeline: str) -> np.ndarray:
        return np.concatenate(self.blocks[pipeline]) if self.blocks[pipeline] else np.empty(0)


@dataclass
class ValidateRun:
    """What validate works on: the scenario file and overrides, and where results go."""

    source: str
    overrides: list[Override]
    duration_s: float | None
    progress: Callable[[str, float, float], None]
    stop: Callable[[], bool]
    points: list[dict[str, Any]] = field(default_factory=list)
    curves: list[dict[str, Any]] = field(default_factory=list)  # per load: engine -> pipeline -> latencies


def _scenario(run: ValidateRun, extra: list[Override]) -> Scenario:
    base = run.overrides + ([("duration_s", run.duration_s, "--duration")] if run.duration_s is not None else [])
    return load_scenario(run.source, base + extra)


def _calibrate(run: ValidateRun, scenario: Scenario, resources: LiveResources, folder: Path, qps: float) -> Path:
    """The host's profile of the model stages, calls paced as at this load (`live.calibrate`), as a file in `folder`."""
    label = f"calibrating at {qps:g} QPS"
    run.progress(label, 0, 1)
    path = folder / f"profile_{qps:g}qps.json"
    write_json(path, calibrate_live(scenario, resources.model, resources.executor, qps))
    run.progress(label, 1, 1)
    return path


def des_overrides(scenario: Scenario, profile: Path) -> list[Override]:
    """The model stages timed from the host's profile."""
    return [
        (f"stages.{stage}.latency", {"dist": "profile", "path": str(profile.resolve()), "op": op}, "validate")
        for stage, op in model_stages(scenario).items()
    ]


def capacity_qps(scenario: Scenario, samplers: dict[str, Sampler]) -> dict[str, float]:
    """Per pipeline, the load its busiest pool saturates at: min over its stages of servers x one server's rate
    (`plan.server_rates`)."""
    return {
        pipeline: min(scenario.stages[stage].servers * rate for stage, rate in server_rates(scenario, pipeline, samplers).items())
        for pipeline in scenario.pipelines
    }


def _quantiles(latency: np.ndarray) -> dict[str, float]:
    return {f"{name}_ms": float(np.percentile(latency, q)) if len(latency) else float("nan") for name, q in QUANTILES.items()}


def _bootstrap(des: np.ndarray, live: np.ndarray, rng: np.random.Generator) -> dict[str, dict[str, list[float]]]:
    """95% intervals of each quantile of both runs and of their relative error, resampling each run."""
    if len(des) < 2 or len(live) < 2:
        return {}
    qs = list(QUANTILES.values())
    d = np.percentile(des[rng.integers(0, len(des), (BOOTSTRAP, len(des)))], qs, axis=1)
    v = np.percentile(live[rng.integers(0, len(live), (BOOTSTRAP, len(live)))], qs, axis=1)
    out: dict[str, dict[str, list[float]]] = {"des": {}, "live": {}, "error": {}}
    for i, name in enumerate(QUANTILES):
        for key, values in (("des", d[i]), ("live", v[i]), ("error", d[i] / v[i] - 1)):
            lo, hi = np.percentile(values, [2.5, 97.5])
            out[key][f"{name}_ms" if key != "error" else name] = [float(lo), float(hi)]
    return out


def compare(
    pipeline: str, qps: float, des: Recorder, live: Recorder, des_ms: np.ndarray, live_ms: np.ndarray, rng: np.random.Generator
) -> dict[str, Any]:
    """One point of validate.json."""
    des_summary, live_summary = des.summary(), live.summary()
    des_stats = {**_quantiles(des_ms), "throughput_qps": des_summary["throughput_qps"]}
    live_stats = {**_quantiles(live_ms), "throughput_qps": live_summary["throughput_qps"]}
    stages = live_summary["stages"]
    busiest = max(stages, key=lambda name: stages[name]["utilization"])
    error = {name: des_stats[f"{name}_ms"] / live_stats[f"{name}_ms"] - 1 for name in QUANTILES}
    error["throughput"] = des_stats["throughput_qps"] / live_stats["throughput_qps"] - 1
    return {
        "pipeline": pipeline,
        "qps": qps,
        "utilization": stages[busiest]["utilization"],
        "bottleneck": busiest,
        "samples": int(len(live_ms)),
        "des_samples": int(len(des_ms)),
        "des": des_stats,
        "live": live_stats,
        "error": error,
        "ci95": _bootstrap(des_ms, live_ms, rng),
        "within_tolerance": {name: bool(abs(error[name]) <= TOLERANCE) for name in ("p50", "p99")},
        "stage_mean_ms": {
            stage: {"des": des_summary["stages"][stage]["latency_ms"]["mean"], "live": stages[stage]["latency_ms"]["mean"]}
            for stage in stages
        },
    }


def validate(run: ValidateRun, qps: list[float] | None, folder: Path) -> dict[str, Any]:
    """Calibrate and run both engines at each load; the validate.json document (profiles go to `folder`)."""
    scenario = _scenario(run, [])
    if scenario.traffic.arrival.kind != "poisson":
        raise InputError(
            f"{run.source}: traffic.arrival.kind: validate sets the load of a poisson arrival; got {scenario.traffic.arrival.kind}"
        )
    check_live(scenario, run.source)
    build_samplers(scenario, run.source)
    rng = np.random.default_rng(scenario.seed)
    profiles: dict[float, Path] = {}
    with live_resources(scenario) as resources:

        def profile_at(q: float) -> Path:
            if q not in profiles:
                profiles[q] = _calibrate(run, scenario, resources, folder, q)
            return profiles[q]

        # the pipelines' capacities, from a profile at the first load (or at the scenario's own)
        base = _scenario(run, des_overrides(scenario, profile_at(qps[0] if qps else scenario.traffic.arrival.qps)))
        capacity = capacity_qps(base, build_samplers(base, run.source))
        for q in qps or [round(share * min(capacity.values()), 1) for share in LOAD_SHARES]:
            if run.stop():
                break
            load: Override = ("traffic.arrival.qps", q, "--qps")
            live_scenario = _scenario(run, [load])
            profile = profile_at(q)
            des_scenario = _scenario(run, des_overrides(scenario, profile) + [load])
            des_samples, live_samples = LatencySamples(), LatencySamples()
            des = simulate(des_scenario, build_samplers(des_scenario, run.source), des_samples)
            live, blocks = run_live(
                live_scenario, build_samplers(live_scenario, run.source), live_samples, run.progress, run.stop, resources
            )
            for pipeline, recorder in live.items():
                point = compare(pipeline, q, des[pipeline], recorder, des_samples.of(pipeline), live_samples.of(pipeline), rng)
                point["live_schedule"] = blocks[pipeline]
                run.points.append(point)
            run.curves.append({"qps": q, "des": dict(des_samples.blocks), "live": dict(live_samples.blocks)})
    return {
        "scenario": scenario.name,
        "seed": scenario.seed,
        "duration_s": scenario.duration_s,
        "tolerance": TOLERANCE,
        "capacity_qps": capacity,
        "partial": bool(run.stop()),
        "profiles": {f"{q:g}": path.name for q, path in profiles.items()},
        "points": run.points,
    }
