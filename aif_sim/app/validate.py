"""`validate`: the DES against the live engine on the same scenario, at several loads.

1. At each load, time the scenario's model stages on this host through the live engine's own calls, paced
   as a server sees them at that load (`live.calibrate`); the DES times those stages from that profile
   (written beside the results as profile_<qps>qps.json). A stage that fetches item vectors live runs longer
   than its draw (the fetch of thousands of vectors per request): the calibration also times that fetch through
   the live engine's storage, and the DES adds it to the stage as `per_candidate_us` (`live.calibrate`).
2. At each load, run the DES and the live engine on the same arrivals and the same draws for the other
   stages (the same scenario and seed), collecting every completed measured request's latency.
3. Then the replay: the DES again, on the live run's own arrivals, each request's measured service time at
   each stage visit (`core.replay`: the time the live engine held a server for it) and its time between steps
   outside any stage (the load generator's lag, the loop's hand-offs at a parallel step), so that only the
   queueing model stands between the replay and the live run.
4. Per pipeline and load: p50/p90/p99 and throughput of the profile DES, the replay and the live run; the relative
   errors DES/live − 1 and replay/live − 1 with 95% confidence intervals by batch means over time windows
   (`batch_intervals`); per stage the mean wait of each, the service-time model's error (`service_error`: the
   profile DES's mean service against the live measured mean), the live time spent outside any stage visit
   (`outside_stages_ms`), and the stage whose mean latency differs most between the DES and live
   (`diverging_stage`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from aif_sim.app.plan import server_rates
from aif_sim.app.run import build_samplers, simulate
from aif_sim.atomic import write_json
from aif_sim.core.latency import Sampler
from aif_sim.core.replay import ServiceTrace
from aif_sim.errors import InputError
from aif_sim.live.calibrate import calibrate_live, fetch_stages, model_stages
from aif_sim.live.run import LiveResources, check_live, live_resources, run_live
from aif_sim.metrics.recorder import CompletedBlock, Recorder
from aif_sim.scenario import Override, Scenario, load_scenario

QUANTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0}
LOAD_SHARES = (0.2, 0.4, 0.6, 0.8)  # default loads: these shares of the slowest pipeline's capacity
BATCHES = 20  # time windows of a run for its confidence intervals
TOLERANCE = 0.10  # the fidelity target: DES within 10% of live on p50 and p99
# A stage's mean wait below this is no wait at all: the live loop's own timing noise (an idle loop's wake-up is
# ~0.08 ms late). Where both the model's and live's are below it, their relative error is not given (NaN).
WAIT_FLOOR_MS = 0.05


def outside_stages_ms(step_slots: list[list[int]], latency_ms: np.ndarray, stage_ms: np.ndarray) -> np.ndarray:
    """Per request, its latency less the time its steps took (a parallel step its longest branch's visit; a stage
    it skipped nothing; `step_slots` the pipeline's, `Pipeline.step_slots`): the time spent outside any stage visit (none in a DES; live, the load generator's lag
    and the loop's hand-offs between stages)."""
    steps = [np.nan_to_num(np.nanmax(stage_ms[:, group], axis=1, initial=0.0), nan=0.0) for group in step_slots]
    return latency_ms - np.sum(steps, axis=0)


class LatencySamples:
    """A request sink that keeps the latency, arrival time and time outside stage visits of every completed measured
    request, per pipeline."""

    def __init__(self, scenario: Scenario) -> None:
        self.steps = {pipeline.name: pipeline.step_slots for pipeline in scenario.pipeline_defs}
        self.blocks: dict[str, list[np.ndarray]] = defaultdict(list)
        self.arrivals: dict[str, list[np.ndarray]] = defaultdict(list)
        self.outside: dict[str, list[np.ndarray]] = defaultdict(list)

    def write(self, pipeline: str, stages: list[str], caches: list[str], block: CompletedBlock) -> None:
        self.blocks[pipeline].append(block.latency_ms)
        self.arrivals[pipeline].append(block.arrival_s)
        self.outside[pipeline].append(outside_stages_ms(self.steps[pipeline], block.latency_ms, block.stage_ms))

    def of(self, pipeline: str) -> tuple[np.ndarray, np.ndarray]:
        """The pipeline's latencies (ms) and arrival times (s)."""
        if not self.blocks[pipeline]:
            return np.empty(0), np.empty(0)
        return np.concatenate(self.blocks[pipeline]), np.concatenate(self.arrivals[pipeline])

    def outside_ms(self, pipeline: str) -> dict[str, float]:
        """Mean, p50 and p99 of the pipeline's time outside stage visits (ms)."""
        outside = np.concatenate(self.outside[pipeline]) if self.outside[pipeline] else np.empty(0)
        if not len(outside):
            return {"mean": float("nan"), "p50": float("nan"), "p99": float("nan")}
        return {"mean": float(outside.mean()), "p50": float(np.percentile(outside, 50)), "p99": float(np.percentile(outside, 99))}


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


def _calibrate(
    run: ValidateRun, scenario: Scenario, samplers: dict[str, Sampler], resources: LiveResources, folder: Path, qps: float
) -> Path:
    """The host's profile of the model stages and of item-vector fetches, calls paced as at this load (`live.calibrate`),
    as a file in `folder`."""
    label = f"calibrating at {qps:g} QPS"
    run.progress(label, 0, 1)
    path = folder / f"profile_{qps:g}qps.json"
    write_json(path, calibrate_live(scenario, samplers, resources.model, resources.executor, qps))
    run.progress(label, 1, 1)
    return path


def des_overrides(scenario: Scenario, profile: Path) -> list[Override]:
    """The model stages timed from the host's profile; the stages that fetch item vectors given the per-candidate
    cost it measured (its `per_candidate_us`)."""
    latency: list[Override] = [
        (f"stages.{stage}.latency", {"dist": "profile", "path": str(profile.resolve()), "op": op}, "validate")
        for stage, op in model_stages(scenario).items()
    ]
    fetch = json.loads(profile.read_text()).get("per_candidate_us", {})
    return latency + [(f"stages.{stage}.per_candidate_us", us, "validate") for stage, us in fetch.items()]


def capacity_qps(scenario: Scenario, samplers: dict[str, Sampler]) -> dict[str, float]:
    """Per pipeline, the load its busiest pool saturates at: min over its stages of servers x one server's rate
    (`plan.server_rates`)."""
    return {
        pipeline: min(scenario.stages[stage].servers * rate for stage, rate in server_rates(scenario, pipeline, samplers).items())
        for pipeline in scenario.pipelines
    }


def _quantiles(latency: np.ndarray) -> dict[str, float]:
    return {f"{name}_ms": float(np.percentile(latency, q)) if len(latency) else float("nan") for name, q in QUANTILES.items()}


def _run_intervals(latency: np.ndarray, window: np.ndarray, batches: int, t: float) -> tuple[np.ndarray, np.ndarray]:
    """One run's 95% intervals of its quantiles [quantiles, 2] (ms), and per window the deviation of its linearised
    log quantile [batches, quantiles] (see `batch_intervals`)."""
    levels = np.array(list(QUANTILES.values())) / 100
    whole = np.quantile(latency, levels)
    below = np.array([(latency[window == b][:, None] <= whole).mean(axis=0) for b in range(batches)])
    half = t * below.std(axis=0, ddof=1)
    low, high = np.clip(levels - half, 0, 1), np.clip(levels + half, 0, 1)
    interval = np.stack([np.quantile(latency, low), np.quantile(latency, high)], axis=1)
    spread = np.log(interval[:, 1]) - np.log(interval[:, 0])
    slope = np.divide(spread, high - low, out=np.zeros_like(spread), where=high > low)  # d log(quantile) / d level
    return interval, -(below - below.mean(axis=0)) * slope


def batch_intervals(
    des: np.ndarray, des_arrival: np.ndarray, live: np.ndarray, live_arrival: np.ndarray, batches: int = BATCHES
) -> dict[str, dict[str, list[float]]]:
    """95% intervals of each quantile of both runs and of their relative error, by batch means over time windows.

    Queueing delays are autocorrelated (a busy period delays many requests in a row), so an i.i.d. bootstrap over
    requests takes n correlated latencies for n independent ones and gives intervals far too narrow. Instead the
    span of arrival times is cut into `batches` equal windows, common to both runs; windows long against the
    queue's memory give nearly independent, identically distributed batch statistics, whose spread is measured.

    The batch statistic is a mean, as batch means require: the share of a window's requests at or below the whole
    run's quantile q. Its t-interval (batches − 1 degrees of freedom) around the level p, inverted through the
    run's empirical quantile function, is q's interval (Seila's indicator batch means). The batch-quantile method
    (a t-interval over each window's own quantile) was tried and rejected: a p99 of a window of a few hundred requests
    is a biased, skewed statistic: on M/M/1 sojourns (tests/test_validate_stats.py) its p99 intervals covered
    70-78% where these cover 86-92%; a moving-block bootstrap would need a block length tuned to the correlation.

    The relative error DES/live − 1 pairs the windows: both runs serve the same arrivals with the same draws
    (common random numbers), so window b of the DES and of the live run share their bursts. Each run's log quantile
    is linearised in its windows' shares (Bahadur: log q moves by −(p_b − p) times the slope of log quantile by level,
    read off the interval), and the t-interval of the paired differences, around log(DES/live), gives the error's:
    it counts the runs' correlation, where combining them as independent would count their shared bursts twice.
    Runs too short for `2 x batches` requests, or with a window without any, get no interval ({})."""
    if min(len(des), len(live)) < 2 * batches:
        return {}
    low, high = min(des_arrival.min(), live_arrival.min()), max(des_arrival.max(), live_arrival.max())
    span = max(high - low, 1e-12)
    windows = [np.minimum(((arrival - low) / span * batches).astype(int), batches - 1) for arrival in (des_arrival, live_arrival)]
    if any(len(np.unique(window)) < batches for window in windows):
        return {}
    t = float(stats.t.ppf(0.975, batches - 1)) / np.sqrt(batches)
    (des_interval, des_dev), (live_interval, live_dev) = (
        _run_intervals(latency, window, batches, t) for latency, window in zip((des, live), windows)
    )
    levels = list(QUANTILES.values())
    ratio = np.log(np.percentile(des, levels)) - np.log(np.percentile(live, levels))
    half = t * (des_dev - live_dev).std(axis=0, ddof=1)
    return {
        "des": {f"{name}_ms": des_interval[i].tolist() for i, name in enumerate(QUANTILES)},
        "live": {f"{name}_ms": live_interval[i].tolist() for i, name in enumerate(QUANTILES)},
        "error": {name: [float(np.exp(ratio[i] - half[i]) - 1), float(np.exp(ratio[i] + half[i]) - 1)] for i, name in enumerate(QUANTILES)},
    }


def diverging_stage(stage_mean_ms: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The stage whose mean latency differs most, relatively, between the DES and the live run (of those both ran)."""
    errors = {name: means["des"] / means["live"] - 1 for name, means in stage_mean_ms.items() if means["live"] > 0 and means["des"] > 0}
    stage = max(errors, key=lambda name: abs(errors[name]))
    return {"stage": stage, "des_ms": stage_mean_ms[stage]["des"], "live_ms": stage_mean_ms[stage]["live"], "error": errors[stage]}


def relative_errors(model: dict[str, float], live: dict[str, float]) -> dict[str, float]:
    """model/live − 1 of each figure both have (NaN where live's is 0)."""
    return {name: model[name] / live[name] - 1 if live[name] else float("nan") for name in model if name in live}


def mean_service_ms(summary: dict[str, Any]) -> dict[str, float]:
    """Per stage, the mean time a visit spent in service (ms): its mean latency less its mean wait (a batch member's
    service is its batch's)."""
    return {name: stage["latency_ms"]["mean"] - stage["wait_ms"]["mean"] for name, stage in summary["stages"].items()}


def mean_wait_ms(summary: dict[str, Any]) -> dict[str, float]:
    """Per stage, the mean time a visit waited for a server (ms)."""
    return {name: stage["wait_ms"]["mean"] for name, stage in summary["stages"].items()}


def service_error(des: dict[str, Any], live: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The service-time model's error per stage: the profile DES's mean service (its draws: a profile's, a stated
    distribution's) against the live run's measured mean (ms), and DES/live − 1."""
    des_ms, live_ms = mean_service_ms(des), mean_service_ms(live)
    errors = relative_errors(des_ms, live_ms)
    return {name: {"des_ms": des_ms[name], "live_ms": live_ms[name], "error": errors[name]} for name in live_ms}


def replay_point(
    pipeline: str, replay: Recorder, live: Recorder, replay_samples: LatencySamples, live_samples: LatencySamples
) -> dict[str, Any]:
    """The replay's figures against live's: p50/p90/p99 and throughput, each stage's mean wait, their errors
    replay/live − 1 and the 95% intervals of the quantiles and their errors (`batch_intervals`)."""
    (replay_ms, replay_arrival), (live_ms, live_arrival) = replay_samples.of(pipeline), live_samples.of(pipeline)
    replay_summary, live_summary = replay.summary(), live.summary()
    figures = {**_quantiles(replay_ms), "throughput_qps": replay_summary["throughput_qps"]}
    live_figures = {**_quantiles(live_ms), "throughput_qps": live_summary["throughput_qps"]}
    wait, live_wait = mean_wait_ms(replay_summary), mean_wait_ms(live_summary)
    error: dict[str, Any] = {name: figures[f"{name}_ms"] / live_figures[f"{name}_ms"] - 1 for name in QUANTILES}
    error["throughput"] = figures["throughput_qps"] / live_figures["throughput_qps"] - 1
    error["wait"] = {
        name: error if max(wait[name], live_wait[name]) >= WAIT_FLOOR_MS else float("nan")
        for name, error in relative_errors(wait, live_wait).items()
    }
    intervals = batch_intervals(replay_ms, replay_arrival, live_ms, live_arrival)
    return {
        **figures,
        "samples": int(len(replay_ms)),
        "wait_ms": wait,
        "error": error,
        "ci95": {"replay": intervals.get("des", {}), "error": intervals.get("error", {})},
        "within_tolerance": {name: bool(abs(error[name]) <= TOLERANCE) for name in ("p50", "p99")},
        "outside_stages_ms": replay_samples.outside_ms(pipeline),
        "engine": replay.engine,
    }


def compare(
    pipeline: str,
    qps: float,
    des: Recorder,
    live: Recorder,
    des_samples: LatencySamples,
    live_samples: LatencySamples,
    replay: Recorder,
    replay_samples: LatencySamples,
) -> dict[str, Any]:
    """One point of validate.json."""
    (des_ms, des_arrival), (live_ms, live_arrival) = des_samples.of(pipeline), live_samples.of(pipeline)
    des_summary, live_summary = des.summary(), live.summary()
    des_stats = {**_quantiles(des_ms), "throughput_qps": des_summary["throughput_qps"]}
    live_stats = {**_quantiles(live_ms), "throughput_qps": live_summary["throughput_qps"]}
    stages = live_summary["stages"]
    busiest = max(stages, key=lambda name: stages[name]["utilization"])
    error = {name: des_stats[f"{name}_ms"] / live_stats[f"{name}_ms"] - 1 for name in QUANTILES}
    error["throughput"] = des_stats["throughput_qps"] / live_stats["throughput_qps"] - 1
    stage_means = {
        stage: {"des": des_summary["stages"][stage]["latency_ms"]["mean"], "live": stages[stage]["latency_ms"]["mean"]} for stage in stages
    }
    des_stats["wait_ms"] = mean_wait_ms(des_summary)
    live_stats["wait_ms"] = mean_wait_ms(live_summary)
    live_stats["outside_stages_ms"] = live_samples.outside_ms(pipeline)
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
        "ci95": batch_intervals(des_ms, des_arrival, live_ms, live_arrival),
        "within_tolerance": {name: bool(abs(error[name]) <= TOLERANCE) for name in ("p50", "p99")},
        "stage_mean_ms": stage_means,
        "diverging_stage": diverging_stage(stage_means),
        "replay": replay_point(pipeline, replay, live, replay_samples, live_samples),
        "service_error": service_error(des_summary, live_summary),
    }


def validate(run: ValidateRun, qps: list[float] | None, folder: Path) -> dict[str, Any]:
    """Calibrate and run both engines at each load; the validate.json document (profiles go to `folder`)."""
    scenario = _scenario(run, [])
    if scenario.traffic.arrival.kind != "poisson":
        raise InputError(
            f"{run.source}: traffic.arrival.kind: validate sets the load of a poisson arrival; got {scenario.traffic.arrival.kind}"
        )
    check_live(scenario, run.source)
    samplers = build_samplers(scenario, run.source)
    profiles: dict[float, Path] = {}
    with live_resources(scenario) as resources:

        def profile_at(q: float) -> Path:
            if q not in profiles:
                profiles[q] = _calibrate(run, scenario, samplers, resources, folder, q)
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
            host = json.loads(profile.read_text())["host"]  # the loop's await lateness and executor hand-off (`live.host`)
            des_scenario = _scenario(run, des_overrides(scenario, profile) + [load])
            des_samples, live_samples, replay_samples = (LatencySamples(scenario) for _ in range(3))
            des_samplers = build_samplers(des_scenario, run.source)
            des = simulate(des_scenario, des_samplers, des_samples)
            traces: dict[str, ServiceTrace] = {}
            live, blocks = run_live(
                live_scenario, build_samplers(live_scenario, run.source), live_samples, run.progress, run.stop, resources, traces
            )
            replay = simulate(des_scenario, des_samplers, replay_samples, traces=traces)
            for pipeline, recorder in live.items():
                point = compare(pipeline, q, des[pipeline], recorder, des_samples, live_samples, replay[pipeline], replay_samples)
                point["live_schedule"] = blocks[pipeline]
                point["host"] = host
                point["per_candidate_us"] = {
                    stage: des_scenario.stages[stage].per_candidate_us
                    for stage in fetch_stages(scenario)
                    if stage in point["stage_mean_ms"]
                }
                run.points.append(point)
            run.curves.append(
                {"qps": q, "des": dict(des_samples.blocks), "replay": dict(replay_samples.blocks), "live": dict(live_samples.blocks)}
            )
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
