"""The scored world's users behaving at the simulator's user events (`model.followed`), and the light model's
shadow scoring of a user-interest vector against them."""

from __future__ import annotations

import numpy as np
import pytest

from aif_sim.core.changes import ChangeChunk
from aif_sim.model.factory import model_config
from aif_sim.model.followed import FollowedUsers
from aif_sim.model.shadow import ShadowScorer
from aif_sim.model.train import Checkpoint, TrainConfig, model_version, train_model

START = 1000.0  # world time of the run's start


def _chunks(times, first, stop=None) -> list[ChangeChunk]:
    first = np.asarray(first, dtype=np.int64)
    stop = first + 1 if stop is None else np.asarray(stop, dtype=np.int64)
    return [ChangeChunk(np.asarray(times, dtype=np.float64), first, stop)]


def test_a_followed_user_is_its_world_user_until_the_start_then_moves_one_behaviour_per_event(world):
    population = 3 * world.cfg.n_users  # three simulated ranks per world user
    users = FollowedUsers(world, population, START, seed=0)
    users.follow([0, 1, 5], _chunks([10.0, 20.0, 30.0, 40.0], [1, 5, 1, 1]), START)
    assert users.ranks == [0, 1, 5]
    np.testing.assert_array_equal(users.events(1), START + np.array([10.0, 30.0, 40.0]))
    np.testing.assert_array_equal(users.events(0), [])
    w = world.users_by_rank(np.array([1]), population)
    at_start = world.user_features(w, START).short
    for rank in (0, 1):  # ranks 0 and 1 share world user w
        np.testing.assert_array_equal(users.features(rank, START).short.mm, at_start.mm)
    short = [users.short_items(1, START + t) for t in (5.0, 10.0, 29.0, 30.0, 45.0)]
    np.testing.assert_array_equal(short[0], world.short_items(w, START)[0])  # nothing before the first event
    np.testing.assert_array_equal(short[1][:-1], short[0][1:])  # one behaviour in, the oldest out
    np.testing.assert_array_equal(short[2], short[1])  # no event between
    np.testing.assert_array_equal(short[3][:-1], short[2][1:])
    np.testing.assert_array_equal(users.short_items(0, START + 45.0), short[0])  # rank 0 never behaved
    assert users.changed_between(1, START, START + 10.0) and not users.changed_between(1, START + 10.0, START + 29.0)
    assert users.changed_between(5, START + 19.0, START + 20.0) and not users.changed_between(0, START, START + 100.0)


def test_ranges_of_ranks_and_bad_requests(world):
    users = FollowedUsers(world, world.cfg.n_users, START, seed=0)
    users.follow([2, 4, 7], _chunks([1.0, 2.0], [3, 0], [8, 1]), START)  # the first change touches ranks 3..7
    assert len(users.events(4)) == 1 and len(users.events(7)) == 1 and len(users.events(2)) == 0
    with pytest.raises(ValueError, match="not followed"):
        users.features(3, START)
    with pytest.raises(ValueError, match="after"):
        FollowedUsers(world, world.cfg.n_users, START, seed=0).follow([0], _chunks([-5.0], [0]), START)


def test_behaviours_are_drawn_as_the_world_draws_its_own(world):
    """A followed user's behaviours come from the world's rule: near the interest current at each event, so most
    are among the tenth of the catalogue closest to that interest (a tenth of random items would be)."""
    users = FollowedUsers(world, world.cfg.n_users, START, seed=3)
    times = np.arange(1.0, 1.0 + world.cfg.short_len)  # a whole short sequence within seconds: one interest
    users.follow([0], _chunks(times, np.zeros(len(times), np.int64)), START)
    w = int(world.users_by_rank(np.array([0]), world.cfg.n_users)[0])
    interest = world.interests[w, world.current_interest(np.array([w]), START + times[-1])[0]]
    closeness = world.latent0.astype(np.float64) @ interest
    near = closeness > np.quantile(closeness, 0.9)
    assert near[users.short_items(0, START + times[-1])].mean() > 0.5


@pytest.fixture(scope="module")
def light(world) -> Checkpoint:
    model = train_model("light", world, model_config(world.cfg), TrainConfig(epochs=1), seed=0, show_progress=False)
    return Checkpoint("light", model_version("light", model), model, model_config(world.cfg), world.cfg, TrainConfig(), 0)


def test_a_user_interest_vector_is_stale_only_across_the_users_events(light, world):
    changes = _chunks([100.0, 200.0], [0, 0])
    scorer = ShadowScorer(light=light, world_start_s=START, user_changes=lambda: changes)
    assert scorer.light_models and not scorer.models
    scorer.follow_users([0, 1])
    items = scorer.candidates(0, 150.0, 100, np.random.default_rng(0))
    current = scorer.score_user_interest(0, 150.0, items, 120.0, 0, 0, rng=np.random.default_rng(1))
    assert not current.user_stale and np.array_equal(current.stale, current.fresh) and current.user_vector_age_s == 30.0
    old = scorer.score_user_interest(0, 150.0, items, 50.0, 0, 0, rng=np.random.default_rng(1))
    assert old.user_stale and not np.array_equal(old.stale, old.fresh)
    np.testing.assert_array_equal(old.fresh, current.fresh)
    np.testing.assert_array_equal(old.labels, current.labels)  # same truth, same draws
    assert old.stale_fraction == 0.0  # the candidates' features are read at the request
    with pytest.raises(ValueError, match="light model version 1"):
        scorer.score_user_interest(0, 150.0, items, 50.0, 1, 0)
    with pytest.raises(ValueError, match="not followed"):
        scorer.score_user_interest(2, 150.0, items, 50.0, 0, 0)
