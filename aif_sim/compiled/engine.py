"""Run one pipeline with numba kernels, request by request as `sim.engine` would.

The run, block by block of arrivals (the blocks of `core.system.RequestSource.draws`, drawn a block or two
ahead by a thread of their own):
1. the block's event times are simpy's: the arrival process wakes at `now + (arrival - now)`;
2. `kernels.advance` moves every request in the system through the pipeline's steps, step by step, each
   stage swept in order of arrival there, but only as far as is known: the next block's first arrival A
   reaches any step no earlier than A, so a request reaching step k at or after A waits (its arrival time
   kept) and is merged into step k's sweep with the next block; each stage's state carries over (server
   heaps, batching queues and dispatchers, `batching.BatchState`, the nodes' waiters and balancers,
   `fleets.FleetState`), and so do the caches (`caches.CacheState`) with their inserts not yet due; the
   fleet visits that started before A are accounted per node (`Recorder.node_busy`) in the order they started;
3. the vector fetches that ended before A read the nearline stores, in time order (`nearline`);
4. the batches and requests that finished before the block's last arrival are accounted (`Recorder.batch`,
   `Recorder.account`) in the order they finished, as one group: exactly what simpy's `recorder.flush()`
   after that block sees.
At the end the run stops at the simulated time `PipelineSimulation.run` would stop at (the first of its
progress steps by which every request has finished, or the horizon); requests finishing later stay in
flight, with the visits they ended before it. Memory: the requests in the system and two blocks ahead.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from queue import Full, Queue

import numpy as np

from aif_sim.compiled.batching import BatchState
from aif_sim.compiled.caches import CacheState
from aif_sim.compiled.deadlines import DeadlineState, deadlines
from aif_sim.compiled.fleets import FleetState
from aif_sim.compiled.hedges import HedgeState
from aif_sim.compiled.kernels import advance, event_times
from aif_sim.compiled.nearline import CompiledNearline
from aif_sim.compiled.support import unsupported
from aif_sim.core.latency import Sampler
from aif_sim.core.refresh import version_flushes
from aif_sim.core.replay import ServiceTrace
from aif_sim.core.sampling import sampled
from aif_sim.core.shadow import Retrieval
from aif_sim.core.system import RequestDraws, RequestSource, cache_policies, run_step_s, shadow_sampling
from aif_sim.metrics.recorder import Recorder, RequestSink, VectorReads
from aif_sim.scenario.pipelines import Pipeline
from aif_sim.scenario.schema import Scenario, StageSlowdown


def run_compiled(
    scenario: Scenario,
    pipeline: str,
    samplers: dict[str, Sampler],
    sink: RequestSink | None = None,
    progress: Callable[[float], None] | None = None,
    stop: Callable[[], bool] | None = None,
    trace: ServiceTrace | None = None,
    retrieve: Retrieval | None = None,
) -> Recorder:
    """Simulate the pipeline as `PipelineSimulation(scenario, pipeline, samplers, sink, trace, 0, retrieve).run(progress,
    stop)` does and return its recorder (`trace`: service times to replay; `retrieve`: the shadow-scored world's
    retrieval). `progress(now)` is called after each block of arrivals and at the end; `stop()` is asked before each
    block: when it turns true the run ends there, partial. Raises ValueError when `unsupported` gives a reason."""
    reason = unsupported(scenario, pipeline, samplers)
    if reason is not None:
        raise ValueError(reason)
    policies = cache_policies(scenario, pipeline)
    stores = scenario.pipeline(pipeline).vector_stores if scenario.nearline is not None else []
    recorder = Recorder.for_pipeline(scenario, pipeline, sink, policies, stores)
    vectors = _Vectors(scenario, pipeline, samplers, recorder, retrieve) if stores else None
    flushes = [*version_flushes(scenario, policies, samplers, vectors.nearline.world if vectors else None), *scenario.faults]
    caches = CacheState(policies, scenario.traffic.users.count, flushes)
    pools = _Pools(scenario, pipeline, list(policies), samplers, trace is not None)
    source = RequestSource.for_pipeline(scenario, pipeline, samplers, policies, vectors.nearline.stores if vectors else {}, trace)
    system = _Requests(
        len(pools.names),
        len(pools.cache_of),
        len(policies),
        source.sample_size if vectors and vectors.nearline.stores[vectors.name].entities == "items" else 1,
        pools.fleets.shard_at,
        pools.fleets.shard_columns,
        pools.steps,
    )
    blocks = _ahead(source.draws(scenario.duration_s))
    upcoming = next(blocks, None)
    upcoming_t = event_times(upcoming.block.arrival_s, 0.0) if upcoming is not None else None
    until = _end(scenario, math.inf)[1]  # the clock when a run stops at its horizon
    now = 0.0  # the last arrival so far: everything before it is accounted
    last_end = -math.inf  # the latest finish so far
    while upcoming is not None:
        if stop is not None and stop():
            recorder.stop(now)
            _close(recorder, system, caches, vectors, pools.fleets, now, now)
            return recorder
        draws, t = upcoming, upcoming_t
        last = float(t[-1])
        upcoming = next(blocks, None)
        limit = math.inf
        if upcoming is not None:
            upcoming_t = event_times(upcoming.block.arrival_s, last)
            limit = float(upcoming_t[0])
        measured = draws.block.arrival_s >= scenario.warmup_s
        system.extend(draws, measured, t, deadlines(scenario, draws.block.arrival_s, t))
        recorder.arrivals(draws.block.arrival_s, measured)
        caches.reserve(len(system))
        pools.advance(system, caches, limit, until)
        pools.fleets.emit(recorder, min(limit, until))
        if vectors is not None:
            vectors.read(system, min(limit, until))
            vectors.nearline.advance(last)
        pools.dropped.emit(recorder, last)
        last_end = max(last_end, _flush(recorder, system, last, vectors, pools.batches, pools.fleets, caches))
        now = last
        if progress is not None:
            progress(now)
    if len(system):
        last_end = max(last_end, float(system.column("end_s").max()))
    end, clock = _end(scenario, max(now, last_end))
    if vectors is not None:
        vectors.nearline.advance(clock)
    pools.dropped.emit(recorder, clock)
    _flush(recorder, system, clock, vectors, pools.batches, pools.fleets, caches)
    _close(recorder, system, caches, vectors, pools.fleets, end, clock)
    if progress is not None:
        progress(end)
    return recorder


# --- the run's requests ----------------------------------------------------------------------------------
def _ahead(blocks: Iterator[RequestDraws], depth: int = 2) -> Iterator[RequestDraws]:
    """The blocks, drawn by a thread of their own up to `depth` ahead, so the draws (NumPy, which releases the
    GIL) overlap the kernels (which release it too) on a second core. The same blocks, in the same order."""
    queue: Queue[RequestDraws | BaseException | None] = Queue(depth)
    done = threading.Event()

    def draw() -> None:
        try:
            for block in blocks:
                while not done.is_set():
                    try:
                        queue.put(block, timeout=0.1)
                        break
                    except Full:
                        continue
                if done.is_set():
                    return
            queue.put(None)
        except BaseException as error:  # handed to the consumer, raised there
            queue.put(error)

    thread = threading.Thread(target=draw, daemon=True)
    thread.start()
    try:
        while (item := queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        done.set()


class _Requests:
    """The requests in the system (arrived, not yet accounted), as columns in order of arrival (`column(name)`,
    views of buffers reused from block to block); `step` is the step each is at (the number of steps once
    finished), `arrive` when it arrived there."""

    def __init__(
        self,
        stages: int,
        lookups: int,
        caches: int,
        entities: int,
        shard_at: np.ndarray,
        shard_columns: int,
        steps: int,
        capacity: int = 1024,
    ) -> None:
        self.shard_at = shard_at  # each sharded slot's first column of `shard_s` (-1: not sharded)
        self.kinds: dict[str, tuple[tuple[int, ...], type]] = {
            "ids": ((), np.int64),
            "arrival_s": ((), np.float64),
            "users": ((), np.int64),
            "candidates": ((), np.int64),
            "measured": ((), np.bool_),
            "service": ((stages,), np.float64),
            "shard_s": ((shard_columns,), np.float64),  # the shard services of its sharded visits
            "miss": ((stages,), np.float64),
            "cache_hit": ((lookups,), np.float64),
            "cache_step": ((caches,), np.int64),  # its entry of each request-keyed cache: the step that put it in (-1: none)
            "cache_in": ((caches,), np.float64),  # and when (NaN: none)
            "pending": ((), np.int64),
            "step_end": ((), np.float64),
            "worst": ((), np.int64),
            "end_order": ((), np.int64),
            "rank": ((), np.int64),
            "user_vector_s": ((), np.float64),  # when the user vector it took from the cache was made (NaN: none)
            "entities": ((entities,), np.int64),  # whose nearline vectors it reads: its candidate sample, or its user
            "read": ((), np.bool_),
            "ages": ((entities,), np.float64),
            "stale": ((), np.int64),
            "mismatched": ((), np.int64),
            "times": ((stages, 3), np.float64),
            "outcome": ((), np.int64),
            "end_s": ((), np.float64),
            "arrive": ((), np.float64),
            "step": ((), np.int64),
            "hop": ((steps,), np.float64),  # its pause before each step (a replayed trace's; else 0)
            "deadline": ((), np.float64),  # when it is abandoned (`deadlines`; inf: never)
        }
        self.n = 0
        self.buffers = {name: np.empty((capacity, *shape), dtype) for name, (shape, dtype) in self.kinds.items()}

    def __len__(self) -> int:
        return self.n

    def column(self, name: str) -> np.ndarray:
        return self.buffers[name][: self.n]

    def extend(self, draws: RequestDraws, measured: np.ndarray, t: np.ndarray, deadline: np.ndarray) -> None:
        block, k = draws.block, len(t)
        size = self.n + k
        capacity = len(self.buffers["ids"])
        if size > capacity:
            grown = {}
            for name, (shape, dtype) in self.kinds.items():
                grown[name] = np.empty((max(size, 2 * capacity), *shape), dtype)
                grown[name][: self.n] = self.column(name)
            self.buffers = grown
        new = slice(self.n, size)
        b = self.buffers
        b["ids"][new] = np.arange(block.first_id, block.first_id + k)
        b["arrival_s"][new] = block.arrival_s
        b["users"][new] = block.user
        b["candidates"][new] = block.candidates
        b["measured"][new] = measured
        b["service"][new] = draws.service_s
        for slot, shards in draws.shard_s.items():
            at = self.shard_at[slot]
            b["shard_s"][new, at : at + shards.shape[1]] = shards
        b["miss"][new] = 0.0 if draws.miss_s is None else draws.miss_s
        b["cache_hit"][new] = np.nan
        b["cache_step"][new] = -1
        b["cache_in"][new] = np.nan
        b["user_vector_s"][new] = np.nan
        b["pending"][new] = 0
        b["rank"][new] = b["ids"][new]
        b["entities"][new] = draws.block.user[:, None] if draws.sample is None else draws.sample
        b["read"][new] = False
        b["times"][new] = np.nan
        b["outcome"][new] = 0
        b["end_s"][new] = np.nan
        b["hop"][new] = 0.0 if draws.hop_s is None else draws.hop_s
        b["arrive"][new] = t + b["hop"][new, 0]  # simpy's `now + delay` after the pause (none: + 0)
        b["step"][new] = 0
        b["deadline"][new] = deadline
        self.n = size

    def keep(self, mask: np.ndarray) -> np.ndarray:
        """Keep the requests where `mask` holds, in order; each kept request's new index, by its old one."""
        kept = np.flatnonzero(mask)
        if len(kept) < self.n:
            for name in self.kinds:
                self.buffers[name][: len(kept)] = np.take(self.column(name), kept, axis=0)
        self.n = len(kept)
        return np.cumsum(mask) - 1


class _Pools:
    """The stage pools' state (see `kernels`) and the pipeline's steps as arrays."""

    def __init__(self, scenario: Scenario, pipeline: str, caches: list[str], samplers: dict[str, Sampler], traced: bool) -> None:
        self.names = scenario.pipeline(pipeline).stages
        configs = [scenario.stages[name] for name in self.names]
        groups = scenario.pipeline(pipeline).step_slots
        self.steps = len(groups)
        self.step_at = np.cumsum([0] + [len(group) for group in groups]).astype(np.int64)
        self.step_slots = np.array([slot for group in groups for slot in group], dtype=np.int64)
        self.free_at = np.cumsum([0] + [config.servers for config in configs]).astype(np.int64)
        self.free = np.full(int(self.free_at[-1]), -np.inf)
        self.queue_limit = np.array([-1 if c.queue_limit is None else c.queue_limit for c in configs], dtype=np.int64)
        waiters = [max(0, int(limit)) if c.nodes == 1 else 0 for limit, c in zip(self.queue_limit, configs)]  # a fleet's: per node
        self.left_at = np.cumsum([0, *waiters]).astype(np.int64)
        self.left = np.empty(max(1, int(self.left_at[-1])))
        self.left_n = np.zeros(len(configs), np.int64)
        # the timeout exactly as sim.pools computes it (ms / 1000)
        self.timeout_s = np.array([math.inf if c.timeout_ms is None else c.timeout_ms / 1000 for c in configs])
        self.slow_at, self.slow_t, self.slow_v = _slowdowns(scenario, self.names)
        self.guard, self.reads, self.cache_of = _cache_slots(scenario.pipeline(pipeline), caches)
        self.batches = BatchState(scenario, self.names, samplers, traced)
        self.hedges = HedgeState(scenario, pipeline, samplers)
        self.fleets = FleetState(scenario, pipeline, self.hedges)
        shards = max((config.shards for config in configs), default=1)
        cut_off = len(configs) * shards if scenario.deadline_ms is not None else 0  # visits cut off by deadlines
        self.dropped = DeadlineState(cut_off + self.hedges.wasted_per_request)  # and losing hedge copies
        self.numbered = np.zeros(1, np.int64)  # visit ends numbered so far (`batching.visit_over`)
        self.work = _workspace(0, len(self.batches.state[0]))

    def advance(self, system: _Requests, caches: CacheState, limit: float, until: float) -> None:
        self.batches.prepare(len(system))
        self.fleets.prepare(len(system))
        self.dropped.prepare(len(system))
        if len(self.work[0]) < len(system):
            self.work = _workspace(2 * len(system), len(self.batches.state[0]))
        columns = ("arrive", "step", "outcome", "end_s", "pending", "step_end", "worst", "end_order", "rank")
        advance(
            self.step_at,
            self.step_slots,
            self.free_at,
            self.free,
            self.queue_limit,
            self.left_at,
            self.left,
            self.left_n,
            self.timeout_s,
            self.slow_at,
            self.slow_t,
            self.slow_v,
            self.guard,
            self.reads,
            caches.state,
            (self.cache_of, caches.keyed, system.column("cache_step"), system.column("cache_in")),
            self.batches.slot_batch,
            self.batches.state,
            self.fleets.fleet_of,
            self.fleets.state,
            (self.hedges.state, system.column("candidates")),
            self.dropped.state,
            system.column("shard_s"),
            (
                *(system.column(name) for name in columns),
                self.numbered,
                system.column("hop"),
                system.column("ids"),
                system.column("deadline"),
            ),
            system.column("users"),
            system.column("measured"),
            system.column("service"),
            system.column("miss"),
            system.column("cache_hit"),
            system.column("user_vector_s"),
            system.column("times"),
            self.work,
            limit,
            until,
        )


def _workspace(requests: int, queues: int) -> tuple:
    """The kernel's scratch arrays (`kernels.advance`): a step's requests, their keys and ties, as many to merge
    them through, and the batching queues joined at the current time."""
    rows = (np.empty(requests, np.int64), np.empty(requests), np.empty(requests, np.int64))
    return (*rows, *(np.empty_like(row) for row in rows), np.zeros(queues, np.int64))


class _Vectors:
    """The nearline reads of a pipeline that fetches vectors from one store: each completed visit to the stage
    that fetches them reads the request's `entities` from the store when it ends, and for a request shadow
    scoring takes, the vectors of a larger candidate set (`core.flow`)."""

    def __init__(
        self, scenario: Scenario, pipeline: str, samplers: dict[str, Sampler], recorder: Recorder, retrieve: Retrieval | None
    ) -> None:
        calls = [(slot, call.vectors) for slot, call in enumerate(scenario.pipeline(pipeline).calls) if call.vectors]
        assert len(calls) == 1, "a pipeline reads one nearline store"
        ((self.slot, self.name),) = calls
        self.nearline = CompiledNearline(scenario, pipeline, samplers, recorder)
        self.shadow = shadow_sampling(scenario, self.nearline.stores, retrieve)
        if self.shadow is not None:
            recorder.shadow_samples = self.shadow.samples
        self.read_from = -math.inf  # visits ending before this have been read

    def read(self, system: _Requests, before: float) -> None:
        """Read for the visits that ended in [read_from, before), in time order."""
        ends = system.column("times")[:, self.slot, 2]
        index = np.flatnonzero((ends >= self.read_from) & (ends < before))  # NaN (no completed visit) compares false
        self.read_from = before
        if len(index) == 0:
            return
        index = index[np.argsort(ends[index], kind="stable")]
        first = 0
        for taken in self._shadowed(system, index):  # each shadow read right after its request's own read
            self._read(system, index[first : taken + 1], ends)
            self._shadow_read(system, index[taken], ends[index[taken]])
            first = taken + 1
        self._read(system, index[first:], ends)

    def _read(self, system: _Requests, index: np.ndarray, ends: np.ndarray) -> None:
        if len(index):
            made, _, stale, mismatched = self.nearline.read(self.name, ends[index], system.column("entities")[index])
            system.column("ages")[index] = ends[index, None] - made
            system.column("stale")[index] = stale
            system.column("mismatched")[index] = mismatched
            system.column("read")[index] = True

    def _shadowed(self, system: _Requests, index: np.ndarray) -> list[int]:
        """Which of these reads (positions in `index`) shadow scoring takes: measured requests its hash samples, up
        to its limit (`ShadowSampling.wants`)."""
        shadow = self.shadow
        if shadow is None:
            return []
        wanted = system.column("measured")[index] & sampled(system.column("ids")[index], shadow.rate)
        return np.flatnonzero(wanted)[: max(0, shadow.limit - len(shadow.samples))].tolist()

    def _shadow_read(self, system: _Requests, i: int, now: float) -> None:
        """The vectors shadow scoring takes for request i, read at `now` (`ShadowSampling.take`)."""
        shadow, store = self.shadow, self.nearline.stores[self.name]
        assert shadow is not None

        def read(entities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            made, versions, _, _ = self.nearline.read(self.name, np.array([now]), entities[None, :])
            return made[0], versions[0]

        user_vector_s = float(system.column("user_vector_s")[i])
        shadow.take(int(system.column("users")[i]), float(now), read, store, None if math.isnan(user_vector_s) else user_vector_s)


def _cache_slots(pipeline: Pipeline, caches: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per slot, the lookup (`Pipeline.lookups`, a column of the cache flags) guarding its call and the one it reads
    through (-1: none), and each lookup's index in `caches`."""
    guard = np.full(len(pipeline.stages), -1, np.int64)
    reads = guard.copy()
    for column, lookup in enumerate(pipeline.lookups):
        (guard if lookup.guard else reads)[lookup.slot] = column
    return guard, reads, np.array([caches.index(lookup.cache) for lookup in pipeline.lookups], np.int64)


def _slowdowns(scenario: Scenario, names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each stage's service multiplier over time, as `sim.background.fault` changes it: `*= factor` at `at_s`,
    `/= factor` at `at_s + duration_s`, replayed in time order (faults in scenario order at equal times).
    Returns `slow_at` (offsets per slot), `slow_t` (change times) and `slow_v` (the multiplier from then on)."""
    changes: list[tuple[float, int, str, float, bool]] = []
    for order, fault in enumerate(scenario.faults):
        if isinstance(fault, StageSlowdown) and fault.stage in names:
            changes.append((fault.at_s, order, fault.stage, fault.factor, True))
            changes.append((fault.at_s + fault.duration_s, len(scenario.faults) + order, fault.stage, fault.factor, False))
    value = dict.fromkeys(names, 1.0)
    per_slot: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for at, _, stage, factor, starts in sorted(changes):
        value[stage] = value[stage] * factor if starts else value[stage] / factor
        per_slot[stage].append((at, value[stage]))
    slow_at = np.cumsum([0] + [len(per_slot[name]) for name in names]).astype(np.int64)
    slow_t = np.array([at for name in names for at, _ in per_slot[name]], dtype=np.float64)
    slow_v = np.array([v for name in names for _, v in per_slot[name]], dtype=np.float64)
    return slow_at, slow_t, slow_v


# --- accounting ------------------------------------------------------------------------------------------
def _flush(
    recorder: Recorder,
    system: _Requests,
    before: float,
    vectors: _Vectors | None,
    batches: BatchState,
    fleets: FleetState,
    caches: CacheState,
) -> float:
    """Account the batches and the requests that finished before `before`, in the order they finished, and drop
    the requests (and their entries of request-keyed caches); the latest finish among them (-inf: none)."""
    for slot, start, service, size, members, node in batches.finished_batches(before).tolist():
        recorder.batch(int(slot), start, service, int(members), int(size), None if node < 0 else int(node))
    end_s = system.column("end_s")
    done = end_s < before  # NaN (not finished) compares false
    index = np.flatnonzero(done)
    if len(index) == 0:
        return -math.inf
    ends = end_s[index]
    by_end = np.argsort(ends)
    order, ends = index[by_end], ends[by_end]
    if (ends[1:] == ends[:-1]).any():  # equal finishes (a batch's members): in rank order, then in arrival order
        order = index[np.lexsort((system.column("rank")[index], end_s[index]))]
        ends = end_s[order]

    def take(name: str) -> np.ndarray:
        return np.take(system.column(name), order, axis=0)  # faster than indexing for rows of several values

    columns = ("ids", "arrival_s", "users", "candidates", "measured", "times", "service", "outcome", "cache_hit")
    ids, arrival_s, users, candidates, measured, times, service, outcome, cache_hit = (take(name) for name in columns)
    reads = None
    if vectors is not None:
        reads = {vectors.name: VectorReads(*(take(name) for name in ("read", "ages", "stale", "mismatched")))}
    caches.release(ends, take("cache_in"))
    recorder.account(ids, arrival_s, users, candidates, measured, times, service, outcome, ends, cache_hit, reads)
    recorder.finished(outcome, measured)
    new_index = system.keep(~done)
    batches.remap(new_index)
    fleets.remap(new_index)
    return float(ends[-1])


def _close(
    recorder: Recorder, system: _Requests, caches: CacheState, vectors: _Vectors | None, fleets: FleetState, end: float, clock: float
) -> None:
    """Close the recorder at `end` with the requests still in flight at the simulated time `clock`: the visits
    they ended before it count, the fleet visits they started before it are busy time, and the cache inserts and
    flushes and background events before it happen."""
    fleets.emit(recorder, clock)
    caches.settle(clock)
    if vectors is not None:
        vectors.nearline.advance(clock)
    caches.publish()
    times = system.column("times").copy()
    times[~(times[..., 2] < clock)] = np.nan
    recorder.close(end, (times, system.column("measured").copy()))


def _end(scenario: Scenario, last_event: float) -> tuple[float, float]:
    """When `PipelineSimulation.run` stops, given its last event (the last arrival or finish): (its `now`, the
    simulated clock then). It runs in steps `env.run(until=now)`, the clock moving to `clock + (now - clock)`
    and processing the events before it; it stops at the horizon, or after the step whose clock passed the
    last event."""
    horizon = scenario.duration_s + scenario.drain_s
    step = run_step_s(scenario)
    now = clock = 0.0
    while True:
        now = min(now + step, horizon)
        clock = clock + (now - clock)
        if now >= horizon or last_event < clock:
            return now, clock
