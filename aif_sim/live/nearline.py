"""Nearline vectors, live: the index filled before the run, then kept up by the stores' refresh pools
(`core.refresh`, the same background as the DES's: changes, on-update refresh, periodic passes, rollouts,
nearline outages, gauges), driven on the loop's clock, with the real model making the vectors they refresh:
- a per-entity refresh computes the entity's vector (the real model, in the executor) and stores it as soon as
  it starts (the pool records it in the core's `NearlineStore` when its drawn latency is over);
- a sweep (a periodic pass or a model rollout) computes and stores every entity's vector as its time in the
  sweep comes, in batches.
Staleness is measured by the core's rules, as in the DES.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any

import numpy as np

from aif_sim.core.nearline import Sweep
from aif_sim.core.refresh import Background
from aif_sim.live.loop import Clock
from aif_sim.live.storage import VectorStorage

FILL_BATCH = 4096  # entities per model call and per storage write when the index is filled or swept
SWEEP_TICK_S = 0.01  # how often a sweep computes the entities whose time has come

Compute = Callable[[np.ndarray], np.ndarray]  # entity ids -> their vectors (records)
Spawn = Callable[[Coroutine[Any, Any, None]], Any]  # runs a coroutine as a background task of the run


async def fill(storage: VectorStorage, compute: Compute, executor: Executor, count: int, progress: Callable[[int], None]) -> None:
    """Make and store the vectors of entities 0..count-1 (the index as it stands when the run starts)."""
    loop = asyncio.get_running_loop()
    for start in range(0, count, FILL_BATCH):
        ids = np.arange(start, min(start + FILL_BATCH, count))
        records = await loop.run_in_executor(executor, compute, ids)
        await storage.set_many(ids.tolist(), records)
        progress(len(ids))


async def drive(clock: Clock, background: Background) -> None:
    """Resume a core background process at each time it asks for, on the loop's clock."""
    for until in background:
        await clock.until(until.time_s)


class LiveRefresh:
    """Carries out one store's refreshes with the real model (a `core.refresh.Listener`)."""

    def __init__(self, clock: Clock, storage: VectorStorage, compute: Compute, executor: Executor, spawn: Spawn) -> None:
        self.clock, self.storage, self.compute, self.executor, self.spawn = clock, storage, compute, executor, spawn

    def refreshing(self, entity: int) -> None:
        self.spawn(self._refresh(entity))

    def sweeping(self, sweep: Sweep) -> None:
        self.spawn(self._sweep(sweep))

    async def _refresh(self, entity: int) -> None:
        records = await self.clock.loop.run_in_executor(self.executor, self.compute, np.array([entity]))
        await self.storage.set_many([entity], records)

    async def _sweep(self, sweep: Sweep) -> None:
        """Compute and store every entity's vector as its time in the sweep comes."""
        clock, loop = self.clock, self.clock.loop
        done = 0
        while done < sweep.count:
            due = min(sweep.count, int((clock() - sweep.start_s) * sweep.rate) + 1)
            if due <= done:
                await asyncio.sleep(SWEEP_TICK_S)
                continue
            ids = np.arange(done, min(due, done + FILL_BATCH))
            records = await loop.run_in_executor(self.executor, self.compute, ids)
            await self.storage.set_many(ids.tolist(), records)
            done = int(ids[-1]) + 1
