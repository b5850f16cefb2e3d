"""The recorder: the only code that changes a counter of a pipeline run.

Engines call it when a request arrives, when a batch is served and when a request leaves; a request
carries its own stage times (`Request.times`). Finished requests are buffered and accounted in numpy
blocks (`flush`, after every block of arrivals): stage latency, wait, utilisation and compute, the
end-to-end and no-contention latency, the critical path, the time series and the per-request rows.
Nothing is kept per finished request beyond the current block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain
from typing import Any, Protocol

import numpy as np

from aif_sim.core.cache import Policy, RequestCache
from aif_sim.core.nearline import NearlineStore
from aif_sim.core.refresh import gauge_prefix, store_gauges
from aif_sim.core.request import Outcome, Request, Window
from aif_sim.core.shadow import ShadowSample
from aif_sim.core.system import touches
from aif_sim.metrics.bill import cost_per_hour, memory_bytes
from aif_sim.metrics.histogram import PERCENTILES, LogHistogram
from aif_sim.metrics.lazy import passes
from aif_sim.metrics.timeseries import Timeseries
from aif_sim.metrics.trace import RequestTrace
from aif_sim.scenario.pipelines import Pipeline
from aif_sim.scenario.schema import Scenario

SLO_MISS_BUDGET = 0.01  # a run meets its SLO when at most 1% of offered requests miss it
RECOVERY_MARGIN = 0.10  # a fault's band: p99 up to 10% above its level before the fault
BASELINE_S = 10  # seconds before a fault whose median p99 is that level
STORE_LABEL = {"items": "item", "users": "user"}  # of the shipped stores' staleness keys; a named store's is its name
STORE_CHANGES = {"items": "item_updates", "users": "user_events"}  # what changes a store's entities


def store_label(store: str) -> str:
    """What a store's staleness keys start with: `item`, `user`, or a named store's name."""
    return STORE_LABEL.get(store, store)


@dataclass(frozen=True)
class CompletedBlock:
    """Completed measured requests of one flush, as columns; `stage_ms[:, slot]` is NaN where not visited,
    `cache_hit[:, i]` 1.0 / 0.0 / NaN (hit, miss, not consulted) at the pipeline's i-th cache lookup
    (`Pipeline.lookups`)."""

    request_id: np.ndarray
    arrival_s: np.ndarray
    user: np.ndarray
    candidates: np.ndarray
    latency_ms: np.ndarray
    stage_ms: np.ndarray
    cache_hit: np.ndarray


@dataclass(frozen=True)
class FaultWindow:
    """A fault as the scenario states it (`fields`: its kind, `at_s` and its own fields), its start and the end
    of its effect (its start for an instantaneous fault)."""

    fields: dict[str, Any]
    at_s: float
    end_s: float


class VectorRecord:
    """Ages of the nearline vectors read from one store by completed measured requests."""

    def __init__(self, entities: str) -> None:
        self.entities = entities  # what the store holds vectors of: items or users
        self.age = LogHistogram()
        self.stale = 0
        self.mismatched = 0
        self.changes = True  # whether the store's entities change during the run (else none of its vectors can be stale)


@dataclass(frozen=True)
class VectorReads:
    """The vectors finished requests read from one store: whether each read (rows where not are ignored), the
    ages [requests, entities read] (s), and how many were stale and of another model version than the serving one."""

    read: np.ndarray
    ages: np.ndarray
    stale: np.ndarray
    mismatched: np.ndarray


class RequestSink(Protocol):
    """Receives the completed measured requests (the per-request output file)."""

    def write(self, pipeline: str, stages: list[str], caches: list[str], block: CompletedBlock) -> None: ...


def _hit_share(flags: np.ndarray, columns: list[int]) -> np.ndarray:
    """Per request, the share of its lookups at these flag columns that hit (NaN: none consulted)."""
    if len(columns) == 1:
        return flags[:, columns[0]]
    chosen = flags[:, columns]
    looked = np.count_nonzero(~np.isnan(chosen), axis=1)
    hits = np.count_nonzero(chosen == 1.0, axis=1)
    return np.divide(hits, looked, out=np.full(len(flags), np.nan), where=looked > 0)


def _cache_flags(requests: list[Request], caches: int) -> np.ndarray:
    """The requests' cache flags [requests, lookups]: 1.0 hit, 0.0 miss, NaN not consulted."""
    if caches == 0:
        return np.empty((len(requests), 0))
    return np.fromiter(chain.from_iterable(r.cache_hit for r in requests), float, caches * len(requests)).reshape(len(requests), caches)


def _vector_reads(requests: list[Request], stores: list[str]) -> dict[str, VectorReads]:
    """The vectors the requests read (`Request.vectors`), per store, as arrays."""
    n, out = len(requests), {}
    for name in stores:
        index = [i for i, r in enumerate(requests) if r.vectors is not None and r.vectors[0] == name]
        rows = [requests[i].vectors for i in index]
        read = np.zeros(n, bool)
        read[index] = True
        ages = np.zeros((n, len(rows[0][1]) if rows else 0))
        stale, mismatched = np.zeros(n, np.int64), np.zeros(n, np.int64)
        if rows:
            ages[index] = [v[1] for v in rows]
            stale[index] = [v[2] for v in rows]
            mismatched[index] = [v[3] for v in rows]
        out[name] = VectorReads(read, ages, stale, mismatched)
    return out


def _times(requests: list[Request], stages: int) -> np.ndarray:
    """The requests' stage times as an array [requests, stages, (enter, start, end)]."""
    flat = np.fromiter(chain.from_iterable(r.times for r in requests), float, 3 * stages * len(requests))
    return flat.reshape(len(requests), stages, 3)


def _running_sum(total: float, values: np.ndarray) -> float:
    """`total` plus each value in turn, as a loop of `+=` would add them."""
    return float(np.add.accumulate(np.concatenate(([total], values)))[-1]) if len(values) else total


def _node_utilization(stage: StageRecord, per_s: float) -> list[float]:
    """Each node's utilisation (its busy share of its threads): the stage's own with one node."""
    if stage.nodes == 1:
        return [stage.busy_window_s / stage.servers * per_s]
    threads = stage.servers // stage.nodes
    return [busy / threads * per_s for busy in stage.node_busy_window_s]


class StageRecord:
    """One stage pool in one pipeline run."""

    def __init__(self, servers: int, batching: bool, nodes: int = 1) -> None:
        self.servers = servers
        self.batching = batching  # busy time and compute come per batch, not per visit
        self.nodes = nodes
        self.node_busy_window_s = [0.0] * nodes  # per node, server-seconds busy inside the window (with several nodes)
        self.hedges = self.retries = 0  # copies sent by hedging, visits sent again after a failure
        self.wasted_busy_s = 0.0  # service of visits whose result nobody used (cut off by a deadline, losing hedge copies)
        self.shard_skew_s = 0.0  # summed over measured sharded visits: slowest shard's end - median shard's end
        self.sharded_visits = 0
        self.latency = LogHistogram()
        self.wait = LogHistogram()
        self.busy_window_s = 0.0  # server-seconds busy inside the measurement window
        self.compute_s = 0.0  # service time spent on measured requests (a batch's time split evenly)
        self.useful_s = 0.0  # the completed measured requests' own service here
        self.failed_s = 0.0  # the service of measured requests that failed, at the visits they finished here
        self.critical_ms = 0.0  # time this stage was on the critical path of completed measured requests


class Recorder:
    """Counts, latencies and stage statistics of one pipeline over one run."""

    def __init__(
        self,
        pipeline: Pipeline,
        stages: dict[str, tuple[int, bool, int]],
        window: Window,
        slo_ms: float | None,
        sink: RequestSink | None = None,
        caches: dict[str, Policy] | None = None,
        stores: list[str] | None = None,
        faults: list[FaultWindow] | None = None,
    ) -> None:
        """`stages`: per stage of the pipeline, its servers, whether it batches and its nodes; `caches`: the cache
        policies the pipeline consults (each looked up at the columns of `Request.cache_hit` that
        `Pipeline.lookups` gives it); `stores`: the nearline
        stores it reads (`items`, `users`); `faults`: the faults that touch the pipeline, for the storm report."""
        self.pipeline = pipeline.name
        self._definition = pipeline
        self.stage_names = pipeline.stages
        self.window = window
        self.slo_ms = slo_ms
        self.sink = sink
        self.stages = [StageRecord(*stages[name]) for name in self.stage_names]
        passes()  # ready before the run accounts anything
        self._own_busy = np.array([not stage.batching and stage.nodes == 1 for stage in self.stages])  # busy time from visits
        groups = pipeline.step_slots
        self._steps = (np.cumsum([0] + [len(g) for g in groups]).astype(np.int64), np.array([s for g in groups for s in g], np.int64))
        self.offered = self.completed = self.rejected = self.timed_out = 0
        self.in_flight = 0  # measured requests that arrived and have not finished
        self.completed_in_window = 0
        self.over_slo = 0
        self.partial = False
        self.latency = LogHistogram()
        self.no_contention = LogHistogram()
        self.caches = caches or {}
        self.cache_counts = {name: [0, 0] for name in self.caches}  # hits, misses of measured requests' lookups
        self.lookups = [lookup.cache for lookup in pipeline.lookups] if self.caches else []  # each flag column's cache
        self.end_s = 0.0  # when the run ended (`close`)
        self.vectors = {name: VectorRecord(name) for name in stores or []}  # entities: set by `for_pipeline` for a named store
        self.faults = faults or []
        means = [f"{name}_hit_ratio" for name in self.caches] + [f"{store_label(name)}_vector_age_mean_s" for name in stores or []]
        gauges = [g for name in stores or [] for g in store_gauges(name)]
        self.timeseries = Timeseries(window, means, gauges)
        self.index_bytes = 0  # size of the served item-vector index (the engine sets it)
        self.refresh_workers: dict[str, int] = {}  # per store refreshed in the run, its refresh pool's workers
        self.first_read_s: dict[str, float] = {}  # per store, model time spent making vectors on first read (live)
        self.billed: tuple[Scenario, str] | None = None  # the scenario and pipeline whose bill the summary gives (`metrics.bill`)
        self.shadow_samples: list[ShadowSample] = []  # requests shadow scoring takes (filled by the engine)
        self.quality: dict[str, Any] | None = None  # their scores with stale and fresh vectors (after the run)
        self.engine = "simpy"  # the engine that produced these figures (simpy, compiled or live; the engine sets it)
        self.trace: RequestTrace | None = None  # the sampled requests' timelines (`start_trace`)
        self._inside: dict[int, Request] = {}  # every request in the system, warm-up included
        self._done: list[Request] = []
        self._outcome: list[int] = []
        self._end_s: list[float] = []

    @classmethod
    def for_pipeline(
        cls,
        scenario: Scenario,
        pipeline: str,
        sink: RequestSink | None,
        caches: dict[str, Policy],
        stores: list[str],
    ) -> Recorder:
        """The recorder of one pipeline of a scenario's run, with the pipeline's caches, the stores it reads and
        the faults that touch it (`core.system.touches`)."""
        stages = {
            name: (config.servers, config.batch is not None, config.nodes)
            for name, config in ((name, scenario.stages[name]) for name in scenario.pipeline(pipeline).stages)
        }
        window = Window(scenario.warmup_s, scenario.duration_s)
        faults = [
            FaultWindow({"kind": f.kind, **f.model_dump(exclude={"kind"})}, f.at_s, f.at_s + getattr(f, "duration_s", 0.0))
            for f in scenario.faults
            if touches(f, scenario, pipeline)
        ]
        recorder = cls(scenario.pipeline(pipeline), stages, window, scenario.slo_p99_ms, sink, caches, stores, faults)
        recorder.billed = (scenario, pipeline)
        nearline = scenario.nearline
        if nearline is not None:
            changes = {
                "items": nearline.updates_from == "world" or nearline.item_updates_per_s > 0,
                "users": nearline.user_events_per_s > 0,
            }
            for name, record in recorder.vectors.items():
                record.entities = nearline.entities(name)
                record.changes = changes[record.entities]
            for name in stores:
                refresh = nearline.refresh_of(name)
                if refresh is not None:
                    recorder.refresh_workers[name] = refresh.workers
            if "items" in stores:
                recorder.index_bytes = scenario.traffic.items.count * nearline.vector_bytes
        return recorder

    def start_trace(self, fraction: float, stores: dict[str, NearlineStore]) -> None:
        """Keep the timelines of a `fraction` of the requests (by id), and of the stores' passes and rollouts."""
        self.trace = RequestTrace(self._definition, fraction)
        self.trace.stores = stores

    def trace_events(self, pid: int) -> list[dict[str, Any]]:
        """The run's timelines as trace events of process `pid` (`metrics.trace`): its faults, nearline passes,
        gauges and sampled requests."""
        assert self.trace is not None
        faults = [(fault.fields, fault.at_s, fault.end_s) for fault in self.faults]
        rows = self.timeseries.rows
        gauges = {name: [(float(r["t_s"]), float(r[name])) for r in rows if r[name] == r[name]] for name in self.timeseries.gauges}
        return self.trace.events(pid, faults, gauges)

    @property
    def live(self) -> int:
        """Requests in the system, warm-up included."""
        return len(self._inside)

    # --- events --------------------------------------------------------------------------------------
    def arrival(self, request: Request) -> None:
        self._inside[request.id] = request
        self.timeseries.arrive(request.arrival_s)
        if request.measured:
            self.offered += 1
            self.in_flight += 1

    def batch(self, slot: int, started_s: float, service_s: float, measured: int, size: int, node: int | None = None) -> None:
        """A batching stage (node `node` of it, with several nodes) served `size` requests (`measured` of them
        measured) together for `service_s`: busy time, and compute split evenly."""
        stage = self.stages[slot]
        busy = self.window.overlap(started_s, started_s + service_s)
        stage.busy_window_s += busy
        stage.compute_s += service_s * measured / size
        if node is not None:
            stage.node_busy_window_s[node] += busy

    def node_busy(self, slot: int, node: int, started_s: float, service_s: float, measured: bool) -> None:
        """Node `node` of a stage of several nodes served a visit, or one shard of it, from `started_s` for
        `service_s`: the node's and the stage's busy time, and compute (a stage of several nodes is accounted
        here, not from its visits' times: a sharded visit keeps several nodes busy)."""
        stage = self.stages[slot]
        busy = self.window.overlap(started_s, started_s + service_s)
        stage.node_busy_window_s[node] += busy
        stage.busy_window_s += busy
        if measured:
            stage.compute_s += service_s

    def wasted(self, slot: int, started_s: float, service_s: float, node: int | None) -> None:
        """A visit whose request was abandoned while it was in service runs to its end for nothing: wasted work,
        and busy time (already counted at its start on a node of a stage of several nodes)."""
        stage = self.stages[slot]
        stage.wasted_busy_s += service_s
        if node is None:
            stage.busy_window_s += self.window.overlap(started_s, started_s + service_s)

    def node_busy_rows(self, firsts: np.ndarray, rows: np.ndarray) -> None:
        """`node_busy` and `cut` for the visits of stages of several nodes given as rows (slot, node, start, service,
        measured 1.0 / 0.0; a cut: slot, node, from, to, -1.0), each slot's `rows[firsts[slot] : firsts[slot + 1]]`
        in the order of those calls: the same sums, added in the same order, so the totals are those of one call
        per row."""
        stages = self.stages
        busy = np.array([stage.busy_window_s for stage in stages])
        compute = np.array([stage.compute_s for stage in stages])
        node_busy = np.zeros((len(stages), max(stage.nodes for stage in stages)))
        for slot, stage in enumerate(stages):
            node_busy[slot, : stage.nodes] = stage.node_busy_window_s
        passes().busy_rows(rows, firsts, self.window.start_s, self.window.end_s, busy, compute, node_busy)
        for slot, stage in enumerate(stages):
            stage.busy_window_s, stage.compute_s = float(busy[slot]), float(compute[slot])
            stage.node_busy_window_s = node_busy[slot, : stage.nodes].tolist()

    def cut(self, slot: int, node: int | None, from_s: float, to_s: float) -> None:
        """A visit counted busy on a node until `to_s` stopped at `from_s` (its node went down)."""
        stage = self.stages[slot]
        lost = self.window.overlap(from_s, to_s)
        stage.busy_window_s -= lost
        if node is not None:
            stage.node_busy_window_s[node] -= lost

    def hedge(self, slot: int) -> None:
        """A visit (or shard) unfinished after the stage's hedge delay was sent to a second node."""
        self.stages[slot].hedges += 1

    def retry(self, slot: int, count: int = 1) -> None:
        """A failed visit (or shard) was sent again to another node (`count` such sends)."""
        self.stages[slot].retries += count

    def shard_skew(self, slot: int, skew_s: float) -> None:
        """A measured sharded visit completed: the gap between its slowest and its median shard."""
        stage = self.stages[slot]
        stage.shard_skew_s += skew_s
        stage.sharded_visits += 1

    def shard_skew_many(self, slot: int, skews_s: np.ndarray) -> None:
        """`shard_skew` for visits of one stage given as an array, in the order they ended: the same running sum."""
        stage = self.stages[slot]
        stage.shard_skew_s = _running_sum(stage.shard_skew_s, skews_s)
        stage.sharded_visits += len(skews_s)

    def gauge(self, name: str, now_s: float, value: float) -> None:
        """A background process's per-second reading (refresh backlog, double buffering)."""
        self.timeseries.gauge(name, now_s, value)

    def refresh_work(self, store: str, seconds: float, now_s: float) -> None:
        """A store's vectors were made on first read for `seconds` of model time (counted as its refresh work when
        inside the window)."""
        if self.window.start_s <= now_s <= self.window.end_s:
            self.first_read_s[store] = self.first_read_s.get(store, 0.0) + seconds

    def _refresh_pools(self) -> dict[str, float]:
        """Per nearline store's refresh workers (`refresh:items`, `refresh:users`), their busy seconds inside the
        window: the refresh pool's own per-second utilisation (`core.refresh`: the worker-seconds it spent re-inferring,
        one at a time, by periodic passes and by rollouts) over the seconds ending inside the window, times its
        workers, plus vectors made on first read."""
        busy = {}
        window = self.window
        for name in dict.fromkeys([*self.vectors, *self.first_read_s]):
            if name not in self.refresh_workers and name not in self.first_read_s:
                continue
            key = f"{gauge_prefix(name)}refresh_utilization"
            shares = [float(row[key]) for row in self.timeseries.rows if key in row and window.start_s < float(row["t_s"]) <= window.end_s]
            pool_s = sum(share for share in shares if share == share) * self.refresh_workers.get(name, 0)
            busy[f"refresh:{name}"] = pool_s + self.first_read_s.get(name, 0.0)
        return busy

    def finish(self, request: Request, outcome: Outcome, now_s: float) -> None:
        """The request left the system (completed, rejected or timed out)."""
        del self._inside[request.id]
        if request.measured:
            self.in_flight -= 1
            if outcome is Outcome.REJECTED:
                self.rejected += 1
            elif outcome is Outcome.TIMED_OUT:
                self.timed_out += 1
        self._done.append(request)
        self._outcome.append(outcome)
        self._end_s.append(now_s)

    # --- accounting ----------------------------------------------------------------------------------
    def arrivals(self, arrival_s: np.ndarray, measured: np.ndarray) -> None:
        """Requests arrived at these times, `measured` of them after warm-up (what `arrival` keeps, for an engine
        without Request objects)."""
        count = int(np.count_nonzero(measured))
        self.offered += count
        self.in_flight += count
        self.timeseries.arrive_many(arrival_s)

    def finished(self, outcome: np.ndarray, measured: np.ndarray) -> None:
        """Requests left the system with these outcomes (the counts `finish` keeps, for an engine without Request objects)."""
        self.in_flight -= int(np.count_nonzero(measured))
        self.rejected += int(np.count_nonzero(measured & (outcome == Outcome.REJECTED)))
        self.timed_out += int(np.count_nonzero(measured & (outcome == Outcome.TIMED_OUT)))

    def flush(self) -> None:
        """Account the buffered finished requests."""
        if not self._done:
            return
        done = self._done
        n, stages = len(done), len(self.stage_names)
        self.account(
            np.fromiter((r.id for r in done), np.int64, n),
            np.fromiter((r.arrival_s for r in done), float, n),
            np.fromiter((r.user for r in done), np.int64, n),
            np.fromiter((r.candidates for r in done), np.int64, n),
            np.fromiter((r.measured for r in done), bool, n),
            _times(done, stages),
            np.fromiter(chain.from_iterable(r.service_s for r in done), float, n * stages).reshape(n, stages),
            np.array(self._outcome),
            np.array(self._end_s),
            _cache_flags(done, len(self.lookups)),
            _vector_reads(done, list(self.vectors)) if self.vectors else None,
        )
        self._done, self._outcome, self._end_s = [], [], []

    def account(
        self,
        ids: np.ndarray,
        arrival_s: np.ndarray,
        users: np.ndarray,
        candidates: np.ndarray,
        measured: np.ndarray,
        times: np.ndarray,
        service_s: np.ndarray,
        outcome: np.ndarray,
        end_s: np.ndarray,
        cache_hit: np.ndarray,
        vectors: dict[str, VectorReads] | None = None,
    ) -> None:
        """Account finished requests, given as columns in the order they finished: ids, arrival times (s), users,
        candidate counts, whether measured, stage times [requests, stages, (enter, start, end)] (NaN where not
        visited), service times [requests, stages] (s), outcomes, finish times (s), cache flags [requests,
        caches] (1.0 / 0.0 / NaN) and the nearline vectors they read, per store (None: none)."""
        n = len(ids)
        if n == 0:
            return
        self._visits(times, measured)
        completed = outcome == Outcome.COMPLETED
        failed = measured & ~completed
        if failed.any():  # the work of failed requests: their own service at the visits they finished
            done = ~np.isnan(times[failed, :, 2])
            for slot, seconds in enumerate(np.where(done, service_s[failed], 0.0).sum(axis=0).tolist()):
                self.stages[slot].failed_s += seconds
        latency_ms = (end_s - arrival_s) * 1000
        means = {f"{name}_hit_ratio": _hit_share(cache_hit, [i for i, c in enumerate(self.lookups) if c == name]) for name in self.caches}
        if self.lookups:
            hits, misses = passes().lookup_counts(cache_hit, measured)
            for name, hit, miss in zip(self.lookups, hits.tolist(), misses.tolist()):
                self.cache_counts[name][0] += hit
                self.cache_counts[name][1] += miss
        means.update(self._vector_ages(vectors, n, completed & measured))
        self.timeseries.add(end_s, np.where(completed, latency_ms, np.nan), means)
        inside = (end_s >= self.window.start_s) & (end_s < self.window.end_s)
        self.completed_in_window += int(np.count_nonzero(completed & inside))
        if self.trace is not None:
            self.trace.finished(ids, arrival_s, users, candidates, measured, times, outcome, end_s, cache_hit)
        keep = completed & measured
        rows = np.arange(n) if keep.all() else np.flatnonzero(keep)
        self._completed(rows, ids, arrival_s, users, candidates, service_s, latency_ms, cache_hit, times)

    def _vector_ages(self, vectors: dict[str, VectorReads] | None, n: int, keep: np.ndarray) -> dict[str, np.ndarray]:
        """Account the vector ages completed measured requests read; per request, its mean age (for the time series)."""
        means = {}
        for name, record in self.vectors.items():
            mean_age = np.full(n, np.nan)  # none read
            reads = (vectors or {}).get(name)
            if reads is not None and reads.read.any():
                mean_age, kept_ages, stale, mismatched = passes().vector_figures(
                    reads.read, reads.ages, reads.stale, reads.mismatched, keep
                )
                record.age.add(kept_ages)
                record.stale += int(stale)
                record.mismatched += int(mismatched)
            means[f"{store_label(name)}_vector_age_mean_s"] = mean_age
        return means

    def _visits(self, times: np.ndarray, measured: np.ndarray) -> None:
        """Stage statistics of finished visits, `times` [requests, stages, (enter, start, end)] (end NaN: not visited)."""
        own = self._own_busy
        latency, wait, counts, busy, compute = passes().visit_figures(times, measured, own, self.window.start_s, self.window.end_s)
        for slot, (stage, count) in enumerate(zip(self.stages, counts.tolist())):
            stage.latency.add(latency[slot, :count])
            stage.wait.add(wait[slot, :count])
            if own[slot]:  # otherwise accounted per batch or per node (`batch`, `node_busy`)
                stage.busy_window_s += float(busy[slot])
                stage.compute_s += float(compute[slot])

    def _completed(
        self,
        rows: np.ndarray,
        ids: np.ndarray,
        arrival_s: np.ndarray,
        users: np.ndarray,
        candidates: np.ndarray,
        service_s: np.ndarray,
        latency_ms: np.ndarray,
        flags: np.ndarray,
        times: np.ndarray,
    ) -> None:
        """End-to-end, no-contention and critical-path accounting of the completed measured requests at `rows` of
        the finished ones' columns (`account`)."""
        n = len(rows)
        if n == 0:
            return
        latency_ms = latency_ms[rows]
        self.completed += n
        self.latency.add(latency_ms)
        if self.slo_ms is not None:
            self.over_slo += int(np.count_nonzero(latency_ms > self.slo_ms))
        stage_ms, no_contention, useful_ms, critical_ms = passes().completed_figures(rows, times, service_s, *self._steps)
        for stage, useful, critical in zip(self.stages, useful_ms.tolist(), critical_ms.tolist()):
            stage.useful_s += useful / 1000
            stage.critical_ms += critical
        self.no_contention.add(no_contention)
        if self.sink is not None:
            block = CompletedBlock(
                np.asarray(ids[rows], dtype=np.int64),
                np.asarray(arrival_s[rows], dtype=float),
                np.asarray(users[rows], dtype=np.int64),
                np.asarray(candidates[rows], dtype=np.int64),
                latency_ms,
                stage_ms.T,
                flags[rows],
            )
            self.sink.write(self.pipeline, self.stage_names, self._definition.lookup_labels, block)

    def stop(self, now_s: float) -> None:
        """The run was interrupted at `now_s`: the window ends there and the results are partial."""
        self.partial = True
        self.window = Window(self.window.start_s, max(self.window.start_s, min(self.window.end_s, now_s)))
        self.timeseries.window = self.window

    def close(self, end_s: float, still_inside: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """The run ended at `end_s` (simulated): account what has finished, and the finished visits of the
        requests still in flight; close the time series. `still_inside`: (stage times, measured) of the requests
        in flight, from an engine that keeps no Request objects (times NaN where a visit had not ended by `end_s`)."""
        self.end_s = end_s
        self.flush()
        if self._inside:
            inside = list(self._inside.values())
            self._visits(_times(inside, len(self.stage_names)), np.fromiter((r.measured for r in inside), bool, len(inside)))
        if still_inside is not None and len(still_inside[1]):
            self._visits(*still_inside)
        self.timeseries.close_until(math.ceil(end_s))

    # --- results -------------------------------------------------------------------------------------
    def _staleness(self) -> dict[str, Any]:
        """Ages of the vectors read; whether each store's entities change (`item_updates`, `user_events`: on or
        off); the share of the vectors read from stores whose entities change whose entity changed after the
        vector was made (NaN when none change: nothing could be stale); the share made by another model version
        than the one serving."""
        out: dict[str, Any] = {}
        read = stale = mismatched = changing = 0
        for name, record in self.vectors.items():
            age = record.age.summary()
            out[f"{store_label(name)}_vector_age_s"] = {key: age[key] for key in ("mean", "p50", "p99", "max")}
            out[STORE_CHANGES[record.entities]] = "on" if record.changes else "off"
            read += record.age.count
            changing += record.age.count if record.changes else 0
            stale += record.stale
            mismatched += record.mismatched
        out["vectors_measured"] = read
        out["stale_fraction"] = stale / changing if changing else math.nan
        out["version_mismatch_fraction"] = mismatched / read if read else math.nan
        rows = self.timeseries.rows
        for name in self.vectors:
            out.update(self._refresh_work(gauge_prefix(name), rows))
        if "refresh_backlog" in self.timeseries.gauges:
            backlog = [r["refresh_backlog"] for r in rows if r["refresh_backlog"] == r["refresh_backlog"]]
            out["refresh_backlog_max"] = max(backlog, default=0)
            double = sum(r["double_buffered"] for r in rows if r["double_buffered"] == r["double_buffered"])
            out["double_buffered_s"] = double
            if self.index_bytes:
                out["index_bytes"] = self.index_bytes
                out["index_peak_bytes"] = self.index_bytes * (2 if double else 1)
        return out

    @staticmethod
    def _refresh_work(prefix: str, rows: list[dict[str, Any]]) -> dict[str, float]:
        """A store's refresh pool over the run: the share of its workers' time spent re-inferring (the mean of the
        per-second readings) and the most a periodic pass ran past its interval (s)."""

        def readings(key: str) -> list[float]:
            return [float(row[key]) for row in rows if row[key] == row[key]]

        used = readings(f"{prefix}refresh_utilization")
        if not used:
            return {}
        overrun = readings(f"{prefix}sweep_overrun_s")
        return {f"{prefix}refresh_utilization": sum(used) / len(used), f"{prefix}sweep_overrun_s": max(overrun, default=0.0)}

    def _storm(self, fault: FaultWindow) -> dict[str, Any]:
        """What a fault did to the per-second p99. Its level is the median p99 of the `BASELINE_S` seconds before the
        fault, its band up to `RECOVERY_MARGIN` above that level. The storm lasts from the fault's second to the
        first second, once the fault has ended, whose p99 is within the band: `recovery_s` is from the fault to the
        end of that second (None if it never comes), `peak_p99_ms` the storm's highest p99. A fault is `affected`
        when some second of its storm is above the band; one that is not reports `recovery_s` 0. Without a p99
        before the fault, `affected` and `recovery_s` are None."""
        rows = [r for r in self.timeseries.rows if r["p99_ms"] == r["p99_ms"]]
        before = [r["p99_ms"] for r in rows if fault.at_s - BASELINE_S <= r["t_s"] < fault.at_s]
        level = float(np.median(before)) if before else math.nan
        band = level * (1 + RECOVERY_MARGIN)
        after = [r for r in rows if r["t_s"] >= int(fault.at_s)]
        end = next((i for i, r in enumerate(after) if r["t_s"] >= fault.end_s and r["p99_ms"] <= band), None)
        storm = after if end is None else after[: end + 1]
        affected: bool | None = None
        recovery_s: float | None = None
        if before:
            affected = any(r["p99_ms"] > band for r in storm)
            recovered_s = after[end]["t_s"] + 1 - fault.at_s if end is not None else None
            recovery_s = recovered_s if affected else 0.0
        return {
            **fault.fields,
            "affected": affected,
            "p99_before_ms": level,
            "peak_p99_ms": max((r["p99_ms"] for r in storm), default=math.nan),
            "recovery_s": recovery_s,
        }

    def _offered_tail(self) -> dict[str, float | None]:
        """Percentiles over every offered (measured) request, a request that did not complete (rejected, timed out,
        still in flight) counting as slower than any that did: None where the percentile falls among those; and
        `failed_share`, their share."""
        out: dict[str, float | None] = {}
        for key, percent in PERCENTILES.items():
            rank = max(1, math.ceil(percent / 100 * self.offered))
            out[key] = (self.latency.at_rank(rank) if rank <= self.completed else None) if self.offered else math.nan
        out["failed_share"] = 1 - self.completed / self.offered if self.offered else math.nan
        return out

    def _compute(self) -> dict[str, dict[str, float]]:
        """Per pool (each stage, each store's refresh workers): busy seconds and per completed request (ms); for the
        stages, that work split into useful (the completed requests' own service) and wasted (the service of
        requests that failed, and of visits whose result nobody used: losing hedge copies, deadline cut-offs)."""
        per = 1000 / self.completed if self.completed else math.nan
        pools: dict[str, dict[str, float]] = {}
        for name, stage in zip(self.stage_names, self.stages):
            pools[name] = {
                "busy_s": stage.compute_s,
                "ms_per_request": stage.compute_s * per,
                "useful_ms_per_request": stage.useful_s * per,
                "wasted_ms_per_request": (stage.failed_s + stage.wasted_busy_s) * per,
            }
        for name, busy in self._refresh_pools().items():
            pools[name] = {"busy_s": busy, "ms_per_request": busy * per}
        return pools

    def summary(self) -> dict[str, Any]:
        """The METRICS block of summary.json."""
        window_s = self.window.length_s
        per_s = 1 / window_s if window_s > 0 else math.nan
        critical_total = sum(stage.critical_ms for stage in self.stages)
        stages = {
            name: {
                "latency_ms": stage.latency.summary(),
                "wait_ms": stage.wait.summary(),
                "utilization": stage.busy_window_s / stage.servers * per_s,
                "nodes": stage.nodes,
                "node_utilization": _node_utilization(stage, per_s),
                "hedges": stage.hedges,
                "retries": stage.retries,
                "wasted_busy_s": stage.wasted_busy_s,
                "shard_skew_ms": 1000 * stage.shard_skew_s / stage.sharded_visits if stage.sharded_visits else math.nan,
                "visits": stage.latency.count,
                "critical_path_share": stage.critical_ms / critical_total if critical_total else math.nan,
            }
            for name, stage in zip(self.stage_names, self.stages)
        }
        nc = self.no_contention.summary()
        out: dict[str, Any] = {
            "requests": {
                "offered": self.offered,
                "completed": self.completed,
                "rejected": self.rejected,
                "timed_out": self.timed_out,
                "in_flight_at_end": self.in_flight,
            },
            "partial": self.partial,
            "offered_qps": self.offered * per_s,
            "throughput_qps": self.completed_in_window * per_s,
            "latency_ms": self.latency.summary(),
            "latency_offered_ms": self._offered_tail(),
            "no_contention_ms": {key: nc[key] for key in ("mean", "p50", "p99")},
            "stages": stages,
            "compute": self._compute(),
            "bottleneck": max(stages, key=lambda name: stages[name]["utilization"]),
            "critical_stage": max(stages, key=lambda n: stages[n]["critical_path_share"]) if critical_total else None,
        }
        if self.billed is not None:  # a request-keyed cache holds, on average, the entries of the requests in flight
            held = {
                name: cache.held_s / self.end_s if self.end_s > 0 else 0.0
                for name, cache in self.caches.items()
                if isinstance(cache, RequestCache)
            }
            out["memory_bytes"] = memory_bytes(*self.billed, held)
            out["cost_per_hour"] = cost_per_hour(*self.billed, held)
        if self.caches:
            out["caches"] = {
                name: {
                    "hits": hits,
                    "misses": misses,
                    "hit_ratio": hits / (hits + misses) if hits + misses else math.nan,
                    "evictions": policy.evictions,
                }
                for (name, policy), (hits, misses) in zip(self.caches.items(), self.cache_counts.values())
            }
        if self.vectors:
            out["staleness"] = self._staleness()
        if self.faults:
            out["faults"] = [self._storm(fault) for fault in self.faults]
        if self.quality is not None:
            out["quality"] = self.quality
        if self.slo_ms is not None:
            missed = self.offered - self.completed + self.over_slo
            share = missed / self.offered if self.offered else 0.0
            out["slo"] = {"p99_ms": self.slo_ms, "missed_share": share, "valid": bool(self.offered) and share <= SLO_MISS_BUDGET}
        return out
