"""One scenario run: build the stage samplers, simulate each pipeline on the same requests, summarise."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from aif_sim import __version__
from aif_sim.app.quality import shadow_retrieval
from aif_sim.atomic import write_csv, write_json
from aif_sim.core.hardware import hardware
from aif_sim.core.latency import Sampler, build_sampler
from aif_sim.core.replay import ServiceTrace
from aif_sim.errors import InputError
from aif_sim.metrics.recorder import Recorder, RequestSink
from aif_sim.metrics.trace import trace_document
from aif_sim.report.fmt import run_title
from aif_sim.report.html import write_report
from aif_sim.report.plots import plot_latency_cdf, plot_stage_breakdown, plot_timeseries
from aif_sim.report.tables import comparison_table, schedule_table, stage_table
from aif_sim.scenario import Override, Scenario, ScenarioSource, load_scenario, source_label
from aif_sim.scenario.schema import NodeLoss
from aif_sim.sim.engine import PipelineSimulation


def build_samplers(scenario: Scenario, source: ScenarioSource) -> dict[str, Sampler]:
    """Service-time samplers: per stage (by its name), per cache miss latency (`cache:NAME`) and per
    nearline refresh (`refresh:items`, `refresh:users`); raises InputError for bad data files."""
    source = source_label(source)
    samplers = {name: build_sampler(stage.latency, f"{source}: stages.{name}.latency") for name, stage in scenario.stages.items()}
    caches = scenario.caches
    for name in caches.names if caches is not None else []:
        cache = caches.get(name)
        if cache is not None and cache.miss_latency is not None:
            samplers[f"cache:{name}"] = build_sampler(cache.miss_latency, f"{source}: caches.{name}.miss_latency")
    nearline = scenario.nearline
    for store in ["items", "users", *scenario.store_names] if nearline is not None else []:
        refresh = nearline.refresh_of(store)
        if refresh is not None:
            samplers[f"refresh:{store}"] = build_sampler(refresh.latency, f"{source}: {nearline.refresh_field(store)}.latency")
    return samplers


ENGINES = ("auto", "simpy", "compiled")


TRACE_ON_SIMPY = "--trace: the compiled engine keeps no timeline of a request's visits (their nodes, copies and failures)"


def choose_engines(
    scenario: Scenario, samplers: dict[str, Sampler], requested: str = "auto", timelines: float = 0.0
) -> dict[str, tuple[str, str | None]]:
    """Per pipeline, the DES engine that runs it and, when `auto` falls back to simpy, why (one line).
    `compiled` for a pipeline the compiled engine does not support, or with request timelines (`timelines` > 0), is an
    InputError."""
    if requested == "simpy":
        return {pipeline: ("simpy", None) for pipeline in scenario.pipelines}
    if timelines > 0:
        if requested == "compiled":
            raise InputError(f"--engine compiled: {TRACE_ON_SIMPY}; run with --engine simpy or auto")
        return {pipeline: ("simpy", TRACE_ON_SIMPY) for pipeline in scenario.pipelines}
    from aif_sim.compiled.support import unsupported

    engines: dict[str, tuple[str, str | None]] = {}
    for pipeline in scenario.pipelines:
        reason = unsupported(scenario, pipeline, samplers)
        if reason is not None and requested == "compiled":
            raise InputError(f"--engine compiled: {pipeline}: {reason}")
        engines[pipeline] = ("simpy", reason) if reason else ("compiled", None)
    return engines


def simulate(
    scenario: Scenario,
    samplers: dict[str, Sampler],
    sink: RequestSink | None = None,
    progress: Callable[[str, float], None] | None = None,
    stop: Callable[[], bool] | None = None,
    engine: str = "auto",
    traces: dict[str, ServiceTrace] | None = None,
    timelines: float = 0.0,
) -> dict[str, Recorder]:
    """Run every pipeline of the scenario over the same arrivals and draws, each on the engine `choose_engines`
    picks; a recorder per pipeline, keeping the timelines of a `timelines` share of the requests. When `stop()`
    turns true the current pipeline ends partial and the later ones are not run. `traces`: per pipeline, arrival
    and service times replayed in place of the draws where they have them (`core.replay`)."""
    engines = choose_engines(scenario, samplers, engine, timelines)
    retrieve = shadow_retrieval(scenario)
    results = {}
    for pipeline in scenario.pipelines:
        if stop is not None and stop():
            break
        report = (lambda now, p=pipeline: progress(p, now)) if progress else None
        replay = traces.get(pipeline) if traces is not None else None
        if engines[pipeline][0] == "compiled":
            from aif_sim.compiled.engine import run_compiled

            recorder = run_compiled(scenario, pipeline, samplers, sink, report, stop, replay, retrieve)
            recorder.engine = "compiled"
        else:
            recorder = PipelineSimulation(scenario, pipeline, samplers, sink, replay, timelines, retrieve).run(report, stop)
        results[pipeline] = recorder
    return results


def idealised_overrides(scenario: Scenario) -> list[Override]:
    """The same scenario with every stage of several nodes as one pool of its threads behind one FIFO queue (the
    central dispatcher no fleet has) holding what its nodes' queues held together: no shards, hedges or retries,
    and no node loss."""
    overrides: list[Override] = []
    for name, stage in scenario.stages.items():
        if stage.nodes > 1:
            fields = {"nodes": 1, "shards": 1, "hedge_after_ms": None, "retries": 0}
            if stage.queue_limit is not None:
                fields["queue_limit"] = stage.queue_limit * stage.nodes
            overrides += [(f"stages.{name}.{field}", value, "--idealised") for field, value in fields.items()]
    if any(isinstance(fault, NodeLoss) for fault in scenario.faults):
        kept = [fault.model_dump(mode="json") for fault in scenario.faults if not isinstance(fault, NodeLoss)]
        overrides.append(("faults", kept, "--idealised"))
    return overrides


def idealised_latency(source: ScenarioSource, overrides: list[Override], engine: str = "auto") -> dict[str, dict[str, float]] | None:
    """Per pipeline, the latency (`latency_ms`) of the scenario's idealisation (`idealised_overrides`), or None when
    no stage has several nodes (the scenario is its own idealisation)."""
    scenario = load_scenario(source, overrides)
    extra = idealised_overrides(scenario)
    if not extra:
        return None
    idealised = load_scenario(source, overrides + extra)
    results = simulate(idealised, build_samplers(idealised, source), engine=engine)
    return {pipeline: recorder.summary()["latency_ms"] for pipeline, recorder in results.items()}


def summary_document(
    scenario: Scenario, results: dict[str, Recorder], live: dict[str, dict[str, Any]] | None = None, warnings: list[str] | None = None
) -> dict[str, Any]:
    """The summary.json document; `live`: per pipeline, the live engine's `live` block (a live run); `warnings`: what
    the user should know of how the run was made (an engine's fallback, an interruption)."""
    pipelines = {name: recorder.summary() for name, recorder in results.items()}
    for name, block in (live or {}).items():
        pipelines[name]["live"] = block
    partial = any(recorder.partial for recorder in results.values()) or len(results) < len(scenario.pipelines)
    return {
        "scenario": scenario.name,
        "seed": scenario.seed,
        "aif_sim_version": __version__,
        "engine": "live" if live else "des",
        "engines": {name: recorder.engine for name, recorder in results.items()},
        "duration_s": scenario.duration_s,
        "warmup_s": scenario.warmup_s,
        "partial": partial,
        "warnings": [*(warnings or []), *(["interrupted: the results are partial"] if partial else [])],
        "hardware": hardware(scenario),
        "pipelines": pipelines,
    }


RUN_PLOTS = ["latency_cdf.png", "stage_breakdown.png", "timeseries.png"]


def write_run(folder: Path, scenario: Scenario, results: dict[str, Recorder], summary: dict[str, Any]) -> None:
    """summary.json, timeseries.csv, the run's plots, trace.json when requests were traced, and report.html, into the
    run's folder."""
    write_json(folder / "summary.json", summary)
    rows = [{"pipeline": pipeline, **row} for pipeline, recorder in results.items() for row in recorder.timeseries.rows]
    columns = ["t_s", "pipeline", *dict.fromkeys(c for r in results.values() for c in r.timeseries.columns if c != "t_s")]
    write_csv(folder / "timeseries.csv", rows, columns)
    title = run_title(scenario, with_load=False)  # the plots give the offered load the run measured
    plot_latency_cdf(folder / "latency_cdf.png", results, scenario.slo_p99_ms, title)
    plot_timeseries(folder / "timeseries.png", results, scenario.faults, title)
    if results:
        plot_stage_breakdown(folder / "stage_breakdown.png", summary, title, {name: scenario.pipeline(name) for name in results})
    traced = {name: recorder for name, recorder in results.items() if recorder.trace is not None}
    if traced:
        write_trace(folder / "trace.json", scenario, traced)
    write_run_report(folder, scenario, summary)


def write_trace(path: Path, scenario: Scenario, results: dict[str, Recorder]) -> None:
    """trace.json: every traced pipeline's timelines, a process each (`metrics.trace`)."""
    events = [event for pid, recorder in enumerate(results.values(), start=1) for event in recorder.trace_events(pid)]
    fraction = next(iter(results.values())).trace.fraction  # type: ignore[union-attr]
    meta = {"scenario": scenario.name, "seed": scenario.seed, "aif_sim_version": __version__, "trace_fraction": fraction}
    write_json(path, trace_document(events, meta))


def write_run_report(folder: Path, scenario: Scenario, summary: dict[str, Any]) -> None:
    """report.html of a run: the tables the terminal prints, the plots, the engines, the warnings, the scenario as run."""
    tables = []
    if summary["pipelines"]:  # none when the run was stopped before its first pipeline had run
        tables.append(comparison_table(summary, run_title(scenario)))
        tables += [stage_table(pipeline, metrics) for pipeline, metrics in summary["pipelines"].items()]
        if summary["engine"] == "live":
            tables.append(schedule_table(summary))
    facts = {
        "scenario": scenario.name,
        "seed": scenario.seed,
        "engine": summary["engine"],
        **{f"pipeline {name}": f"{engine} engine" for name, engine in summary["engines"].items()},
        "partial": summary["partial"],
    }
    write_report(folder, run_title(scenario), facts, summary["warnings"], tables, scenario, RUN_PLOTS)
