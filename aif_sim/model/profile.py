"""Calibration: wall time of each model operator over a grid of batch sizes and candidate counts.

Every point is timed after a warm-up, under `torch.inference_mode`, with torch's intra-op threads fixed
(one by default: a profile describes one server of a pool). The grid is swept in several rounds, so that
a burst of load from other processes spoils one round of a point, not all of it; each point reports the
median over rounds of its median and of its p99.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from rich.progress import Progress
from torch import Tensor

from aif_sim.core.hardware import cpu_name
from aif_sim.errors import InputError
from aif_sim.model.aif_model import AIFModel
from aif_sim.model.baselines import LightPrerankModel, SequentialModel
from aif_sim.model.config import ModelConfig
from aif_sim.model.factory import model_config
from aif_sim.model.inputs import ItemInputs, UserInputs
from aif_sim.model.lsh import LSHSim
from aif_sim.model.threads import set_threads
from aif_sim.model.world import PROFILE_SIZES, WorldConfig

BATCHES = (1, 8, 32, 128, 512)
CANDIDATES = (100, 300, 1000, 3000, 10000)


@dataclass(frozen=True)
class Effort:
    """How long to time each point per round: a time budget, bounded by repetition counts; and the rounds."""

    budget_s: float
    min_reps: int
    max_reps: int
    rounds: int = 1


FULL = Effort(budget_s=2.0, min_reps=40, max_reps=500, rounds=3)
QUICK = Effort(budget_s=0.5, min_reps=5, max_reps=100)


def resolve_device(name: str) -> torch.device:
    """The torch device to calibrate on; a clear InputError when it is not available."""
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device: cuda: CUDA is not available here (torch {torch.__version__}); use --device cpu")
        return torch.device("cuda")
    raise InputError(f"--device: {name}: expected cpu or cuda")


def hardware_name(device: torch.device) -> str:
    """A readable description of the CPU or GPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def random_items(cfg: ModelConfig, shape: tuple[int, ...], gen: torch.Generator) -> ItemInputs:
    """Items with random features (timing does not depend on their values)."""

    def ids(n: int) -> torch.Tensor:
        return torch.randint(0, n, shape, generator=gen)

    mm = torch.nn.functional.normalize(torch.randn(*shape, cfg.mm_dim, generator=gen), dim=-1)
    return ItemInputs(ids(cfg.n_categories), ids(cfg.n_brands), ids(cfg.n_price_buckets), ids(cfg.n_pop_buckets), mm)


def random_users(cfg: ModelConfig, world: WorldConfig, batch: int, gen: torch.Generator) -> UserInputs:
    """Users with random profiles and behaviours of the world's sequence lengths."""
    profile = torch.stack([torch.randint(0, n, (batch,), generator=gen) for n in PROFILE_SIZES], dim=1)
    long_mm = torch.nn.functional.normalize(torch.randn(batch, world.long_len, cfg.mm_dim, generator=gen), dim=-1)
    return UserInputs(profile, random_items(cfg, (batch, world.short_len), gen), long_mm)


def time_call(fn: Callable[[], object], effort: Effort, sync: Callable[[], None]) -> dict[str, float]:
    """Median and p99 wall time (ms) of fn after a warm-up."""
    start = time.perf_counter()
    warm = 0
    while warm < 3 or (time.perf_counter() - start < 0.2 and warm < 50):
        fn()
        sync()
        warm += 1
    estimate = (time.perf_counter() - start) / warm
    reps = int(np.clip(effort.budget_s / max(estimate, 1e-9), effort.min_reps, effort.max_reps))
    samples = np.empty(reps)
    for i in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        samples[i] = time.perf_counter() - t0
    return {"median_ms": float(np.median(samples) * 1e3), "p99_ms": float(np.percentile(samples, 99) * 1e3)}


def operators(
    world: WorldConfig, device: torch.device, batches: tuple[int, ...] = BATCHES, candidates: tuple[int, ...] = CANDIDATES, seed: int = 0
) -> dict[str, tuple[str, tuple[int, ...], Callable[[int], OperatorCall]]]:
    """For each operator: its grid key, its grid, and a factory of the call to time at a grid value."""
    cfg = model_config(world)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode(False):  # parameters as a loaded model has them (inference tensors cannot cache folded weights)
        aif = AIFModel(cfg).eval().to(device)
        sequential = SequentialModel(cfg).eval().to(device)
        light = LightPrerankModel(cfg).eval().to(device)
        dense = LSHSim(cfg.mm_dim, "dense", cfg.lsh_planes, cfg.lsh_radii, cfg.lsh_seed).to(device)
    with torch.inference_mode():
        user = random_users(cfg, world, 1, gen).to(device)
        user_state = aif.user_side(user)  # stored while retrieval runs
        interest = light.user_tower(user)[0]  # the light pre-ranker's user-interest vector, made on behaviour events
        pool = random_items(cfg, (max(candidates),), gen).to(device)
        pool_state = aif.item_side(pool)  # the nearline item store
        dense_user = dense.encode(user.long_mm)
        dense_pool = dense.encode(pool.mm)[None]

    def first(n: int) -> Tensor:
        return torch.arange(n, device=device)[None]

    return {
        "user_side": ("batch", batches, lambda b: _bind(aif.user_side, random_users(cfg, world, b, gen).to(device))),
        "item_side": ("batch", batches, lambda b: _bind(aif.item_side, random_items(cfg, (b,), gen).to(device))),
        "realtime": ("candidates", candidates, lambda n: _bind(aif.realtime, user_state, pool_state.take(first(n)))),
        "aif_online": ("candidates", candidates, lambda n: _bind(aif, user, pool.take(first(n)))),
        "sequential_prerank": ("candidates", candidates, lambda n: _bind(sequential, user, pool.take(first(n)))),
        "light_prerank": ("candidates", candidates, lambda n: _bind(light.online, interest, pool.take(first(n)))),
        "lsh_popcount": ("candidates", candidates, lambda n: _bind(aif.lsh.features, pool_state.code[first(n)], user_state.long_codes)),
        "dense_similarity": ("candidates", candidates, lambda n: _bind(dense.features, dense_pool[:, :n], dense_user)),
    }


@dataclass(frozen=True)
class OperatorCall:
    """One operator call as calibrate times it: `fn(*args)` under torch.inference_mode, returning its output."""

    fn: Callable[..., Tensor]
    args: tuple

    def __call__(self) -> Tensor:
        with torch.inference_mode():
            return self.fn(*self.args)


def _bind(fn: Callable[..., Tensor], *args: object) -> OperatorCall:
    return OperatorCall(fn, args)


def calibrate(
    world: WorldConfig,
    device_name: str,
    quick: bool,
    threads: int = 1,
    batches: tuple[int, ...] = BATCHES,
    candidates: tuple[int, ...] = CANDIDATES,
) -> dict:
    """The profile: {"hardware", "torch", "threads", "device", "ops": {OP: [{key: n, "median_ms", "p99_ms"}, ...]}}."""
    device = resolve_device(device_name)
    if threads < 1:
        raise InputError(f"--threads: {threads}: expected a positive integer")
    set_threads(threads)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    effort = QUICK if quick else FULL
    with torch.inference_mode():
        table = operators(world, device, batches, candidates)
        calls = {(op, value): make(value) for op, (_, grid, make) in table.items() for value in grid}
        rounds: dict[tuple[str, int], list[dict[str, float]]] = {point: [] for point in calls}
        with Progress(transient=True) as progress:
            task = progress.add_task("calibrating", total=effort.rounds * len(calls))
            for r in range(effort.rounds):
                for (op, value), call in calls.items():
                    progress.update(task, description=f"round {r + 1}/{effort.rounds}: {op} {value}")
                    rounds[(op, value)].append(time_call(call, effort, sync))
                    progress.advance(task)
    ops = {
        op: [
            {key: value, **{stat: float(np.median([t[stat] for t in rounds[(op, value)]])) for stat in ("median_ms", "p99_ms")}}
            for value in grid
        ]
        for op, (key, grid, _) in table.items()
    }
    return {"hardware": hardware_name(device), "torch": torch.__version__, "threads": threads, "device": device.type, "ops": ops}
