"""Shadow scoring after a run: the real model scores the sampled requests' candidates with the item vectors
the simulated system had (their times and model versions) and with fresh ones; the gap is what the
staleness costs in ranking quality. torch is imported here, only when a scenario asks for it."""

from __future__ import annotations

from rich.console import Console

from aif_sim.metrics.recorder import Recorder
from aif_sim.scenario import Scenario


def score_shadow_samples(scenario: Scenario, results: dict[str, Recorder], console: Console | None = None) -> None:
    """Set `quality` on every recorder that collected shadow samples."""
    sampled = {name: recorder for name, recorder in results.items() if recorder.shadow_samples}
    if not sampled or scenario.model is None:
        return
    from aif_sim.model.shadow import ShadowScorer, shadow_quality

    nearline = scenario.nearline
    items = scenario.traffic.items.count
    follows_rate = nearline is not None and nearline.updates_from == "rate" and nearline.item_updates_per_s > 0
    rate = nearline.item_updates_per_s * 3600 / items if follows_rate else None  # the world drifts at the scenario's rate
    scorer = ShadowScorer(
        scenario.model.checkpoints,
        n_users=scenario.traffic.users.count,
        n_items=items,
        change_rate_per_h=rate,
        seed=scenario.seed,
    )
    for name, recorder in sampled.items():
        if console is not None:
            console.print(f"shadow scoring {len(recorder.shadow_samples)} {name} requests with the real model")
        scored = [
            scorer.score(s.user, s.t_s, s.items, s.made_s, s.versions, s.serving_version, user_vector_time=s.user_vector_s)
            for s in recorder.shadow_samples
        ]
        recorder.quality = shadow_quality(scored)
