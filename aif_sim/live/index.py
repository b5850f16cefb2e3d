"""The live engine's in-memory nearline index: fixed-shape numpy records by integer key in one preallocated array.

A nearline store's keys are its entities' ids 0..count-1, so the index is an array of `count` records and a mask
of which are stored: no Python object per entity (aiocache's in-memory backend keeps a key string and a bytes value
per entity, which at 10^6 items is most of the fill time and several times the vectors' own bytes). Its memory is
`count x record bytes + count` bytes, fixed when it is opened. It offers the calls of `live.storage.VectorStorage`
that the live engine makes of a vector store, as coroutines like theirs (an in-memory read never suspends).
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import numpy as np
from numpy.typing import DTypeLike

from aif_sim.live.storage import VectorStorage, open_storage


class ArrayIndex:
    """Records of entities 0..count-1 in one numpy array, with a mask of the stored ones."""

    backend = "memory"

    def __init__(self, namespace: str, dtype: DTypeLike, shape: tuple[int, ...], count: int) -> None:
        self.namespace = namespace
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(n) for n in shape)
        self.record_nbytes = self.dtype.itemsize * prod(self.shape)
        self._records = np.zeros((count, *self.shape), self.dtype)
        self._stored = np.zeros(count, bool)

    @property
    def nbytes(self) -> int:
        """Bytes the index holds (records and mask), whatever is stored."""
        return self._records.nbytes + self._stored.nbytes

    async def get_many(self, keys: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Records of `keys` ([len(keys), *shape], zero rows where missing) and which were found."""
        ids = _ids(keys, len(self._stored))
        return self._records[ids], self._stored[ids]

    async def set_many(self, keys: Sequence[int] | np.ndarray, records: np.ndarray) -> None:
        """Store `records[i]` under `keys[i]`."""
        ids = _ids(keys, len(self._stored))
        arr = np.asarray(records)
        if arr.shape != (len(ids), *self.shape):
            raise ValueError(f"records of shape {arr.shape} where {(len(ids), *self.shape)} is expected")
        self._records[ids] = arr.astype(self.dtype, casting="same_kind", copy=False)
        self._stored[ids] = True

    async def get(self, key: int) -> np.ndarray | None:
        """The record of `key` (a copy), or None when it is not stored."""
        ids = _ids([key], len(self._stored))
        return self._records[ids[0]].copy() if self._stored[ids[0]] else None

    async def set(self, key: int, record: np.ndarray) -> None:
        """Store `record` under `key`."""
        await self.set_many([key], np.asarray(record)[None])

    async def delete_many(self, keys: Sequence[int] | np.ndarray) -> None:
        """Remove `keys` (missing ones are ignored)."""
        self._stored[_ids(keys, len(self._stored))] = False

    async def clear(self) -> None:
        """Remove every record."""
        self._stored[:] = False

    async def close(self) -> None:
        """Release the arrays."""
        self._records = np.zeros((0, *self.shape), self.dtype)
        self._stored = np.zeros(0, bool)


def _ids(keys: Sequence[int] | np.ndarray, count: int) -> np.ndarray:
    """The keys as an index array, each an entity id in [0, count)."""
    ids = np.asarray(keys)
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise TypeError(f"keys must be a sequence of integers, got {ids.dtype} of shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= count):
        raise KeyError(f"keys must be entity ids in [0, {count}), got [{ids.min()}, {ids.max()}]")
    return ids.astype(np.intp, copy=False)


VectorStore = VectorStorage | ArrayIndex  # where a nearline store's vectors live


def open_index(backend: str, redis_url: str | None, namespace: str, dtype: np.dtype, count: int) -> VectorStore:
    """The storage of a nearline store of `count` entities: an `ArrayIndex` in memory, else the Redis storage."""
    if backend == "memory":
        return ArrayIndex(namespace, dtype.base, dtype.shape, count)
    return open_storage(backend, redis_url, namespace, dtype.base, dtype.shape)
