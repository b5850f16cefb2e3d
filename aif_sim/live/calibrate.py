"""A profile of this host measured through the live engine's own calls, for the DES to be validated against it.

Each model stage's visit is timed as the live engine makes it, alone: the operator (`LiveModel.run`) awaited
through the same executor from an event loop of the same kind, with payloads shaped as the live engine
builds them, and paced as a server of the stage sees its calls at a load of `qps` requests per second.

The pacing matters: on the development host (2 vCPUs) the real-time operator took 0.44 ms called back to
back and 0.93 ms after 10 ms of idle CPU (the sequential model 4.2 and 4.9 ms). A single server under
Poisson arrivals finds itself idle with probability 1 - rho (rho = qps x its mean service time) and has then
been idle for an exponential time of mean 1 / qps (the idle period of an M/G/1 queue); otherwise the call
follows the previous one at once. Each timed call is preceded by such a draw (rho from back-to-back calls). The result has the layout `calibrate` writes (`{"hardware", "torch", "threads", "ops": {OP:
[{"candidates" | "batch": n, "median_ms", "p99_ms"}, ...]}}`), so the DES's `profile` distribution reads it.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from typing import Any

import numpy as np
import torch

from aif_sim.core.traffic import candidate_range
from aif_sim.live.loop import new_loop
from aif_sim.live.model import MODEL_OPS, LiveModel
from aif_sim.model.profile import hardware_name
from aif_sim.scenario.schema import Scenario

REPETITIONS = 100  # timed calls per grid point, after WARM_CALLS untimed ones and WARM_BUSY back-to-back ones
WARM_CALLS = 5
WARM_BUSY = 20
MAX_RHO = 0.95


def model_stages(scenario: Scenario) -> dict[str, str]:
    """The scenario's stages that run a model live, and their operators."""
    return {stage: MODEL_OPS[stage] for stage in scenario.stage_names if stage in MODEL_OPS}


def grid(scenario: Scenario, stage: str) -> tuple[str, list[int]]:
    """The profile's key and grid for a stage: batch sizes up to its batch limit (user side), or the scenario's
    fewest and most candidates."""
    if MODEL_OPS[stage] == "user_side":
        batch = scenario.stages[stage].batch
        top = batch.max_size if batch is not None else 1
        return "batch", sorted({1, *[2**k for k in range(1, 12) if 2**k < top], top})
    return "candidates", sorted(set(candidate_range(scenario.traffic.candidates)))


def _payloads(model: LiveModel, op: str, n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Payloads as the live engine has them when the stage runs: `n` users (user side) or one request of `n` candidates."""
    rows = model.features.rows
    if op == "user_side":
        users = rng.integers(0, 10**6, n).tolist()
        return [{"user": u, "behaviour": model.features.long_behaviour(u)} for u in users]
    user = int(rng.integers(0, 10**6))
    candidates = rng.integers(0, rows, n)
    payload: dict[str, Any] = {"user": user, "behaviour": model.features.long_behaviour(user), "candidates": candidates}
    if op == "realtime":
        payload["items"] = model.item_side(candidates)
        payload["user_vector"] = model.user_side([user], [payload["behaviour"]])[0:1].reshape(())
    if op == "light_prerank":
        payload["interest"] = model.user_interest([user])[0]
    return [payload]


async def _calls(model: LiveModel, executor: Executor, op: str, payloads: list[dict[str, Any]], pauses: np.ndarray) -> np.ndarray:
    """Wall time (s) of calls each made after its pause."""
    loop = asyncio.get_running_loop()
    samples = np.empty(len(pauses))
    for i, pause in enumerate(pauses):
        if pause > 0:
            await asyncio.sleep(pause)
        started = loop.time()
        await loop.run_in_executor(executor, model.run, op, payloads)
        samples[i] = loop.time() - started
    return samples


async def _time(
    model: LiveModel, executor: Executor, op: str, payloads: list[dict[str, Any]], qps: float, rng: np.random.Generator
) -> dict[str, float]:
    back_to_back = await _calls(model, executor, op, payloads, np.zeros(WARM_CALLS + WARM_BUSY))
    rho = min(MAX_RHO, qps * float(np.mean(back_to_back[WARM_CALLS:])))
    idle = rng.random(REPETITIONS) >= rho
    samples = await _calls(model, executor, op, payloads, np.where(idle, rng.exponential(1.0 / qps, REPETITIONS), 0.0))
    return {"median_ms": float(np.median(samples) * 1000), "p99_ms": float(np.percentile(samples, 99) * 1000)}


def calibrate_live(scenario: Scenario, model: LiveModel, executor: Executor, qps: float, seed: int = 0) -> dict[str, Any]:
    """The profile of the scenario's model stages on this host, calls paced as at `qps` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    ops: dict[str, list[dict[str, float]]] = {}
    loop = new_loop()
    started = time.perf_counter()
    try:
        for stage, op in model_stages(scenario).items():
            key, values = grid(scenario, stage)
            ops[op] = [
                {key: n, **loop.run_until_complete(_time(model, executor, op, _payloads(model, op, n, rng), qps, rng))} for n in values
            ]
    finally:
        loop.close()
    return {
        "hardware": hardware_name(torch.device("cpu")),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "measured_by": "the live engine's own operator calls through its executor (validate)",
        "paced_at_qps": qps,
        "seconds": time.perf_counter() - started,
        "ops": ops,
    }
