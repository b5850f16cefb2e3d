"""Nearline vector reads for the compiled engine, equal to what `core.flow` measures in the simpy engine.

The pipeline's stores and their background processes (`sim.background`: updates, refresh, sweeps, model
publication, nearline outages, gauges) run as they are, on a simpy environment of their own: background
events never depend on requests, so they happen in the same order, with the same draws, as in the simpy
engine's shared environment. Reads come in time order; the environment is stepped to each read's time and
the reads between two background events are answered by one numba kernel over the store's arrays.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from aif_sim.core.latency import Sampler
from aif_sim.core.nearline import NearlineStore, Sweep
from aif_sim.core.system import nearline_stores
from aif_sim.metrics.recorder import Recorder
from aif_sim.scenario.schema import Scenario
from aif_sim.sim.background import background_only


@njit(cache=True, _nrt=False)  # allocates nothing: no reference counting of its arrays
def _read(
    first: int,
    stop: int,
    times: np.ndarray,
    entities: np.ndarray,
    vector_s: np.ndarray,
    version: np.ndarray,
    changed_s: np.ndarray,
    sweep_start: np.ndarray,
    sweep_rate: np.ndarray,
    sweep_version: np.ndarray,
    serving: int,
    consistent: bool,
    always_fresh: bool,
    made_s: np.ndarray,
    versions: np.ndarray,
    stale: np.ndarray,
    mismatched: np.ndarray,
) -> None:
    """`NearlineStore.read` of rows `first`..`stop`-1 of `entities`, each at its time (when each vector was made,
    by which version), with the stale and mismatched counts of `core.flow`: the same float operations, entity
    by entity."""
    for i in range(first, stop):
        now = times[i]
        n_stale = n_mismatched = 0
        for j in range(entities.shape[1]):
            e = entities[i, j]
            if always_fresh:
                made, v = now, serving
            else:
                made, v = vector_s[e], np.int64(version[e])
                for s in range(len(sweep_start)):
                    if consistent and sweep_version[s] > serving:
                        continue  # the new version's buffer is not served until its rollout is complete
                    at = sweep_start[s] + e / sweep_rate[s]
                    if at <= now and at > made:
                        made, v = at, sweep_version[s]
                if consistent and v > serving:
                    v = serving
            made_s[i, j] = made
            versions[i, j] = v
            if changed_s[e] > made:
                n_stale += 1
            if v != serving:
                n_mismatched += 1
        stale[i] = n_stale
        mismatched[i] = n_mismatched


class CompiledNearline:
    """The nearline stores of one pipeline run and their background processes, read in time order."""

    def __init__(self, scenario: Scenario, pipeline: str, samplers: dict[str, Sampler], recorder: Recorder) -> None:
        self.stores = nearline_stores(scenario, pipeline)
        self.env = background_only(scenario, samplers, self.stores, recorder)
        self._sweeps: dict[str, tuple[list[Sweep], int, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self._clock = 0.0  # the background has run up to here: no read may come before it

    def advance(self, until: float) -> None:
        """Run the background processes up to (not including) `until`, as `env.run(until=until)` would."""
        env = self.env
        while env.peek() < until:
            env.step()
        self._clock = max(self._clock, until)

    def read(self, store_name: str, times: np.ndarray, entities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Read the store at nondecreasing `times` [n] (none before an earlier call's), each row of `entities`
        [n, k] at its time, seeing every background event before it: when each vector was made [n, k] (s), by
        which model version [n, k], and, per row, how many were stale (their entity changed after the vector
        was made) and of another version than the serving one. Raises ValueError for reads out of time order."""
        store, env = self.stores[store_name], self.env
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
            while env.peek() < times[i]:
                env.step()
            j = int(np.searchsorted(times, env.peek(), side="right"))  # the reads up to the next event
            start, rate, version = self._sweep_arrays(store_name, store)
            _read(
                i,
                j,
                times,
                entities,
                store.vector_s,
                store.version,
                store.changed_s,
                start,
                rate,
                version,
                store.serving_version,
                store.consistent,
                store.always_fresh,
                made_s,
                versions,
                stale,
                mismatched,
            )
            i = j
        return made_s, versions, stale, mismatched

    def _sweep_arrays(self, name: str, store: NearlineStore) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The store's sweeps as arrays (start, rate, version), rebuilt only when its list of sweeps changed."""
        cached = self._sweeps.get(name)
        if cached is None or cached[0] is not store.sweeps or cached[1] != len(store.sweeps):
            sweeps = store.sweeps
            arrays = (
                np.array([s.start_s for s in sweeps], dtype=np.float64),
                np.array([s.rate for s in sweeps], dtype=np.float64),
                np.array([s.version for s in sweeps], dtype=np.int64),
            )
            cached = (sweeps, len(sweeps), arrays)
            self._sweeps[name] = cached
        return cached[2]
