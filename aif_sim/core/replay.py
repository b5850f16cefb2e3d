"""A service-time trace: per request, its arrival time and the time each stage visit really took, to replay
through a DES in place of the samplers' draws.

A trace is indexed by request id (the ids `core.system.RequestSource` gives, 0, 1, … in arrival order) and by the
pipeline's stage slots. `service_s[id, slot]` is the time the visit held its server, cache-miss latency included
(NaN: the request made no such visit, or was not traced; the draw stands there). An engine that measures service
times (the live engine) records into one (`arrive`, `record`); a DES takes one through `RequestSource`, which
replaces each traced request's arrival time and its draws at traced slots (`apply`), and its pools then read those
times as they read draws: the trace's arrivals are the run's (its users and candidates drawn as usual), and a
batching stage serves a batch for its members' mean traced time (the same time for each, when the replay forms
the batches the traced run formed; otherwise an estimate).

Not traced: the shard services of a sharded stage and the services of hedge copies (a DES draws those).
Memory: two arrays of the run's requests (8 bytes per request and slot), grown by doubling.
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
    """Arrival times [requests] (s) and service times [requests, slots] (s, NaN where not traced), by request id."""

    def __init__(self, slots: int, capacity: int = 1024) -> None:
        self._arrival_s = np.full(capacity, np.nan)
        self._service_s = np.full((capacity, slots), np.nan)
        self.count = 0  # ids below this have been given an arrival time

    @classmethod
    def of(cls, arrival_s: np.ndarray, service_s: np.ndarray) -> ServiceTrace:
        """A trace of requests 0..n-1 with these arrival times [n] (s, ascending) and service times [n, slots] (s;
        NaN: the draw stands)."""
        arrival_s, service_s = np.asarray(arrival_s, float), np.asarray(service_s, float)
        if service_s.ndim != 2 or len(service_s) != len(arrival_s):
            raise ValueError(f"service_s: expected [{len(arrival_s)}, slots], got shape {service_s.shape}")
        if np.any(np.diff(arrival_s) < 0):
            raise ValueError("arrival_s: expected ascending arrival times")
        trace = cls(service_s.shape[1], max(1, len(arrival_s)))
        trace._arrival_s[: len(arrival_s)] = arrival_s
        trace._service_s[: len(arrival_s)] = service_s
        trace.count = len(arrival_s)
        return trace

    @property
    def arrival_s(self) -> np.ndarray:
        return self._arrival_s[: self.count]

    @property
    def service_s(self) -> np.ndarray:
        return self._service_s[: self.count]

    def _grow(self, size: int) -> None:
        if size <= len(self._arrival_s):
            return
        capacity = max(size, 2 * len(self._arrival_s))
        arrival, service = np.full(capacity, np.nan), np.full((capacity, self._service_s.shape[1]), np.nan)
        arrival[: self.count], service[: self.count] = self.arrival_s, self.service_s
        self._arrival_s, self._service_s = arrival, service

    def arrive(self, requests: list[Request]) -> None:
        """Consecutive requests were issued (their ids follow the last ones'): their arrival times."""
        if not requests:
            return
        first = requests[0].id
        self._grow(first + len(requests))
        self._arrival_s[first : first + len(requests)] = [request.arrival_s for request in requests]
        self.count = max(self.count, first + len(requests))

    def record(self, request: Request) -> None:
        """A request left the system: its service time at each slot it was served at (`Request.times` ended there)."""
        row = self._service_s[request.id]
        for slot, service in enumerate(request.service_s):
            if request.times[3 * slot + 2] == request.times[3 * slot + 2]:  # not NaN: the visit ended
                row[slot] = service

    def arrivals(self, until_s: float) -> Iterator[np.ndarray]:
        """The trace's arrival times before `until_s`, in chunks as `core.traffic.arrival_times` gives them."""
        times = self.arrival_s[self.arrival_s < until_s]
        for start in range(0, len(times), CHUNK):
            yield times[start : start + CHUNK]

    def apply(self, draws: RequestDraws) -> RequestDraws:
        """The block's draws with this trace's service times where it has them; a traced visit gets no cache-miss
        latency on top (its time includes what it waited for)."""
        first = draws.block.first_id
        rows = self._service_s[first : first + len(draws.block.arrival_s)]
        traced = ~np.isnan(rows)
        service = np.where(traced, rows, draws.service_s)
        miss = None if draws.miss_s is None else np.where(traced, 0.0, draws.miss_s)
        return dataclasses.replace(draws, service_s=service, miss_s=miss)
