"""The AIF forward split into user side, item side (stored per item) and real time equals the fused forward."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from aif_sim.model.aif_model import AIFModel
from aif_sim.model.factory import item_inputs, model_config, user_inputs
from aif_sim.model.train import batch


@pytest.mark.parametrize("overrides", [{}, {"n_bridges": 0}, {"n_bridges": 3}, {"lsh_mode": "bit1"}, {"lsh_mode": "dense"}])
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
        split = model.realtime(model.user_side(users), store.take(index))
        one_by_one = torch.cat([
            model.realtime(model.user_side(user_inputs(world.user_features(requests.users[r : r + 1]))), store.take(index[r : r + 1]))
            for r in range(len(requests))
        ])
    assert fused.shape == requests.items.shape
    torch.testing.assert_close(split, fused, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(one_by_one, fused, rtol=1e-5, atol=1e-5)


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
