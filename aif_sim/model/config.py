"""Hyper-parameters shared by the AIF model and the baselines."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

LSHMode = Literal["bit1", "bit2", "dense"]


@dataclass(frozen=True)
class ModelConfig:
    """Vocabulary sizes come from the world; the rest are model choices."""

    n_categories: int
    n_brands: int
    n_price_buckets: int
    n_pop_buckets: int
    profile_sizes: tuple[int, ...]
    mm_dim: int = 64
    dim: int = 32
    n_bridges: int = 8
    lsh_mode: LSHMode = "bit1"
    lsh_planes: int = 64  # random hyperplanes; bit1 codes take 1 bit per plane, bit2 codes 2
    lsh_radii: tuple[float, ...] = (0.10, 0.15, 0.20, 0.25)
    rtp_hidden: int = 64
    lsh_seed: int = 1234

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        d["profile_sizes"] = tuple(d["profile_sizes"])
        d["lsh_radii"] = tuple(d["lsh_radii"])
        return cls(**d)
