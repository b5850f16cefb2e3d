"""The request flow, written once for every engine.

`Flow.run(request)` is a generator that walks a pipeline's steps (`scenario.pipelines`) and yields to its
engine what only an engine can do, receiving the answer through `send`:
- `Visit(slot)`: serve the request at the pipeline's stage in `slot` (its queue, servers and service);
  the engine sends back the visit's `Outcome`.
- `Fork(flows)`: run these branch flows concurrently; the engine sends back the largest of their outcomes
  (the join rule of `core.request`).
- `Pause(s)`: let `s` seconds pass before the next step, outside any stage (a request with `hop_s`, replayed
  from a trace: `core.replay`); the engine sends back None.
- `Load(cache, key)` / `Save(cache, key, dropped)`: an engine that keeps values takes the entry `key` (the user's,
  or the request's own for a request-keyed cache) from the cache's storage (a hit), or stores the entry the
  request has just computed (a miss), deleting the entry the policy `dropped` for room; it sends back None.
  Yielded only by a flow built with `storage=True` (the live engine); the DES keeps no values.
Everything else happens here, at the engine's `clock()`: cache policy decisions, miss latencies, vector
ages and versions, shadow sampling. The result of `run` is the request's outcome; the engine then calls
`end(request, now)`, which drops the request's entries from the request-keyed caches.

A cache may be consulted at several calls of a pipeline: each consultation is a lookup of its own, recorded in
its column of `Request.cache_hit` (`Pipeline.lookups`). A user-keyed cache is shared by every request of the
user; a request-keyed one misses at a request's first lookup and hits at a later one once the call that missed
has inserted the entry: the branches of one parallel group look up together when the step starts, so they all
miss, and the first to end inserts it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from aif_sim.core.cache import Policy, RequestCache
from aif_sim.core.nearline import NearlineStore
from aif_sim.core.request import Outcome, Request
from aif_sim.core.shadow import ShadowSampling
from aif_sim.scenario.pipelines import Cached, Call, Pipeline, branches_of

COMPLETED = Outcome.COMPLETED


@dataclass(frozen=True, slots=True)
class Visit:
    slot: int


@dataclass(frozen=True, slots=True)
class Fork:
    flows: tuple[Generator[Any, Any, Outcome], ...]


@dataclass(frozen=True, slots=True)
class Pause:
    s: float


@dataclass(frozen=True, slots=True)
class Load:
    cache: str
    key: int


@dataclass(frozen=True, slots=True)
class Save:
    cache: str
    key: int
    dropped: int | None


Op = Visit | Fork | Pause | Load | Save
FlowRun = Generator[Op, Any, Outcome]
Branch = Callable[[Request], FlowRun]


class Flow:
    """One pipeline's steps over the run's cache policies and nearline stores.

    `calls` lists the pipeline's stage calls in slot order (the slot of a call is its position).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        caches: dict[str, Policy],
        stores: dict[str, NearlineStore],
        clock: Callable[[], float],
        shadow: ShadowSampling | None = None,
        storage: bool = False,
    ) -> None:
        self.caches, self.stores, self.clock, self.shadow, self.storage = caches, stores, clock, shadow, storage
        self.lookup_at = {(lookup.slot, lookup.guard): i for i, lookup in enumerate(pipeline.lookups)}
        self.by_request = {name: cache for name, cache in caches.items() if isinstance(cache, RequestCache)}
        self.calls: list[Call] = []
        self.steps: list[tuple[Branch, ...]] = []
        for step in pipeline.steps:
            self.steps.append(tuple(self._branch(branch) for branch in branches_of(step)))

    def run(self, request: Request) -> FlowRun:
        """The request's way through the pipeline: each step in turn (after its pause, if any), until one fails."""
        hops = request.hop_s
        for k, branches in enumerate(self.steps):
            if hops is not None and hops[k] > 0:
                yield Pause(hops[k])
            if len(branches) == 1:
                outcome = yield from branches[0](request)
            else:
                outcome = yield Fork(tuple(branch(request) for branch in branches))
            if outcome:
                return outcome
        return COMPLETED

    def end(self, request: Request, now: float) -> list[tuple[str, int]]:
        """The request has ended at `now`: its entries leave the request-keyed caches; the (cache, key) that left."""
        return [(name, request.id) for name, cache in self.by_request.items() if cache.release(request.id, now)]

    # --- branches -----------------------------------------------------------------------------------
    def _branch(self, branch: Call | Cached) -> Branch:
        if isinstance(branch, Cached):
            guard_slot = len(self.calls)
            inner = self._branch(branch.call)
            cache = self.caches.get(branch.cache)
            return inner if cache is None else self._guarded(branch.cache, cache, self.lookup_at[guard_slot, True], inner)
        slot = len(self.calls)
        self.calls.append(branch)
        visit = Visit(slot)

        def serve(request: Request) -> FlowRun:
            return (yield visit)

        flow: Branch = serve
        if branch.reads in self.caches:
            flow = self._read_through(branch.reads, slot, self.lookup_at[slot, False], flow)
        if branch.vectors in self.stores:
            flow = self._vectors(branch.vectors, self.stores[branch.vectors], flow)
        return flow

    def _guarded(self, name: str, cache: Policy, index: int, inner: Branch) -> Branch:
        """A hit skips the call; a miss makes it and inserts the entry when it finishes (`index`: the lookup's column)."""
        clock, storage, by_request = self.clock, self.storage, isinstance(cache, RequestCache)

        def guarded(request: Request) -> FlowRun:
            key = _entry_key(request, by_request)
            if cache.lookup(key, clock()):
                request.cache_hit[index] = 1.0
                request.user_vector_s = cache.inserted_at(key)
                if storage:
                    yield Load(name, key)
                return COMPLETED
            request.cache_hit[index] = 0.0
            outcome = yield from inner(request)
            if outcome is COMPLETED:
                yield from self._insert(name, cache, key)
            return outcome

        return guarded

    def _insert(self, name: str, cache: Policy, key: int) -> Generator[Op, Any, None]:
        """A computation that missed has finished: its entry goes in, and an engine that keeps values stores it."""
        dropped = cache.insert(key, self.clock())
        if self.storage:
            yield Save(name, key, dropped)

    def _read_through(self, name: str, slot: int, index: int, inner: Branch) -> Branch:
        """A miss adds the miss latency (drawn per request) to the visit's service and inserts when the visit ends
        (`index`: the lookup's column)."""
        clock, cache, storage = self.clock, self.caches[name], self.storage
        by_request = isinstance(cache, RequestCache)

        def read_through(request: Request) -> FlowRun:
            key = _entry_key(request, by_request)
            hit = cache.lookup(key, clock())
            request.cache_hit[index] = float(hit)
            if hit:
                request.miss_s[slot] = 0.0
                if storage:
                    yield Load(name, key)
            else:
                request.service_s[slot] += request.miss_s[slot]
            outcome = yield from inner(request)
            if not hit and outcome is COMPLETED:
                yield from self._insert(name, cache, key)
            return outcome

        return read_through

    def _vectors(self, name: str, store: NearlineStore, inner: Branch) -> Branch:
        """When the fetch ends, measure the vectors it read: the request's candidate sample (items) or its user;
        for a request shadow scoring takes, record the vectors it scores (`ShadowSampling.take`)."""
        clock = self.clock
        shadow = self.shadow if self.shadow is not None and self.shadow.store == name else None

        def vectors(request: Request) -> FlowRun:
            outcome = yield from inner(request)
            if outcome is COMPLETED:
                now = clock()
                entities = request.sample if store.entities == "items" else np.array([request.user])
                made, version = store.read(entities, now)
                stale = int(np.count_nonzero(store.changed_s[entities] > made))
                mismatch = int(np.count_nonzero(version != store.serving_version))
                request.vectors = (name, now - made, stale, mismatch)
                if shadow is not None and shadow.wants(request):
                    shadow.take(request.user, now, lambda entities: store.read(entities, now), store, request.user_vector_s)
            return outcome

        return vectors


def _entry_key(request: Request, by_request: bool) -> int:
    """The key of a request's entry in a cache: its own id in a request-keyed cache, its user's in a user-keyed one."""
    return request.id if by_request else request.user
