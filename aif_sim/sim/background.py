"""The simpy engine's background: it drives each nearline store's refresh pool (`core.refresh`) and applies the
faults on caches and stage pools at their times."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import simpy

from aif_sim.core.cache import Policy
from aif_sim.core.changes import world_changes
from aif_sim.core.latency import Sampler
from aif_sim.core.nearline import NearlineStore
from aif_sim.core.refresh import Background, store_backgrounds, version_flushes
from aif_sim.metrics.recorder import Recorder
from aif_sim.scenario.schema import CacheFlush, Fault, NodeLoss, Scenario, StageSlowdown
from aif_sim.sim.fleet import Fleet
from aif_sim.sim.pools import StagePool


def drive(env: simpy.Environment, background: Background) -> Generator[simpy.Event, Any, None]:
    """Resume a core background process (`core.refresh`) at each time it asks for."""
    for until in background:
        yield env.timeout(until.time_s - env.now)


def fault(
    env: simpy.Environment,
    spec: Fault,
    caches: dict[str, Policy],
    pools: dict[str, StagePool | Fleet],
) -> Generator[simpy.Event, Any, None]:
    """Apply one fault, or a versioned cache's flush, at its time (a fault on a cache or stage this pipeline lacks does
    nothing; nearline outages are the refresh pools' own, `core.refresh`)."""
    yield env.timeout(spec.at_s)
    if isinstance(spec, CacheFlush) and spec.cache in caches:
        caches[spec.cache].flush(spec.fraction)
    elif isinstance(spec, StageSlowdown) and spec.stage in pools:
        pool = pools[spec.stage]
        pool.slowdown *= spec.factor
        yield env.timeout(spec.duration_s)
        pool.slowdown /= spec.factor
    elif isinstance(spec, NodeLoss) and spec.stage in pools:
        fleet = pools[spec.stage]
        assert isinstance(fleet, Fleet)  # the schema allows node loss only on stages of several nodes
        yield from fleet.lose(spec.nodes, spec.duration_s)


def _world_item_changes(checkpoint: str, items: int, duration_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from aif_sim.model.shadow import world_item_changes  # torch: only for a scenario that follows the world

    return world_item_changes(checkpoint, items, duration_s)


def start_background(
    env: simpy.Environment,
    scenario: Scenario,
    samplers: dict[str, Sampler],
    stores: dict[str, NearlineStore],
    recorder: Recorder,
    caches: dict[str, Policy],
    pools: dict[str, StagePool | Fleet],
) -> None:
    """Start a pipeline run's background processes: each store's refresh pool (`core.refresh`: changes, refresh,
        model versions, nearline outages, gauges), the flushes of the versioned caches when the serving model version
    changes (`core.refresh.version_flushes`), and the faults on these caches and pools."""
    world = world_changes(scenario, _world_item_changes)
    for pool in store_backgrounds(scenario, samplers, stores, recorder.gauge, world).values():
        env.process(drive(env, pool.run()))
    for spec in [*version_flushes(scenario, caches, samplers, world), *scenario.faults]:
        env.process(fault(env, spec, caches, pools))
