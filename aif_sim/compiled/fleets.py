"""Stages of several nodes in the compiled engine: `sim.fleet.Fleet` without shards, hedges, retries or node loss.

Each node of a fleet stage is a FIFO pool of its own (`servers / nodes` servers, the stage's queue limit and
timeout): its servers' free times are a heap of the stage's region of the kernels' `free` (node j's at
`free_at[slot] + j * threads`), and its live waiters' queue-leave times (when they start or time out) a FIFO
`waits[row, head:tail]` (they leave in order of arrival: FIFO starts and a common timeout). Its outstanding
count at t, as the balancer sees it, is its servers busy at t plus its waiters not yet left.

Per fleet f (`FleetState.state`): the balancer (`kind`, round robin's last pick, the uniforms of its stream
drawn ahead as `core.balance.Uniforms` draws them), and the visits it served, `rec[m] = (slot, node, start,
service, measured)` in order of arrival at the stage, handed to `Recorder.node_busy` in the order they started
(`emit`), as simpy calls it when each starts.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from aif_sim.core.balance import BLOCK
from aif_sim.core.traffic import stream
from aif_sim.metrics.recorder import Recorder
from aif_sim.scenario.schema import Scenario

KINDS = {"random": 0, "round_robin": 1, "least_outstanding": 2, "p2c": 3}
DRAWS = (1, 0, 0, 2)  # uniforms per pick, by kind
RANDOM, ROUND_ROBIN, LEAST_OUTSTANDING, P2C = range(4)
COMPLETED, REJECTED, TIMED_OUT = 0, 1, 2  # core.request.Outcome


class FleetState:
    """The fleet stages of a pipeline: `fleet_of[slot]` (-1: one pool) and the state the kernels take."""

    def __init__(self, scenario: Scenario, pipeline: str) -> None:
        names = scenario.pipeline(pipeline).stages
        slots = [slot for slot, name in enumerate(names) if scenario.stages[name].nodes > 1]
        configs = [scenario.stages[names[slot]] for slot in slots]
        self.fleet_of = np.full(len(names), -1, np.int64)
        self.fleet_of[slots] = np.arange(len(slots))
        self.rngs = [stream(scenario.seed, f"balance:{names[slot]}") for slot in slots]
        self.drawn = [np.empty(0) for _ in slots]  # uniforms drawn, not yet taken
        nodes = [config.nodes for config in configs]
        self.state = (
            np.array(nodes, np.int64),
            np.array([KINDS[config.balance] for config in configs], np.int64),
            np.array(nodes, np.int64) - 1,  # round robin's last pick
            np.empty((len(slots), 0)),  # uniforms
            np.zeros(len(slots), np.int64),  # uniforms taken
            np.cumsum([0, *nodes]).astype(np.int64),  # each fleet's first row of waits
            np.empty((max(1, sum(nodes)), 16)),  # waits
            np.zeros((max(1, sum(nodes)), 2), np.int64),  # (head, tail) per row
            np.empty((64, 5)),  # rec
            np.zeros(1, np.int64),  # rec_n
        )

    def prepare(self, arrivals: int) -> None:
        """Room for `arrivals` more visits per fleet: waiters, uniforms and records; each FIFO moved to the front."""
        nodes, kind, last, uniforms, taken, row_at, waits, heads, rec, rec_n = self.state
        if not len(nodes):
            return
        width = max(int((heads[:, 1] - heads[:, 0]).max()) + arrivals, waits.shape[1])
        moved = np.empty((len(waits), width))
        for row, (head, tail) in enumerate(heads.tolist()):
            moved[row, : tail - head] = waits[row, head:tail]
        heads[:, 1] -= heads[:, 0]
        heads[:, 0] = 0
        for f in range(len(nodes)):
            self.drawn[f] = self.drawn[f][taken[f] :]
            while len(self.drawn[f]) < DRAWS[kind[f]] * arrivals:
                self.drawn[f] = np.concatenate([self.drawn[f], self.rngs[f].random(BLOCK)])  # as `Uniforms` draws them
        taken[:] = 0
        uniforms = np.zeros((len(nodes), max(len(drawn) for drawn in self.drawn)))
        for f, drawn in enumerate(self.drawn):
            uniforms[f, : len(drawn)] = drawn
        need = int(rec_n[0]) + arrivals * len(nodes)
        if need > len(rec):
            grown = np.empty((max(need, 2 * len(rec)), 5))
            grown[: rec_n[0]] = rec[: rec_n[0]]
            rec = grown
        self.state = (nodes, kind, last, uniforms, taken, row_at, moved, heads, rec, rec_n)

    def emit(self, recorder: Recorder, before: float) -> None:
        """Account the visits that started before `before` (`Recorder.node_busy`) in the order they started, and
        drop them."""
        rec, rec_n = self.state[8], self.state[9]
        rows = rec[: rec_n[0]]
        done = rows[:, 2] < before
        out = rows[done]
        out = out[np.lexsort((out[:, 2], out[:, 0]))]  # by slot, then in the order they started (stable)
        slots, firsts = np.unique(out[:, 0], return_index=True)
        for slot, mine in zip(slots.tolist(), np.split(out, firsts[1:])):
            recorder.node_busy_many(int(slot), mine[:, 1].astype(np.int64), mine[:, 2], mine[:, 3], mine[:, 4] != 0)
        kept = rows[~done]
        rec[: len(kept)] = kept
        rec_n[0] = len(kept)


@njit(cache=True, _nrt=False)
def _outstanding(free: np.ndarray, base: int, threads: int, waits: np.ndarray, heads: np.ndarray, row: int, t: float) -> int:
    """A node's visits at t: its servers busy then and its waiters that have not left by t (popped)."""
    busy = 0
    for s in range(base, base + threads):
        if free[s] > t:
            busy += 1
    head, tail = heads[row, 0], heads[row, 1]
    while head < tail and waits[row, head] <= t:
        head += 1
    heads[row, 0] = head
    return busy + tail - head


@njit(cache=True, _nrt=False)
def pick(f: int, t: float, base: int, threads: int, free: np.ndarray, fleets: tuple) -> int:
    """The node fleet f's balancer picks for a visit arriving at t (`core.balance`, every node live); the
    stage's servers start at `free[base]`, `threads` per node."""
    nodes, kind, last, uniforms, taken, row_at, waits, heads, rec, rec_n = fleets
    count, row = nodes[f], row_at[f]
    k = kind[f]
    if k == RANDOM:
        u = uniforms[f, taken[f]]
        taken[f] += 1
        return int(u * count)
    if k == ROUND_ROBIN:
        node = last[f] + 1 if last[f] + 1 < count else 0
        last[f] = node
        return node
    if k == LEAST_OUTSTANDING:
        best, fewest = 0, _outstanding(free, base, threads, waits, heads, row, t)
        for node in range(1, count):
            load = _outstanding(free, base + node * threads, threads, waits, heads, row + node, t)
            if load < fewest:
                best, fewest = node, load
        return best
    u, v = uniforms[f, taken[f]], uniforms[f, taken[f] + 1]
    taken[f] += 2
    first = int(u * count)
    if count == 1:
        return 0
    second = int(v * (count - 1))
    if second >= first:
        second += 1
    a = _outstanding(free, base + first * threads, threads, waits, heads, row + first, t)
    b = _outstanding(free, base + second * threads, threads, waits, heads, row + second, t)
    return second if b < a else first


@njit(cache=True, _nrt=False)
def visit_node(f: int, node: int, t: float, m: float, limit: int, timeout: float, fleets: tuple) -> tuple[int, float, float]:
    """A visit arriving at t at a node whose first server frees at m: (outcome, start, end; the end once served is
    the caller's) as the node's FIFO pool decides (rejected when `limit` >= 0 wait, timed out when no server is
    handed over within `timeout`); a visit that queues joins the node's waiters with its queue-leave time."""
    row = fleets[5][f] + node
    waits, heads = fleets[6], fleets[7]
    head, tail = heads[row, 0], heads[row, 1]
    if m <= t:  # a free server: every waiter has left
        heads[row, 0] = tail
        return COMPLETED, t, t
    while head < tail and waits[row, head] <= t:
        head += 1
    heads[row, 0] = head
    if limit >= 0 and tail - head >= limit:
        return REJECTED, t, t
    deadline = t + timeout
    heads[row, 1] = tail + 1
    if m > deadline:
        waits[row, tail] = deadline
        return TIMED_OUT, t, deadline
    waits[row, tail] = m
    return COMPLETED, m, m


@njit(cache=True, _nrt=False)
def served_at_node(f: int, node: int, slot: int, start: float, service: float, measured: bool, fleets: tuple) -> None:
    """A visit started on the node: its busy time for `Recorder.node_busy`."""
    rec, rec_n = fleets[8], fleets[9]
    m = rec_n[0]
    rec[m, 0], rec[m, 1], rec[m, 2], rec[m, 3], rec[m, 4] = slot, node, start, service, measured
    rec_n[0] = m + 1
