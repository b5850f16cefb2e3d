"""Cache policy: LRU hit ratio against the Che approximation, an exact replay through cachetools, TTL, flushes."""

from __future__ import annotations

import cachetools
import numpy as np
import pytest
from scipy.optimize import brentq

from aif_sim.core.cache import CachePolicy, cache_node

ZIPF_ITEMS = 100_000


def _zipf_popularity(s: float, n: int = ZIPF_ITEMS) -> np.ndarray:
    """p(rank i) proportional to i^-s over ranks 1..n, indexed from 0."""
    p = np.arange(1, n + 1, dtype=float) ** -s
    return p / p.sum()


def _zipf_keys(p: np.ndarray, count: int, seed: int) -> list[int]:
    """`count` keys (0-based ranks) drawn with popularity `p`, by inverse CDF."""
    cdf = np.cumsum(p)
    u = np.random.default_rng(seed).random(count)
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(p) - 1).tolist()


def _che(p: np.ndarray, capacity: int) -> tuple[float, float]:
    """Che approximation: the characteristic time T (in requests) and the predicted LRU hit ratio."""
    t = brentq(lambda t: np.sum(-np.expm1(-p * t)) - capacity, 0.0, 50.0 / p.min())
    return t, float(np.sum(p * -np.expm1(-p * t)))


def _serve(cache: CachePolicy, keys: list[int], t0: float = 0.0, dt: float = 0.0) -> list[bool]:
    """Request every key in turn (a miss inserts it); the hit/miss sequence."""
    lookup, insert = cache.lookup, cache.insert
    out = []
    now = t0
    for key in keys:
        hit = lookup(key, now)
        if not hit:
            insert(key, now)
        out.append(hit)
        now += dt
    return out


# --- LRU against theory and against an independent implementation --------------------------------
@pytest.mark.parametrize("s", [0.8, 1.0, 1.2])
@pytest.mark.parametrize("capacity", [100, 1_000, 10_000])
def test_lru_hit_ratio_matches_che_approximation(s: float, capacity: int) -> None:
    p = _zipf_popularity(s)
    t_char, predicted = _che(p, capacity)
    # LRU contents are the last `capacity` distinct keys requested: the state is stationary once
    # `capacity` distinct keys have been seen, about T requests; 2T of warm-up is ample.
    warmup, measured = max(int(2 * t_char), 10_000), 300_000
    keys = _zipf_keys(p, warmup + measured, seed=int(s * 10) * 100_000 + capacity)
    cache = CachePolicy(capacity)
    _serve(cache, keys[:warmup])
    assert len(cache) == capacity
    hits = sum(_serve(cache, keys[warmup:]))
    simulated = hits / measured
    assert simulated == pytest.approx(predicted, abs=0.02), f"s={s} C={capacity}: Che {predicted:.4f}, simulated {simulated:.4f}"


class _CountingLRU(cachetools.LRUCache):
    evicted = 0

    def popitem(self):
        self.evicted += 1
        return super().popitem()


@pytest.mark.parametrize("capacity", [1, 7, 500])
def test_hit_sequence_replays_exactly_through_cachetools_lru(capacity: int) -> None:
    keys = _zipf_keys(_zipf_popularity(0.9, 5_000), 50_000, seed=capacity)
    cache = CachePolicy(capacity)
    ours = _serve(cache, keys)
    ref = _CountingLRU(maxsize=capacity)
    theirs = []
    for key in keys:
        if key in ref:
            ref[key]  # a read makes it most recently used
            theirs.append(True)
        else:
            ref[key] = True
            theirs.append(False)
    assert ours == theirs
    assert cache.hits == sum(theirs) and cache.misses == len(keys) - sum(theirs)
    assert cache.evictions == ref.evicted > 0
    assert cache.expirations == 0
    assert len(cache) == len(ref) == capacity


# --- TTL --------------------------------------------------------------------------------------------
def test_ttl_expires_at_ttl_and_reinsertion_resets_it() -> None:
    cache = CachePolicy(10, ttl_s=5.0)
    cache.insert(1, 100.0)
    assert cache.lookup(1, 100.0) and cache.lookup(1, 104.999)
    assert not cache.lookup(1, 105.0)  # at ttl_s: expired
    assert (cache.hits, cache.misses, cache.expirations, len(cache)) == (2, 1, 1, 0)
    assert not cache.lookup(1, 105.5)  # removed: a plain miss now
    assert cache.expirations == 1
    cache.insert(1, 110.0)
    assert cache.lookup(1, 114.0)  # a hit does not extend its life ...
    assert not cache.lookup(1, 115.0)
    cache.insert(2, 120.0)
    cache.insert(2, 123.0)  # ... a re-insertion does
    assert cache.lookup(2, 127.0)
    assert not cache.lookup(2, 128.0)
    assert cache.expirations == 3


def test_expired_lru_entry_pushed_out_counts_as_expiration_not_eviction() -> None:
    cache = CachePolicy(2, ttl_s=1.0)
    cache.insert(1, 0.0)
    cache.insert(2, 0.5)
    cache.insert(3, 1.2)  # drops key 1, expired since 1.0
    assert (cache.evictions, cache.expirations) == (0, 1)
    cache.insert(4, 1.3)  # drops key 2, alive until 1.5
    assert (cache.evictions, cache.expirations) == (1, 1)


@pytest.mark.parametrize(("rate", "ttl"), [(10.0, 0.3), (2.0, 0.1)])
def test_ttl_hit_ratio_of_a_poisson_stream_is_rate_ttl_over_one_plus_rate_ttl(rate: float, ttl: float) -> None:
    # One key, Poisson requests at `rate`, a miss inserts it: each miss opens a window of length
    # ttl whose requests all hit (Poisson(rate * ttl) of them, by memorylessness), and the first
    # request after it misses. Renewal-reward: hit ratio = rate*ttl / (1 + rate*ttl).
    n = 200_000
    times = np.cumsum(np.random.default_rng(int(rate * ttl * 1000)).exponential(1 / rate, n)).tolist()
    cache = CachePolicy(1, ttl_s=ttl)
    hits = 0
    for now in times:
        if cache.lookup(0, now):
            hits += 1
        else:
            cache.insert(0, now)
    expected = rate * ttl / (1 + rate * ttl)
    assert hits / n == pytest.approx(expected, abs=0.006)
    assert cache.expirations == cache.misses - 1  # every miss but the first found the key expired
    assert cache.evictions == 0


# --- flushes ----------------------------------------------------------------------------------------
def _held(cache: CachePolicy, keys) -> set[int]:
    return {key for key in keys if cache.lookup(key, 0.0)}


def test_flush_all_empties() -> None:
    cache = CachePolicy(1_000)
    _serve(cache, list(range(500)))
    assert sorted(cache.flush(1.0)) == list(range(500))
    assert len(cache) == 0
    assert _held(cache, range(500)) == set()


@pytest.mark.parametrize("fraction", [0.25, 0.5, 1 / 3, 0.1])
def test_flush_fraction_drops_one_node_the_same_keys_every_time(fraction: float) -> None:
    nodes = round(1 / fraction)
    keys = np.random.default_rng(nodes).choice(10**9, size=20_000, replace=False).tolist()
    first, second = CachePolicy(len(keys)), CachePolicy(len(keys))
    _serve(first, keys)
    _serve(second, keys[::-1])  # the same key set, inserted in another order
    lost = first.flush(fraction)
    assert sorted(second.flush(fraction)) == sorted(lost)
    dropped = len(lost)
    # binomial(20000, 1/nodes): within 5 standard deviations
    sd = (len(keys) * fraction * (1 - fraction)) ** 0.5
    assert abs(dropped - len(keys) / nodes) < 5 * sd
    kept = _held(first, keys)
    assert kept == _held(second, keys) == {key for key in keys if cache_node(key, nodes) != 0}
    assert len(kept) == len(keys) - dropped == len(first)


def test_cache_node_spreads_consecutive_keys_evenly() -> None:
    counts = np.bincount([cache_node(key, 4) for key in range(100_000)], minlength=4)
    assert counts.min() > 24_500 and counts.max() < 25_500


def test_hits_drop_after_a_flush_and_recover() -> None:
    p = _zipf_popularity(1.0, 10_000)
    keys = _zipf_keys(p, 120_000, seed=11)
    cache = CachePolicy(1_000)
    _serve(cache, keys[:40_000])
    before = np.mean(_serve(cache, keys[40_000:60_000]))
    assert len(cache.flush(1.0)) == 1_000
    just_after = np.mean(_serve(cache, keys[60_000:61_000]))
    _serve(cache, keys[61_000:80_000])
    recovered = np.mean(_serve(cache, keys[80_000:120_000]))
    assert just_after < before - 0.1
    assert recovered == pytest.approx(before, abs=0.02)

    partial = CachePolicy(1_000)
    _serve(partial, keys[:60_000])
    partial.flush(0.25)
    after_quarter = np.mean(_serve(partial, keys[60_000:61_000]))
    assert just_after < after_quarter < before


# --- capacity ---------------------------------------------------------------------------------------
def test_insert_returns_the_key_dropped_for_room() -> None:
    """A caller that stores values (the live engine) deletes the value of the key the policy dropped."""
    cache = CachePolicy(2)
    assert cache.insert(1, 0.0) is None and cache.insert(2, 0.0) is None
    assert cache.insert(3, 0.0) == 1
    assert cache.lookup(2, 0.0)
    assert cache.insert(4, 0.0) == 3  # 2 was used more recently
    assert cache.insert(4, 1.0) is None  # a re-insertion drops nothing
    assert CachePolicy(0).insert(5, 0.0) == 5  # capacity 0 keeps nothing


def test_capacity_zero_never_hits() -> None:
    cache = CachePolicy(0, ttl_s=10.0)
    hits = _serve(cache, [1, 1, 2, 1, 2, 2] * 100)
    assert not any(hits)
    assert (len(cache), cache.hits, cache.misses, cache.evictions) == (0, 0, 600, 0)


def test_insert_into_full_cache_evicts_exactly_the_lru_key() -> None:
    cache = CachePolicy(3)
    for key in (1, 2, 3):
        cache.insert(key, 0.0)
    assert cache.lookup(1, 1.0)  # order now 2, 3, 1
    cache.insert(3, 2.0)  # a refresh makes 3 MRU without evicting: 2, 1, 3
    assert cache.evictions == 0 and len(cache) == 3
    cache.insert(4, 3.0)  # evicts 2
    assert cache.evictions == 1 and len(cache) == 3
    assert not cache.lookup(2, 4.0)
    assert all(cache.lookup(key, 4.0) for key in (1, 3, 4))
    cache.insert(5, 5.0)  # order was 1, 3, 4 after those hits: evicts 1
    assert not cache.lookup(1, 6.0)
    assert cache.evictions == 2


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        CachePolicy(-1)
    with pytest.raises(ValueError):
        CachePolicy(10, ttl_s=0.0)
    with pytest.raises(ValueError):
        CachePolicy(10).flush(0.0)
    with pytest.raises(ValueError):
        CachePolicy(10).flush(1.5)
