"""Vector storage of the live engine: fixed-shape numpy records by integer key, on aiocache (in memory or in Redis).

A record is kept as its raw bytes (``ndarray.tobytes()``, read back with ``np.frombuffer``): no pickle, no JSON.
Batched reads and writes are one round trip each (aiocache ``multi_get``/``multi_set``: Redis MGET/MSET).
Keys are the decimal strings of the integers, prefixed by aiocache with the storage's namespace (``"<namespace>:<key>"``),
so runs and pipelines sharing a Redis server do not collide.
The in-memory backend has no capacity bound of its own: capacity is the project's cache policy's business.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from math import prod
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import redis.asyncio as redis_asyncio
from aiocache import SimpleMemoryCache
from aiocache.backends.redis import RedisBackend, RedisCache
from aiocache.base import BaseCache
from aiocache.serializers import NullSerializer
from numpy.typing import DTypeLike
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

BACKENDS = ("memory", "redis")
_NAMESPACE = re.compile(r"[A-Za-z0-9_./-]+")  # no ':' (the key separator) and no glob characters (clear() matches "<ns>:*")


class BytesSerializer(NullSerializer):
    """Passes values through unchanged and asks the backend for undecoded bytes (``encoding=None``)."""

    DEFAULT_ENCODING = None


class VectorStorage:
    """Fixed-shape numpy records by integer key in one aiocache namespace (memory or Redis)."""

    def __init__(self, cache: BaseCache, dtype: DTypeLike, shape: tuple[int, ...]) -> None:
        """Wrap `cache`, whose serializer must pass bytes through (`BytesSerializer`) and whose namespace is set."""
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(n) for n in shape)
        self.record_nbytes = self.dtype.itemsize * prod(self.shape)
        if self.dtype.hasobject:
            raise ValueError(f"dtype {self.dtype} holds Python objects: records are stored as raw bytes")
        if self.record_nbytes == 0:
            raise ValueError(f"records of dtype {self.dtype} and shape {self.shape} have no bytes")
        serializer = cache.serializer
        if not isinstance(serializer, NullSerializer) or serializer.encoding is not None:
            raise ValueError("the cache's serializer must pass bytes through undecoded: use BytesSerializer()")
        if not isinstance(cache.namespace, str) or not _NAMESPACE.fullmatch(cache.namespace):
            # Without a namespace aiocache's clear() empties the whole cache (FLUSHDB on Redis).
            raise ValueError(f"namespace {cache.namespace!r} must be non-empty and of letters, digits and '_.-/'")
        self._cache = cache
        self._redis = isinstance(cache, RedisBackend)

    @property
    def namespace(self) -> str:
        """The prefix of this storage's keys."""
        return self._cache.namespace

    @property
    def backend(self) -> str:
        """The backend: "redis" or "memory"."""
        return "redis" if self._redis else "memory"

    async def get_many(self, keys: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Records of `keys` ([len(keys), *shape], zero rows where missing) and which were found; one round trip."""
        names = _key_names(keys)
        n = len(names)
        out_shape = (n, *self.shape)
        if n == 0:
            return np.zeros(out_shape, self.dtype), np.zeros(0, bool)
        values = await self._cache.multi_get(names)
        found = np.fromiter((v is not None for v in values), dtype=bool, count=n)
        if found.all():
            self._check_lengths(values)
            return np.frombuffer(bytearray().join(values), dtype=self.dtype).reshape(out_shape), found
        present = [v for v in values if v is not None]
        records = np.zeros(out_shape, self.dtype)
        if present:
            self._check_lengths(present)
            records[found] = np.frombuffer(b"".join(present), dtype=self.dtype).reshape((len(present), *self.shape))
        return records, found

    async def set_many(self, keys: Sequence[int], records: np.ndarray) -> None:
        """Store `records[i]` under `keys[i]`; one round trip."""
        names = _key_names(keys)
        buf = self._as_records(records, (len(names), *self.shape)).tobytes()
        if not names:
            return
        nb = self.record_nbytes
        await self._cache.multi_set([(name, buf[i * nb : (i + 1) * nb]) for i, name in enumerate(names)])

    async def get(self, key: int) -> np.ndarray | None:
        """The record of `key`, or None when it is not stored."""
        value = await self._cache.get(_key_names([key])[0])
        return None if value is None else self._record(value)

    async def set(self, key: int, record: np.ndarray) -> None:
        """Store `record` under `key`."""
        await self._cache.set(_key_names([key])[0], self._as_records(record, self.shape).tobytes())

    async def delete_many(self, keys: Sequence[int]) -> None:
        """Remove `keys` (missing ones are ignored)."""
        names = _key_names(keys)
        if not names:
            return
        if self._redis:
            # aiocache has no multi-delete: one DEL of all keys through aiocache's raw() (redis.asyncio's delete(*names)).
            namespace = self._cache.namespace
            await self._cache.raw("delete", *(self._cache.build_key(name, namespace=namespace) for name in names))
        else:
            for name in names:  # a dict in this process: no round trips to save
                await self._cache.delete(name)

    async def clear(self) -> None:
        """Remove every record of this namespace, and nothing else."""
        # aiocache's clear() without an explicit namespace ignores the cache's own and empties everything.
        await self._cache.clear(namespace=self._cache.namespace)

    async def close(self) -> None:
        """Release the backend's connections."""
        if self._redis:
            # aiocache 0.12.3 closes with redis-py's close(), deprecated since redis 5.0.1: call aclose() directly.
            await self._cache.client.aclose()
        else:
            await self._cache.close()

    async def __aenter__(self) -> VectorStorage:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _record(self, value: bytes) -> np.ndarray:
        """One stored value as a (writable) record."""
        self._check_lengths((value,))
        return np.frombuffer(value, dtype=self.dtype).reshape(self.shape).copy()

    def _check_lengths(self, values: Sequence[bytes]) -> None:
        lengths = set(map(len, values))
        if lengths != {self.record_nbytes}:
            bad = ", ".join(map(str, sorted(lengths - {self.record_nbytes})))
            raise ValueError(f"namespace {self.namespace!r} holds values of {bad} bytes where records have {self.record_nbytes}")

    def _as_records(self, records: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        arr = np.asarray(records)
        if arr.dtype != self.dtype:
            arr = arr.astype(self.dtype, casting="same_kind")
        if arr.shape != shape:
            raise ValueError(f"records of shape {arr.shape} where {shape} is expected")
        return arr


def _namespaced_key(key: str, namespace: str | None = None) -> str:
    """aiocache key builder: "<namespace>:<key>" on every backend (aiocache's own is costlier, and joins without ':' in memory)."""
    return f"{namespace}:{key}"


def _key_names(keys: Sequence[int]) -> list[str]:
    """The cache keys (decimal strings) of integer keys."""
    arr = np.asarray(keys)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise TypeError(f"keys must be a sequence of integers, got {arr.dtype} of shape {arr.shape}")
    return list(map(str, arr.tolist()))


def _redis_options(url: str) -> dict[str, Any]:
    """Host, port, db, credentials and TLS of a ``redis://[user:password@]host[:port][/db]`` (or ``rediss://``) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"Redis URL {url!r}: the scheme must be redis:// or rediss://")
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise ValueError(f"Redis URL {url!r}: the path must be a database number")
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 6379,
        "db": int(db),
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password is not None else None,
        "ssl": parts.scheme == "rediss",
    }


def open_storage(
    backend: str,
    redis_url: str | None,
    namespace: str,
    dtype: DTypeLike,
    shape: tuple[int, ...],
    *,
    timeout: float | None = 5.0,
) -> VectorStorage:
    """A storage on `backend`: "memory" (aiocache SimpleMemoryCache, private to this storage) or "redis" (at `redis_url`).

    `timeout` bounds each Redis operation (seconds, None for none); memory operations are not timed.
    """
    if backend == "memory":
        return VectorStorage(
            SimpleMemoryCache(serializer=BytesSerializer(), namespace=namespace, key_builder=_namespaced_key, timeout=None), dtype, shape
        )
    if backend != "redis":
        raise ValueError(f"unknown storage backend {backend!r}: one of {BACKENDS}")
    if not redis_url:
        raise ValueError("the redis storage backend needs a Redis URL (redis://host:port/db)")
    options = _redis_options(redis_url)
    username = options.pop("username")
    cache = RedisCache(
        serializer=BytesSerializer(),
        namespace=namespace,
        key_builder=_namespaced_key,
        timeout=timeout,
        endpoint=options.pop("host"),
        create_connection_timeout=timeout,
        connection_pool_kwargs={"username": username} if username else None,
        **options,
    )
    return VectorStorage(cache, dtype, shape)


async def redis_reachable(url: str, timeout: float = 1.0) -> str | None:
    """None when a Redis server answers PING at `url`, else a one-line reason."""
    try:
        # One try: redis-py 8 retries a refused connection 10 times with backoff by default (seconds).
        client = redis_asyncio.Redis(
            **_redis_options(url), socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
    except ValueError as exc:
        return str(exc)
    try:
        await client.ping()
    except Exception as exc:
        return " ".join(f"{type(exc).__name__}: {exc}".split())
    finally:
        await client.aclose()
    return None
