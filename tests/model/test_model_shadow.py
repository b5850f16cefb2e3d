"""Shadow scoring with a saved checkpoint: fresh scores equal the evaluator's, stale ones differ where items changed."""

from __future__ import annotations

import numpy as np

from aif_sim.model.evaluate import ranking_metrics, score
from aif_sim.model.factory import model_config
from aif_sim.model.shadow import ShadowScorer
from aif_sim.model.train import Checkpoint, TrainConfig, model_version, save_checkpoint


def test_shadow_scores_fresh_and_stale(world, trained, tmp_path):
    model = trained["aif"]
    save_checkpoint(
        tmp_path / "c.pt", Checkpoint("aif", model_version("aif", model), model, model_config(world.cfg), world.cfg, TrainConfig(), 0)
    )
    shadow = ShadowScorer(tmp_path / "c.pt")
    test = world.requests("test").subset(slice(0, 3))
    for r in range(3):
        fresh = shadow.score(int(test.users[r]), test.times[r], test.items[r], test.times[r])
        np.testing.assert_allclose(fresh, score(model, world, test.subset(slice(r, r + 1)))[0], rtol=1e-5)
    user, items = shadow.sample_request(np.random.default_rng(0), t=20 * 3600.0, n_candidates=60)
    assert len(set(items)) == 60
    item_times = np.full(60, 20 * 3600.0)
    item_times[:30] -= 8 * 3600.0  # half of the vectors are 8 hours old
    stale, fresh = shadow.score(user, 20 * 3600.0, items, item_times), shadow.score(user, 20 * 3600.0, items, 20 * 3600.0)
    changed = world.changed_between(items, item_times, 20 * 3600.0)
    assert changed[:30].any() and not changed[30:].any()
    np.testing.assert_allclose(stale[30:], fresh[30:], rtol=1e-5)
    assert not np.allclose(stale[changed], fresh[changed])
    labelled = shadow.label(np.random.default_rng(1), np.array([user]), np.array([20 * 3600.0]), items[None, :])
    assert set(ranking_metrics(labelled, fresh[None, :])) >= {"auc", "gauc", "hr_at_10", "logloss"}
