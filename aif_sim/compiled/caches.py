"""The caches of the compiled engine: `core.cache.CachePolicy` (LRU, optional TTL, lazy expiry, node-loss
flushes) on arrays, with the inserts and flushes that wait for their time.

State, as one tuple `state` the kernels take (`CacheState.state`), for caches c = 0..C-1 over the key space
(the users):
- `at[c, key]`: the entry's insertion time, NaN when not held; `older[c, key]` / `newer[c, key]`: its
  neighbours in recency order (-1: none); `ends[c] = (least recently used, most recently used, size)`;
- `capacity[c]`, `ttl[c]` (inf: no expiry), `counts[c] = (hits, misses, evictions, expirations)`;
- the inserts waiting for their time: a min-heap per cache by time, then by the order they were made
  (`pend_t[c]`, `pend_seq[c]`, `pend_key[c]`, `pend_n[c]`; `made[c]` counts them): the members of a batch
  insert at the same time, in batch order, as simpy resumes them;
- the cache flushes (faults, and versioned caches' at each switch of the serving model version): `flush_t[c, j]` (inf past the last), `flush_nodes[c, j]` (the cluster's node
  count: 1 drops everything), `flush_next[c]` the next one.
A stage sweep looks a key up at a request's arrival there and inserts when its visit ends, later; every
pending insert and flush before a lookup's time is applied first, in time order (`settle`). A user-keyed cache
is consulted at one step of a pipeline (`support.unsupported` refuses more), so its operations all happen in one
sweep, in time order.

A request-keyed cache (`core.cache.RequestCache`) shares nothing between requests: its entries are the requests'
own columns, `cache_step[i, c]` (the step at which request i inserted its entry, -1: none) and `cache_in[i, c]`
(when), and a lookup at step k hits when an earlier step inserted (`lookup_own`). Its counters are `counts[c]`'s.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from aif_sim.core.cache import CachePolicy, Policy, RequestCache
from aif_sim.scenario.schema import CacheFlush, Fault

GOLDEN64 = np.uint64(0x9E3779B97F4A7C15)  # core.cache.cache_node's multiplier
HITS, MISSES, EVICTIONS, EXPIRATIONS = range(4)
OLDEST, NEWEST, SIZE = range(3)


class CacheState:
    """The arrays of a pipeline's cache policies (in `Recorder.caches` order) over `keys` keys."""

    def __init__(self, caches: dict[str, Policy], keys: int, events: list[Fault]) -> None:
        """`events`: the run's faults and versioned caches' flushes (`core.refresh.version_flushes`); the
        `cache_flush`es among them on these caches are applied at their times."""
        self.policies = caches
        c = len(caches)
        keys = keys if c else 0
        flushes = [[(f.at_s, round(1 / f.fraction)) for f in events if isinstance(f, CacheFlush) and f.cache == name] for name in caches]
        width = max((len(f) for f in flushes), default=0) + 1
        flush_t, flush_nodes = np.full((c, width), math.inf), np.ones((c, width), np.int64)
        for i, cache_flushes in enumerate(flushes):
            for j, (at_s, nodes) in enumerate(sorted(cache_flushes, key=lambda f: f[0])):  # stable: scenario order at a tie
                flush_t[i, j], flush_nodes[i, j] = at_s, nodes
        policies = list(caches.values())
        self.keyed = np.array([isinstance(p, RequestCache) for p in policies], np.bool_)  # request-keyed caches
        self.state = (
            np.full((c, keys), np.nan),
            np.full((c, keys), -1, np.int32),
            np.full((c, keys), -1, np.int32),
            np.array([[-1, -1, 0]] * c, np.int64).reshape(c, 3),
            np.array([p.capacity if isinstance(p, CachePolicy) else 0 for p in policies], np.int64),
            np.array([p.ttl_s if isinstance(p, CachePolicy) and p.ttl_s is not None else math.inf for p in policies]),
            np.zeros((c, 4), np.int64),
            np.empty((c, 64)),
            np.empty((c, 64), np.int64),
            np.zeros(c, np.int64),
            np.empty((c, 64), np.int64),
            np.zeros(c, np.int64),
            flush_t,
            flush_nodes,
            np.zeros(c, np.int64),
        )

    def reserve(self, inserts: int) -> None:
        """Room in every pending-insert heap for `inserts` more entries."""
        at, older, newer, ends, capacity, ttl, counts, pend_t, pend_key, pend_n, pend_seq, made, *flushes = self.state
        need = int(pend_n.max(initial=0)) + inserts
        if need > pend_t.shape[1]:
            size, old = max(need, 2 * pend_t.shape[1]), pend_t.shape[1]
            grown = [np.empty((len(pend_n), size), a.dtype) for a in (pend_t, pend_key, pend_seq)]
            for new, a in zip(grown, (pend_t, pend_key, pend_seq)):
                new[:, :old] = a
            self.state = (at, older, newer, ends, capacity, ttl, counts, grown[0], grown[1], pend_n, grown[2], made, *flushes)

    def settle(self, before: float) -> None:
        """Apply every pending insert and flush before `before` (the end of a run)."""
        for c in range(len(self.policies)):
            settle(*self.state, c, before)

    def release(self, end_s: np.ndarray, cache_in: np.ndarray) -> None:
        """Requests that ended at `end_s`, in the order they ended, drop their entries of the request-keyed caches, put in at
        `cache_in[:, c]` (NaN: none): `RequestCache.release`, adding each held time in the same order."""
        for c, policy in enumerate(self.policies.values()):
            if isinstance(policy, RequestCache):
                held = end_s - cache_in[:, c]
                for seconds in held[~np.isnan(held)].tolist():
                    policy.held_s += seconds

    def publish(self) -> None:
        """Copy the counters into the policies (the recorder reads `evictions` from them)."""
        counts = self.state[6]
        for c, policy in enumerate(self.policies.values()):
            policy.hits, policy.misses, policy.evictions, policy.expirations = (int(x) for x in counts[c])


@njit(cache=True, _nrt=False)
def _unlink(older: np.ndarray, newer: np.ndarray, ends: np.ndarray, c: int, key: int) -> None:
    before, after = older[c, key], newer[c, key]
    if before >= 0:
        newer[c, before] = after
    else:
        ends[c, OLDEST] = after
    if after >= 0:
        older[c, after] = before
    else:
        ends[c, NEWEST] = before
    ends[c, SIZE] -= 1


@njit(cache=True, _nrt=False)
def _append(older: np.ndarray, newer: np.ndarray, ends: np.ndarray, c: int, key: int) -> None:
    """Link `key` in as the most recently used."""
    last = ends[c, NEWEST]
    older[c, key] = last
    newer[c, key] = -1
    if last >= 0:
        newer[c, last] = key
    else:
        ends[c, OLDEST] = key
    ends[c, NEWEST] = key
    ends[c, SIZE] += 1


@njit(cache=True, inline="always")
def lookup(
    at: np.ndarray,
    older: np.ndarray,
    newer: np.ndarray,
    ends: np.ndarray,
    ttl: np.ndarray,
    counts: np.ndarray,
    c: int,
    key: int,
    now: float,
) -> bool:
    """`CachePolicy.lookup`: a hit makes the key most recently used; an expired entry found is removed."""
    inserted = at[c, key]
    if np.isnan(inserted):
        counts[c, MISSES] += 1
        return False
    _unlink(older, newer, ends, c, key)
    if now - inserted >= ttl[c]:
        at[c, key] = np.nan
        counts[c, MISSES] += 1
        counts[c, EXPIRATIONS] += 1
        return False
    _append(older, newer, ends, c, key)
    counts[c, HITS] += 1
    return True


@njit(cache=True, _nrt=False)
def insert(inserts: tuple, column: int, i: int, k: int, t: float, key: int) -> None:
    """The cache of lookup `column` takes request i's entry (at its step k) at time t: a request-keyed cache into the
    request's own columns (the earliest of a step's inserts holds, as `RequestCache.insert` keeps the first), a
    user-keyed one's `key`, pending until its time. `inserts`: (pend_t, pend_key, pend_n, pend_seq, made, cache_of,
    keyed, cache_step, cache_in), `cache_of` each lookup column's cache, `keyed[c]` whether cache c is request-keyed."""
    pend_t, pend_key, pend_n, pend_seq, made, cache_of, keyed, cache_step, cache_in = inserts
    c = cache_of[column]
    if keyed[c]:
        if cache_step[i, c] < 0 or t < cache_in[i, c]:
            cache_step[i, c] = k
            cache_in[i, c] = t
    else:
        push(pend_t, pend_key, pend_n, pend_seq, made, c, t, key)


@njit(cache=True, inline="always")
def lookup_own(counts: np.ndarray, cache_step: np.ndarray, c: int, i: int, k: int) -> bool:
    """`RequestCache.lookup` for request i at step k: a hit when an earlier step of it inserted its entry."""
    hit = 0 <= cache_step[i, c] < k
    counts[c, HITS if hit else MISSES] += 1
    return hit


@njit(cache=True, _nrt=False)
def push(
    pend_t: np.ndarray, pend_key: np.ndarray, pend_n: np.ndarray, pend_seq: np.ndarray, made: np.ndarray, c: int, t: float, key: int
) -> None:
    """An insert of `key` at time `t`, pending until a lookup at a later time (room reserved by `reserve`)."""
    seq = made[c]
    made[c] += 1
    pos = pend_n[c]
    pend_n[c] += 1
    while pos > 0:
        parent = (pos - 1) >> 1
        if pend_t[c, parent] > t or (pend_t[c, parent] == t and pend_seq[c, parent] > seq):
            pend_t[c, pos], pend_key[c, pos], pend_seq[c, pos] = pend_t[c, parent], pend_key[c, parent], pend_seq[c, parent]
            pos = parent
        else:
            break
    pend_t[c, pos], pend_key[c, pos], pend_seq[c, pos] = t, key, seq


@njit(cache=True, inline="always")
def due(pend_t: np.ndarray, pend_n: np.ndarray, flush_t: np.ndarray, flush_next: np.ndarray, c: int) -> float:
    """When cache c's next pending insert or flush happens (inf: none): `settle` has work before a later time."""
    t_insert = pend_t[c, 0] if pend_n[c] > 0 else np.inf
    return min(t_insert, flush_t[c, flush_next[c]])


@njit(cache=True, _nrt=False)
def settle(
    at: np.ndarray,
    older: np.ndarray,
    newer: np.ndarray,
    ends: np.ndarray,
    capacity: np.ndarray,
    ttl: np.ndarray,
    counts: np.ndarray,
    pend_t: np.ndarray,
    pend_key: np.ndarray,
    pend_n: np.ndarray,
    pend_seq: np.ndarray,
    made: np.ndarray,
    flush_t: np.ndarray,
    flush_nodes: np.ndarray,
    flush_next: np.ndarray,
    c: int,
    before: float,
) -> None:
    """Apply the pending inserts and flushes of cache c before time `before`, in time order (`state` unpacked)."""
    while True:
        t_insert = pend_t[c, 0] if pend_n[c] > 0 else np.inf
        t_flush = flush_t[c, flush_next[c]]
        if min(t_insert, t_flush) >= before:
            return
        if t_flush < t_insert:  # `CachePolicy.flush`: drop every entry, or those `core.cache.cache_node` puts on node 0
            nodes = flush_nodes[c, flush_next[c]]
            flush_next[c] += 1
            key = ends[c, OLDEST]
            while key >= 0:
                after = newer[c, key]
                if nodes <= 1 or ((np.uint64(key) * GOLDEN64) >> np.uint64(32)) % np.uint64(nodes) == 0:
                    _unlink(older, newer, ends, c, key)
                    at[c, key] = np.nan
                key = after
            continue
        key = pend_key[c, 0]
        _pop_pending(pend_t, pend_key, pend_n, pend_seq, c)
        # `CachePolicy.insert`: (re)insert as most recently used; the least recently used beyond capacity goes
        if capacity[c] == 0:
            continue
        if not np.isnan(at[c, key]):
            _unlink(older, newer, ends, c, key)
        _append(older, newer, ends, c, key)
        at[c, key] = t_insert
        if ends[c, SIZE] <= capacity[c]:
            continue
        dropped = ends[c, OLDEST]
        if t_insert - at[c, dropped] >= ttl[c]:
            counts[c, EXPIRATIONS] += 1
        else:
            counts[c, EVICTIONS] += 1
        _unlink(older, newer, ends, c, dropped)
        at[c, dropped] = np.nan


@njit(cache=True, _nrt=False)
def _pop_pending(pend_t: np.ndarray, pend_key: np.ndarray, pend_n: np.ndarray, pend_seq: np.ndarray, c: int) -> None:
    """Remove the first pending insert of cache c."""
    size = pend_n[c] - 1
    pend_n[c] = size
    t, key, seq = pend_t[c, size], pend_key[c, size], pend_seq[c, size]
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        right = child + 1
        if right < size and (
            pend_t[c, right] < pend_t[c, child] or (pend_t[c, right] == pend_t[c, child] and pend_seq[c, right] < pend_seq[c, child])
        ):
            child = right
        if pend_t[c, child] < t or (pend_t[c, child] == t and pend_seq[c, child] < seq):
            pend_t[c, pos], pend_key[c, pos], pend_seq[c, pos] = pend_t[c, child], pend_key[c, child], pend_seq[c, child]
            pos = child
        else:
            break
    if size > 0:
        pend_t[c, pos], pend_key[c, pos], pend_seq[c, pos] = t, key, seq
