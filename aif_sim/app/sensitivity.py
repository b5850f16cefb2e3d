"""Sensitivity to the hardware: how a scenario's answer moves when every profile-timed stage is slower or faster.

A profile is measured on one machine; the same model on another runs at other speeds (a profile calibrated on a
different CPU of the same class took 1.3-2.2x longer per operator). `sweep --scale-profiles 0.75,1,1.5,2` multiplies
the `scale` of every stage timed by a profile by each factor together (a sweep point per factor; replications,
process pool and point cache as any sweep) and reports per design:
- the SLO verdict at each factor, and the largest factor up to which every factor tried meets it (`slo_met_up_to`);
- whether the design keeps up with the offered load at each factor: at most 1% of requests shed (rejected or timed
  out) and throughput within 1% of the offered load (`keeps_up_to`);
- with `--find-capacity LOW,HIGH`, its capacity under the SLO at each factor (a bisection per factor) and the largest
  factor whose capacity is at least the scenario's own load (`capacity_up_to`).
A design whose verdict flips between 1 and 1.25 has no headroom for hardware a little slower than the profile's.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from aif_sim.app.sweep import Job, SweepContext, find_capacity, grid_sweep, load_param
from aif_sim.core.traffic import mean_rate
from aif_sim.errors import InputError
from aif_sim.metrics.recorder import SLO_MISS_BUDGET
from aif_sim.scenario import Override, Scenario
from aif_sim.scenario.schema import ProfileLatency

PARAM = "profile scale"
KEEP_UP = 0.99  # a design keeps up with its load when it completes at least this share of the offered rate


def profile_stages(scenario: Scenario) -> list[str]:
    """The stages timed by a calibration profile."""
    return [name for name, stage in scenario.stages.items() if isinstance(stage.latency, ProfileLatency)]


def scale_overrides(scenario: Scenario, factor: float) -> list[Override]:
    """Every profile-timed stage's `scale` multiplied by `factor`."""
    overrides: list[Override] = []
    for name in profile_stages(scenario):
        spec = scenario.stages[name].latency
        assert isinstance(spec, ProfileLatency)
        overrides.append((f"stages.{name}.latency.scale", spec.scale * factor, "--scale-profiles"))
    return overrides


def parse_scales(text: str, scenario: Scenario, source: str) -> list[float]:
    """The factors of `--scale-profiles`, ascending; an InputError (one line) when they or the scenario do not fit."""
    try:
        scales = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise InputError(f"--scale-profiles {text}: expected comma-separated factors, e.g. 0.75,1,1.5,2") from None
    if not scales or scales[0] <= 0:
        raise InputError(f"--scale-profiles {text}: expected positive factors")
    if not profile_stages(scenario):
        raise InputError(f"{source}: stages: no stage is timed by a profile (dist: profile): nothing to scale")
    return scales


@dataclass
class ScaledSweep(SweepContext):
    """A sweep whose value is the factor every profile-timed stage's times are multiplied by."""

    def value_overrides(self, value: Any) -> list[Override]:
        return scale_overrides(self.scenario, float(value))


def sensitivity_sweep(ctx: ScaledSweep, scales: list[float], capacity: tuple[float, float] | None) -> tuple[list, dict, dict]:
    """Run the sweep over `scales` (rows, results as a sweep's) and the `sensitivity` block of sweep.json; with
    `capacity`, a capacity search per factor."""
    shared = {f.name: getattr(ctx, f.name) for f in fields(SweepContext)}
    rows, results, _ = grid_sweep(ctx, scales)
    capacities: dict[float, dict[str, float | None]] = {}
    if capacity is not None:
        param = load_param(ctx.scenario)
        for factor in scales:
            if ctx.stop():
                break
            search = SweepContext(**shared | {"param": param, "base": ctx.base + scale_overrides(ctx.scenario, factor)})
            _, found, extra = find_capacity(search, *capacity)
            capacities[factor] = extra["capacity_qps"]
            results |= {Job((factor, job.value), job.pipeline, job.replication): metrics for job, metrics in found.items()}
    return rows, results, {"sensitivity": flips(ctx.scenario, rows, scales, capacities)}


def flips(scenario: Scenario, rows: list[dict[str, Any]], scales: list[float], capacities: dict[float, dict[str, float | None]]) -> dict:
    """Per design: at each factor its p99, SLO verdict, whether it keeps up with the load (and its capacity); the
    largest factor up to which each holds (None: not even at the smallest factor tried)."""
    load = mean_rate(scenario.traffic.arrival)
    designs: dict[str, Any] = {}
    for pipeline in scenario.pipelines:
        by_scale = {row["value"]: row for row in rows if row["pipeline"] == pipeline}
        points = []
        for factor in scales:
            row = by_scale.get(factor)
            if row is None:
                continue
            point = {
                "scale": factor,
                "p99_ms": row["p99_ms"],
                "slo_met": row.get("slo_met"),
                "keeps_up": keeps_up(row),
                "bottleneck": row["bottleneck"],
                "bottleneck_utilization": row["bottleneck_utilization"],
            }
            if factor in capacities:
                point["capacity_qps"] = capacities[factor].get(pipeline)
            points.append(point)
        designs[pipeline] = {
            "points": points,
            "slo_met_up_to": _holds_up_to(points, lambda p: bool(p["slo_met"])),
            "keeps_up_to": _holds_up_to(points, lambda p: p["keeps_up"]),
        }
        if capacities and load is not None:
            designs[pipeline]["capacity_up_to"] = _holds_up_to(
                [p for p in points if "capacity_qps" in p], lambda p: p["capacity_qps"] is not None and p["capacity_qps"] >= load
            )
    return {"stages": profile_stages(scenario), "scales": scales, "offered_qps": load, "designs": designs}


def keeps_up(row: dict[str, Any]) -> bool:
    """Whether a sweep row's design completed its offered load: at most 1% shed, throughput within 1% of offered."""
    shed, throughput, offered = row.get("shed_share"), row.get("throughput_qps"), row.get("offered_qps")
    if shed is None or throughput is None or not offered:
        return False
    return shed <= SLO_MISS_BUDGET and throughput >= KEEP_UP * offered


def _holds_up_to(points: list[dict[str, Any]], holds: Any) -> float | None:
    """The largest factor such that the property holds at it and at every smaller factor tried."""
    best = None
    for point in points:
        if not holds(point):
            break
        best = point["scale"]
    return best
