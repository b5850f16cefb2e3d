"""Run one pipeline of a scenario as a discrete-event simulation over the run's request stream."""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from typing import Any, Protocol

import numpy as np
import simpy

from aif_sim.latency import Sampler
from aif_sim.metrics import PipelineMetrics, StageStats
from aif_sim.pipelines import PIPELINES, stages_of
from aif_sim.scenario import Scenario
from aif_sim.sim.stages import OK, REJECTED, BatchingPool, Request, StagePool, Window
from aif_sim.traffic import request_blocks, stream

PROGRESS_STEPS = 200


class RequestSink(Protocol):
    """Receives finished measured requests (the per-request output file)."""

    def add(self, pipeline: str, request: Request, latency_ms: float, stages: list[str]) -> None: ...


class PipelineSimulation:
    """One pipeline over one scenario: stage pools, request flow, metrics."""

    def __init__(
        self,
        scenario: Scenario,
        pipeline: str,
        samplers: dict[str, Sampler],
        sink: RequestSink | None = None,
    ) -> None:
        self.scenario = scenario
        self.pipeline = pipeline
        self.samplers = samplers
        self.sink = sink
        self.env = simpy.Environment()
        self.stage_names = stages_of(pipeline)
        self.window = Window(scenario.warmup_s, scenario.duration_s)
        stats = {name: StageStats(scenario.stages[name].servers) for name in self.stage_names}
        self.metrics = PipelineMetrics(pipeline, scenario.duration_s - scenario.warmup_s, stats, scenario.slo_p99_ms)
        self.pools = {name: self._pool(slot, name, stats[name]) for slot, name in enumerate(self.stage_names)}
        self.flow = [self.pools[s] if isinstance(s, str) else tuple(self.pools[b] for b in s) for s in PIPELINES[pipeline]]
        self.in_flight = 0
        self.arrivals_done = False

    def _pool(self, slot: int, name: str, stats: StageStats) -> StagePool:
        config = self.scenario.stages[name]
        if config.batch is None:
            return StagePool(self.env, slot, config, stats, self.window)
        rng = stream(self.scenario.seed, f"batch-service:{name}")
        return BatchingPool(self.env, slot, config, stats, self.window, self.samplers[name], rng)

    def _work(self, name: str) -> float:
        """Work of one unbatched service: the request's candidates, or a batch of one."""
        return 1.0 if self.samplers[name].work_key == "batch" else float(self.scenario.traffic.candidates)

    # --- processes ---------------------------------------------------------------------------------
    def _arrivals(self) -> Generator[simpy.Event, Any, None]:
        env, scenario = self.env, self.scenario
        rngs = [stream(scenario.seed, f"service:{name}") for name in self.stage_names]
        works = [self._work(name) for name in self.stage_names]
        warmup = scenario.warmup_s
        for block in request_blocks(scenario.traffic, scenario.duration_s, scenario.seed):
            n = len(block.arrival_s)
            draws = [self.samplers[name].sample(rng, n, work) for name, rng, work in zip(self.stage_names, rngs, works)]
            services = (np.column_stack(draws) / 1000).tolist()  # seconds, a row per request
            for i, (arrival, user, candidates) in enumerate(
                zip(block.arrival_s.tolist(), block.user.tolist(), block.candidates.tolist())
            ):
                yield env.timeout(arrival - env.now)
                measured = arrival >= warmup
                self.metrics.offered += measured
                self.metrics.in_flight += measured
                self.in_flight += 1
                request = Request(block.first_id + i, arrival, user, candidates, measured, services[i])
                env.process(self._handle(request))
            self.metrics.flush()  # keeps the histogram buffers bounded by one block
        self.arrivals_done = True

    def _handle(self, request: Request) -> Generator[simpy.Event, Any, None]:
        env = self.env
        for step in self.flow:
            if isinstance(step, tuple):  # parallel group: the last branch runs in this process
                branches = [env.process(pool.serve(request)) for pool in step[:-1]]
                outcome = yield from step[-1].serve(request)
                for branch in branches:
                    outcome = max(outcome, (yield branch))
            else:
                outcome = yield from step.serve(request)
            if outcome != OK:
                self._finish_failed(request, outcome)
                return
        self._finish(request)

    def _finish(self, request: Request) -> None:
        self.in_flight -= 1
        latency_ms = (self.env.now - request.arrival_s) * 1000
        metrics = self.metrics
        metrics.timeseries.add(self.env.now, latency_ms)
        if not request.measured:
            return
        metrics.in_flight -= 1
        metrics.completed += 1
        metrics.latency.add(latency_ms)
        if metrics.slo_ms is not None and latency_ms > metrics.slo_ms:
            metrics.over_slo += 1
        if self.sink is not None:
            self.sink.add(self.pipeline, request, latency_ms, self.stage_names)

    def _finish_failed(self, request: Request, outcome: int) -> None:
        self.in_flight -= 1
        if request.measured:
            self.metrics.in_flight -= 1
            if outcome == REJECTED:
                self.metrics.rejected += 1
            else:
                self.metrics.timed_out += 1

    # --- running -----------------------------------------------------------------------------------
    def run(self, progress: Callable[[float], None] | None = None) -> PipelineMetrics:
        """Simulate arrivals for duration_s, then drain for at most drain_s; return the metrics."""
        self.env.process(self._arrivals())
        horizon = self.scenario.duration_s + self.scenario.drain_s
        step = horizon / PROGRESS_STEPS
        now = 0.0
        while now < horizon and not (self.arrivals_done and self.in_flight == 0):
            now = min(now + step, horizon)
            self.env.run(until=now)
            if progress is not None:
                progress(now)
        self.metrics.timeseries.close_until(math.ceil(now))
        self.metrics.flush()
        return self.metrics
