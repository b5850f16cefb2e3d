"""The nearline background of one store, written once for every engine: its changes, its refresh pool (on-update
refresh, periodic passes, model rollouts), nearline outages and its per-second gauges.

`RefreshPool.run()` is a generator that yields `Until(t)`: the engine resumes it at simulated time t (the simpy
engine with a timeout, the compiled engine from a heap of wake times, the live engine on its clock). Everything
else happens here, at the pool's own event times, so every engine sees the same vectors at the same times.
An engine that does real work (the live one) passes a `Listener`, told when an entity's refresh or a sweep
starts.

One pool of `refresh.workers` threads per store serves all of its nearline work, by non-preemptive priority
(rollouts, then periodic passes, then on-update refresh), the rule of a batch scheduler's priority classes:
- a model rollout starts when it is published, once the on-update refreshes in flight have finished (no new
  one starts while a rollout waits); a periodic pass in progress is cut short (the entities it reached keep
  their new vectors) since the rollout re-infers every entity anyway. A version published while a rollout runs
  waits for it to end (of several published meanwhile, the newest is rolled out). It takes every worker: `count / (workers / mean latency)` seconds.
- a periodic pass is due `interval_s` after the last full sweep (pass or rollout) started and starts when it is
  due and the workers are free: a pass longer than its interval is followed at once by the next (a continuous
  sweep, vector age ~ pass / 2), and reported (`sweep_overrun_s`).
- on-update refresh: each free worker takes the entity that has waited longest since it changed (an entity
  changed again while waiting is refreshed once; a change a sweep already covered is dropped), reads its
  features and writes its vector one drawn latency later.
Nothing re-infers faster than `workers / mean latency` in total. A nearline outage starts no new work (work in
progress finishes). Gauges, once per simulated second: the refresh backlog, the share of the workers' time
spent in the last second (`refresh_utilization`), the largest overrun of a pass so far, and (item vectors)
whether two index buffers are held.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from aif_sim.core.changes import ChangeChunk, ChangeLog, item_changes, user_changes
from aif_sim.core.latency import Sampler
from aif_sim.core.nearline import NearlineStore, Sweep
from aif_sim.core.traffic import stream
from aif_sim.scenario.schema import CacheFlush, Fault, NearlineOutage, Refresh, Scenario

MEAN_DRAWS = 100_000  # draws that estimate a refresh latency's mean (the rate of a full sweep)
DRAWS = 1024  # refresh latencies drawn at a time
SHIPPED_PREFIX = {"items": "", "users": "user_"}  # of the shipped stores' gauge names


def gauge_prefix(store: str) -> str:
    """What a store's gauge names start with: nothing for `items`, `user_` for `users`, `NAME_` for a named store."""
    return SHIPPED_PREFIX.get(store, f"{store}_")


def store_gauges(name: str) -> list[str]:
    """The names of a store's per-second gauges (time-series columns)."""
    prefix = gauge_prefix(name)
    names = [f"{prefix}refresh_backlog", f"{prefix}refresh_utilization", f"{prefix}sweep_overrun_s"]
    return names + ["double_buffered"] if name == "items" else names


@dataclass(frozen=True, slots=True)
class Until:
    """Resume the background at simulated time `time_s`."""

    time_s: float


class Listener(Protocol):
    """An engine that carries refreshes out (computes and stores vectors) hears when each starts."""

    def refreshing(self, entity: int) -> None: ...

    def sweeping(self, sweep: Sweep) -> None: ...


Gauge = Callable[[str, float, float], None]  # (name, simulated second, value)
Background = Generator[Until, None, None]


def mean_latency_s(sampler: Sampler) -> float:
    """A refresh latency's mean (s), estimated from `MEAN_DRAWS` draws of a fixed stream."""
    return float(np.mean(sampler.sample(np.random.default_rng(0), MEAN_DRAWS, 1.0))) / 1000


def outage_windows(faults: Iterable[Fault]) -> list[tuple[float, float]]:
    """The nearline outages' [start, end) windows, overlapping ones merged, in time order."""
    windows: list[tuple[float, float]] = []
    for start, end in sorted((f.at_s, f.at_s + f.duration_s) for f in faults if isinstance(f, NearlineOutage)):
        if windows and start <= windows[-1][1]:
            windows[-1] = (windows[-1][0], max(windows[-1][1], end))
        else:
            windows.append((start, end))
    return windows


class RefreshPool:
    """One store's changes and refresh pool (see the module docstring)."""

    def __init__(
        self,
        name: str,
        store: NearlineStore,
        changes: Iterable[ChangeChunk],
        refresh: Refresh | None,
        sampler: Sampler | None,
        publish_interval_s: float | None,
        outages: list[tuple[float, float]],
        rng: np.random.Generator,
        gauge: Gauge,
        listener: Listener | None = None,
    ) -> None:
        self.name, self.store, self.gauge, self.listener = name, store, gauge, listener
        self.on_update = refresh is not None and refresh.mode == "on_update"
        store.changes = ChangeLog(changes, taken=self.on_update)
        self.workers = refresh.workers if refresh is not None else 0
        self.rate = self.workers / mean_latency_s(sampler) if refresh is not None and sampler is not None else math.inf
        periodic = refresh is not None and refresh.mode == "periodic" and refresh.interval_s
        self.interval_s = refresh.interval_s if periodic else None
        self.publish_interval_s = publish_interval_s
        self.sampler, self.rng, self.outages = sampler, rng, outages
        self.gauges = store_gauges(name)
        self._draws: list[float] = []
        self.dirty: dict[int, float] = {}  # changed entities waiting for a refresh (oldest first) -> latest change
        self.running: list[tuple[float, int, int, int, float]] = []  # in flight: (end, order, entity, version, read at)
        self._order = 0  # refreshes started so far (ties between equal ends go in start order)
        self.publications = 0  # model versions published so far
        self.rollout_waiting = False
        self.next_pass_s = self.interval_s  # when the next pass is due (None: not scheduled)
        self.pass_waiting = False
        self.busy_s = 0.0  # worker-seconds of refresh finished
        self.overrun_s = 0.0  # the most a pass ran past its interval
        self._gauge_busy = (0.0, 0.0)  # (second, worker-seconds spent by then) of the last utilization gauge

    # --- the process --------------------------------------------------------------------------------
    def run(self) -> Background:
        """The store's background from time 0 on (it never ends: an engine stops driving it)."""
        now, next_gauge = 0.0, 0
        while True:
            self._settle(now)
            if now >= next_gauge:
                self._read_gauges(float(next_gauge))
                next_gauge += 1
            now = self._next_event(now, next_gauge)
            yield Until(now)

    def _settle(self, now: float) -> None:
        """Everything due at or before `now`: refreshes and sweeps that end, rollouts and passes that fall due,
        and the work that can start."""
        while True:
            self._finish(now)
            self._fall_due(now)
            sweep = self._start(now)
            if sweep is None or sweep.end_s > now:
                break
        self.store.changes.apply(self.store.changed_s, now)  # the change log holds only what is to come

    def _next_event(self, now: float, next_gauge: int) -> float:
        times = [float(next_gauge)]
        if self.running:
            times.append(self.running[0][0])
        if self.store.sweep is not None:
            times.append(self.store.sweep.end_s)
        if self.publish_interval_s is not None:
            times.append((self.publications + 1) * self.publish_interval_s)
        if self.next_pass_s is not None and not self.pass_waiting:
            times.append(self.next_pass_s)
        outage_end = self._outage_end(now)
        if outage_end is not None:
            times.append(outage_end)
        elif self._idle_for_updates():
            times.append(self.store.changes.next_time())
        return min(times)

    # --- events -------------------------------------------------------------------------------------
    def _finish(self, now: float) -> None:
        store = self.store
        while self.running and self.running[0][0] <= now:
            end, _, entity, version, read_s = heapq.heappop(self.running)
            store.refreshed(entity, read_s, version)
            self.busy_s += end - read_s
        sweep = store.sweep
        if sweep is not None and sweep.end_s <= now:
            self._close_sweep(sweep, sweep.end_s)

    def _close_sweep(self, sweep: Sweep, end_s: float) -> None:
        """A sweep ended (or was cut short) at `end_s`: its vectors go into the arrays, the next pass is scheduled."""
        store = self.store
        store.fold(sweep, end_s)
        store.sweep = None
        store.history.append((sweep, end_s))
        self.busy_s += (end_s - sweep.start_s) * self.workers
        if sweep.rollout:
            store.serving_version = sweep.version
        elif self.interval_s is not None:
            self.overrun_s = max(self.overrun_s, end_s - sweep.start_s - self.interval_s)
        if self.interval_s is not None and end_s >= sweep.end_s:  # a full sweep: the next pass is due an interval after it began
            self.next_pass_s = sweep.start_s + self.interval_s
        if self.dirty:
            made = store.vector_s
            self.dirty = {entity: changed for entity, changed in self.dirty.items() if changed > made[entity]}

    def _fall_due(self, now: float) -> None:
        interval = self.publish_interval_s
        while interval is not None and (self.publications + 1) * interval <= now:
            self.publications += 1
            self.rollout_waiting = True
        if self.next_pass_s is not None and self.next_pass_s <= now:
            self.pass_waiting = True

    def _start(self, now: float) -> Sweep | None:
        """Start what the priority allows now; the sweep started, if any."""
        if self._outage_end(now) is not None:
            return None
        store = self.store
        if self.rollout_waiting:
            if store.sweep is not None and not store.sweep.rollout:
                self._close_sweep(store.sweep, now)  # the pass is cut short
            if store.sweep is not None or self.running:
                return None
            self.rollout_waiting = False
            self.pass_waiting, self.next_pass_s = False, None  # rescheduled when the rollout ends
            store.latest_version = self.publications
            if not store.consistent:
                store.serving_version = store.latest_version
            return self._sweep(now, rollout=True)
        if self.pass_waiting:
            if store.sweep is not None or self.running:
                return None
            self.pass_waiting, self.next_pass_s = False, None
            return self._sweep(now, rollout=False)
        if self.on_update and store.sweep is None:
            self._take(now)
            while len(self.running) < self.workers and self.dirty:
                entity = next(iter(self.dirty))
                del self.dirty[entity]
                self._order += 1
                heapq.heappush(self.running, (now + self._latency(), self._order, entity, store.latest_version, now))
                if self.listener is not None:
                    self.listener.refreshing(entity)
        return None

    def _sweep(self, now: float, rollout: bool) -> Sweep:
        sweep = Sweep(now, self.rate, self.store.latest_version, self.store.count, rollout)
        self.store.sweep = sweep
        if self.listener is not None:
            self.listener.sweeping(sweep)
        return sweep

    # --- helpers ------------------------------------------------------------------------------------
    def _take(self, now: float) -> None:
        """The changes up to now join the entities waiting for a refresh (unless their vector already has them)."""
        entities, times = self.store.changes.take(now)
        made, dirty = self.store.vector_s, self.dirty
        for entity, changed in zip(entities, times):
            if changed > made[entity]:
                dirty[entity] = changed

    def _latency(self) -> float:
        """The next refresh latency (s)."""
        if not self._draws:
            assert self.sampler is not None
            self._draws = (self.sampler.sample(self.rng, DRAWS, 1.0) / 1000).tolist()[::-1]
        return self._draws.pop()

    def _idle_for_updates(self) -> bool:
        """Whether a change would be taken by a free worker the moment it comes."""
        return (
            self.on_update
            and self.store.sweep is None
            and len(self.running) < self.workers
            and not self.rollout_waiting
            and not self.pass_waiting
        )

    def _outage_end(self, now: float) -> float | None:
        """The end of the nearline outage in progress at `now`, or None."""
        for start, end in self.outages:
            if start <= now < end:
                return end
        return None

    def _read_gauges(self, second: float) -> None:
        names, store = self.gauges, self.store
        if self.on_update:
            self._take(second)
        self.gauge(names[0], second, float(len(self.dirty)))
        busy = self._busy_until(second)
        if self.workers and second > self._gauge_busy[0]:
            share = (busy - self._gauge_busy[1]) / (self.workers * (second - self._gauge_busy[0]))
            self.gauge(names[1], second, share)
        self._gauge_busy = (second, busy)
        overrun = self.overrun_s
        sweep = store.sweep
        if sweep is not None and not sweep.rollout and self.interval_s is not None:
            overrun = max(overrun, second - sweep.start_s - self.interval_s)
        self.gauge(names[2], second, max(0.0, overrun))
        if len(names) > 3:
            self.gauge(names[3], second, float(store.double_buffered))

    def _busy_until(self, now: float) -> float:
        """Worker-seconds of refresh spent by `now`, the work in progress included."""
        busy = self.busy_s + sum(now - running[4] for running in self.running)
        sweep = self.store.sweep
        if sweep is not None:
            busy += (now - sweep.start_s) * self.workers
        return busy


def version_switches(scenario: Scenario, samplers: dict[str, Sampler], world_changes: list[ChangeChunk] | None = None) -> list[float]:
    """When the serving model version changes during the run (at a rollout's start under `latest`, at its end
    under `consistent`), from a run of the item store's refresh pool of its own (its events never depend on
    requests)."""
    nearline = scenario.nearline
    if nearline is None or nearline.model_publish_interval_s is None:
        return []
    store = NearlineStore(scenario.traffic.items.count, consistent=nearline.version_policy == "consistent")
    pool = store_backgrounds(scenario, samplers, {"items": store}, lambda *_: None, world_changes)["items"]
    horizon, switches, now = scenario.duration_s + scenario.drain_s, [], 0.0
    serving = store.serving_version
    for until in pool.run():
        if store.serving_version != serving:
            serving = store.serving_version
            switches.append(now)
        if until.time_s >= horizon:
            return switches
        now = until.time_s
    return switches


def version_flushes(
    scenario: Scenario, caches: Iterable[str], samplers: dict[str, Sampler], world_changes: list[ChangeChunk] | None = None
) -> list[CacheFlush]:
    """The flushes of the versioned caches among `caches` (a pipeline's; `Scenario.versioned_caches`) at each switch
    of the serving model version, in time order. A versioned entry belongs to the version that made it, as serving
    systems key such caches by model version: at a switch the old version's entries are invalid, and every engine
    drops them all, through the path it applies `cache_flush` faults by (they are not faults: the storm report
    leaves them out)."""
    versioned = [name for name in scenario.versioned_caches if name in caches]
    if not versioned:
        return []
    return [
        CacheFlush(kind="cache_flush", at_s=at_s, cache=name)
        for at_s in version_switches(scenario, samplers, world_changes)
        for name in versioned
    ]


def store_backgrounds(
    scenario: Scenario,
    samplers: dict[str, Sampler],
    stores: dict[str, NearlineStore],
    gauge: Gauge,
    world_changes: list[ChangeChunk] | None = None,
    listeners: dict[str, Listener] | None = None,
) -> dict[str, RefreshPool]:
    """Each store's refresh pool over the run's changes of its entities (`core.changes`; the world's item changes,
    given, when `nearline.updates_from: world`): every store of items sees the same item changes and is re-inferred
    by each model publication; every store of users sees the same user events."""
    nearline = scenario.nearline
    pools: dict[str, RefreshPool] = {}
    if nearline is None:
        return pools
    outages = outage_windows(scenario.faults)
    for name, store in stores.items():
        items = nearline.entities(name) == "items"
        if items:
            changes = world_changes if nearline.updates_from == "world" and world_changes is not None else item_changes(scenario)
        else:
            changes = user_changes(scenario)
        pools[name] = RefreshPool(
            name,
            store,
            changes,
            nearline.refresh_of(name),
            samplers.get(f"refresh:{name}"),
            nearline.model_publish_interval_s if items else None,
            outages,
            stream(scenario.seed, f"refresh:{name}"),
            gauge,
            (listeners or {}).get(name),
        )
    return pools
