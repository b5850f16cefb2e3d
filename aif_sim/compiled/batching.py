"""Batching stages in the compiled engine: `sim.pools.BatchingPool` as a state machine over arrays.

Per batching queue b (`BatchState.state`, one tuple the kernels take): a stage's one pool, or one node of a
stage of several nodes (its queues `slot_batch[slot]` on, one per node in order; `node[b]`):
- the queue: request indices `q_req[b, head:tail]`, their arrival times `q_at[b, head:tail]` and their requests'
  deadlines `q_due[b, head:tail]`, in FIFO order (`heads[b] = (head, tail)`); a waiter that left at its request's
  deadline stays there as -1 until skipped (as `core.batching.BatchQueue` keeps it), `live[b]` counts the others,
  `head` is always a live waiter's, and `next_due[b]` is the earliest deadline among them; every waiter of a stage
  has the same timeout, so the live waiters time out oldest first;
- the dispatcher: `phase[b]` IDLE (waiting for an arrival), ACQUIRE (waiting for a server) or FILL
  (holding a server until `max_size` wait or its timer `timer[b]` fires), `held[b]` whether it holds one;
- the batches in service: a min-heap of their end times `ends[b, :serving[b]]`, their sizes moved with them
  (`end_size`), and `members[b]` requests in them (with the live waiters, a node's load as a balancer sees it);
- the batches' service times, drawn ahead per stage c = `table_of[b]`: `table[c, j, size - 1]` is the stage's
  next j-th batch's service (ms) at `size` requests (`rows[c]` used so far this call), as `BatchingPool` draws
  them one at a time from the stage's stream; NaN when the services are a replayed trace (`core.replay`): the
  batch takes its members' mean;
- the finished batches for the recorder: `rec[m] = (slot, start, service, size, measured members, node)`.
Events happen in time order: a batch ends (its server goes to the dispatcher if it waits for one), the
oldest waiter times out, the dispatcher's timer fires, a waiter leaves at its request's deadline (the dispatcher is
not woken: simpy's is not; a member of a batch in service stays in it, its request leaving at the deadline); the sweep of the stage's step runs them up to each
arrival (`run_until`; a stage's nodes together, their events interleaved in time order, `run_stage`) and, once
the step's arrivals before the block limit are in, up to that limit.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from aif_sim.compiled.caches import insert
from aif_sim.compiled.deadlines import expire
from aif_sim.core.latency import Profile, Sampler
from aif_sim.core.traffic import stream
from aif_sim.scenario.schema import Scenario

COMPLETED, TIMED_OUT = 0, 2  # core.request.Outcome
IDLE, ACQUIRE, FILL = range(3)
ROWS = 1024  # batch service rows drawn at a time


def draw_table(sampler: Sampler, rng: np.random.Generator, rows: int, max_size: int) -> np.ndarray:
    """`rows` batches' service times (ms) [rows, max_size], each at every size, each batch one draw from `rng`:
    row j, column s - 1 is what `sampler.sample(rng, 1, s)` gives for the j-th batch."""
    sizes = np.arange(1, max_size + 1, dtype=float)
    if isinstance(sampler, Profile):
        median, sigma = sampler._at(sizes)
        return median[None, :] * np.exp(sigma[None, :] * rng.standard_normal(rows)[:, None])
    return np.repeat(sampler.sample(rng, rows, 1.0)[:, None], max_size, axis=1)


class BatchState:
    """The batching stages of a pipeline and their draws: one queue and dispatcher (entry b) per stage, or per node
    of a stage of several nodes (`slot_batch[slot]` its first entry, its nodes in order); a stage's nodes take
    their batch services from the stage's one stream, in the order their batches start (`table_of[b]`)."""

    def __init__(self, scenario: Scenario, names: list[str], samplers: dict[str, Sampler], traced: bool = False) -> None:
        self.traced = traced
        stages = [slot for slot, name in enumerate(names) if scenario.stages[name].batch is not None]
        configs = [scenario.stages[names[slot]] for slot in stages]
        nodes = [config.nodes for config in configs]
        self.slot_batch = np.full(len(names), -1, np.int64)
        self.slot_batch[stages] = np.cumsum([0, *nodes])[:-1]
        self.samplers = [samplers[names[slot]] for slot in stages]
        self.rngs = [stream(scenario.seed, f"batch-service:{names[slot]}") for slot in stages]
        sizes = [config.batch.max_size for config in configs if config.batch is not None]
        self.tables = [np.empty((0, size)) for size in sizes]
        per_entry = [
            (slot, config, c, node if n > 1 else -1) for c, (slot, config, n) in enumerate(zip(stages, configs, nodes)) for node in range(n)
        ]
        self.slots = [slot for slot, _, _, _ in per_entry]
        b = len(per_entry)
        width = max(sizes, default=1)
        threads = [config.threads_per_node for _, config, _, _ in per_entry]
        self.state = (
            np.array(self.slots, np.int64),
            np.array(threads, np.int64),
            np.array([sizes[c] for _, _, c, _ in per_entry], np.int64),
            np.array([config.batch.max_wait_ms / 1000 for _, config, _, _ in per_entry if config.batch is not None]),
            np.empty((b, 64), np.int64),  # q_req
            np.empty((b, 64)),  # q_at
            np.zeros((b, 2), np.int64),  # heads
            np.zeros(b, np.int64),  # phase
            np.full(b, math.inf),  # timer
            np.zeros(b, np.int64),  # held
            np.empty((b, max(threads, default=1))),  # ends: a heap of the end times of the batches in service
            np.zeros(b, np.int64),  # serving
            np.empty((len(stages), 0, width)),  # table, per stage
            np.zeros(len(stages), np.int64),  # rows, per stage
            np.empty((64, 6)),  # rec
            np.zeros(1, np.int64),  # rec_n
            np.array([c for _, _, c, _ in per_entry], np.int64),  # table_of
            np.array([node for _, _, _, node in per_entry], np.int64),  # node (-1: the stage's one pool)
            np.zeros(b, np.int64),  # members: requests in the batches in service
            np.zeros((b, max(threads, default=1)), np.int64),  # sizes of the batches in `ends`, moved with them
            np.empty((b, 64)),  # q_due: the waiters' requests' deadlines
            np.zeros(b, np.int64),  # live: the waiters that have not left
            np.full(b, math.inf),  # next_due: the earliest deadline among them
        )

    def prepare(self, arrivals: int) -> None:
        """Room for `arrivals` more waiters per queue, batch rows for every batch they and the waiters can make,
        and records for those batches; each queue moved to the front of its buffer."""
        slots, servers, sizes, waits, q_req, q_at, heads, phase, timer, held, ends, serving, table, rows, rec, rec_n = self.state[:16]
        table_of = self.state[16]
        span = heads[:, 1] - heads[:, 0]  # the waiters, and those that left and are not skipped yet
        need = int(span.max(initial=0)) + arrivals
        width = max(need, q_req.shape[1])
        q_due = self.state[20]
        queue_req, queue_at, queue_due = (
            np.empty((len(slots), width), np.int64),
            np.empty((len(slots), width)),
            np.empty((len(slots), width)),
        )
        for b, (head, tail) in enumerate(heads.tolist()):
            queue_req[b, : tail - head], queue_at[b, : tail - head] = q_req[b, head:tail], q_at[b, head:tail]
            queue_due[b, : tail - head] = q_due[b, head:tail]
        heads[:, 1] -= heads[:, 0]
        heads[:, 0] = 0
        for c in range(len(self.tables)):  # the rows the last call left unused come first
            batches = int(span[table_of == c].sum()) + arrivals  # the most batches the stage's nodes can start
            self.tables[c] = self.tables[c][rows[c] :]
            while len(self.tables[c]) < batches:
                size = self.tables[c].shape[1]
                drawn = np.full((ROWS, size), np.nan) if self.traced else draw_table(self.samplers[c], self.rngs[c], ROWS, size)
                self.tables[c] = np.concatenate([self.tables[c], drawn])
        rows[:] = 0
        table = np.zeros((len(self.tables), max((len(t) for t in self.tables), default=0), table.shape[2]))
        for c, drawn in enumerate(self.tables):
            table[c, : len(drawn), : drawn.shape[1]] = drawn
        if rec_n[0] + need * len(slots) > len(rec):
            grown = np.empty((max(rec_n[0] + need * len(slots), 2 * len(rec)), rec.shape[1]))
            grown[: rec_n[0]] = rec[: rec_n[0]]
            rec = grown
        state = list(self.state)
        state[4], state[5], state[12], state[14], state[20] = queue_req, queue_at, table, rec, queue_due
        self.state = tuple(state)

    def remap(self, new_index: np.ndarray) -> None:
        """The requests were compacted (`new_index[old]`): the waiters' indices follow."""
        q_req, heads = self.state[4], self.state[6]
        for b, (head, tail) in enumerate(heads):
            waiting = q_req[b, head:tail]
            waiting[waiting >= 0] = new_index[waiting[waiting >= 0]]

    def finished_batches(self, before: float) -> np.ndarray:
        """The batches that ended before `before`, in the order they ended, as rows (slot, start, service, size,
        measured, node (-1: the stage's one pool)), taken out of the records."""
        rec, rec_n = self.state[14], self.state[15]
        rows = rec[: rec_n[0]]
        done = rows[:, 1] + rows[:, 2] < before
        out = rows[done]
        out = out[np.argsort(out[:, 1] + out[:, 2], kind="stable")]
        kept = rows[~done]
        rec[: len(kept)] = kept
        rec_n[0] = len(kept)
        return out


@njit(cache=True, _nrt=False)
def slowdown_at(slot: int, x: float, slow_at: np.ndarray, slow_t: np.ndarray, slow_v: np.ndarray) -> float:
    """The service multiplier of the stage in `slot` at time x: `slow_v[j]` from `slow_t[j]` on, for j in
    `slow_at[slot] : slow_at[slot + 1]`, 1 before the first (stage_slowdown faults)."""
    factor = 1.0
    for j in range(slow_at[slot], slow_at[slot + 1]):
        if slow_t[j] <= x:
            factor = slow_v[j]
    return factor


@njit(cache=True, _nrt=False)
def visit_over(i: int, o: int, e: float, req: tuple, order: int = -1) -> None:
    """Request i's visit at its step ended at `e` with outcome `o`: the step's latest end so far, the order of the
    event that ended it (visits are numbered as their ends are decided: a batch's members in batch order, the
    order simpy resumes them in; or `order`, given) and its worst outcome."""
    arrive, step, outcome, end_s, pending, step_end, worst, end_order, rank, numbered, hop, ids, deadline = req
    if order < 0:
        order = numbered[0]
        numbered[0] += 1
    if e > step_end[i]:
        step_end[i] = e
        end_order[i] = order
    if o > worst[i]:
        worst[i] = o


@njit(cache=True, _nrt=False)
def visit_ended(i: int, o: int, e: float, k: int, steps: int, req: tuple, order: int = -1) -> None:
    """`visit_over` (`order`: its order, given), and when it was the last visit request i's step k waited for, the step is done: the
    request moves on (ranked among those moving on at the same time by the event that ended its step), or leaves;
    it leaves timed out at its `deadline` (`deadlines`) if the step, or its pause before the next, ends after it."""
    arrive, step, outcome, end_s, pending, step_end, worst, end_order, rank, numbered, hop, ids, deadline = req
    visit_over(i, o, e, req, order)
    pending[i] -= 1
    if pending[i] > 0:
        return
    rank[i] = end_order[i]
    last = worst[i] != COMPLETED or k == steps - 1
    if step_end[i] > deadline[i] or (not last and step_end[i] + hop[i, k + 1] > deadline[i]):
        expire(i, req)
    elif last:
        outcome[i] = worst[i]
        end_s[i] = step_end[i]
        step[i] = steps
    else:
        arrive[i] = step_end[i] + hop[i, k + 1]  # after its pause before the next step (a replayed trace's; else 0)
        step[i] = k + 1


@njit(cache=True, _nrt=False)
def wake(
    b: int,
    x: float,
    k: int,
    steps: int,
    bs: tuple,
    req: tuple,
    visits: tuple,
    guard: np.ndarray,
    reads: np.ndarray,
    caches: tuple,
    slow: tuple,
) -> None:
    """The dispatcher of queue b runs at time x from where it waits (`BatchingPool._dispatch`)."""
    slots, servers, sizes, waits, q_req, q_at, heads, phase, timer, held, ends, serving, table, rows, rec, rec_n = bs[:16]
    table_of, node_of, members_of, end_size, q_due, waiting = bs[16:22]
    times, miss, cache_hit, users, measured, service = visits
    slow_at, slow_t, slow_v = slow
    deadline = req[12]
    slot = slots[b]
    while True:
        live = waiting[b]
        if phase[b] == IDLE:
            if live == 0:
                return
            phase[b] = ACQUIRE
        if phase[b] == ACQUIRE:
            if serving[b] + held[b] >= servers[b]:
                return
            held[b] = 1
            phase[b] = FILL
        if 0 < live < sizes[b]:
            left = q_at[b, heads[b, 0]] + waits[b] - x
            if left > 0:
                timer[b] = x + left
                return
        timer[b] = math.inf
        held[b] = 0
        phase[b] = IDLE
        if live == 0:
            continue  # an empty batch: the server goes back
        size = min(live, sizes[b])
        head = heads[b, 0]
        last = _nth_live(q_req, b, head, size)  # the batch: the first `size` live waiters, `head : last + 1`
        c = table_of[b]
        drawn = table[c, rows[c], size - 1]
        rows[c] += 1
        longest = 0.0  # the batch waits for its slowest cache miss
        total = 0.0  # replayed (`drawn` NaN): the members' traced services, misses included
        members = 0
        for q in range(head, last + 1):
            i = q_req[b, q]
            if i >= 0:
                longest = max(longest, miss[i, slot])
                total += service[i, slot]
                members += measured[i]
        factor = slowdown_at(slot, x, slow_at, slow_t, slow_v)
        s = drawn / 1000 * factor + longest if drawn == drawn else total / size * factor
        e = x + s
        pos = serving[b]  # the batch's server frees at e
        serving[b] += 1
        members_of[b] += size
        while pos > 0 and ends[b, (pos - 1) >> 1] > e:
            ends[b, pos] = ends[b, (pos - 1) >> 1]
            end_size[b, pos] = end_size[b, (pos - 1) >> 1]
            pos = (pos - 1) >> 1
        ends[b, pos] = e
        end_size[b, pos] = size
        m = rec_n[0]
        rec[m, 0], rec[m, 1], rec[m, 2], rec[m, 3], rec[m, 4], rec[m, 5] = slot, x, s, size, members, node_of[b]
        rec_n[0] += 1
        heads[b, 0] = last + 1
        waiting[b] -= size
        _skip_left(b, bs)
        _earliest_due(b, bs)
        for q in range(head, last + 1):
            i = q_req[b, q]
            if i < 0:
                continue
            if e <= deadline[i]:  # a member whose request leaves first has no times here and makes no entry
                times[i, slot, 0], times[i, slot, 1], times[i, slot, 2] = q_at[b, q], x, e
                r = reads[slot]
                if r >= 0 and cache_hit[i, r] == 0.0:  # its read missed: the entry goes in now
                    insert(caches, r, i, k, e, users[i])
                if guard[slot] >= 0:
                    insert(caches, guard[slot], i, k, e, users[i])
            visit_ended(i, COMPLETED, e, k, steps, req)


@njit(cache=True, _nrt=False)
def run_until(
    first: int,
    count: int,
    x: float,
    timeout_s: float,
    k: int,
    steps: int,
    bs: tuple,
    req: tuple,
    visits: tuple,
    guard: np.ndarray,
    reads: np.ndarray,
    caches: tuple,
    slow: tuple,
) -> None:
    """The events before time x of a stage's queues `first : first + count` (its one pool, or its nodes), in time
    order across them (a stage's nodes draw their batch services from one stream in the order batches start):
    batches ending, the oldest waiter timing out, the dispatcher's timer, a waiter leaving at its deadline."""
    q_req, heads, ends, serving, members_of, end_size = bs[4], bs[6], bs[10], bs[11], bs[18], bs[19]
    while True:
        b, now = -1, x
        for q in range(first, first + count):
            t_end, t_out, t_fill = _events(q, timeout_s, bs)
            at = min(t_end, t_out, t_fill, bs[22][q])
            if at < now:
                b, now = q, at
        if b < 0:
            return
        t_end, t_out, t_fill = _events(b, timeout_s, bs)
        if now == t_out:
            i = q_req[b, heads[b, 0]]
            _leave(b, heads[b, 0], bs)
            visit_ended(i, TIMED_OUT, now, k, steps, req)
        elif now == t_end:
            members_of[b] -= end_size[b, 0]
            serving[b] = pop_row(ends, b, serving[b], end_size, True)
            if bs[7][b] == ACQUIRE:
                wake(b, now, k, steps, bs, req, visits, guard, reads, caches, slow)
        elif now == t_fill:
            wake(b, now, k, steps, bs, req, visits, guard, reads, caches, slow)
        else:  # a waiter's request reached its deadline: it leaves the queue
            q = _due_at(b, now, bs)
            i = q_req[b, q]
            _leave(b, q, bs)
            visit_ended(i, TIMED_OUT, now, k, steps, req)


@njit(cache=True, _nrt=False)
def join(b: int, i: int, t: float, due: float, bs: tuple) -> None:
    """Request i (its deadline `due`) joins queue b at t."""
    q_req, q_at, heads, q_due, waiting, next_due = bs[4], bs[5], bs[6], bs[20], bs[21], bs[22]
    tail = heads[b, 1]
    q_req[b, tail], q_at[b, tail], q_due[b, tail] = i, t, due
    heads[b, 1] = tail + 1
    waiting[b] += 1
    next_due[b] = min(next_due[b], due)


@njit(cache=True, _nrt=False)
def _nth_live(q_req: np.ndarray, b: int, head: int, n: int) -> int:
    """The position of the n-th live waiter of queue b from `head` on."""
    q = head
    while True:
        if q_req[b, q] >= 0:
            n -= 1
            if n == 0:
                return q
        q += 1


@njit(cache=True, _nrt=False)
def _leave(b: int, q: int, bs: tuple) -> None:
    """The waiter at position q of queue b leaves it (timed out, or at its deadline)."""
    q_req, q_due, waiting, next_due = bs[4], bs[20], bs[21], bs[22]
    due = q_due[b, q]
    q_req[b, q] = -1
    waiting[b] -= 1
    _skip_left(b, bs)
    if due == next_due[b]:
        _earliest_due(b, bs)


@njit(cache=True, _nrt=False)
def _earliest_due(b: int, bs: tuple) -> None:
    """`next_due[b]` found again among queue b's live waiters, after the one that held it left (no deadlines: inf)."""
    q_req, heads, q_due, next_due = bs[4], bs[6], bs[20], bs[22]
    if next_due[b] == math.inf:
        return
    next_due[b] = math.inf
    for p in range(heads[b, 0], heads[b, 1]):
        if q_req[b, p] >= 0:
            next_due[b] = min(next_due[b], q_due[b, p])


@njit(cache=True, _nrt=False)
def _skip_left(b: int, bs: tuple) -> None:
    """Queue b's head moved past the waiters that left, to its oldest live one."""
    q_req, heads = bs[4], bs[6]
    while heads[b, 0] < heads[b, 1] and q_req[b, heads[b, 0]] < 0:
        heads[b, 0] += 1


@njit(cache=True, _nrt=False)
def _due_at(b: int, t: float, bs: tuple) -> int:
    """The position of queue b's live waiter whose deadline is t (the first, of several)."""
    q_req, heads, q_due = bs[4], bs[6], bs[20]
    for q in range(heads[b, 0], heads[b, 1]):
        if q_req[b, q] >= 0 and q_due[b, q] == t:
            return q
    return -1


@njit(cache=True, _nrt=False)
def _events(b: int, timeout_s: float, bs: tuple) -> tuple[float, float, float]:
    """When queue b's next events happen (inf: none): its first batch to end, its oldest waiter's timeout, its timer."""
    q_at, heads, phase, timer, ends, serving, waiting = bs[5], bs[6], bs[7], bs[8], bs[10], bs[11], bs[21]
    t_end = ends[b, 0] if serving[b] > 0 else math.inf
    t_out = q_at[b, heads[b, 0]] + timeout_s if waiting[b] > 0 else math.inf
    return t_end, t_out, timer[b] if phase[b] == FILL else math.inf


@njit(cache=True, _nrt=False)
def pop_row(heap: np.ndarray, row: int, size: int, carried: np.ndarray, moves: bool) -> int:
    """Remove the minimum of the min-heap `heap[row, :size]`, moving `carried[row]`'s entries with theirs when
    `moves`; the new size."""
    size -= 1
    last, pos = heap[row, size], 0
    kept = carried[row, size] if moves else 0
    while 2 * pos + 1 < size:
        child = 2 * pos + 1
        if child + 1 < size and heap[row, child + 1] < heap[row, child]:
            child += 1
        if heap[row, child] >= last:
            break
        heap[row, pos] = heap[row, child]
        if moves:
            carried[row, pos] = carried[row, child]
        pos = child
    heap[row, pos] = last
    if moves:
        carried[row, pos] = kept
    return size


@njit(cache=True, _nrt=False)
def load(b: int, bs: tuple) -> int:
    """Queue b's requests, as a balancer counts them: waiting, and in the batches in service."""
    return bs[21][b] + bs[18][b]
