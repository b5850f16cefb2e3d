"""What the compiled engine supports, decided without importing numba (so a run that cannot use it never loads it)."""

from __future__ import annotations

from aif_sim.core.latency import Constant, Exponential, Gamma, Lognormal, Profile, Sampler
from aif_sim.core.pipelines import PIPELINES, stages_of
from aif_sim.scenario.schema import Scenario


def batch_draws_ahead(sampler: Sampler) -> bool:
    """Whether a batching stage's services can be drawn ahead exactly as `sim.pools.BatchingPool` draws them, one
    batch at a time: a sampler whose use of its stream does not depend on the batch (not one measured by
    candidates; not an empirical one, whose integer draws NumPy buffers within a call)."""
    if isinstance(sampler, Profile):
        return sampler.work_key == "batch"
    return isinstance(sampler, Constant | Exponential | Gamma | Lognormal)


def unsupported(scenario: Scenario, pipeline: str, samplers: dict[str, Sampler]) -> str | None:
    """Why the compiled engine cannot run this pipeline of the scenario with these stage samplers (one line), or
    None when it can."""
    if pipeline not in PIPELINES:
        return f"unknown pipeline {pipeline!r}"
    if scenario.deadline_ms is not None:
        return "the compiled engine does not model request deadlines yet (deadline_ms)"
    fleets = [name for name in stages_of(pipeline) if scenario.stages[name].nodes > 1]
    if fleets:
        return f"the compiled engine does not model stages of several nodes yet ({', '.join(fleets)})"
    batching = [name for name in stages_of(pipeline) if scenario.stages[name].batch is not None]
    per_candidate = [name for name in batching if scenario.stages[name].per_candidate_us]
    if per_candidate:
        return f"the compiled engine does not model per_candidate_us on batching stages ({', '.join(per_candidate)})"
    drawn_per_batch = [name for name in batching if not batch_draws_ahead(samplers[name])]
    if drawn_per_batch:
        return (
            f"the compiled engine does not model batching stages timed by candidates or by empirical samples ({', '.join(drawn_per_batch)})"
        )
    return None
