"""Background processes of a simulated system: feature updates, nearline refresh, model publication,
faults, and the per-second gauges they report."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from typing import Any

import numpy as np
import simpy

from aif_sim.core.cache import CachePolicy
from aif_sim.core.changes import ChangeChunk, item_changes
from aif_sim.core.latency import Sampler
from aif_sim.core.nearline import NearlineStore, sweep_rate
from aif_sim.core.traffic import CHUNK, ZipfSampler, stream
from aif_sim.metrics.recorder import Recorder
from aif_sim.scenario.schema import CacheFlush, Fault, NearlineOutage, NodeLoss, Refresh, Scenario, StageSlowdown
from aif_sim.sim.fleet import Fleet
from aif_sim.sim.pools import StagePool


class Outage:
    """Whether nearline refresh is stopped, and an event that fires when it resumes."""

    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self.until_s = 0.0

    def active(self) -> bool:
        return self.env.now < self.until_s

    def wait(self) -> simpy.Event:
        return self.env.timeout(self.until_s - self.env.now)


class NearlineRefresh:
    """Updates of one store's entities and their refresh (on update, or by periodic sweeps). `updates` is a
    rate (Poisson, entities by popularity, drawn from `rng`) or listed changes (`ChangeChunk`s in time order)."""

    def __init__(
        self,
        env: simpy.Environment,
        store: NearlineStore,
        popularity: ZipfSampler,
        updates: float | Iterable[ChangeChunk],
        refresh: Refresh | None,
        sampler: Sampler | None,
        rng: np.random.Generator,
        outage: Outage,
    ) -> None:
        self.env, self.store, self.popularity, self.rng, self.outage = env, store, popularity, rng, outage
        self.refresh, self.sampler = refresh, sampler
        self.on_update = refresh is not None and refresh.mode == "on_update"
        self._work = env.event()
        self.refreshes = 0
        if not isinstance(updates, (int, float)):
            env.process(self._listed_updates(updates))
        elif updates > 0:
            env.process(self._updates(updates))
        if refresh is not None and self.on_update:
            for _ in range(refresh.workers):
                env.process(self._worker())
        elif refresh is not None and refresh.interval_s:
            env.process(self._periodic(refresh.interval_s))

    def _updates(self, rate: float) -> Generator[simpy.Event, Any, None]:
        env, store = self.env, self.store
        while True:
            gaps = self.rng.exponential(1.0 / rate, CHUNK).tolist()
            for gap, entity in zip(gaps, self.popularity.sample(self.rng, CHUNK).tolist()):
                yield env.timeout(gap)
                store.change(entity, env.now, self.on_update)
                if self.on_update and not self._work.triggered:
                    self._work.succeed()

    def _listed_updates(self, chunks: Iterable[ChangeChunk]) -> Generator[simpy.Event, Any, None]:
        """Changes at given times, each to the entities first..stop-1."""
        env, store = self.env, self.store
        for chunk in chunks:
            for t, lo, hi in zip(chunk.times_s.tolist(), chunk.first.tolist(), chunk.stop.tolist()):
                yield env.timeout(t - env.now)
                for entity in range(lo, hi):
                    store.change(entity, env.now, self.on_update)
                if self.on_update and not self._work.triggered:
                    self._work.succeed()

    def _worker(self) -> Generator[simpy.Event, Any, None]:
        env, store = self.env, self.store
        assert self.sampler is not None
        while True:
            if self.outage.active():
                yield self.outage.wait()
                continue
            entity = store.next_dirty()
            if entity is None:
                if self._work.triggered:
                    self._work = env.event()
                yield self._work
                continue
            yield env.timeout(float(self.sampler.sample(self.rng, 1, 1.0)[0]) / 1000)
            store.refreshed(entity, env.now)
            self.refreshes += 1

    def _periodic(self, interval_s: float) -> Generator[simpy.Event, Any, None]:
        rate = sweep_rate(self.refresh, self.sampler)
        while True:
            yield self.env.timeout(interval_s)
            while self.outage.active():
                yield self.outage.wait()
            self.store.start_sweep(self.env.now, rate)


def publisher(
    env: simpy.Environment, store: NearlineStore, interval_s: float, rate: float, outage: Outage
) -> Generator[simpy.Event, Any, None]:
    """A new model version every `interval_s`; its rollout re-infers every entity at `rate`."""
    while True:
        yield env.timeout(interval_s)
        while outage.active():
            yield outage.wait()
        sweep = store.publish(env.now, rate)
        env.process(_switch_at(env, store, sweep.end_s))


def _switch_at(env: simpy.Environment, store: NearlineStore, end_s: float) -> Generator[simpy.Event, Any, None]:
    yield env.timeout(max(0.0, end_s - env.now))
    store.advance(env.now)


def fault(
    env: simpy.Environment,
    spec: Fault,
    caches: dict[str, CachePolicy],
    pools: dict[str, StagePool | Fleet],
    outage: Outage,
) -> Generator[simpy.Event, Any, None]:
    """Apply one fault at its time (a fault on a cache or stage this pipeline lacks does nothing)."""
    yield env.timeout(spec.at_s)
    if isinstance(spec, CacheFlush) and spec.cache in caches:
        caches[spec.cache].flush(spec.fraction)
    elif isinstance(spec, NearlineOutage):
        outage.until_s = max(outage.until_s, env.now + spec.duration_s)
    elif isinstance(spec, StageSlowdown) and spec.stage in pools:
        pool = pools[spec.stage]
        pool.slowdown *= spec.factor
        yield env.timeout(spec.duration_s)
        pool.slowdown /= spec.factor
    elif isinstance(spec, NodeLoss) and spec.stage in pools:
        fleet = pools[spec.stage]
        assert isinstance(fleet, Fleet)  # the schema allows node loss only on stages of several nodes
        yield from fleet.lose(spec.nodes, spec.duration_s)


def gauges(env: simpy.Environment, recorder: Recorder, stores: dict[str, NearlineStore]) -> Generator[simpy.Event, Any, None]:
    """The nearline stores' readings, once per simulated second."""
    while True:
        recorder.nearline_gauges(stores, env.now)
        yield env.timeout(1.0)


def item_updates(scenario: Scenario) -> Iterator[ChangeChunk]:
    """The run's item changes (`core.changes`), or the world's when updates follow the model's world."""
    nearline = scenario.nearline
    assert nearline is not None
    if nearline.updates_from == "rate":
        return item_changes(scenario)
    from aif_sim.model.shadow import world_item_changes  # torch: only for a scenario that follows the world

    assert scenario.model is not None
    times, first, stop = world_item_changes(
        scenario.model.checkpoints[0], scenario.traffic.items.count, scenario.duration_s + scenario.drain_s
    )
    return iter([ChangeChunk(times, first, stop)])


def start_background(
    env: simpy.Environment,
    scenario: Scenario,
    samplers: dict[str, Sampler],
    stores: dict[str, NearlineStore],
    recorder: Recorder,
    caches: dict[str, CachePolicy],
    pools: dict[str, StagePool | Fleet],
) -> None:
    """Start a pipeline run's background processes: each store's updates and refresh, model publication,
    the faults (on these caches and pools) and the stores' gauges."""
    nearline = scenario.nearline
    outage = Outage(env)
    for name, store in stores.items():
        assert nearline is not None
        items = name == "items"
        population = scenario.traffic.items if items else scenario.traffic.users
        refresh = NearlineRefresh(
            env,
            store,
            ZipfSampler(population),
            item_updates(scenario) if items else nearline.user_events_per_s,
            nearline.refresh if items else nearline.user_refresh,
            samplers.get(f"refresh:{name}"),
            stream(scenario.seed, f"nearline:{name}"),
            outage,
        )
        if items and nearline.model_publish_interval_s is not None:
            env.process(publisher(env, store, nearline.model_publish_interval_s, sweep_rate(refresh.refresh, refresh.sampler), outage))
    for spec in scenario.faults:
        env.process(fault(env, spec, caches, pools, outage))
    if stores:
        env.process(gauges(env, recorder, stores))


def background_only(
    scenario: Scenario, samplers: dict[str, Sampler], stores: dict[str, NearlineStore], recorder: Recorder
) -> simpy.Environment:
    """An environment of its own holding only a run's background processes (no caches, no stage pools): their
    events never depend on requests, so they happen as in the run's shared environment."""
    env = simpy.Environment()
    start_background(env, scenario, samplers, stores, recorder, {}, {})
    return env
