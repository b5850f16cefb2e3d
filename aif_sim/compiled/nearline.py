"""Nearline vector reads for the compiled engine, equal to what `core.flow` measures in the simpy engine.

The pipeline's stores and their refresh pools (`core.refresh`: changes, refresh, passes, rollouts, nearline
outages, gauges) are the core's; this module resumes them in time order, each at the simulated time the simpy
engine would (`clock + (t - clock)`): their events never depend on requests, so they happen in the same order,
with the same draws, as in the simpy engine. Reads come in time order; the background is stepped to each read's
time and the reads between two background events are answered by one numba kernel over the store's arrays,
which applies the run's changes (`core.changes.ChangeLog`) up to each read as `NearlineStore.read` does.
"""

from __future__ import annotations

import heapq

import numpy as np
from numba import njit

from aif_sim.core.changes import world_changes
from aif_sim.core.latency import Sampler
from aif_sim.core.nearline import NearlineStore
from aif_sim.core.refresh import Background, store_backgrounds
from aif_sim.core.system import nearline_stores
from aif_sim.metrics.recorder import Recorder
from aif_sim.scenario.schema import Scenario


@njit(cache=True, _nrt=False)  # allocates nothing: no reference counting of its arrays
def _read(
    first: int,
    stop: int,
    times: np.ndarray,
    entities: np.ndarray,
    vector_s: np.ndarray,
    version: np.ndarray,
    changed_s: np.ndarray,
    change_t: np.ndarray,
    change_e: np.ndarray,
    applied: int,
    sweep_start: float,
    sweep_rate: float,
    sweep_version: int,
    sweep_served: bool,
    serving: int,
    always_fresh: bool,
    made_s: np.ndarray,
    versions: np.ndarray,
    stale: np.ndarray,
    mismatched: np.ndarray,
) -> int:
    """`NearlineStore.read` of rows `first`..`stop`-1 of `entities`, each at its time (when each vector was made,
    by which version), with the stale and mismatched counts of `core.flow`: the same float operations, entity
    by entity. The changes from `applied` on, up to each read's time, go into `changed_s` first; returns the
    index of the first change not applied."""
    for i in range(first, stop):
        now = times[i]
        while applied < len(change_t) and change_t[applied] <= now:
            e = change_e[applied]
            if change_t[applied] > changed_s[e]:
                changed_s[e] = change_t[applied]
            applied += 1
        n_stale = n_mismatched = 0
        for j in range(entities.shape[1]):
            e = entities[i, j]
            if always_fresh:
                made, v = now, serving
            else:
                made, v = vector_s[e], np.int64(version[e])
                if sweep_served:
                    at = sweep_start + e / sweep_rate
                    if sweep_start + (e + 1) / sweep_rate <= now and at > made:
                        made, v = at, sweep_version
            made_s[i, j] = made
            versions[i, j] = v
            if changed_s[e] > made:
                n_stale += 1
            if v != serving:
                n_mismatched += 1
        stale[i] = n_stale
        mismatched[i] = n_mismatched
    return applied


class _Driver:
    """Core background processes resumed in time order, each at `wake + (t - wake)` as a simpy timeout schedules
    it (ties in the order they were scheduled)."""

    def __init__(self, processes: list[Background]) -> None:
        self._heap: list[tuple[float, int, Background]] = []
        self._scheduled = 0
        for process in processes:
            self._resume(0.0, process)

    def peek(self) -> float:
        return self._heap[0][0] if self._heap else np.inf

    def step(self) -> None:
        wake, _, process = heapq.heappop(self._heap)
        self._resume(wake, process)

    def _resume(self, wake: float, process: Background) -> None:
        until = next(process)
        self._scheduled += 1
        heapq.heappush(self._heap, (wake + (until.time_s - wake), self._scheduled, process))


def _world_item_changes(checkpoint: str, items: int, duration_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from aif_sim.model.shadow import world_item_changes  # torch: only for a scenario that follows the world

    return world_item_changes(checkpoint, items, duration_s)


class CompiledNearline:
    """The nearline stores of one pipeline run and their background processes, read in time order."""

    def __init__(self, scenario: Scenario, pipeline: str, samplers: dict[str, Sampler], recorder: Recorder) -> None:
        self.stores = nearline_stores(scenario, pipeline)
        self.world = world_changes(scenario, _world_item_changes)  # the world's item changes, when updates follow it
        self.pools = store_backgrounds(scenario, samplers, self.stores, recorder.gauge, self.world)
        self.background = _Driver([pool.run() for pool in self.pools.values()])
        self._clock = 0.0  # the background has run up to here: no read may come before it

    def advance(self, until: float) -> None:
        """Run the background processes up to (not including) `until`, as `env.run(until=until)` would."""
        background = self.background
        while background.peek() < until:
            background.step()
        self._clock = max(self._clock, until)

    def read(self, store_name: str, times: np.ndarray, entities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Read the store at nondecreasing `times` [n] (none before an earlier call's), each row of `entities`
        [n, k] at its time, seeing every background event before it: when each vector was made [n, k] (s), by
        which model version [n, k], and, per row, how many were stale (their entity changed after the vector
        was made) and of another version than the serving one. Raises ValueError for reads out of time order."""
        store, background = self.stores[store_name], self.background
        times = np.ascontiguousarray(times, dtype=np.float64)
        entities = np.ascontiguousarray(entities, dtype=np.int64)
        n = len(times)
        if n == 0:
            return np.empty(entities.shape), np.empty(entities.shape, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
        if times[0] < self._clock or np.any(times[1:] < times[:-1]):
            raise ValueError("nearline reads must come in time order, none before an earlier read or advance")
        self._clock = float(times[-1])
        made_s, versions = np.empty(entities.shape), np.empty(entities.shape, np.int64)
        stale, mismatched = np.empty(n, np.int64), np.empty(n, np.int64)
        i = 0
        while i < n:
            while background.peek() < times[i]:
                background.step()
            j = int(np.searchsorted(times, background.peek(), side="right"))  # the reads up to the next event
            self._read_batch(store, i, j, times, entities, made_s, versions, stale, mismatched)
            i = j
        return made_s, versions, stale, mismatched

    @staticmethod
    def _read_batch(
        store: NearlineStore,
        i: int,
        j: int,
        times: np.ndarray,
        entities: np.ndarray,
        made_s: np.ndarray,
        versions: np.ndarray,
        stale: np.ndarray,
        mismatched: np.ndarray,
    ) -> None:
        """Rows i..j-1, between two background events: one kernel call over the store's state."""
        changes, sweep = store.changes, store.sweep
        changes.cover(float(times[j - 1]))
        changes.applied = _read(
            i,
            j,
            times,
            entities,
            store.vector_s,
            store.version,
            store.changed_s,
            changes.times,
            changes.entities,
            changes.applied,
            sweep.start_s if sweep is not None else 0.0,
            sweep.rate if sweep is not None else 1.0,
            sweep.version if sweep is not None else 0,
            store.sweep_served,
            store.serving_version,
            store.always_fresh,
            made_s,
            versions,
            stale,
            mismatched,
        )
