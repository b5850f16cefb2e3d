"""The Python API: run, sweep and plan a scenario from a notebook or a script; the command line is a layer over it.

    import aif_sim
    result = aif_sim.run("scenarios/default.yaml", seed=3, set={"traffic.arrival.qps": 1200})
    result.summary["pipelines"]["aif"]["latency_ms"]["p99"]   # the summary.json document
    result.requests                                           # pandas DataFrame, a row per completed request
    result.timeseries                                         # pandas DataFrame, a row per second and pipeline
    curve = aif_sim.sweep("scenarios/default.yaml", param="traffic.arrival.qps", values=[1000, 2000])
    servers = aif_sim.plan("scenarios/taobao_prerank.yaml", qps=1000)

A scenario is a path to its YAML file or a mapping of its fields (data files are then looked for from the current
folder). Every function writes the output files the command line writes (`out`: a folder, replaced when it holds
an earlier aif-sim output; None: a temporary folder, removed with the result). Bad input raises
`aif_sim.InputError` with the one line the command line prints.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from aif_sim.app.interrupt import StopSignal
from aif_sim.app.outputs import OutputFolder, default_folder
from aif_sim.app.point_cache import PointCache
from aif_sim.app.quality import score_shadow_samples, shadow_scorer, shadow_scores
from aif_sim.app.run import build_samplers, choose_engines, idealised_latency, simulate, summary_document, write_run
from aif_sim.app.sweep import SweepContext, find_capacity, grid_sweep, load_param, write_sweep
from aif_sim.atomic import write_json
from aif_sim.compiled import kernels_cached
from aif_sim.core.hardware import hardware
from aif_sim.errors import InputError
from aif_sim.metrics.recorder import Recorder
from aif_sim.metrics.requests_log import RequestLog
from aif_sim.report.tables import schedule_warning
from aif_sim.scenario import Override, Scenario, ScenarioSource, load_scenario, parse_overrides, source_label

if TYPE_CHECKING:
    import pandas as pd

ENGINE_CHOICES = ("auto", "simpy", "compiled", "live")


class Hooks:
    """What a caller sees while a run goes: nothing by default (the API); the command line shows progress bars,
    notices and tables, and stops on Ctrl-C (`stop`)."""

    quiet = True

    def __init__(self) -> None:
        self.console = Console(file=io.StringIO())  # sweeps print their tables here when not quiet

    def notify(self, line: str) -> None:
        """A line for the user (which engine runs a pipeline, a compilation)."""

    def warn(self, line: str) -> None:
        """A warning about the run's figures (a live engine that did not keep its schedule); summary.json keeps it."""

    def hardware(self, block: dict[str, Any]) -> None:
        """The hardware the profiles were measured on (`core.hardware`): the terminal says once when it is not this host's."""

    @contextmanager
    def progress(self, pipelines: list[str], horizon_s: float, verb: str) -> Iterator[Callable[[str, float], None]]:
        """A callback `advance(pipeline, now_s)` while the pipelines run."""
        yield lambda pipeline, now_s: None

    @contextmanager
    def stopping(self) -> Iterator[StopSignal]:
        """The stop flag the run polls: never raised here (an interrupt in a notebook raises KeyboardInterrupt)."""
        yield StopSignal()


@dataclass
class RunOptions:
    """A run as the command line and `run` describe it."""

    source: ScenarioSource
    overrides: list[Override] = field(default_factory=list)
    engine: str = "auto"
    out: Path | None = None
    default_out: bool = False  # without `out`: results/<scenario>/<UTC time> (the command line) instead of a temporary folder
    force: bool = False
    idealised: bool = False
    format: str = "parquet"
    requests_sample: float = 1.0
    trace: float = 0.0


class RunResult:
    """A finished run: `scenario` (as run), `summary` (the summary.json document), `requests` and `timeseries` (DataFrames read from the
    run's files when first asked for), `trace` (the trace.json document, or None), `out` (the output folder)."""

    def __init__(self, scenario: Scenario, out: Path, request_file: str, temporary: bool) -> None:
        self.scenario, self.out, self._request_file = scenario, out, request_file
        self.summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
        if temporary:
            weakref.finalize(self, shutil.rmtree, out.parent, True)

    @cached_property
    def requests(self) -> pd.DataFrame:
        import pandas as pd  # imported when first used: the command line does without

        path = self.out / self._request_file
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)

    @cached_property
    def timeseries(self) -> pd.DataFrame:
        import pandas as pd

        return pd.read_csv(self.out / "timeseries.csv")

    @cached_property
    def trace(self) -> dict[str, Any] | None:
        path = self.out / "trace.json"
        return json.loads(path.read_text()) if path.exists() else None

    def __repr__(self) -> str:
        return f"RunResult({self.summary['scenario']!r}, pipelines={list(self.summary['pipelines'])}, out={str(self.out)!r})"


def overrides_of(seed: int | None, settings: Mapping[str, Any] | Sequence[str] | None, option: str = "set") -> list[Override]:
    """Overrides from `set` (a mapping of dotted paths to values, or `path=value` strings as on the command line),
    then the seed."""
    if settings is None:
        overrides: list[Override] = []
    elif isinstance(settings, Mapping):
        overrides = [(str(path), value, option) for path, value in settings.items()]
    else:
        overrides = parse_overrides(list(settings), option)
    if seed is not None:
        overrides.append(("seed", seed, "seed"))
    return overrides


@contextmanager
def _output(out: Path | None, default_out: bool, force: bool, scenario: Scenario, keep: bool) -> Iterator[tuple[OutputFolder, bool]]:
    """The output folder to write, and whether it is temporary: `out`, else (the command line) results/<scenario>/<UTC
    time), else a temporary folder, removed if the run fails, and when it ends unless the caller `keep`s it."""
    holder = None
    if out is not None:
        target = OutputFolder(out, explicit=True, force=force)
    elif default_out:
        target = OutputFolder(default_folder(scenario.name), explicit=False)
    else:
        holder = Path(tempfile.mkdtemp(prefix="aif-sim-"))
        target = OutputFolder(holder / scenario.name, explicit=True)
    try:
        with target as folder:
            yield folder, holder is not None
    except BaseException:
        if holder is not None:
            shutil.rmtree(holder, ignore_errors=True)
        raise
    if holder is not None and not keep:
        shutil.rmtree(holder, ignore_errors=True)


def run_with(options: RunOptions, hooks: Hooks | None = None) -> RunResult:
    """Run a scenario's pipelines, write the output folder, return the result (the command line's `run`, `compare`
    and `live`)."""
    hooks = hooks or Hooks()
    if options.engine not in ENGINE_CHOICES:
        raise InputError(f"engine {options.engine}: expected one of {', '.join(ENGINE_CHOICES)}")
    if not 0.0 <= options.requests_sample <= 1.0:
        raise InputError(f"--requests-sample: expected a fraction in [0, 1], got {options.requests_sample}")
    if not 0.0 <= options.trace <= 1.0:
        raise InputError(f"--trace: expected a fraction in [0, 1], got {options.trace}")
    scenario = load_scenario(options.source, options.overrides)
    samplers = build_samplers(scenario, options.source)
    warnings = [
        f"aif-sim: WARNING: nearline.stores.{name}: no pipeline of the run reads it; it is not simulated" for name in scenario.unread_stores
    ]
    for warning in warnings:
        hooks.warn(warning)
    if options.engine == "live":
        from aif_sim.app.live import live_engine  # torch and asyncio: only for the live engine

        engine, verb = live_engine(scenario, source_label(options.source), options.trace), "run live"
    else:
        engines = choose_engines(scenario, samplers, options.engine, options.trace)
        if shadow_scores(scenario):
            start = time.perf_counter()
            shadow_scorer(scenario, options.source)  # the scored world, built and checked before anything runs
            hooks.notify(f"built the shadow-scored world (its items changing by this run's changes) in {time.perf_counter() - start:.1f} s")
        for pipeline, (name, reason) in engines.items():
            hooks.notify(f"{pipeline}: {name} engine" + (f" ({reason})" if reason else ""))
            if reason:
                warnings.append(f"{pipeline} ran on the {name} engine: {reason}")
        if any(name == "compiled" for name, _ in engines.values()) and not kernels_cached():
            hooks.notify("compiling the compiled engine's kernels, once for this version of aif-sim (about 20 s; cached on disk)")

        def engine(
            scenario: Scenario, samplers: dict, log: RequestLog, advance: Callable, stop: Callable
        ) -> tuple[dict[str, Recorder], dict]:
            return simulate(scenario, samplers, log, advance, stop, options.engine, timelines=options.trace), {}

        verb = "simulated"
    request_file = f"requests.{options.format}"
    output = _output(options.out, options.default_out, options.force, scenario, keep=True)
    with hooks.stopping() as stop, output as (folder, temporary):
        log = RequestLog(folder.path / request_file, scenario.stage_names, scenario.lookup_labels, options.format, options.requests_sample)
        try:
            with hooks.progress(scenario.pipelines, scenario.duration_s + scenario.drain_s, verb) as advance:
                results, live = engine(scenario, samplers, log, advance, stop)
        except BaseException:
            log.abort()
            raise
        log.close()
        if not stop() and not live:
            score_shadow_samples(scenario, results, None if hooks.quiet else hooks.console)
        for pipeline, block in live.items():
            if not block["kept_schedule"]:
                warnings.append(schedule_warning(pipeline, block))
                hooks.warn(warnings[-1])
        summary = summary_document(scenario, results, live, warnings)
        hooks.hardware(summary["hardware"])
        if options.idealised and not stop():
            _add_idealised(options, summary, hooks)
        write_run(folder.path, scenario, results, summary)
        out = folder.commit()
    return RunResult(scenario, out, request_file, temporary)


def _add_idealised(options: RunOptions, summary: dict[str, Any], hooks: Hooks) -> None:
    """Each pipeline's latency with every stage of several nodes as one shared queue (`idealised_latency_ms`)."""
    overrides = options.overrides + [("pipelines", list(summary["pipelines"]), "--pipelines")]
    latency = idealised_latency(options.source, overrides, "auto" if options.engine == "live" else options.engine)
    if latency is None:
        hooks.notify("--idealised: no stage has several nodes; every pool is already one shared queue")
        return
    for pipeline, block in latency.items():
        summary["pipelines"][pipeline]["idealised_latency_ms"] = block


def run(
    scenario: ScenarioSource,
    *,
    seed: int | None = None,
    set: Mapping[str, Any] | Sequence[str] | None = None,  # noqa: A002 (the command line's --set)
    engine: str = "auto",
    out: str | Path | None = None,
    force: bool = False,
    pipelines: Sequence[str] | None = None,
    idealised: bool = False,
    requests_sample: float = 1.0,
    format: str = "parquet",  # noqa: A002 (the command line's --format)
    trace: float = 0.0,
) -> RunResult:
    """Run every pipeline of a scenario (or `pipelines`) as `python run_sim.py SCENARIO` does: `seed`, `set`
    (overrides: {"traffic.arrival.qps": 3000}), `engine` (auto, simpy, compiled, or live: the scenario in wall-clock
    time), `out` (None: a temporary folder), `idealised`, `requests_sample`, `format` and `trace` as the options of
    the same names. Raises InputError on bad input."""
    overrides = overrides_of(seed, set)
    if pipelines is not None:
        overrides.append(("pipelines", list(pipelines), "pipelines"))
    out_path = Path(out) if out is not None else None
    options = RunOptions(
        scenario,
        overrides,
        engine=engine,
        out=out_path,
        force=force,
        idealised=idealised,
        format=format,
        requests_sample=requests_sample,
        trace=trace,
    )
    return run_with(options)


# --- sweeps ---------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class ManyRuns:
    """What a sweep and a plan share: the scenario, and where and how their runs go."""

    source: ScenarioSource
    overrides: list[Override] = field(default_factory=list)
    replications: int = 1
    jobs: int | None = None
    cache: Path | None = None  # finished points by scenario hash (None: none kept)
    backend: str = "process"
    engine: str = "auto"
    out: Path | None = None
    default_out: bool = False
    force: bool = False

    def context(
        self, scenario: Scenario, param: str, hooks: Hooks, stop: StopSignal, cache: PointCache, kind: type[SweepContext] = SweepContext
    ) -> SweepContext:
        """What every run shares, for the sweep machinery (`app.sweep`), as a `kind` of sweep."""
        return kind(
            self.source,
            scenario,
            param,
            self.overrides,
            self.replications,
            self.jobs,
            hooks.console,
            hooks.quiet,
            stop,
            cache,
            self.backend,
            self.engine,
        )


@dataclass(kw_only=True)
class SweepOptions(ManyRuns):
    """A sweep: a grid (`param`, `values`) or a capacity search (`capacity`: low, high)."""

    param: str | None = None
    values: list[Any] | None = None
    capacity: tuple[float, float] | None = None
    scale_profiles: str | None = None  # sensitivity: factors (comma-separated) on every profile-timed stage (`app.sensitivity`)


@dataclass
class SweepOutcome:
    """The sweep.json document, the folder the sweep wrote and the scenario swept."""

    document: dict[str, Any]
    out: Path
    cache_hits: int
    scenario: Scenario


def _many_runs(
    jobs: int | None, cache: str | Path | None, backend: str, engine: str, out: str | Path | None, force: bool
) -> dict[str, Any]:
    """The `ManyRuns` fields of an API call."""
    return {
        "jobs": jobs,
        "cache": Path(cache) if cache is not None else None,
        "backend": backend,
        "engine": engine,
        "out": Path(out) if out is not None else None,
        "force": force,
    }


def _positive(option: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise InputError(f"{option}: expected a positive integer, got {value}")


def sweep_with(options: SweepOptions, hooks: Hooks | None = None) -> SweepOutcome:
    """One run per value of a scenario field and pipeline (or a capacity search), written to the sweep's folder."""
    hooks = hooks or Hooks()
    _positive("--jobs", options.jobs)
    _positive("--replications", options.replications)
    scenario = load_scenario(options.source, options.overrides)
    hooks.hardware(hardware(scenario))
    if options.capacity is not None:
        low, high = options.capacity
        if not 0 < low < high:
            raise InputError(f"--find-capacity {low:g},{high:g}: expected 0 < LOW < HIGH")
        if scenario.slo_p99_ms is None:
            raise InputError(
                f"{source_label(options.source)}: slo.p99_ms: required field is missing (--find-capacity searches the load that meets it)"
            )
    if options.scale_profiles:
        return _sensitivity(options, scenario, hooks)
    if options.capacity is not None:
        param = options.param or load_param(scenario)
        values: list[Any] = list(options.capacity)
    else:
        if not options.param or not options.values:
            raise InputError("--param and --values: both are required (or --find-capacity LOW,HIGH)")
        param, values = options.param, list(options.values)
    for value in values:  # every point must be valid before any runs
        build_samplers(load_scenario(options.source, options.overrides + [(param, value, "--param")]), options.source)
    cache = PointCache(options.cache)
    with hooks.stopping() as stop, _output(options.out, options.default_out, options.force, scenario, keep=False) as (folder, _):
        ctx = options.context(scenario, param, hooks, stop, cache)
        rows, results, extra = find_capacity(ctx, *values) if options.capacity else grid_sweep(ctx, values)
        document = write_sweep(ctx, folder.path, rows, results, extra)
        out = folder.commit()
    return SweepOutcome(document, out, cache.hits, scenario)


def _sensitivity(options: SweepOptions, scenario: Scenario, hooks: Hooks) -> SweepOutcome:
    """`sweep --scale-profiles`: the sweep over the factors, with its sensitivity block (`app.sensitivity`)."""
    from aif_sim.app.sensitivity import PARAM, ScaledSweep, parse_scales, scale_overrides, sensitivity_sweep

    assert options.scale_profiles is not None
    scales = parse_scales(options.scale_profiles, scenario, source_label(options.source))
    for factor in scales:  # every point must be valid before any runs
        build_samplers(load_scenario(options.source, options.overrides + scale_overrides(scenario, factor)), options.source)
    cache = PointCache(options.cache)
    with hooks.stopping() as stop, _output(options.out, options.default_out, options.force, scenario, keep=False) as (folder, _):
        ctx = options.context(scenario, PARAM, hooks, stop, cache, ScaledSweep)
        rows, results, extra = sensitivity_sweep(ctx, scales, options.capacity)
        document = write_sweep(ctx, folder.path, rows, results, extra)
        out = folder.commit()
    return SweepOutcome(document, out, cache.hits, scenario)


def sweep(
    scenario: ScenarioSource,
    *,
    param: str | None = None,
    values: Sequence[Any] | None = None,
    find_capacity: tuple[float, float] | None = None,
    scale_profiles: Sequence[float] | None = None,
    replications: int = 1,
    seed: int | None = None,
    set: Mapping[str, Any] | Sequence[str] | None = None,  # noqa: A002 (the command line's --set)
    engine: str = "auto",
    jobs: int | None = None,
    cache: str | Path | None = None,
    backend: str = "process",
    out: str | Path | None = None,
    force: bool = False,
) -> pd.DataFrame:
    """`python run_sim.py sweep`: a row per value and pipeline (the columns of sweep.csv: each headline metric's mean,
    `_ci95`, `_lo`, `_hi`, `slo_met`); `attrs["sweep"]` holds the rest of sweep.json (capacity, warnings, every
    run's metrics). `cache`: a folder of finished points (None: none kept); `out`: None writes no files."""
    options = SweepOptions(
        source=scenario,
        overrides=overrides_of(seed, set),
        param=param,
        values=list(values) if values is not None else None,
        capacity=find_capacity,
        scale_profiles=",".join(f"{factor:g}" for factor in scale_profiles) if scale_profiles is not None else None,
        replications=replications,
        **_many_runs(jobs, cache, backend, engine, out, force),
    )
    import pandas as pd

    outcome = sweep_with(options)
    frame = pd.DataFrame(outcome.document["rows"])
    frame.attrs["sweep"] = {key: value for key, value in outcome.document.items() if key != "rows"}
    return frame


# --- plans ----------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class PlanOptions(ManyRuns):
    """A capacity plan at a load."""

    qps: float
    replications: int = 3
    max_utilization: float | None = None


@dataclass
class PlanOutcome:
    """The plan.json document, the folder the plan wrote and the scenario as planned (at the planned load)."""

    document: dict[str, Any]
    out: Path
    scenario: Scenario


def plan_with(options: PlanOptions, hooks: Hooks | None = None) -> PlanOutcome:
    """Per pipeline, the servers per pool of least cost meeting the SLO at a load."""
    from aif_sim.app.plan import load_overrides, plan_pipelines

    hooks = hooks or Hooks()
    _positive("--replications", options.replications)
    _positive("--jobs", options.jobs)
    if options.qps <= 0:
        raise InputError(f"--qps: expected a positive load, got {options.qps:g}")
    if options.max_utilization is not None and not 0 < options.max_utilization <= 1:
        raise InputError(f"--max-utilization: expected a share in (0, 1], got {options.max_utilization:g}")
    scenario = load_scenario(options.source, options.overrides)
    if scenario.slo_p99_ms is None:
        raise InputError(f"{source_label(options.source)}: slo.p99_ms: required field is missing (plan finds the servers that meet it)")
    load = load_overrides(scenario, options.qps, source_label(options.source))
    planned = load_scenario(options.source, options.overrides + load)
    samplers = build_samplers(planned, options.source)
    hooks.hardware(hardware(planned))
    cache = PointCache(options.cache)
    with hooks.stopping() as stop, _output(options.out, options.default_out, options.force, scenario, keep=False) as (folder, _):
        ctx = options.context(planned, "servers", hooks, stop, cache)
        document = plan_pipelines(ctx, options.qps, load, samplers, lambda pipeline: None, options.max_utilization)
        write_json(folder.path / "plan.json", document)
        out = folder.commit()
    return PlanOutcome(document, out, planned)


def plan_frame(document: dict[str, Any]) -> pd.DataFrame:
    """plan.json as a table: a row per pipeline and pool (`servers`, `nodes`, `utilization`, `lower_bound`), with the
    pipeline's `feasible`, `cost_per_hour`, `p99_ms`, `p99_ci95` and, when infeasible, its `reason`."""
    import pandas as pd

    rows = []
    for pipeline, design in document["pipelines"].items():
        common = {key: design.get(key) for key in ("feasible", "cost_per_hour", "p99_ms", "p99_ci95", "reason")}
        for stage, bound in design["lower_bounds"].items():
            rows.append(
                {
                    "pipeline": pipeline,
                    "stage": stage,
                    "servers": design.get("servers", {}).get(stage),
                    "nodes": design.get("nodes", {}).get(stage),
                    "utilization": design.get("utilization", {}).get(stage),
                    "lower_bound": bound,
                    **common,
                }
            )
    return pd.DataFrame(rows)


def plan(
    scenario: ScenarioSource,
    *,
    qps: float,
    pipelines: Sequence[str] | None = None,
    replications: int = 3,
    max_utilization: float | None = None,
    seed: int | None = None,
    set: Mapping[str, Any] | Sequence[str] | None = None,  # noqa: A002 (the command line's --set)
    engine: str = "auto",
    jobs: int | None = None,
    cache: str | Path | None = None,
    backend: str = "process",
    out: str | Path | None = None,
    force: bool = False,
) -> pd.DataFrame:
    """`python run_sim.py plan`: a row per pipeline and pool of the cheapest servers meeting `slo.p99_ms` at `qps`
    (`plan_frame`); `attrs["plan"]` holds plan.json."""
    overrides = overrides_of(seed, set)
    if pipelines is not None:
        overrides.append(("pipelines", list(pipelines), "pipelines"))
    options = PlanOptions(
        source=scenario,
        overrides=overrides,
        qps=qps,
        replications=replications,
        max_utilization=max_utilization,
        **_many_runs(jobs, cache, backend, engine, out, force),
    )
    document = plan_with(options).document
    frame = plan_frame(document)
    frame.attrs["plan"] = document
    return frame
