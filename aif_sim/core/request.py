"""A request in flight, how it ends, and the measurement window.

A request's outcome is the first failure on its path, or COMPLETED. In a parallel step every branch
runs to its own end and the step joins when all have ended: a branch that fails does not cancel the
others, so a surviving branch keeps its server until its service ends (the work is done and charged
as compute, then thrown away). When branches end differently the step keeps the largest outcome
value: TIMED_OUT over REJECTED over COMPLETED (a timed-out branch held a queue slot for the longest).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class Outcome(IntEnum):
    """How a request (or one stage visit) ended; larger values win at a parallel join."""

    COMPLETED = 0
    REJECTED = 1
    TIMED_OUT = 2


NAN = float("nan")


class Request:
    """A request in flight: its draws, and when it entered, started and left each stage.

    `times[3 * slot : 3 * slot + 3]` are the (enter, start, end) times in seconds of its visit to the
    pipeline's stage `slot`, NaN where it made none; engines write them, the recorder reads them.
    With caches, `cache_hit[i]` is 1.0 (hit), 0.0 (miss) or NaN (not consulted) for the pipeline's i-th
    cache and `miss_s[i]` the miss latency a miss adds; with nearline vectors, `sample` holds the
    candidate items whose vectors are measured and `vectors` what was measured when they were read:
    (store name, ages in seconds, how many had changed since made, how many of another model version).
    `user_vector_s` is when the user vector it took from the user-vector cache was made (None: it computed one).
    `payload` is what a live engine carries between stages (candidate ids, model inputs and outputs); None in the DES.
    `shard_s[slot]` are the shard services (s) of a sharded stage's visit (`service_s[slot]` is the slowest's).
    `hop_s[k]` is a pause (s) before the pipeline's step k, outside any stage (a replayed trace's: `core.replay`;
    None: none).
    """

    __slots__ = (
        "id",
        "arrival_s",
        "user",
        "candidates",
        "measured",
        "service_s",
        "times",
        "cache_hit",
        "miss_s",
        "sample",
        "vectors",
        "user_vector_s",
        "payload",
        "shard_s",
        "hop_s",
    )

    def __init__(self, rid: int, arrival_s: float, user: int, candidates: int, measured: bool, service_s: list[float]) -> None:
        self.id = rid
        self.arrival_s = arrival_s
        self.user = user
        self.candidates = candidates
        self.measured = measured
        self.service_s = service_s  # this request's service time at each stage slot, alone on a server (s)
        self.times = [NAN] * (3 * len(service_s))
        self.cache_hit: list[float] | None = None
        self.miss_s: list[float] | None = None
        self.sample: Any = None
        self.vectors: tuple[str, Any, int, int] | None = None
        self.user_vector_s: float | None = None
        self.payload: dict[str, Any] | None = None
        self.shard_s: dict[int, list[float]] | None = None
        self.hop_s: list[float] | None = None


class Window:
    """The measurement window [start_s, end_s): arrivals in it are counted, and completions in it make the throughput."""

    def __init__(self, start_s: float, end_s: float) -> None:
        self.start_s, self.end_s = start_s, end_s

    @property
    def length_s(self) -> float:
        return self.end_s - self.start_s

    def overlap(self, begin_s: float, end_s: float) -> float:
        """Seconds of [begin_s, end_s) inside the window."""
        return max(0.0, min(end_s, self.end_s) - max(begin_s, self.start_s))
