"""One scenario run: build the stage samplers, simulate each pipeline on the same requests, summarise."""

from __future__ import annotations

from collections.abc import Callable

from aif_sim import __version__
from aif_sim.errors import InputError
from aif_sim.latency import Sampler, build_sampler
from aif_sim.metrics import PipelineMetrics
from aif_sim.scenario import Scenario
from aif_sim.sim.engine import PipelineSimulation, RequestSink


def unsupported_sections(scenario: Scenario) -> list[str]:
    """Scenario sections that are set but that this simulator does not simulate."""
    sections = []
    if scenario.caches is not None and (scenario.caches.user_vector or scenario.caches.sim_features):
        sections.append("caches")
    if scenario.nearline is not None:
        sections.append("nearline")
    if scenario.faults:
        sections.append("faults")
    if scenario.model is not None and (scenario.model.checkpoint or scenario.model.shadow_rate > 0):
        sections.append("model")
    return sections


def build_samplers(scenario: Scenario, source: str) -> dict[str, Sampler]:
    """A service-time sampler per stage; raises InputError for sections not simulated or bad data files."""
    unsupported = unsupported_sections(scenario)
    if unsupported:
        raise InputError(f"{source}: {unsupported[0]}: this section is not simulated yet; remove it to run the scenario")
    return {name: build_sampler(stage.latency, f"{source}: stages.{name}.latency") for name, stage in scenario.stages.items()}


def simulate(
    scenario: Scenario,
    samplers: dict[str, Sampler],
    sink: RequestSink | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> dict[str, PipelineMetrics]:
    """Run every pipeline of the scenario over the same arrivals and draws; metrics per pipeline."""
    results = {}
    for pipeline in scenario.pipelines:
        simulation = PipelineSimulation(scenario, pipeline, samplers, sink)
        report = (lambda now, p=pipeline: progress(p, now)) if progress else None
        results[pipeline] = simulation.run(report)
    return results


def summary_document(scenario: Scenario, results: dict[str, PipelineMetrics]) -> dict:
    """The summary.json document."""
    return {
        "scenario": scenario.name,
        "seed": scenario.seed,
        "aif_sim_version": __version__,
        "duration_s": scenario.duration_s,
        "warmup_s": scenario.warmup_s,
        "pipelines": {name: metrics.summary() for name, metrics in results.items()},
    }
