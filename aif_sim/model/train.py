"""Training loop shared by all models, batching of world requests, and checkpoints."""

from __future__ import annotations

import hashlib
import pickle
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress
from torch import Tensor, nn

from aif_sim.atomic import atomic_path
from aif_sim.errors import InputError
from aif_sim.model.config import ModelConfig
from aif_sim.model.factory import build_model, item_inputs, user_inputs
from aif_sim.model.inputs import ItemInputs, UserInputs
from aif_sim.model.world import Requests, World, WorldConfig


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings."""

    epochs: int = 3
    batch_requests: int = 32
    lr: float = 3e-3


def seed_everything(seed: int) -> None:
    """Seed torch and make its kernels deterministic."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def batch(world: World, requests: Requests, item_lag_s: float = 0.0) -> tuple[UserInputs, ItemInputs, Tensor]:
    """Model inputs and labels for requests; candidates carry the features of `item_lag_s` before each request."""
    users = user_inputs(world.user_features(requests.users))
    items = item_inputs(world.item_features(requests.items, requests.times[:, None] - item_lag_s))
    return users, items, torch.from_numpy(requests.labels).float()


def train_model(name: str, world: World, cfg: ModelConfig, train: TrainConfig, seed: int, show_progress: bool = True) -> nn.Module:
    """Train a model of the named kind on the world's training requests (deterministic in seed)."""
    seed_everything(seed)
    model = build_model(name, cfg)
    requests = world.requests("train")
    optimiser = torch.optim.Adam(model.parameters(), lr=train.lr)
    rng = np.random.default_rng(seed)
    steps = -(-len(requests) // train.batch_requests)
    model.train()
    with Progress(transient=True, disable=not show_progress) as progress:
        task = progress.add_task(f"training {name}", total=train.epochs * steps)
        for epoch in range(train.epochs):
            order = rng.permutation(len(requests))
            for step in range(steps):
                users, items, labels = batch(world, requests.subset(order[step * train.batch_requests : (step + 1) * train.batch_requests]))
                loss = nn.functional.binary_cross_entropy_with_logits(model(users, items), labels)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                progress.update(task, advance=1, description=f"training {name} epoch {epoch + 1}/{train.epochs} loss {loss.item():.4f}")
    return model.eval()


def timed_train(
    name: str, world: World, cfg: ModelConfig, train: TrainConfig, seed: int, show_progress: bool = True
) -> tuple[nn.Module, float]:
    """train_model and its wall time in seconds."""
    start = time.perf_counter()
    model = train_model(name, world, cfg, train, seed, show_progress)
    return model, time.perf_counter() - start


def model_version(name: str, model: nn.Module) -> str:
    """A version string that identifies the trained weights: `<model>-<hash of parameters>`."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return f"{name}-{digest.hexdigest()[:12]}"


@dataclass
class Checkpoint:
    """A trained model with everything needed to rebuild it and its world."""

    name: str
    version: str
    model: nn.Module
    model_config: ModelConfig
    world_config: WorldConfig
    train_config: TrainConfig
    seed: int


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    """Write the checkpoint atomically."""
    payload = {
        "model": ckpt.name,
        "model_version": ckpt.version,
        "model_config": ckpt.model_config.to_dict(),
        "world_config": ckpt.world_config.to_dict(),
        "train_config": asdict(ckpt.train_config),
        "seed": ckpt.seed,
        "state_dict": ckpt.model.state_dict(),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by save_checkpoint; InputError when it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint: file not found (expected a checkpoint.pt written by train)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        cfg = ModelConfig.from_dict(payload["model_config"])
        model = build_model(payload["model"], cfg)
        model.load_state_dict(payload["state_dict"])
        world_cfg = WorldConfig(**payload["world_config"])
        train_cfg = TrainConfig(**payload["train_config"])
        return Checkpoint(payload["model"], payload["model_version"], model.eval(), cfg, world_cfg, train_cfg, payload["seed"])
    except (KeyError, TypeError, ValueError, RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
        raise InputError(f"{path}: checkpoint: not a valid aif-sim checkpoint ({type(exc).__name__}: {exc})".splitlines()[0]) from exc
