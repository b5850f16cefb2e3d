"""The scenario file: YAML validated into pydantic models (pure data, no behaviour).

Durations are in seconds (`_s`), latencies in milliseconds (`_ms`). Unknown keys are errors.
Relative paths inside a scenario (trace, empirical samples, profiles) resolve against the
scenario file's directory, then against the current directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from aif_sim.errors import InputError
from aif_sim.pipelines import stages_of

PIPELINE_NAMES = ("sequential", "aif", "uic")
STAGE_NAMES = (
    "merger",
    "retrieval",
    "user_inference",
    "feature_fetch",
    "item_fetch",
    "prerank",
    "rtp",
    "light_prerank",
)


class Strict(BaseModel):
    """Base of every scenario model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _resolve_path(value: str, info: ValidationInfo) -> Path:
    """Resolve `value` against the scenario's directory, then the current directory; it must exist."""
    path = Path(value).expanduser()
    base = (info.context or {}).get("base_dir")
    candidates = [path] if path.is_absolute() else ([Path(base) / path] if base else []) + [Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise ValueError(f"expected an existing file, found none at {' or '.join(str(c) for c in candidates)}")


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
    Union[ConstantLatency, ExponentialLatency, LognormalLatency, GammaLatency, EmpiricalLatency, ProfileLatency],
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


ArrivalSpec = Annotated[
    Union[PoissonArrival, DiurnalArrival, BurstyArrival, TraceArrival], Field(discriminator="kind")
]


class Population(Strict):
    """Finite-support Zipf popularity: p(rank i) ∝ i^-zipf_s for i in 1..count."""

    count: int = Field(ge=1)
    zipf_s: float = Field(default=1.0, ge=0)


class Traffic(Strict):
    arrival: ArrivalSpec
    users: Population = Population(count=1_000_000, zipf_s=1.1)
    items: Population = Population(count=1_000_000, zipf_s=0.9)
    candidates: int = Field(default=5000, ge=1)


# --- stages ----------------------------------------------------------------------------------------
class Batching(Strict):
    """A batch is dispatched when it has `max_size` requests or its first one has waited `max_wait_ms`."""

    max_size: int = Field(ge=1)
    max_wait_ms: float = Field(default=0.0, ge=0)


class Stage(Strict):
    """A pool of identical servers behind one FIFO queue."""

    servers: int = Field(ge=1)
    latency: LatencySpec
    queue_limit: int | None = Field(default=None, ge=0)
    timeout_ms: float | None = Field(default=None, gt=0)
    batch: Batching | None = None


class Slo(Strict):
    p99_ms: float = Field(gt=0)


# --- sections simulated by later subsystems (validated; refused by the engine while unsupported) ---
class Cache(Strict):
    capacity: int = Field(ge=0)
    ttl_s: float | None = Field(default=None, gt=0)
    miss_latency: LatencySpec | None = None


class Caches(Strict):
    user_vector: Cache | None = None
    sim_features: Cache | None = None


class Refresh(Strict):
    mode: Literal["on_update", "periodic"]
    workers: int = Field(default=1, ge=1)
    latency: LatencySpec | None = None
    interval_s: float | None = Field(default=None, gt=0)


class Nearline(Strict):
    item_updates_per_s: float = Field(default=0.0, ge=0)
    refresh: Refresh | None = None
    model_publish_interval_s: float | None = Field(default=None, gt=0)
    version_policy: Literal["consistent", "latest"] = "consistent"


class Fault(Strict):
    at_s: float = Field(ge=0)
    kind: Literal["cache_flush", "nearline_outage", "stage_slowdown"]
    cache: str | None = None
    stage: str | None = None
    factor: float | None = Field(default=None, gt=0)
    duration_s: float | None = Field(default=None, gt=0)


class ModelSection(Strict):
    checkpoint: str | None = None
    shadow_rate: float = Field(default=0.0, ge=0, le=1)


# --- the scenario ----------------------------------------------------------------------------------
class Scenario(Strict):
    name: str = Field(min_length=1)
    seed: int = 0
    duration_s: float = Field(gt=0)
    warmup_s: float = Field(default=0.0, ge=0)
    drain_s: float = Field(default=5.0, ge=0)
    pipelines: list[Literal["sequential", "aif", "uic"]] = Field(min_length=1)
    slo: Slo | None = None
    traffic: Traffic
    stages: dict[str, Stage]
    caches: Caches | None = None
    nearline: Nearline | None = None
    faults: list[Fault] = Field(default_factory=list)
    model: ModelSection | None = None

    @field_validator("pipelines")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"expected each pipeline once, got {value}")
        return value

    @property
    def slo_p99_ms(self) -> float | None:
        """The p99 bound of the SLO, if the scenario has one."""
        return self.slo.p99_ms if self.slo else None

    @field_validator("warmup_s")
    @classmethod
    def _warmup_inside_duration(cls, value: float, info: ValidationInfo) -> float:
        duration = info.data.get("duration_s")
        if duration is not None and value >= duration:
            raise ValueError(f"expected warmup_s < duration_s, got {value} >= {duration}")
        return value

    @field_validator("stages")
    @classmethod
    def _stages_known_and_complete(cls, value: dict[str, Stage], info: ValidationInfo) -> dict[str, Stage]:
        unknown = sorted(set(value) - set(STAGE_NAMES))
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r}, expected one of {', '.join(STAGE_NAMES)}")
        for pipeline in info.data.get("pipelines") or []:
            missing = [name for name in stages_of(pipeline) if name not in value]
            if missing:
                raise ValueError(f"missing stage {missing[0]!r}, which pipeline {pipeline!r} uses")
        return value


# --- loading ---------------------------------------------------------------------------------------
def _field_path(loc: tuple[Any, ...]) -> str:
    """Dotted field path of a pydantic error location, without the union tags pydantic inserts."""
    parts: list[str] = []
    for part in loc:
        if isinstance(part, str) and part.startswith("function-"):
            continue
        if parts and parts[-1] in ("arrival", "latency", "miss_latency") and part in _UNION_TAGS:
            continue
        parts.append(str(part))
    return ".".join(parts) or "(top level)"


_UNION_TAGS = {"poisson", "diurnal", "bursty", "trace", "constant", "exponential", "lognormal", "gamma", "empirical", "profile"}


def _describe(error: dict[str, Any]) -> str:
    """One phrase for a pydantic error: what was expected and what was given."""
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required field is missing"
    message = error["msg"].removeprefix("Value error, ")
    if kind in ("value_error", "union_tag_invalid", "union_tag_not_found"):
        return message
    return f"{message} (got {error['input']!r})"


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `data[a][b][c] = value` for `dotted` = 'a.b.c', creating mappings on the way (list items by index)."""
    keys = dotted.split(".")
    node: Any = data
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise InputError(f"--set {dotted}: {'.'.join(keys[:depth])} has no item {key!r}")
            index: Any = int(key)
        elif isinstance(node, dict):
            index = key
            if not last and not isinstance(node.get(key), (dict, list)):
                node[key] = {}
        else:
            raise InputError(f"--set {dotted}: {'.'.join(keys[:depth])} is not a mapping")
        if last:
            node[index] = value
        else:
            node = node[index]


def parse_overrides(items: list[str] | None) -> list[tuple[str, Any]]:
    """Parse `--set dotted.path=value` items; values are YAML scalars or flow collections."""
    overrides = []
    for item in items or []:
        path, sep, raw = item.partition("=")
        if not sep or not path.strip():
            raise InputError(f"--set {item}: expected dotted.path=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise InputError(f"--set {item}: value is not valid YAML ({exc.__class__.__name__})") from None
        overrides.append((path.strip(), value))
    return overrides


def load_scenario(path: str | Path, overrides: list[tuple[str, Any]] | None = None) -> Scenario:
    """Read, override and validate a scenario file; raise InputError with one line on any problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"{path}: cannot read scenario file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise InputError(f"{path}: {where}invalid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of scenario fields at the top level")
    for dotted, value in overrides or []:
        set_dotted(data, dotted, value)
    return validate_scenario(data, source=str(path), base_dir=path.resolve().parent)


def validate_scenario(data: dict[str, Any], source: str = "<scenario>", base_dir: Path | None = None) -> Scenario:
    """Validate a scenario mapping; raise InputError naming `source`, the field path and what was expected."""
    try:
        return Scenario.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        error = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise InputError(f"{source}: {_field_path(error['loc'])}: {_describe(error)}{more}") from None
