"""Stage pools in wall-clock time: `servers` concurrent services behind one FIFO queue, with the DES's rules
(`sim.pools`): a request arriving when every server is busy and `queue_limit` requests wait is rejected;
one not started within `timeout_ms` leaves the queue; a batching pool claims a server, then fills a batch
until `max_size` requests or the oldest has waited `max_wait_ms`.

A pool does not know what its service is: `work(requests)` is the stage's work for one request (a plain
pool) or one batch, awaited while the server is held. The time a request spends in service, as measured,
becomes its `service_s` at the stage (what the no-contention latency adds up).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from aif_sim.core.batching import BatchQueue, Waiting
from aif_sim.core.request import Outcome, Request
from aif_sim.live.loop import Clock
from aif_sim.metrics.recorder import Recorder
from aif_sim.scenario.schema import Stage

Work = Callable[[list[Request]], Awaitable[None]]
COMPLETED = Outcome.COMPLETED


class LivePool:
    """`servers` servers each serving one request at a time."""

    def __init__(self, clock: Clock, slot: int, config: Stage, work: Work) -> None:
        self.clock, self.slot, self.work = clock, slot, work
        self.loop = clock.loop
        self.servers = config.servers
        self.busy = 0
        self.waiters: deque[asyncio.Future[bool]] = deque()
        self.queued = 0  # live waiters
        self.queue_limit = config.queue_limit
        self.timeout_s = config.timeout_ms / 1000 if config.timeout_ms is not None else None

    async def acquire(self, bounded: bool = True) -> Outcome:
        """Hold a server: at once when one is free, else after waiting in FIFO order; a `bounded` wait
        obeys the queue limit and the timeout."""
        if self.busy < self.servers:
            self.busy += 1
            return COMPLETED
        if bounded and self.queue_limit is not None and self.queued >= self.queue_limit:
            return Outcome.REJECTED
        waiter: asyncio.Future[bool] = self.loop.create_future()
        self.waiters.append(waiter)
        self.queued += 1
        expiry = self.loop.call_later(self.timeout_s, self._expire, waiter) if bounded and self.timeout_s is not None else None
        served = await waiter
        if expiry is not None:
            expiry.cancel()
        return COMPLETED if served else Outcome.TIMED_OUT

    def _expire(self, waiter: asyncio.Future[bool]) -> None:
        if not waiter.done():
            waiter.set_result(False)
            self.queued -= 1

    def release(self) -> None:
        """Free a server: hand it to the first waiter still waiting, if any."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                self.queued -= 1
                waiter.set_result(True)
                return
        self.busy -= 1

    async def serve(self, request: Request) -> Outcome:
        arrived = self.clock()
        outcome = await self.acquire()
        if outcome:
            return outcome
        started = self.clock()
        try:
            await self.work([request])
        finally:
            self.release()
        ended = self.clock()
        request.service_s[self.slot] = ended - started
        base = 3 * self.slot
        request.times[base : base + 3] = (arrived, started, ended)
        return COMPLETED


class _Waiting(Waiting):
    """A request waiting in a batching queue; `picked` is set when its batch starts, `done` when it ends."""

    __slots__ = ("done", "picked")

    def __init__(self, request: Request, arrived: float, done: asyncio.Future[Outcome]) -> None:
        super().__init__(request, arrived)
        self.done, self.picked = done, False


class LiveBatchingPool(LivePool):
    """Servers that take up to `max_size` requests at once (an asyncio micro-batcher)."""

    def __init__(self, clock: Clock, slot: int, config: Stage, work: Work, recorder: Recorder) -> None:
        super().__init__(clock, slot, config, work)
        assert config.batch is not None
        self.max_size = config.batch.max_size
        self.max_wait_s = config.batch.max_wait_ms / 1000
        self.recorder = recorder
        self.waiting: BatchQueue[_Waiting] = BatchQueue()
        self.serving = 0  # servers serving a batch
        self.arrived = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.dispatcher = self.loop.create_task(self._dispatch())

    def full(self) -> bool:
        return self.queue_limit is not None and self.serving >= self.servers and self.waiting.live >= self.queue_limit

    async def serve(self, request: Request) -> Outcome:
        if self.full():
            return Outcome.REJECTED
        waiting = _Waiting(request, self.clock(), self.loop.create_future())
        self.waiting.add(waiting)
        self.arrived.set()
        expiry = self.loop.call_later(self.timeout_s, self._abandon, waiting) if self.timeout_s is not None else None
        outcome = await waiting.done
        if expiry is not None:
            expiry.cancel()
        return outcome

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
            await self.acquire(bounded=False)  # the dispatcher's own wait for a server
            while 0 < self.waiting.live < self.max_size:
                left = self.waiting.oldest().arrived + self.max_wait_s - self.clock()
                if left <= 0:
                    break
                await self._next_arrival(left)
            batch = self._take_batch()
            if batch:
                task = self.loop.create_task(self._serve(batch))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            else:
                self.release()

    async def _serve(self, batch: list[_Waiting]) -> None:
        started = self.clock()
        self.serving += 1
        try:
            await self.work([waiting.request for waiting in batch])
        finally:
            self.serving -= 1
            self.release()
        ended = self.clock()
        service = ended - started
        self.recorder.batch(self.slot, started, service, sum(w.request.measured for w in batch), len(batch))
        base = 3 * self.slot
        for waiting in batch:
            waiting.request.service_s[self.slot] = service
            waiting.request.times[base : base + 3] = (waiting.arrived, started, ended)
            waiting.done.set_result(COMPLETED)

    def close(self) -> None:
        """Stop the dispatcher."""
        self.dispatcher.cancel()
