"""The synthetic world: determinism, drift, and the ground truth's structure."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

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
    same = ~changed
    np.testing.assert_array_equal(before.pop[same], after.pop[same])  # popularity and price move at changes only
    np.testing.assert_array_equal(before.price[same], after.price[same])


def test_items_change_at_continuous_times_at_the_configured_rate(world):
    """Minutes of lag already show changes, in proportion to the lag: 1 - exp(-rate * lag) of the items."""
    items = np.arange(world.cfg.n_items)
    rate = world.cfg.change_rate_per_h / 3600.0
    t = 20 * 3600.0
    for lag in (60.0, 300.0, 600.0, 3600.0):
        expected = 1 - np.exp(-rate * lag)
        share = world.changed_between(items, t - lag, t).mean()
        assert abs(share - expected) < 4 * np.sqrt(expected / len(items)) + 0.002, (lag, share, expected)
    times = world.change_times(7)
    assert len(times) and np.all(np.diff(times) > 0) and times.max() <= world.cfg.horizon_s
    assert len(np.unique(np.round(np.concatenate([world.change_times(i) for i in range(50)]) % 60.0, 3))) > 100  # not on a grid
    first = times[0]
    assert not world.changed_between(np.array([7]), 0.0, first - 1e-3)[0] and world.changed_between(np.array([7]), 0.0, first)[0]


def test_users_current_interest_and_short_sequence_change_over_time(world):
    users = np.arange(world.cfg.n_users)
    t0, t1 = 10 * 3600.0, 10 * 3600.0 + 600.0
    short0, short1 = world.short_items(users, t0), world.short_items(users, t1)
    moved = (short0 != short1).any(axis=1)
    assert 0.5 < moved.mean() < 1.0  # about 12 behaviours an hour: most users acted within 10 minutes
    n_new = world.behaviours.count(users, t1) - world.behaviours.count(users, t0)
    for u in np.flatnonzero(n_new)[:20]:  # the sequence slides: the latest behaviours are appended, the oldest drop
        k = n_new[u]
        if k < world.cfg.short_len:
            np.testing.assert_array_equal(short1[u, :-k], short0[u, k:])
    switched = world.current_interest(users, 0.0) != world.current_interest(users, 24 * 3600.0)
    assert 0.2 < switched.mean() < 0.9
    features = world.user_features(users[:3], np.array([0.0, t0, t1]))
    assert features.short.mm.shape == (3, world.cfg.short_len, world.cfg.mm_dim)
    # more active users act more often
    activity = world.activity
    counts = world.behaviours.count(users, world.cfg.horizon_s)
    assert counts[activity == activity.max()].mean() > 2 * counts[activity == 0].mean()


def test_ranks_map_onto_world_entities_by_popularity(world):
    n = world.cfg.n_items
    order = world.item_order
    log_pop0 = world.log_pop_at(order, 0.0)
    assert np.all(np.diff(log_pop0) < 0)  # item_order: most popular first at time 0
    np.testing.assert_array_equal(world.items_by_rank(np.arange(n)), order)  # same population: identity on ranks
    ranks = np.arange(0, 1_000_000, 997)
    mapped = world.items_by_rank(ranks, population=1_000_000)
    world_rank = np.argsort(order)[mapped]
    np.testing.assert_array_equal(world_rank, ranks * n // 1_000_000)
    assert np.all(np.diff(world_rank) >= 0) and world_rank[0] == 0  # order kept, rank 0 = most popular
    assert world.items_by_rank(np.array([999_999]), 1_000_000)[0] == order[-1]
    np.testing.assert_array_equal(world.items_by_rank(np.arange(10), population=100), order[:10])
    users = world.users_by_rank(np.arange(world.cfg.n_users))
    assert np.all(np.diff(world.activity[users]) <= 0)  # most active first
    assert world.users_by_rank(np.array([0]), 10**6)[0] == users[0]
    with pytest.raises(ValueError, match="outside 0..99"):
        world.items_by_rank(np.array([100]), population=100)


def test_retrieval_serves_up_to_every_item_of_the_world(world):
    rng = np.random.default_rng(0)
    n = world.cfg.n_items
    for k in (1, 150, 1000, n):
        candidates = world.retrieve(rng, 3, 20 * 3600.0, k)
        assert len(candidates) == k and len(np.unique(candidates)) == k
    with pytest.raises(ValueError, match=f"the world has {n} items"):
        world.retrieve(rng, 3, 20 * 3600.0, n + 1)


def test_requests_have_distinct_candidates_and_both_labels(world):
    test = world.requests("test")
    assert all(len(set(row)) == len(row) for row in test.items)
    assert 0.01 < test.labels.mean() < 0.2
    assert test.probs.shape == test.items.shape


def test_long_term_affinity_is_part_of_the_truth(world):
    """Candidates close to many long-term behaviours are clicked more, at equal everything else."""
    test = world.requests("test")
    z = world.item_latent(test.items, test.times[:, None])
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
        world.state_latent,
        world.state_log_pop,
        world.state_pop,
        world.changes.ids,
        world.changes.times,
        world.mm0,
        world.long_items,
        world.timeline_items,
        world.behaviours.ids,
        world.behaviours.times,
        world.switches.ids,
        world.switches.times,
        world.switch_interest,
        test.items,
        test.labels,
        test.probs,
        later.mm,
        later.pop,
        later.price,
    ):
        digest.update(np.ascontiguousarray(a).tobytes())
    assert digest.hexdigest() == "bfa744dd10e6f414c41c58278163cd14bc2ac98068630777d9fb4109eb491bd0"
    assert test.probs[0, 0] == 0.027962858069851344 and world.mm0[0, 0] == np.float32(-0.06407803297042847)
    assert list(test.items[0, :3]) == [425, 1618, 1779]
