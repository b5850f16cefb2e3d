"""Stage pools in wall-clock time: servers behind one FIFO queue, with the DES's rules (`sim.pools`): a request
arriving when every server is busy and `queue_limit` requests wait is rejected; one not started within
`timeout_ms` leaves the queue; a batching pool claims a server, then fills a batch until `max_size` requests or
the oldest has waited `max_wait_ms`. A pool is a stage's (its `servers`) or one node of a fleet's (`live.fleet`:
its `servers / nodes`, its busy time also accounted per node).

A pool does not know what its service is: `work(requests)` is the stage's work for one request (a plain
pool) or one batch, awaited while the server is held. A visit's service starts when it is handed the server (a
free one at once; a busy one when its holder releases it; a batch when the dispatcher takes it) and ends when it
gives the server back: the time its task then waits for the event loop to resume it holds the server, so it is
service, as the DES sees a server. That time, as measured, becomes its `service_s` at the stage (what the
no-contention latency adds up, and what a service-time trace records: `core.replay`).

A visit abandoned (its task cancelled: the request's deadline, or a hedge copy that lost) leaves the queue if it
waits; if it is in service, its work goes on to its end and keeps the server until then, accounted as wasted; a
batch already taken is served for its other members. A node that goes down (`lose`) rejects its queued and running
visits at once: a running visit's work stops there (a model call in the executor runs on in its thread, unseen),
its busy time ends at the loss, and the node comes back empty.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aif_sim.core.batching import BatchQueue, Waiting
from aif_sim.core.request import Outcome, Request
from aif_sim.live.loop import Clock
from aif_sim.metrics.recorder import Recorder
from aif_sim.scenario.schema import Stage

Work = Callable[[list[Request]], Awaitable[None]]
COMPLETED = Outcome.COMPLETED


class LivePool:
    """`threads_per_node` servers each serving one request at a time. `recorder` receives the busy time the visits'
    times do not carry (a node's, and a wasted visit's); a pool on its own, without one, accounts nothing. When
    visits may be `abandonable` (a deadline, hedging) or lost (a node loss), work in service runs as a task of its
    own, which outlives its visit or is stopped with its node; otherwise in the visit's task (a loop hop less per
    visit)."""

    def __init__(
        self,
        clock: Clock,
        slot: int,
        config: Stage,
        work: Work,
        recorder: Recorder | None = None,
        node: int | None = None,
        abandonable: bool = False,
    ) -> None:
        self.clock, self.slot, self.work, self.recorder, self.node = clock, slot, work, recorder, node
        self.abandonable = abandonable
        self.loop = clock.loop
        self.servers = config.threads_per_node
        self.busy = 0
        self.waiters: deque[asyncio.Future[Outcome]] = deque()
        self.queued = 0  # live waiters
        self.epoch = 0  # how many times the node went down: a visit of an earlier epoch has no server to give back
        self.queue_limit = config.queue_limit
        self.timeout_s = config.timeout_ms / 1000 if config.timeout_ms is not None else None
        self.tasks: set[asyncio.Task[Any]] = set()  # work in service, in tasks of its own
        self.running: set[asyncio.Task[Any]] = set()  # those whose visit awaits them (not abandoned)
        self.handed: dict[asyncio.Future[Outcome], float] = {}  # when each waiter handed a server has been handed it

    @property
    def outstanding(self) -> int:
        """Requests at the pool: queued and in service (a node's load, as a balancer sees it)."""
        return self.busy + self.queued

    async def acquire(self, bounded: bool = True) -> tuple[Outcome, float]:
        """Hold a server: at once when one is free, else after waiting in FIFO order; a `bounded` wait
        obeys the queue limit and the timeout. Cancelled while it waits, it leaves the queue; rejected when the
        node goes down meanwhile. The outcome, and when the server was handed over (when the wait ended)."""
        if self.busy < self.servers:
            self.busy += 1
            return COMPLETED, self.clock()
        if bounded and self.queue_limit is not None and self.queued >= self.queue_limit:
            return Outcome.REJECTED, self.clock()
        waiter: asyncio.Future[Outcome] = self.loop.create_future()
        self.waiters.append(waiter)
        self.queued += 1
        epoch = self.epoch
        expiry = self.loop.call_later(self.timeout_s, self._expire, waiter) if bounded and self.timeout_s is not None else None
        try:
            outcome = await waiter
        except asyncio.CancelledError:
            if self.epoch == epoch:
                if waiter.cancelled():  # it left the queue (`release` skips it)
                    self.queued -= 1
                elif waiter.result() is COMPLETED:  # a server was just handed over: pass it on
                    self.release()
            raise
        finally:
            if expiry is not None:
                expiry.cancel()
            handed = self.handed.pop(waiter, None)
        if self.epoch != epoch:
            return Outcome.REJECTED, self.clock()  # handed a server, then the node went down
        return outcome, self.clock() if handed is None else handed

    def _expire(self, waiter: asyncio.Future[Outcome]) -> None:
        if not waiter.done():
            waiter.set_result(Outcome.TIMED_OUT)
            self.queued -= 1

    def release(self) -> None:
        """Free a server: hand it to the first waiter still waiting, if any."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                self.queued -= 1
                waiter.set_result(COMPLETED)
                self.handed[waiter] = self.clock()
                return
        self.busy -= 1

    def lose(self) -> None:
        """The node goes down: its queued visits are rejected, its running ones fail (their work stops), and it
        comes back empty; work of abandoned visits runs on to its end, as wasted."""
        self.epoch += 1
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(Outcome.REJECTED)
        self.waiters.clear()
        self.busy = self.queued = 0
        for held in self.running:
            held.cancel()

    def _start(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run work in service as a task of the pool's own (it outlives an abandoned request; `close` stops it)."""
        task = self.loop.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def serve(self, request: Request) -> Outcome:
        arrived = self.clock()
        outcome, started = await self.acquire()
        if outcome:
            return outcome
        epoch = self.epoch
        if not self.abandonable:
            started, ended = await self._hold(request, epoch, started)
        else:
            held = self._start(self._hold(request, epoch, started))
            self.running.add(held)
            try:
                started, ended = await asyncio.shield(held)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self.epoch != epoch and task is not None and not task.cancelling():
                    return Outcome.REJECTED  # its work stopped with its node
                held.add_done_callback(self._wasted)
                raise
            finally:
                self.running.discard(held)
        request.service_s[self.slot] = ended - started
        base = 3 * self.slot
        request.times[base : base + 3] = (arrived, started, ended)
        return COMPLETED

    async def _hold(self, request: Request, epoch: int, started: float) -> tuple[float, float]:
        """The request's work on the server it was handed at `started` in `epoch`, released when the work ends (a
        node that went down meanwhile has no server to give back); when it started and ended."""
        try:
            await self.work([request])
        except asyncio.CancelledError:
            if self.epoch != epoch:  # stopped with its node: busy until the loss
                self._busy(request, started, self.clock())
            raise
        finally:
            ended = self.clock()  # before the release: the next visit's service starts no earlier
            if self.epoch == epoch:
                self.release()
        self._busy(request, started, ended)
        return started, ended

    def _busy(self, request: Request, started: float, ended: float) -> None:
        """A node's busy time (a pool of a stage of one node is accounted from its visits' times)."""
        if self.node is not None and self.recorder is not None:
            self.recorder.node_busy(self.slot, self.node, started, ended - started, request.measured)

    def _wasted(self, held: asyncio.Task[tuple[float, float]]) -> None:
        """The work of an abandoned visit ended: wasted (an error it raised goes to the loop's handler)."""
        if held.cancelled() or self.recorder is None:
            return
        started, ended = held.result()
        self.recorder.wasted(self.slot, started, ended - started, self.node)

    def close(self) -> list[asyncio.Task[Any]]:
        """Stop the pool's tasks (the run is over); the tasks stopped, to await."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        return tasks


class _Waiting(Waiting):
    """A request waiting in a batching queue; `picked` is set when its batch starts, `done` when it ends."""

    __slots__ = ("done", "picked")

    def __init__(self, request: Request, arrived: float, done: asyncio.Future[Outcome]) -> None:
        super().__init__(request, arrived)
        self.done, self.picked = done, False


class LiveBatchingPool(LivePool):
    """Servers that take up to `max_size` requests at once (an asyncio micro-batcher)."""

    def __init__(self, clock: Clock, slot: int, config: Stage, work: Work, recorder: Recorder, node: int | None = None) -> None:
        super().__init__(clock, slot, config, work, recorder, node)
        assert config.batch is not None
        self.max_size = config.batch.max_size
        self.max_wait_s = config.batch.max_wait_ms / 1000
        self.waiting: BatchQueue[_Waiting] = BatchQueue()
        self.serving = 0  # servers serving a batch
        self.members = 0  # requests in the batches being served
        self.arrived = asyncio.Event()
        self.dispatcher = self.loop.create_task(self._dispatch())

    def full(self) -> bool:
        return self.queue_limit is not None and self.serving >= self.servers and self.waiting.live >= self.queue_limit

    @property
    def outstanding(self) -> int:
        return self.waiting.live + self.members

    async def serve(self, request: Request) -> Outcome:
        if self.full():
            return Outcome.REJECTED
        waiting = _Waiting(request, self.clock(), self.loop.create_future())
        self.waiting.add(waiting)
        self.arrived.set()
        expiry = self.loop.call_later(self.timeout_s, self._abandon, waiting) if self.timeout_s is not None else None
        try:
            return await waiting.done
        except asyncio.CancelledError:  # abandoned: it leaves the queue; a batch already taken carries on
            if not waiting.picked and not waiting.abandoned:
                self.waiting.abandon(waiting)
            raise
        finally:
            if expiry is not None:
                expiry.cancel()

    def _abandon(self, waiting: _Waiting) -> None:
        if not waiting.picked and not waiting.abandoned:
            self.waiting.abandon(waiting)
            waiting.done.set_result(Outcome.TIMED_OUT)

    def _take_batch(self) -> list[_Waiting]:
        batch = self.waiting.take(self.max_size)
        for waiting in batch:
            waiting.picked = True
        return batch

    async def _next_arrival(self, timeout_s: float | None = None) -> None:
        self.arrived.clear()
        if timeout_s is None:
            await self.arrived.wait()
            return
        try:
            await asyncio.wait_for(self.arrived.wait(), timeout_s)
        except TimeoutError:
            pass

    async def _dispatch(self) -> None:
        while True:
            while not self.waiting.live:
                await self._next_arrival()
            _, handed = await self.acquire(bounded=False)  # the dispatcher's own wait for a server
            while 0 < self.waiting.live < self.max_size:
                left = self.waiting.oldest().arrived + self.max_wait_s - self.clock()
                if left <= 0:
                    break
                await self._next_arrival(left)
            batch = self._take_batch()
            if batch:
                self._start(self._serve(batch, self._due(batch, handed)))
            else:
                self.release()

    def _due(self, batch: list[_Waiting], handed: float) -> float:
        """When the batch was due to start, the server held since `handed`: as soon as it was full (its last
        member's arrival), or its oldest member had waited `max_wait_ms`. Later than that, the server was held
        while the dispatcher waited for the loop: service time, as the DES sees it."""
        due = batch[-1].arrived if len(batch) == self.max_size else batch[0].arrived + self.max_wait_s
        return min(max(handed, due), self.clock())

    async def _serve(self, batch: list[_Waiting], started: float) -> None:
        """Serve the batch the dispatcher took at `started`."""
        self.serving += 1
        self.members += len(batch)
        try:
            await self.work([waiting.request for waiting in batch])
        finally:
            self.serving -= 1
            self.members -= len(batch)
            self.release()
        ended = self.clock()
        service = ended - started
        self.recorder.batch(self.slot, started, service, sum(w.request.measured for w in batch), len(batch), self.node)
        base = 3 * self.slot
        for waiting in batch:
            if waiting.done.cancelled():  # its request was abandoned while the batch ran
                continue
            waiting.request.service_s[self.slot] = service
            waiting.request.times[base : base + 3] = (waiting.arrived, started, ended)
            waiting.done.set_result(COMPLETED)

    def close(self) -> list[asyncio.Task[Any]]:
        """Stop the dispatcher and the batches in service."""
        self.dispatcher.cancel()
        return [self.dispatcher, *super().close()]
