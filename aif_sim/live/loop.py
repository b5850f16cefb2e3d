"""The live engine's event loop and clock.

The loop waits on `select()`, not epoll: epoll's timeout is whole milliseconds, so every `sleep` of a
sub-millisecond or fractional latency would wake up to 1 ms late; `select()` takes microseconds. The
live engine holds a handful of descriptors (the loop's self-pipe, the executor's, Redis connections),
far below select's limit.

While a live loop runs (`live_loop`), the objects alive before it are out of the cyclic garbage collector's
reach (`gc.freeze`, as long-running Python servers do): the simulator, torch and numba (once it has compiled
the kernels) hold hundreds of thousands of objects, and a full collection that scanned them would stop the
loop for 0.1 to 0.5 s on the development host, a pause the run would count as schedule lag and as latency of
the system it measures. Frozen, a full collection scans only what the run itself made.
"""

from __future__ import annotations

import asyncio
import gc
import selectors
from collections.abc import Iterator
from contextlib import contextmanager


def new_loop() -> asyncio.AbstractEventLoop:
    """A selector event loop with microsecond timer resolution."""
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


@contextmanager
def live_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A new loop (`new_loop`) for one live run, the heap that was there before it frozen meanwhile (the
    module docstring); closed, and the heap unfrozen, on exit."""
    gc.collect()  # the garbage goes now, before the clock starts, rather than frozen for the run
    gc.freeze()
    loop = new_loop()
    try:
        yield loop
    finally:
        loop.close()
        gc.unfreeze()


WAKE_PROBES = 50  # sleeps that measure how late the idle loop wakes up


class Clock:
    """Seconds since the run's time zero on the loop's monotonic clock (the DES's `env.now`, live).

    `until(t)` asks the loop to wake `wake_s` before `t`: the median lateness of a wake-up of the idle loop
    (`measure_wake`, about 0.08 ms on the development host), so that an awaited latency takes its drawn time
    on an idle loop, and only the loop's contention under load adds to it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, wake_s: float = 0.0) -> None:
        self.loop = loop
        self.zero = loop.time()
        self.wake_s = wake_s

    def __call__(self) -> float:
        return self.loop.time() - self.zero

    async def until(self, t_s: float) -> None:
        """Sleep until run time `t_s` (at once when it has passed)."""
        delay = t_s - self() - self.wake_s
        if delay > 0:
            await asyncio.sleep(delay)


async def measure_wake() -> float:
    """The median lateness (s) of a short sleep on this idle loop."""
    loop = asyncio.get_running_loop()
    late = []
    for _ in range(WAKE_PROBES):
        start = loop.time()
        await asyncio.sleep(0.0005)
        late.append(loop.time() - start - 0.0005)
    return sorted(late)[len(late) // 2]
