"""The simpy interpretation of a pipeline's steps: stage calls, read-through caches, cache-guarded calls,
nearline vector reads. Each step becomes (the visit run in the request's own process, the other
branches of a parallel step, each run in a process of its own)."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from aif_sim.core.cache import CachePolicy
from aif_sim.core.nearline import NearlineStore
from aif_sim.core.pipelines import PIPELINES, Cached, Call, Parallel
from aif_sim.core.request import Outcome, Request
from aif_sim.core.shadow import ShadowSample
from aif_sim.core.traffic import ZipfSampler
from aif_sim.metrics.requests_log import sampled
from aif_sim.sim.pools import COMPLETED, StagePool

Serve = Callable[[Request], Generator[simpy.Event, Any, Outcome]]
Flow = list[tuple[Serve, tuple[Serve, ...]]]


@dataclass
class ShadowSampling:
    """Which requests shadow scoring takes (a per-id hash at `rate`, at most `limit` measured ones) and how
    many candidates each, drawn from the item popularity; `samples` collects what they read."""

    rate: float
    candidates: int
    limit: int
    popularity: ZipfSampler
    rng: np.random.Generator
    samples: list[ShadowSample] = field(default_factory=list)

    def wants(self, request: Request) -> bool:
        return request.measured and len(self.samples) < self.limit and bool(sampled(np.array([request.id]), self.rate)[0])


class FlowBuilder:
    """Builds the serve functions of one pipeline over its pools, caches and nearline stores."""

    def __init__(
        self,
        env: simpy.Environment,
        pools: dict[str, StagePool],
        caches: dict[str, CachePolicy],
        cache_index: dict[str, int],
        stores: dict[str, NearlineStore],
        shadow: ShadowSampling | None = None,
    ) -> None:
        self.env, self.pools, self.caches, self.cache_index, self.stores = env, pools, caches, cache_index, stores
        self.shadow = shadow

    def flow(self, pipeline: str) -> Flow:
        flow: Flow = []
        for step in PIPELINES[pipeline]:
            serves = [self.serve(branch) for branch in (step.branches if isinstance(step, Parallel) else (step,))]
            flow.append((serves[-1], tuple(serves[:-1])))
        return flow

    def serve(self, branch: Call | Cached) -> Serve:
        if isinstance(branch, Cached):
            inner = self.serve(branch.call)
            cache = self.caches.get(branch.cache)
            return inner if cache is None else self._guarded(cache, self.cache_index[branch.cache], inner)
        pool = self.pools[branch.stage]
        serve: Serve = pool.serve
        if branch.reads in self.caches:
            serve = self._read_through(self.caches[branch.reads], self.cache_index[branch.reads], pool.slot, serve)
        if branch.vectors in self.stores:
            serve = self._vectors(branch.vectors, self.stores[branch.vectors], serve)
        return serve

    def _guarded(self, cache: CachePolicy, index: int, inner: Serve) -> Serve:
        """A hit skips the call; a miss makes it and inserts the user's entry when it finishes."""
        env = self.env

        def serve(request: Request) -> Generator[simpy.Event, Any, Outcome]:
            if cache.lookup(request.user, env.now):
                request.cache_hit[index] = 1.0
                request.user_vector_s = cache.inserted_at(request.user)
                return COMPLETED
            request.cache_hit[index] = 0.0
            outcome = yield from inner(request)
            if outcome is COMPLETED:
                cache.insert(request.user, env.now)
            return outcome

        return serve

    def _read_through(self, cache: CachePolicy, index: int, slot: int, inner: Serve) -> Serve:
        """A miss adds the miss latency (drawn per request) to the visit's service and inserts when the visit ends."""
        env = self.env

        def serve(request: Request) -> Generator[simpy.Event, Any, Outcome]:
            hit = cache.lookup(request.user, env.now)
            request.cache_hit[index] = float(hit)
            if hit:
                request.miss_s[slot] = 0.0
            else:
                request.service_s[slot] += request.miss_s[slot]
            outcome = yield from inner(request)
            if not hit and outcome is COMPLETED:
                cache.insert(request.user, env.now)
            return outcome

        return serve

    def _vectors(self, name: str, store: NearlineStore, inner: Serve) -> Serve:
        """When the fetch ends, measure the vectors it read: the request's candidate sample (items) or its user;
        for a request shadow scoring takes, record the vectors of a larger candidate set."""
        env, shadow = self.env, self.shadow if name == "items" else None

        def serve(request: Request) -> Generator[simpy.Event, Any, Outcome]:
            outcome = yield from inner(request)
            if outcome is COMPLETED:
                now = env.now
                entities = request.sample if name == "items" else np.array([request.user])
                made, version = store.read(entities, now)
                stale = int(np.count_nonzero(store.changed_s[entities] > made))
                mismatch = int(np.count_nonzero(version != store.serving_version))
                request.vectors = (name, now - made, stale, mismatch)
                if shadow is not None and shadow.wants(request):
                    items = shadow.popularity.sample(shadow.rng, shadow.candidates)
                    made, version = store.read(items, now)
                    sample = ShadowSample(request.user, now, items, made, version, store.serving_version, request.user_vector_s)
                    shadow.samples.append(sample)
            return outcome

        return serve
