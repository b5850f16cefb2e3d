"""Shadow scoring around a run: the scored world (the checkpoints' world, its items changing by the run's own
change process and, for UIC's user-interest vectors, its users behaving at the run's own user events), its
retrieval, which draws the sampled requests' candidates during the run, and, after the run, the real model's
scores of those requests with the vectors the simulated system had and with fresh ones (AIF's item vectors by
the AIF model, UIC's user-interest vectors by the light model); the gap is what the staleness costs in ranking
quality. torch is imported here, only when a scenario asks for it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.console import Console

from aif_sim.core.changes import item_changes, user_changes
from aif_sim.core.shadow import Retrieval
from aif_sim.core.traffic import stream
from aif_sim.errors import InputError
from aif_sim.metrics.recorder import Recorder
from aif_sim.scenario import Scenario
from aif_sim.scenario.pipelines import VECTOR_STORES

if TYPE_CHECKING:
    from aif_sim.model.shadow import ShadowScorer

_built: tuple[str, ShadowScorer] | None = None  # the last scenario's scorer: a run's retrieval and its scoring share it


def shadow_scores(scenario: Scenario) -> bool:
    """Whether the scenario shadow-scores: a sampling rate and a pipeline that reads the shipped nearline stores'
    vectors (item vectors, or user-interest vectors)."""
    model = scenario.model
    return (
        model is not None
        and model.shadow_rate > 0
        and scenario.nearline is not None
        and any(store in VECTOR_STORES for pipeline in scenario.pipeline_defs for store in pipeline.vector_stores)
    )


def _checkpoints(scenario: Scenario) -> list:
    """The scenario's checkpoints, AIF versions first, then the light model's."""
    model = scenario.model
    assert model is not None
    return model.checkpoints + ([model.light_checkpoint] if model.light_checkpoint is not None else [])


def shadow_scorer(scenario: Scenario, source: str = "<scenario>") -> ShadowScorer:
    """The scenario's scored world and model versions: the checkpoints' world, whose items change after the
    training data ends by the run's own item changes (`core.changes`; with `updates_from: world` the run's changes
    are the world's own). Refuses (InputError naming `source`, the scenario's file) a run longer than the world's
    horizon, more shadow candidates than the world has items, and a simulated catalogue smaller than the world's.
    The last scenario's scorer is kept, so a run's retrieval and its scoring share one."""
    global _built
    key = scenario.model_dump_json()
    if _built is not None and _built[0] == key:
        return _built[1]
    from aif_sim.model.shadow import ShadowScorer
    from aif_sim.model.train import load_checkpoint

    model, nearline = scenario.model, scenario.nearline
    assert model is not None and _checkpoints(scenario)
    path = _checkpoints(scenario)[0]
    first = load_checkpoint(path)
    world = first.world_config
    horizon_s = world.horizon_s - float(first.trained_until_s)
    until_s = scenario.duration_s + scenario.drain_s
    if until_s > horizon_s:
        raise InputError(
            f"{source}: duration_s: the run lasts {until_s:g} s (with drain_s) but the world of {path} ends {horizon_s:g} s after"
            f" its training data (horizon_s {world.horizon_s:g}); expected at most {horizon_s - scenario.drain_s:g}"
        )
    if model.shadow_candidates > world.n_items:
        raise InputError(
            f"{source}: model.shadow_candidates: {model.shadow_candidates}: the world has {world.n_items} items; expected at most that"
        )
    if scenario.traffic.items.count < world.n_items:
        raise InputError(
            f"{source}: traffic.items.count: {scenario.traffic.items.count}: shadow scoring maps the world's {world.n_items} items onto"
            " the simulated catalogue; expected at least that many"
        )
    follows_world = nearline is not None and nearline.updates_from == "world"
    light = None if model.light_checkpoint is None else load_checkpoint(model.light_checkpoint)
    if light is not None and light.name != "light":
        raise InputError(
            f"{source}: model.light_checkpoint: {model.light_checkpoint} holds the {light.name} model; expected the light model (train --model light)"
        )
    if light is not None and light.world_config != world:
        raise InputError(
            f"{source}: model.light_checkpoint: {model.light_checkpoint} was trained on another world than {path}; expected the same"
            " --preset and --seed"
        )
    scorer = ShadowScorer(
        model.checkpoints,
        light=light,
        n_users=scenario.traffic.users.count,
        n_items=scenario.traffic.items.count,
        item_changes=None if follows_world else item_changes(scenario),
        user_changes=lambda: user_changes(scenario),
        seed=scenario.seed,
    )
    _built = (key, scorer)
    return scorer


def shadow_retrieval(scenario: Scenario) -> Retrieval | None:
    """The scored world's retrieval of `model.shadow_candidates` candidates, for a scenario that shadow-scores."""
    if not shadow_scores(scenario):
        return None
    assert scenario.model is not None
    scorer, n = shadow_scorer(scenario), scenario.model.shadow_candidates
    return lambda user, t, rng: scorer.candidates(user, t, n, rng)


def score_shadow_samples(scenario: Scenario, results: dict[str, Recorder], console: Console | None = None) -> None:
    """Set `quality` on every recorder that collected shadow samples."""
    sampled = {name: recorder for name, recorder in results.items() if recorder.shadow_samples}
    if not sampled or scenario.model is None:
        return
    from aif_sim.model.shadow import shadow_quality

    scorer = shadow_scorer(scenario)
    for name, recorder in sampled.items():
        start = time.perf_counter()
        labels = stream(scenario.seed, "shadow-labels")
        samples = recorder.shadow_samples
        scorer.follow_users(s.user for s in samples if s.store == "users")
        scored = [
            scorer.score(s.user, s.t_s, s.items, s.made_s, s.versions, s.serving_version, user_vector_time=s.user_vector_s, rng=labels)
            if s.store == "items"
            else scorer.score_user_interest(s.user, s.t_s, s.items, s.user_vector_s, s.user_vector_version, s.serving_version, rng=labels)
            for s in samples
        ]
        recorder.quality = shadow_quality(scored, stream(scenario.seed, "shadow-bootstrap"))
        if console is not None:
            console.print(f"shadow-scored {len(scored)} {name} requests with the real model in {time.perf_counter() - start:.1f} s")
