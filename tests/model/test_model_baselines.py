"""The baselines' serving forms compute the same scores as their textbook forms: the blocked sequential
pre-ranker (also through the operator `calibrate` times) and the light pre-ranker's folded head."""

from __future__ import annotations

import pytest
import torch

from aif_sim.model.baselines import LightPrerankModel, SequentialModel
from aif_sim.model.factory import model_config
from aif_sim.model.profile import operators, random_items, random_users


@pytest.mark.parametrize("n", [1, 100, 1024, 1500, 2600])
def test_blocked_sequential_equals_the_textbook_form(world, n):
    """Candidate counts below, at, and not a multiple of the block size (1024), for two users at once."""
    torch.manual_seed(n)
    cfg = model_config(world.cfg)
    model = SequentialModel(cfg).eval()
    gen = torch.Generator().manual_seed(n)
    users, items = random_users(cfg, world.cfg, 2, gen), random_items(cfg, (2, n), gen)
    with torch.inference_mode():
        served = model(users, items)
        reference = model.forward_reference(users, items)
        small_blocks = model.serve(users, items, block=97)
    assert served.shape == (2, n)
    torch.testing.assert_close(served, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(small_blocks, reference, rtol=1e-5, atol=1e-6)
    if n > 1:
        assert reference.std() > 0


def test_training_uses_the_textbook_form_and_gets_gradients(world):
    torch.manual_seed(0)
    cfg = model_config(world.cfg)
    model = SequentialModel(cfg)
    gen = torch.Generator().manual_seed(0)
    users, items = random_users(cfg, world.cfg, 2, gen), random_items(cfg, (2, 30), gen)
    model(users, items).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_calibrated_sequential_operator_equals_the_textbook_form(world):
    n = 1100
    ops = operators(world.cfg, torch.device("cpu"), batches=(1,), candidates=(n,))
    call = ops["sequential_prerank"][2](n)
    model, (users, items) = call.fn, call.args  # the operator is the model's forward on one user's candidates
    assert isinstance(model, SequentialModel)
    with torch.inference_mode():
        torch.testing.assert_close(call(), model.forward_reference(users, items), rtol=1e-5, atol=1e-6)


def test_light_prerank_head_equals_the_textbook_form(world):
    torch.manual_seed(0)
    cfg = model_config(world.cfg)
    model = LightPrerankModel(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    users, items = random_users(cfg, world.cfg, 3, gen), random_items(cfg, (3, 57), gen)
    with torch.inference_mode():
        user = model.user_tower(users)[0]
        vec = model.item_tower(items)
        u = user[:, None, :].expand_as(vec)
        reference = model.head(torch.cat([u, vec, u * vec], dim=-1)).squeeze(-1)
        torch.testing.assert_close(model.online(user, items), reference, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.online(user, items, block=10), reference, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model(users, items), reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model(users, items), reference, rtol=1e-5, atol=1e-6)  # the autograd path
