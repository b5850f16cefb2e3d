"""Training is deterministic for a seed, and checkpoints round-trip with their model version."""

from __future__ import annotations

from dataclasses import replace

import torch

from aif_sim.model.factory import model_config
from aif_sim.model.train import Checkpoint, TrainConfig, load_checkpoint, model_version, save_checkpoint, train_model
from aif_sim.model.world import World


def _short_world(world: World) -> World:
    return World(replace(world.cfg, train_requests=96))


def test_same_seed_same_weights_other_seed_other_weights(world):
    small = _short_world(world)
    cfg, train = model_config(small.cfg), TrainConfig(epochs=1)
    a = train_model("aif", small, cfg, train, seed=5, show_progress=False)
    b = train_model("aif", small, cfg, train, seed=5, show_progress=False)
    c = train_model("aif", small, cfg, train, seed=6, show_progress=False)
    assert model_version("aif", a) == model_version("aif", b) != model_version("aif", c)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_checkpoint_round_trip(world, tmp_path):
    small = _short_world(world)
    cfg, train = model_config(small.cfg, n_bridges=2, lsh_mode="bit1"), TrainConfig(epochs=1)
    model = train_model("sequential", small, cfg, train, seed=1, show_progress=False)
    version = model_version("sequential", model)
    save_checkpoint(tmp_path / "c.pt", Checkpoint("sequential", version, model, cfg, small.cfg, train, 1))
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert (loaded.name, loaded.version, loaded.model_config, loaded.world_config) == ("sequential", version, cfg, small.cfg)
    assert model_version("sequential", loaded.model) == version
