"""The nearline vector store: for every entity (item, or user for a UIC-style embedding), when its
current vector was made, by which model version, and when its features last changed.

Vectors are refreshed two ways, both recorded here and driven by an engine's background processes:
- one entity at a time (`refreshed`), as refresh workers serve the set of dirty entities (`on_update`);
- by a sweep over the whole catalogue (`start_sweep`): a periodic refresh or the rollout of a new model
  version re-infers entity i at `start + i / rate` (entities in id order, `rate` per second). A sweep
  is kept as three numbers, not an event per entity, so a catalogue of 10^7 costs nothing per sweep.

Model versions: `publish` makes version v+1 and starts its rollout sweep. With `version_policy:
consistent` real-time scoring stays on the previous version, reading the previous version's vectors
(a second buffer) until the rollout is complete, so no scored vector mismatches the serving version.
With `latest` scoring switches at once and reads whichever vector an entity has: entities the rollout
has not reached yet carry the old version (model version drift).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aif_sim.core.latency import Sampler
from aif_sim.scenario.schema import Refresh

MEAN_DRAWS = 100_000  # draws that estimate a refresh latency's mean (the rate of a full sweep)


def sweep_rate(refresh: Refresh | None, sampler: Sampler | None) -> float:
    """Entities a full sweep re-infers per second: all workers, at the refresh latency's mean (infinite without refresh)."""
    if refresh is None or sampler is None:
        return float("inf")
    mean_s = float(np.mean(sampler.sample(np.random.default_rng(0), MEAN_DRAWS, 1.0))) / 1000
    return refresh.workers / max(mean_s, 1e-12)


@dataclass(frozen=True)
class Sweep:
    """Entity i re-inferred at `start_s + i / rate` by `version`, over `count` entities."""

    start_s: float
    rate: float
    version: int
    count: int

    @property
    def end_s(self) -> float:
        return self.start_s + self.count / self.rate


class NearlineStore:
    """Vector times and versions of `count` entities (all made at time 0 by version 0 at the start)."""

    def __init__(self, count: int, always_fresh: bool = False) -> None:
        self.count = count
        self.always_fresh = always_fresh  # refresh interval 0: every vector is made when it is read
        self.vector_s = np.zeros(count)
        self.version = np.zeros(count, dtype=np.int32)
        self.changed_s = np.full(count, -np.inf)
        self.dirty: dict[int, None] = {}  # entities waiting for a refresh, in order (a set that keeps order)
        self.sweeps: list[Sweep] = []  # the latest finished sweep and those in progress
        self.latest_version = 0
        self.serving_version = 0
        self.consistent = True
        self.rollout_end_s = 0.0
        self.refreshes = 0  # entities re-inferred one at a time (`refreshed`)
        self.swept = 0  # entities re-inferred by finished sweeps (folded in by `_settle`)

    # --- changes and refreshes ------------------------------------------------------------------------
    def change(self, entity: int, now_s: float, mark_dirty: bool) -> None:
        """The entity's features changed; it waits for a refresh when refreshes follow updates."""
        self.changed_s[entity] = now_s
        if mark_dirty:
            self.dirty[entity] = None

    def next_dirty(self) -> int | None:
        """The entity that has waited longest for a refresh (taken out of the set), or None."""
        if not self.dirty:
            return None
        entity = next(iter(self.dirty))
        del self.dirty[entity]
        return entity

    def refreshed(self, entity: int, now_s: float) -> None:
        """A refresh worker re-inferred one entity with the version refreshes use now."""
        self.vector_s[entity] = now_s
        self.version[entity] = self.refresh_version
        self.refreshes += 1

    @property
    def refresh_version(self) -> int:
        return self.latest_version

    def start_sweep(self, now_s: float, rate: float, version: int | None = None) -> Sweep:
        """Re-infer every entity at `rate` per second, from now on."""
        sweep = Sweep(now_s, rate, self.latest_version if version is None else version, self.count)
        self._settle(now_s)
        self.sweeps.append(sweep)
        return sweep

    def publish(self, now_s: float, rate: float) -> Sweep:
        """A new model version: its rollout sweep starts now."""
        self.latest_version += 1
        sweep = self.start_sweep(now_s, rate, self.latest_version)
        self.rollout_end_s = sweep.end_s
        if not self.consistent:
            self.serving_version = self.latest_version
        return sweep

    def advance(self, now_s: float) -> None:
        """Let the serving version follow a finished rollout (consistent policy)."""
        if self.consistent and now_s >= self.rollout_end_s:
            self.serving_version = self.latest_version

    def _settle(self, now_s: float) -> None:
        """Fold finished sweeps into the per-entity arrays, keeping the list short."""
        done = [s for s in self.sweeps if s.end_s <= now_s]
        for sweep in done:
            made = sweep.start_s + np.arange(sweep.count) / sweep.rate
            newer = made > self.vector_s
            self.vector_s[newer] = made[newer]
            self.version[newer] = sweep.version
            self.swept += sweep.count
        self.sweeps = [s for s in self.sweeps if s.end_s > now_s]

    def reinferred(self, now_s: float) -> float:
        """Entities re-inferred up to now: one at a time, and by sweeps (finished ones, and those in progress so far)."""
        running = sum(min(s.count, max(0.0, (now_s - s.start_s) * s.rate)) for s in self.sweeps)
        return self.refreshes + self.swept + running

    # --- reads --------------------------------------------------------------------------------------
    def read(self, entities: np.ndarray, now_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Time made and version of the vectors scoring reads now for these entities."""
        if self.always_fresh:
            return np.full(len(entities), now_s), np.full(len(entities), self.serving_version, dtype=np.int32)
        made = self.vector_s[entities].copy()
        version = self.version[entities].copy()
        for sweep in self.sweeps:
            if self.consistent and sweep.version > self.serving_version:
                continue  # the new version's buffer is not served until its rollout is complete
            at = sweep.start_s + entities / sweep.rate
            newer = (at <= now_s) & (at > made)
            made[newer] = at[newer]
            version[newer] = sweep.version
        if self.consistent:
            stale_version = version > self.serving_version  # per-entity refreshes of an unserved version
            version[stale_version] = self.serving_version
        return made, version

    @property
    def backlog(self) -> int:
        """Entities waiting for a refresh."""
        return len(self.dirty)

    def rolling_out(self, now_s: float) -> bool:
        """A new version's vectors are being built beside the served ones (two buffers held)."""
        return now_s < self.rollout_end_s
