"""A real, timestamped interaction log as the models' world: requests, item and user features at any moment.

Input (`--data PATH`, CSV or Parquet): one row per interaction, in time order, with columns
- `user`, `item`: ids (any integers or strings),
- `timestamp`: seconds (any origin), non-decreasing down the file,
- `label`: 1 (a positive: clicked, bought, rated highly) or 0,
- optional item features `category`, `brand`, `price` (non-negative integers, one value per item: its first), and
  optional user features `age`, `gender`, `city`, `activity` (non-negative integers below 6, 2, 4, 4).
`--data movielens-100k` reads MovieLens 100K (943 users, 1,682 films, 100,000 ratings from 1997-98) in place from
the `neighbors` package (the optional extra `aif-sim[movielens]`): a rating of 4 or 5 is a positive.

Features at time t come from the log strictly before t: an item's popularity bucket is the log2 of its
interactions in the 30 days before t (dynamic); the user's short sequence and long history are their latest
interactions before t; an item's multi-modal embedding is a truncated SVD of the item-by-user interactions of
the training period (static: no content in the log; items unseen then get zeros). Missing optional features are
one bucket for everyone.

Requests (the sampled-negative protocol of He et al., "Neural Collaborative Filtering", WWW 2017): every positive
is a request at its time whose candidates are its item and `candidates - 1` other items drawn without replacement
in proportion to their popularity over the 30 days before (plus one), labelled 0. The first `train_share` of the
log's time span trains, the rest tests; `train_requests` and `test_requests` of them are drawn at random (seeded).
There are no true click probabilities: the oracle metrics are absent.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix
from scipy.sparse.linalg import svds

from aif_sim.errors import InputError
from aif_sim.model.world import PROFILE_SIZES, ItemFeatures, Requests, UserFeatures, _Timeline

MOVIELENS_100K = "movielens-100k"
REQUIRED = ("user", "item", "timestamp", "label")
ITEM_FEATURES = ("category", "brand", "price")
USER_FEATURES = ("age", "gender", "city", "activity")  # the model's profile fields, in PROFILE_SIZES order
POPULARITY_WINDOW_S = 30 * 86400.0


@dataclass(frozen=True)
class LogConfig:
    """An interaction log and how it is cut into requests; the vocabulary sizes are filled in from the data."""

    data: str  # a path, or MOVIELENS_100K
    candidates: int = 100
    train_share: float = 0.8
    train_requests: int = 5000
    test_requests: int = 1000
    short_len: int = 50
    long_len: int = 200
    mm_dim: int = 64
    n_pop_buckets: int = 10
    seed: int = 0
    n_categories: int = 1
    n_brands: int = 1
    n_price_buckets: int = 1
    n_users: int = 0
    n_items: int = 0
    train_end_s: float = 0.0
    test_end_s: float = 0.0

    @property
    def horizon_s(self) -> float:
        """The log's last moment: nothing is known after it."""
        return self.test_end_s

    def to_dict(self) -> dict:
        return asdict(self)


def read_log(data: str) -> pd.DataFrame:
    """The interaction log of `data` (a CSV or Parquet path, or MOVIELENS_100K), validated: InputError naming the
    file and column when a required column is missing, a value is not a number, or timestamps go back in time."""
    if data == MOVIELENS_100K:
        return _movielens()
    path = Path(data)
    if not path.is_file():
        raise InputError(f"--data: {data}: file not found (expected a CSV or Parquet interaction log, or {MOVIELENS_100K})")
    try:
        frame = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"{path}: not a readable CSV or Parquet file ({type(exc).__name__})") from exc
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: column {missing[0]}: missing (expected columns {', '.join(REQUIRED)}; see `train --help`)")
    for column in ("timestamp", "label", *(c for c in ITEM_FEATURES + USER_FEATURES if c in frame.columns)):
        if not pd.api.types.is_numeric_dtype(frame[column]) or frame[column].isna().any():
            raise InputError(f"{path}: column {column}: expected numbers in every row")
    times = frame["timestamp"].to_numpy(np.float64)
    back = np.flatnonzero(np.diff(times) < 0)
    if len(back):
        raise InputError(f"{path}: column timestamp: data row {back[0] + 2} is earlier than the row before it (expected time order)")
    if not frame["label"].isin([0, 1]).all():
        raise InputError(f"{path}: column label: expected 0 or 1")
    for column, size in zip(USER_FEATURES, PROFILE_SIZES):
        if column in frame.columns and not frame[column].between(0, size - 1).all():
            raise InputError(f"{path}: column {column}: expected integers from 0 to {size - 1}")
    for column in ITEM_FEATURES:
        if column in frame.columns and (frame[column] < 0).any():
            raise InputError(f"{path}: column {column}: expected non-negative integers")
    return frame


def _movielens() -> pd.DataFrame:
    """MovieLens 100K from the `neighbors` package's copy, read in place; a rating of 4 or 5 is a positive."""
    spec = importlib.util.find_spec("neighbors")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"--data: {MOVIELENS_100K}: needs the optional extra: pip install 'aif-sim[movielens]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "movielens100k.csv"
    if not path.is_file():
        raise InputError(f"--data: {MOVIELENS_100K}: {path} not found in the installed neighbors package")
    raw = pd.read_csv(path)
    frame = pd.DataFrame(
        {
            "user": raw["User"],
            "item": raw["Item"],
            "timestamp": raw["Timestamp"].astype(np.float64),
            "label": (raw["Rating"] >= 4).astype(int),
        }
    )
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)


class LogWorld:
    """The log as the models' world (the interface of `world.World` that training and evaluation use)."""

    def __init__(self, cfg: LogConfig, frame: pd.DataFrame | None = None) -> None:
        frame = read_log(cfg.data) if frame is None else frame
        users, self.user_ids = pd.factorize(frame["user"], sort=True)
        items, self.item_ids = pd.factorize(frame["item"], sort=True)
        times = frame["timestamp"].to_numpy(np.float64)
        times = times - times[0]  # seconds from the first interaction
        n_users, n_items = len(self.user_ids), len(self.item_ids)
        if n_items <= cfg.candidates:
            raise InputError(f"--data: {cfg.data}: {n_items} items; a request takes {cfg.candidates} candidates, expected more items")
        train_end = float(times[0] + cfg.train_share * (times[-1] - times[0]))
        sizes = {
            field: int(frame[column].max()) + 1 if column in frame.columns else 1
            for field, column in (("n_categories", "category"), ("n_brands", "brand"), ("n_price_buckets", "price"))
        }
        self.cfg = LogConfig(
            **{**cfg.to_dict(), **sizes, "n_users": n_users, "n_items": n_items, "train_end_s": train_end, "test_end_s": float(times[-1])}
        )
        self.labels = frame["label"].to_numpy(np.int8)
        self.interactions = _Timeline(items.astype(np.int64), times, n_items)  # for popularity
        self.behaviours = _Timeline(users.astype(np.int64), times, n_users)  # the users' histories
        order = np.lexsort((times, users))
        self.history_items = items[order].astype(np.int64)
        pad = n_items  # the padding item: features of bucket 0 and a zero embedding
        first = np.unique(items, return_index=True)[1]
        self.static = {
            c: np.append(frame[c].to_numpy(np.int64)[first], 0) if c in frame.columns else np.zeros(n_items + 1, np.int64)
            for c in ITEM_FEATURES
        }
        first_user = np.unique(users, return_index=True)[1]
        self.profile = np.stack(
            [frame[c].to_numpy(np.int64)[first_user] if c in frame.columns else np.zeros(n_users, np.int64) for c in USER_FEATURES], axis=1
        )
        self.mm_table = np.zeros((n_items + 1, cfg.mm_dim), np.float32)
        trained = times < train_end
        self.mm_table[:pad] = _svd_embedding(items[trained], users[trained], n_items, n_users, cfg.mm_dim)
        self._positives = (users[self.labels == 1].astype(np.int64), items[self.labels == 1].astype(np.int64), times[self.labels == 1])
        self._requests: dict[str, Requests] = {}

    # features
    def popularity(self, items: np.ndarray, t: np.ndarray | float) -> np.ndarray:
        """Interactions of each item in the POPULARITY_WINDOW_S before t (strictly before t)."""
        items = np.asarray(items)
        before = np.nextafter(np.asarray(t, dtype=np.float64), -np.inf)
        count = self.interactions.count(np.minimum(items, self.cfg.n_items - 1), before)
        count = count - self.interactions.count(np.minimum(items, self.cfg.n_items - 1), before - POPULARITY_WINDOW_S)
        return np.where(items >= self.cfg.n_items, 0, count)

    def item_features(self, items: np.ndarray, t: np.ndarray | float) -> ItemFeatures:
        """Features of items (any shape; the padding item n_items included) at time(s) t."""
        items = np.asarray(items)
        pop = np.minimum(np.log2(1 + self.popularity(items, t)).astype(np.int64), self.cfg.n_pop_buckets - 1)
        s = self.static
        return ItemFeatures(s["category"][items], s["brand"][items], s["price"][items], pop, self.mm_table[items])

    def changed_between(self, items: np.ndarray, t0: np.ndarray | float, t1: np.ndarray | float) -> np.ndarray:
        """Whether each item's features (its popularity bucket: the only dynamic one) differ between t0 and t1."""
        return self.item_features(items, t0).pop != self.item_features(items, t1).pop

    def _history(self, users: np.ndarray, t: np.ndarray | float, length: int) -> np.ndarray:
        """The users' latest `length` interacted items strictly before t [B, length], oldest first, padded in front."""
        users = np.asarray(users)
        before = np.nextafter(np.broadcast_to(np.asarray(t, dtype=np.float64), users.shape), -np.inf)
        end = self.behaviours.first[users] + self.behaviours.count(users, before)
        index = end[:, None] - length + np.arange(length)
        valid = index >= self.behaviours.first[users][:, None]
        return np.where(valid, self.history_items[np.maximum(index, 0)], self.cfg.n_items)

    def user_features(self, users: np.ndarray, t: np.ndarray | float) -> UserFeatures:
        """Features of users [B] at time(s) t: profile, the latest short_len items and the latest long_len embeddings."""
        users = np.asarray(users)
        short = self._history(users, t, self.cfg.short_len)
        return UserFeatures(
            self.profile[users],
            self.item_features(short, t if np.ndim(t) == 0 else np.asarray(t)[:, None]),
            self.mm_table[self._history(users, t, self.cfg.long_len)],
        )

    # requests
    def requests(self, split: str) -> Requests:
        """The train or test requests (deterministic in the config's seed)."""
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}")
        if split not in self._requests:
            c = self.cfg
            lo, hi, n = (0.0, c.train_end_s, c.train_requests) if split == "train" else (c.train_end_s, np.inf, c.test_requests)
            self._requests[split] = self.requests_between(lo, hi, n, c.candidates, stream=1 if split == "train" else 2)
        return self._requests[split]

    def requests_between(self, lo: float, hi: float, n: int, n_candidates: int, stream: int = 0) -> Requests:
        """At most n requests of the positives in [lo, hi) (drawn at random, then in time order), with n_candidates
        candidates each: the positive first, then negatives by popularity over the month before."""
        users, items, times = self._positives
        inside = np.flatnonzero((times >= lo) & (times < hi))
        rng = np.random.default_rng([self.cfg.seed, 100 + stream, int(round(lo))])
        if len(inside) > n:
            inside = np.sort(rng.choice(inside, n, replace=False))
        candidates = np.empty((len(inside), n_candidates), np.int64)
        everything = np.arange(self.cfg.n_items)
        for row, i in enumerate(inside):
            weight = self.popularity(everything, times[i]) + 1.0
            weight[items[i]] = 0.0
            keys = np.log(rng.random(self.cfg.n_items))
            keys = np.divide(
                keys, weight, out=np.full_like(keys, -np.inf), where=weight > 0
            )  # weighted, without replacement (Efraimidis-Spirakis)
            candidates[row, 0] = items[i]
            candidates[row, 1:] = np.sort(np.argpartition(-keys, n_candidates - 1)[: n_candidates - 1])
        labels = np.zeros(candidates.shape, np.int8)
        labels[:, 0] = 1
        return Requests(users[inside], times[inside], candidates, np.full(candidates.shape, np.nan), labels)


def _svd_embedding(items: np.ndarray, users: np.ndarray, n_items: int, n_users: int, dim: int) -> np.ndarray:
    """Unit-length item embeddings [n_items, dim]: the leading singular directions of the item-by-user interaction
    counts (log-scaled), items with no interaction zero; dimensions beyond the matrix's rank zero."""
    counts = csr_matrix((np.ones(len(items)), (items, users)), shape=(n_items, n_users))
    counts.data = np.log1p(counts.data)
    k = min(dim, min(counts.shape) - 1)
    u, s, _ = svds(counts, k=k, v0=np.ones(n_users) / np.sqrt(n_users))
    embedding = np.zeros((n_items, dim))
    embedding[:, :k] = u * s
    norm = np.linalg.norm(embedding, axis=1, keepdims=True)
    return (embedding / np.where(norm > 0, norm, 1.0)).astype(np.float32)
