"""Entry points of the live engine for the application layer (which imports no asyncio): run a scenario's
pipelines live, one after another, each on a fresh event loop, with one model and one executor.

What the live engine runs and what it does not:
- every pipeline, stage kind (plain, batching, queue limit, timeout; nodes behind a balancer, shards, hedging,
  retries), request deadline, cache (LRU/TTL policy, values in aiocache memory or Redis), nearline refresh (on
  update, periodic, model publication) and fault;
- not `nearline.updates_from: world` (the world's item changes serve shadow scoring, a DES analysis) and
  no shadow scoring (the live engine measures time; quality comes from the DES);
- nearline stores of at most `MAX_INDEX` entities in memory (each store's index is one array of that many
  records); past `live.nearline.PREFILL` entities, vectors are made when first read.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aif_sim.core.latency import Sampler
from aif_sim.core.replay import ServiceTrace
from aif_sim.core.traffic import candidate_range
from aif_sim.errors import InputError
from aif_sim.live.engine import LivePipeline
from aif_sim.live.loop import live_loop
from aif_sim.live.model import MODEL_OPS, LiveModel
from aif_sim.live.storage import redis_reachable
from aif_sim.metrics.recorder import Recorder, RequestSink
from aif_sim.scenario.schema import NodeLoss, Scenario

MAX_INDEX = 2_000_000  # entities of a nearline index in memory (10^6 item vectors: 425 MB)
# The schedule is kept when the achieved load is within 1% of the scheduled one and the p99 lag is at most one
# default GIL switch interval (5 ms): the event loop shares the GIL with the model threads, and a wake-up that
# finds a model thread running Python code waits for it to hand the GIL over (measured on the validate
# scenario: the sequential model in the executor gives a p99 lag of ~4 ms at 30% load; replacing it with a
# sleep of the same length, 0.4 ms; with a pure-Python spin, the same ~4 ms).
LAG_LIMIT_MS = 5.0
Progress = Callable[[str, float, float], None]


def check_live(scenario: Scenario, source: str) -> None:
    """InputError (one line) when the live engine cannot run this scenario as given."""
    nearline, traffic = scenario.nearline, scenario.traffic
    if nearline is not None and nearline.updates_from == "world":
        raise InputError(f"{source}: nearline.updates_from: the live engine takes `rate` (the world's changes serve DES shadow scoring)")
    reads = {store for pipeline in scenario.pipeline_defs for store in pipeline.vector_stores}
    caches = scenario.caches
    for store, population in (("items", traffic.items), ("users", traffic.users)):
        if (
            store in {scenario.store_entities(name) for name in reads}
            and (caches is None or caches.backend == "memory")
            and population.count > MAX_INDEX
        ):
            raise InputError(
                f"{source}: traffic.{store}.count: {population.count:,} vectors for the live engine's in-memory index; "
                f"expected at most {MAX_INDEX:,}"
            )
    if caches is not None and caches.backend == "redis":
        reason = asyncio.run(redis_reachable(caches.redis_url))
        if reason is not None:
            raise InputError(f"{source}: caches.redis_url: no Redis server answers at {caches.redis_url} ({reason})")


def executor_threads(scenario: Scenario) -> int:
    """Threads enough for every model server and nearline worker to run at once, and one for the index fill; a node
    loss on a model stage adds the lost nodes' threads (their model calls run on, unseen, while the node is down)."""
    model_servers = sum(scenario.stages[name].servers for name in scenario.stage_names if name in MODEL_OPS)
    model_servers += sum(
        scenario.stages[fault.stage].threads_per_node * fault.nodes
        for fault in scenario.faults
        if isinstance(fault, NodeLoss) and fault.stage in MODEL_OPS
    )
    nearline = scenario.nearline
    refreshes = [nearline.refresh_of(store) for store in ["items", "users", *scenario.store_names]] if nearline is not None else []
    workers = sum(r.workers for r in refreshes if r is not None)
    return model_servers + workers + 1


def live_model(scenario: Scenario) -> LiveModel:
    """The scenario's model (its first checkpoint, or a fresh one), warmed up at its largest candidate count."""
    checkpoints = scenario.model.checkpoints if scenario.model is not None else []
    model = LiveModel(checkpoints[0] if checkpoints else None, scenario.traffic.items.count, scenario.seed)
    model.warm_up(candidate_range(scenario.traffic.candidates)[1])
    return model


def _namespace(scenario: Scenario) -> str:
    """A storage namespace of this run alone (runs sharing a Redis server never collide)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", scenario.name)
    return f"aif-sim.{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class LiveResources:
    """What live runs of one scenario share: the warmed-up model and the executor its operators run in."""

    model: LiveModel
    executor: Executor


@contextmanager
def live_resources(scenario: Scenario) -> Iterator[LiveResources]:
    """The model and an executor for live runs of this scenario (the executor is shut down on exit)."""
    model = live_model(scenario)
    with ThreadPoolExecutor(executor_threads(scenario), thread_name_prefix="aif-sim-model") as executor:
        yield LiveResources(model, executor)


def run_live(
    scenario: Scenario,
    samplers: dict[str, Sampler],
    sink: RequestSink | None,
    progress: Progress,
    stop: Callable[[], bool],
    resources: LiveResources | None = None,
    traces: dict[str, ServiceTrace] | None = None,
    timelines: float = 0.0,
) -> tuple[dict[str, Recorder], dict[str, dict[str, Any]]]:
    """Run every pipeline live for `scenario.duration_s`; per pipeline its recorder (keeping the timelines of a
    `timelines` share of the requests) and its `live` block. `traces`, when given, receives per pipeline the arrival
    and measured service times of every request (`core.replay`)."""
    if resources is None:
        with live_resources(scenario) as made:
            return run_live(scenario, samplers, sink, progress, stop, made, traces, timelines)
    results: dict[str, Recorder] = {}
    blocks: dict[str, dict[str, Any]] = {}
    namespace = _namespace(scenario)
    model, executor = resources.model, resources.executor
    for pipeline in scenario.pipelines:
        if stop():
            break
        live = LivePipeline(scenario, pipeline, samplers, model, executor, namespace, sink, timelines)
        with live_loop() as loop:
            results[pipeline] = loop.run_until_complete(live.run(scenario.duration_s, progress, stop))
        results[pipeline].engine = "live"
        window_s = live.recorder.window.length_s
        block = live.schedule.summary(live.recorder.offered / window_s if window_s > 0 else float("nan"))
        block["kept_schedule"] = bool(
            block["schedule_lag_ms"]["p99"] <= LAG_LIMIT_MS and block["achieved_qps"] >= 0.99 * block["scheduled_qps"]
        )
        block["storage"] = scenario.caches.backend if scenario.caches is not None else "memory"
        blocks[pipeline] = block
        if traces is not None:
            traces[pipeline] = live.trace
    return results, blocks
