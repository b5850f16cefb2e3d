"""Where the live engine's time goes on this host: the figures behind README's "Live engine and fidelity".

1. Timer resolution: how late a sleep of 0.2 to 3 ms wakes on asyncio's default (epoll) loop and on the live
   engine's select() loop.
2. CPU idle wake-up: the real-time operator and the sequential model, called back to back and after 10 ms of
   idle CPU, through the live engine's executor.
3. The GIL: how late the event loop wakes (the same sleeps) while an executor thread is busy 6 ms in every 16
   with a sleep (no GIL held), a pure-Python busy loop (GIL held between bytecodes) and the sequential model.

    python bench/bench_live.py
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from rich.console import Console
from rich.table import Table

from aif_sim.live.loop import new_loop
from aif_sim.live.model import LiveModel

CANDIDATES = 1000
PROBES = 1000


def _lateness(make_loop: Callable[[], asyncio.AbstractEventLoop], busy: Callable[[], object] | None = None) -> np.ndarray:
    """Lateness (ms) of PROBES sleeps of 0.2 to 3 ms; with `busy`, an executor thread runs it every 16 ms meanwhile."""
    executor = ThreadPoolExecutor(1)

    async def probe() -> np.ndarray:
        loop = asyncio.get_running_loop()

        async def load() -> None:
            while True:
                await asyncio.sleep(0.010)
                await loop.run_in_executor(executor, busy)

        task = loop.create_task(load()) if busy is not None else None
        late = np.empty(PROBES)
        for i, delay in enumerate(np.random.default_rng(1).uniform(0.0002, 0.003, PROBES)):
            start = loop.time()
            await asyncio.sleep(delay)
            late[i] = (loop.time() - start - delay) * 1000
        if task is not None:
            task.cancel()
        return late

    loop = make_loop()
    try:
        return loop.run_until_complete(probe())
    finally:
        loop.close()
        executor.shutdown()


def _paced(fn: Callable[[], object], pause_s: float, calls: int = 150) -> float:
    """Median wall time (ms) of `fn` through an executor, each call after `pause_s` of idle."""
    executor = ThreadPoolExecutor(1)

    async def run() -> float:
        loop = asyncio.get_running_loop()
        times = []
        for _ in range(calls):
            await asyncio.sleep(pause_s)
            start = loop.time()
            await loop.run_in_executor(executor, fn)
            times.append(loop.time() - start)
        return float(np.median(times) * 1000)

    loop = new_loop()
    try:
        return loop.run_until_complete(run())
    finally:
        loop.close()
        executor.shutdown()


def _spin(seconds: float) -> Callable[[], None]:
    def spin() -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    return spin


def main() -> None:
    console = Console()
    model = LiveModel(None, 20_000, 7)
    model.warm_up(CANDIDATES)
    rng = np.random.default_rng(0)
    candidates = rng.integers(0, 20_000, CANDIDATES)
    behaviour = model.features.long_behaviour(3)
    items = model.item_side(candidates)
    user = model.user_side([3], [behaviour])[0:1].reshape(())

    def realtime() -> object:
        return model.realtime(user, items)

    def sequential() -> object:
        return model.sequential_prerank(3, behaviour, candidates)

    timers = Table(title="1. A sleep of 0.2-3 ms: how late the loop wakes (ms)")
    for column in ("loop", "p50", "p99"):
        timers.add_column(column, justify="right")
    for name, make in (("asyncio default (epoll)", asyncio.new_event_loop), ("live engine (select)", new_loop)):
        late = _lateness(make)
        timers.add_row(name, f"{np.median(late):.3f}", f"{np.percentile(late, 99):.3f}")
    console.print(timers)

    idle = Table(title=f"2. Operator time through the executor, {CANDIDATES:,} candidates (median ms)")
    for column in ("operator", "back to back", "after 10 ms idle"):
        idle.add_column(column, justify="right")
    for name, fn in (("realtime", realtime), ("sequential_prerank", sequential)):
        idle.add_row(name, f"{_paced(fn, 0.0):.3f}", f"{_paced(fn, 0.010):.3f}")
    console.print(idle)

    gil = Table(title="3. Loop wake-up lateness (ms) while a thread works 6 ms in every 16")
    for column in ("the thread runs", "p50", "p99", "max"):
        gil.add_column(column, justify="right")
    for name, busy in (
        ("nothing", None),
        ("time.sleep(6 ms)", lambda: time.sleep(0.006)),
        ("a Python busy loop", _spin(0.006)),
        ("the sequential model", sequential),
    ):
        late = _lateness(new_loop, busy)
        gil.add_row(name, f"{np.median(late):.3f}", f"{np.percentile(late, 99):.3f}", f"{late.max():.3f}")
    console.print(gil)


if __name__ == "__main__":
    main()
