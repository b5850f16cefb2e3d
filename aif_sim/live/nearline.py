"""Nearline vectors, live: the index filled before the run, then kept up by the stores' refresh pools
(`core.refresh`, the same background as the DES's: changes, on-update refresh, periodic passes, rollouts,
nearline outages, gauges), driven on the loop's clock, with the real model making the vectors they refresh:
- a per-entity refresh computes the entity's vector (the real model, in the executor) and stores it as soon as
  it starts (the pool records it in the core's `NearlineStore` when its drawn latency is over);
- a sweep (a periodic pass or a model rollout) computes and stores every entity's vector as its time in the
  sweep comes, in batches;
- the index is filled before the run with the `PREFILL` most popular entities (ids 0..prefill-1); an entity past
  them has its vector made when it is first read (`FirstRead`), as the fill would have made it, and that model
  call's time is counted as the store's refresh work.
Staleness is measured by the core's rules, as in the DES.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any

import numpy as np

from aif_sim.core.nearline import Sweep
from aif_sim.core.refresh import Background
from aif_sim.live.index import VectorStore
from aif_sim.live.loop import Clock

# Entities filled before the run, the most popular first (about 2 s of work for 10^6 item vectors into the array
# index; Redis takes about 10 s per 200,000 writes, and a user-interest vector costs ~0.2 ms to make).
PREFILL = {("items", "memory"): 1_000_000, ("items", "redis"): 200_000, ("users", "memory"): 50_000, ("users", "redis"): 50_000}
# Entities per model call and per storage write when an index is filled or swept: a user-interest call holds its
# users' long-term behaviours' embeddings (about 0.25 MB a user), so users go in smaller batches.
FILL_BATCH = {"items": 4096, "users": 256}
SWEEP_TICK_S = 0.01  # how often a sweep computes the entities whose time has come

Compute = Callable[[np.ndarray], np.ndarray]  # entity ids -> their vectors (records)
Spawn = Callable[[Coroutine[Any, Any, None]], Any]  # runs a coroutine as a background task of the run


async def fill(storage: VectorStore, compute: Compute, executor: Executor, count: int, batch: int, progress: Callable[[int], None]) -> None:
    """Make and store the vectors of entities 0..count-1 (the index as it stands when the run starts), `batch` a call."""
    loop = asyncio.get_running_loop()
    for start in range(0, count, batch):
        ids = np.arange(start, min(start + batch, count))
        records = await loop.run_in_executor(executor, compute, ids)
        await storage.set_many(ids, records)
        progress(len(ids))


async def drive(clock: Clock, background: Background) -> None:
    """Resume a core background process at each time it asks for, on the loop's clock."""
    for until in background:
        await clock.until(until.time_s)


class FirstRead:
    """Reads of a store's vectors that make, store and return the vector of an entity not stored yet (one model
    call for a read's missing entities), calling `work(seconds, now)` with that call's time: refresh work."""

    def __init__(
        self, storage: VectorStore, compute: Compute, executor: Executor, clock: Clock, work: Callable[[float, float], None]
    ) -> None:
        self.storage, self.compute, self.executor, self.clock, self.work = storage, compute, executor, clock, work

    async def get_many(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Records of `keys`, every one found (the missing ones made now)."""
        keys = np.asarray(keys)
        records, found = await self.storage.get_many(keys)
        if not found.all():
            missing = np.unique(keys[~found])
            made = await self._make(missing)
            records[~found] = made[np.searchsorted(missing, keys[~found])]
        return records, np.ones(len(keys), bool)

    async def get(self, key: int) -> np.ndarray:
        """The record of `key` (made now if it is not stored)."""
        record = await self.storage.get(key)
        return record if record is not None else (await self._make(np.array([key])))[0]

    async def _make(self, ids: np.ndarray) -> np.ndarray:
        def timed() -> tuple[np.ndarray, float]:
            started = time.perf_counter()
            records = self.compute(ids)
            return records, time.perf_counter() - started

        records, seconds = await self.clock.loop.run_in_executor(self.executor, timed)
        await self.storage.set_many(ids, records)
        self.work(seconds, self.clock())
        return records


class LiveRefresh:
    """Carries out one store's refreshes with the real model (a `core.refresh.Listener`); a sweep computes `batch`
    entities a model call."""

    def __init__(self, clock: Clock, storage: VectorStore, compute: Compute, executor: Executor, spawn: Spawn, batch: int) -> None:
        self.clock, self.storage, self.compute, self.executor, self.spawn = clock, storage, compute, executor, spawn
        self.batch = batch

    def refreshing(self, entity: int) -> None:
        self.spawn(self._refresh(entity))

    def sweeping(self, sweep: Sweep) -> None:
        self.spawn(self._sweep(sweep))

    async def _refresh(self, entity: int) -> None:
        ids = np.array([entity])
        records = await self.clock.loop.run_in_executor(self.executor, self.compute, ids)
        await self.storage.set_many(ids, records)

    async def _sweep(self, sweep: Sweep) -> None:
        """Compute and store every entity's vector as its time in the sweep comes."""
        clock, loop = self.clock, self.clock.loop
        done = 0
        while done < sweep.count:
            due = min(sweep.count, int((clock() - sweep.start_s) * sweep.rate) + 1)
            if due <= done:
                await asyncio.sleep(SWEEP_TICK_S)
                continue
            ids = np.arange(done, min(due, done + self.batch))
            records = await loop.run_in_executor(self.executor, self.compute, ids)
            await self.storage.set_many(ids, records)
            done = int(ids[-1]) + 1
