"""The scenario file's schema: pydantic models (pure data, no behaviour).

Durations are in seconds (`_s`), latencies in milliseconds (`_ms`). Unknown keys are errors.
Relative paths inside a scenario (trace, empirical samples, profiles) are looked up, in order, in
the scenario file's folder, in the current folder, and among the files aif-sim ships (so a copied
scenario still finds `profiles/cpu.json`); a missing file's error lists every place it looked.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from aif_sim.scenario.pipelines import VECTOR_STORES, Cached, Parallel, Pipeline, shipped_designs

SHIPPED_DATA = Path(__file__).resolve().parent.parent / "data"  # files installed with the package


class Strict(BaseModel):
    """Base of every scenario model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def lookup_places(value: str, base_dir: str | Path | None) -> list[Path]:
    """Where a relative data path is looked for, in order: scenario folder, current folder, shipped data."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return [path]
    places = ([Path(base_dir) / path] if base_dir else []) + [Path.cwd() / path, SHIPPED_DATA / path]
    return list(dict.fromkeys(place.resolve() for place in places))  # each place once (the scenario's folder may be the current one)


def _resolve_path(value: str, info: ValidationInfo) -> Path:
    places = lookup_places(value, (info.context or {}).get("base_dir"))
    for place in places:
        if place.is_file():
            return place.resolve()
    raise ValueError(f"expected an existing file; looked in {', '.join(str(p) for p in places)}")


class FilePath(Strict):
    """Mixin for models with a `path` that must name an existing file."""

    path: Path

    @field_validator("path", mode="before")
    @classmethod
    def _exists(cls, value: Any, info: ValidationInfo) -> Path:
        return _resolve_path(str(value), info)


# --- latency distributions -------------------------------------------------------------------------
class ConstantLatency(Strict):
    dist: Literal["constant"]
    ms: float = Field(ge=0)


class ExponentialLatency(Strict):
    dist: Literal["exponential"]
    mean_ms: float = Field(gt=0)


class LognormalLatency(Strict):
    """Lognormal given by its median and 99th percentile."""

    dist: Literal["lognormal"]
    median_ms: float = Field(gt=0)
    p99_ms: float = Field(gt=0)

    @field_validator("p99_ms")
    @classmethod
    def _p99_above_median(cls, value: float, info: ValidationInfo) -> float:
        median = info.data.get("median_ms")
        if median is not None and value <= median:
            raise ValueError(f"expected p99_ms > median_ms, got {value} <= {median}")
        return value


class GammaLatency(Strict):
    """Gamma given by its mean and coefficient of variation (cv = std / mean)."""

    dist: Literal["gamma"]
    mean_ms: float = Field(gt=0)
    cv: float = Field(gt=0)


class EmpiricalLatency(FilePath):
    """Samples in milliseconds from a CSV with a header row (column `column`, default the first)."""

    dist: Literal["empirical"]
    column: str | None = None


class ProfileLatency(FilePath):
    """An operator of a calibration profile JSON (`calibrate`), interpolated by candidates or batch size."""

    dist: Literal["profile"]
    op: str = Field(min_length=1)
    scale: float = Field(default=1.0, gt=0)


LatencySpec = Annotated[
    ConstantLatency | ExponentialLatency | LognormalLatency | GammaLatency | EmpiricalLatency | ProfileLatency,
    Field(discriminator="dist"),
]


# --- traffic ---------------------------------------------------------------------------------------
class PoissonArrival(Strict):
    kind: Literal["poisson"]
    qps: float = Field(gt=0)


class DiurnalArrival(Strict):
    """Sinusoidal rate between trough and peak around `mean_qps`."""

    kind: Literal["diurnal"]
    mean_qps: float = Field(gt=0)
    peak_to_trough: float = Field(ge=1)
    period_s: float = Field(gt=0)


class BurstyArrival(Strict):
    """Two-state Markov-modulated Poisson process: calm at `qps`, bursts at `burst_qps`."""

    kind: Literal["bursty"]
    qps: float = Field(gt=0)
    burst_qps: float = Field(gt=0)
    mean_burst_s: float = Field(gt=0)
    mean_calm_s: float = Field(gt=0)


class TraceArrival(FilePath):
    """Arrival times in seconds from a CSV with a header row; `time_scale` multiplies them."""

    kind: Literal["trace"]
    column: str | None = None
    time_scale: float = Field(default=1.0, gt=0)


ArrivalSpec = Annotated[PoissonArrival | DiurnalArrival | BurstyArrival | TraceArrival, Field(discriminator="kind")]


class Population(Strict):
    """Finite-support Zipf popularity: p(rank i) ∝ i^-zipf_s for i in 1..count."""

    count: int = Field(ge=1)
    zipf_s: float = Field(default=1.0, ge=0)


class ConstantCount(Strict):
    """Every request has `n` candidates."""

    dist: Literal["constant"]
    n: int = Field(ge=1)


class LognormalCount(Strict):
    """Candidates per request: lognormal by median and p99, rounded and clipped to [min, max]."""

    dist: Literal["lognormal"]
    median: float = Field(gt=0)
    p99: float = Field(gt=0)
    min: int = Field(default=1, ge=1)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> LognormalCount:
        if self.p99 <= self.median:
            raise ValueError(f"expected p99 > median, got {self.p99} <= {self.median}")
        if self.max < self.min:
            raise ValueError(f"expected max >= min, got {self.max} < {self.min}")
        return self


CandidateSpec = Annotated[ConstantCount | LognormalCount, Field(discriminator="dist")]


class Traffic(Strict):
    arrival: ArrivalSpec
    users: Population = Population(count=1_000_000, zipf_s=1.1)
    items: Population = Population(count=1_000_000, zipf_s=0.9)
    candidates: int | CandidateSpec = Field(default=5000)

    @field_validator("candidates")
    @classmethod
    def _positive(cls, value: int | CandidateSpec) -> int | CandidateSpec:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"expected at least 1 candidate, got {value}")
        return value


# --- stages ----------------------------------------------------------------------------------------
class Batching(Strict):
    """A batch is dispatched when it has `max_size` requests or its first one has waited `max_wait_ms`."""

    max_size: int = Field(ge=1)
    max_wait_ms: float = Field(default=0.0, ge=0)


BALANCERS = ("random", "round_robin", "least_outstanding", "p2c")


class Stage(Strict):
    """A pool of `servers` identical threads: one FIFO queue over all of them (`nodes: 1`), or `nodes` machines of
    `servers / nodes` threads, each with its own queue (its own `queue_limit`, `timeout_ms` and batching), behind a
    balancer (`balance`). With `shards`, a visit's candidates are split into that many shard visits on distinct
    nodes, each timed at its own candidate count; the visit ends with its slowest shard. A visit (or shard)
    unfinished `hedge_after_ms` after it was sent is sent again to another node (the first copy to complete wins);
    one rejected, timed out or lost with its node is sent again to another node, at most `retries` times.
    `per_candidate_us` is added to each visit's (or shard's) service per candidate it handles."""

    servers: int = Field(ge=1)
    latency: LatencySpec
    queue_limit: int | None = Field(default=None, ge=0)
    timeout_ms: float | None = Field(default=None, gt=0)
    batch: Batching | None = None
    nodes: int = Field(default=1, ge=1)
    balance: Literal["random", "round_robin", "least_outstanding", "p2c"] = "p2c"
    shards: int = Field(default=1, ge=1)
    hedge_after_ms: float | None = Field(default=None, gt=0)
    retries: int = Field(default=0, ge=0)
    per_candidate_us: float = Field(default=0.0, ge=0)
    cost_per_server_hour: float = Field(default=1.0, ge=0)  # what `plan` minimises (any currency; default 1)
    max_utilization: float | None = Field(default=None, gt=0, le=1)  # the headroom `plan` keeps: the busiest it may leave the pool

    @field_validator("balance", mode="before")
    @classmethod
    def _known_balancer(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in BALANCERS:
            close = difflib.get_close_matches(value, BALANCERS, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ValueError(f"unknown balancer {value!r}; {hint}expected one of {', '.join(BALANCERS)}")
        return value

    @model_validator(mode="after")
    def _whole_nodes(self) -> Stage:
        if self.servers % self.nodes:
            raise ValueError(f"servers: expected a multiple of nodes ({self.nodes}), got {self.servers}")
        if self.shards > self.nodes:
            raise ValueError(f"shards: expected at most nodes ({self.nodes}): each shard goes to a distinct node, got {self.shards}")
        if self.shards > 1 and self.batch is not None:
            raise ValueError("shards: a batching stage takes whole visits; expected shards: 1 with batch")
        for field, value in (("hedge_after_ms", self.hedge_after_ms), ("retries", self.retries)):
            if value and self.nodes == 1:
                raise ValueError(f"{field}: sends a visit again to another node; expected nodes of 2 or more")
            if value and self.batch is not None:
                raise ValueError(f"{field}: a batching stage takes whole visits; expected no {field} with batch")
        return self

    @property
    def threads_per_node(self) -> int:
        return self.servers // self.nodes


class Slo(Strict):
    p99_ms: float = Field(gt=0)


# --- caches, nearline, faults, model ----------------------------------------------------------------
DEFAULT_ENTRY_BYTES = {"user_vector": 512, "sim_features": 8192}  # a user vector; 1,000 long-term behaviours of 8 bytes
OTHER_ENTRY_BYTES = 512  # an entry of a cache of another name: one vector
DEFAULT_COST_PER_GB_HOUR = 0.134  # memory's price per GiB-hour in units of one server thread's hour (see README: cost)


class Cache(Strict):
    # `user`: an entry per user, shared by requests (LRU over `capacity` entries, optional `ttl_s`); `request`: an
    # entry per request in flight, inserted by its first consultation's call and dropped when the request ends
    key: Literal["user", "request"] = "user"
    capacity: int | None = Field(default=None, ge=0)
    ttl_s: float | None = Field(default=None, gt=0)
    miss_latency: LatencySpec | None = None
    entry_bytes: int | None = Field(default=None, ge=1)  # memory one entry takes (default: DEFAULT_ENTRY_BYTES, else OTHER_ENTRY_BYTES)
    # whether an entry is model output of the version that made it, dropped at each switch of the serving model version
    # (default: when the cache guards a stage whose result is model output, `pipelines.MODEL_OUTPUT_STAGES`)
    versioned: bool | None = None

    @model_validator(mode="after")
    def _keyed(self) -> Cache:
        """A user-keyed cache has a capacity; a request-keyed one holds each request's entry while it runs: no capacity,
        expiry or version of its own."""
        if self.key == "user" and self.capacity is None:
            raise ValueError("capacity: expected the entries a user-keyed cache holds (an integer >= 0)")
        if self.key == "request":
            given = [name for name in ("capacity", "ttl_s") if getattr(self, name) is not None] + (["versioned"] if self.versioned else [])
            if given:
                raise ValueError(
                    f"{given[0]}: a request-keyed cache holds each request's entry until the request ends;"
                    " expected no capacity, ttl_s or versioned: true"
                )
        return self


class Caches(BaseModel):
    """The storage of cache values (used by the live engine) and the caches, each under a name of the user's
    choosing (the shipped designs consult `user_vector` and `sim_features`)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    __pydantic_extra__: dict[str, Cache | None] = Field(init=False)

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _caches_are_mappings(cls, data: Any) -> Any:
        """A key that is not a field names a cache, whose value is a mapping: a scalar there is a misspelt field."""
        for key, value in data.items() if isinstance(data, dict) else ():
            if key not in cls.model_fields and value is not None and not isinstance(value, dict):
                close = difflib.get_close_matches(str(key), list(cls.model_fields), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise ValueError(
                    f"{key}: a cache is a mapping {{key, capacity, ttl_s, miss_latency, entry_bytes, versioned}}, got {value!r}{hint}"
                )
        return data

    def get(self, name: str) -> Cache | None:
        """The cache of that name, None when it is not configured."""
        return (self.__pydantic_extra__ or {}).get(name)

    @property
    def names(self) -> list[str]:
        """The configured caches' names, in the scenario's order."""
        return [name for name, cache in (self.__pydantic_extra__ or {}).items() if cache is not None]


class Refresh(Strict):
    """How vectors are re-inferred: `on_update` (workers serve the set of changed entities, one per
    `latency` draw) or `periodic` (every `interval_s` the whole catalogue, at `workers` / mean latency
    entities per second; `interval_s: 0` keeps every vector fresh)."""

    mode: Literal["on_update", "periodic"]
    workers: int = Field(default=1, ge=1)
    latency: LatencySpec = ConstantLatency(dist="constant", ms=1.0)
    interval_s: float | None = Field(default=None, ge=0)
    cost_per_server_hour: float = Field(default=1.0, ge=0)  # one refresh worker's hour, as a stage's server

    @model_validator(mode="after")
    def _interval_for_periodic(self) -> Refresh:
        if self.mode == "periodic" and self.interval_s is None:
            raise ValueError("expected interval_s with mode: periodic")
        if self.mode == "on_update" and self.interval_s is not None:
            raise ValueError("interval_s applies to mode: periodic only")
        return self


class VectorStore(Strict):
    """A nearline vector store of the scenario's own naming: vectors of every item or every user, re-inferred by a
    refresh pool of its own as the entities change (item updates, or user events). A store of items is also
    re-inferred by each model publication (a rollout), as the shipped `items` store is; a store of users is not,
    as the shipped `users` store is not."""

    entities: Literal["items", "users"]
    refresh: Refresh


class Nearline(Strict):
    """Item feature updates, their refresh, model versions; users' behaviour events for UIC's embedding.
    A change rate of 0 (the default) means those entities never change: no vector can be stale, and the summary
    says so (`staleness.item_updates` / `user_events`: off) instead of giving a stale share. The shipped stores are
    `items` (refreshed by `refresh`) and `users` (by `user_refresh`); `stores` declares more, by name."""

    item_updates_per_s: float = Field(default=0.0, ge=0)
    updates_from: Literal["rate", "world"] = "rate"
    refresh: Refresh | None = None
    model_publish_interval_s: float | None = Field(default=None, gt=0)
    version_policy: Literal["consistent", "latest"] = "consistent"
    staleness_sample: int = Field(default=16, ge=1)
    vector_bytes: int = Field(default=512, ge=1)
    user_events_per_s: float = Field(default=0.0, ge=0)
    user_refresh: Refresh | None = None
    stores: dict[str, VectorStore] = Field(default_factory=dict)

    @field_validator("stores")
    @classmethod
    def _no_shipped_names(cls, value: dict[str, VectorStore]) -> dict[str, VectorStore]:
        clash = next((name for name in value if name in VECTOR_STORES), None)
        if clash is not None:
            raise ValueError(f"{clash!r} is a shipped store (nearline.refresh / user_refresh); expected another name")
        return value

    def entities(self, store: str) -> str:
        """What a store's vectors are of: `items` or `users`."""
        return store if store in VECTOR_STORES else self.stores[store].entities

    def refresh_of(self, store: str) -> Refresh | None:
        """The refresh of a store (None: only model publication, if any, re-infers it)."""
        if store in VECTOR_STORES:
            return self.refresh if store == "items" else self.user_refresh
        return self.stores[store].refresh

    def refresh_field(self, store: str) -> str:
        """Where a store's refresh is written in the scenario."""
        if store in VECTOR_STORES:
            return "nearline.refresh" if store == "items" else "nearline.user_refresh"
        return f"nearline.stores.{store}.refresh"


class FaultAt(Strict):
    """A fault that starts `at_s` seconds into the run."""

    at_s: float = Field(ge=0)


class CacheFlush(FaultAt):
    """At `at_s`, a `fraction` of the cache's entries is lost (1/N: one node of an N-node cluster)."""

    kind: Literal["cache_flush"]
    cache: str = Field(min_length=1)
    fraction: float = Field(default=1.0, gt=0, le=1)


class NearlineOutage(FaultAt):
    """Nearline refresh stops for `duration_s`."""

    kind: Literal["nearline_outage"]
    duration_s: float = Field(gt=0)


class StageSlowdown(FaultAt):
    """The stage's service times are multiplied by `factor` for `duration_s`."""

    kind: Literal["stage_slowdown"]
    stage: str
    factor: float = Field(gt=0)
    duration_s: float = Field(gt=0)


class NodeLoss(FaultAt):
    """Nodes 0..nodes-1 of the stage are down for `duration_s`: their queued and running visits fail (and are sent
    again where the stage's `retries` allow); balancers skip them until they return."""

    kind: Literal["node_loss"]
    stage: str
    nodes: int = Field(ge=1)
    duration_s: float = Field(gt=0)


Fault = Annotated[CacheFlush | NearlineOutage | StageSlowdown | NodeLoss, Field(discriminator="kind")]


class ModelSection(Strict):
    """Shadow scoring: for a sampled share of the requests of each pipeline that reads nearline vectors the real
    model scores `shadow_candidates` candidates (drawn as the scored world's retrieval draws them) with the vectors
    the simulated system had and with fresh ones: AIF's item vectors (and cached user vector) with the AIF model,
    UIC's user-interest vector with the light model. 1,000 scored requests resolve a GAUC loss of about 0.002 (80%
    power, 5% test) on the small world.
    `checkpoint`: one AIF checkpoint, or a list (model versions 0, 1, ... in order); `light_checkpoint`: the light
    (UIC-style) pre-ranker's checkpoint (`train --model light`) of the same world, for pipelines that read
    user-interest vectors (`vectors: users`)."""

    checkpoint: Path | list[Path] | None = None
    light_checkpoint: Path | None = None
    shadow_rate: float = Field(default=0.0, ge=0, le=1)
    shadow_candidates: int = Field(default=1000, ge=100)
    shadow_requests: int = Field(default=1000, ge=1)

    @field_validator("checkpoint", "light_checkpoint", mode="before")
    @classmethod
    def _exist(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return None
        if isinstance(value, list):
            return [_resolve_path(str(v), info) for v in value]
        return _resolve_path(str(value), info)

    @model_validator(mode="after")
    def _checkpoint_for_shadow(self) -> ModelSection:
        if self.shadow_rate > 0 and self.checkpoint is None and self.light_checkpoint is None:
            raise ValueError("expected a checkpoint (or light_checkpoint) with shadow_rate > 0")
        return self

    @property
    def checkpoints(self) -> list[Path]:
        """The model versions' checkpoints, version 0 first."""
        return [] if self.checkpoint is None else self.checkpoint if isinstance(self.checkpoint, list) else [self.checkpoint]


# --- the scenario ----------------------------------------------------------------------------------
class Scenario(Strict):
    """A scenario as validated; its dump (`model_dump`) is a scenario too, with the pipelines written out in full."""

    model_config = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True)

    name: str = Field(min_length=1)
    seed: int = Field(default=0, ge=0)
    duration_s: float = Field(gt=0)
    warmup_s: float = Field(default=0.0, ge=0)
    drain_s: float = Field(default=5.0, ge=0)
    pipeline_defs: list[Pipeline] = Field(alias="pipelines", min_length=1)  # names of shipped designs resolved (`_designs`)
    slo: Slo | None = None
    deadline_ms: float | None = Field(default=None, gt=0)  # a request not finished this long after arrival is abandoned
    cost_per_gb_hour: float = Field(default=DEFAULT_COST_PER_GB_HOUR, ge=0)  # caches' and indexes' memory, per GiB-hour
    traffic: Traffic
    stages: dict[str, Stage]
    caches: Caches | None = None
    nearline: Nearline | None = None
    faults: list[Fault] = Field(default_factory=list)
    model: ModelSection | None = None

    @model_validator(mode="before")
    @classmethod
    def _designs(cls, data: Any) -> Any:
        """A pipeline named by a shipped design's name is that design, consulting only the caches the scenario
        configures; a stage no pipeline calls and lacking what a stage needs is reported as unknown."""
        if not isinstance(data, dict) or not isinstance(data.get("pipelines"), list):
            return data
        caches = data.get("caches")
        configured = {name for name, cache in caches.items() if cache is not None} if isinstance(caches, dict) else set()
        pipelines = []
        for index, entry in enumerate(data["pipelines"]):
            if isinstance(entry, str):
                designs = shipped_designs()
                if entry not in designs:
                    close = difflib.get_close_matches(entry, designs, n=1, cutoff=0.5)
                    hint = f"did you mean {close[0]}? " if close else ""
                    raise ValueError(
                        f"pipelines.{index}: unknown pipeline {entry!r}; {hint}expected a shipped design"
                        f" ({', '.join(designs)}) or {{name, steps}}"
                    )
                design = designs[entry]
                entry = design.without_caches(set(design.caches) - configured)
            pipelines.append(entry)
        _unknown_stages(data.get("stages"), pipelines)
        return {**data, "pipelines": pipelines}

    @field_validator("pipeline_defs")
    @classmethod
    def _unique(cls, value: list[Pipeline]) -> list[Pipeline]:
        names = [pipeline.name for pipeline in value]
        twice = next((name for name in names if names.count(name) > 1), None)
        if twice is not None:
            raise ValueError(f"expected each pipeline once, got {twice!r} {names.count(twice)} times")
        return value

    @field_validator("warmup_s")
    @classmethod
    def _warmup_inside_duration(cls, value: float, info: ValidationInfo) -> float:
        duration = info.data.get("duration_s")
        if duration is not None and value >= duration:
            raise ValueError(f"expected warmup_s < duration_s, got {value} >= {duration}")
        return value

    @model_validator(mode="after")
    def _steps_name_what_exists(self) -> Scenario:
        """A step's stage is declared under stages:, its cache configured under caches:, its vector store one that
        nearline refresh keeps (the closest name when not)."""
        configured = self.caches.names if self.caches is not None else []
        for index, pipeline in enumerate(self.pipeline_defs):
            for where, branch in _branches(pipeline):
                if branch.stage not in self.stages:
                    close = difflib.get_close_matches(branch.stage, list(self.stages), n=1, cutoff=0.6)
                    hint = f"did you mean {close[0]}? " if close else ""
                    raise ValueError(
                        f"pipelines.{index}.{where}.stage: pipeline {pipeline.name} calls stage {branch.stage!r}, which stages: does"
                        f" not declare; {hint}expected one of: {', '.join(self.stages)}"
                    )
                used = [("cached", branch.cached)] if isinstance(branch, Cached) else []
                for field, cache in [*used, ("reads", branch.reads)]:
                    if cache is not None and cache not in configured:
                        close = difflib.get_close_matches(cache, configured, n=1, cutoff=0.6)
                        hint = f"did you mean {close[0]}? " if close else ""
                        raise ValueError(
                            f"pipelines.{index}.{where}.{field}: pipeline {pipeline.name} uses cache {cache!r}, which caches: does not"
                            f" configure; {hint}expected one of: {', '.join(configured) or 'none configured'}"
                        )
                stores = [*VECTOR_STORES, *self.store_names]
                if branch.vectors is not None and branch.vectors not in stores:
                    close = difflib.get_close_matches(branch.vectors, stores, n=1, cutoff=0.6)
                    hint = f"did you mean {close[0]}? " if close else ""
                    raise ValueError(
                        f"pipelines.{index}.{where}.vectors: pipeline {pipeline.name} reads vector store {branch.vectors!r},"
                        f" which nothing refreshes; {hint}expected items (nearline.refresh, model publication), users"
                        f" (nearline.user_refresh) or a store nearline.stores declares ({', '.join(self.store_names) or 'none declared'})"
                    )
        for index, fault in enumerate(self.faults):
            if isinstance(fault, StageSlowdown | NodeLoss) and fault.stage not in self.stages:
                raise ValueError(
                    f"faults.{index}.stage: {fault.stage!r} is not a stage of the scenario; expected one of {', '.join(self.stages)}"
                )
            if isinstance(fault, CacheFlush) and fault.cache not in configured and fault.cache not in _design_caches():
                raise ValueError(
                    f"faults.{index}.cache: {fault.cache!r} is not a cache of the scenario; expected one of: {', '.join(configured) or 'none configured'}"
                )
            if isinstance(fault, CacheFlush) and fault.cache in configured and self.caches.get(fault.cache).key == "request":
                raise ValueError(
                    f"faults.{index}.cache: {fault.cache!r} is keyed by request (its entries live within a request);"
                    " expected a cache keyed by user"
                )
        return self

    @model_validator(mode="after")
    def _lost_nodes_exist(self) -> Scenario:
        """A node loss names a stage of the scenario with at least that many nodes, none of them batching."""
        for index, fault in enumerate(self.faults):
            if not isinstance(fault, NodeLoss):
                continue
            stage = self.stages[fault.stage]
            where = f"faults.{index}"
            if stage.nodes == 1:
                raise ValueError(f"{where}.stage: stage {fault.stage} is one pool (nodes: 1); node loss takes nodes of a stage of several")
            if fault.nodes > stage.nodes:
                raise ValueError(
                    f"{where}.nodes: stage {fault.stage} has {stage.nodes} nodes; expected at most that many, got {fault.nodes}"
                )
            if stage.batch is not None:
                raise ValueError(f"{where}: node loss on a batching stage ({fault.stage}) is not modelled")
        return self

    @model_validator(mode="after")
    def _world_updates_need_the_world(self) -> Scenario:
        """Item updates that follow the world's changes need the world of a checkpoint, and no rate of their own."""
        nearline = self.nearline
        if nearline is None or nearline.updates_from != "world":
            return self
        if self.model is None or not self.model.checkpoints:
            raise ValueError("nearline.updates_from: world needs model.checkpoint (the world whose item changes to follow)")
        if nearline.item_updates_per_s:
            raise ValueError("nearline.item_updates_per_s applies to updates_from: rate; the world sets the changes")
        return self

    @model_validator(mode="after")
    def _a_model_per_scored_store(self) -> Scenario:
        """Shadow scoring needs the model of each store a pipeline reads: AIF for item vectors, light for users'."""
        model = self.model
        if model is None or model.shadow_rate == 0:
            return self
        for pipeline in self.pipeline_defs:
            stores = pipeline.vector_stores
            if "items" in stores and not model.checkpoints:
                raise ValueError(
                    f"model.checkpoint: pipeline {pipeline.name} reads item vectors; shadow scoring them needs an AIF checkpoint"
                )
            if "items" not in stores and "users" in stores and model.light_checkpoint is None:
                raise ValueError(
                    f"model.light_checkpoint: pipeline {pipeline.name} reads user-interest vectors; shadow scoring them needs"
                    " a light model checkpoint (train --model light)"
                )
        return self

    @model_validator(mode="after")
    def _a_checkpoint_per_version(self) -> Scenario:
        """Shadow scoring needs the model of every version the run publishes (`train --continue-from`)."""
        model, nearline = self.model, self.nearline
        if model is None or model.shadow_rate == 0 or nearline is None or nearline.model_publish_interval_s is None:
            return self
        if not any("items" in pipeline.vector_stores for pipeline in self.pipeline_defs):
            return self  # publication re-infers item vectors only
        versions = 1 + int((self.duration_s + self.drain_s) // nearline.model_publish_interval_s)
        if len(model.checkpoints) < versions:
            raise ValueError(
                f"model.checkpoint: the run publishes {versions} model versions, expected as many checkpoints"
                f" (got {len(model.checkpoints)}; make the next ones with `train --continue-from`)"
            )
        return self

    @property
    def slo_p99_ms(self) -> float | None:
        """The p99 bound of the SLO, if the scenario has one."""
        return self.slo.p99_ms if self.slo else None

    @property
    def pipelines(self) -> list[str]:
        """The names of the scenario's pipelines, in order."""
        return [pipeline.name for pipeline in self.pipeline_defs]

    def pipeline(self, name: str) -> Pipeline:
        """The pipeline of that name."""
        return next(pipeline for pipeline in self.pipeline_defs if pipeline.name == name)

    @property
    def store_names(self) -> list[str]:
        """The vector stores `nearline.stores` declares (beside the shipped `items` and `users`), in order."""
        return list(self.nearline.stores) if self.nearline is not None else []

    @property
    def unread_stores(self) -> list[str]:
        """The stores `nearline.stores` declares that no pipeline reads (nothing simulates them: a run warns)."""
        read = {store for pipeline in self.pipeline_defs for store in pipeline.vector_stores}
        return [name for name in self.store_names if name not in read]

    def store_entities(self, store: str) -> str:
        """What a vector store holds vectors of: `items` or `users`."""
        return self.nearline.entities(store) if self.nearline is not None else store

    def store_count(self, store: str) -> int:
        """The vectors a store holds: one per item, or per user."""
        traffic = self.traffic
        return traffic.items.count if self.store_entities(store) == "items" else traffic.users.count

    @property
    def cache_names(self) -> list[str]:
        """The caches the scenario's pipelines consult, in order of first use."""
        return list(dict.fromkeys(name for pipeline in self.pipeline_defs for name in pipeline.caches))

    @property
    def lookup_labels(self) -> list[str]:
        """The cache lookups of the scenario's pipelines, by label (`Pipeline.lookup_labels`), in order of first use."""
        return list(dict.fromkeys(label for pipeline in self.pipeline_defs for label in pipeline.lookup_labels))

    @property
    def versioned_caches(self) -> list[str]:
        """The configured caches dropped at each switch of the serving model version: those set `versioned: true`, and
        by default those some pipeline uses to guard a stage whose result is model output."""
        guarding = {name for pipeline in self.pipeline_defs for name in pipeline.model_output_caches}
        caches = self.caches
        if caches is None:
            return []
        specs = {name: caches.get(name) for name in caches.names}
        return [
            name for name, spec in specs.items() if spec.versioned or (spec.versioned is None and spec.key == "user" and name in guarding)
        ]

    @property
    def stage_names(self) -> list[str]:
        """The stages the scenario's pipelines use, in order of first use."""
        return list(dict.fromkeys(name for pipeline in self.pipeline_defs for name in pipeline.stages))


def _design_caches() -> set[str]:
    """The caches the shipped designs can consult (a flush of one the scenario leaves out touches nothing)."""
    return {name for design in shipped_designs().values() for name in design.caches}


def _branches(pipeline: Pipeline) -> list[tuple[str, Any]]:
    """Each branch of a pipeline (a step, or a parallel group's branch) with its place: `steps.J` or
    `steps.J.parallel.K`."""
    return [
        (f"steps.{j}.parallel.{k}" if isinstance(step, Parallel) else f"steps.{j}", branch)
        for j, step in enumerate(pipeline.steps)
        for k, branch in enumerate(step.branches if isinstance(step, Parallel) else (step,))
    ]


def _unknown_stages(stages: Any, pipelines: list[Any]) -> None:
    """A stage that no pipeline calls and that lacks servers or latency is a misspelt or unknown one: say so, with the
    closest name a pipeline calls, rather than name the fields it lacks."""
    if not isinstance(stages, dict):
        return
    called: list[str] = []
    for entry in pipelines:
        try:
            called += Pipeline.model_validate(entry).stages
        except ValidationError:
            continue  # the pipeline's own error is reported where it is
    for name, stage in stages.items():
        if name not in called and isinstance(stage, dict) and not {"servers", "latency"} <= set(stage):
            close = difflib.get_close_matches(str(name), called, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ValueError(f"stages: unknown stage {name!r}; {hint}no pipeline calls it, and a stage needs servers and latency")
