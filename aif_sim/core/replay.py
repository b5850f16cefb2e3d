"""A service-time trace: per request, its arrival time and the time each stage visit really took, to replay
through a DES in place of the samplers' draws.

A trace is indexed by request id (the ids `core.system.RequestSource` gives, 0, 1, … in arrival order) and by the
pipeline's stage slots. `service_s[id, slot]` is the time the visit held its server, cache-miss latency included
(NaN: the request made no such visit, or was not traced; the draw stands there); at a sharded stage, `shard_s[slot]`
[requests, shards] holds each shard's time on its node (the served copy's) and `service_s` the slowest's;
`hop_s[id, k]` is the time between the end of step k − 1 (for k = 0, the request's arrival) and its first visit of
step k: time outside any stage (live, the load generator's lag, the event loop's delay in starting the tasks of a
parallel step's branches and in resuming the request when they join), which a DES replays as a pause. An engine
that measures service times (the live engine) records into one (`arrive`, `record`); a DES takes one through
`RequestSource`, which replaces each traced request's draws at traced slots (`apply`), and its pools then read those
times as they read draws: the trace's arrivals are the run's (its users and candidates drawn as usual), and a
batching stage serves a batch for its members' mean traced time (the same time for each, when the replay forms
the batches the traced run formed; otherwise an estimate).

Not traced: a hedged visit's copy (a DES draws the copy it sends; the trace holds the time of the copy that won).
Memory: arrays of the run's requests (8 bytes per request and slot, and per shard), grown by doubling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from aif_sim.core.request import Request
from aif_sim.core.traffic import CHUNK

if TYPE_CHECKING:
    from aif_sim.core.system import RequestDraws


class ServiceTrace:
    """Arrival times [requests] (s), service times [requests, slots], per sharded slot shard times [requests,
    shards], and pauses before each step [requests, steps] (s, NaN where not traced), by request id. `steps`: the
    pipeline's steps, each the slots it visits (`Pipeline.step_slots`); `shards`: {slot: shards} of its
    sharded stages."""

    def __init__(self, steps: list[list[int]], shards: dict[int, int] | None = None, capacity: int = 1024) -> None:
        self.steps = steps
        slots = sum(len(step) for step in steps)
        self._arrival_s = np.full(capacity, np.nan)
        self._service_s = np.full((capacity, slots), np.nan)
        self._hop_s = np.full((capacity, len(steps)), np.nan)
        self._shard_s = {slot: np.full((capacity, count), np.nan) for slot, count in (shards or {}).items()}
        self.count = 0  # ids below this have been given an arrival time

    @classmethod
    def of(
        cls,
        steps: list[list[int]],
        arrival_s: np.ndarray,
        service_s: np.ndarray,
        shard_s: dict[int, np.ndarray] | None = None,
        hop_s: np.ndarray | None = None,
    ) -> ServiceTrace:
        """A trace of requests 0..n-1 of a pipeline of these `steps`, with these arrival times [n] (s, ascending),
        service times [n, slots], shard times {slot: [n, shards]} and pauses [n, steps] (s; NaN: the draw stands, or
        no pause)."""
        arrival_s, service_s = np.asarray(arrival_s, float), np.asarray(service_s, float)
        shard_s = {slot: np.asarray(times, float) for slot, times in (shard_s or {}).items()}
        n = len(arrival_s)
        hops = np.full((n, len(steps)), np.nan) if hop_s is None else np.asarray(hop_s, float)
        if service_s.ndim != 2 or len(service_s) != n or any(times.ndim != 2 or len(times) != n for times in shard_s.values()):
            raise ValueError(f"service_s, shard_s: expected [{n}, slots] and [{n}, shards], got {service_s.shape}")
        if hops.shape != (n, len(steps)) or np.any(hops < 0):
            raise ValueError(f"hop_s: expected [{n}, {len(steps)}] pauses of at least 0, got shape {hops.shape}")
        if np.any(np.diff(arrival_s) < 0):
            raise ValueError("arrival_s: expected ascending arrival times")
        trace = cls(steps, {slot: times.shape[1] for slot, times in shard_s.items()}, max(1, n))
        trace._arrival_s[:n], trace._service_s[:n], trace._hop_s[:n] = arrival_s, service_s, hops
        for slot, times in shard_s.items():
            trace._shard_s[slot][:n] = times
        trace.count = n
        return trace

    @property
    def arrival_s(self) -> np.ndarray:
        return self._arrival_s[: self.count]

    @property
    def service_s(self) -> np.ndarray:
        return self._service_s[: self.count]

    @property
    def hop_s(self) -> np.ndarray:
        return self._hop_s[: self.count]

    def shard_s(self, slot: int) -> np.ndarray:
        """The shard times of a sharded slot [requests, shards]."""
        return self._shard_s[slot][: self.count]

    def _grow(self, size: int) -> None:
        if size <= len(self._arrival_s):
            return
        capacity = max(size, 2 * len(self._arrival_s))

        def grown(array: np.ndarray) -> np.ndarray:
            bigger = np.full((capacity, *array.shape[1:]), np.nan)
            bigger[: self.count] = array[: self.count]
            return bigger

        self._arrival_s, self._service_s, self._hop_s = grown(self._arrival_s), grown(self._service_s), grown(self._hop_s)
        self._shard_s = {slot: grown(times) for slot, times in self._shard_s.items()}

    def arrive(self, requests: list[Request]) -> None:
        """Consecutive requests were issued (their ids follow the last ones'): their arrival times."""
        if not requests:
            return
        first = requests[0].id
        self._grow(first + len(requests))
        self._arrival_s[first : first + len(requests)] = [request.arrival_s for request in requests]
        self.count = max(self.count, first + len(requests))

    def record(self, request: Request) -> None:
        """A request left the system: its service time at each slot it was served at (`Request.times` ended there),
        at a sharded slot its shards' (`Request.shard_s`), and the pause before each step it reached."""
        row = self._service_s[request.id]
        for slot, service in enumerate(request.service_s):
            if request.times[3 * slot + 2] == request.times[3 * slot + 2]:  # not NaN: the visit ended
                row[slot] = service
                if slot in self._shard_s and request.shard_s is not None:
                    self._shard_s[slot][request.id] = request.shard_s[slot]
        times = request.times
        last = request.arrival_s  # the end of the steps so far
        for k, slots in enumerate(self.steps):
            entered = [times[3 * slot] for slot in slots if times[3 * slot + 2] == times[3 * slot + 2]]
            if not entered:
                continue  # a step it skipped (or did not finish): the next one's pause counts from the same end
            self._hop_s[request.id, k] = max(0.0, min(entered) - last)
            last = max(times[3 * slot + 2] for slot in slots if times[3 * slot + 2] == times[3 * slot + 2])

    def arrivals(self, until_s: float) -> Iterator[np.ndarray]:
        """The trace's arrival times before `until_s`, in chunks as `core.traffic.arrival_times` gives them."""
        times = self.arrival_s[self.arrival_s < until_s]
        for start in range(0, len(times), CHUNK):
            yield times[start : start + CHUNK]

    def apply(self, draws: RequestDraws) -> RequestDraws:
        """The block's draws with this trace's service times and pauses where it has them; a traced visit gets no
        cache-miss latency on top (its time includes what it waited for)."""
        rows = slice(draws.block.first_id, draws.block.first_id + len(draws.block.arrival_s))
        traced = ~np.isnan(self._service_s[rows])
        service = np.where(traced, self._service_s[rows], draws.service_s)
        shard_s = {
            slot: np.where(traced[:, slot, None], self._shard_s[slot][rows], shards) if slot in self._shard_s else shards
            for slot, shards in draws.shard_s.items()
        }
        miss = None if draws.miss_s is None else np.where(traced, 0.0, draws.miss_s)
        hops = np.nan_to_num(self._hop_s[rows], nan=0.0)
        return dataclasses.replace(draws, service_s=service, shard_s=shard_s, miss_s=miss, hop_s=hops)
