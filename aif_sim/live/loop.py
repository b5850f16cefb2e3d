"""The live engine's event loop and clock.

The loop waits on `select()`, not epoll: epoll's timeout is whole milliseconds, so every `sleep` of a
sub-millisecond or fractional latency would wake up to 1 ms late; `select()` takes microseconds. The
live engine holds a handful of descriptors (the loop's self-pipe, the executor's, Redis connections),
far below select's limit.
"""

from __future__ import annotations

import asyncio
import selectors


def new_loop() -> asyncio.AbstractEventLoop:
    """A selector event loop with microsecond timer resolution."""
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


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
