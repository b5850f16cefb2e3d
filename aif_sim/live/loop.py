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


class Clock:
    """Seconds since the run's time zero on the loop's monotonic clock (the DES's `env.now`, live)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.zero = loop.time()

    def __call__(self) -> float:
        return self.loop.time() - self.zero

    async def until(self, t_s: float) -> None:
        """Sleep until run time `t_s` (at once when it has passed)."""
        delay = t_s - self()
        if delay > 0:
            await asyncio.sleep(delay)
