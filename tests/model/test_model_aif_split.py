"""The AIF forward split into user side, item side (stored per item) and real time equals the fused forward,
also when the stored item vectors were made at another time than the request, and through the operators
exactly as `calibrate` times them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from aif_sim.model.aif_model import AIFModel, UserState
from aif_sim.model.factory import item_inputs, model_config, user_inputs
from aif_sim.model.profile import operators, random_items
from aif_sim.model.towers import ItemEmbedding
from aif_sim.model.train import batch


@pytest.mark.parametrize("overrides", [{}, {"n_bridges": 0}, {"n_bridges": 3}, {"lsh_mode": "bit2"}, {"lsh_mode": "dense"}])
def test_split_forward_equals_fused(world, overrides):
    torch.manual_seed(0)
    model = AIFModel(model_config(world.cfg, **overrides)).eval()
    first = world.requests("test").subset(slice(0, 4))
    requests = replace(first, times=np.full(4, first.times[0]))  # one moment, so one item store serves all
    users, items, _ = batch(world, requests)
    unique, index = np.unique(requests.items, return_inverse=True)
    index = torch.from_numpy(index.reshape(requests.items.shape))
    with torch.inference_mode():
        fused = model(users, items)
        store = model.item_side(item_inputs(world.item_features(unique, requests.times[0])))  # nearline, once per item
        user_state = model.user_side(users)
        split = model.realtime(user_state, store.take(index))
        reference = model.realtime_reference(user_state, store.take(index))
        small_blocks = model.serve_realtime(user_state, store.take(index), block=7)
        one_by_one = torch.cat(
            [
                model.realtime(
                    model.user_side(user_inputs(world.user_features(requests.users[r : r + 1], requests.times[r]))),
                    store.take(index[r : r + 1]),
                )
                for r in range(len(requests))
            ]
        )
    assert fused.shape == requests.items.shape
    torch.testing.assert_close(split, fused, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(one_by_one, fused, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(small_blocks, reference, rtol=1e-5, atol=1e-5)


def test_item_vectors_made_earlier_equal_the_fused_forward_on_the_old_features(world):
    """What the simulator relies on: vectors made nearline from the features of t_old, scored at request time t."""
    torch.manual_seed(1)
    model = AIFModel(model_config(world.cfg)).eval()
    requests = world.requests("test").subset(slice(0, 3))
    t_old = requests.times - 6 * 3600.0
    unique, index = np.unique(requests.items, return_inverse=True)
    index = torch.from_numpy(index.reshape(requests.items.shape))
    users = user_inputs(world.user_features(requests.users, requests.times))
    with torch.inference_mode():
        user_state = model.user_side(users)
        for r in range(len(requests)):  # one store per request: all its items' vectors made at that request's t_old
            store = model.item_side(item_inputs(world.item_features(unique, t_old[r])))
            stale = model.realtime(UserState(*(x[r : r + 1] for x in vars(user_state).values())), store.take(index[r : r + 1]))
            old_features = item_inputs(world.item_features(requests.items[r : r + 1], t_old[r]))
            fused_old = model(user_inputs(world.user_features(requests.users[r : r + 1], requests.times[r])), old_features)
            fresh = model(
                user_inputs(world.user_features(requests.users[r : r + 1], requests.times[r])),
                item_inputs(world.item_features(requests.items[r : r + 1], requests.times[r])),
            )
            torch.testing.assert_close(stale, fused_old, rtol=1e-5, atol=1e-5)
            changed = torch.from_numpy(world.changed_between(requests.items[r : r + 1], t_old[r], requests.times[r]))
            assert changed.any() and not torch.allclose(stale[changed], fresh[changed])
            before, now = (world.item_features(requests.items[r : r + 1], t) for t in (t_old[r], requests.times[r]))
            same = torch.from_numpy((before.pop == now.pop) & (before.price == now.price) & (before.mm == now.mm).all(-1))
            assert same.any()
            np.testing.assert_array_equal(same.numpy(), ~changed.numpy())  # features move only at an item's changes
            torch.testing.assert_close(stale[same], fresh[same], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [1, 37, 700])
def test_calibrated_realtime_operator_equals_the_online_model(world, n):
    """`realtime` as calibrate times it (stored states of the same user and items) equals `aif_online`, the same
    model computed online, and the textbook form of the head."""
    ops = operators(world.cfg, torch.device("cpu"), batches=(1,), candidates=(n,))
    realtime, online = ops["realtime"][2](n)(), ops["aif_online"][2](n)()
    assert realtime.shape == (1, n)
    torch.testing.assert_close(realtime, online, rtol=1e-5, atol=1e-5)
    assert realtime.std() > 0 if n > 1 else True


def test_folded_item_embedding_equals_the_textbook_form(world):
    torch.manual_seed(0)
    embedding = ItemEmbedding(model_config(world.cfg))
    items = random_items(model_config(world.cfg), (3, 41), torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(embedding(items), embedding.forward_reference(items), rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            embedding.out.weight.mul_(2.0)  # a changed parameter invalidates the folded weights
        torch.testing.assert_close(embedding(items), embedding.forward_reference(items), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(embedding(items), embedding.forward_reference(items), rtol=1e-5, atol=1e-6)  # autograd path


def test_bridges_change_the_scores(world):
    """BEA is wired into the real-time head: zeroing the user-bridge representations moves the scores."""
    torch.manual_seed(0)
    model = AIFModel(model_config(world.cfg, n_bridges=4)).eval()
    users, items, _ = batch(world, world.requests("test").subset(slice(0, 2)))
    with torch.inference_mode():
        user, store = model.user_side(users), model.item_side(items)
        base = model.realtime(user, store)
        user.bridges = torch.zeros_like(user.bridges)
        assert not torch.allclose(base, model.realtime(user, store))
