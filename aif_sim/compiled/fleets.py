"""Stages of several nodes in the compiled engine: `sim.fleet.Fleet` with shards, retries, node loss and batching
nodes (`batching`: a node's load is its queue's); a hedged stage runs its own events (`hedges`), with this module's
picks, records and heaps.

Each node of a fleet stage is a FIFO pool of its own (`servers / nodes` servers, the stage's queue limit and
timeout): its servers' free times are a heap of the stage's region of the kernels' `free` (node j's at
`free_at[slot] + j * threads`), and its live waiters' queue-leave times (when they start, time out, or leave at
their request's deadline) a heap `waits[row, :queued[row]]`. Its outstanding count at t, as the balancer sees
it, is its servers busy at t plus its waiters not yet left.

Per fleet f (`FleetState.state`): the balancer (`kind`, round robin's last pick, the uniforms of its stream
drawn ahead as `core.balance.Uniforms` draws them), and the visits it served, `rec[m] = (slot, node, start,
service, measured)` in order of arrival at the stage, handed to `Recorder.node_busy` in the order they started
(`emit`), as simpy calls it when each starts.

A stage that retries (`retries[f]` > 0) sends a rejected visit or shard at once to another node not holding a
part of the visit, as simpy does in the same process, while its retries last (each recorded as `tried[m] =
(slot, time)`). A timed-out one (not one left at its request's deadline) is sent again when it leaves its queue,
among the stage's later arrivals: its visit waits in a row of `later` (the request, its parts, the nodes holding
them in `later_held`), and the fleet's heap of resends (`resend_t`, `resend_id`: time, then the order pushed) says when;
the parts of a visit that time out together are sent again in the order they were first sent.

Node loss (`node_loss` faults, known before the run): per fleet, its nodes' losses and returns in time order
(`loss_t`, how many nodes `loss_n`, whether they go down `loss_down`), applied before the balancer next looks
(`apply_losses`, at or after their time): a lost node is marked `down` (skipped by every balancer, as
`core.fleet.FleetPolicy` skips it), its servers freed and its waiters dropped (it returns empty). A part sent to
a node that will be lost while it holds the part (queued, or in service, until it ends, times out or is left at
its request's deadline) is lost then: it waits in `later` for a resend of its own at the loss time, keyed (time,
node, the order it was sent: `parts[j, 9]`), the order in which `sim.pools.StagePool.lose` fails what a node
holds (its nodes in turn, each in the order its visits came), then it is sent again to another live node while
the stage's retries last, else fails. One cut in service stops its busy time there (a cut row `(slot, node,
loss time, end, -1)` in `rec`, handed to `Recorder.cut` in turn with the visits' starts). A visit that fails at
the loss time ends in simpy's order (`loss_order`): the processes it ends through resume one event after another.

A sharded stage (`shards[f]` > 1) picks a distinct node for each of a visit's shards, every pick from the counts
before any of them joins, as `core.fleet.FleetPolicy.first_nodes` does; each shard joins its node's pool at the
visit's arrival with its own service (its request's `shard_s[i, shard_at[f] + j]`, plus a cache miss), the last
shard first, then the others in order (simpy serves the last in the visit's own process, the others in
processes started after it). The visit ends with its last shard, with the largest of their outcomes; completed,
its times are those of its first shard to end last, its service the slowest shard's with no waiting, and, for a
measured request, `skew[m] = (slot, end, slowest end - median end)`, handed to `Recorder.shard_skew_many` in the
order the visits ended.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
from numba import njit

from aif_sim.compiled.batching import load, pop_row
from aif_sim.core.balance import BLOCK
from aif_sim.core.traffic import stream
from aif_sim.metrics.recorder import Recorder
from aif_sim.scenario.schema import NodeLoss, Scenario

if TYPE_CHECKING:
    from aif_sim.compiled.hedges import HedgeState

KINDS = {"random": 0, "round_robin": 1, "least_outstanding": 2, "p2c": 3}
PART = 11  # columns of a part: node, outcome, start, end, service, a sorted end, retries so far, its own service,
# whether it waits to be sent again at its end (SETTLED; TIMED_OUT_WAIT, LOST_WAIT, and once its resend is pushed, those
# + PUSHED), the order it was sent in when it is lost, the order it was failed in at its node's loss (-1: not lost)
SETTLED, TIMED_OUT_WAIT, LOST_WAIT, PUSHED = 0.0, 1.0, 2.0, 2.0
LEVEL = 1 << 48  # orders of visits ending at a loss time: level * LEVEL + the order they were failed in
ROWS = 1 << 24  # more than `later` has rows: a resend's id is `sequence * ROWS + row`
DRAWS = (1, 0, 0, 2)  # uniforms per pick, by kind
RANDOM, ROUND_ROBIN, LEAST_OUTSTANDING, P2C = range(4)
COMPLETED, REJECTED, TIMED_OUT = 0, 1, 2  # core.request.Outcome


class FleetState:
    """The fleet stages of a pipeline: `fleet_of[slot]` (-1: one pool) and the state the kernels take."""

    def __init__(self, scenario: Scenario, pipeline: str, hedges: HedgeState | None = None) -> None:
        """`hedges`: the pipeline's hedged stages, prepared, remapped and accounted with the fleets."""
        self.hedges = hedges
        names = scenario.pipeline(pipeline).stages
        slots = [slot for slot, name in enumerate(names) if scenario.stages[name].nodes > 1]
        configs = [scenario.stages[names[slot]] for slot in slots]
        self.fleet_of = np.full(len(names), -1, np.int64)
        self.fleet_of[slots] = np.arange(len(slots))
        self.rngs = [stream(scenario.seed, f"balance:{names[slot]}") for slot in slots]
        self.drawn = [np.empty(0) for _ in slots]  # uniforms drawn, not yet taken
        # the most sends of a part: each try (the first and its retries) and, hedged, its copy
        self.sends = np.array([(1 + c.retries) * (1 + (c.hedge_after_ms is not None)) for c in configs], np.int64)
        nodes = [config.nodes for config in configs]
        shards = [config.shards for config in configs]
        self.shard_at = np.full(len(names), -1, np.int64)  # each sharded slot's first column of the shard services
        columns = 0
        for slot, config in zip(slots, configs):
            if config.shards > 1:
                self.shard_at[slot] = columns
                columns += config.shards
        self.shard_columns = max(1, columns)
        self.state = (
            np.array(nodes, np.int64),
            np.array([KINDS[config.balance] for config in configs], np.int64),
            np.array(nodes, np.int64) - 1,  # round robin's last pick
            np.empty((len(slots), 0)),  # uniforms
            np.zeros(len(slots), np.int64),  # uniforms taken
            np.cumsum([0, *nodes]).astype(np.int64),  # each fleet's first row of waits
            np.empty((max(1, sum(nodes)), 16)),  # waits: per node, a heap of its waiters' queue-leave times
            np.zeros(max(1, sum(nodes)), np.int64),  # queued: per node, its waiters in the heap
            np.empty((64, 5)),  # rec
            np.zeros(1, np.int64),  # rec_n
            np.array(shards, np.int64),
            self.shard_at[slots],
            np.empty((64, 3)),  # skew
            np.zeros(1, np.int64),  # skew_n
            np.zeros(max(nodes, default=1), np.bool_),  # holding: the nodes a visit's shards were sent to
            np.empty((max(nodes, default=1), PART)),  # parts: per shard, the columns of PART
            np.array([config.retries for config in configs], np.int64),
            np.empty((64, 2)),  # tried: (slot, time) of each retry
            np.zeros(1, np.int64),  # tried_n
            np.full((0, 8), -1, np.int64),  # later: visits with a part to send again later (request, slot, fleet,
            # parts unsettled, measured, p, first, stop; request -1: a free row)
            np.empty((0, 2)),  # later_t: their (sent, deadline)
            np.empty((0, max(shards, default=1), PART)),  # later_parts: their `parts`
            np.zeros(0, np.int64),  # free rows of `later`, a stack
            np.zeros(1, np.int64),  # free rows on the stack
            np.empty((len(slots), 0)),  # resend_t: per fleet, a heap of the times parts are sent again
            np.empty((len(slots), 0), np.int64),  # resend_id: with them, sequence * ROWS + row (ties: by node, in order sent)
            np.zeros(len(slots), np.int64),  # resends per fleet
            np.zeros(1, np.int64),  # resends pushed so far
        )
        # resend_node, resend_part: the node a lost part was lost with and the part (-1, -1: the parts timed out then)
        self.state += (np.empty((len(slots), 0), np.int64), np.empty((len(slots), 0), np.int64))
        self.state += _losses(scenario, [names[slot] for slot in slots], nodes)
        self.state += (np.zeros((0, max(nodes, default=1)), np.bool_),)  # later_held: the nodes holding a part of each
        losing = {fault.stage for fault in scenario.faults if isinstance(fault, NodeLoss)}
        self.resending = sum(
            (config.retries > 0 and config.timeout_ms is not None) or names[slot] in losing for slot, config in zip(slots, configs)
        )
        self.losing = np.array([names[slot] in losing for slot in slots], np.bool_)

    def prepare(self, arrivals: int) -> None:
        """Room for `arrivals` more visits per fleet: waiters, uniforms and records."""
        (
            nodes,
            kind,
            last,
            uniforms,
            taken,
            row_at,
            waits,
            queued,
            rec,
            rec_n,
            shards,
            shard_at,
            skew,
            skew_n,
            holding,
            parts,
            retries,
            tried,
            tried_n,
        ) = self.state[:19]
        if not len(nodes):
            return
        if self.hedges is not None:
            self.hedges.prepare(arrivals)
        later = self._later(arrivals)
        sends = (arrivals * shards * self.sends * np.where(self.losing, 2, 1)).sum()  # a busy row, and a cut one
        width = max(int(queued.max()) + arrivals, waits.shape[1])
        if width > waits.shape[1]:
            grown = np.empty((len(waits), width))
            grown[:, : waits.shape[1]] = waits
            waits = grown
        for f in range(len(nodes)):
            self.drawn[f] = self.drawn[f][taken[f] :]
            blocks = -(-(DRAWS[kind[f]] * shards[f] * self.sends[f] * arrivals - len(self.drawn[f])) // BLOCK)
            if blocks > 0:  # whole blocks, as `Uniforms` draws them (the same stream as one block at a time)
                self.drawn[f] = np.concatenate([self.drawn[f], self.rngs[f].random(blocks * BLOCK)])
        taken[:] = 0
        uniforms = np.zeros((len(nodes), max(len(drawn) for drawn in self.drawn)))
        for f, drawn in enumerate(self.drawn):
            uniforms[f, : len(drawn)] = drawn
        rec = _room(rec, int(rec_n[0]) + int(sends))
        skew = _room(skew, int(skew_n[0]) + arrivals * len(nodes))
        tried = _room(tried, int(tried_n[0]) + arrivals * int((shards * retries).sum()))
        losses = self.state[30:37]
        self.state = (nodes, kind, last, uniforms, taken, row_at, waits, queued, rec, rec_n, shards, shard_at, skew, skew_n, holding, parts)
        self.state += (retries, tried, tried_n, *later[:11], *losses, later[11])

    def _later(self, arrivals: int) -> tuple:
        """The state of the parts sent again later (`later`, ... `resends`), with room for `arrivals` more visits."""
        later, later_t, later_parts, stack, stacked, resend_t, resend_id, resends, pushed, resend_node, resend_part = self.state[19:30]
        held = self.state[37]
        if not self.resending:
            return (*self.state[19:30], held)
        need = arrivals * self.resending  # a visit per request and resending fleet at most
        if int(stacked[0]) < need:
            rows = len(later)
            more = max(rows, need)
            later = np.concatenate([later, np.full((more, later.shape[1]), -1, np.int64)])
            later_t = np.concatenate([later_t, np.empty((more, 2))])
            later_parts = np.concatenate([later_parts, np.empty((more, *later_parts.shape[1:]))])
            held = np.concatenate([held, np.zeros((more, held.shape[1]), np.bool_)])
            free_rows = np.concatenate([stack[: stacked[0]], np.arange(rows + more - 1, rows - 1, -1, dtype=np.int64)])
            stack = np.empty(rows + more, np.int64)  # room for every row
            stack[: len(free_rows)] = free_rows
            stacked[0] = len(free_rows)
        width = len(later) * int(later_parts.shape[1])  # a resend per part waiting at most
        if width > resend_t.shape[1]:
            more = width - resend_t.shape[1]
            resend_t = np.concatenate([resend_t, np.empty((len(resend_t), more))], axis=1)
            resend_id, resend_node, resend_part = (
                np.concatenate([column, np.empty((len(column), more), np.int64)], axis=1)
                for column in (resend_id, resend_node, resend_part)
            )
        assert len(later) < ROWS
        return later, later_t, later_parts, stack, stacked, resend_t, resend_id, resends, pushed, resend_node, resend_part, held

    def remap(self, new_index: np.ndarray) -> None:
        """The requests were compacted (`new_index[old]`): the visits waiting to send a part again follow."""
        later = self.state[19]
        used = later[:, 0] >= 0
        later[used, 0] = new_index[later[used, 0]]
        if self.hedges is not None:
            self.hedges.remap(new_index)

    def emit(self, recorder: Recorder, before: float) -> None:
        """Account the visits that started before `before` (`Recorder.node_busy`) in the order they started (those cut
        by a node's loss, `Recorder.cut`, in their turn at the loss time), the
        sharded visits that ended before it (`Recorder.shard_skew`) in the order they ended, and the retries sent
        before it, and drop them."""
        if not len(self.state[0]):  # no stage of several nodes
            return
        rec, rec_n, skew, skew_n = self.state[8], self.state[9], self.state[12], self.state[13]
        slots = len(self.shard_at)
        recorder.node_busy_rows(*_taken(rec, rec_n, 2, before, slots))
        for slot, mine in _by_slot(*_taken(skew, skew_n, 1, before, slots)):
            recorder.shard_skew_many(slot, mine[:, 2])
        for slot, mine in _by_slot(*_taken(self.state[17], self.state[18], 1, before, slots)):
            recorder.retry(slot, len(mine))
        if self.hedges is not None:
            self.hedges.emit(recorder, before)


def _losses(scenario: Scenario, names: list[str], nodes: list[int]) -> tuple:
    """The loss timetables of the fleets `names` (`sim.background.fault` applying each `node_loss`: its nodes down at
    `at_s`, up again at `at_s + duration_s`), in time order (equal times stay on simpy: `support`): per fleet its
    first event (`loss_at`), then each event's time, nodes and whether they go down; the next event to apply, each
    node's state (`down`, rows as `waits`') and the nodes down per fleet."""
    events: list[list[tuple[float, int, bool]]] = [[] for _ in names]
    for fault in scenario.faults:
        if isinstance(fault, NodeLoss) and fault.stage in names:
            f = names.index(fault.stage)
            events[f] += [(fault.at_s, fault.nodes, True), (fault.at_s + fault.duration_s, fault.nodes, False)]
    ordered = [sorted(mine, key=lambda event: event[0]) for mine in events]
    flat = [event for mine in ordered for event in mine]
    return (
        np.cumsum([0, *map(len, ordered)]).astype(np.int64),
        np.array([event[0] for event in flat], np.float64),
        np.array([event[1] for event in flat], np.int64),
        np.array([event[2] for event in flat], np.bool_),
        np.cumsum([0, *map(len, ordered)])[:-1].astype(np.int64),
        np.zeros(max(1, sum(nodes)), np.bool_),
        np.zeros(len(names), np.int64),
    )


def _by_slot(firsts: np.ndarray, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Each slot's rows (`rows[firsts[slot] : firsts[slot + 1]]`), with the slot, for the slots that have some."""
    for slot in np.flatnonzero(np.diff(firsts)).tolist():
        yield slot, rows[firsts[slot] : firsts[slot + 1]]


@njit(cache=True)
def _taken(rows: np.ndarray, count: np.ndarray, column: int, before: float, slots: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count[0]` rows whose `column` is below `before`, taken out (the others kept, in order, at the
    front), ordered by slot (column 0, below `slots`), then by `column`, ties in their order (`np.lexsort`'s); with
    each slot's first row among them (`firsts[slot]`, and their number last)."""
    firsts = np.zeros(slots + 1, np.int64)
    for r in range(count[0]):
        if rows[r, column] < before:
            firsts[int(rows[r, 0]) + 1] += 1
    for slot in range(slots):
        firsts[slot + 1] += firsts[slot]
    index = np.empty(firsts[slots], np.int64)
    keys = np.empty(firsts[slots])
    at = firsts[:-1].copy()
    for r in range(count[0]):
        if rows[r, column] < before:
            slot = int(rows[r, 0])
            index[at[slot]] = r
            keys[at[slot]] = rows[r, column]
            at[slot] += 1
    for slot in range(slots):
        _sort_by_key(index, keys, firsts[slot], firsts[slot + 1])
    width = rows.shape[1]
    out = np.empty((len(index), width))
    for q in range(len(index)):
        for c in range(width):
            out[q, c] = rows[index[q], c]
    kept = 0
    for r in range(count[0]):
        if not rows[r, column] < before:
            for c in range(width):
                rows[kept, c] = rows[r, c]
            kept += 1
    count[0] = kept
    return firsts, out


@njit(cache=True)
def _sort_by_key(index: np.ndarray, keys: np.ndarray, lo: int, hi: int) -> None:
    """`index[lo:hi]` (increasing) and their `keys[lo:hi]` ordered by key, stable: nearly in order already (a stage's
    visits start, and end, about in the order they arrive), so an insertion sort, unless it has to move them far
    (then a merge sort)."""
    moves, budget = 0, 16 * (hi - lo) + 64
    for i in range(lo + 1, hi):
        r, k = index[i], keys[i]
        j = i
        while j > lo and keys[j - 1] > k:
            index[j], keys[j] = index[j - 1], keys[j - 1]
            j -= 1
        index[j], keys[j] = r, k
        moves += i - j
        if moves > budget:  # the part before i is a stable sort of its own: a stable sort by key of the whole keeps it so
            order = np.argsort(index[lo:hi])
            part, by_key = index[lo:hi][order], keys[lo:hi][order]
            order = np.argsort(by_key, kind="mergesort")
            index[lo:hi], keys[lo:hi] = part[order], by_key[order]
            return


def _room(rows: np.ndarray, need: int) -> np.ndarray:
    """`rows`, or a larger copy of it with room for `need` rows."""
    if need <= len(rows):
        return rows
    grown = np.empty((max(need, 2 * len(rows)), rows.shape[1]))
    grown[: len(rows)] = rows
    return grown


@njit(cache=True, _nrt=False)
def _left(waits: np.ndarray, queued: np.ndarray, row: int, t: float) -> int:
    """A node's waiters still queued at t: those that left by t (started, timed out, abandoned at their request's
    deadline) popped from its heap of leave times `waits[row, :queued[row]]`."""
    size = queued[row]
    while size > 0 and waits[row, 0] <= t:
        size = pop_row(waits, row, size, waits, False)
    queued[row] = size
    return size


@njit(cache=True, _nrt=False)
def _join(waits: np.ndarray, queued: np.ndarray, row: int, leave: float) -> None:
    """A waiter that leaves the node's queue at `leave` joins its heap."""
    pos = queued[row]
    queued[row] = pos + 1
    while pos > 0:
        parent = (pos - 1) >> 1
        if waits[row, parent] <= leave:
            break
        waits[row, pos] = waits[row, parent]
        pos = parent
    waits[row, pos] = leave


@njit(cache=True, _nrt=False)
def _outstanding(free: np.ndarray, base: int, threads: int, waits: np.ndarray, queued: np.ndarray, row: int, t: float) -> int:
    """A node's visits at t: its servers busy then and its waiters that have not left by t."""
    busy = 0
    for s in range(base, base + threads):
        if free[s] > t:
            busy += 1
    return busy + _left(waits, queued, row, t)


@njit(cache=True, _nrt=False)
def _load(
    node: int, t: float, base: int, threads: int, free: np.ndarray, waits: np.ndarray, queued: np.ndarray, row: int, batch: int, bs: tuple
) -> int:
    """A node's outstanding visits at t: a pool's (`_outstanding`), or a batching queue's (`batching.load`)."""
    if batch >= 0:
        return load(batch + node, bs)
    return _outstanding(free, base + node * threads, threads, waits, queued, row + node, t)


@njit(cache=True, _nrt=False)
def _eligible(j: int, holding: np.ndarray, held: int, down: np.ndarray, row: int, downs: int) -> int:
    """The j-th node (ascending) neither in `holding` (where `held` nodes are) nor down (`down[row + node]`, `downs`
    nodes of the fleet down)."""
    if held == 0 and downs == 0:
        return j
    node = -1
    while j >= 0:
        node += 1
        if not holding[node] and not (downs and down[row + node]):
            j -= 1
    return node


@njit(cache=True, _nrt=False)
def losses_due(f: int, t: float, fleets: tuple) -> bool:
    """Whether fleet f has a node loss or return at or before t not applied yet (`apply_losses`)."""
    loss_at, loss_t, loss_next = fleets[30], fleets[31], fleets[34]
    e = loss_next[f]
    return e < loss_at[f + 1] and loss_t[e] <= t


@njit(cache=True, _nrt=False)
def apply_losses(f: int, t: float, base: int, threads: int, free: np.ndarray, fleets: tuple) -> None:
    """Fleet f's node losses and returns at or before t (the first of them due): a lost node is down, its servers
    free and its waiters gone (it returns empty); a returning node is up."""
    loss_at, loss_t, loss_n, loss_down, loss_next, down, downs = fleets[30:37]
    e = loss_next[f]
    row, queued = fleets[5][f], fleets[7]
    while e < loss_at[f + 1] and loss_t[e] <= t:
        for node in range(loss_n[e]):
            if loss_down[e]:
                downs[f] += not down[row + node]
                down[row + node] = True
                queued[row + node] = 0
                for s in range(base + node * threads, base + (node + 1) * threads):
                    free[s] = -np.inf
            else:
                downs[f] -= down[row + node]
                down[row + node] = False
        e += 1
    loss_next[f] = e


@njit(cache=True, _nrt=False)
def lost_at(f: int, node: int, x: float, fleets: tuple) -> float:
    """When fleet f's node `node` is next lost after x (inf: never)."""
    loss_at, loss_t, loss_n, loss_down, loss_next = fleets[30:35]
    for e in range(loss_next[f], loss_at[f + 1]):
        if loss_down[e] and loss_n[e] > node and loss_t[e] > x:
            return loss_t[e]
    return np.inf


@njit(cache=True, _nrt=False)
def pick(f: int, t: float, base: int, threads: int, free: np.ndarray, fleets: tuple, held: int, batch: int, bs: tuple) -> int:
    """The node fleet f's balancer picks for a visit or shard arriving at t (`core.balance`) among its live nodes not
    holding another shard of the visit (`holding`, `held` of them), -1 when there is none (no draw taken); the
    stage's servers start at `free[base]`, `threads` per node, or, for a batching stage, its nodes are the queues
    `batch + node` of the batching state `bs`. A fleet that loses nodes has its losses and returns by t applied
    first (`apply_losses`, by the caller: kept out of here, the balancers' hot path)."""
    nodes, kind, last, uniforms, taken, row_at, waits, queued = fleets[:8]
    holding, down, downs = fleets[14], fleets[35], fleets[36]
    row, gone = row_at[f], downs[f]
    count = nodes[f] - held
    if gone:
        count = 0
        for node in range(nodes[f]):
            count += not holding[node] and not down[row + node]
    if count == 0:
        return -1
    k = kind[f]
    if k == RANDOM:
        u = uniforms[f, taken[f]]
        taken[f] += 1
        return _eligible(int(u * count), holding, held, down, row, gone)
    if k == ROUND_ROBIN:
        node = last[f] + 1
        while node < nodes[f] and ((held and holding[node]) or (gone and down[row + node])):
            node += 1
        if node >= nodes[f]:
            node = _eligible(0, holding, held, down, row, gone)
        last[f] = node
        return node
    if k == LEAST_OUTSTANDING:
        best, fewest = -1, 0
        for node in range(nodes[f]):
            if (held and holding[node]) or (gone and down[row + node]):
                continue
            load = _load(node, t, base, threads, free, waits, queued, row, batch, bs)
            if best < 0 or load < fewest:
                best, fewest = node, load
        return best
    u, v = uniforms[f, taken[f]], uniforms[f, taken[f] + 1]
    taken[f] += 2
    first = int(u * count)
    if count == 1:
        return _eligible(0, holding, held, down, row, gone)
    second = int(v * (count - 1))
    if second >= first:
        second += 1
    first, second = _eligible(first, holding, held, down, row, gone), _eligible(second, holding, held, down, row, gone)
    a = _load(first, t, base, threads, free, waits, queued, row, batch, bs)
    b = _load(second, t, base, threads, free, waits, queued, row, batch, bs)
    return second if b < a else first


@njit(cache=True, _nrt=False)
def visit_node(
    f: int, node: int, t: float, m: float, limit: int, timeout: float, deadline: float, fleets: tuple
) -> tuple[int, float, float]:
    """A visit arriving at t at a node whose first server frees at m: (outcome, start, end; the end once served is
    the caller's) as the node's FIFO pool decides (rejected when `limit` >= 0 wait, timed out when no server is
    handed over within `timeout`, or by its request's `deadline`, when it leaves the queue); a visit that queues
    joins the node's waiters with its queue-leave time."""
    row = fleets[5][f] + node
    waits, queued = fleets[6], fleets[7]
    if m <= t:  # a free server: every waiter has left
        queued[row] = 0
        return COMPLETED, t, t
    if _left(waits, queued, row, t) >= limit >= 0:
        return REJECTED, t, t
    leave = min(t + timeout, deadline)
    if m > leave:
        _join(waits, queued, row, leave)
        return TIMED_OUT, t, leave
    _join(waits, queued, row, m)
    return COMPLETED, m, m


@njit(cache=True, _nrt=False)
def served_at_node(f: int, node: int, slot: int, start: float, service: float, measured: bool, fleets: tuple) -> None:
    """A visit started on the node: its busy time for `Recorder.node_busy`."""
    rec, rec_n = fleets[8], fleets[9]
    m = rec_n[0]
    rec[m, 0], rec[m, 1], rec[m, 2], rec[m, 3], rec[m, 4] = slot, node, start, service, measured
    rec_n[0] = m + 1


@njit(cache=True, _nrt=False)
def cut_at_node(node: int, slot: int, at: float, end: float, fleets: tuple) -> None:
    """A part in service on the node until `end` stopped at `at` (the node was lost): a cut row for `Recorder.cut`."""
    rec, rec_n = fleets[8], fleets[9]
    m = rec_n[0]
    rec[m, 0], rec[m, 1], rec[m, 2], rec[m, 3], rec[m, 4] = slot, node, at, end, -1.0
    rec_n[0] = m + 1


@njit(cache=True, _nrt=False)
def loss_order(parts: np.ndarray, k: int, at: float, hops: int) -> int:
    """The order of a visit of k parts that failed at `at`, its node's loss, among the others failing then, as simpy
    resumes them: the processes a failed part was interrupted in resume at once, in the order failed (`parts[j, 10]`);
    a visit whose shards ran in processes of their own (all but its last) ends one event later, when the last of
    them failing then has ended, and `hops` events after that its request (a parallel branch of its own, a deadline's
    process and its condition)."""
    level, order = 0, parts[k - 1, 10]
    for j in range(k - 1):
        if parts[j, 3] == at and parts[j, 10] >= 0:
            if level == 0 or parts[j, 10] > order:
                order = parts[j, 10]
            level = 1
    return (level + hops) * LEVEL + int(order)


@njit(cache=True, _nrt=False)
def parts_over(
    f: int, i: int, slot: int, t: float, deadline: float, service: np.ndarray, times: np.ndarray, measured: bool, fleets: tuple
) -> tuple[int, float]:
    """Request i's visit sent at t, its shards (or itself) decided (`parts`): its outcome and end, as `sim.fleet.Fleet`
    ends it (completed by the request's deadline: its times, its slowest shard's service, and, measured and
    sharded, its skew record)."""
    shards, parts, skew, skew_n = fleets[10], fleets[15], fleets[12], fleets[13]
    k = shards[f]
    o, end, last, alone = COMPLETED, parts[0, 3], 0, parts[0, 4]
    for j in range(k):
        o = max(o, int(parts[j, 1]))
        if parts[j, 3] > end:
            end, last = parts[j, 3], j
        alone = max(alone, parts[j, 4])
    if o != COMPLETED or end > deadline:
        return o, end
    times[i, slot, 0], times[i, slot, 1], times[i, slot, 2] = t, parts[last, 2], end
    service[i, slot] = alone
    if measured and k > 1:
        for j in range(k):  # the ends, sorted, for their median (np.median's arithmetic)
            x, q = parts[j, 3], j
            while q > 0 and parts[q - 1, 5] > x:
                parts[q, 5] = parts[q - 1, 5]
                q -= 1
            parts[q, 5] = x
        median = parts[k // 2, 5] if k % 2 else (parts[k // 2 - 1, 5] + parts[k // 2, 5]) / 2
        m = skew_n[0]
        skew[m, 0], skew[m, 1], skew[m, 2] = slot, end, end - median
        skew_n[0] = m + 1
    return o, end


@njit(cache=True, _nrt=False)
def retried(f: int, slot: int, t: float, fleets: tuple) -> None:
    """A part of a visit to fleet f was sent again at t: a retry to account."""
    tried, tried_n = fleets[17], fleets[18]
    m = tried_n[0]
    tried[m, 0], tried[m, 1] = slot, t
    tried_n[0] = m + 1


# --- a min-heap of timed entries over parallel arrays ------------------------------------------------------
# `heap` = (times, ids, keys, values, sizes): heap f's entries in row f of the first four, `sizes[f]` of them; an
# entry comes before another by time, then by key, then by id (the order it was pushed in, or sent).
@njit(cache=True, _nrt=False)
def _before(heap: tuple, f: int, a: int, b: int) -> bool:
    """Whether entry a of heap f comes before entry b."""
    t, ids, keys = heap[0], heap[1], heap[2]
    return t[f, a] < t[f, b] or (t[f, a] == t[f, b] and (keys[f, a] < keys[f, b] or (keys[f, a] == keys[f, b] and ids[f, a] < ids[f, b])))


@njit(cache=True, _nrt=False)
def _swap(heap: tuple, f: int, a: int, b: int) -> None:
    t, ids, keys, values = heap[0], heap[1], heap[2], heap[3]
    t[f, a], t[f, b] = t[f, b], t[f, a]
    ids[f, a], ids[f, b] = ids[f, b], ids[f, a]
    keys[f, a], keys[f, b] = keys[f, b], keys[f, a]
    values[f, a], values[f, b] = values[f, b], values[f, a]


@njit(cache=True, _nrt=False)
def heap_push(heap: tuple, f: int, at: float, key: int, entry: int, value: int) -> None:
    """An entry at `at` (its `key`, its id `entry`) joins heap f with its `value`."""
    t, ids, keys, values, sizes = heap
    pos = sizes[f]
    sizes[f] = pos + 1
    t[f, pos], ids[f, pos], keys[f, pos], values[f, pos] = at, entry, key, value
    while pos > 0 and _before(heap, f, pos, (pos - 1) >> 1):
        parent = (pos - 1) >> 1
        _swap(heap, f, pos, parent)
        pos = parent


@njit(cache=True, _nrt=False)
def heap_pop(heap: tuple, f: int) -> tuple[float, int, int]:
    """Heap f's first entry taken out: (its time, its id, its value)."""
    t, ids, values, sizes = heap[0], heap[1], heap[3], heap[4]
    at, entry, value = t[f, 0], ids[f, 0], values[f, 0]
    size = sizes[f] - 1
    sizes[f] = size
    _swap(heap, f, 0, size)
    pos = 0
    while 2 * pos + 1 < size:
        child = 2 * pos + 1
        if child + 1 < size and _before(heap, f, child + 1, child):
            child += 1
        if not _before(heap, f, child, pos):
            break
        _swap(heap, f, pos, child)
        pos = child
    return at, entry, value


@njit(cache=True, _nrt=False)
def push_resend(f: int, at: float, row: int, fleets: tuple, node: int = -1, part: int = -1, sequence: int = -1) -> None:
    """The parts of the visit in `later[row]` that time out at `at` are sent again then; or (`part` >= 0) its part
    lost with `node` at `at`, sent in the order `sequence` (`sim.pools.StagePool.lose`'s order). Fleet f's resends
    come by time, then by node (a node loss fails its nodes in turn), then in the order they were pushed (or sent)."""
    pushed = fleets[27]
    if sequence < 0:
        sequence = pushed[0]
        pushed[0] += 1
    heap_push(_resend_heap(fleets), f, at, node, sequence * ROWS + row, part)


@njit(cache=True, _nrt=False)
def pop_resend(f: int, fleets: tuple) -> tuple[float, int, int]:
    """Fleet f's first resend taken out: (its time, its row of `later`, the part lost then or -1)."""
    at, entry, part = heap_pop(_resend_heap(fleets), f)
    return at, entry % ROWS, part


@njit(cache=True, _nrt=False)
def _resend_heap(fleets: tuple) -> tuple:
    """The resends' heap (`heap_push`): resend_t, resend_id, resend_node, resend_part, resends."""
    return fleets[24], fleets[25], fleets[28], fleets[29], fleets[26]
