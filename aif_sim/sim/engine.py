"""Run one pipeline of a scenario as a discrete-event simulation (simpy) over the run's request stream.

The engine interprets the pipeline's steps (`core.pipelines`): a `Call` is a visit to a stage pool,
a `Parallel` step runs its branches together and joins on the last (the last branch runs in the
request's own process), a `Cached` call without a configured cache is its call. Every counter is
changed through the recorder.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import numpy as np
import simpy

from aif_sim.core.latency import Sampler
from aif_sim.core.pipelines import stages_of, step_slots
from aif_sim.core.request import Outcome, Request, Window
from aif_sim.core.traffic import request_blocks, stream
from aif_sim.metrics.recorder import Recorder, RequestSink
from aif_sim.scenario.schema import Scenario
from aif_sim.sim.pools import BatchingPool, StagePool

PROGRESS_STEPS = 200
MAX_STEP_S = 1.0  # simulated seconds between progress reports and stop checks

ServeFn = Callable[[Request], Generator[simpy.Event, Any, Outcome]]
Flow = list[tuple[ServeFn, tuple[ServeFn, ...]]]  # per step: the visit run in the request's process, and the other branches


class PipelineSimulation:
    """One pipeline over one scenario: stage pools, request flow, recorder."""

    def __init__(self, scenario: Scenario, pipeline: str, samplers: dict[str, Sampler], sink: RequestSink | None = None) -> None:
        self.scenario = scenario
        self.samplers = samplers
        self.env = simpy.Environment()
        self.stage_names = stages_of(pipeline)
        stages = {name: (scenario.stages[name].servers, scenario.stages[name].batch is not None) for name in self.stage_names}
        self.recorder = Recorder(pipeline, stages, Window(scenario.warmup_s, scenario.duration_s), scenario.slo_p99_ms, sink)
        pools = [self._pool(slot, name) for slot, name in enumerate(self.stage_names)]
        self.flow: Flow = []
        for slots in step_slots(pipeline):
            group = [pools[slot].serve for slot in slots]
            self.flow.append((group[-1], tuple(group[:-1])))
        self.arrivals_done = False

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
        warmup = scenario.warmup_s
        for block in request_blocks(scenario.traffic, scenario.duration_s, scenario.seed):
            draws = [self._draw(name, rng, block.candidates) for name, rng in zip(self.stage_names, rngs)]
            services = (np.column_stack(draws) / 1000).tolist()  # seconds, a row per request
            for i, (arrival, user, candidates) in enumerate(zip(block.arrival_s.tolist(), block.user.tolist(), block.candidates.tolist())):
                yield env.timeout(arrival - env.now)
                request = Request(block.first_id + i, arrival, user, candidates, arrival >= warmup, services[i])
                recorder.arrival(request)
                env.process(self._handle(request))
            recorder.flush()  # accounts the requests finished so far: memory stays bounded by one block
        self.arrivals_done = True

    def _draw(self, name: str, rng: np.random.Generator, candidates: np.ndarray) -> np.ndarray:
        """Each request's service time (ms) at a stage, alone on a server: a profile measured by candidates
        reads the request's own count, one measured by batch a batch of one."""
        sampler = self.samplers[name]
        work = 1.0 if sampler.work_key == "batch" else candidates
        return sampler.sample(rng, len(candidates), work)

    def _handle(self, request: Request) -> Generator[simpy.Event, Any, None]:
        env = self.env
        for serve, others in self.flow:
            if others:  # a parallel step: the other branches get processes, the last runs in this one
                branches = [env.process(other(request)) for other in others]
                outcome = yield from serve(request)
                for branch in branches:
                    outcome = max(outcome, (yield branch))
            else:
                outcome = yield from serve(request)
            if outcome:
                self.recorder.finish(request, Outcome(outcome), env.now)
                return
        self.recorder.finish(request, Outcome.COMPLETED, env.now)

    # --- running -----------------------------------------------------------------------------------
    def run(self, progress: Callable[[float], None] | None = None, stop: Callable[[], bool] | None = None) -> Recorder:
        """Simulate arrivals for duration_s, then drain for at most drain_s (or until `stop()` says so);
        return the recorder, marked partial when stopped early."""
        self.env.process(self._arrivals())
        horizon = self.scenario.duration_s + self.scenario.drain_s
        step = min(horizon / PROGRESS_STEPS, MAX_STEP_S)
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
