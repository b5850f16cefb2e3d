"""What this host adds to the live engine's timing, beside any service time: two effects the DES does not model.

- Await lateness: an awaited stage ends when the loop wakes after its drawn time (`Clock.until`, which wakes the loop
  its idle lateness early). Measured as the engine awaits: sleeps of 0.2 to 3 ms on the engine's loop and clock,
  idle, and while the scenario's model operators run in the executor as at the load (calls paced with exponential
  gaps of mean 1 / qps, in turn), whose threads compete for the GIL and the cores.
- Executor hand-off: a model stage's call goes to a thread of the executor and its result comes back to the loop.
  Measured as the round trip of a call that does nothing, through the same executor, on an idle loop.
Each as mean, p50 and p99 in ms (`calibrate_live` records them in the profile as `host`).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any

import numpy as np

from aif_sim.live.loop import Clock, measure_wake
from aif_sim.live.model import LiveModel

PROBES = 300
SLEEP_MS = (0.2, 3.0)


def _summary(late_s: np.ndarray) -> dict[str, float]:
    ms = late_s * 1000
    return {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


async def _lateness(clock: Clock, rng: np.random.Generator) -> np.ndarray:
    """How late (s) PROBES awaits of the live engine's clock wake, each of a delay drawn in SLEEP_MS."""
    late = np.empty(PROBES)
    for i, delay in enumerate(rng.uniform(*SLEEP_MS, PROBES) / 1000):
        target = clock() + delay
        await clock.until(target)
        late[i] = clock() - target
    return late


async def _handoff(executor: Executor) -> np.ndarray:
    """Round trips (s) of PROBES calls that do nothing through the executor."""
    loop = asyncio.get_running_loop()
    trips = np.empty(PROBES)
    for i in range(PROBES):
        started = loop.time()
        await loop.run_in_executor(executor, int)
        trips[i] = loop.time() - started
        await asyncio.sleep(0.0005)
    return trips


async def _model_load(
    model: LiveModel, executor: Executor, calls: list[tuple[str, list[dict[str, Any]]]], qps: float, rng: np.random.Generator
) -> None:
    """The model operators `calls` in turn through the executor, with exponential gaps of mean 1 / qps, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        for op, payloads in calls:
            await asyncio.sleep(float(rng.exponential(1.0 / qps)))
            await loop.run_in_executor(executor, model.run, op, payloads)


async def host_effects(
    model: LiveModel, executor: Executor, calls: list[tuple[str, list[dict[str, Any]]]], qps: float, rng: np.random.Generator
) -> dict[str, Any]:
    """Await lateness (idle, and with the model operators `calls` running as at `qps`) and executor hand-off (module
    docstring)."""
    loop = asyncio.get_running_loop()
    clock = Clock(loop, await measure_wake())
    idle = await _lateness(clock, rng)
    handoff = await _handoff(executor)
    load = loop.create_task(_model_load(model, executor, calls, qps, rng))
    try:
        busy = await _lateness(clock, rng)
    finally:
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)
    return {
        "await_lateness_ms": {"idle": _summary(idle), "model_running": _summary(busy)},
        "executor_handoff_ms": _summary(handoff),
        "paced_at_qps": qps,
    }
