"""`plan`: per pipeline, the servers per pool of least total cost that meet `slo.p99_ms` at a given load.

The search:
1. A lower bound per pool from queueing theory: a pool that every request visits must keep its utilisation
   below 1, so it needs more than `qps x mean service / batch size` servers (a pool behind a cache may see
   fewer requests: its bound is 1).
2. Grow: simulate (with replications, as a sweep point: the p99's and the missed share's upper 95% bounds
   must meet the SLO); while the SLO is missed, add a server to the pool whose queue costs the most waiting
   per unit of cost (mean wait x visits / cost_per_server_hour); a pool whose last server did not lower the
   p99 (a batching pool's fill wait, say) is not grown again until another pool's server helps. The plan is
   infeasible when the requests' no-contention p99 (their service times with no waiting at all) already
   misses the SLO, or no pool's waiting is left to buy away.
3. Prune: give back servers, most expensive pools first, while the SLO is still met.
A design's cost per hour is the whole bill (`metrics.bill`): the servers found, plus the refresh workers of the nearline
stores it reads and the memory of its caches and indexes, which the search does not vary.
Every configuration is simulated once (results are kept by configuration), with the sweep's point cache.
A pool of several nodes grows and shrinks by whole nodes (its threads per node as the scenario says). A pool
with a utilisation cap (headroom: `stages.NAME.max_utilization`, or `--max-utilization` for every pool) starts
above the servers that cap needs and is grown first while a configuration leaves it busier. The
scenario's arrival process is scaled to the planned load (`load_overrides`), whatever its kind. A search
that finds nothing says why (`reason`): the service times alone miss the SLO, no pool's waiting is left to
buy away, the evaluation budget is spent, or the run was interrupted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from aif_sim.app.sweep import Job, SweepContext, aggregate, run_jobs
from aif_sim.core.datafiles import read_csv_column
from aif_sim.core.hardware import hardware
from aif_sim.core.latency import Sampler
from aif_sim.core.traffic import candidate_counts, mean_rate
from aif_sim.errors import InputError
from aif_sim.metrics.bill import fixed_cost_per_hour, memory_bytes, refresh_workers
from aif_sim.scenario import Override, Scenario
from aif_sim.scenario.schema import BurstyArrival, DiurnalArrival, PoissonArrival, TraceArrival

MAX_EVALUATIONS = 60  # configurations simulated per pipeline before the search gives up
MIN_GAIN = 0.01  # a server that lowers the p99's upper bound by less than this share stops its pool's growth
MEAN_DRAWS = 20_000

Config = tuple[int, ...]


def server_rates(scenario: Scenario, pipeline: str, samplers: dict[str, Sampler]) -> dict[str, float]:
    """Per pool of the pipeline, the requests per second one busy server completes: its batch size over the mean
    service of a full batch (at the scenario's candidate counts), from the samplers the DES uses."""
    rng = np.random.default_rng(0)
    candidates = candidate_counts(scenario.traffic.candidates, rng, MEAN_DRAWS)
    rates = {}
    for stage in scenario.pipeline(pipeline).stages:
        config, sampler = scenario.stages[stage], samplers[stage]
        size = config.batch.max_size if config.batch is not None else 1
        work = float(size) if sampler.work_key == "batch" else candidates * size
        rates[stage] = size / (float(np.mean(sampler.sample(rng, MEAN_DRAWS, work))) / 1000)
    return rates


def lower_bounds(scenario: Scenario, pipeline: str, samplers: dict[str, Sampler], qps: float, caps: dict[str, float]) -> dict[str, int]:
    """Per pool, the fewest servers that keep it stable at `qps`, below its utilisation cap (see the module
    docstring)."""
    guarded = set(scenario.pipeline(pipeline).guarded_stages)
    return {
        stage: 1 if stage in guarded else math.floor(qps / (rate * caps[stage])) + 1
        for stage, rate in server_rates(scenario, pipeline, samplers).items()
    }


def utilization_caps(scenario: Scenario, stages: list[str], default: float | None) -> dict[str, float]:
    """Per pool, the highest mean utilisation a plan may leave it at: its `max_utilization`, else `default`, else 1."""
    return {stage: scenario.stages[stage].max_utilization or default or 1.0 for stage in stages}


def load_overrides(scenario: Scenario, qps: float, source: str) -> list[Override]:
    """The overrides that make the scenario's arrival process offer `qps` on average: a Poisson or diurnal rate set,
    a bursty process's two rates scaled together (its bursts keep their shape), a trace's times stretched."""
    spec = scenario.traffic.arrival
    if isinstance(spec, PoissonArrival):
        return [("traffic.arrival.qps", qps, "--qps")]
    if isinstance(spec, DiurnalArrival):
        return [("traffic.arrival.mean_qps", qps, "--qps")]
    if isinstance(spec, BurstyArrival):
        factor = qps / (mean_rate(spec) or qps)
        return [("traffic.arrival.qps", spec.qps * factor, "--qps"), ("traffic.arrival.burst_qps", spec.burst_qps * factor, "--qps")]
    assert isinstance(spec, TraceArrival)
    times = read_csv_column(spec.path, spec.column, f"{source}: traffic.arrival.path", minimum=0.0)
    rate = len(times) / (float(times.max()) * spec.time_scale)  # the trace's mean rate as the scenario plays it
    return [("traffic.arrival.time_scale", spec.time_scale * rate / qps, "--qps")]


def node_units(scenario: Scenario, stages: list[str]) -> list[int]:
    """Per pool, the servers plan adds or removes at once: a node's threads for a pool of several nodes, else 1."""
    return [scenario.stages[s].threads_per_node if scenario.stages[s].nodes > 1 else 1 for s in stages]


@dataclass
class PipelinePlan:
    """The search of one pipeline: every configuration simulated, and where it stands. A configuration counts each
    pool's units (`units`: servers, or whole nodes of that many threads); `costs` are per unit."""

    pipeline: str
    stages: list[str]
    units: list[int]
    costs: list[float]
    bounds: Config
    caps: list[float]  # per pool, the highest mean utilisation a plan may leave it at (1: no headroom asked)
    results: dict[Config, dict[str, Any]] = field(default_factory=dict)  # configuration -> aggregated row + runs

    def cost(self, config: Config) -> float:
        return float(sum(n * c for n, c in zip(config, self.costs)))


class Planner:
    """Runs the configurations of a search as sweep points (process pool, replications, point cache)."""

    def __init__(self, ctx: SweepContext, qps: float, load: list[Override], slo_ms: float) -> None:
        self.ctx, self.qps, self.load, self.slo_ms = ctx, qps, load, slo_ms
        self.evaluations = 0

    def evaluate(self, plan: PipelinePlan, configs: list[Config]) -> None:
        """Simulate the configurations not simulated yet (their replications in parallel)."""
        todo = [c for c in dict.fromkeys(configs) if c not in plan.results]
        if not todo:
            return
        jobs = [Job(config, plan.pipeline, r) for config in todo for r in range(self.ctx.replications)]
        done = run_jobs(self._context(plan), jobs, f"plan {plan.pipeline}: {len(todo)} configurations")
        for config in todo:
            runs = [done[job] for job in jobs if job.value == config and job in done]
            if len(runs) == self.ctx.replications:
                row = aggregate(list(config), plan.pipeline, runs, self.slo_ms)
                plan.results[config] = {"row": row, "runs": runs}
        self.evaluations += len(todo)

    def _context(self, plan: PipelinePlan) -> SweepContext:
        """A sweep context whose swept `value` is a configuration (servers of each pool)."""
        shared = {f.name: getattr(self.ctx, f.name) for f in fields(SweepContext)}
        shared |= {"param": "servers", "base": self.ctx.base + self.load}
        fleets = [self.ctx.scenario.stages[stage].nodes > 1 for stage in plan.stages]
        return _ConfigSweep(**shared, stage_order=plan.stages, units=plan.units, fleets=fleets)

    def meets(self, plan: PipelinePlan, config: Config) -> bool:
        return bool(plan.results[config]["row"]["slo_met"]) and not _over_cap(plan, config)

    def search(self, plan: PipelinePlan) -> tuple[Config | None, str | None]:
        """The cheapest configuration found that meets the SLO, or None and why the search stopped."""
        config = plan.bounds
        self.evaluate(plan, [config])
        exhausted: set[int] = set()  # pools whose last added unit did not lower the p99
        while config in plan.results and not self.meets(plan, config):
            if self.ctx.stop():
                return None, "interrupted"
            if len(plan.results) >= MAX_EVALUATIONS:
                return None, f"budget: {MAX_EVALUATIONS} configurations simulated without meeting the SLO"
            runs = plan.results[config]["runs"]
            if np.mean([m["no_contention_ms"]["p99"] for m in runs]) > self.slo_ms:
                return None, "service: the service times alone, with no waiting, miss the SLO (no server count helps)"
            over = _over_cap(plan, config)
            pressure = [
                0.0 if i in exhausted else _waiting_ms(runs, stage) / cost if cost else math.inf
                for i, (stage, cost) in enumerate(zip(plan.stages, plan.costs))
            ]
            if not over and max(pressure) <= 0:
                return None, "exhausted: no pool's waiting is left to buy away, and the SLO is still missed"
            grow = max(over, key=lambda i: over[i]) if over else int(np.argmax(pressure))  # headroom first
            bigger = tuple(n + (i == grow) for i, n in enumerate(config))
            self.evaluate(plan, [bigger])
            if bigger in plan.results and _p99_upper(plan, bigger) >= (1 - MIN_GAIN) * _p99_upper(plan, config):
                exhausted.add(grow)
            else:
                exhausted.clear()
            config = bigger
        if config not in plan.results:
            return None, "interrupted"
        for i in sorted(range(len(config)), key=lambda i: -plan.costs[i]):
            while config[i] > plan.bounds[i] and not self.ctx.stop():
                fewer = tuple(n - (j == i) for j, n in enumerate(config))
                self.evaluate(plan, [fewer])
                if fewer not in plan.results or not self.meets(plan, fewer):
                    break
                config = fewer
        return config, None


def _over_cap(plan: PipelinePlan, config: Config) -> dict[int, float]:
    """The pools the configuration leaves busier than their cap, each with its utilisation over the cap."""
    runs = plan.results[config]["runs"]
    over = {}
    for i, (stage, cap) in enumerate(zip(plan.stages, plan.caps)):
        utilization = float(np.mean([m["stages"][stage]["utilization"] for m in runs]))
        if utilization > cap:
            over[i] = utilization / cap
    return over


def _p99_upper(plan: PipelinePlan, config: Config) -> float:
    row = plan.results[config]["row"]
    return (row["p99_ms"] or math.inf) + (row.get("p99_ms_ci95") or 0.0)


def _waiting_ms(runs: list[dict[str, Any]], stage: str) -> float:
    """Total time requests waited in a pool's queue (mean wait x visits), averaged over replications."""
    totals = [(m["stages"][stage]["wait_ms"]["mean"] or 0.0) * m["stages"][stage]["visits"] for m in runs]
    return float(np.mean(totals))


@dataclass
class _ConfigSweep(SweepContext):
    """A sweep context whose jobs set every pool's servers from the job's value."""

    stage_order: list[str] = field(default_factory=list)
    units: list[int] = field(default_factory=list)
    fleets: list[bool] = field(default_factory=list)

    def value_overrides(self, value: Any) -> list[Override]:
        overrides: list[Override] = []
        for stage, n, unit, fleet in zip(self.stage_order, value, self.units, self.fleets):
            overrides.append((f"stages.{stage}.servers", int(n) * unit, "plan"))
            if fleet:
                overrides.append((f"stages.{stage}.nodes", int(n), "plan"))
        return overrides


def plan_pipelines(
    ctx: SweepContext,
    qps: float,
    load: list[Override],
    samplers: dict[str, Sampler],
    progress: Callable[[str], None],
    max_utilization: float | None = None,
) -> dict[str, Any]:
    """The plan.json document (see DESIGN: plan)."""
    scenario = ctx.scenario
    if scenario.slo_p99_ms is None:
        raise InputError(f"{ctx.path}: slo.p99_ms: required field is missing (plan finds the servers that meet it)")
    planner = Planner(ctx, qps, load, scenario.slo_p99_ms)
    designs: dict[str, Any] = {}
    for pipeline in scenario.pipelines:
        if ctx.stop():
            break
        stages = scenario.pipeline(pipeline).stages
        units = node_units(scenario, stages)
        caps = utilization_caps(scenario, stages, max_utilization)
        bounds = lower_bounds(scenario, pipeline, samplers, qps, caps)
        costs = [scenario.stages[s].cost_per_server_hour * unit for s, unit in zip(stages, units)]
        units_bounds = tuple(-(-bounds[s] // unit) for s, unit in zip(stages, units))
        plan = PipelinePlan(pipeline, stages, units, costs, units_bounds, [caps[s] for s in stages])
        progress(pipeline)
        best, reason = planner.search(plan)
        designs[pipeline] = _design(plan, best, reason) | _bill(scenario, pipeline, plan.cost(best) if best is not None else None)
    return {
        "qps": qps,
        "slo_p99_ms": scenario.slo_p99_ms,
        "replications": ctx.replications,
        "partial": bool(ctx.stop()),
        "hardware": hardware(scenario),
        "pipelines": designs,
    }


def _bill(scenario: Scenario, pipeline: str, stages_cost: float | None) -> dict[str, Any]:
    """What a design provisions besides the searched servers (its refresh workers, its memory) and its whole cost per
    hour with them (`cost_per_hour`; `cost`: the parts), as `metrics.bill` counts them."""
    fixed = fixed_cost_per_hour(scenario, pipeline)
    out: dict[str, Any] = {
        "refresh_workers": {pool: workers for pool, (workers, _) in refresh_workers(scenario, pipeline).items()},
        "memory_bytes": memory_bytes(scenario, pipeline),
    }
    if stages_cost is not None:
        out["cost"] = {"stages": stages_cost, **fixed}
        out["cost_per_hour"] = stages_cost + sum(fixed.values())
    return out


def _design(plan: PipelinePlan, best: Config | None, reason: str | None) -> dict[str, Any]:
    """One pipeline's entry of plan.json (servers and lower bounds in threads; `nodes` for pools of several nodes)."""
    evaluated = len(plan.results)
    bounds = {stage: n * unit for stage, n, unit in zip(plan.stages, plan.bounds, plan.units)}
    if best is None:
        return {"feasible": False, "reason": reason, "lower_bounds": bounds, "evaluated": evaluated}
    row, runs = plan.results[best]["row"], plan.results[best]["runs"]
    utilization = {stage: float(np.mean([m["stages"][stage]["utilization"] for m in runs])) for stage in plan.stages}
    return {
        "feasible": True,
        "servers": {stage: n * unit for stage, n, unit in zip(plan.stages, best, plan.units)},
        "nodes": {stage: n for stage, n, unit in zip(plan.stages, best, plan.units) if unit > 1},
        "p99_ms": row["p99_ms"],
        "p99_ci95": row.get("p99_ms_ci95"),
        "p99_lo": row.get("p99_ms_lo"),
        "p99_hi": row.get("p99_ms_hi"),
        "utilization": utilization,
        "max_utilization": {stage: cap for stage, cap in zip(plan.stages, plan.caps) if cap < 1},
        "lower_bounds": bounds,
        "evaluated": evaluated,
    }
