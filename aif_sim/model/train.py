"""Training loop shared by all models, batching of world requests, and checkpoints."""

from __future__ import annotations

import copy
import hashlib
import pickle
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress
from torch import Tensor, nn

from aif_sim.atomic import atomic_path
from aif_sim.errors import InputError
from aif_sim.model.config import ModelConfig
from aif_sim.model.factory import build_model, item_inputs, user_inputs
from aif_sim.model.inputs import ItemInputs, UserInputs
from aif_sim.model.sources import DataConfig, DataWorld, config_from_dict
from aif_sim.model.world import Requests, World


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


def batch(world: DataWorld, requests: Requests, item_lag_s: float = 0.0, user_lag_s: float = 0.0) -> tuple[UserInputs, ItemInputs, Tensor]:
    """Model inputs and labels for requests; candidates carry the features of `item_lag_s` before each request, users
    those of `user_lag_s` before it."""
    users = user_inputs(world.user_features(requests.users, requests.times - user_lag_s))
    items = item_inputs(world.item_features(requests.items, requests.times[:, None] - item_lag_s))
    return users, items, torch.from_numpy(requests.labels).float()


def train_model(
    name: str,
    world: DataWorld,
    cfg: ModelConfig,
    train: TrainConfig,
    seed: int,
    show_progress: bool = True,
    model: nn.Module | None = None,
    requests: Requests | None = None,
) -> nn.Module:
    """Train a model of the named kind on the world's training requests (deterministic in seed). With `model`, a
    copy of it is trained further (fine-tuning) instead of a fresh one; `requests` replaces the training requests."""
    seed_everything(seed)
    model = build_model(name, cfg) if model is None else copy.deepcopy(model)
    requests = world.requests("train") if requests is None else requests
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


def timed_train(*args: Any, **kwargs: Any) -> tuple[nn.Module, float]:
    """`train_model` (same arguments) and its wall time in seconds."""
    start = time.perf_counter()
    trained = train_model(*args, **kwargs)
    return trained, time.perf_counter() - start


def model_version(name: str, model: nn.Module) -> str:
    """A version string that identifies the trained weights: `<model>-<hash of parameters>`."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return f"{name}-{digest.hexdigest()[:12]}"


@dataclass
class Checkpoint:
    """A trained model with everything needed to rebuild it and its world, and its place in the version chain:
    `version_number` 0 for a model trained from scratch, n + 1 for one fine-tuned from version n
    (`parent_version`) on the requests of `train_window_s`; `trained_until_s` is the world time its training
    data ends."""

    name: str
    version: str
    model: nn.Module
    model_config: ModelConfig
    world_config: DataConfig
    train_config: TrainConfig
    seed: int
    version_number: int = 0
    trained_until_s: float | None = None  # None: the world's train_end_s
    train_window_s: tuple[float, float] | None = None  # None: [0, train_end_s)
    parent_version: str | None = None

    def __post_init__(self) -> None:
        if self.trained_until_s is None:
            self.trained_until_s = float(self.world_config.train_end_s)
        if self.train_window_s is None:
            self.train_window_s = (0.0, float(self.trained_until_s))
        self.train_window_s = (float(self.train_window_s[0]), float(self.train_window_s[1]))


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    """Write the checkpoint atomically."""
    payload = {
        "model": ckpt.name,
        "model_version": ckpt.version,
        "version_number": ckpt.version_number,
        "trained_until_s": ckpt.trained_until_s,
        "train_window_s": list(ckpt.train_window_s),
        "parent_version": ckpt.parent_version,
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
        world_cfg = config_from_dict(payload["world_config"])
        train_cfg = TrainConfig(**payload["train_config"])
        window = payload.get("train_window_s")
        return Checkpoint(
            payload["model"],
            payload["model_version"],
            model.eval(),
            cfg,
            world_cfg,
            train_cfg,
            payload["seed"],
            version_number=int(payload.get("version_number", 0)),
            trained_until_s=payload.get("trained_until_s"),
            train_window_s=tuple(window) if window is not None else None,
            parent_version=payload.get("parent_version"),
        )
    except (KeyError, TypeError, ValueError, RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:
        raise InputError(f"{path}: checkpoint: not a valid aif-sim checkpoint ({type(exc).__name__}: {exc})".splitlines()[0]) from exc


FINE_TUNE_STREAM = 3  # request stream of fine-tuning windows (world.requests_between)
HELD_OUT_STREAM = 4  # request stream of the held-out window after a fine-tuning window


def fine_tune_requests(world: World, lo: float, hi: float, n: int) -> Requests:
    """The training requests of a fine-tuning window [lo, hi): n requests with the world's training candidate count."""
    return world.requests_between(lo, hi, n, world.cfg.train_candidates, stream=FINE_TUNE_STREAM)


def continue_training(
    parent: Checkpoint, world: World, window_s: float, n_requests: int, train: TrainConfig, seed: int, show_progress: bool = True
) -> tuple[Checkpoint, float]:
    """The next model version: `parent` fine-tuned on n_requests of the window that follows its training data,
    [trained_until_s, trained_until_s + window_s); and the training wall time."""
    lo = float(parent.trained_until_s)
    hi = lo + window_s
    if window_s <= 0:
        raise InputError(f"--window-s: {window_s:g}: expected a positive number of seconds")
    if hi > world.cfg.horizon_s:
        raise InputError(f"--window-s: the window [{lo:g}, {hi:g}) s ends after the world's horizon ({world.cfg.horizon_s:g} s)")
    requests = fine_tune_requests(world, lo, hi, n_requests)
    model, seconds = timed_train(parent.name, world, parent.model_config, train, seed, show_progress, model=parent.model, requests=requests)
    child = Checkpoint(
        parent.name,
        model_version(parent.name, model),
        model,
        parent.model_config,
        world.cfg,
        train,
        seed,
        version_number=parent.version_number + 1,
        trained_until_s=hi,
        train_window_s=(lo, hi),
        parent_version=parent.version,
    )
    return child, seconds


def held_out_requests(world: DataWorld, ckpt: Checkpoint) -> Requests:
    """The requests a version is evaluated on: the world's test requests for a version trained from scratch; for a
    fine-tuned version, test_requests requests of the window that follows its training window (as long as it)."""
    if ckpt.version_number == 0:
        return world.requests("test")
    lo, hi = ckpt.train_window_s
    c = world.cfg
    return world.requests_between(hi, hi + (hi - lo), c.test_requests, c.test_candidates, stream=HELD_OUT_STREAM)
