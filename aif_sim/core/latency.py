"""Service-time distributions: vectorised samplers in milliseconds built from scenario specs.

Every sampler takes `work`, the amount of work of one service: the candidates scored (per
request or summed over a batch) or the batch size. Only `profile` samplers depend on it: a
profile operator measured by candidates reads candidates, one measured by batch reads the
batch size (1 outside batching stages).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from statistics import NormalDist
from typing import Literal, Protocol

import numpy as np

from aif_sim.core.datafiles import read_csv_column
from aif_sim.errors import InputError
from aif_sim.scenario.schema import (
    ConstantLatency,
    EmpiricalLatency,
    ExponentialLatency,
    GammaLatency,
    LatencySpec,
    LognormalLatency,
    ProfileLatency,
)

Z99 = NormalDist().inv_cdf(0.99)
MEMO = 4096  # scalar works a profile remembers its median and sigma at


class Sampler(Protocol):
    """Draws service times in milliseconds."""

    work_key: Literal["candidates", "batch"] | None

    def sample(self, rng: np.random.Generator, size: int, work: float | np.ndarray) -> np.ndarray:
        """`size` service times (ms) of a service of `work` units."""
        ...


@dataclass(frozen=True)
class Constant:
    ms: float
    work_key: None = None

    def sample(self, rng: np.random.Generator, size: int, work: float | np.ndarray) -> np.ndarray:
        return np.full(size, self.ms)


@dataclass(frozen=True)
class Exponential:
    mean_ms: float
    work_key: None = None

    def sample(self, rng: np.random.Generator, size: int, work: float | np.ndarray) -> np.ndarray:
        return rng.exponential(self.mean_ms, size)


@dataclass(frozen=True)
class Lognormal:
    median_ms: float
    sigma: float
    work_key: None = None

    @classmethod
    def from_quantiles(cls, median_ms: float, p99_ms: float) -> Lognormal:
        return cls(median_ms, math.log(p99_ms / median_ms) / Z99)

    def sample(self, rng: np.random.Generator, size: int, work: float | np.ndarray) -> np.ndarray:
        return self.median_ms * np.exp(self.sigma * rng.standard_normal(size))


@dataclass(frozen=True)
class Gamma:
    mean_ms: float
    cv: float
    work_key: None = None

    def sample(self, rng: np.random.Generator, size: int, work: float | np.ndarray) -> np.ndarray:
        shape = 1.0 / self.cv**2
        return rng.gamma(shape, self.mean_ms / shape, size)


@dataclass(frozen=True)
class Empirical:
    samples_ms: np.ndarray
    work_key: None = None

    def sample(self, rng: np.random.Generator, size: int, work: float | np.ndarray) -> np.ndarray:
        return self.samples_ms[rng.integers(0, len(self.samples_ms), size)]


@dataclass(frozen=True)
class Profile:
    """A measured operator: median and p99 at grid points, interpolated log-log; lognormal spread."""

    work_key: Literal["candidates", "batch"]
    grid: np.ndarray
    median_ms: np.ndarray
    p99_ms: np.ndarray
    scale: float = 1.0
    # median and sigma at scalar works already seen (a refresh worker or batch draws one at a time): at most MEMO
    _memo: dict[float, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, compare=False, repr=False)

    def _at(self, work: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Median (ms) and lognormal sigma at each `work`."""
        x = np.log(np.maximum(work, 1.0))
        lg = np.log(self.grid)
        median = _interp_loglog(x, lg, np.log(self.median_ms))
        p99 = np.maximum(_interp_loglog(x, lg, np.log(self.p99_ms)), median)
        return self.scale * median, np.log(p99 / median) / Z99

    def sample(self, rng: np.random.Generator, size: int, work: float | np.ndarray) -> np.ndarray:
        if isinstance(work, float | int):
            at = self._memo.get(work)
            if at is None:
                at = self._at(work)
                if len(self._memo) < MEMO:
                    self._memo[work] = at
            median, sigma = at
        else:
            median, sigma = self._at(work)
        return median * np.exp(sigma * rng.standard_normal(size))


def _interp_loglog(x: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolation in log-log space, extrapolating the end segments."""
    if len(xs) == 1:
        return np.exp(np.full_like(x, ys[0], dtype=float))
    i = np.clip(np.searchsorted(xs, x) - 1, 0, len(xs) - 2)
    slope = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
    return np.exp(ys[i] + slope * (x - xs[i]))


def build_sampler(spec: LatencySpec, where: str) -> Sampler:
    """Sampler for a validated latency spec; `where` ('file: field') prefixes errors in data files."""
    if isinstance(spec, ConstantLatency):
        return Constant(spec.ms)
    if isinstance(spec, ExponentialLatency):
        return Exponential(spec.mean_ms)
    if isinstance(spec, LognormalLatency):
        return Lognormal.from_quantiles(spec.median_ms, spec.p99_ms)
    if isinstance(spec, GammaLatency):
        return Gamma(spec.mean_ms, spec.cv)
    if isinstance(spec, EmpiricalLatency):
        return Empirical(read_csv_column(spec.path, spec.column, f"{where}.path", minimum=0.0))
    if isinstance(spec, ProfileLatency):
        return _load_profile(spec.path, spec.op, spec.scale, where)
    raise TypeError(f"unknown latency spec {spec!r}")


@lru_cache(maxsize=32)
def read_profile(path: Path) -> dict:
    """A calibration profile JSON (read once per path)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: expected a calibration profile JSON ({exc})") from None


def _load_profile(path: Path, op: str, scale: float, where: str) -> Profile:
    ops = read_profile(path).get("ops")
    if not isinstance(ops, dict) or op not in ops:
        known = ", ".join(sorted(ops)) if isinstance(ops, dict) else "none"
        raise InputError(f"{where}.op: profile {path} has no operator {op!r} (it has: {known})")
    points = ops[op]
    try:
        key = "candidates" if "candidates" in points[0] else "batch"
        grid = np.array([p[key] for p in points], dtype=float)
        median = np.array([p["median_ms"] for p in points], dtype=float)
        p99 = np.array([p["p99_ms"] for p in points], dtype=float)
    except (KeyError, IndexError, TypeError) as exc:
        raise InputError(f"{path}: ops.{op}: expected a list of {{candidates|batch, median_ms, p99_ms}} ({exc})") from None
    if (grid <= 0).any() or (median <= 0).any() or (np.diff(grid) <= 0).any():
        raise InputError(f"{path}: ops.{op}: expected ascending positive sizes and positive times")
    return Profile(key, grid, median, np.maximum(p99, median), scale)
