"""Run one pipeline of a scenario as a discrete-event simulation (simpy) over the run's request stream.

The engine carries out what each request's flow (`core.flow`, written once for both engines) asks of it,
runs the system's background processes (`sim.background`: nearline refresh, model versions, faults) and
changes every counter through the recorder.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import simpy

from aif_sim.core.flow import Flow, FlowRun, Fork, Pause, Visit
from aif_sim.core.latency import Sampler
from aif_sim.core.replay import ServiceTrace
from aif_sim.core.request import Outcome, Request
from aif_sim.core.shadow import Retrieval
from aif_sim.core.system import RequestSource, cache_policies, nearline_stores, run_step_s, shadow_sampling
from aif_sim.core.traffic import stream
from aif_sim.metrics.recorder import Recorder, RequestSink
from aif_sim.scenario.schema import Scenario
from aif_sim.sim.background import start_background
from aif_sim.sim.fleet import Fleet
from aif_sim.sim.pools import BatchingPool, StagePool, cancellable


class PipelineSimulation:
    """One pipeline over one scenario: stage pools, request flow, recorder (`retrieve`: the shadow-scored world's
    retrieval, for a scenario that shadow-scores)."""

    def __init__(
        self,
        scenario: Scenario,
        pipeline: str,
        samplers: dict[str, Sampler],
        sink: RequestSink | None = None,
        trace: ServiceTrace | None = None,
        timelines: float = 0.0,
        retrieve: Retrieval | None = None,
    ) -> None:
        """`trace`: arrival and service times to replay in place of the draws where it has them (`core.replay`);
        `timelines`: the share of requests whose timelines are kept (`metrics.trace`); `retrieve`: the
        shadow-scored world's retrieval (`core.shadow`)."""
        self.scenario = scenario
        self.traced = trace is not None
        self.samplers = samplers
        self.env = simpy.Environment()
        self.stage_names = scenario.pipeline(pipeline).stages
        self.caches = cache_policies(scenario, pipeline)
        self.stores = nearline_stores(scenario, pipeline)
        self.recorder = Recorder.for_pipeline(scenario, pipeline, sink, self.caches, list(self.stores))
        if timelines > 0:
            self.recorder.start_trace(timelines, self.stores)
        self.pools = {name: self._pool(slot, name) for slot, name in enumerate(self.stage_names)}
        self.slots = list(self.pools.values())
        shadow = shadow_sampling(scenario, self.stores, retrieve)
        env = self.env
        self.flow = Flow(scenario.pipeline(pipeline), self.caches, self.stores, lambda: env.now, shadow)
        if shadow is not None:
            self.recorder.shadow_samples = shadow.samples
        self.source = RequestSource.for_pipeline(scenario, pipeline, samplers, self.caches, self.stores, trace)
        self.arrivals_done = False
        self.deadline_s = scenario.deadline_ms / 1000 if scenario.deadline_ms is not None else None
        self.processes: dict[int, list[simpy.Process]] = {}  # with a deadline: the processes of each request in flight
        start_background(self.env, scenario, samplers, self.stores, self.recorder, self.caches, self.pools)

    def _pool(self, slot: int, name: str) -> StagePool | Fleet:
        """The stage's pool, or its nodes behind its balancer."""
        config = self.scenario.stages[name]
        rng = stream(self.scenario.seed, f"batch-service:{name}") if config.batch is not None else None

        def node(index: int | None) -> StagePool:
            if rng is None:
                return StagePool(self.env, slot, config, self.recorder, index)
            return BatchingPool(self.env, slot, config, self.recorder, self.samplers[name], rng, index, self.traced)

        if config.nodes == 1:
            return node(None)
        nodes = [node(i) for i in range(config.nodes)]
        return Fleet(self.env, name, config, nodes, self.samplers[name], self.scenario.seed, self.recorder, self.spawn)

    # --- processes ---------------------------------------------------------------------------------
    def _arrivals(self) -> Generator[simpy.Event, Any, None]:
        env, recorder = self.env, self.recorder
        for requests in self.source.blocks(self.scenario.duration_s):
            for request in requests:
                yield env.timeout(request.arrival_s - env.now)
                recorder.arrival(request)
                env.process(self._handle(request))
            recorder.flush()  # accounts the requests finished so far: memory stays bounded by one block
        self.arrivals_done = True

    def _handle(self, request: Request) -> Generator[simpy.Event, Any, None]:
        if self.deadline_s is None:
            outcome = yield from self._drive(request, self.flow.run(request))
        else:
            outcome = yield from self._within_deadline(request)
        self.flow.end(request, self.env.now)
        self.recorder.finish(request, outcome, self.env.now)

    def spawn(self, request: Request, work: Generator[simpy.Event, Any, Outcome]) -> simpy.Process:
        """A process doing part of a request's work (a parallel branch, a shard), abandoned with the request."""
        if self.deadline_s is None:
            return self.env.process(work)
        process = self.env.process(cancellable(work))
        self.processes[request.id].append(process)
        return process

    def _within_deadline(self, request: Request) -> Generator[simpy.Event, Any, Outcome]:
        """The request's flow, abandoned `deadline_ms` after its arrival: its queued visits leave their queues,
        the ones in service run to their end as wasted work, and it ends timed out."""
        self.processes[request.id] = []
        main = self.spawn(request, self._drive(request, self.flow.run(request)))
        expiry = self.env.timeout(request.arrival_s + self.deadline_s - self.env.now)
        yield main | expiry
        processes = self.processes.pop(request.id)
        if main.triggered:
            return main.value
        for process in processes:
            if process.is_alive:
                process.interrupt()
        return Outcome.TIMED_OUT

    def _drive(self, request: Request, flow: FlowRun) -> Generator[simpy.Event, Any, Outcome]:
        """Carry out what the request's flow asks (`core.flow`) until it ends; its outcome."""
        slots, answer = self.slots, None
        while True:
            try:
                op = flow.send(answer)
            except StopIteration as end:
                return end.value
            if type(op) is Visit:
                if self.recorder.trace is None:
                    answer = yield from slots[op.slot].serve(request)
                else:
                    answer = yield from self._traced(request, op.slot)
            elif type(op) is Pause:
                yield self.env.timeout(op.s)
                answer = None
            else:  # a Fork (the DES keeps no values, so its flows yield no Load or Save)
                assert type(op) is Fork
                branches = [self.spawn(request, self._drive(request, branch)) for branch in op.flows[:-1]]
                answer = yield from self._drive(request, op.flows[-1])  # the last branch runs in this process
                for branch in branches:
                    answer = max(answer, (yield branch))

    def _traced(self, request: Request, slot: int) -> Generator[simpy.Event, Any, Outcome]:
        """A visit whose failure (rejected, timed out, or abandoned at the request's deadline) is kept in the request's
        timeline; a fleet reports its own parts."""
        pool, trace, entered = self.slots[slot], self.recorder.trace, self.env.now
        assert trace is not None
        if isinstance(pool, Fleet):
            return (yield from pool.serve(request))
        try:
            outcome = yield from pool.serve(request)
        except simpy.Interrupt:
            trace.visit(request.id, slot, entered, self.env.now, None)
            raise
        trace.visit(request.id, slot, entered, self.env.now, outcome)
        return outcome

    # --- running -----------------------------------------------------------------------------------
    def run(self, progress: Callable[[float], None] | None = None, stop: Callable[[], bool] | None = None) -> Recorder:
        """Simulate arrivals for duration_s, then drain for at most drain_s (or until `stop()` says so);
        return the recorder, marked partial when stopped early."""
        self.env.process(self._arrivals())
        horizon = self.scenario.duration_s + self.scenario.drain_s
        step = run_step_s(self.scenario)
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
