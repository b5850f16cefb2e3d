"""The engine-neutral parts of one pipeline's run: its cache policies, nearline stores, shadow sampling, and
the requests it is offered with their draws. Both engines build these the same way, so the pipelines of a
run and the engines see the same arrivals, candidates and service draws (common random numbers)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from aif_sim.core.cache import CachePolicy, Policy, RequestCache
from aif_sim.core.latency import Sampler
from aif_sim.core.nearline import NearlineStore
from aif_sim.core.replay import ServiceTrace
from aif_sim.core.request import Request
from aif_sim.core.shadow import Retrieval, ShadowSampling
from aif_sim.core.traffic import RequestBlock, ZipfSampler, mean_rate, request_blocks, stream
from aif_sim.scenario.schema import CacheFlush, Fault, NearlineOutage, NodeLoss, Scenario, StageSlowdown

PROGRESS_STEPS = 200
STEP_REQUESTS = 5000  # at most about this many arrivals between progress reports and stop checks


def shard_sizes(candidates: np.ndarray, shards: int) -> np.ndarray:
    """Per request, the candidates of each of its shards [requests, shards]: sizes that differ by at most 1, the
    larger first (a shard of no candidate is still a visit)."""
    base, extra = np.divmod(candidates, shards)
    return base[:, None] + (np.arange(shards)[None, :] < extra[:, None])


def run_step_s(scenario: Scenario) -> float:
    """The simulated time a DES run advances between progress reports and stop checks (where it may end)."""
    horizon = scenario.duration_s + scenario.drain_s
    rate = mean_rate(scenario.traffic.arrival) or STEP_REQUESTS
    return min(horizon / PROGRESS_STEPS, max(1.0, STEP_REQUESTS / rate))


def cache_policies(scenario: Scenario, pipeline: str) -> dict[str, Policy]:
    """The cache policies of the caches this pipeline consults and the scenario configures: LRU over users, or one
    entry per request in flight (`key: request`)."""
    config = scenario.caches
    caches: dict[str, Policy] = {}
    for name in scenario.pipeline(pipeline).caches:
        spec = config.get(name) if config is not None else None
        if spec is not None:
            caches[name] = RequestCache() if spec.key == "request" else CachePolicy(spec.capacity or 0, spec.ttl_s)
    return caches


def touches(fault: Fault, scenario: Scenario, pipeline: str) -> bool:
    """Whether a fault acts on something this pipeline has: a `stage_slowdown` or `node_loss` a stage it visits, a `cache_flush`
    a configured cache it consults, a `nearline_outage` the refresh of a nearline store it reads (its refresh, or model
    publication for a store of items)."""
    if isinstance(fault, StageSlowdown | NodeLoss):
        return fault.stage in scenario.pipeline(pipeline).stages
    if isinstance(fault, CacheFlush):
        return (
            fault.cache in scenario.pipeline(pipeline).caches
            and scenario.caches is not None
            and scenario.caches.get(fault.cache) is not None
        )
    assert isinstance(fault, NearlineOutage)
    nearline = scenario.nearline
    if nearline is None:
        return False
    return any(
        nearline.refresh_of(store) is not None or (nearline.entities(store) == "items" and nearline.model_publish_interval_s is not None)
        for store in scenario.pipeline(pipeline).vector_stores
    )


def nearline_stores(scenario: Scenario, pipeline: str) -> dict[str, NearlineStore]:
    """The nearline stores this pipeline reads, when the scenario has a nearline section."""
    nearline = scenario.nearline
    if nearline is None:
        return {}
    stores = {}
    for name in scenario.pipeline(pipeline).vector_stores:
        refresh = nearline.refresh_of(name)
        fresh = refresh is not None and refresh.mode == "periodic" and refresh.interval_s == 0
        store = NearlineStore(scenario.store_count(name), always_fresh=fresh, entities=scenario.store_entities(name))
        store.consistent = nearline.version_policy == "consistent"
        stores[name] = store
    return stores


def shadow_sampling(scenario: Scenario, stores: dict[str, NearlineStore], retrieve: Retrieval | None) -> ShadowSampling | None:
    """Which requests shadow scoring takes, when the scenario asks for it, the pipeline reads nearline vectors and
    the scored world's retrieval is given (`app.quality.shadow_retrieval`): at its reads of item vectors, or of
    user-interest vectors when it reads no item vectors (the shipped stores `items` and `users`; a pipeline that
    reads a store of its own naming is not shadow-scored)."""
    model = scenario.model
    if model is None or model.shadow_rate == 0 or not stores or retrieve is None:
        return None
    store = "items" if "items" in stores else "users" if "users" in stores else None  # a named store is not shadow-scored
    if store is None:
        return None
    return ShadowSampling(model.shadow_rate, model.shadow_requests, retrieve, stream(scenario.seed, "shadow-candidates"), store)


@dataclass(frozen=True)
class RequestDraws:
    """A block of requests with their draws, as arrays: service times [requests, stage slots] (s; at a sharded
    stage, its slowest shard's), each sharded slot's shard services [requests, shards] (s), the latency a cache
    miss would add at each slot (s; None without read-through caches), the candidate items whose vectors are
    measured [requests, sample size] (None: none) and the pauses before each step [requests, steps] (s; None:
    none; a replayed trace's, `core.replay`)."""

    block: RequestBlock
    service_s: np.ndarray
    shard_s: dict[int, np.ndarray]
    miss_s: np.ndarray | None
    sample: np.ndarray | None
    hop_s: np.ndarray | None = None


class RequestSource:
    """The requests offered to one pipeline, in blocks, each with its draws: its service time at every stage
    slot (alone on a server), the latency a cache miss would add at each read-through visit, and the candidate
    items whose vectors are measured.

    `reads`: (slot, cache) of the pipeline's read-through visits to a configured cache; `caches`: how many
    cache lookups the pipeline makes (`Pipeline.lookups`); `sample_size`: candidates measured per request (0: none); `trace`: arrival times,
    service times and pauses between steps that replace the drawn ones where it has them (`core.replay`).
    """

    def __init__(
        self,
        scenario: Scenario,
        pipeline: str,
        samplers: dict[str, Sampler],
        reads: list[tuple[int, str]],
        caches: int,
        sample_size: int,
        trace: ServiceTrace | None = None,
    ) -> None:
        self.scenario, self.samplers, self.caches, self.sample_size = scenario, samplers, caches, sample_size
        self.trace = trace
        self.stage_names = scenario.pipeline(pipeline).stages
        self.sharded = [(slot, name) for slot, name in enumerate(self.stage_names) if scenario.stages[name].shards > 1]
        self.reads = bool(reads)
        self.miss_slots = [(slot, cache) for slot, cache in reads if f"cache:{cache}" in samplers]

    @classmethod
    def for_pipeline(
        cls,
        scenario: Scenario,
        pipeline: str,
        samplers: dict[str, Sampler],
        caches: dict[str, Policy],
        stores: dict[str, NearlineStore],
        trace: ServiceTrace | None = None,
    ) -> RequestSource:
        """The request source of a pipeline run with these cache policies and nearline stores (and a trace to replay)."""
        reads = [(slot, call.reads) for slot, call in enumerate(scenario.pipeline(pipeline).calls) if call.reads in caches]
        sample_size = (
            scenario.nearline.staleness_sample
            if scenario.nearline is not None and any(s.entities == "items" for s in stores.values())
            else 0
        )
        return cls(scenario, pipeline, samplers, reads, len(scenario.pipeline(pipeline).lookups), sample_size, trace)

    def draws(self, duration_s: float) -> Iterator[RequestDraws]:
        """The requests arriving in [0, duration_s), a block at a time, in order of arrival, as arrays."""
        scenario = self.scenario
        seed = scenario.seed
        rngs = [stream(seed, f"service:{name}") for name in self.stage_names]
        miss_rngs = {cache: stream(seed, f"miss:{cache}") for _, cache in self.miss_slots}
        sample_rng, items = stream(seed, "candidate-sample"), ZipfSampler(scenario.traffic.items)
        k = len(self.stage_names)
        arrivals = self.trace.arrivals(duration_s) if self.trace is not None else None
        for block in request_blocks(scenario.traffic, duration_s, seed, arrivals):
            n = len(block.arrival_s)
            shard_s = {slot: self._shards(name, rngs[slot], block.candidates) / 1000 for slot, name in self.sharded}
            draws = [
                np.zeros(n) if slot in shard_s else self._draw(name, rng, block.candidates)
                for slot, (name, rng) in enumerate(zip(self.stage_names, rngs))
            ]
            service_s = np.column_stack(draws) / 1000
            for slot, shards in shard_s.items():
                service_s[:, slot] = shards.max(axis=1)  # a sharded visit takes its slowest shard, with no waiting
            miss_s = self._misses(miss_rngs, n, k) if self.reads else None
            sample = items.sample(sample_rng, n * self.sample_size).reshape(n, self.sample_size) if self.sample_size else None
            draws = RequestDraws(block, service_s, shard_s, miss_s, sample)
            yield draws if self.trace is None else self.trace.apply(draws)

    def blocks(self, duration_s: float) -> Iterator[list[Request]]:
        """The requests arriving in [0, duration_s), a block at a time, in order of arrival."""
        warmup = self.scenario.warmup_s
        for draws in self.draws(duration_s):
            block = draws.block
            services = draws.service_s.tolist()  # seconds, a row per request
            miss_rows = draws.miss_s.tolist() if draws.miss_s is not None else None
            hop_rows = draws.hop_s.tolist() if draws.hop_s is not None else None
            requests = []
            for i, (arrival, user, candidates) in enumerate(zip(block.arrival_s.tolist(), block.user.tolist(), block.candidates.tolist())):
                request = Request(block.first_id + i, arrival, user, candidates, arrival >= warmup, services[i])
                if self.caches:
                    request.cache_hit = [np.nan] * self.caches
                if miss_rows is not None:
                    request.miss_s = miss_rows[i]
                if draws.sample is not None:
                    request.sample = draws.sample[i]
                if draws.shard_s:
                    request.shard_s = {slot: shards[i].tolist() for slot, shards in draws.shard_s.items()}
                if hop_rows is not None:
                    request.hop_s = hop_rows[i]
                requests.append(request)
            yield requests

    def _misses(self, rngs: dict[str, np.random.Generator], n: int, k: int) -> np.ndarray:
        """Per request and stage slot, the latency (s) a cache miss would add there (0 where no cache is read)."""
        misses = np.zeros((n, k))
        for slot, cache in self.miss_slots:
            misses[:, slot] = self.samplers[f"cache:{cache}"].sample(rngs[cache], n, 1.0) / 1000
        return misses

    def _shards(self, name: str, rng: np.random.Generator, candidates: np.ndarray) -> np.ndarray:
        """Each request's shard services (ms) at a sharded stage [requests, shards]: its candidates split into
        `shards` parts whose sizes differ by at most 1, each drawn at its own count."""
        shards = self.scenario.stages[name].shards
        sizes = shard_sizes(candidates, shards)
        return self._draw(name, rng, sizes.ravel()).reshape(len(candidates), shards)

    def _draw(self, name: str, rng: np.random.Generator, candidates: np.ndarray) -> np.ndarray:
        """Each request's service time (ms) at a stage, alone on a server: a profile measured by candidates
        reads the request's own count, one measured by batch a batch of one; plus the stage's cost per candidate."""
        sampler = self.samplers[name]
        work = 1.0 if sampler.work_key == "batch" else candidates
        per_candidate_us = self.scenario.stages[name].per_candidate_us
        drawn = sampler.sample(rng, len(candidates), work)
        return drawn + candidates * (per_candidate_us / 1000) if per_candidate_us else drawn
