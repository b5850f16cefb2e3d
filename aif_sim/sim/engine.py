"""Run one pipeline of a scenario as a discrete-event simulation (simpy) over the run's request stream.

The engine carries out what each request's flow (`core.flow`, written once for both engines) asks of it,
runs the system's background processes (`sim.background`: nearline refresh, model versions, faults) and
changes every counter through the recorder.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import numpy as np
import simpy

from aif_sim.core.cache import CachePolicy
from aif_sim.core.flow import Flow, FlowRun, Fork, Visit
from aif_sim.core.latency import Sampler
from aif_sim.core.nearline import NearlineStore
from aif_sim.core.pipelines import PIPELINES, caches_of, calls_of, stages_of
from aif_sim.core.request import Outcome, Request, Window
from aif_sim.core.shadow import ShadowSampling
from aif_sim.core.traffic import ZipfSampler, mean_rate, request_blocks, stream
from aif_sim.metrics.recorder import FaultWindow, Recorder, RequestSink
from aif_sim.scenario.schema import Scenario
from aif_sim.sim.background import NearlineRefresh, Outage, fault, gauges, publisher
from aif_sim.sim.pools import BatchingPool, StagePool

PROGRESS_STEPS = 200
STEP_REQUESTS = 5000  # at most about this many arrivals between progress reports and stop checks


class PipelineSimulation:
    """One pipeline over one scenario: stage pools, request flow, recorder."""

    def __init__(self, scenario: Scenario, pipeline: str, samplers: dict[str, Sampler], sink: RequestSink | None = None) -> None:
        self.scenario = scenario
        self.samplers = samplers
        self.env = simpy.Environment()
        self.stage_names = stages_of(pipeline)
        self.caches = self._caches(pipeline)
        self.stores = self._stores(pipeline)
        stages = {name: (scenario.stages[name].servers, scenario.stages[name].batch is not None) for name in self.stage_names}
        window = Window(scenario.warmup_s, scenario.duration_s)
        faults = [FaultWindow(f.kind, f.at_s, f.at_s + getattr(f, "duration_s", 0.0)) for f in scenario.faults]
        self.recorder = Recorder(pipeline, stages, window, scenario.slo_p99_ms, sink, self.caches, list(self.stores), faults)
        self.pools = {name: self._pool(slot, name) for slot, name in enumerate(self.stage_names)}
        self.slots = list(self.pools.values())
        shadow = self._shadow()
        env = self.env
        self.flow = Flow(pipeline, self.caches, self.stores, lambda: env.now, shadow)
        if shadow is not None:
            self.recorder.shadow_samples = shadow.samples
        if "items" in self.stores and scenario.nearline is not None:
            self.recorder.index_bytes = scenario.traffic.items.count * scenario.nearline.vector_bytes
        reads = [(slot, call.reads) for slot, call in enumerate(self.flow.calls) if call.reads in self.caches]  # read-through visits
        self.reads_caches = bool(reads)
        self.miss_slots = [(slot, cache) for slot, cache in reads if f"cache:{cache}" in samplers]  # those with a miss latency
        self.arrivals_done = False
        self._background()

    def _caches(self, pipeline: str) -> dict[str, CachePolicy]:
        """The cache policies of the caches this pipeline consults and the scenario configures."""
        config = self.scenario.caches
        caches = {}
        for name in caches_of(pipeline):
            spec = getattr(config, name) if config is not None else None
            if spec is not None:
                caches[name] = CachePolicy(spec.capacity, spec.ttl_s)
        return caches

    def _stores(self, pipeline: str) -> dict[str, NearlineStore]:
        """The nearline stores this pipeline reads, when the scenario has a nearline section."""
        nearline = self.scenario.nearline
        if nearline is None:
            return {}
        read = {call.vectors for step in PIPELINES[pipeline] for call in calls_of(step) if call.vectors}
        traffic = self.scenario.traffic
        stores = {}
        for name in sorted(read):
            refresh = nearline.refresh if name == "items" else nearline.user_refresh
            count = traffic.items.count if name == "items" else traffic.users.count
            store = NearlineStore(count, always_fresh=refresh is not None and refresh.mode == "periodic" and refresh.interval_s == 0)
            store.consistent = nearline.version_policy == "consistent"
            stores[name] = store
        return stores

    def _shadow(self) -> ShadowSampling | None:
        """Which requests shadow scoring takes, when the scenario asks for it and the pipeline reads item vectors."""
        model = self.scenario.model
        if model is None or model.shadow_rate == 0 or "items" not in self.stores:
            return None
        rng = stream(self.scenario.seed, "shadow-candidates")
        return ShadowSampling(
            model.shadow_rate, model.shadow_candidates, model.shadow_requests, ZipfSampler(self.scenario.traffic.items), rng
        )

    def _item_updates(self) -> float | tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The item update rate, or the world's item changes when updates follow the model's world."""
        scenario, nearline = self.scenario, self.scenario.nearline
        assert nearline is not None
        if nearline.updates_from == "rate":
            return nearline.item_updates_per_s
        from aif_sim.model.shadow import world_item_changes  # torch: only for a scenario that follows the world

        assert scenario.model is not None
        return world_item_changes(scenario.model.checkpoints[0], scenario.traffic.items.count, scenario.duration_s + scenario.drain_s)

    def _background(self) -> None:
        env, scenario, nearline = self.env, self.scenario, self.scenario.nearline
        outage = Outage(env)
        for name, store in self.stores.items():
            assert nearline is not None
            items = name == "items"
            population = scenario.traffic.items if items else scenario.traffic.users
            refresh = NearlineRefresh(
                env,
                store,
                ZipfSampler(population),
                self._item_updates() if items else nearline.user_events_per_s,
                nearline.refresh if items else nearline.user_refresh,
                self.samplers.get(f"refresh:{name}"),
                stream(scenario.seed, f"nearline:{name}"),
                outage,
            )
            if items and nearline.model_publish_interval_s is not None:
                env.process(publisher(env, store, nearline.model_publish_interval_s, refresh.sweep_rate(), outage))
        for spec in scenario.faults:
            env.process(fault(env, spec, self.caches, self.pools, outage))
        if self.stores:
            env.process(gauges(env, self.recorder, self.stores))

    def _pool(self, slot: int, name: str) -> StagePool:
        config = self.scenario.stages[name]
        if config.batch is None:
            return StagePool(self.env, slot, config, self.recorder)
        rng = stream(self.scenario.seed, f"batch-service:{name}")
        return BatchingPool(self.env, slot, config, self.recorder, self.samplers[name], rng)

    # --- processes ---------------------------------------------------------------------------------
    def _arrivals(self) -> Generator[simpy.Event, Any, None]:
        env, scenario, recorder = self.env, self.scenario, self.recorder
        rngs = [stream(scenario.seed, f"service:{name}") for name in self.stage_names]
        miss_rngs = {cache: stream(scenario.seed, f"miss:{cache}") for _, cache in self.miss_slots}
        sample_rng, items = stream(scenario.seed, "candidate-sample"), ZipfSampler(scenario.traffic.items)
        sample_size = scenario.nearline.staleness_sample if scenario.nearline is not None else 0
        warmup, k, caches = scenario.warmup_s, len(self.stage_names), len(self.caches)
        for block in request_blocks(scenario.traffic, scenario.duration_s, scenario.seed):
            n = len(block.arrival_s)
            draws = [self._draw(name, rng, block.candidates) for name, rng in zip(self.stage_names, rngs)]
            services = (np.column_stack(draws) / 1000).tolist()  # seconds, a row per request
            miss_rows = self._miss_rows(miss_rngs, n, k) if self.reads_caches else None
            samples = items.sample(sample_rng, n * sample_size).reshape(n, sample_size) if "items" in self.stores else None
            for i, (arrival, user, candidates) in enumerate(zip(block.arrival_s.tolist(), block.user.tolist(), block.candidates.tolist())):
                yield env.timeout(arrival - env.now)
                request = Request(block.first_id + i, arrival, user, candidates, arrival >= warmup, services[i])
                if caches:
                    request.cache_hit = [np.nan] * caches
                if miss_rows is not None:
                    request.miss_s = miss_rows[i]
                if samples is not None:
                    request.sample = samples[i]
                recorder.arrival(request)
                env.process(self._handle(request))
            recorder.flush()  # accounts the requests finished so far: memory stays bounded by one block
        self.arrivals_done = True

    def _miss_rows(self, rngs: dict[str, np.random.Generator], n: int, k: int) -> list[list[float]]:
        """Per request and stage slot, the latency (s) a cache miss would add there (0 where no cache is read)."""
        misses = np.zeros((n, k))
        for slot, cache in self.miss_slots:
            misses[:, slot] = self.samplers[f"cache:{cache}"].sample(rngs[cache], n, 1.0) / 1000
        return misses.tolist()

    def _draw(self, name: str, rng: np.random.Generator, candidates: np.ndarray) -> np.ndarray:
        """Each request's service time (ms) at a stage, alone on a server: a profile measured by candidates
        reads the request's own count, one measured by batch a batch of one."""
        sampler = self.samplers[name]
        work = 1.0 if sampler.work_key == "batch" else candidates
        return sampler.sample(rng, len(candidates), work)

    def _handle(self, request: Request) -> Generator[simpy.Event, Any, None]:
        outcome = yield from self._drive(request, self.flow.run(request))
        self.recorder.finish(request, outcome, self.env.now)

    def _drive(self, request: Request, flow: FlowRun) -> Generator[simpy.Event, Any, Outcome]:
        """Carry out what the request's flow asks (`core.flow`) until it ends; its outcome."""
        slots, answer = self.slots, None
        while True:
            try:
                op = flow.send(answer)
            except StopIteration as end:
                return end.value
            if type(op) is Visit:
                answer = yield from slots[op.slot].serve(request)
            else:  # a Fork (the DES keeps no values, so its flows yield no Load or Save)
                assert type(op) is Fork
                branches = [self.env.process(self._drive(request, branch)) for branch in op.flows[:-1]]
                answer = yield from self._drive(request, op.flows[-1])  # the last branch runs in this process
                for branch in branches:
                    answer = max(answer, (yield branch))

    # --- running -----------------------------------------------------------------------------------
    def run(self, progress: Callable[[float], None] | None = None, stop: Callable[[], bool] | None = None) -> Recorder:
        """Simulate arrivals for duration_s, then drain for at most drain_s (or until `stop()` says so);
        return the recorder, marked partial when stopped early."""
        self.env.process(self._arrivals())
        horizon = self.scenario.duration_s + self.scenario.drain_s
        rate = mean_rate(self.scenario.traffic.arrival) or STEP_REQUESTS
        step = min(horizon / PROGRESS_STEPS, max(1.0, STEP_REQUESTS / rate))
        now = 0.0
        while now < horizon and not (self.arrivals_done and self.recorder.live == 0):
            if stop is not None and stop():
                self.recorder.stop(now)
                break
            now = min(now + step, horizon)
            self.env.run(until=now)
            if progress is not None:
                progress(now)
        self.recorder.close(now)
        return self.recorder
