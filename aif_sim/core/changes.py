"""The item change process: when items' features change, and which items.

Changes come at Poisson times (`nearline.item_updates_per_s`), each to one item drawn by popularity (the
traffic's Zipf law: popular items change most, as in production catalogues where price, stock and counters
move with traffic). They are drawn from a random stream of their own (`changes:items`), never shared with
the refresh workers' service draws, so every engine, every pipeline of a run and the shadow-scored world see
exactly the same changes, and a different refresh configuration changes none of them.
"""

from __future__ import annotations

from collections.abc import Iterator
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


def item_changes(scenario: Scenario) -> Iterator[ChangeChunk]:
    """The run's item changes in time order, in bounded chunks, over [0, duration_s + drain_s): a pure function
    of the scenario (its seed included), drawn from the stream `changes:items`. None without a nearline
    section or at a rate of 0; with `updates_from: world` the world lists the changes (`model.shadow`)."""
    nearline = scenario.nearline
    if nearline is None or nearline.updates_from != "rate":
        return iter(())
    until_s = scenario.duration_s + scenario.drain_s
    return poisson_changes(scenario.traffic.items, nearline.item_updates_per_s, until_s, stream(scenario.seed, "changes:items"))
