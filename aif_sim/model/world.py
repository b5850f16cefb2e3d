"""A seeded synthetic world with known ground truth: users, drifting items, behaviours and impressions.

Items have a hidden latent vector around their category's centre; their multi-modal embedding is a noisy
projection of it. At every epoch boundary some items change (the latent moves, the price bucket may
change, popularity jumps) and all popularities random-walk, so features at time t differ from those of
t - lag. Users have a few hidden interest points; their long-term behaviours (~1000) are items near those
points, their short sequence (~50) follows the current one. The true click logit mixes
- a general taste <theta_u, z_i> and category preferences (what a two-tower model can represent),
- the current intent, seen in the short sequence,
- long-term affinity: a soft count of long-term behaviours whose latent is close to the candidate's
  (a max-like, multi-modal function a single dot product cannot represent),
- popularity and a user-specific price sensitivity.
Behaviours are history: their features are those of time 0. Candidates and labels use time t.

Portability: a seed gives the same world, bit for bit, on any x86-64 CPU (AVX2 or AVX-512) with the same
numpy. Vectorised transcendental functions and BLAS products take CPU-specific code paths whose last bits
differ, so the world uses neither where it matters: latent vectors, interests and the projection are
rounded to a grid of 2^-20, which makes their dot products exact in float64 whatever the summation order
(every partial sum fits in 53 bits); exp and log1p are evaluated with IEEE-exact arithmetic only (`_exp`,
`_log1p`); the multi-modal embeddings use products, sums in a fixed order and square roots, which IEEE 754
rounds the same everywhere; index selections by `argpartition` (whose order depends on the SIMD sort) are
sorted. `tests/model/test_model_world.py` pins a hash of a generated world.
"""

from __future__ import annotations

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
    horizon_s: float = 86400.0
    epoch_s: float = 1800.0
    change_prob: float = 0.2  # chance that an item's features change at an epoch boundary
    change_size: float = 0.8  # how far a change moves the item's latent offset (0: not at all, 1: redrawn)
    train_requests: int = 5000
    test_requests: int = 1000
    train_candidates: int = 100
    test_candidates: int = 300
    test_start_frac: float = 0.75  # training requests before this fraction of the horizon, test requests after
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


class World:
    """The generated world; build it with `World(cfg)` (deterministic in cfg)."""

    OFFSET_SCALE = 0.3  # item offset per latent coordinate around the category centre
    MM_NOISE = 0.15  # noise of the multi-modal embedding around the projected latent
    LONG_SHARPNESS = 12.0  # how tightly long-term behaviours concentrate around interest points
    SHORT_SHARPNESS = 16.0
    AFFINITY_COS = 0.85  # a long-term behaviour counts as similar above this latent cosine
    WEIGHTS = {"taste": 1.0, "category": 1.0, "intent": 3.0, "affinity": 1.2, "pop": 0.4, "price": 0.3}  # of the logit terms
    BIAS = -3.0

    def __init__(self, cfg: WorldConfig) -> None:
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        self._make_items(rng)
        self._make_users(rng)
        self._make_behaviours(rng)
        self._requests: dict[str, Requests] = {}

    # items
    def _make_items(self, rng: np.random.Generator) -> None:
        c = self.cfg
        n_epochs = int(np.ceil(c.horizon_s / c.epoch_s)) + 1
        self.centres = _unit(rng.standard_normal((c.n_categories, c.latent_dim)))
        self.category = rng.integers(0, c.n_categories, c.n_items)
        brands_per_cat = max(1, c.n_brands // c.n_categories)
        self.brand = self.category * brands_per_cat + rng.integers(0, brands_per_cat, c.n_items)
        self.projection = _grid(rng.standard_normal((c.latent_dim, c.mm_dim)) / np.sqrt(c.latent_dim))
        self.mm_noise = rng.standard_normal((c.n_items, c.mm_dim)).astype(np.float32) / np.sqrt(c.mm_dim)
        offset = rng.standard_normal((c.n_items, c.latent_dim)) * self.OFFSET_SCALE
        log_pop = -1.0 * _log1p(rng.permutation(c.n_items))
        price = rng.integers(0, c.n_price_buckets, c.n_items)
        self.latent = np.empty((n_epochs, c.n_items, c.latent_dim), dtype=np.float32)
        self.log_pop = np.empty((n_epochs, c.n_items), dtype=np.float32)
        self.price = np.empty((n_epochs, c.n_items), dtype=np.int64)
        self.changed = np.zeros((n_epochs, c.n_items), dtype=bool)
        for e in range(n_epochs):
            if e > 0:
                changed = rng.random(c.n_items) < c.change_prob
                k = int(changed.sum())
                offset[changed] = np.sqrt(1 - c.change_size**2) * offset[changed] + c.change_size * self.OFFSET_SCALE * rng.standard_normal(
                    (k, c.latent_dim)
                )
                log_pop = log_pop + 0.1 * rng.standard_normal(c.n_items)
                log_pop[changed] += 0.8 * rng.standard_normal(k)
                reprice = changed & (rng.random(c.n_items) < 0.5)
                price = np.where(reprice, rng.integers(0, c.n_price_buckets, c.n_items), price)
                self.changed[e] = changed
            self.latent[e] = _grid(_unit(self.centres[self.category] + offset))  # exact in float32
            self.log_pop[e] = log_pop
            self.price[e] = price
        self.mm0 = self.mm(self.latent[0], np.arange(c.n_items))  # behaviours' embeddings (history: time 0)
        ranks = np.argsort(np.argsort(-self.log_pop, axis=1), axis=1)
        self.pop_bucket = (ranks * c.n_pop_buckets // c.n_items).astype(np.int64)

    def epoch(self, t: np.ndarray | float) -> np.ndarray:
        """Epoch index of time(s) t (clamped to the horizon; negative times are epoch 0)."""
        e = np.floor(np.asarray(t, dtype=np.float64) / self.cfg.epoch_s).astype(np.int64)
        return np.clip(e, 0, len(self.latent) - 1)

    def mm(self, latent: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Multi-modal embeddings (float32) of items with the given latent vectors (latent @ projection is exact in float64)."""
        projected = latent.astype(np.float64) @ self.projection
        return _unit(_unit(projected) + self.MM_NOISE * self.mm_noise[items]).astype(np.float32)

    def item_features(self, items: np.ndarray, t: np.ndarray | float) -> ItemFeatures:
        """Features of items (any shape) as they were at time(s) t (broadcast to items)."""
        e = np.broadcast_to(self.epoch(t), items.shape)
        return ItemFeatures(
            self.category[items],
            self.brand[items],
            self.price[e, items],
            self.pop_bucket[e, items],
            self.mm(self.latent[e, items], items),
        )

    def changed_between(self, items: np.ndarray, t0: np.ndarray | float, t1: np.ndarray | float) -> np.ndarray:
        """Whether each item's features changed in (t0, t1]."""
        counts = np.cumsum(self.changed, axis=0)
        return counts[self.epoch(t1), items] > counts[self.epoch(t0), items]

    # users
    def _make_users(self, rng: np.random.Generator) -> None:
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
        self.current = np.array([rng.choice(c.n_interests, p=w) for w in self.interest_weights])
        age_effect = (self.profile[:, 0] - PROFILE_SIZES[0] / 2) / PROFILE_SIZES[0]
        self.price_sensitivity = rng.standard_normal(c.n_users) + 2 * age_effect

    def _make_behaviours(self, rng: np.random.Generator) -> None:
        c = self.cfg
        z0 = self.latent[0].astype(np.float64)
        self.long_items = np.empty((c.n_users, c.long_len), dtype=np.int64)
        self.short_items = np.empty((c.n_users, c.short_len), dtype=np.int64)
        self.relevant = np.empty((c.n_users, 4 * c.test_candidates), dtype=np.int64)
        for start in range(0, c.n_users, 256):
            users = np.arange(start, min(start + 256, c.n_users))
            closeness = (self.interests[users] @ z0.T).max(axis=1)  # [b, N]
            current = np.einsum("bk,nk->bn", self.interests[users, self.current[users]], z0)
            long_logits = self.LONG_SHARPNESS * closeness + 0.5 * self.log_pop[0]
            short_logits = self.SHORT_SHARPNESS * current + 0.5 * self.log_pop[0]
            for row, u in enumerate(users):
                self.long_items[u] = _sample(rng, long_logits[row], c.long_len)
                self.short_items[u] = _sample(rng, short_logits[row], c.short_len)
            self.relevant[users] = np.sort(np.argpartition(-closeness, self.relevant.shape[1], axis=1)[:, : self.relevant.shape[1]], axis=1)

    def user_features(self, users: np.ndarray) -> UserFeatures:
        """Features of users [B]; their behaviours carry the features of time 0."""
        long = self.long_items[users]
        return UserFeatures(self.profile[users], self.item_features(self.short_items[users], 0.0), self.mm0[long])

    # ground truth and impressions
    def click_logit(self, users: np.ndarray, items: np.ndarray, t: np.ndarray) -> np.ndarray:
        """True click logits for users [R], candidates [R, C] at times [R]."""
        e = self.epoch(t)[:, None]
        z = self.latent[e, items].astype(np.float64)  # [R, C, k]
        w = self.WEIGHTS
        taste = np.einsum("rck,rk->rc", z, self.taste[users])
        category = np.take_along_axis(self.category_pref[users], self.category[items], axis=1)
        intent = np.einsum("rck,rk->rc", z, self.interests[users, self.current[users]])
        affinity = np.stack([self.long_affinity(zr, u) for zr, u in zip(z, users)])
        pop = self.log_pop[e, items]
        price = (self.price[e, items] - self.cfg.n_price_buckets / 2) / self.cfg.n_price_buckets
        return (
            self.BIAS
            + w["taste"] * taste
            + w["category"] * category
            + w["intent"] * intent
            + w["affinity"] * affinity
            + w["pop"] * pop
            - w["price"] * self.price_sensitivity[users, None] * price
        )

    def long_affinity(self, z: np.ndarray, user: int) -> np.ndarray:
        """Long-term affinity of candidates with latents z [C, k]: log1p of the soft count of similar behaviours."""
        cos = np.asarray(z, dtype=np.float64) @ self.latent[0, self.long_items[user]].T.astype(np.float64)
        near = np.maximum(cos - self.AFFINITY_COS, 0.0, out=cos)
        return _log1p(near.sum(-1) / (1 - self.AFFINITY_COS))

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
            self._requests[split] = self._make_requests(split == "train")
        return self._requests[split]

    def _make_requests(self, is_train: bool) -> Requests:
        c = self.cfg
        rng = np.random.default_rng([c.seed, 1 if is_train else 2])
        n = c.train_requests if is_train else c.test_requests
        n_cand = c.train_candidates if is_train else c.test_candidates
        lo, hi = (0.0, c.test_start_frac * c.horizon_s) if is_train else (c.test_start_frac * c.horizon_s, c.horizon_s)
        users = rng.integers(0, c.n_users, n)
        times = np.sort(rng.uniform(lo, hi, n))
        items = np.stack([self.retrieve(rng, u, t, n_cand) for u, t in zip(users, times)])
        probs = self.click_prob(users, items, times)
        labels = (rng.random(items.shape) < probs).astype(np.int8)
        return Requests(users, times, items, probs, labels)

    def retrieve(self, rng: np.random.Generator, user: int, t: float, n: int) -> np.ndarray:
        """n distinct candidates for a request: half by relevance to the user, half by popularity at t (Gumbel top-k)."""
        relevant = rng.choice(self.relevant[user], n // 2, replace=False)
        scores = self.log_pop[self.epoch(t)] + rng.gumbel(size=self.cfg.n_items)
        scores[relevant] = -np.inf
        popular = np.sort(np.argpartition(-scores, n - n // 2)[: n - n // 2])
        return np.concatenate([relevant, popular])


def _sample(rng: np.random.Generator, logits: np.ndarray, n: int) -> np.ndarray:
    p = _exp(logits - logits.max())
    cdf = np.cumsum(p)
    return np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), len(p) - 1)
