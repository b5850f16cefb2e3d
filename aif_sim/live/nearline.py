"""Nearline vectors, live: the index filled before the run, then kept up by background tasks that run the
real model and write its vectors to their storage, while recording each refresh in the core's
`NearlineStore` exactly as the DES does (so staleness is measured by the same rules in both engines).

- updates: entities change at Poisson times (`item_updates_per_s`, or `user_events_per_s`), by popularity;
- on-update refresh: `workers` tasks each take the longest-waiting dirty entity, compute its vector (the
  real model, in the executor), store it, and finish when the refresh's drawn latency is over;
- periodic refresh and model publication: a sweep re-infers every entity in id order at the sweep rate
  (`workers` / mean refresh latency), and a task computes and stores each entity's vector as its time comes;
- a nearline outage stops refreshes, sweeps and publication until it ends;
- the index is filled before the run with the `prefill` most popular entities (ids 0..prefill-1); an entity past
  them has its vector made when it is first read (`FirstRead`), as the fill would have made it, and that model
  call's time is counted as the store's refresh work.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any

import numpy as np

from aif_sim.core.latency import Sampler
from aif_sim.core.nearline import NearlineStore, Sweep
from aif_sim.core.traffic import CHUNK, ZipfSampler
from aif_sim.live.index import VectorStore
from aif_sim.live.loop import Clock
from aif_sim.scenario.schema import Refresh

# Entities filled before the run, the most popular first (about 2 s of work for 10^6 item vectors into the array
# index; Redis takes about 10 s per 200,000 writes, and a user-interest vector costs ~0.2 ms to make).
PREFILL = {("items", "memory"): 1_000_000, ("items", "redis"): 200_000, ("users", "memory"): 50_000, ("users", "redis"): 50_000}
# Entities per model call and per storage write when an index is filled or swept: a user-interest call holds its
# users' long-term behaviours' embeddings (about 0.25 MB a user), so users go in smaller batches.
FILL_BATCH = {"items": 4096, "users": 256}
SWEEP_TICK_S = 0.01  # how often a sweep computes the entities whose time has come

Compute = Callable[[np.ndarray], np.ndarray]  # entity ids -> their vectors (records)
Spawn = Callable[[Coroutine[Any, Any, None]], Any]  # runs a coroutine as a background task of the run


class Outage:
    """Until when nearline refresh is stopped."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.until_s = 0.0

    async def wait(self) -> None:
        """Return when no outage is in progress."""
        while self.clock() < self.until_s:
            await self.clock.until(self.until_s)


async def fill(storage: VectorStore, compute: Compute, executor: Executor, count: int, batch: int, progress: Callable[[int], None]) -> None:
    """Make and store the vectors of entities 0..count-1 (the index as it stands when the run starts), `batch` a call."""
    loop = asyncio.get_running_loop()
    for start in range(0, count, batch):
        ids = np.arange(start, min(start + batch, count))
        records = await loop.run_in_executor(executor, compute, ids)
        await storage.set_many(ids, records)
        progress(len(ids))


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
    """Updates and refreshes of one store's entities (see the module docstring); `tasks` are its background tasks."""

    def __init__(
        self,
        clock: Clock,
        store: NearlineStore,
        storage: VectorStore,
        compute: Compute,
        executor: Executor,
        popularity: ZipfSampler,
        rate: float,
        refresh: Refresh | None,
        sampler: Sampler | None,
        sweep_rate: float,
        rng: np.random.Generator,
        outage: Outage,
        spawn: Spawn,
        batch: int,
    ) -> None:
        self.clock, self.store, self.storage, self.compute, self.executor, self.spawn = clock, store, storage, compute, executor, spawn
        self.popularity, self.refresh, self.sampler, self.sweep_rate, self.rng, self.outage = (
            popularity,
            refresh,
            sampler,
            sweep_rate,
            rng,
            outage,
        )
        self.on_update = refresh is not None and refresh.mode == "on_update"
        self.batch = batch  # entities per model call of a sweep
        self.work = asyncio.Event()
        if rate > 0:
            spawn(self._updates(rate))
        if refresh is not None and self.on_update:
            for _ in range(refresh.workers):
                spawn(self._worker())
        elif refresh is not None and refresh.interval_s:
            spawn(self._periodic(refresh.interval_s))

    async def _updates(self, rate: float) -> None:
        clock, store = self.clock, self.store
        at = clock()
        while True:
            gaps = self.rng.exponential(1.0 / rate, CHUNK).tolist()
            for gap, entity in zip(gaps, self.popularity.sample(self.rng, CHUNK).tolist()):
                at += gap
                await clock.until(at)
                store.change(entity, clock(), self.on_update)
                if self.on_update:
                    self.work.set()

    async def _worker(self) -> None:
        clock, store = self.clock, self.store
        assert self.sampler is not None
        loop = clock.loop
        while True:
            await self.outage.wait()
            entity = store.next_dirty()
            if entity is None:
                self.work.clear()
                await self.work.wait()
                continue
            started = clock()
            ids = np.array([entity])
            records = await loop.run_in_executor(self.executor, self.compute, ids)
            await self.storage.set_many([entity], records)
            await clock.until(started + float(self.sampler.sample(self.rng, 1, 1.0)[0]) / 1000)
            store.refreshed(entity, clock())

    async def _periodic(self, interval_s: float) -> None:
        at = self.clock()
        while True:
            at += interval_s
            await self.clock.until(at)
            await self.outage.wait()
            self.spawn(self.sweep(self.store.start_sweep(self.clock(), self.sweep_rate)))

    async def sweep(self, sweep: Sweep) -> None:
        """Compute and store every entity's vector at its time in the sweep."""
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


async def publisher(clock: Clock, refresh: LiveRefresh, interval_s: float) -> None:
    """A new model version every `interval_s`: its rollout sweep, then the switch (consistent policy)."""
    at = clock()
    while True:
        at += interval_s
        await clock.until(at)
        await refresh.outage.wait()
        refresh.spawn(_rollout(clock, refresh, refresh.store.publish(clock(), refresh.sweep_rate)))


async def _rollout(clock: Clock, refresh: LiveRefresh, sweep: Sweep) -> None:
    await refresh.sweep(sweep)
    await clock.until(sweep.end_s)
    refresh.store.advance(clock())
