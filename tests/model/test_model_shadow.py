"""Shadow scoring: fresh scores equal the evaluator's and stale ones equal them when the vectors are current; the
grouped computation equals a candidate-by-candidate one; stale quality falls with the vectors' age at minutes
scale; versions, cached user vectors, retrieval and the quality summary."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from aif_sim.model.evaluate import ragged_metrics, ranking_metrics, score
from aif_sim.model.factory import item_inputs, model_config, user_inputs
from aif_sim.model.shadow import ShadowScorer, shadow_quality
from aif_sim.model.train import Checkpoint, TrainConfig, continue_training, model_version


@pytest.fixture(scope="module")
def versions(world, trained) -> list[Checkpoint]:
    """Version 0 (the trained tiny AIF model) and version 1, fine-tuned on the hour after its training data."""
    model = trained["aif"]
    v0 = Checkpoint("aif", model_version("aif", model), model, model_config(world.cfg), world.cfg, TrainConfig(), 0)
    v1, _ = continue_training(v0, world, 3600.0, 64, TrainConfig(epochs=1, lr=1e-3), seed=1, show_progress=False)
    return [v0, v1]


@pytest.fixture(scope="module")
def shadow(versions) -> ShadowScorer:
    return ShadowScorer(versions, world_start_s=0.0)  # simulated time = world time


def _ranks(shadow: ShadowScorer, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Simulated ranks of world users and items (populations of the world's size)."""
    return np.argsort(shadow.world.user_order)[users], np.argsort(shadow.world.item_order)[items]


def test_current_vectors_give_stale_equal_to_fresh_equal_to_the_evaluator(world, trained, shadow):
    test = world.requests("test").subset(slice(0, 4))
    expected = score(trained["aif"], world, test)
    user_ranks, item_ranks = _ranks(shadow, test.users, test.items)
    for r in range(len(test)):
        result = shadow.score(user_ranks[r], test.times[r], item_ranks[r], test.times[r], 0, serving_version=0)
        np.testing.assert_array_equal(result.items, test.items[r])
        assert result.user == test.users[r]
        np.testing.assert_array_equal(result.stale, result.fresh)
        np.testing.assert_allclose(result.fresh, expected[r], rtol=1e-5)
        np.testing.assert_array_equal(result.probs, test.probs[r])
        assert result.stale_fraction == 0 and result.version_mismatch_fraction == 0


def test_grouped_stale_scores_equal_candidate_by_candidate_scores(world, shadow, versions):
    """Mixed vector times and versions: every candidate's stale score is the serving version's real time over its
    item vector made by its own version from the features at its own time."""
    rng = np.random.default_rng(3)
    t = 20 * 3600.0
    user_rank, item_ranks = 5, rng.choice(world.cfg.n_items, 120, replace=False)
    times = t - rng.choice([0.0, 120.0, 600.0, 3600.0, 5 * 3600.0], 120)
    vers = rng.integers(0, 2, 120)
    result = shadow.score(user_rank, t, item_ranks, times, vers, serving_version=1)
    serving = versions[1].model
    with torch.inference_mode():
        user = serving.user_side(user_inputs(world.user_features(np.array([result.user]), t)))
        expected = np.empty(120)
        for c in range(120):
            item = result.items[c : c + 1]
            state = versions[vers[c]].model.item_side(item_inputs(world.item_features(item[None], times[c])))
            expected[c] = torch.sigmoid(serving.realtime(user, state))[0, 0].item()
    np.testing.assert_allclose(result.stale, expected, rtol=1e-5)
    changed = world.changed_between(result.items, times, t)
    assert result.stale_fraction == changed.mean() > 0
    assert result.version_mismatch_fraction == np.mean(vers != 1)
    same = ~changed & (vers == 1)
    np.testing.assert_array_equal(result.stale[same], result.fresh[same])
    assert not np.allclose(result.stale[~same], result.fresh[~same])


def test_stale_quality_loss_grows_with_vector_age_at_minutes_scale(world, shadow):
    """Over the held-out window's requests, GAUC with vectors of age 0, 10 min, 1 h, 4 h: no loss at 0, then a loss
    that grows with the age (the same labels and fresh scores at every age)."""
    requests = world.requests_between(world.cfg.train_end_s, world.cfg.test_end_s, 600, 150, stream=9)
    user_ranks, item_ranks = _ranks(shadow, requests.users, requests.items)
    loss = {}
    for age in (0.0, 600.0, 3600.0, 4 * 3600.0):
        rng = np.random.default_rng(0)  # the same labels at every age
        scored = [
            shadow.score(user_ranks[r], requests.times[r], item_ranks[r], requests.times[r] - age, 0, 0, rng=rng)
            for r in range(len(requests))
        ]
        quality = shadow_quality(scored, np.random.default_rng(1))
        assert quality["scored_requests"] == len(requests) and set(quality["stale"]) == {"auc", "gauc", "hr_at_100"}
        assert quality["gauc_loss"]["mean"] == pytest.approx(quality["fresh"]["gauc"] - quality["stale"]["gauc"], abs=1e-12)
        loss[age] = quality["fresh"]["gauc"] - quality["stale"]["gauc"]
    assert loss[0.0] == 0.0
    assert 0.0 < loss[600.0] < loss[3600.0] < loss[4 * 3600.0], loss


def test_other_versions_and_cached_user_vectors_change_the_stale_scores(world, shadow):
    t = 20 * 3600.0
    items = shadow.candidates(7, t, 100, np.random.default_rng(0))
    base = shadow.score(7, t, items, t, 1, serving_version=1)
    np.testing.assert_array_equal(base.stale, base.fresh)
    old_version = shadow.score(7, t, items, t, 0, serving_version=1)
    assert old_version.version_mismatch_fraction == 1.0 and not np.allclose(old_version.stale, old_version.fresh)
    cached = shadow.score(7, t, items, t, 1, serving_version=1, user_vector_time=t - 3600.0)
    assert not np.allclose(cached.stale, cached.fresh)
    np.testing.assert_array_equal(cached.fresh, base.fresh)
    with pytest.raises(ValueError, match=r"model version 5 unknown: this scorer holds versions \[0, 1\]"):
        shadow.score(7, t, items, t, 5, serving_version=1)


def test_candidates_and_id_mapping_of_a_larger_population(versions, world):
    big = ShadowScorer(versions[:1], n_users=10**6, n_items=10**6)
    assert big.world_start_s == world.cfg.train_end_s  # serving starts where version 0's training data ends
    ranks = big.candidates(0, 60.0, world.cfg.n_items, np.random.default_rng(1))
    items = big.world_items(ranks)
    assert len(np.unique(items)) == world.cfg.n_items  # every item of the world, each once
    assert big.world_items(np.array([0]))[0] == world.item_order[0]
    assert big.world_users(0) == world.user_order[0]
    with pytest.raises(ValueError, match="the world has 2000 items"):
        big.candidates(0, 60.0, world.cfg.n_items + 1)
    result = big.score(123456, 60.0, np.array([0, 5, 499, 500, 250_000, 999_999]), 0.0, 0, 0)
    assert result.items[0] == result.items[1] == result.items[2] != result.items[3]  # 500 simulated ranks per world item


def test_ragged_metrics_equal_ranking_metrics_for_equal_lengths(world):
    test = world.requests("test").subset(slice(0, 40))
    scores = np.random.default_rng(0).random(test.items.shape) + test.probs
    full = ranking_metrics(test, scores)
    ragged = ragged_metrics(list(test.users), list(test.labels), list(scores), k=100)
    assert ragged == {k: full[k] for k in ("auc", "gauc", "hr_at_100")}
    shorter = replace(test, items=test.items[:, :60])
    assert ragged_metrics(list(shorter.users), list(test.labels[:, :60]), list(scores[:, :60]), k=10)["hr_at_10"] >= 0
