"""The live engine's in-memory nearline index (one numpy array, no object per entity) and vectors made on first read."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from aif_sim.errors import InputError
from aif_sim.live.index import ArrayIndex
from aif_sim.live.loop import Clock
from aif_sim.live.nearline import FirstRead
from aif_sim.live.run import MAX_INDEX, check_live
from tests.simtools import make_scenario, negligible

RECORD = np.dtype([("vec", np.float32, (4,)), ("code", np.int64, (1,))])


def _records(ids: np.ndarray) -> np.ndarray:
    out = np.zeros(len(ids), RECORD)
    out["vec"] = ids[:, None] * np.arange(4, dtype=np.float32)
    out["code"] = ids[:, None] * 3
    return out


def test_array_index_round_trips_records_and_reports_missing_keys():
    async def body() -> None:
        index = ArrayIndex("ns", RECORD, (), 1000)
        assert index.nbytes == 1000 * RECORD.itemsize + 1000  # fixed when opened, whatever is stored
        ids = np.array([3, 999, 0, 3])
        await index.set_many(ids[:3], _records(ids[:3]))
        records, found = await index.get_many(np.array([999, 5, 3]))
        assert found.tolist() == [True, False, True]
        assert records[0] == _records(np.array([999]))[0] and records[2] == _records(np.array([3]))[0]
        assert records[1] == np.zeros((), RECORD)  # a missing key reads as zeros, as the aiocache storage gives it
        assert await index.get(5) is None
        await index.delete_many([3])
        assert (await index.get_many([3, 0]))[1].tolist() == [False, True]
        await index.clear()
        assert not (await index.get_many(np.arange(1000)))[1].any()
        with pytest.raises(KeyError):
            await index.get_many([1000])

    asyncio.run(body())


def test_first_read_makes_missing_vectors_once_and_counts_the_work():
    """Entities past the filled ones are made on first read, exactly as the fill makes them, stored, and their model
    time reported as refresh work; a second read finds them stored."""
    made: list[np.ndarray] = []
    work: list[float] = []

    def compute(ids: np.ndarray) -> np.ndarray:
        made.append(ids.copy())
        return _records(ids)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        index = ArrayIndex("ns", RECORD, (), 100)
        await index.set_many(np.arange(10), _records(np.arange(10)))
        with ThreadPoolExecutor(1) as executor:
            reads = FirstRead(index, compute, executor, Clock(loop, 0.0), lambda seconds, now: work.append(seconds))
            keys = np.array([2, 50, 7, 50, 99])
            records, found = await reads.get_many(keys)
            assert found.all()
            assert (records == _records(keys)).all()
            assert [ids.tolist() for ids in made] == [[50, 99]]  # one call for the read's missing entities, each once
            assert len(work) == 1 and work[0] > 0
            again, _ = await reads.get_many(keys)
            assert (again == records).all() and len(made) == 1
            assert await reads.get(42) == _records(np.array([42]))[0]
            assert len(made) == 2

    asyncio.run(body())


def test_live_takes_a_million_items_in_memory_and_refuses_more_than_its_index_holds():
    stages = {"merger": negligible(), "retrieval": negligible(), "user_inference": negligible(), "item_fetch": negligible()}
    stages["rtp"] = negligible()
    scenario = make_scenario(stages, pipelines=["aif"])
    million = scenario.model_copy(
        update={"traffic": scenario.traffic.model_copy(update={"items": scenario.traffic.items.model_copy(update={"count": 10**6})})}
    )
    check_live(million, "<test>")
    too_many = million.model_copy(
        update={"traffic": million.traffic.model_copy(update={"items": million.traffic.items.model_copy(update={"count": MAX_INDEX + 1})})}
    )
    with pytest.raises(InputError, match="traffic.items.count"):
        check_live(too_many, "<test>")
