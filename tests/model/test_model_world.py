"""The synthetic world: determinism, drift, and the ground truth's structure."""

from __future__ import annotations

import hashlib

import numpy as np

from aif_sim.model.world import World, preset


def test_same_seed_same_world_and_requests(world):
    other = World(preset("tiny", 0))
    np.testing.assert_array_equal(other.long_items, world.long_items)
    a, b = other.requests("test"), world.requests("test")
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(World(preset("tiny", 1)).long_items, world.long_items)


def test_items_drift_and_features_at_time_t_follow_the_changes(world):
    items = np.arange(world.cfg.n_items)
    t0, t1 = 0.0, 6 * 3600.0
    changed = world.changed_between(items, t0, t1)
    assert 0.3 < changed.mean() < 1.0
    before, after = world.item_features(items, t0), world.item_features(items, t1)
    moved = np.abs(before.mm - after.mm).max(axis=1) > 1e-6
    np.testing.assert_array_equal(moved, changed)
    np.testing.assert_array_equal(before.category, after.category)


def test_requests_have_distinct_candidates_and_both_labels(world):
    test = world.requests("test")
    assert all(len(set(row)) == len(row) for row in test.items)
    assert 0.01 < test.labels.mean() < 0.2
    assert test.probs.shape == test.items.shape


def test_long_term_affinity_is_part_of_the_truth(world):
    """Candidates close to many long-term behaviours are clicked more, at equal everything else."""
    test = world.requests("test")
    e = world.epoch(test.times)[:, None]
    z = world.latent[e, test.items]
    affinity = np.stack([world.long_affinity(zr, u) for zr, u in zip(z, test.users)])
    high = affinity > np.quantile(affinity, 0.9)
    assert test.probs[high].mean() > 2 * test.probs[~high].mean()


def test_generated_world_is_pinned_bit_for_bit(world):
    """The tiny world of seed 0, hashed: the same bits on any x86-64 CPU (the world avoids CPU-specific
    transcendental and BLAS code paths). A change to generation changes this hash, and every figure with it."""
    test = world.requests("test")
    later = world.item_features(test.items[:20], test.times[:20, None])
    digest = hashlib.sha256()
    for a in (
        world.latent,
        world.mm0,
        world.log_pop,
        world.long_items,
        world.short_items,
        test.items,
        test.labels,
        test.probs,
        later.mm,
        later.pop,
        later.price,
    ):
        digest.update(np.ascontiguousarray(a).tobytes())
    assert digest.hexdigest() == "2001f0501c85bd8af2b8c4651e63995e48afc9334c43c98c56cd44d331a7ed77"
    assert test.probs[0, 0] == 0.014525823230542346 and world.mm0[0, 0] == np.float32(-0.06407803297042847)
    assert list(test.items[0, :3]) == [1064, 1200, 645]
