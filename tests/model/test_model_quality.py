"""On the tiny world: AIF beats the two-tower model and stays below the oracle; stale item vectors cost GAUC."""

from __future__ import annotations

from aif_sim.model.evaluate import evaluate


def test_aif_beats_two_tower_and_stays_below_oracle(world, trained):
    test = world.requests("test")
    aif = evaluate(trained["aif"], world, test)
    two_tower = evaluate(trained["two_tower"], world, test)
    assert aif["gauc"] > two_tower["gauc"] + 0.005
    assert aif["oracle_gauc"] > aif["gauc"]
    assert aif["oracle_auc"] > aif["auc"]


def test_gauc_falls_as_item_lag_grows(world, trained):
    test = world.requests("test")
    gauc = [evaluate(trained["aif"], world, test, item_lag_s=lag)["gauc"] for lag in (0.0, 4 * 3600.0, 16 * 3600.0)]
    assert gauc[0] > gauc[1] > gauc[2]
