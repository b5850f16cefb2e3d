"""Run one pipeline of a scenario in wall-clock time, in this process's asyncio loop.

The same system as the DES (`core.system`: cache policies, nearline stores, the requests and their draws)
and the same flow (`core.flow`), carried out for real: pools of concurrent services (`live.pools`), stage
work that awaits external latencies or runs the real model in an executor (`live.stages`), values in
aiocache storage (`live.storage`), nearline refresh that runs the model (`live.nearline`).

The load generator is open loop: each request is issued at its scheduled arrival time on the loop's clock
as its own task, whatever the state of the system, and its latency is measured from the *scheduled* time,
so a late generator cannot hide queueing (coordinated omission); how late each request was issued (the
schedule lag) is reported beside the results. With `deadline_ms`, a request not finished that long after its
scheduled arrival is abandoned: its task is cancelled (queued visits leave their queues, running ones finish as
wasted work, parallel branches, shards and hedge copies likewise) and it ends timed out. Faults act at their time
as in the DES: a cache flush, a nearline outage, a stage slowdown, a node loss (`LiveFleet.lose`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from aif_sim.core.changes import world_changes
from aif_sim.core.flow import Flow, FlowRun, Fork, Load, Pause, Save, Visit
from aif_sim.core.latency import Sampler
from aif_sim.core.refresh import store_backgrounds, version_flushes
from aif_sim.core.replay import ServiceTrace
from aif_sim.core.request import Outcome, Request
from aif_sim.core.system import RequestSource, cache_policies, nearline_stores
from aif_sim.core.traffic import ZipfSampler, stream
from aif_sim.live.fleet import LiveFleet
from aif_sim.live.index import VectorStore, open_index
from aif_sim.live.loop import Clock, measure_wake
from aif_sim.live.model import MODEL_OPS, OUTPUTS, LiveModel
from aif_sim.live.nearline import FILL_BATCH, PREFILL, FirstRead, LiveRefresh, drive, fill
from aif_sim.live.pools import LiveBatchingPool, LivePool
from aif_sim.live.stages import LiveStage
from aif_sim.live.storage import open_storage
from aif_sim.metrics.histogram import LogHistogram
from aif_sim.metrics.recorder import Recorder, RequestSink
from aif_sim.model.shadow import world_item_changes
from aif_sim.scenario.pipelines import Cached, Pipeline, branches_of
from aif_sim.scenario.schema import CacheFlush, Fault, NodeLoss, Scenario, Stage, StageSlowdown

MARKER = np.dtype(np.uint8)  # the value of a cache that holds nothing the model reads: that the entry is there
DRAIN_POLL_S = 0.05
STOP_DRAIN_S = 2.0  # how long an interrupted run waits for its requests in flight
Slot = LivePool | LiveFleet  # a stage slot: one pool, or nodes behind a balancer


@dataclass
class Schedule:
    """How well the load generator kept the schedule: how late (ms) it issued the measured requests."""

    lag_ms: LogHistogram
    issued: int = 0
    first_s: float = 0.0
    last_s: float = 0.0

    def summary(self, scheduled_qps: float) -> dict[str, Any]:
        """The `live` block of a pipeline's summary."""
        span = self.last_s - self.first_s
        lag = self.lag_ms.summary()
        return {
            "scheduled_qps": scheduled_qps,
            "achieved_qps": (self.issued - 1) / span if self.issued > 1 and span > 0 else float("nan"),
            "schedule_lag_ms": {key: lag[key] for key in ("p50", "p99", "max")},
        }


def cache_fields(pipeline: Pipeline) -> dict[str, str | None]:
    """What each cache of a pipeline holds, as the request payload's field: a cache guarding a model stage, what that
    stage's operator makes for the user (`model.OUTPUTS`: the user side's vector); a read-through cache, the user's
    long-term behaviours (the features the model reads); a cache guarding any other stage, nothing (None)."""
    fields: dict[str, str | None] = {}
    for step in pipeline.steps:
        for branch in branches_of(step):
            if isinstance(branch, Cached):
                fields[branch.cache] = OUTPUTS.get(MODEL_OPS.get(branch.stage, ""))
            if branch.reads is not None:
                fields[branch.reads] = "behaviour"
    return fields


class LivePipeline:
    """One pipeline over one scenario, live: storage, pools, flow, background tasks, recorder."""

    def __init__(
        self,
        scenario: Scenario,
        pipeline: str,
        samplers: dict[str, Sampler],
        model: LiveModel,
        executor: Executor,
        namespace: str,
        sink: RequestSink | None = None,
        timelines: float = 0.0,
    ) -> None:
        """`timelines`: the share of requests whose timelines are kept (`metrics.trace`)."""
        self.scenario, self.pipeline, self.samplers, self.model, self.executor = scenario, pipeline, samplers, model, executor
        self.namespace = namespace
        self.stage_names = scenario.pipeline(pipeline).stages
        self.caches = cache_policies(scenario, pipeline)
        self.cache_fields = cache_fields(scenario.pipeline(pipeline))
        self.stores = nearline_stores(scenario, pipeline)
        self.recorder = Recorder.for_pipeline(scenario, pipeline, sink, self.caches, list(self.stores))
        if timelines > 0:
            self.recorder.start_trace(timelines, self.stores)
        self.schedule = Schedule(LogHistogram())
        sharded = {slot: scenario.stages[name].shards for slot, name in enumerate(self.stage_names) if scenario.stages[name].shards > 1}
        self.trace = ServiceTrace(scenario.pipeline(pipeline).step_slots, sharded)  # every request's arrival, measured services and hops
        self.storage: dict[str, VectorStore] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.failure: BaseException | None = None  # the first error of a request or background task
        self.deadline_s = scenario.deadline_ms / 1000 if scenario.deadline_ms is not None else None
        self.lost = {fault.stage for fault in scenario.faults if isinstance(fault, NodeLoss)}  # stages whose nodes go down

    # --- setting up ----------------------------------------------------------------------------------
    def _open_storage(self) -> None:
        caches, model = self.scenario.caches, self.model
        backend, url = (caches.backend, caches.redis_url) if caches is not None else ("memory", None)
        dtypes = {
            "user_vector": model.user_dtype,
            "behaviour": model.behaviour_dtype,
            "items": model.item_dtype,
            "users": model.interest_dtype,
        }
        dtypes |= {cache: dtypes[field] if field is not None else MARKER for cache, field in self.cache_fields.items()}
        stores = self.scenario.pipeline(self.pipeline).vector_stores
        for name in [*self.caches, *stores]:
            dtype = dtypes[
                self.scenario.store_entities(name) if name in stores else name
            ]  # a record, or an array (a sub-array dtype: its base and shape)
            namespace = f"{self.namespace}.{self.pipeline}.{name}"
            if name in stores:
                self.storage[name] = open_index(backend, url, namespace, dtype, self._count(name))
            else:
                self.storage[name] = open_storage(backend, url, namespace, dtype.base, dtype.shape)

    def _count(self, store: str) -> int:
        """The entities of a nearline store: the items, or the users."""
        return self.scenario.store_count(store)

    async def _fill(self, progress: Callable[[str, int, int], None]) -> None:
        """The nearline vectors as they stand when the run starts (made at time 0 by version 0)."""
        for name in self.scenario.pipeline(self.pipeline).vector_stores:
            count = self._count(name)
            done = 0

            def advance(n: int, name: str = name, count: int = count) -> None:
                nonlocal done
                done += n
                progress(name, done, count)

            await fill(
                self.storage[name],
                self._compute(name),
                self.executor,
                min(count, self._prefill(name)),
                FILL_BATCH[self.scenario.store_entities(name)],
                advance,
            )

    def _prefill(self, store: str) -> int:
        """Entities of a store filled before the run (the rest are made when first read)."""
        backend = self.scenario.caches.backend if self.scenario.caches is not None else "memory"
        return PREFILL[self.scenario.store_entities(store), backend]

    def _vectors(self, clock: Clock, store: str) -> VectorStore | FirstRead:
        """Where a stage reads a store's vectors: its storage, through `FirstRead` when not every entity was filled."""
        if self._count(store) <= self._prefill(store):
            return self.storage[store]
        return FirstRead(
            self.storage[store], self._compute(store), self.executor, clock, lambda s, now: self.recorder.refresh_work(store, s, now)
        )

    def _compute(self, name: str) -> Callable[[np.ndarray], np.ndarray]:
        """The model call that makes a store's vectors from entity ids."""
        model = self.model
        return model.item_side if self.scenario.store_entities(name) == "items" else lambda ids: model.user_interest(ids.tolist())

    def _pools(self, clock: Clock, flow: Flow) -> list[Slot]:
        """Each stage slot's pool, or its nodes behind its balancer (the nodes share the stage's work)."""
        pools: list[Slot] = []
        for slot, call in enumerate(flow.calls):
            config = self.scenario.stages[call.stage]
            rng = stream(self.scenario.seed, f"batch-service:{call.stage}")
            vectors = self._vectors(clock, call.vectors) if call.vectors else None
            sampler = self.samplers[call.stage]
            entities = self.scenario.store_entities(call.vectors) if call.vectors else "items"
            work = LiveStage(clock, slot, call, sampler, rng, self.model, self.executor, vectors, config.per_candidate_us, entities)
            if config.nodes == 1:
                pools.append(self._node(clock, slot, config, work, None))
            else:
                nodes = [self._node(clock, slot, config, work, index) for index in range(config.nodes)]
                copies = sampler if work.op is None else None  # an awaited stage's hedge copies draw their service
                pools.append(LiveFleet(clock, call.stage, config, nodes, self.scenario.seed, self.recorder, copies))
        return pools

    def _node(self, clock: Clock, slot: int, config: Stage, work: LiveStage, index: int | None) -> LivePool:
        """A stage's pool, or its node `index` (its visits abandonable with a deadline or hedging, or lost with it)."""
        if config.batch is None:
            abandonable = self.deadline_s is not None or config.hedge_after_ms is not None or work.call.stage in self.lost
            return LivePool(clock, slot, config, work, self.recorder, index, abandonable)
        return LiveBatchingPool(clock, slot, config, work, self.recorder, index)

    def _background(self, clock: Clock, pools: list[Slot]) -> None:
        scenario, loop = self.scenario, clock.loop
        listeners = {
            name: LiveRefresh(
                clock,
                self.storage[name],
                self._compute(name),
                self.executor,
                lambda work: self._spawn(loop, work),
                FILL_BATCH[self.scenario.store_entities(name)],
            )
            for name in self.stores
        }
        world = world_changes(scenario, world_item_changes)
        for pool in store_backgrounds(scenario, self.samplers, self.stores, self.recorder.gauge, world, listeners).values():
            self._spawn(loop, drive(clock, pool.run()))
        works = {pool.work.call.stage: pool.work for pool in pools if isinstance(pool.work, LiveStage)}
        fleets = {pool.work.call.stage: pool for pool in pools if isinstance(pool, LiveFleet) and isinstance(pool.work, LiveStage)}
        for spec in [*version_flushes(scenario, self.caches, self.samplers, world), *scenario.faults]:
            self._spawn(loop, self._fault(clock, spec, works, fleets))

    def _spawn(self, loop: asyncio.AbstractEventLoop, work: Any) -> asyncio.Task[Any]:
        task = loop.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self.failure is None:
            self.failure = task.exception()

    async def _fault(self, clock: Clock, spec: Fault, works: dict[str, LiveStage], fleets: dict[str, LiveFleet]) -> None:
        """Apply one fault, or a versioned cache's flush (`core.refresh.version_flushes`), at its time (a fault on a
        cache or stage this pipeline lacks does nothing; nearline outages are the refresh pools' own, `core.refresh`)."""
        await clock.until(spec.at_s)
        if isinstance(spec, CacheFlush) and spec.cache in self.caches:
            lost = self.caches[spec.cache].flush(spec.fraction)
            await self.storage[spec.cache].delete_many(lost)
        elif isinstance(spec, StageSlowdown) and spec.stage in works:
            work = works[spec.stage]
            work.slowdown *= spec.factor
            await asyncio.sleep(spec.duration_s)
            work.slowdown /= spec.factor
        elif isinstance(spec, NodeLoss) and spec.stage in fleets:
            await fleets[spec.stage].lose(spec.nodes, spec.duration_s)

    # --- requests ------------------------------------------------------------------------------------
    async def _handle(self, request: Request, flow: Flow, pools: list[Slot], clock: Clock) -> None:
        work = self._drive(request, flow.run(request), pools)
        outcome = await (work if self.deadline_s is None else self._within_deadline(request, work, clock))
        now = clock()
        released = flow.end(request, now)  # its entries of request-keyed caches leave with it
        self.recorder.finish(request, outcome, now)
        for cache, key in released:
            await self.storage[cache].delete_many([key])
        self.trace.record(request)

    async def _within_deadline(self, request: Request, work: Coroutine[Any, Any, Outcome], clock: Clock) -> Outcome:
        """The request's flow, abandoned `deadline_ms` after its scheduled arrival (its task cancelled): it ends
        timed out."""
        assert self.deadline_s is not None
        task = self._spawn(clock.loop, work)
        done, _ = await asyncio.wait((task,), timeout=max(0.0, request.arrival_s + self.deadline_s - clock()))
        if done:
            return task.result()
        task.cancel()
        await asyncio.wait((task,))  # its queued visits have left their queues
        return Outcome.TIMED_OUT

    async def _drive(self, request: Request, flow: FlowRun, pools: list[Slot]) -> Outcome:
        """Carry out what the request's flow asks (`core.flow`) until it ends; its outcome."""
        answer: Any = None
        while True:
            try:
                op = flow.send(answer)
            except StopIteration as end:
                return end.value
            kind = type(op)
            if kind is Visit:
                pool = pools[op.slot]
                answer = await (pool.serve(request) if self.recorder.trace is None else self._traced(request, op.slot, pool))
            elif kind is Fork:
                answer = max(await asyncio.gather(*(self._drive(request, branch, pools) for branch in op.flows)))
            elif kind is Pause:
                await asyncio.sleep(op.s)
                answer = None
            elif kind is Load:
                value = await self.storage[op.cache].get(op.key)
                if value is None:
                    raise RuntimeError(f"{op.cache}: the policy holds key {op.key} but its storage has no value")
                field = self.cache_fields[op.cache]
                if field is not None:
                    request.payload[field] = value
                answer = None
            else:
                assert isinstance(op, Save)
                save = self._save(request, op)
                await (save if self.deadline_s is None else asyncio.shield(self._spawn(asyncio.get_running_loop(), save)))
                answer = None

    async def _traced(self, request: Request, slot: int, pool: Slot) -> Outcome:
        """A visit whose failure (rejected, timed out, or abandoned at the request's deadline) is kept in the request's
        timeline; a fleet reports its own parts."""
        trace, clock = self.recorder.trace, pool.clock
        entered = clock()
        assert trace is not None
        if isinstance(pool, LiveFleet):
            return await pool.serve(request)
        try:
            outcome = await pool.serve(request)
        except asyncio.CancelledError:
            trace.visit(request.id, slot, entered, clock(), None)
            raise
        trace.visit(request.id, slot, entered, clock(), outcome)
        return outcome

    async def _save(self, request: Request, op: Save) -> None:
        """Store a computed value the cache policy has taken in (with a deadline, in a task of its own that finishes
        even if the request is abandoned meanwhile: the storage must hold what the policy holds)."""
        storage = self.storage[op.cache]
        field = self.cache_fields[op.cache]
        await storage.set(op.key, request.payload[field] if field is not None else np.ones((), MARKER))
        if op.dropped is not None:
            await storage.delete_many([op.dropped])

    async def _generate(self, clock: Clock, flow: Flow, pools: list[Slot], duration_s: float, stop: Callable[[], bool]) -> None:
        """Issue every request at its scheduled time, each as its own task (open loop)."""
        scenario, recorder, schedule = self.scenario, self.recorder, self.schedule
        source = RequestSource.for_pipeline(scenario, self.pipeline, self.samplers, self.caches, self.stores)
        items, rng = ZipfSampler(scenario.traffic.items), stream(scenario.seed, "live-candidates")
        for requests in source.blocks(duration_s):
            self.trace.arrive(requests)
            counts = np.array([r.candidates for r in requests])
            candidates = np.split(items.sample(rng, int(counts.sum())), np.cumsum(counts)[:-1])
            lags = []
            for request, ids in zip(requests, candidates):
                await clock.until(request.arrival_s)
                while clock() < request.arrival_s:  # never early: the last few microseconds are yielded away
                    await asyncio.sleep(0)
                if stop() or self.failure is not None:
                    return
                request.payload = {"user": request.user, "candidates": ids}
                recorder.arrival(request)
                self._spawn(clock.loop, self._handle(request, flow, pools, clock))
                if request.measured:
                    lags.append(clock() - request.arrival_s)
                    if not schedule.issued:
                        schedule.first_s = request.arrival_s
                    schedule.issued += 1
                    schedule.last_s = request.arrival_s + lags[-1]
            schedule.lag_ms.add(np.array(lags) * 1000)
            recorder.flush()

    async def run(
        self,
        duration_s: float,
        progress: Callable[[str, float, float], None],
        stop: Callable[[], bool],
    ) -> Recorder:
        """Fill the index, then offer the scenario's requests for `duration_s` seconds, drain for at most
        `drain_s` (or until `stop()` says so); the recorder, marked partial when stopped early."""
        loop = asyncio.get_running_loop()
        self._open_storage()
        pools: list[Slot] = []
        try:
            await self._fill(lambda name, done, total: progress(f"{self.pipeline}: {name} index", done, total))
            clock = Clock(loop, await measure_wake())
            flow = Flow(self.scenario.pipeline(self.pipeline), self.caches, self.stores, clock, storage=True)
            pools = self._pools(clock, flow)
            self._background(clock, pools)
            self._spawn(loop, self._progress(clock, duration_s, progress))
            await self._generate(clock, flow, pools, duration_s, stop)
            stopped_s = clock() if stop() else None  # arrivals stopped early
            await self._drain(clock, stop)
            if self.failure is not None:
                raise self.failure
            now = clock()
            if stop():
                self.recorder.stop(now if stopped_s is None else stopped_s)
            self.recorder.close(now)
            return self.recorder
        finally:
            stopped = [task for pool in pools for task in pool.close()]
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*stopped, *self.tasks, return_exceptions=True)
            for storage in self.storage.values():
                await storage.clear()
                await storage.close()

    async def _drain(self, clock: Clock, stop: Callable[[], bool]) -> None:
        """Wait for the requests in flight: at most `drain_s`, and at most STOP_DRAIN_S once a stop is asked."""
        deadline = clock() + self.scenario.drain_s
        while self.recorder.live and self.failure is None and clock() < deadline:
            if stop():
                deadline = min(deadline, clock() + STOP_DRAIN_S)
            await asyncio.sleep(DRAIN_POLL_S)

    async def _progress(self, clock: Clock, duration_s: float, progress: Callable[[str, float, float], None]) -> None:
        while True:
            progress(self.pipeline, min(clock(), duration_s), duration_s)
            await asyncio.sleep(0.25)
