"""Pipelines as data: ordered steps over named stages, interpreted by both engines.

A step is a stage name, or a tuple of stage names that run in parallel and join when all finish.
"""

from __future__ import annotations

from collections.abc import Mapping

Step = str | tuple[str, ...]

PIPELINES: dict[str, tuple[Step, ...]] = {
    # retrieval returns candidates, then their features are fetched and the whole model runs.
    "sequential": ("merger", "retrieval", "feature_fetch", "prerank"),
    # user side runs while retrieval runs; item vectors come from the nearline index; only the
    # interaction-dependent real-time part (BEA combination, LSH-SIM, RTP head) runs online.
    "aif": ("merger", ("retrieval", "user_inference"), "item_fetch", "rtp"),
    # the user-interest embedding is precomputed on behaviour events and fetched with the features.
    "uic": ("merger", "retrieval", "feature_fetch", "light_prerank"),
}


def stages_of(pipeline: str) -> list[str]:
    """Stage names a pipeline visits, in order of first use."""
    names: list[str] = []
    for step in PIPELINES[pipeline]:
        names.extend((step,) if isinstance(step, str) else step)
    return names


def critical_path_ms(pipeline: str, stage_ms: Mapping[str, float]) -> float:
    """End-to-end time implied by per-stage times: sum over steps, max within a parallel group."""
    return sum(stage_ms[step] if isinstance(step, str) else max(stage_ms[s] for s in step) for step in PIPELINES[pipeline])
