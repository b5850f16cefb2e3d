"""Deterministic sampling of requests by id, shared by the requests file and shadow scoring."""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def sampled(request_ids: np.ndarray, fraction: float) -> np.ndarray:
    """Which of these requests a `fraction` keeps: the same requests in every pipeline and engine, and the
    requests kept at a fraction are kept at every larger one."""
    if fraction >= 1.0:
        return np.ones(len(request_ids), dtype=bool)
    hashed = np.asarray(request_ids, dtype=np.uint64) * _GOLDEN  # wraps modulo 2^64
    return hashed < np.uint64(int(fraction * 2.0**64))
