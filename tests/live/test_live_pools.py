"""Live stage pools keep the DES's rules: FIFO service, queue limit, timeout, batching by size and by wait."""

from __future__ import annotations

import asyncio

from aif_sim.core.request import Outcome, Request
from aif_sim.live.loop import Clock, new_loop
from aif_sim.live.pools import LiveBatchingPool, LivePool
from aif_sim.metrics.recorder import Recorder
from aif_sim.scenario.schema import Stage
from tests.simtools import make_scenario, negligible

LATE_S = 0.1  # how late a busy host's event loop may wake: these tests check order and rules, not timing precision
EARLY_S = 0.005  # the clock wakes the loop its measured idle lateness early


def _request(rid: int) -> Request:
    return Request(rid, 0.0, rid, 10, True, [0.0])


def _recorder() -> Recorder:
    scenario = make_scenario({"merger": negligible(), "retrieval": negligible(), "feature_fetch": negligible(), "prerank": negligible()})
    return Recorder.for_pipeline(scenario, "sequential", None, {}, [])


def _run(make_pool, arrivals: list[float], work_s: float) -> tuple[list[Outcome], list[tuple[float, float, float]], list[list[int]]]:
    """Offer requests at `arrivals` (s) to a pool whose work sleeps `work_s`; their outcomes, (enter, start, end)
    times, and the batches the work was called with."""
    batches: list[list[int]] = []

    async def scenario() -> tuple[list[Outcome], list[Request]]:
        clock = Clock(asyncio.get_running_loop())

        async def work(requests: list[Request]) -> None:
            batches.append([r.id for r in requests])
            await asyncio.sleep(work_s)

        pool = make_pool(clock, work)
        requests = [_request(i) for i in range(len(arrivals))]

        async def offer(request: Request, at: float) -> Outcome:
            await clock.until(at)
            return await pool.serve(request)

        outcomes = await asyncio.gather(*(offer(r, at) for r, at in zip(requests, arrivals)))
        if isinstance(pool, LiveBatchingPool):
            pool.close()
        return outcomes, requests

    loop = new_loop()
    try:
        outcomes, requests = loop.run_until_complete(scenario())
    finally:
        loop.close()
    return outcomes, [tuple(r.times[:3]) for r in requests], batches


def test_a_plain_pool_serves_in_arrival_order_on_its_servers():
    stage = Stage(servers=2, latency={"dist": "constant", "ms": 1})
    outcomes, times, _ = _run(lambda clock, work: LivePool(clock, 0, stage, work), [0.0, 0.001, 0.002, 0.003], 0.05)
    assert outcomes == [Outcome.COMPLETED] * 4
    starts = [start for _, start, _ in times]
    assert starts == sorted(starts)
    for waiting, freed in ((2, 0), (3, 1)):  # the third starts when the first server frees, the fourth the second
        assert times[freed][2] <= starts[waiting] < times[freed][2] + LATE_S


def test_the_queue_limit_rejects_only_when_every_server_is_busy():
    stage = Stage(servers=1, latency={"dist": "constant", "ms": 1}, queue_limit=1)
    outcomes, _, _ = _run(lambda clock, work: LivePool(clock, 0, stage, work), [0.0, 0.001, 0.002, 0.2], 0.05)
    assert outcomes == [Outcome.COMPLETED, Outcome.COMPLETED, Outcome.REJECTED, Outcome.COMPLETED]


def test_a_request_not_started_within_the_timeout_leaves_the_queue():
    stage = Stage(servers=1, latency={"dist": "constant", "ms": 1}, timeout_ms=20)
    outcomes, times, batches = _run(lambda clock, work: LivePool(clock, 0, stage, work), [0.0, 0.001, 0.060], 0.05)
    assert outcomes == [Outcome.COMPLETED, Outcome.TIMED_OUT, Outcome.COMPLETED]
    assert batches == [[0], [2]]  # the timed-out request never reached a server


def test_a_batching_pool_dispatches_full_batches_at_once_and_partial_ones_after_the_wait():
    stage = Stage(servers=1, latency={"dist": "constant", "ms": 1}, batch={"max_size": 3, "max_wait_ms": 300})
    recorder = _recorder()
    arrivals = [0.0, 0.001, 0.002, 0.100]
    outcomes, times, batches = _run(lambda clock, work: LiveBatchingPool(clock, 0, stage, work, recorder), arrivals, 0.01)
    assert outcomes == [Outcome.COMPLETED] * 4
    assert batches == [[0, 1, 2], [3]]
    assert 0.002 <= times[0][1] < 0.002 + LATE_S  # full at the third arrival: no wait for max_wait
    assert 0.400 - EARLY_S <= times[3][1] < 0.400 + LATE_S  # alone: dispatched when it has waited max_wait
