"""The change processes: when items' features change (and users' behaviour), and which entities.

Changes come at Poisson times (`nearline.item_updates_per_s`, `user_events_per_s`), each to one entity drawn by
popularity (the traffic's Zipf law: popular items change most, as in production catalogues where price, stock
and counters move with traffic). They are drawn from a random stream of their own (`changes:items`,
`changes:users`), never shared with the refresh workers' service draws, so every engine, every pipeline of a
run and the shadow-scored world see exactly the same changes, and a different refresh configuration changes
none of them. `ChangeLog` hands a run's changes to a nearline store as time goes on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from aif_sim.core.traffic import CHUNK, ZipfSampler, stream
from aif_sim.scenario.schema import Population, Scenario


@dataclass(frozen=True)
class ChangeChunk:
    """Consecutive changes: the change at `times_s[k]` touches entities `first[k]` .. `stop[k]`-1."""

    times_s: np.ndarray  # float64, non-decreasing, simulated seconds
    first: np.ndarray  # int64 (entity = popularity rank, 0 = most popular)
    stop: np.ndarray  # int64


def poisson_changes(population: Population, rate: float, until_s: float, rng: np.random.Generator) -> Iterator[ChangeChunk]:
    """Changes at Poisson times of `rate` per second over [0, until_s), each to one entity of `population`
    drawn by its Zipf popularity, in chunks of at most `CHUNK` changes (memory stays bounded on long runs)."""
    if rate <= 0:
        return
    popularity = ZipfSampler(population)
    now = 0.0
    while now < until_s:
        times = now + np.cumsum(rng.exponential(1.0 / rate, CHUNK))
        entities = popularity.sample(rng, CHUNK)
        now = float(times[-1])
        keep = times < until_s
        if keep.any():
            yield ChangeChunk(times[keep], entities[keep], entities[keep] + 1)


def listed_changes(times_s: np.ndarray, first: np.ndarray, stop: np.ndarray) -> Iterator[ChangeChunk]:
    """Changes given as arrays (sorted times; entities first..stop-1 of each), in chunks of at most `CHUNK`."""
    for start in range(0, len(times_s), CHUNK):
        part = slice(start, start + CHUNK)
        yield ChangeChunk(times_s[part], first[part], stop[part])


def item_changes(scenario: Scenario) -> Iterator[ChangeChunk]:
    """The run's item changes in time order, in bounded chunks, over [0, duration_s + drain_s): a pure function
    of the scenario (its seed included), drawn from the stream `changes:items`. None without a nearline
    section or at a rate of 0; with `updates_from: world` the world lists the changes (`model.shadow`)."""
    nearline = scenario.nearline
    if nearline is None or nearline.updates_from != "rate":
        return iter(())
    until_s = scenario.duration_s + scenario.drain_s
    return poisson_changes(scenario.traffic.items, nearline.item_updates_per_s, until_s, stream(scenario.seed, "changes:items"))


WorldLister = Callable[[str, int, float], tuple[np.ndarray, np.ndarray, np.ndarray]]  # model.shadow.world_item_changes


def world_changes(scenario: Scenario, lister: WorldLister) -> list[ChangeChunk] | None:
    """The world's item changes when item updates follow the model's world (`updates_from: world`), listed by
    `lister` (checkpoint, items, duration: times, first and stop rank); None otherwise."""
    nearline = scenario.nearline
    if nearline is None or nearline.updates_from != "world":
        return None
    assert scenario.model is not None
    until_s = scenario.duration_s + scenario.drain_s
    return list(listed_changes(*lister(str(scenario.model.checkpoints[0]), scenario.traffic.items.count, until_s)))


def user_changes(scenario: Scenario) -> Iterator[ChangeChunk]:
    """The run's user behaviour events (they change UIC's user-interest embedding), as `item_changes` draws item
    changes: Poisson at `nearline.user_events_per_s`, users by popularity, from the stream `changes:users`."""
    nearline = scenario.nearline
    if nearline is None:
        return iter(())
    until_s = scenario.duration_s + scenario.drain_s
    return poisson_changes(scenario.traffic.users, nearline.user_events_per_s, until_s, stream(scenario.seed, "changes:users"))


class ChangeLog:
    """A run's changes, one entity each, read by two cursors as time goes on: the store's change times
    (`apply`: every change at or before a time, as a read needs them) and, when refreshes follow updates, the
    refresh pool's set of changed entities (`take`). Only the changes between the cursors and the next chunk
    are held."""

    def __init__(self, chunks: Iterable[ChangeChunk], taken: bool) -> None:
        self._chunks = iter(chunks)
        self._more = True
        self.times = np.empty(0)
        self.entities = np.empty(0, np.int64)
        self.applied = 0  # changes before this index are in the store's change times
        self.taken = 0 if taken else -1  # changes before this index were handed to the refresh pool (-1: none is)

    def cover(self, until_s: float) -> None:
        """Hold every change at or before `until_s` (all there are, at the end of the run)."""
        while self._more and (len(self.times) == 0 or self.times[-1] <= until_s):
            self._load()

    def _load(self) -> None:
        """Append the next chunk, dropping the changes both cursors have passed."""
        chunk = next(self._chunks, None)
        if chunk is None:
            self._more = False
            return
        first = np.asarray(chunk.first, np.int64)
        spans = np.asarray(chunk.stop, np.int64) - first
        entities = np.repeat(first - np.cumsum(spans) + spans, spans) + np.arange(int(spans.sum()))
        done = self.applied if self.taken < 0 else min(self.applied, self.taken)
        self.times = np.concatenate([self.times[done:], np.repeat(chunk.times_s, spans)])
        self.entities = np.concatenate([self.entities[done:], entities])
        self.applied -= done
        if self.taken >= 0:
            self.taken -= done

    def apply(self, changed_s: np.ndarray, until_s: float) -> None:
        """Write every change at or before `until_s` into `changed_s` (each entity's latest change time)."""
        self.cover(until_s)
        stop = int(np.searchsorted(self.times, until_s, side="right"))
        if stop > self.applied:
            np.maximum.at(changed_s, self.entities[self.applied : stop], self.times[self.applied : stop])
            self.applied = stop

    def take(self, until_s: float) -> tuple[list[int], list[float]]:
        """The changes at or before `until_s` not taken yet (entities, times), in time order."""
        self.cover(until_s)
        stop = int(np.searchsorted(self.times, until_s, side="right"))
        start, self.taken = self.taken, max(self.taken, stop)
        return self.entities[start:stop].tolist(), self.times[start:stop].tolist()

    def next_time(self) -> float:
        """When the first change not taken yet comes (infinity when none is left)."""
        while self._more and self.taken >= len(self.times):
            self._load()
        return float(self.times[self.taken]) if 0 <= self.taken < len(self.times) else math.inf
