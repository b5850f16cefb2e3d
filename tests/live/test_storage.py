"""Vector storage on aiocache: exact raw-bytes round trips, missing keys, deletes and namespaces, on memory and on Redis.

The Redis cases need a server at $AIF_SIM_REDIS_URL (.ci/run starts one) and are skipped without it.
Each test runs its coroutine with asyncio.run: the storages are opened, cleared and closed inside that one event loop.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from math import prod

import numpy as np
import pytest
import redis.asyncio as redis_asyncio
from redis.asyncio.connection import AbstractConnection

from aif_sim.live.storage import BACKENDS, VectorStorage, open_storage, redis_reachable

STRUCT = np.dtype([("id", "<i8"), ("score", "<f4"), ("tag", "u1", (3,))])
RECORD_KINDS = {
    "float32x64": (np.dtype(np.float32), (64,)),
    "uint8x3x5": (np.dtype(np.uint8), (3, 5)),
    "struct4": (STRUCT, (4,)),
    "float64_scalar": (np.dtype(np.float64), ()),
}


def _records(dtype: np.dtype, shape: tuple[int, ...], n: int, seed: int) -> np.ndarray:
    """n random records of any dtype: random bytes, so every bit pattern (NaN payloads included) must come back."""
    raw = np.random.default_rng(seed).integers(0, 256, size=n * dtype.itemsize * prod(shape), dtype=np.uint8)
    return raw.view(dtype).reshape((n, *shape))


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """(backend, Redis URL or None); the redis case is skipped without a server."""
    return request.param, request.getfixturevalue("redis_url") if request.param == "redis" else None


Body = Callable[..., Awaitable[None]]


@pytest.fixture
def run(backend: tuple[str, str | None]) -> Callable[..., None]:
    """run(body, (suffix, dtype, shape), ...): open one storage per spec in a namespace unique to the test, await body(*storages), clear and close them."""
    name, url = backend
    prefix = f"test-{uuid.uuid4().hex[:12]}"

    def _run(body: Body, *specs: tuple[str, np.dtype, tuple[int, ...]]) -> None:
        async def main() -> None:
            stores = [open_storage(name, url, prefix + suffix, dtype, shape) for suffix, dtype, shape in specs]
            try:
                await body(*stores)
            finally:
                for store in stores:
                    await store.clear()
                    await store.close()

        asyncio.run(main())

    return _run


@pytest.mark.parametrize("kind", RECORD_KINDS)
def test_set_many_get_many_round_trip_is_exact(run, kind: str) -> None:
    dtype, shape = RECORD_KINDS[kind]
    keys = np.random.default_rng(1).choice(10**12, size=200, replace=False)
    records = _records(dtype, shape, len(keys), seed=2)

    async def body(store: VectorStorage) -> None:
        await store.set_many(keys, records)
        got, found = await store.get_many(keys)
        assert found.dtype == bool and found.all()
        assert _same_bytes(got, records)
        order = np.random.default_rng(3).permutation(len(keys))
        got, found = await store.get_many(keys[order].tolist())  # plain ints, another order
        assert found.all() and _same_bytes(got, records[order])
        got[0] = got[1]  # the result is the caller's to write

    run(body, ("", dtype, shape))


def test_missing_keys_are_not_found_and_zero(run) -> None:
    dtype, shape = RECORD_KINDS["struct4"]
    records = _records(dtype, shape, 5, seed=4)

    async def body(store: VectorStorage) -> None:
        await store.set_many([10, 11, 12, 13, 14], records)
        got, found = await store.get_many([99, 12, 10, 98, 14, 97])
        assert found.tolist() == [False, True, True, False, True, False]
        assert _same_bytes(got[[1, 2, 4]], records[[2, 0, 4]])
        assert not got[[0, 3, 5]].view(np.uint8).any()
        got, found = await store.get_many([1, 2])
        assert not found.any() and got.shape == (2, *shape) and not got.view(np.uint8).any()
        got, found = await store.get_many([])
        assert got.shape == (0, *shape) and found.shape == (0,)

    run(body, ("", dtype, shape))


def test_get_and_set_one_record(run) -> None:
    async def body(store: VectorStorage) -> None:
        assert await store.get(7) is None
        record = np.arange(64, dtype=np.float32) / 7
        await store.set(7, record)
        got = await store.get(np.int64(7))
        assert _same_bytes(got, record)
        got[:] = 0  # a copy: the stored record is unchanged
        assert _same_bytes(await store.get(7), record)
        await store.set(7, record.astype(np.float64) * 2)  # cast to the storage's dtype
        assert _same_bytes(await store.get(7), record * 2)
        with pytest.raises(ValueError, match="shape"):
            await store.set(8, np.zeros(63, np.float32))
        with pytest.raises(TypeError):
            await store.set(8, np.zeros(64, np.complex64))
        with pytest.raises(TypeError, match="integers"):
            await store.get(7.0)
        assert await store.get(8) is None

    run(body, ("", np.float32, (64,)))


def test_set_many_checks_its_arguments(run) -> None:
    async def body(store: VectorStorage) -> None:
        with pytest.raises(ValueError, match="shape"):
            await store.set_many([1, 2, 3], np.zeros((2, 8), np.uint8))
        with pytest.raises(TypeError, match="integers"):
            await store.set_many(["a", "b"], np.zeros((2, 8), np.uint8))
        await store.set_many([], np.zeros((0, 8), np.uint8))
        _, found = await store.get_many([1, 2, 3])
        assert not found.any()

    run(body, ("", np.uint8, (8,)))


def test_delete_many(run) -> None:
    records = _records(np.dtype(np.float32), (16,), 10, seed=5)

    async def body(store: VectorStorage) -> None:
        await store.set_many(range(10), records)
        await store.delete_many([2, 5, 7, 1234])  # a missing key is ignored
        await store.delete_many([])
        got, found = await store.get_many(range(10))
        assert found.tolist() == [i not in (2, 5, 7) for i in range(10)]
        assert _same_bytes(got[found], records[found])
        assert await store.get(5) is None

    run(body, ("", np.float32, (16,)))


def test_clear_empties_only_its_namespace(run) -> None:
    records = _records(np.dtype(np.uint8), (8,), 3, seed=6)

    async def body(a: VectorStorage, ab: VectorStorage, b: VectorStorage) -> None:
        for store in (a, ab, b):
            await store.set_many([1, 2, 3], records)
        await a.clear()
        assert not (await a.get_many([1, 2, 3]))[1].any()
        for store in (ab, b):  # "<ns>b" starts like "<ns>": a prefix must not be taken for a namespace
            got, found = await store.get_many([1, 2, 3])
            assert found.all() and _same_bytes(got, records)

    run(body, ("a", np.uint8, (8,)), ("ab", np.uint8, (8,)), ("b", np.uint8, (8,)))


def test_open_storage_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown storage backend"):
        open_storage("disk", None, "ns", np.float32, (4,))
    with pytest.raises(ValueError, match="needs a Redis URL"):
        open_storage("redis", None, "ns", np.float32, (4,))
    with pytest.raises(ValueError, match="scheme"):
        open_storage("redis", "http://127.0.0.1:6379/0", "ns", np.float32, (4,))
    with pytest.raises(ValueError, match="database number"):
        open_storage("redis", "redis://127.0.0.1:6379/x", "ns", np.float32, (4,))
    for namespace in ("", "a:b", "run*", "a b"):
        with pytest.raises(ValueError, match="namespace"):
            open_storage("memory", None, namespace, np.float32, (4,))
    with pytest.raises(ValueError, match="Python objects"):
        open_storage("memory", None, "ns", object, (4,))


def test_redis_reachable_gives_a_reason_without_a_server() -> None:
    reason = asyncio.run(redis_reachable("redis://127.0.0.1:1/0", timeout=0.5))  # port 1: nothing listens there
    assert reason and "\n" not in reason
    assert "scheme" in asyncio.run(redis_reachable("memcached://127.0.0.1:1"))


# Redis only: what goes over the wire and what the server keeps.


def _redis_run(redis_url: str, body: Body, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    """await body(storage, plain redis.asyncio client of the same server) in a fresh namespace, then clear and close both."""

    async def main() -> None:
        store = open_storage("redis", redis_url, f"test-{uuid.uuid4().hex[:12]}", dtype, shape)
        client = redis_asyncio.from_url(redis_url)
        try:
            await body(store, client)
        finally:
            await store.clear()
            await store.close()
            await client.aclose()

    asyncio.run(main())


def test_redis_batches_are_one_round_trip_each(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[bytes] = []
    send = AbstractConnection.send_packed_command

    async def spy(self, command, *args, **kwargs):
        chunks = [command] if isinstance(command, (bytes, str, memoryview)) else command
        sent.append(bytes(chunks[0][:40]) if not isinstance(chunks[0], str) else chunks[0][:40].encode())
        return await send(self, command, *args, **kwargs)

    records = _records(np.dtype(np.float32), (64,), 300, seed=7)

    async def calls(client: redis_asyncio.Redis, command: str) -> int:
        return (await client.info("commandstats")).get(f"cmdstat_{command}", {}).get("calls", 0)

    async def body(store: VectorStorage, client: redis_asyncio.Redis) -> None:
        await store.get_many([0])  # the storage's connection is made (and its handshake sent) outside the counts
        for method, args, command in (
            (store.set_many, (range(300), records), "mset"),
            (store.get_many, (range(300),), "mget"),
            (store.get_many, (range(250, 350),), "mget"),  # some missing
            (store.delete_many, (range(100),), "del"),
        ):
            before = await calls(client, command)
            sent.clear()
            monkeypatch.setattr(AbstractConnection, "send_packed_command", spy)
            await method(*args)
            monkeypatch.setattr(AbstractConnection, "send_packed_command", send)
            assert len(sent) == 1 and command.upper().encode() in sent[0], (method.__name__, sent)
            assert await calls(client, command) == before + 1, method.__name__

    _redis_run(redis_url, body, np.float32, (64,))


def test_redis_keeps_raw_record_bytes_under_namespaced_keys(redis_url: str) -> None:
    dtype, shape = RECORD_KINDS["struct4"]
    records = _records(dtype, shape, 3, seed=8)

    async def body(store: VectorStorage, client: redis_asyncio.Redis) -> None:
        await store.set_many([5, 6, 7], records)
        for key, record in zip([5, 6, 7], records):
            name = f"{store.namespace}:{key}"
            assert await client.strlen(name) == dtype.itemsize * prod(shape) == store.record_nbytes
            assert await client.get(name) == record.tobytes()
        assert sorted(await client.keys(f"{store.namespace}:*")) == [f"{store.namespace}:{k}".encode() for k in (5, 6, 7)]

    _redis_run(redis_url, body, dtype, shape)


def test_redis_value_of_another_size_is_an_error(redis_url: str) -> None:
    async def body(store: VectorStorage, client: redis_asyncio.Redis) -> None:
        await store.set_many([1, 2], np.ones((2, 4), np.float32))
        await client.set(f"{store.namespace}:2", b"\x00" * 8)
        with pytest.raises(ValueError, match="8 bytes"):
            await store.get_many([1, 2])
        with pytest.raises(ValueError, match="8 bytes"):
            await store.get_many([1, 2, 3])
        with pytest.raises(ValueError, match="8 bytes"):
            await store.get(2)

    _redis_run(redis_url, body, np.float32, (4,))


def test_redis_url_selects_the_database(redis_url: str) -> None:
    base = redis_url.rsplit("/", 1)[0] if redis_url.count("/") > 2 else redis_url
    other_db = f"{base}/1"

    async def main() -> None:
        namespace = f"test-{uuid.uuid4().hex[:12]}"
        store = open_storage("redis", other_db, namespace, np.uint8, (4,))
        db0 = redis_asyncio.from_url(f"{base}/0")
        db1 = redis_asyncio.from_url(other_db)
        try:
            await store.set(3, np.arange(4, dtype=np.uint8))
            assert await db1.get(f"{namespace}:3") == bytes(range(4))
            assert await db0.get(f"{namespace}:3") is None
        finally:
            await store.clear()
            await store.close()
            await db0.aclose()
            await db1.aclose()

    asyncio.run(main())
