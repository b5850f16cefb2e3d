"""A seeded synthetic world with known ground truth: users, drifting items, behaviours and impressions.

Items have a hidden latent vector around their category's centre; their multi-modal embedding is a noisy
projection of it. Each item changes at continuous times (a Poisson process of `change_rate_per_h`): its
latent moves, its price bucket may change and its popularity jumps (reverting towards its base), so features
at time t differ from those of t - lag for the items that changed in between, at any time scale. Users
have a few hidden interest points and a current one, redrawn at continuous times; their long-term
behaviours (~1000) are items near all their interest points, their short sequence (~50) is the latest of
their behaviour events, each drawn near the interest current at that moment. The true click logit mixes
- a general taste <theta_u, z_i> and category preferences (what a two-tower model can represent),
- the current intent, seen in the recent short sequence,
- long-term affinity: a soft count of long-term behaviours whose latent is close to the candidate's
  (a max-like, multi-modal function a single dot product cannot represent),
- popularity and a user-specific price sensitivity.
Behaviours' item features are those of time 0. Candidates and labels use time t.

Portability: a seed gives the same world, bit for bit, on any x86-64 CPU (AVX2 or AVX-512) with the same
numpy. Vectorised transcendental functions and BLAS products take CPU-specific code paths whose last bits
differ, so the world uses neither where it matters: latent vectors, interests and the projection are
rounded to a grid of 2^-20, which makes their dot products exact in float64 whatever the summation order
(every partial sum fits in 53 bits); exp and log1p are evaluated with IEEE-exact arithmetic only (`_exp`,
`_log1p`); the multi-modal embeddings use products, sums in a fixed order and square roots, which IEEE 754
rounds the same everywhere; index selections by `argpartition` (whose order depends on the SIMD sort) are
sorted; change times are sums of numpy's exponential draws rounded to 2^-10 s, compared exactly.
`tests/model/test_model_world.py` pins a hash of a generated world.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, replace

import numpy as np

PROFILE_SIZES = (6, 2, 4, 4)  # age bucket, gender, city tier, activity level


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and dynamics of the world; `seed` fixes everything generated from it."""

    n_users: int = 2000
    n_items: int = 10000
    n_categories: int = 32
    n_brands: int = 320
    n_price_buckets: int = 10
    n_pop_buckets: int = 10
    latent_dim: int = 16
    mm_dim: int = 64
    short_len: int = 50
    long_len: int = 1000
    n_interests: int = 3
    horizon_s: float = 172800.0  # items and users change over [0, horizon_s]; after it nothing changes
    change_rate_per_h: float = 0.4  # expected feature changes per item per hour, at continuous (Poisson) times
    change_size: float = 0.8  # how far a change moves the item's latent offset (0: not at all, 1: redrawn)
    behaviours_per_h: float = 12.0  # mean behaviour events per user per hour (scaled by the user's activity level)
    interest_switch_per_h: float = 0.25  # rate at which a user redraws its current interest (it may draw the same)
    train_requests: int = 5000
    test_requests: int = 1000
    train_candidates: int = 100
    test_candidates: int = 300
    train_end_s: float = 64800.0  # training requests in [0, train_end_s)
    test_end_s: float = 86400.0  # test requests in [train_end_s, test_end_s)
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, WorldConfig] = {
    "tiny": WorldConfig(  # tests and smoke runs: seconds
        n_users=300,
        n_items=2000,
        n_categories=16,
        n_brands=160,
        short_len=20,
        long_len=200,
        train_requests=1200,
        test_requests=300,
        train_candidates=50,
        test_candidates=150,
    ),
    "small": WorldConfig(),
    "medium": WorldConfig(n_users=10000, n_items=30000, n_categories=48, n_brands=960, train_requests=20000, test_requests=3000),
}


def preset(name: str, seed: int) -> WorldConfig:
    """The named preset with the given seed."""
    return replace(PRESETS[name], seed=seed)


@dataclass
class ItemFeatures:
    """Item features as the model sees them, for items of any shape."""

    category: np.ndarray
    brand: np.ndarray
    price: np.ndarray
    pop: np.ndarray
    mm: np.ndarray  # float32 [..., mm_dim]


@dataclass
class UserFeatures:
    """User features: profile ids [B, 4], short sequence items' features [B, Ls], long-term mm embeddings [B, Ll, mm_dim]."""

    profile: np.ndarray
    short: ItemFeatures
    long_mm: np.ndarray


@dataclass
class Requests:
    """Pre-ranking requests: who, when, the retrieved candidates, true click probabilities and sampled labels."""

    users: np.ndarray  # [R]
    times: np.ndarray  # [R] seconds
    items: np.ndarray  # [R, C]
    probs: np.ndarray  # [R, C]
    labels: np.ndarray  # [R, C] 0/1

    def __len__(self) -> int:
        return len(self.users)

    def subset(self, rows: np.ndarray | slice) -> Requests:
        """The requests at `rows`."""
        return Requests(self.users[rows], self.times[rows], self.items[rows], self.probs[rows], self.labels[rows])


GRID = 2.0**-20  # latent vectors and the projection are multiples of this: their dot products are exact in float64
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10  # ln 2 = HI + LO, HI with 32 bits
_INV_LN2 = 1.4426950408889634
_EXP_TAYLOR = tuple(1.0 / math.factorial(n) for n in range(14))  # 1/n!, correctly rounded
_SQRT_HALF = 0.7071067811865476


def _grid(x: np.ndarray) -> np.ndarray:
    """x rounded to the nearest multiple of GRID (exact operations: scaling by a power of two and rounding)."""
    return np.round(np.asarray(x, dtype=np.float64) / GRID) * GRID


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, in float64 (the squares are summed in numpy's fixed pairwise order)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.sqrt(np.add.reduce(x * x, axis=-1, keepdims=True))


def _exp(x: np.ndarray) -> np.ndarray:
    """exp(x) to about 1e-16 relative, with IEEE-exact operations only (the same bits on every CPU, unlike
    np.exp, whose AVX-512 and AVX2/libm paths differ in the last bit): x = k ln 2 + r, |r| <= ln 2 / 2,
    exp(r) by its Taylor polynomial to degree 13, scaled by 2^k."""
    x = np.clip(np.asarray(x, dtype=np.float64), -740.0, 709.0)
    k = np.rint(x * _INV_LN2)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = np.full_like(r, _EXP_TAYLOR[13])
    for coefficient in _EXP_TAYLOR[12::-1]:
        np.multiply(p, r, out=p)
        np.add(p, coefficient, out=p)
    return np.ldexp(p, k.astype(np.int64))


def _log1p(y: np.ndarray) -> np.ndarray:
    """log(1 + y) for y > -1, to about 1e-16 absolute, with IEEE-exact operations only: 1 + y = m 2^e with
    m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s) with s = (m - 1) / (m + 1), by its series to s^21."""
    m, e = np.frexp(1.0 + np.asarray(y, dtype=np.float64))
    low = m < _SQRT_HALF
    m = np.where(low, 2.0 * m, m)
    e = e - low
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    series = np.full_like(s, 1.0 / 21.0)
    for n in range(19, 0, -2):
        series = series * s2 + 1.0 / n
    return (e * _LN2_HI + 2.0 * s * series) + e * _LN2_LO


TIME_GRID = 2.0**-10  # change and behaviour times are multiples of this (about a millisecond): comparisons are exact


def _event_rounds(rng: np.random.Generator, mean_gap_s: np.ndarray | float, n: int, horizon_s: float):
    """Poisson event times of n entities over [0, horizon_s]: round k draws every entity's k-th gap (so a longer
    horizon only appends events). Yields (times [n], alive [n]) while some entity's k-th event is in the horizon."""
    t = np.zeros(n)
    while True:
        t = t + rng.exponential(mean_gap_s, n)
        alive = t <= horizon_s
        if not alive.any():
            return
        yield np.round(t / TIME_GRID) * TIME_GRID, alive


class _Timeline:
    """Events of n entities, sorted by entity then time: `count(ids, t)` is the number of each entity's events at
    or before t, `position(ids, t)` the index of its state at t in a layout where each entity's initial state is
    followed by one state per event (entities in order). Queries compare times exactly (a binary search within
    each entity's events), so event times need not lie on a grid."""

    def __init__(self, ids: np.ndarray, times: np.ndarray, n: int) -> None:
        order = np.lexsort((times, ids))
        self.ids, self.times = ids[order], np.asarray(times, dtype=np.float64)[order]
        self.first = np.searchsorted(self.ids, np.arange(n + 1))  # events of entities < i

    def _query(self, ids: np.ndarray, t: np.ndarray | float) -> np.ndarray:
        """Per id, the index of the first of its events later than t (the number of all events before it)."""
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), np.shape(ids))
        lo, hi = self.first[ids], self.first[ids + 1]
        if not len(self.times):
            return lo
        while True:
            open_ = lo < hi
            if not open_.any():
                return lo
            mid = (lo + hi) // 2
            later = self.times[np.minimum(mid, len(self.times) - 1)] > t
            lo = np.where(open_ & ~later, mid + 1, lo)
            hi = np.where(open_ & later, mid, hi)

    def count(self, ids: np.ndarray, t: np.ndarray | float) -> np.ndarray:
        ids = np.asarray(ids)
        return self._query(ids, t) - self.first[ids]

    def position(self, ids: np.ndarray, t: np.ndarray | float) -> np.ndarray:
        ids = np.asarray(ids)
        return self._query(ids, t) + ids

    def times_of(self, entity: int) -> np.ndarray:
        return self.times[self.first[entity] : self.first[entity + 1]]


class World:
    """The generated world; build it with `World(cfg)` (deterministic in cfg).

    Ids: users and items are numbered 0..n-1. `item_order` lists items by popularity at time 0 (most popular
    first) and `user_order` users by activity (most active first, ties by id); `items_by_rank` and
    `users_by_rank` map popularity ranks of a larger or smaller population onto them (see their docstrings)."""

    OFFSET_SCALE = 0.3  # item offset per latent coordinate around the category centre
    MM_NOISE = 0.15  # noise of the multi-modal embedding around the projected latent
    POP_JUMP = 0.8  # popularity jump (log scale, standard deviation) at an item's change
    POP_REVERSION = 0.8  # share of the deviation from the item's base popularity kept at a change
    LONG_SHARPNESS = 12.0  # how tightly long-term behaviours concentrate around interest points
    SHORT_SHARPNESS = 16.0
    AFFINITY_COS = 0.85  # a long-term behaviour counts as similar above this latent cosine
    WEIGHTS = {"taste": 1.0, "category": 1.0, "intent": 3.0, "affinity": 1.2, "pop": 0.4, "price": 0.3}  # of the logit terms
    BIAS = -2.3  # test CTR about 2.7%

    def __init__(self, cfg: WorldConfig) -> None:
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        self._make_items(rng, np.random.default_rng([cfg.seed, 3]))
        self._make_users(rng, np.random.default_rng([cfg.seed, 4]))
        self._make_behaviours(rng, np.random.default_rng([cfg.seed, 5]))
        self._requests: dict[str, Requests] = {}

    # items
    def _make_items(self, rng: np.random.Generator, drift: np.random.Generator) -> None:
        c = self.cfg
        n, k = c.n_items, c.latent_dim
        self.centres = _unit(rng.standard_normal((c.n_categories, k)))
        self.category = rng.integers(0, c.n_categories, n)
        brands_per_cat = max(1, c.n_brands // c.n_categories)
        self.brand = self.category * brands_per_cat + rng.integers(0, brands_per_cat, n)
        self.projection = _grid(rng.standard_normal((k, c.mm_dim)) / np.sqrt(k))
        self.mm_noise = rng.standard_normal((n, c.mm_dim)).astype(np.float32) / np.sqrt(c.mm_dim)
        offset = rng.standard_normal((n, k)) * self.OFFSET_SCALE
        self.base_log_pop = -1.0 * _log1p(rng.permutation(n))
        price = rng.integers(0, c.n_price_buckets, n)
        log_pop = self.base_log_pop.copy()
        # state 0 of every item, then one state per change (round r = every item's r-th change)
        ids, times, offsets, prices, pops = [np.arange(n)], [np.full(n, -1.0)], [offset], [price], [log_pop]
        if c.change_rate_per_h > 0:
            for t, alive in _event_rounds(drift, 3600.0 / c.change_rate_per_h, n, c.horizon_s):
                offset, price, log_pop = self._changed(self._change_draws(drift, n), offset, price, log_pop, self.base_log_pop)
                ids.append(np.flatnonzero(alive))
                times.append(t[alive])
                offsets.append(offset[alive])
                prices.append(price[alive])
                pops.append(log_pop[alive])
        self._set_item_states(
            np.concatenate(ids), np.concatenate(times), np.concatenate(offsets), np.concatenate(prices), np.concatenate(pops)
        )
        self.item_order = np.argsort(-self.base_log_pop, kind="stable")
        self.latent0 = self.state_latent[self.item_state(np.arange(n), 0.0)]  # behaviours' latents (history: time 0)
        self.mm0 = self.mm(self.latent0, np.arange(n))  # and their multi-modal embeddings

    def _change_draws(self, rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The random draws of m item changes: latent moves, whether to reprice, new prices, popularity jumps."""
        return (
            rng.standard_normal((m, self.cfg.latent_dim)),
            rng.random(m) < 0.5,
            rng.integers(0, self.cfg.n_price_buckets, m),
            rng.standard_normal(m),
        )

    def _changed(
        self,
        draws: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        offset: np.ndarray,
        price: np.ndarray,
        log_pop: np.ndarray,
        base_log_pop: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The state after one change of each of these items (`draws`: theirs, from `_change_draws`): the latent
        offset moves (`change_size`), the price bucket is redrawn half the time, the log popularity jumps and
        reverts towards its base."""
        c = self.cfg
        move, reprice, new_price, jump = draws
        offset = np.sqrt(1 - c.change_size**2) * offset + c.change_size * self.OFFSET_SCALE * move
        price = np.where(reprice, new_price, price)
        log_pop = base_log_pop + self.POP_REVERSION * (log_pop - base_log_pop) + self.POP_JUMP * jump
        return offset, price, log_pop

    def _set_item_states(self, ids: np.ndarray, times: np.ndarray, offsets: np.ndarray, prices: np.ndarray, pops: np.ndarray) -> None:
        """The item timeline from every state (initial ones at time -1, one per change): the states ordered by item,
        then time, and the features of each."""
        c, n = self.cfg, self.cfg.n_items
        order = np.lexsort((times, ids))  # by item, then time: state 0 first
        changes = times[order] >= 0
        self.changes = _Timeline(ids[order][changes], times[order][changes], n)
        self.state_item = ids[order]
        self.state_time = times[order]  # -1 for initial states
        self.state_offset = offsets[order]
        self.state_latent = _grid(_unit(self.centres[self.category[self.state_item]] + self.state_offset)).astype(np.float32)
        self.state_price = prices[order].astype(np.int64)
        self.state_log_pop = pops[order]
        # popularity buckets by fixed thresholds: the bucket of time 0's rank for the same log popularity
        ascending = np.sort(self.base_log_pop)
        more_popular = n - np.searchsorted(ascending, self.state_log_pop, side="right")
        self.state_pop = np.minimum(more_popular * c.n_pop_buckets // n, c.n_pop_buckets - 1).astype(np.int64)

    def following(self, items: np.ndarray, times: np.ndarray, after_s: float, seed: int) -> World:
        """This world with its item changes after `after_s` replaced by the listed ones (item `items[k]` changes at
        world time `times[k]` > after_s, any time, past the horizon too), each by the world's own change dynamics
        drawn from a stream of `seed`; users, behaviours and every state up to `after_s` are this world's."""
        items, times = np.asarray(items, dtype=np.int64), np.asarray(times, dtype=np.float64)
        if len(times) and times.min() <= after_s:
            raise ValueError(f"following: changes must come after {after_s:g} s")
        world = copy.copy(self)
        kept = self.state_time <= after_s  # the initial states (time -1) and the changes up to after_s
        ids, offsets = [self.state_item[kept]], [self.state_offset[kept]]
        prices, pops, all_times = [self.state_price[kept]], [self.state_log_pop[kept]], [self.state_time[kept]]
        # each item's state at after_s, then its listed changes in rounds (round r: every item's r-th listed change)
        n = self.cfg.n_items
        current = self.item_state(np.arange(n), after_s)
        offset, price, log_pop = self.state_offset[current], self.state_price[current], self.state_log_pop[current]
        order = np.lexsort((times, items))
        items, times = items[order], times[order]
        first = np.searchsorted(items, np.arange(n + 1))
        count = np.diff(first)
        draws = self._change_draws(np.random.default_rng([self.cfg.seed, 7, seed]), len(items))  # change j's: row j
        alive = np.flatnonzero(count)
        for r in range(int(count.max(initial=0))):
            alive = alive[count[alive] > r]
            rows = first[alive] + r
            step = self._changed(tuple(d[rows] for d in draws), offset[alive], price[alive], log_pop[alive], self.base_log_pop[alive])
            offset[alive], price[alive], log_pop[alive] = step
            ids.append(alive)
            all_times.append(times[rows])
            offsets.append(offset[alive])
            prices.append(price[alive])
            pops.append(log_pop[alive])
        world._set_item_states(*(np.concatenate(x) for x in (ids, all_times, offsets, prices, pops)))
        return world

    def item_state(self, items: np.ndarray, t: np.ndarray | float) -> np.ndarray:
        """Index of each item's state at time(s) t (broadcast to items): the same index means the same features.
        Times before 0 give the initial state; after the horizon, the last one."""
        return self.changes.position(np.asarray(items), t)

    def mm(self, latent: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Multi-modal embeddings (float32) of items with the given latent vectors (latent @ projection is exact in float64)."""
        projected = latent.astype(np.float64) @ self.projection
        return _unit(_unit(projected) + self.MM_NOISE * self.mm_noise[items]).astype(np.float32)

    def state_features(self, items: np.ndarray, states: np.ndarray) -> ItemFeatures:
        """Features of items (any shape) in the given states (from `item_state`)."""
        return ItemFeatures(
            self.category[items],
            self.brand[items],
            self.state_price[states],
            self.state_pop[states],
            self.mm(self.state_latent[states], items),
        )

    def item_features(self, items: np.ndarray, t: np.ndarray | float) -> ItemFeatures:
        """Features of items (any shape) as they were at time(s) t (broadcast to items)."""
        items = np.asarray(items)
        return self.state_features(items, self.item_state(items, t))

    def item_latent(self, items: np.ndarray, t: np.ndarray | float) -> np.ndarray:
        """Hidden latent vectors (float32, on the grid) of items at time(s) t."""
        return self.state_latent[self.item_state(items, t)]

    def changed_between(self, items: np.ndarray, t0: np.ndarray | float, t1: np.ndarray | float) -> np.ndarray:
        """Whether each item's features changed in (t0, t1]."""
        return self.item_state(items, t1) > self.item_state(items, t0)

    def change_times(self, item: int) -> np.ndarray:
        """The times (seconds, sorted) at which an item's features change within the horizon."""
        return self.changes.times_of(item)

    def items_by_rank(self, ranks: np.ndarray, population: int | None = None) -> np.ndarray:
        """World items of popularity ranks 0..population-1 of another catalogue (rank 0 = most popular).

        Rule: rank r is the world item of world rank r * n_items // population (`item_order`: popularity at time
        0) when the population is larger than the world's, and of world rank r otherwise. Ranks keep their order
        (a more popular rank never maps to a less popular item) and rank 0 is the world's most popular item; a
        larger population shares each world item among about population / n_items consecutive ranks."""
        return _by_rank(self.item_order, ranks, population, "item")

    # users
    def _make_users(self, rng: np.random.Generator, timeline: np.random.Generator) -> None:
        c = self.cfg
        self.profile = np.stack([rng.integers(0, n, c.n_users) for n in PROFILE_SIZES], axis=1)
        n_groups = PROFILE_SIZES[0] * PROFILE_SIZES[1]
        group_pref = rng.dirichlet(np.full(c.n_categories, 0.3), n_groups)
        group = self.profile[:, 0] * PROFILE_SIZES[1] + self.profile[:, 1]
        cats = np.stack([rng.choice(c.n_categories, c.n_interests, p=group_pref[g]) for g in group])
        offsets = rng.standard_normal((c.n_users, c.n_interests, c.latent_dim)) * self.OFFSET_SCALE
        self.interests = _grid(_unit(self.centres[cats] + offsets))  # [U, m, k]
        self.interest_weights = rng.dirichlet(np.ones(c.n_interests), c.n_users)
        self.taste = _grid(_unit((self.interest_weights[:, :, None] * self.interests).sum(1)))
        self.category_pref = np.zeros((c.n_users, c.n_categories))
        np.add.at(self.category_pref, (np.arange(c.n_users)[:, None], cats), self.interest_weights)
        cumulative = np.cumsum(self.interest_weights, axis=1)
        first = (rng.random(c.n_users)[:, None] * cumulative[:, -1:] >= cumulative).sum(1)
        age_effect = (self.profile[:, 0] - PROFILE_SIZES[0] / 2) / PROFILE_SIZES[0]
        self.price_sensitivity = rng.standard_normal(c.n_users) + 2 * age_effect
        self.activity = self.profile[:, 3]
        self.user_order = np.argsort(-self.activity, kind="stable")
        # the current interest is redrawn (from the interest weights) at Poisson times
        ids, times, picks = [np.arange(c.n_users)], [np.full(c.n_users, -1.0)], [first]
        if c.interest_switch_per_h > 0:
            for t, alive in _event_rounds(timeline, 3600.0 / c.interest_switch_per_h, c.n_users, c.horizon_s):
                pick = (timeline.random(c.n_users)[:, None] * cumulative[:, -1:] >= cumulative).sum(1)
                ids.append(np.flatnonzero(alive))
                times.append(t[alive])
                picks.append(pick[alive])
        ids_all, times_all = np.concatenate(ids), np.concatenate(times)
        order = np.lexsort((times_all, ids_all))
        switches = times_all[order] >= 0
        self.switches = _Timeline(ids_all[order][switches], times_all[order][switches], c.n_users)
        self.switch_interest = np.minimum(np.concatenate(picks)[order], c.n_interests - 1)

    def current_interest(self, users: np.ndarray, t: np.ndarray | float) -> np.ndarray:
        """Index (0..n_interests-1) of each user's current interest at time(s) t."""
        return self.switch_interest[self.switches.position(np.asarray(users), t)]

    def users_by_rank(self, ranks: np.ndarray, population: int | None = None) -> np.ndarray:
        """World users of activity ranks 0..population-1 of another user base (rank 0 = most active), by the
        rule of `items_by_rank` over `user_order`."""
        return _by_rank(self.user_order, ranks, population, "user")

    def _make_behaviours(self, rng: np.random.Generator, timeline: np.random.Generator) -> None:
        c = self.cfg
        z0 = self.latent0.astype(np.float64)
        # behaviour event times: Poisson, at a rate proportional to activity level + 1 (mean behaviours_per_h)
        mean_activity = (PROFILE_SIZES[3] + 1) / 2
        rate_per_s = c.behaviours_per_h / 3600.0 * (self.activity + 1) / mean_activity
        ids, times = [np.empty(0, dtype=np.int64)], [np.empty(0)]
        if c.behaviours_per_h > 0:
            for t, alive in _event_rounds(timeline, 1.0 / rate_per_s, c.n_users, c.horizon_s):
                ids.append(np.flatnonzero(alive))
                times.append(t[alive])
        self.behaviours = _Timeline(np.concatenate(ids), np.concatenate(times), c.n_users)
        # each user's timeline: short_len items of history (near the interest current at time 0), then one per event
        interest_at = self.current_interest(self.behaviours.ids, self.behaviours.times)
        draws = timeline.random(c.n_users * c.short_len + len(self.behaviours.ids))
        self.timeline_start = np.arange(c.n_users) * c.short_len + self.behaviours.first[:-1]
        self.timeline_items = np.empty(len(draws), dtype=np.int64)
        self.long_items = np.empty((c.n_users, c.long_len), dtype=np.int64)
        self.relevant = np.empty((c.n_users, 4 * c.test_candidates), dtype=np.int64)
        initial = self.current_interest(np.arange(c.n_users), 0.0)
        pop = 0.5 * self.base_log_pop
        for start in range(0, c.n_users, 32):
            users = np.arange(start, min(start + 32, c.n_users))
            near = self.interests[users] @ z0.T  # [b, m, N], exact
            closeness = near.max(axis=1)
            long_logits = self.LONG_SHARPNESS * closeness + pop
            for row, u in enumerate(users):
                self.long_items[u] = _sample(rng, long_logits[row], c.long_len)
                lo, hi = self.behaviours.first[u], self.behaviours.first[u + 1]
                begin = self.timeline_start[u]
                which = np.concatenate([np.full(c.short_len, initial[u]), interest_at[lo:hi]])
                u_draws = draws[begin : begin + c.short_len + hi - lo]
                self.timeline_items[begin : begin + len(which)] = self._near_interests(near[row], which, u_draws, pop)
            self.relevant[users] = np.sort(np.argpartition(-closeness, self.relevant.shape[1], axis=1)[:, : self.relevant.shape[1]], axis=1)

    def _near_interests(self, near: np.ndarray, which: np.ndarray, uniforms: np.ndarray, pop: np.ndarray) -> np.ndarray:
        """Behaviour items, one per uniform draw, each near the user's interest `which[k]` (`near` [m, n_items]: the
        interests' dot products with the items' time-0 latents; `pop`: half the base log popularity)."""
        out = np.empty(len(which), dtype=np.int64)
        for j in np.unique(which):
            rows = np.flatnonzero(which == j)
            out[rows] = _inverse_cdf(self.SHORT_SHARPNESS * near[j] + pop, uniforms[rows])
        return out

    def behaviour_items(self, user: int, times: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        """The items of a user's behaviour events at `times` (any times, within the horizon or not), given one uniform
        draw in [0, 1) each: near the interest current at each event, by the world's own rule for its behaviours."""
        times = np.asarray(times, dtype=np.float64)
        near = self.interests[user] @ self.latent0.astype(np.float64).T  # [m, n_items], exact
        which = self.current_interest(np.full(len(times), user), times)
        return self._near_interests(near, which, np.asarray(uniforms, dtype=np.float64), 0.5 * self.base_log_pop)

    def short_items(self, users: np.ndarray, t: np.ndarray | float) -> np.ndarray:
        """The short sequence [B, short_len] of users [B] at time(s) t: their latest behaviours, oldest first."""
        users = np.asarray(users)
        start = self.timeline_start[users] + self.behaviours.count(users, t)
        return self.timeline_items[start[:, None] + np.arange(self.cfg.short_len)]

    def user_features(self, users: np.ndarray, t: np.ndarray | float) -> UserFeatures:
        """Features of users [B] at time(s) t: the short sequence is the latest behaviours at t; behaviours carry the
        item features of time 0."""
        users = np.asarray(users)
        return self.sequence_features(users, self.short_items(users, t))

    def sequence_features(self, users: np.ndarray, short: np.ndarray) -> UserFeatures:
        """Features of users [B] whose short sequences are the items `short` [B, short_len] (behaviours carry the item
        features of time 0)."""
        users = np.asarray(users)
        return UserFeatures(self.profile[users], self.item_features(short, 0.0), self.mm0[self.long_items[users]])

    # ground truth and impressions
    def click_logit(self, users: np.ndarray, items: np.ndarray, t: np.ndarray) -> np.ndarray:
        """True click logits for users [R], candidates [R, C] at times [R]."""
        states = self.item_state(items, np.asarray(t, dtype=np.float64)[:, None])
        z = self.state_latent[states].astype(np.float64)  # [R, C, k]
        w = self.WEIGHTS
        taste = np.einsum("rck,rk->rc", z, self.taste[users])
        category = np.take_along_axis(self.category_pref[users], self.category[items], axis=1)
        intent = np.einsum("rck,rk->rc", z, self.interests[users, self.current_interest(users, t)])
        affinity = np.stack([self.long_affinity(zr, u) for zr, u in zip(z, users)])
        pop = self.state_log_pop[states]
        price = (self.state_price[states] - self.cfg.n_price_buckets / 2) / self.cfg.n_price_buckets
        return (
            self.BIAS
            + w["taste"] * taste
            + w["category"] * category
            + w["intent"] * intent
            + w["affinity"] * affinity
            + w["pop"] * pop
            - w["price"] * self.price_sensitivity[users, None] * price
        )

    def long_affinity(self, z: np.ndarray, user: int, block: int = 512) -> np.ndarray:
        """Long-term affinity of candidates with latents z [C, k]: log1p of the soft count of similar behaviours
        (in blocks of candidates, so the [block, long_len] cosines stay in cache)."""
        z = np.asarray(z, dtype=np.float64)
        behaviours = np.ascontiguousarray(self.latent0[self.long_items[user]].astype(np.float64).T)
        total = np.empty(len(z))
        buffer = np.empty((min(block, len(z)), behaviours.shape[1]))
        for start in range(0, len(z), block):
            rows = slice(start, min(start + block, len(z)))
            cos = np.matmul(z[rows], behaviours, out=buffer[: rows.stop - rows.start])
            cos -= self.AFFINITY_COS
            np.maximum(cos, 0.0, out=cos)
            total[rows] = cos.sum(-1)
        return _log1p(total / (1 - self.AFFINITY_COS))

    def click_prob(self, users: np.ndarray, items: np.ndarray, t: np.ndarray) -> np.ndarray:
        """True click probabilities for users [R], candidates [R, C] at times [R]."""
        out = np.empty(items.shape)
        for start in range(0, len(users), 128):
            rows = slice(start, start + 128)
            out[rows] = 1.0 / (1.0 + _exp(-self.click_logit(users[rows], items[rows], t[rows])))
        return out

    def requests(self, split: str) -> Requests:
        """The train or test requests (deterministic in the world's seed; generated once)."""
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}")
        if split not in self._requests:
            c = self.cfg
            if split == "train":
                self._requests[split] = self.requests_between(0.0, c.train_end_s, c.train_requests, c.train_candidates, stream=1)
            else:
                self._requests[split] = self.requests_between(c.train_end_s, c.test_end_s, c.test_requests, c.test_candidates, stream=2)
        return self._requests[split]

    def requests_between(self, lo: float, hi: float, n: int, n_candidates: int, stream: int = 0) -> Requests:
        """n requests of uniformly drawn users at uniform times in [lo, hi), sorted by time, with n_candidates each
        (deterministic in the world's seed, the window and `stream`)."""
        rng = np.random.default_rng([self.cfg.seed, 100 + stream, int(round(lo)), int(round(hi))])
        users = rng.integers(0, self.cfg.n_users, n)
        times = np.sort(rng.uniform(lo, hi, n))
        items = np.stack([self.retrieve(rng, u, t, n_candidates) for u, t in zip(users, times)]).reshape(n, n_candidates)
        probs = self.click_prob(users, items, times)
        labels = (rng.random(items.shape) < probs).astype(np.int8)
        return Requests(users, times, items, probs, labels)

    def log_pop_at(self, items: np.ndarray, t: np.ndarray | float) -> np.ndarray:
        """Log popularity of items at time(s) t."""
        return self.state_log_pop[self.item_state(items, t)]

    def retrieve(self, rng: np.random.Generator, user: int, t: float, n: int) -> np.ndarray:
        """n distinct candidates for a request: half (at most the user's relevant pool, 4 x test_candidates items)
        by relevance to the user, the rest by popularity at t (Gumbel top-k). n may be at most n_items."""
        n_items = self.cfg.n_items
        if not 0 <= n <= n_items:
            raise ValueError(f"{n} candidates requested: the world has {n_items} items (n_items), so at most {n_items}")
        relevant = rng.choice(self.relevant[user], min(n // 2, self.relevant.shape[1]), replace=False)
        k = n - len(relevant)
        scores = self.log_pop_at(np.arange(n_items), t) + rng.gumbel(size=n_items)
        scores[relevant] = -np.inf
        if k >= n_items - len(relevant):
            popular = np.setdiff1d(np.arange(n_items), relevant)
        else:
            popular = np.sort(np.argpartition(-scores, k)[:k])
        return np.concatenate([relevant, popular])


def _by_rank(order: np.ndarray, ranks: np.ndarray, population: int | None, what: str) -> np.ndarray:
    n = len(order)
    population = n if population is None else int(population)
    ranks = np.asarray(ranks, dtype=np.int64)
    if population < 1:
        raise ValueError(f"{what} population {population}: expected a positive count")
    if ranks.size and (ranks.min() < 0 or ranks.max() >= population):
        raise ValueError(
            f"{what} rank {ranks.min() if ranks.min() < 0 else ranks.max()} outside 0..{population - 1} (population {population})"
        )
    return order[ranks * n // population] if population > n else order[ranks]


def _inverse_cdf(logits: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Indices drawn with probabilities softmax(logits) for uniforms u in [0, 1)."""
    cdf = np.cumsum(_exp(logits - logits.max()))
    return np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), len(cdf) - 1)


def _sample(rng: np.random.Generator, logits: np.ndarray, n: int) -> np.ndarray:
    p = _exp(logits - logits.max())
    cdf = np.cumsum(p)
    return np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), len(p) - 1)
