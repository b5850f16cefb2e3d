"""The nearline vector store: for every entity (item, or user for a UIC-style embedding), when its current
vector was made, by which model version, and when its features last changed.

A vector's time is when its features were read: an entity that changes after that (even while its inference
runs) has a stale vector. Vectors are written two ways, both decided by the store's refresh pool
(`core.refresh`):
- one entity at a time (`refreshed`), visible from the end of its inference;
- by a sweep over the whole catalogue (a periodic pass, or the rollout of a new model version): entity i's
  features are read at `start + i / rate` and its vector is written at `start + (i + 1) / rate` (entities in
  id order, `rate` = workers / mean latency, the pool's workers as one fluid server). A sweep in progress is
  kept as numbers, not an event per entity, so a catalogue of 10^7 costs nothing per entity while it runs;
  when it ends (or is cut short) it is folded into the per-entity arrays.

Model versions: a rollout makes version v+1 and every vector it writes carries v+1; a per-entity refresh
carries the version it was inferred by. With `version_policy: consistent` real-time scoring stays on the
previous version, reading the previous version's vectors (a second buffer) until the rollout is complete, so
no scored vector mismatches the serving version. With `latest` scoring switches at once and reads whichever
vector an entity has: entities the rollout has not reached yet carry the old version (model version drift,
counted as mismatched). A cached user vector is not kept here: the user-vector cache's entries are stamped by
their insertion time only (see `core.cache`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aif_sim.core.changes import ChangeLog


@dataclass(frozen=True)
class Sweep:
    """Entity i's features read at `start_s + i / rate`, its vector (by `version`) written at
    `start_s + (i + 1) / rate`, over `count` entities; a `rollout` makes a new version, a pass refreshes."""

    start_s: float
    rate: float
    version: int
    count: int
    rollout: bool

    @property
    def end_s(self) -> float:
        return self.start_s + self.count / self.rate


class NearlineStore:
    """Vector times and versions of `count` entities, items or users (all made at time 0 by version 0 at the start)."""

    def __init__(self, count: int, always_fresh: bool = False, consistent: bool = True, entities: str = "items") -> None:
        self.count = count
        self.entities = entities  # what it holds vectors of: items (a request reads its candidates') or users (its user's)
        self.always_fresh = always_fresh  # refresh interval 0: every vector is made when it is read
        self.consistent = consistent
        self.vector_s = np.zeros(count)
        self.version = np.zeros(count, dtype=np.int32)
        self.changed_s = np.full(count, -np.inf)  # each entity's latest change, as far as `changes` was applied
        self.changes = ChangeLog((), taken=False)  # the run's changes (set by the store's refresh pool)
        self.sweep: Sweep | None = None  # the sweep in progress
        self.history: list[tuple[Sweep, float]] = []  # every sweep ended and when (cut short: before its planned end)
        self.latest_version = 0
        self.serving_version = 0

    # --- writes (by the refresh pool) ---------------------------------------------------------------------
    def refreshed(self, entity: int, read_s: float, version: int) -> None:
        """One entity's new vector, by `version`, from its features as they were at `read_s`."""
        self.vector_s[entity] = read_s
        self.version[entity] = version

    def fold(self, sweep: Sweep, now_s: float) -> None:
        """Write into the per-entity arrays the vectors `sweep` had written by `now_s` (all of them at its end)."""
        entities = np.arange(self.count)
        made = sweep.start_s + entities / sweep.rate
        newer = (sweep.start_s + (entities + 1) / sweep.rate <= now_s) & (made > self.vector_s)
        self.vector_s[newer] = made[newer]
        self.version[newer] = sweep.version

    @property
    def sweep_served(self) -> bool:
        """Whether reads see the sweep in progress (not a rollout under the consistent policy)."""
        return self.sweep is not None and not (self.consistent and self.sweep.rollout)

    @property
    def double_buffered(self) -> bool:
        """A new version's vectors are being built beside the served ones (two buffers held)."""
        return self.sweep is not None and self.sweep.rollout and self.consistent

    # --- reads --------------------------------------------------------------------------------------
    def read(self, entities: np.ndarray, now_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Time made and version of the vectors scoring reads now for these entities (and every change up to
        now applied to `changed_s`)."""
        self.changes.apply(self.changed_s, now_s)
        if self.always_fresh:
            return np.full(len(entities), now_s), np.full(len(entities), self.serving_version, dtype=np.int32)
        made = self.vector_s[entities].copy()
        version = self.version[entities].copy()
        sweep = self.sweep
        if sweep is not None and self.sweep_served:
            at = sweep.start_s + entities / sweep.rate
            newer = (sweep.start_s + (entities + 1) / sweep.rate <= now_s) & (at > made)
            made[newer] = at[newer]
            version[newer] = sweep.version
        return made, version
