"""What the compiled engine supports, decided without importing numba (so a run that cannot use it never loads it)."""

from __future__ import annotations

from aif_sim.core.pipelines import PIPELINES, stages_of
from aif_sim.core.system import vector_stores
from aif_sim.scenario.schema import Scenario


def unsupported(scenario: Scenario, pipeline: str) -> str | None:
    """Why the compiled engine cannot run this pipeline of the scenario (one line), or None when it can."""
    if pipeline not in PIPELINES:
        return f"unknown pipeline {pipeline!r}"
    reasons = []
    batching = [name for name in stages_of(pipeline) if scenario.stages[name].batch is not None]
    if batching:
        reasons.append(f"batching ({', '.join(batching)})")
    stores = vector_stores(pipeline) if scenario.nearline is not None else []
    if "items" in stores and scenario.model is not None and scenario.model.shadow_rate > 0:
        reasons.append("shadow scoring")
    return f"the compiled engine does not model {'; '.join(reasons)}" if reasons else None
