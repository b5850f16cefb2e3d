"""Stage pools: servers behind one FIFO queue, with optional queue limit, timeout and batching (a stage's pool,
or one node of a fleet: `sim.fleet`).

`serve(request)` is a simpy generator that returns the visit's `Outcome`. A request arriving when
every server is busy and `queue_limit` requests wait is rejected. The timeout bounds a request's
wait in the stage's queue: one not started within `timeout_ms` leaves it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Generator
from typing import Any

import numpy as np
import simpy

from aif_sim.core.batching import BatchQueue, Waiting
from aif_sim.core.latency import Sampler
from aif_sim.core.request import Outcome, Request
from aif_sim.metrics.recorder import Recorder
from aif_sim.scenario.schema import Stage

COMPLETED = Outcome.COMPLETED


LOST = "node lost"  # the cause of the interrupt that fails the visits of a node that goes down


class Part:
    """One shard, or copy, of a visit on a node of a fleet (`sim.fleet`): its candidates, its work (s, at the stage's
    normal speed), its service (s: its work, slowed down as the stage is when it starts), the time it would take alone
    with no waiting (`alone`), and when it started and ended. A part sent again (its node lost) is the same work,
    slowed down as the stage is when it starts again."""

    __slots__ = ("work", "service", "alone", "candidates", "started", "ended", "label")

    def __init__(self, service: float, candidates: int, label: str = "visit") -> None:
        self.work = self.service = self.alone = service
        self.candidates = candidates
        self.started = self.ended = math.nan
        self.label = label  # what the part is, in a request's timeline: the visit, `shard K`, `hedge copy`


def cancellable(work: Generator[simpy.Event, Any, Outcome]) -> Generator[simpy.Event, Any, Outcome]:
    """A request's work in a process of its own: abandoned (interrupted: a deadline, a losing hedge copy), it ends
    timed out; where it waited or ran, the pool has already let it go."""
    try:
        return (yield from work)
    except simpy.Interrupt:
        return Outcome.TIMED_OUT


class ServerPool:
    """`servers` identical servers with a FIFO queue of waiters.

    Lighter than simpy.Resource: a request that finds a free server takes it without an event,
    and a finishing server is handed straight to the first live waiter.
    """

    def __init__(self, env: simpy.Environment, servers: int) -> None:
        self.env = env
        self.servers = servers
        self.busy = 0
        self.queue: deque[simpy.Event] = deque()
        self.abandoned: set[simpy.Event] = set()  # waiters that left but still sit in the deque
        self.queued = 0  # live waiters

    def try_acquire(self) -> simpy.Event | None:
        """None if a server was free and is now held; otherwise an event that fires when one is handed over."""
        if self.busy < self.servers:
            self.busy += 1
            return None
        waiter = self.env.event()
        self.queue.append(waiter)
        self.queued += 1
        return waiter

    def abandon(self, waiter: simpy.Event) -> None:
        """Withdraw a waiter that has not been served (it stays in the deque until skipped)."""
        self.abandoned.add(waiter)
        self.queued -= 1

    def release(self) -> None:
        """Free a server: hand it to the first live waiter, if any."""
        while self.queue:
            waiter = self.queue.popleft()
            if waiter in self.abandoned:
                self.abandoned.discard(waiter)
                continue
            self.queued -= 1
            waiter.succeed()
            return
        self.busy -= 1


class StagePool:
    """A pool of `servers` serving one request at a time each."""

    def __init__(self, env: simpy.Environment, slot: int, config: Stage, recorder: Recorder, node: int | None = None) -> None:
        """A stage's pool, or node `node` of a stage of several nodes (its `servers / nodes` threads; its busy time
        is also accounted per node)."""
        self.env = env
        self.slot = slot
        self.node = node
        self.servers = config.threads_per_node
        self.pool = ServerPool(env, self.servers)
        self.queue_limit = config.queue_limit
        self.timeout_s = config.timeout_ms / 1000 if config.timeout_ms is not None else None
        self.recorder = recorder
        self.slowdown = 1.0  # service-time multiplier (a stage_slowdown fault)
        self.visiting: dict[simpy.Process, None] = {}  # on a fleet's node: the processes of the visits it holds, in the
        # order they came (a node lost fails them in that order: a set's order would follow memory addresses)

    def serve_part(self, request: Request, part: Part) -> Generator[simpy.Event, Any, Outcome]:
        """A part of a visit on a node of a fleet, failed (rejected) if the node is lost meanwhile (`lose`)."""
        process = self.env.active_process
        assert process is not None
        self.visiting[process] = None
        sent, outcome = self.env.now, None
        part.started = part.ended = math.nan
        try:
            outcome = yield from self.serve(request, part)
            return outcome
        finally:
            self.visiting.pop(process, None)
            trace = self.recorder.trace
            if trace is not None:
                assert self.node is not None
                trace.part(request.id, self.slot, part.label, self.node, (sent, part.started, self._part_end(part, outcome)), outcome)

    def _part_end(self, part: Part, outcome: Outcome | None) -> float:
        """When a part ended: now, or at the end of its service when its request left it in service (it runs on)."""
        if outcome is COMPLETED:
            return part.ended
        if outcome is None and part.started == part.started:
            return part.started + part.service
        return self.env.now

    def lose(self) -> None:
        """The node goes down: every visit it holds, queued or in service, fails at once; it comes back empty."""
        for process in list(self.visiting):
            process.interrupt(LOST)
        self.pool = ServerPool(self.env, self.servers)

    @property
    def outstanding(self) -> int:
        """Requests at the pool: queued and in service (a node's load, as a balancer sees it)."""
        return self.pool.busy + self.pool.queued

    def serve(self, request: Request, part: Part | None = None) -> Generator[simpy.Event, Any, Outcome]:
        """The request's visit (its times written to the request), or one `part` of it (its times to the part)."""
        env, pool = self.env, self.pool
        arrived = started = env.now
        if pool.busy < pool.servers:  # a free server: taken without an event
            pool.busy += 1
        else:
            if self.queue_limit is not None and pool.queued >= self.queue_limit:
                return Outcome.REJECTED
            waiter = env.event()
            pool.queue.append(waiter)
            pool.queued += 1
            try:
                if self.timeout_s is None:
                    yield waiter
                else:
                    yield waiter | env.timeout(self.timeout_s)
                    if not waiter.triggered:
                        pool.abandon(waiter)
                        return Outcome.TIMED_OUT
            except simpy.Interrupt as stop:  # the request was abandoned (its deadline) while it waited here
                if stop.cause is LOST:
                    return Outcome.REJECTED  # the queue went down with the node
                if waiter.triggered:
                    pool.release()  # a server was just handed over: pass it on
                else:
                    pool.abandon(waiter)
                raise
            started = env.now
        service = request.service_s[self.slot] if part is None else part.work
        if self.slowdown != 1.0:
            service *= self.slowdown
            if part is None:
                request.service_s[self.slot] = service  # the request's own work, as no-contention sees it
            else:
                part.service = part.alone = service
        if self.node is not None:
            self.recorder.node_busy(self.slot, self.node, started, service, request.measured)
        if part is not None:
            part.started = started
        try:
            yield env.timeout(service)
        except simpy.Interrupt as stop:
            if stop.cause is LOST:  # the node went down with the work: its busy time ends here
                self.recorder.cut(self.slot, self.node, env.now, started + service)
                return Outcome.REJECTED
            self.recorder.wasted(self.slot, started, service, self.node)  # abandoned: the server finishes it for nothing
            env.process(self._release_at(pool, started + service))
            raise
        pool.release()
        if part is None:
            base = 3 * self.slot
            request.times[base : base + 3] = (arrived, started, started + service)  # started + service is env.now
        else:
            part.started, part.ended = started, env.now
        return COMPLETED

    def _release_at(self, pool: ServerPool, end_s: float) -> Generator[simpy.Event, Any, None]:
        yield self.env.timeout(end_s - self.env.now)
        pool.release()


class _Waiting(Waiting):
    """A request waiting in a batching queue; `picked` fires when its batch starts (only with a timeout), `done` when it
    ends; `part`: on a node of a fleet, the part of the visit it is (its times go there)."""

    __slots__ = ("picked", "done", "taken", "part")

    def __init__(self, request: Request, arrived: float, picked: simpy.Event | None, done: simpy.Event, part: Part | None) -> None:
        super().__init__(request, arrived)
        self.picked, self.done, self.taken, self.part = picked, done, False, part


class BatchingPool(StagePool):
    """Servers that take up to `max_size` requests at once.

    A dispatcher claims a free server, then waits until `max_size` requests are queued or the
    oldest has waited `max_wait_ms`, and serves them as one batch; requests keep queueing while
    every server is busy. A batch's service time is drawn at its size: a profile operator
    measured by batch reads the batch size, one measured by candidates the batch's candidates.
    `timeout_ms` bounds the wait until a request's batch starts. The queue limit follows the plain
    pool's rule: a request is rejected only when every server is serving a batch and `queue_limit`
    requests wait (a server held by the dispatcher while a batch fills counts as free). `traced`: the requests'
    services are a replayed trace (`core.replay`), and a batch takes its members' mean (their misses included).
    """

    def __init__(
        self,
        env: simpy.Environment,
        slot: int,
        config: Stage,
        recorder: Recorder,
        sampler: Sampler,
        rng: np.random.Generator,
        node: int | None = None,
        traced: bool = False,
    ) -> None:
        super().__init__(env, slot, config, recorder, node)
        self.traced = traced
        assert config.batch is not None
        self.max_size = config.batch.max_size
        self.max_wait_s = config.batch.max_wait_ms / 1000
        self.per_candidate_s = config.per_candidate_us / 1e6
        self.sampler, self.rng = sampler, rng
        self.waiting: BatchQueue[_Waiting] = BatchQueue()
        self.serving = 0  # servers serving a batch
        self.members = 0  # requests in the batches being served
        self._arrival = env.event()
        env.process(self._dispatch())

    def full(self) -> bool:
        return self.queue_limit is not None and self.serving >= self.servers and self.waiting.live >= self.queue_limit

    @property
    def outstanding(self) -> int:
        return self.waiting.live + self.members

    def serve(self, request: Request, part: Part | None = None) -> Generator[simpy.Event, Any, Outcome]:
        """The request's visit, served in a batch (its times written to the request, or to `part`: the visit on a
        node of a fleet)."""
        env = self.env
        if self.full():
            return Outcome.REJECTED
        waiting = _Waiting(request, env.now, env.event() if self.timeout_s is not None else None, env.event(), part)
        self.waiting.add(waiting)
        if not self._arrival.triggered:
            self._arrival.succeed()
        try:
            if waiting.picked is not None:
                yield waiting.picked | env.timeout(self.timeout_s)
                if not waiting.picked.triggered:
                    self.waiting.abandon(waiting)
                    return Outcome.TIMED_OUT
            return (yield waiting.done)
        except simpy.Interrupt:  # abandoned (its deadline): it leaves the queue; a batch already taken carries on
            if waiting.taken:
                waiting.abandoned = True  # without it: its times are not written when the batch ends
            else:
                self.waiting.abandon(waiting)
            raise

    def _next_arrival(self) -> simpy.Event:
        if self._arrival.triggered:
            self._arrival = self.env.event()
        return self._arrival

    def _take_batch(self) -> list[_Waiting]:
        batch = self.waiting.take(self.max_size)
        for waiting in batch:
            waiting.taken = True
            if waiting.picked is not None:
                waiting.picked.succeed()
        return batch

    def _dispatch(self) -> Generator[simpy.Event, Any, None]:
        env = self.env
        while True:
            while not self.waiting.live:
                yield self._next_arrival()
            waiter = self.pool.try_acquire()
            if waiter is not None:
                yield waiter
            while 0 < self.waiting.live < self.max_size:
                left = self.waiting.oldest().arrived + self.max_wait_s - env.now
                if left <= 0:
                    break
                yield self._next_arrival() | env.timeout(left)
            batch = self._take_batch()
            if batch:
                env.process(self._serve(batch))
            else:
                self.pool.release()

    def _serve(self, batch: list[_Waiting]) -> Generator[simpy.Event, Any, None]:
        env = self.env
        started = env.now
        if self.traced:
            service = sum(w.request.service_s[self.slot] for w in batch) / len(batch) * self.slowdown
        else:
            candidates = sum(w.request.candidates for w in batch)
            work = len(batch) if self.sampler.work_key == "batch" else candidates
            service = (float(self.sampler.sample(self.rng, 1, work)[0]) / 1000 + self.per_candidate_s * candidates) * self.slowdown
            if batch[0].request.miss_s is not None:  # the batch waits for its slowest cache miss
                service += max(w.request.miss_s[self.slot] for w in batch)
        self.serving += 1
        self.members += len(batch)
        yield env.timeout(service)
        self.serving -= 1
        self.members -= len(batch)
        self.pool.release()
        self.recorder.batch(self.slot, started, service, sum(w.request.measured for w in batch), len(batch), self.node)
        base = 3 * self.slot
        for waiting in batch:
            if waiting.abandoned:  # its request left at its deadline, already accounted
                continue
            if waiting.part is None:
                waiting.request.times[base : base + 3] = (waiting.arrived, started, env.now)
            else:
                waiting.part.started, waiting.part.ended = started, env.now
            waiting.done.succeed(Outcome.COMPLETED)
