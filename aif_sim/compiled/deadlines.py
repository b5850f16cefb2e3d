"""Request deadlines (`deadline_ms`) in the compiled engine, as `sim.engine.PipelineSimulation._within_deadline`
abandons a request.

Request i's deadline is `deadline[i]`, the instant simpy's expiry fires (`now + (arrival + deadline - now)` from
its arrival event; inf without one). A visit that would still be queued then leaves its queue at the deadline
(a timeout at the deadline: `min(t + timeout, deadline)`); one that started before it and would end after it
runs to its end for nothing: its server stays busy (freed at `deadline + (end - deadline)`, when simpy's
release fires), its times and service are not the request's, no cache takes its result, and it is recorded as
wasted, `wasted[m] = (slot, deadline, request id, order, start, service, node)`. A request whose step (or its
pause before the next) ends after its deadline leaves timed out at the deadline (`expire`).

`DeadlineState.emit` hands the wasted visits to `Recorder.wasted` in the order simpy abandons them: by deadline,
then by request (requests arriving together expire in order of arrival), then by the order of the request's
processes (`order`, `wasted_order`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from aif_sim.metrics.recorder import Recorder
from aif_sim.scenario.schema import Scenario

TIMED_OUT = 2  # core.request.Outcome
COLUMNS = 7
SHARDS = 1 << 16  # more than any stage's shards


def deadlines(scenario: Scenario, arrival_s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """When each request arriving at `arrival_s` (its arrival event at `t`) is abandoned: the time of simpy's
    `env.timeout(arrival_s + deadline_s - now)`, inf without a deadline."""
    if scenario.deadline_ms is None:
        return np.full(len(t), math.inf)
    return t + (arrival_s + scenario.deadline_ms / 1000 - t)


class DeadlineState:
    """The visits abandoned in service, not yet handed to the recorder (`state`: the records and their count)."""

    def __init__(self, per_request: int) -> None:
        """`per_request`: the most visits (shards included) a request can be abandoned in (0: no deadline)."""
        self.per_request = per_request
        self.state = (np.empty((64, COLUMNS)), np.zeros(1, np.int64))

    def prepare(self, requests: int) -> None:
        """Room for the records of `requests` more requests."""
        rec, rec_n = self.state
        need = int(rec_n[0]) + requests * self.per_request
        if need > len(rec):
            grown = np.empty((max(need, 2 * len(rec)), COLUMNS))
            grown[: rec_n[0]] = rec[: rec_n[0]]
            self.state = (grown, rec_n)

    def emit(self, recorder: Recorder, before: float) -> None:
        """Account the visits abandoned before `before` (`Recorder.wasted`) in simpy's order, and drop them."""
        rec, rec_n = self.state
        rows = rec[: rec_n[0]]
        done = rows[:, 1] < before
        if not done.any():
            return
        out = rows[done]
        kept = rows[~done]
        rec[: len(kept)] = kept
        rec_n[0] = len(kept)
        for slot, _, _, _, start, service, node in out[np.lexsort((out[:, 3], out[:, 2], out[:, 1]))].tolist():
            recorder.wasted(int(slot), start, service, None if node < 0 else int(node))


@njit(cache=True, _nrt=False)
def wasted_order(p: int, first: int, stop: int, shard: int, shards: int) -> int:
    """The order in which simpy interrupts the process serving shard `shard` of `shards` (or the visit: 0 of 1) at
    position p of a step calling `first:stop` in parallel: the request's own process (the last branch, its last
    shard), then each other branch's (its last shard), then the shards each started, the last branch's first."""
    branch = 0 if p == stop - 1 else p - first + 1
    if shard == shards - 1:
        return branch
    return stop - first + branch * SHARDS + shard


@njit(cache=True, _nrt=False)
def wasted(state: tuple, slot: int, at: float, request: int, order: int, start: float, service: float, node: int) -> None:
    """A visit (or shard) of a request abandoned at `at` while in service from `start` for `service`."""
    rec, rec_n = state
    m = rec_n[0]
    rec[m, 0], rec[m, 1], rec[m, 2], rec[m, 3] = slot, at, request, order
    rec[m, 4], rec[m, 5], rec[m, 6] = start, service, node
    rec_n[0] = m + 1


@njit(cache=True, _nrt=False)
def expire(i: int, req: tuple) -> None:
    """Request i is abandoned at its deadline: it leaves timed out then, ranked among the requests leaving at the
    same time by its arrival (simpy's expiries fire in the order they were set)."""
    arrive, step, outcome, end_s, pending, step_end, worst, end_order, rank, numbered, hop, ids, deadline = req
    outcome[i] = TIMED_OUT
    end_s[i] = deadline[i]
    step[i] = hop.shape[1]
    rank[i] = ids[i]
