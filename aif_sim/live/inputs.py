"""Synthetic features for the live engine's model calls.

The live engine measures time, not quality (shadow scoring in the DES measures quality), so its inputs
only need the right shapes and realistic variety: item features come from a table of at most 65,536 rows
(item `i` reads row `i % rows`), a user's profile and behaviour sequences (item ids) are drawn from a
generator seeded by the run's seed and the user, so every engine and run sees the same user.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aif_sim.model.world import PROFILE_SIZES, WorldConfig

TABLE_ROWS = 65_536


@dataclass(frozen=True)
class ItemRows:
    """Item features of some items (arrays with the items' leading shape)."""

    category: np.ndarray
    brand: np.ndarray
    price: np.ndarray
    pop: np.ndarray
    mm: np.ndarray


class FeatureTable:
    """Item features for `items` items and user features by user id, of the world's vocabularies and lengths."""

    def __init__(self, world: WorldConfig, items: int, seed: int) -> None:
        self.world, self.seed = world, seed
        self.rows = min(items, TABLE_ROWS)
        rng = np.random.default_rng([seed, 0x1F])
        sizes = (world.n_categories, world.n_brands, world.n_price_buckets, world.n_pop_buckets)
        self.columns = [rng.integers(0, n, self.rows) for n in sizes]
        mm = rng.standard_normal((self.rows, world.mm_dim)).astype(np.float32)
        self.mm = mm / np.linalg.norm(mm, axis=1, keepdims=True)

    def items(self, ids: np.ndarray) -> ItemRows:
        """Features of the items `ids` (any shape)."""
        rows = np.asarray(ids) % self.rows
        return ItemRows(*(column[rows] for column in self.columns), self.mm[rows])

    def user(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        """The user's profile ids [4] and short behaviour sequence (item ids) [short_len]."""
        rng = np.random.default_rng([self.seed, 0x2F, user])
        profile = np.array([rng.integers(0, n) for n in PROFILE_SIZES])
        return profile, rng.integers(0, self.rows, self.world.short_len)

    def long_behaviour(self, user: int) -> np.ndarray:
        """The user's long-term behaviour sequence (item ids, int32) [long_len]: what the SIM feature cache holds."""
        rng = np.random.default_rng([self.seed, 0x3F, user])
        return rng.integers(0, self.rows, self.world.long_len, dtype=np.int32)
