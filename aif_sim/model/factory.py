"""Model names, configs derived from a world, construction, and world features as model inputs."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from aif_sim.model.aif_model import AIFModel
from aif_sim.model.baselines import LightPrerankModel, SequentialModel, TwoTowerModel
from aif_sim.model.config import ModelConfig
from aif_sim.model.inputs import ItemInputs, UserInputs
from aif_sim.model.world import PROFILE_SIZES, ItemFeatures, UserFeatures, WorldConfig

MODELS: dict[str, type[nn.Module]] = {
    "aif": AIFModel,
    "sequential": SequentialModel,
    "light": LightPrerankModel,
    "two_tower": TwoTowerModel,
}


def model_config(world: WorldConfig, **overrides: Any) -> ModelConfig:
    """A model config whose vocabularies fit the world."""
    return ModelConfig(
        n_categories=world.n_categories,
        n_brands=world.n_brands,
        n_price_buckets=world.n_price_buckets,
        n_pop_buckets=world.n_pop_buckets,
        profile_sizes=PROFILE_SIZES,
        mm_dim=world.mm_dim,
        **overrides,
    )


def build_model(name: str, cfg: ModelConfig) -> nn.Module:
    """A freshly initialised model of the named kind."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    return MODELS[name](cfg)


def item_inputs(f: ItemFeatures) -> ItemInputs:
    """World item features as tensors."""
    return ItemInputs(*(torch.from_numpy(x) for x in (f.category, f.brand, f.price, f.pop)), torch.from_numpy(f.mm))


def user_inputs(f: UserFeatures) -> UserInputs:
    """World user features as tensors."""
    return UserInputs(torch.from_numpy(f.profile), item_inputs(f.short), torch.from_numpy(f.long_mm))
