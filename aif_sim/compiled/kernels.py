"""Numba kernels of the compiled engine: the event times of the arrival process and the per-stage sweep.

State of a stage pool (slot s), kept across calls in flat arrays:
- `free[free_at[s] : free_at[s + 1]]`: a min-heap of its servers' free times (the end of the last visit
  each was given; -inf at first);
- `left[left_at[s] : left_at[s] + left_n[s]]`: with a queue limit, a min-heap of the times its live
  waiters leave the queue (when they start, or when they time out); its capacity is the queue limit,
  since a request only queues while fewer than `queue_limit` wait.
A stage of several nodes (`fleets`) splits its region of `free` into one heap per node and keeps each node's
waiters in `fleets`' state instead of `left`.

A visit at t to a pool whose heap minimum m <= t starts at t; otherwise, with a queue limit, the waiters
that have left by t are popped and it is rejected when `queue_limit` remain; otherwise it is given the
server that frees at m (FIFO: every earlier waiter has been given its server already) unless m > t +
timeout, when it leaves the queue at t + timeout without claiming one. This is `sim.pools.StagePool`
exactly, up to events at exactly equal times (whose order simpy decides by scheduling order).

`advance` counts no references (`_nrt=False`: its scratch arrays come from the caller), so a fleet's sharded or
retrying visit (`_fleet_visit`, `_send_part`) is inlined into it by numba (`inline="always"`) at no cost: called out
of line, each call copied the fleet and batching state tuples (some 550 machine words) onto the stack, most of what
a sharded visit cost on `bench/bench_sim.py --fleet`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from aif_sim.compiled.batching import join, run_until, slowdown_at, visit_ended, visit_over, wake
from aif_sim.compiled.caches import due, insert, lookup, lookup_own, settle
from aif_sim.compiled.deadlines import wasted, wasted_order
from aif_sim.compiled.fleets import (
    LOST_WAIT,
    PUSHED,
    SETTLED,
    TIMED_OUT_WAIT,
    apply_losses,
    cut_at_node,
    loss_order,
    losses_due,
    lost_at,
    parts_over,
    pick,
    pop_resend,
    push_resend,
    retried,
    served_at_node,
    visit_node,
)
from aif_sim.compiled.hedges import stage_send, stage_until

COMPLETED, REJECTED, TIMED_OUT = 0, 1, 2  # core.request.Outcome


@njit(cache=True)
def event_times(arrival_s: np.ndarray, now: float) -> np.ndarray:
    """The times simpy's arrival process wakes at: each `now + (arrival - now)` from the previous one."""
    out = np.empty_like(arrival_s)
    for i in range(len(arrival_s)):
        now = now + (arrival_s[i] - now)
        out[i] = now
    return out


@njit(cache=True, _nrt=False)
def replace_top(heap: np.ndarray, base: int, size: int, x: float) -> None:
    """The minimum of the min-heap `heap[base : base + size]` replaced by x. Bottom-up (Floyd): the hole left by the
    minimum goes down to a leaf along the smaller children, one branch-free comparison a level, then x climbs back
    to its place, which for a server's new free time (later than most) is at or near that leaf."""
    pos = 0
    last = size - 1
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        right = min(child + 1, last)
        child += heap[base + right] < heap[base + child]
        heap[base + pos] = heap[base + child]
        pos = child
    while pos > 0:
        parent = (pos - 1) >> 1
        if heap[base + parent] <= x:
            break
        heap[base + pos] = heap[base + parent]
        pos = parent
    heap[base + pos] = x


@njit(cache=True, _nrt=False)
def _push(heap: np.ndarray, base: int, size: int, x: float) -> int:
    """Push x on a heap of `size` entries; the new size."""
    pos = size
    while pos > 0:
        parent = (pos - 1) >> 1
        if heap[base + parent] > x:
            heap[base + pos] = heap[base + parent]
            pos = parent
        else:
            break
    heap[base + pos] = x
    return size + 1


@njit(cache=True, _nrt=False)
def _pop(heap: np.ndarray, base: int, size: int) -> int:
    """Remove the minimum of a heap of `size` entries; the new size."""
    size -= 1
    if size > 0:
        replace_top(heap, base, size, heap[base + size])
    return size


@njit(cache=True, _nrt=False)
def _stable_order(count: int, work: tuple) -> None:
    """`order[:count]` (`work`'s first three arrays: the requests, their keys and ties) ordered in place by key, ties
    by tie, then as they were. The arrivals at a step are the previous step's ends of requests taken in order of
    arrival, so nearly sorted: an insertion sort, unless it has to move them far (then a merge sort)."""
    order, keys, ties = work[:3]
    moves, budget = 0, 16 * count + 64
    for i in range(1, count):
        k, r, x = keys[i], ties[i], order[i]
        j = i - 1
        while j >= 0 and (keys[j] > k or (keys[j] == k and ties[j] > r)):
            keys[j + 1] = keys[j]
            ties[j + 1] = ties[j]
            order[j + 1] = order[j]
            j -= 1
        moves += i - 1 - j
        keys[j + 1] = k
        ties[j + 1] = r
        order[j + 1] = x
        if moves > budget:  # the part before i is a stable sort of its own: a stable sort of the whole keeps it so
            _merge_sort(count, work)
            return


@njit(cache=True, _nrt=False)
def _merge_sort(count: int, work: tuple) -> None:
    """`work`'s first three arrays (order, keys, ties) sorted in place by key, then tie, stably: a bottom-up merge
    sort through the next three (as long)."""
    width, passes = 1, 0
    while width < count:
        a, b = (work[:3], work[3:6]) if passes % 2 == 0 else (work[3:6], work[:3])
        for lo in range(0, count, 2 * width):
            mid, hi = min(lo + width, count), min(lo + 2 * width, count)
            i, j = lo, mid
            for q in range(lo, hi):
                if j >= hi or (i < mid and (a[1][i] < a[1][j] or (a[1][i] == a[1][j] and a[2][i] <= a[2][j]))):
                    b[0][q], b[1][q], b[2][q] = a[0][i], a[1][i], a[2][i]
                    i += 1
                else:
                    b[0][q], b[1][q], b[2][q] = a[0][j], a[1][j], a[2][j]
                    j += 1
        width *= 2
        passes += 1
    if passes % 2:
        for q in range(count):
            work[0][q], work[1][q], work[2][q] = work[3][q], work[4][q], work[5][q]


@njit(cache=True, _nrt=False)
def _nodes(f: int, fleets: tuple) -> int:
    """The nodes of fleet f (-1: a stage of one pool)."""
    return fleets[0][f] if f >= 0 else 1


@njit(cache=True, _nrt=False, inline="always")
def _fleet_visit(
    f: int,
    i: int,
    slot: int,
    t: float,
    base: int,
    threads: int,
    free: np.ndarray,
    limits: tuple,
    shard_s: np.ndarray,
    service: np.ndarray,
    times: np.ndarray,
    measured: bool,
    slow: tuple,
    fleets: tuple,
    abandon: tuple,
    batches: tuple,
) -> tuple[int, float]:
    """Request i's visit at t to fleet f's stage, sharded or retrying (`fleets`): a node picked for each shard (or the
    visit), then each sent to its node, the last first (`_send_part`); the visit's outcome and end
    (`fleets.parts_over`), or (-1, t) when a part timed out and is sent again later (`later`, `_resend_until`).
    `limits`: the stage's queue limit and timeout, and the cache miss each shard waits for; `abandon`: the
    request's deadline, its id, the step's calls `first:stop` and this call's position p among them, and the
    wasted records (`deadlines`)."""
    miss_s = limits[2]
    deadline, request, first, stop, p = abandon[:5]
    shards, shard_at, holding, parts = fleets[10], fleets[11], fleets[14], fleets[15]
    k = shards[f]
    held = 0
    if losses_due(f, t, fleets):  # nodes lost or back by t
        apply_losses(f, t, base, threads, free, fleets)
    for j in range(k):  # every pick sees the counts before any shard joins
        node = pick(f, t, base, threads, free, fleets, held, -1, batches)
        if node >= 0:
            holding[node] = True
            held += 1
        parts[j, 0] = node
    waiting = 0
    for q in range(k):
        j = k - 1 if q == 0 else q - 1
        parts[j, 6], parts[j, 7] = 0, service[i, slot] if k == 1 else shard_s[i, shard_at[f] + j] + miss_s
        parts[j, 10] = -1
        waiting += not _send_part(f, slot, j, t, False, base, threads, free, limits, measured, slow, fleets, abandon, batches)
    if waiting:
        later, later_t, later_parts, stack, stacked = fleets[19:24]
        stacked[0] -= 1
        row = stack[stacked[0]]
        later[row, 0], later[row, 1], later[row, 2], later[row, 3], later[row, 4] = i, slot, f, waiting, measured
        later[row, 5], later[row, 6], later[row, 7] = p, first, stop
        later_t[row, 0], later_t[row, 1] = t, deadline
        _wait(f, row, k, t + limits[1], fleets)
        return -1, t
    holding[:] = False
    return parts_over(f, i, slot, t, deadline, service, times, measured, fleets)


@njit(cache=True, _nrt=False)
def _wait(f: int, row: int, k: int, timeout_at: float, fleets: tuple) -> None:
    """The visit in `later[row]` waits for its unsettled parts (`parts`, kept with the nodes holding them): each part
    newly lost with its node is sent again at the loss time, and those newly timed out at `timeout_at` then."""
    later_parts, holding, parts, held = fleets[21], fleets[14], fleets[15], fleets[37]
    for node in range(fleets[0][f]):
        held[row, node] = holding[node]
    holding[:] = False
    timing_out = False
    for j in range(k):
        if parts[j, 8] == LOST_WAIT:
            push_resend(f, parts[j, 3], row, fleets, int(parts[j, 0]), j, int(parts[j, 9]))
        timing_out |= parts[j, 8] == TIMED_OUT_WAIT
        if parts[j, 8] == LOST_WAIT or parts[j, 8] == TIMED_OUT_WAIT:
            parts[j, 8] += PUSHED
    _keep_parts(parts, later_parts, row, k, True)
    if timing_out:  # every part sent at one instant that timed out leaves its queue then
        push_resend(f, timeout_at, row, fleets)


@njit(cache=True, _nrt=False)
def _keep_parts(parts: np.ndarray, later_parts: np.ndarray, row: int, k: int, keep: bool) -> None:
    """A visit's k parts copied into its row of `later_parts` (`keep`), or back."""
    for j in range(k):
        for c in range(parts.shape[1]):
            if keep:
                later_parts[row, j, c] = parts[j, c]
            else:
                parts[j, c] = later_parts[row, j, c]


@njit(cache=True, _nrt=False, inline="always")
def _send_part(
    f: int,
    slot: int,
    j: int,
    x: float,
    again: bool,
    base: int,
    threads: int,
    free: np.ndarray,
    limits: tuple,
    measured: bool,
    slow: tuple,
    fleets: tuple,
    abandon: tuple,
    batches: tuple,
) -> bool:
    """Part j of a visit to fleet f's stage (`parts[j]`: its node (-1: no live node was left for it), ..., its retries
    so far, its own service) sent at x to its node, a rejected one sent at once to another live node not holding a
    part of the visit while the stage's retries last; `again`: a part that timed out or was lost with its node, sent
    again now to such a node if one is left (`sim.fleet`'s `_deliver`). True when the part is settled (`parts[j]` its
    outcome, start, end, service); False when it waits (`parts[j, 8]`): timed out with a retry left (simpy sends it
    again when it leaves the queue, at its end), or lost with its node (at its end, the loss time, `parts[j, 9]` the
    order it was sent in)."""
    limit, timeout = limits[0], limits[1]
    deadline, request, first, stop, p, dropped = abandon
    nodes, shards, holding, parts, retries, pushed = fleets[0], fleets[10], fleets[14], fleets[15], fleets[16], fleets[27]
    node = int(parts[j, 0])
    parts[j, 8] = SETTLED
    while True:
        if again:
            held = 0
            for n in range(nodes[f]):
                held += holding[n]
            if losses_due(f, x, fleets):
                apply_losses(f, x, base, threads, free, fleets)
            node = pick(f, x, base, threads, free, fleets, held, -1, batches)
            if node < 0:
                return True  # no node left to send it to
            holding[node] = True
            parts[j, 6] += 1
            retried(f, slot, x, fleets)
        again = True
        if node < 0:
            parts[j, 1], parts[j, 2], parts[j, 3] = REJECTED, x, x
            return True
        s = parts[j, 7]
        at = base + node * threads
        o, start, e = visit_node(f, node, x, free[at], limit, timeout, deadline, fleets)
        lost = lost_at(f, node, x, fleets)  # its node's next loss (inf: none)
        gone = e  # when it leaves the node
        if o == COMPLETED:
            s = s * slowdown_at(slot, start, slow[0], slow[1], slow[2])
            e = start + s
            gone = min(e, deadline)
            replace_top(free, at, threads, e if e <= deadline else deadline + (e - deadline))
            if start < lost:
                served_at_node(f, node, slot, start, s, measured, fleets)
            if e > deadline and deadline < lost:
                wasted(dropped, slot, deadline, request, wasted_order(p, first, stop, j, shards[f]), start, s, node)
        parts[j, 0], parts[j, 1], parts[j, 2], parts[j, 3], parts[j, 4] = node, o, start, e, s
        if o != REJECTED and gone > lost:  # the node goes down with it (in service if it started before)
            if o != COMPLETED or start > lost:
                parts[j, 2] = lost
            parts[j, 1], parts[j, 3], parts[j, 8], parts[j, 9] = REJECTED, lost, LOST_WAIT, pushed[0]
            pushed[0] += 1
            return False
        if o == COMPLETED or parts[j, 6] >= retries[f]:
            return True
        if o == TIMED_OUT:
            if e >= deadline:
                return True  # left at the request's deadline: abandoned
            parts[j, 8] = TIMED_OUT_WAIT
            return False


@njit(cache=True, _nrt=False)
def _resends(
    slot: int,
    x: float,
    k: int,
    steps: int,
    pools: tuple,
    fleet_of: np.ndarray,
    fleets: tuple,
    dropped: tuple,
    batches: tuple,
    req: tuple,
    visits: tuple,
    slow: tuple,
    inserting: tuple,
) -> None:
    """`_resend_until` x for the stage in `slot`, a fleet with parts to send again (`pools`: the stages' `free_at`,
    `free`, `queue_limit` and `timeout_s`)."""
    f = fleet_of[slot]
    free_at, free, queue_limit, timeout_s = pools
    service = visits[5]
    base = free_at[slot]
    threads = (free_at[slot + 1] - base) // fleets[0][f]
    limits = (queue_limit[slot], timeout_s[slot], 0.0)
    _resend_until(f, x, k, steps, base, threads, free, limits, service, visits, slow, fleets, dropped, batches, req, inserting)


@njit(cache=True, _nrt=False)
def _resend_until(
    f: int,
    x: float,
    k: int,
    steps: int,
    base: int,
    threads: int,
    free: np.ndarray,
    limits: tuple,
    service: np.ndarray,
    visits: tuple,
    slow: tuple,
    fleets: tuple,
    dropped: tuple,
    batches: tuple,
    req: tuple,
    ends: tuple,
) -> None:
    """Fleet f's parts sent again before x (`later`), in the order simpy sends them: by time, visits in the order they
    were sent, a visit's parts in the order they were first sent; the parts a node loss fails, node by node, each
    node's in the order they came to it (cut in service: their busy time stops then). A visit whose last part
    settles ends (`parts_over`): its cache inserts, and its step's wait for it is over (`visit_ended`; failed at a
    loss, in simpy's order, `fleets.loss_order`). `ends`: the guard and read-through caches per slot, the cache
    inserts, and the time at which lookups stop (`advance`)."""
    resends, holding, parts, retries = fleets[26], fleets[14], fleets[15], fleets[16]
    later, later_t, later_parts, stack, stacked = fleets[19:24]
    times, miss, cache_hit, users, measured = visits[:5]
    guard, reads, inserts, until = ends
    ids, numbered, shards = req[11], req[9], fleets[10]
    while resends[f] > 0 and fleets[24][f, 0] < x:
        at, row, part = pop_resend(f, fleets)
        i, slot, waiting = later[row, 0], later[row, 1], later[row, 3]
        kk = shards[f]
        _keep_parts(parts, later_parts, row, kk, False)
        for node in range(fleets[0][f]):
            holding[node] = fleets[37][row, node]
        t, deadline = later_t[row, 0], later_t[row, 1]
        abandon = (deadline, ids[i], later[row, 6], later[row, 7], later[row, 5], dropped)
        for q in range(kk):
            j = kk - 1 if q == 0 else q - 1
            if part >= 0:  # lost with its node at `at`: failed in the order simpy fails them
                if j != part:
                    continue
                parts[j, 10] = numbered[0]
                numbered[0] += 1
                if parts[j, 2] < at:  # in service: its busy time stops here
                    cut_at_node(int(parts[j, 0]), slot, at, parts[j, 2] + parts[j, 4], fleets)
                parts[j, 8] = SETTLED
                if parts[j, 6] >= retries[f]:
                    waiting -= 1
                    continue
            elif parts[j, 8] != TIMED_OUT_WAIT + PUSHED or parts[j, 3] != at:
                continue
            waiting -= _send_part(f, slot, j, at, True, base, threads, free, limits, measured[i], slow, fleets, abandon, batches)
        later[row, 3] = waiting
        if waiting:
            _wait(f, row, kk, at + limits[1], fleets)
            continue
        holding[:] = False
        later[row, 0] = -1  # the visit is over: its row goes back
        stack[stacked[0]] = row
        stacked[0] += 1
        o, e = parts_over(f, i, slot, t, deadline, service, times, measured[i], fleets)
        if o == COMPLETED and e <= deadline:
            g, r = (guard[slot], reads[slot]) if t < until else (-1, -1)
            if r >= 0 and cache_hit[i, r] == 0.0:  # its read missed: the entry goes in when the visit ends
                insert(inserts, r, i, k, e, users[i])
            if g >= 0:
                insert(inserts, g, i, k, e, users[i])
        if part >= 0 and e == at:  # failed at its node's loss: its request's processes resume in simpy's order
            hops = (later[row, 5] != later[row, 7] - 1) + 2 * (deadline < np.inf)
            visit_ended(i, o, e, k, steps, req, loss_order(parts, kk, at, hops))
        else:
            visit_ended(i, o, e, k, steps, req)


@njit(cache=True, nogil=True, _nrt=False)
def advance(
    step_at: np.ndarray,
    step_slots: np.ndarray,
    free_at: np.ndarray,
    free: np.ndarray,
    queue_limit: np.ndarray,
    left_at: np.ndarray,
    left: np.ndarray,
    left_n: np.ndarray,
    timeout_s: np.ndarray,
    slow_at: np.ndarray,
    slow_t: np.ndarray,
    slow_v: np.ndarray,
    guard: np.ndarray,
    reads: np.ndarray,
    caches: tuple,
    own: tuple,
    slot_batch: np.ndarray,
    batches: tuple,
    fleet_of: np.ndarray,
    fleets: tuple,
    hedging: tuple,
    dropped: tuple,
    shard_s: np.ndarray,
    req: tuple,
    users: np.ndarray,
    measured: np.ndarray,
    service: np.ndarray,
    miss: np.ndarray,
    cache_hit: np.ndarray,
    user_vector_s: np.ndarray,
    times: np.ndarray,
    work: tuple,
    limit: float,
    until: float,
) -> None:
    """Move the requests through the pipeline's steps as far as is known before `limit` (the next unseen
    arrival): at step k, every request there that arrives before `limit`, in order of arrival.

    Steps: step k calls the slots `step_slots[step_at[k] : step_at[k + 1]]` (several: a parallel group).
    Per request (`req`, see `batching.visit_ended`): `arrive` its arrival time at its current step `step`
    (after `hop[i, step]`, its pause before the step: a replayed trace's, else 0)
    (== number of steps: finished), `outcome` and `end_s` how and when it finished, and while a step is in
    progress its visits still `pending`, the latest `step_end` and `worst` outcome of those that ended, and
    `rank`, the order of requests reaching a step at the same time; `service[i, slot]` its service times,
    `times[i, slot]` (enter, start, end) of its completed visits. `timeout_s` is inf for a stage without a timeout,
    `queue_limit` -1 for one without a limit. A stage's service multiplier (stage_slowdown faults) is
    `slow_v[j]` from `slow_t[j]` on, for j in `slow_at[slot] : slow_at[slot + 1]` (1 before the first); a
    visit's service is multiplied when it starts, and written back, as `sim.pools` does.

    Caches (`caches.CacheState.state`, keys `users`): `guard[slot]` is the lookup (`Pipeline.lookups`) whose hit
    skips the slot's call, `reads[slot]` the one it reads through (-1: none), looked up in that order at the
    request's arrival at the step; a read-through miss adds `miss[i, slot]` to the service; a completed visit
    that missed inserts into the read-through cache, then the guard's, when it ends. `own` = (cache_of, keyed,
    cache_step, cache_in): each lookup's cache, whether each cache is request-keyed, and the requests' entries in
    those (`caches.insert`, `caches.lookup_own`). `cache_hit[i, l]` 1.0 / 0.0 (hit, miss) where the request made
    lookup l, as `core.flow` marks it, and `user_vector_s[i]` when the entry a guard hit took was inserted.
    Nothing is looked up at or
    after `until` (the simulated time at which a run stops at its horizon): such a request is still in
    flight when the run ends, and the caches must not change after it.

    Batching stages (`slot_batch[slot]` >= 0, state `batches`, see `batching`): a request joins the queue (or
    is rejected) and its step waits for the batch; a read-through miss inserts when the batch ends.

    Stages of several nodes (`fleet_of[slot]` >= 0, state `fleets`, see `fleets`): the balancer picks a node at
    the visit's arrival, whose pool (its servers' region of `free`, its own waiters) serves it as above; a
    sharded stage's visit is one such visit per shard, on distinct nodes, with the shard services `shard_s[i]`,
    and a stage that retries sends a rejected one on to another node at once, a timed-out one when it leaves its
    queue, one lost with its node at the loss (`_resends`, before each arrival and up to `limit`: the step waits for
    the visit meanwhile). A hedged stage (`hedging`: the `hedges.HedgeState` state and the requests' candidates) runs
    its own events up to each arrival and up to `limit` (`hedges.stage_until`): the step waits for the visit there too.

    Deadlines (`req`'s `deadline`, see `deadlines`): a visit still queued at its request's deadline leaves the
    queue then; one in service runs on as wasted work (recorded in `dropped`), freeing its server when simpy does.
    """
    arrive, step, outcome, end_s, pending, step_end, worst, end_order, rank, numbered, hop, ids, deadline = req
    n = len(arrive)
    steps = len(step_at) - 1
    at, older, newer, ends, capacity, ttl, counts, pend_t, pend_key, pend_n, pend_seq, made, flush_t, flush_nodes, flush_next = caches
    cache_of, keyed, cache_step, cache_in = own
    inserts = (pend_t, pend_key, pend_n, pend_seq, made, cache_of, keyed, cache_step, cache_in)
    visits = (times, miss, cache_hit, users, measured, service)
    inserting = (guard, reads, inserts, until)
    pools = (free_at, free, queue_limit, timeout_s)
    resends = fleets[26]  # per fleet, its parts to send again later
    slow = (slow_at, slow_t, slow_v)
    hedge_of = hedging[0][0]
    more = (dropped, steps, req, visits, inserting)  # what a hedged stage's kernels take besides
    bslots, bservers, serving, waiting_b = batches[0], batches[1], batches[11], batches[21]
    index, key, tie, joined = work[0], work[1], work[2], work[6]
    joined[:] = 0  # batching queues someone joined at the current time: the order of the first join
    joins = 0
    for k in range(steps):
        first, stop = step_at[k], step_at[k + 1]
        count = 0
        for i in range(n):
            if step[i] == k and arrive[i] < limit and pending[i] == 0:  # not already waiting for a batch there
                index[count] = i
                key[count] = arrive[i]
                tie[count] = rank[i]
                count += 1
        _stable_order(count, work)
        for j in range(count):
            i = index[j]
            t = arrive[i]
            due_s = deadline[i]
            for p in range(first, stop):  # the step's batching stages and parts sent again: their events before this arrival
                b, f = slot_batch[step_slots[p]], fleet_of[step_slots[p]]
                if f >= 0 and resends[f]:
                    _resends(step_slots[p], t, k, steps, pools, fleet_of, fleets, dropped, batches, req, visits, slow, inserting)
                if hedge_of[step_slots[p]] >= 0:
                    stage_until(step_slots[p], t, pools, hedging, fleets, batches, shard_s, slow, more)
                if b >= 0:
                    nodes = _nodes(fleet_of[step_slots[p]], fleets)
                    run_until(b, nodes, t, timeout_s[bslots[b]], k, steps, batches, req, visits, guard, reads, inserts, slow)
            step_end[i] = t
            worst[i] = COMPLETED
            end_order[i] = rank[i]  # a step that ends as it starts keeps the request's place
            pending[i] = 1  # the step's own hold, released once every visit has started
            for p in range(first, stop):
                slot = step_slots[p]
                g, r = (guard[slot], reads[slot]) if t < until else (-1, -1)
                if g >= 0:
                    c = cache_of[g]
                    if keyed[c]:
                        hit = lookup_own(counts, cache_step, c, i, k)
                    else:
                        if due(pend_t, pend_n, flush_t, flush_next, c) < t:
                            settle(*caches, c, t)
                        hit = lookup(at, older, newer, ends, ttl, counts, c, users[i], t)
                    if hit:
                        cache_hit[i, g] = 1.0
                        user_vector_s[i] = cache_in[i, c] if keyed[c] else at[c, users[i]]
                        continue  # the call is skipped: this branch ends at t, completed
                    cache_hit[i, g] = 0.0
                read_miss = False
                if r >= 0:
                    c = cache_of[r]
                    if keyed[c]:
                        read_miss = not lookup_own(counts, cache_step, c, i, k)
                    else:
                        if due(pend_t, pend_n, flush_t, flush_next, c) < t:
                            settle(*caches, c, t)
                        read_miss = not lookup(at, older, newer, ends, ttl, counts, c, users[i], t)
                    cache_hit[i, r] = 0.0 if read_miss else 1.0
                    if read_miss:
                        service[i, slot] += miss[i, slot]
                    else:
                        miss[i, slot] = 0.0
                b = slot_batch[slot]
                if b >= 0:  # join the batching queue (a node's), unless every server serves a batch and the queue is full
                    if fleet_of[slot] >= 0:
                        b += pick(fleet_of[slot], t, 0, 0, free, fleets, 0, b, batches)
                    if queue_limit[slot] >= 0 and serving[b] >= bservers[b] and waiting_b[b] >= queue_limit[slot]:
                        worst[i] = max(worst[i], REJECTED)
                    else:
                        join(b, i, t, due_s, batches)
                        if not joined[b]:
                            joins += 1
                            joined[b] = joins
                        pending[i] += 1
                    continue
                if hedge_of[slot] >= 0:  # a hedged stage: the step waits for the visit
                    stage_send(slot, i, t, k, miss[i, slot] if read_miss else 0.0, pools, hedging, fleets, batches, shard_s, slow, more)
                    pending[i] += 1
                    continue
                base = free_at[slot]
                servers = free_at[slot + 1] - base
                m = free[base]
                o = COMPLETED
                start = t
                f = fleet_of[slot]
                node = -1
                if f >= 0:  # a node of the stage's fleet: a pool of its own (or one per shard)
                    servers //= fleets[0][f]
                    if fleets[10][f] > 1 or fleets[16][f] > 0 or fleets[30][f + 1] > fleets[30][f]:  # shards, retries, losses
                        limits = (queue_limit[slot], timeout_s[slot], miss[i, slot] if read_miss else 0.0)
                        abandon = (due_s, ids[i], first, stop, p, dropped)
                        o, e = _fleet_visit(
                            f, i, slot, t, base, servers, free, limits, shard_s, service, times, measured[i], slow, fleets, abandon, batches
                        )
                        if o < 0:  # a part is sent again later: the step waits for the visit
                            pending[i] += 1
                            continue
                    else:
                        node = pick(f, t, base, servers, free, fleets, 0, -1, batches)
                        base += node * servers
                        o, start, e = visit_node(f, node, t, free[base], queue_limit[slot], timeout_s[slot], due_s, fleets)
                elif m > t:  # every server held: queue, unless rejected or timed out
                    limited = queue_limit[slot] >= 0
                    waiting = 0
                    lb = left_at[slot]
                    if limited:
                        waiting = left_n[slot]
                        while waiting > 0 and left[lb] <= t:
                            waiting = _pop(left, lb, waiting)
                    if limited and waiting >= queue_limit[slot]:
                        o = REJECTED
                        e = t
                    else:
                        leave = min(t + timeout_s[slot], due_s)
                        if m > leave:  # no server handed over before the timeout, or the request's deadline
                            o = TIMED_OUT
                            e = leave
                            if limited:
                                waiting = _push(left, lb, waiting, leave)
                        else:
                            start = m
                            if limited:
                                waiting = _push(left, lb, waiting, m)
                    if limited:
                        left_n[slot] = waiting
                if o == COMPLETED and (f < 0 or node >= 0):  # served from `start` on the server that frees first
                    s = service[i, slot] * slowdown_at(slot, start, slow_at, slow_t, slow_v)  # as the stage is when it starts
                    e = start + s
                    if f < 0 or e <= due_s:  # written back (a node's visit: once it completes)
                        service[i, slot] = s
                    if e <= due_s:
                        replace_top(free, base, servers, e)
                        times[i, slot, 0] = t
                        times[i, slot, 1] = start
                        times[i, slot, 2] = e
                    else:  # abandoned in service at the deadline: the server finishes it for nothing
                        replace_top(free, base, servers, due_s + (e - due_s))
                        wasted(dropped, slot, due_s, ids[i], wasted_order(p, first, stop, 0, 1), start, s, node)
                    if f >= 0:
                        served_at_node(f, node, slot, start, s, measured[i], fleets)
                if o == COMPLETED and e <= due_s:
                    if read_miss:
                        insert(inserts, r, i, k, e, users[i])
                    if g >= 0:
                        insert(inserts, g, i, k, e, users[i])
                visit_over(i, o, e, req)
            visit_ended(i, COMPLETED, t, k, steps, req)
            if j + 1 < count and arrive[index[j + 1]] == t:
                continue  # a batch's members arrive together: every one joins before a dispatcher looks (simpy)
            for p in range(first, stop):  # the dispatchers of the step's queues see who joined, in the order they joined
                b = slot_batch[step_slots[p]]
                if b < 0:
                    continue
                nodes = _nodes(fleet_of[step_slots[p]], fleets)
                while True:
                    woken = -1
                    for q in range(b, b + nodes):
                        if joined[q] and (woken < 0 or joined[q] < joined[woken]):
                            woken = q
                    if woken < 0:
                        break
                    joined[woken] = 0
                    wake(woken, t, k, steps, batches, req, visits, guard, reads, inserts, slow)
            joins = 0
        for p in range(first, stop):  # the batching stages' events and parts sent again before the next unseen arrival
            b, f = slot_batch[step_slots[p]], fleet_of[step_slots[p]]
            if f >= 0 and resends[f]:
                _resends(step_slots[p], limit, k, steps, pools, fleet_of, fleets, dropped, batches, req, visits, slow, inserting)
            if hedge_of[step_slots[p]] >= 0:
                stage_until(step_slots[p], limit, pools, hedging, fleets, batches, shard_s, slow, more)
            if b >= 0:
                nodes = _nodes(fleet_of[step_slots[p]], fleets)
                run_until(b, nodes, limit, timeout_s[bslots[b]], k, steps, batches, req, visits, guard, reads, inserts, slow)
