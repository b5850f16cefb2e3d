"""Shared fixtures of the model tests: the tiny world and models trained on it (once per session)."""

from __future__ import annotations

import pytest
from torch import nn

from aif_sim.model.factory import model_config
from aif_sim.model.threads import set_threads
from aif_sim.model.train import TrainConfig, train_model
from aif_sim.model.world import World, preset

TRAIN = TrainConfig(epochs=2)


@pytest.fixture(scope="session")
def world() -> World:
    set_threads(1)
    return World(preset("tiny", 0))


@pytest.fixture(scope="session")
def trained(world: World) -> dict[str, nn.Module]:
    """AIF and two-tower models trained on the tiny world."""
    return {name: train_model(name, world, model_config(world.cfg), TRAIN, seed=0, show_progress=False) for name in ("aif", "two_tower")}
