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

A stage that fetches item vectors live (`item_fetch` of aif) ends when both its drawn time and the fetch of its
candidates' vectors are over: with thousands of candidates the fetch outlasts the draw (about 1.2 us per candidate
on the development host, in memory). `calibrate_fetch` times that fetch through the live engine's storage (the
scenario's backend, the candidates drawn as the live engine draws them, paced as above), and gives the DES the
cost per candidate that adds what the fetch adds: the least-squares slope, through the origin, of each visit's
extra time max(0, fetch − draw) on its candidate count, plus the stage's own `per_candidate_us` (which the draw
includes). Through the origin because the DES adds nothing but that slope times the candidates: it is the slope
that makes the DES's added time right on average at the counts measured (and the only one where the count is
constant). Recorded as the profile's `per_candidate_us` ({stage: us}).

The profile also records what the host adds beside service times (`live.host`): how late the loop wakes from an
await, idle and with the model stages' operators running as at the load, and the executor's hand-off (`host`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

import numpy as np
import torch

from aif_sim.core.latency import Sampler
from aif_sim.core.traffic import ZipfSampler, candidate_range
from aif_sim.live.host import host_effects
from aif_sim.live.index import VectorStore, open_index
from aif_sim.live.loop import live_loop
from aif_sim.live.model import MODEL_OPS, LiveModel
from aif_sim.model.profile import hardware_name
from aif_sim.scenario.schema import Scenario

REPETITIONS = 100  # timed calls per grid point, after WARM_CALLS untimed ones and WARM_BUSY back-to-back ones
WARM_CALLS = 5
WARM_BUSY = 20
MAX_RHO = 0.95
FETCH_POINTS = 3  # candidate counts timed for a fetch, evenly from the scenario's fewest to its most


def model_stages(scenario: Scenario) -> dict[str, str]:
    """The scenario's stages that run a model live, and their operators."""
    return {stage: MODEL_OPS[stage] for stage in scenario.stage_names if stage in MODEL_OPS}


def fetch_stages(scenario: Scenario) -> list[str]:
    """The scenario's stages that fetch their candidates' item vectors live."""
    calls = [call for pipeline in scenario.pipeline_defs for call in pipeline.calls if call.vectors]
    return sorted({call.stage for call in calls if scenario.store_entities(call.vectors) == "items"})


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


async def _calls(call: Callable[[int], Awaitable[Any]], pauses: np.ndarray) -> np.ndarray:
    """Wall time (s) of calls `call(i)`, each made after its pause."""
    loop = asyncio.get_running_loop()
    samples = np.empty(len(pauses))
    for i, pause in enumerate(pauses):
        if pause > 0:
            await asyncio.sleep(pause)
        started = loop.time()
        await call(i)
        samples[i] = loop.time() - started
    return samples


async def _paced(call: Callable[[int], Awaitable[Any]], qps: float, rng: np.random.Generator) -> np.ndarray:
    """REPETITIONS timed calls paced as a server sees them at `qps` (see the module docstring)."""
    back_to_back = await _calls(call, np.zeros(WARM_CALLS + WARM_BUSY))
    rho = min(MAX_RHO, qps * float(np.mean(back_to_back[WARM_CALLS:])))
    idle = rng.random(REPETITIONS) >= rho
    return await _calls(call, np.where(idle, rng.exponential(1.0 / qps, REPETITIONS), 0.0))


async def _time(
    model: LiveModel, executor: Executor, op: str, payloads: list[dict[str, Any]], qps: float, rng: np.random.Generator
) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    samples = await _paced(lambda _: loop.run_in_executor(executor, model.run, op, payloads), qps, rng)
    return {"median_ms": float(np.median(samples) * 1000), "p99_ms": float(np.percentile(samples, 99) * 1000)}


async def _fetch_extra(
    storage: VectorStore, keys: list[np.ndarray], drawn_s: np.ndarray, qps: float, rng: np.random.Generator
) -> np.ndarray:
    """Each visit's time beyond its draw (s): its fetch of `keys[i]` as the live engine makes it (paced) less
    `drawn_s[i]`, if longer."""
    fetch_s = await _paced(lambda i: storage.get_many(keys[i % len(keys)]), qps, rng)
    return np.maximum(0.0, fetch_s - drawn_s)


async def _per_candidate_us(
    scenario: Scenario, stage: str, sampler: Sampler, dtype: np.dtype, qps: float, rng: np.random.Generator
) -> float:
    """The stage's per-candidate cost for the DES: its own plus the slope of the fetch's extra time (module docstring)."""
    low, high = candidate_range(scenario.traffic.candidates)
    own_us = scenario.stages[stage].per_candidate_us
    items = ZipfSampler(scenario.traffic.items)
    keys = {
        int(n): [items.sample(rng, int(n)) for _ in range(REPETITIONS)] for n in np.unique(np.linspace(low, high, FETCH_POINTS).round())
    }
    caches = scenario.caches
    backend, url = (caches.backend, caches.redis_url) if caches is not None else ("memory", None)
    storage = open_index(backend, url, f"aif-sim.calibrate.{os.getpid()}.{stage}", dtype, scenario.traffic.items.count)
    try:
        stored = np.unique(np.concatenate([key_set for sets in keys.values() for key_set in sets])).tolist()
        await storage.set_many(stored, np.zeros((len(stored), *dtype.shape), dtype.base))
        counts, extra = [], []
        for n, key_sets in keys.items():
            work = 1.0 if sampler.work_key == "batch" else float(n)  # as the DES draws a visit (`core.system`)
            drawn_s = (sampler.sample(rng, REPETITIONS, work) + n * own_us / 1000) / 1000
            extra.append(await _fetch_extra(storage, key_sets, drawn_s, qps, rng))
            counts.append(np.full(REPETITIONS, n))
        await storage.clear()
    finally:
        await storage.close()
    n_all, extra_all = np.concatenate(counts), np.concatenate(extra)
    return own_us + float(np.dot(n_all, extra_all) / np.dot(n_all, n_all)) * 1e6


def calibrate_fetch(scenario: Scenario, samplers: dict[str, Sampler], model: LiveModel, qps: float, seed: int = 0) -> dict[str, float]:
    """Per stage that fetches item vectors live, the `per_candidate_us` the DES gives it (see the module docstring)."""
    rng = np.random.default_rng(seed)
    with live_loop() as loop:
        return {
            stage: loop.run_until_complete(_per_candidate_us(scenario, stage, samplers[stage], model.item_dtype, qps, rng))
            for stage in fetch_stages(scenario)
        }


def calibrate_live(
    scenario: Scenario, samplers: dict[str, Sampler], model: LiveModel, executor: Executor, qps: float, seed: int = 0
) -> dict[str, Any]:
    """The profile of the scenario's model stages on this host, and the per-candidate cost of its item-vector fetches,
    calls paced as at `qps` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    ops: dict[str, list[dict[str, float]]] = {}
    started = time.perf_counter()
    with live_loop() as loop:
        for stage, op in model_stages(scenario).items():
            key, values = grid(scenario, stage)
            ops[op] = [
                {key: n, **loop.run_until_complete(_time(model, executor, op, _payloads(model, op, n, rng), qps, rng))} for n in values
            ]
        largest = [(op, _payloads(model, op, grid(scenario, stage)[1][-1], rng)) for stage, op in model_stages(scenario).items()]
        host = loop.run_until_complete(host_effects(model, executor, largest, qps, rng))
    return {
        "hardware": hardware_name(torch.device("cpu")),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "measured_by": "the live engine's own operator calls through its executor (validate)",
        "paced_at_qps": qps,
        "seconds": time.perf_counter() - started,
        "ops": ops,
        "per_candidate_us": calibrate_fetch(scenario, samplers, model, qps, seed),
        "host": host,
    }
