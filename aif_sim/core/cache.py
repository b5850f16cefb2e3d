"""Cache policy: LRU with an optional TTL, driven by a clock the caller passes in.

The policy decides hits, misses, insertions, evictions and expiry; it stores no values. The DES
needs nothing more; the live engine keeps the vectors themselves in its cache backend and asks the
policy what is there. Time is always the caller's `now` in seconds (simulated time in the DES, the
event loop's clock live), so the same sequence of calls gives the same decisions in both engines.

Rules:
- An entry expires `ttl_s` after it was inserted: a lookup at `now >= inserted + ttl_s` misses.
  A hit does not extend its life; a re-insertion does (and makes it most recently used).
- Expiry is lazy, as in memcached: an expired entry is removed when a lookup finds it (a miss and an
  expiration) or when it reaches the least recently used end and is evicted for room (an expiration,
  not an eviction). Until then it keeps its slot and counts in `len()`.
- `evictions` counts live entries dropped for capacity; capacity 0 caches nothing.
- `flush(fraction)` models the loss of one node of a cache cluster (see `cache_node`).

Storage, by measurement (10^6 Zipf requests, s = 1, 10^5 keys, capacity 1000, a lookup and an insert
on each miss, Poisson arrivals at 10^4/s, best of 3 on one core of the development machine): this
class on `collections.OrderedDict` (C `move_to_end`/`popitem`) takes 0.20 s without TTL and 0.22 s
with a 0.5 s TTL; the same policy on `cachetools.LRUCache` 0.40 s, on `cachetools.TLRUCache` 1.76 s
(it keeps an expiry heap and purges expired entries on every insert). The OrderedDict is 2x faster
without TTL and 8x with it, and the lazy expiry it allows is the rule real caches use, so the policy
is built on it.
"""

from __future__ import annotations

from collections import OrderedDict

_GOLDEN64 = 0x9E3779B97F4A7C15  # 2^64 / golden ratio, odd: Knuth's multiplicative (Fibonacci) hash
_MASK64 = (1 << 64) - 1


def cache_node(key: int, nodes: int) -> int:
    """The node, in 0..nodes-1, that holds `key` in a cluster of `nodes` cache nodes.

    Rule: `((key * 0x9E3779B97F4A7C15) mod 2^64) >> 32`, modulo `nodes` (a multiplicative hash of the
    key's low 64 bits, upper half taken). Deterministic across runs and processes, and even over
    consecutive keys.
    """
    return (((key * _GOLDEN64) & _MASK64) >> 32) % nodes


class CachePolicy:
    """LRU cache policy with capacity `capacity` and optional expiry `ttl_s` (None: never expires).

    Counters (cumulative, the caller resets nothing): `hits`, `misses`, `evictions`, `expirations`.
    """

    __slots__ = ("capacity", "ttl_s", "hits", "misses", "evictions", "expirations", "_entries")

    def __init__(self, capacity: int, ttl_s: float | None = None) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        if ttl_s is not None and not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0 or None, got {ttl_s}")
        self.capacity = capacity
        self.ttl_s = ttl_s
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.expirations = 0
        # key -> insertion time (s); order is recency, least recently used first
        self._entries: OrderedDict[int, float] = OrderedDict()

    def __len__(self) -> int:
        """Entries held, expired ones not yet removed included."""
        return len(self._entries)

    def __repr__(self) -> str:
        return (
            f"CachePolicy(capacity={self.capacity}, ttl_s={self.ttl_s}, len={len(self._entries)}, hits={self.hits}, "
            f"misses={self.misses}, evictions={self.evictions}, expirations={self.expirations})"
        )

    def lookup(self, key: int, now: float) -> bool:
        """True (a hit, the key becomes most recently used) when `key` is held and unexpired at `now`.

        An expired entry found here is removed and counts as a miss and an expiration.
        """
        inserted = self._entries.get(key)
        if inserted is None:
            self.misses += 1
            return False
        if self.ttl_s is not None and now - inserted >= self.ttl_s:
            del self._entries[key]
            self.misses += 1
            self.expirations += 1
            return False
        self._entries.move_to_end(key)
        self.hits += 1
        return True

    def insert(self, key: int, now: float) -> int | None:
        """Insert `key` at `now`, or refresh it (its insertion time resets), as most recently used; return
        the key dropped for room, if any (a caller that stores values deletes its value).

        The least recently used entry beyond capacity is dropped: counted as an eviction, or as an
        expiration when already expired.
        """
        entries = self._entries
        if self.capacity == 0:
            return key
        if key in entries:
            entries.move_to_end(key)
        entries[key] = now
        if len(entries) <= self.capacity:
            return None
        dropped, inserted = entries.popitem(last=False)
        if self.ttl_s is not None and now - inserted >= self.ttl_s:
            self.expirations += 1
        else:
            self.evictions += 1
        return dropped

    def inserted_at(self, key: int) -> float | None:
        """When the entry of `key` was inserted (the age of a cached vector), or None when it is not held."""
        return self._entries.get(key)

    def flush(self, fraction: float = 1.0) -> list[int]:
        """Drop the entries a cache-node loss would drop; return their keys.

        `fraction` 1 drops everything. A fraction f < 1 is one node of a cluster of `round(1/f)` nodes
        (0.25: one of 4): the entries whose `cache_node(key, round(1/f)) == 0`, so the same keys are
        always lost together. Dropped entries count in no counter.
        """
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        nodes = round(1 / fraction)
        entries = self._entries
        if nodes <= 1:
            lost = list(entries)
            entries.clear()
            return lost
        lost = [key for key in entries if cache_node(key, nodes) == 0]
        for key in lost:
            del entries[key]
        return lost


class RequestCache:
    """The policy of a request-keyed cache: an entry per request in flight (the key is the request's id), inserted by
    the first of its consultations whose call ends and dropped when the request ends (`release`). Nothing is shared
    between requests, so nothing is evicted or expires; `held_s` sums the time each released entry was held (its
    mean count over a run is `held_s / run length`, Little's law).

    Counters as `CachePolicy`'s: `hits`, `misses`, and `evictions`, `expirations` (always 0)."""

    __slots__ = ("hits", "misses", "evictions", "expirations", "held_s", "_entries")

    def __init__(self) -> None:
        self.hits = self.misses = self.evictions = self.expirations = 0
        self.held_s = 0.0
        self._entries: dict[int, float] = {}  # request id -> when its entry went in (s)

    def __len__(self) -> int:
        """Entries held: one per request in flight that has inserted one."""
        return len(self._entries)

    def lookup(self, key: int, now: float) -> bool:
        """True (a hit) when the request `key` has inserted its entry."""
        hit = key in self._entries
        if hit:
            self.hits += 1
        else:
            self.misses += 1
        return hit

    def insert(self, key: int, now: float) -> None:
        """The request's entry goes in at `now`; one already there stays (held since it went in)."""
        self._entries.setdefault(key, now)

    def inserted_at(self, key: int) -> float | None:
        """When the request's entry went in, or None when it has none."""
        return self._entries.get(key)

    def release(self, key: int, now: float) -> bool:
        """The request `key` has ended at `now`: its entry, if any, leaves; whether it had one."""
        inserted = self._entries.pop(key, None)
        if inserted is None:
            return False
        self.held_s += now - inserted
        return True


Policy = CachePolicy | RequestCache  # a cache's policy, by its key (`Cache.key`: user, request)
