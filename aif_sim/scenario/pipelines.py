"""The pipeline step language: a pipeline is an ordered list of typed steps over named stages, data that every
engine interprets (`core.flow`).

A step, as written in a scenario (or in `designs.yaml`, the shipped designs written in the same language):
- `NAME` or `{stage: NAME, reads: CACHE, vectors: STORE}` (`Call`): one visit to a stage's pool; with `reads`,
  the stage reads through that cache: a miss adds the cache's miss latency to the visit's service, and the
  visit then inserts the entry; with `vectors` (`items` or `users`), the stage fetches nearline vectors of that
  store, whose age is measured when the visit ends.
- `{cached: CACHE, stage: NAME, ...}` (`Cached`): the call is guarded by a cache: a hit skips it; a miss makes
  the call, which inserts the entry when it finishes (a second request for the same key meanwhile misses too).
- `{parallel: [BRANCH, ...]}` (`Parallel`): the branches (calls or cached calls) start together; the step ends
  when all of them have ended (the join rule for branches that end differently is in `core.request`).
Within a pipeline a stage is called at one call and nearline vectors are read at one call at most; a cache may be
consulted at several calls (each consultation is a lookup of its own, `Pipeline.lookups`), but not both guard and be
read through by one call. What a step names must exist in the scenario (stages, caches, stores): `Scenario` checks
that, with the closest name on a miss.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

DESIGNS_FILE = Path(__file__).resolve().parent / "designs.yaml"
VECTOR_STORES = ("items", "users")  # the nearline stores: item vectors (refresh, model publication), user vectors (user_refresh)
# Stages whose result is the serving model's output for the user (the user side's vector): a cache guarding one holds
# values of the model version that made them, so it is versioned unless the scenario says otherwise (`Cache.versioned`).
MODEL_OUTPUT_STAGES = ("user_inference",)


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _CallFields(_Step):
    stage: str = Field(min_length=1)
    reads: str | None = Field(default=None, min_length=1)
    vectors: str | None = Field(default=None, min_length=1)


class Call(_CallFields):
    """One visit to a stage (see the module docstring)."""


class Cached(_CallFields):
    """A call that a hit in the cache `cached` skips (see the module docstring)."""

    cached: str = Field(min_length=1)

    @property
    def cache(self) -> str:
        return self.cached

    @property
    def call(self) -> Call:
        return Call(stage=self.stage, reads=self.reads, vectors=self.vectors)


def _call_form(value: Any) -> Any:
    """A stage name is a call of that stage."""
    return {"stage": value} if isinstance(value, str) else value


def _branch_kind(value: Any) -> str:
    """The form of a branch: a mapping as written, or a step already validated (when serialising)."""
    return "cached" if isinstance(value, Cached) or isinstance(value, dict) and "cached" in value else "call"


Branch = Annotated[
    Annotated[Call, Tag("call")] | Annotated[Cached, Tag("cached")],
    Discriminator(_branch_kind),
]


class Parallel(_Step):
    """Branches that start together; the step ends when all have ended."""

    parallel: tuple[Branch, ...]

    @field_validator("parallel", mode="before")
    @classmethod
    def _branches(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("an empty parallel group; expected one or more branches (stage calls)")
            for branch in value:
                if isinstance(branch, dict) and "parallel" in branch:
                    raise ValueError("a parallel group inside a parallel group; expected its branches to be stage calls")
            return [_call_form(branch) for branch in value]
        return value

    @property
    def branches(self) -> tuple[Call | Cached, ...]:
        return tuple(self.parallel)


def _step_kind(value: Any) -> str:
    return "parallel" if isinstance(value, Parallel) or isinstance(value, dict) and "parallel" in value else _branch_kind(value)


Step = Annotated[
    Annotated[Call, Tag("call")] | Annotated[Cached, Tag("cached")] | Annotated[Parallel, Tag("parallel")],
    Discriminator(_step_kind),
]


def calls_of(step: Call | Cached | Parallel) -> tuple[Call, ...]:
    """The stage calls a step makes when nothing is cached."""
    if isinstance(step, Call):
        return (step,)
    if isinstance(step, Cached):
        return (step.call,)
    return tuple(call for branch in step.branches for call in calls_of(branch))


def branches_of(step: Call | Cached | Parallel) -> tuple[Call | Cached, ...]:
    """A step's branches: a parallel group's, or the step itself."""
    return step.branches if isinstance(step, Parallel) else (step,)


@dataclass(frozen=True, slots=True)
class Lookup:
    """One consultation of a cache by a pipeline: at the call in `slot`, as its guard (a hit skips the call) or read
    through by it."""

    cache: str
    slot: int
    guard: bool


class Pipeline(_Step):
    """A named request flow: its steps in order. A call's slot is its position among the pipeline's calls."""

    name: str = Field(min_length=1)
    steps: tuple[Step, ...] = Field(min_length=1)

    @field_validator("steps", mode="before")
    @classmethod
    def _call_forms(cls, value: Any) -> Any:
        return [_call_form(step) for step in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _each_thing_once(self) -> Pipeline:
        """A stage is called at one call of the pipeline, and nearline vectors are read at one call at most (a request
        records one visit per stage and one vector read); a call does not both guard and read through one cache."""
        stages: dict[str, int] = {}
        reads_vectors = None
        for index, step in enumerate(self.steps):
            for branch in branches_of(step):
                if branch.stage in stages:
                    raise ValueError(
                        f"steps.{index}: stage {branch.stage!r} is already called at steps.{stages[branch.stage]};"
                        " expected each stage once per pipeline (declare another stage for a second visit)"
                    )
                stages[branch.stage] = index
                if isinstance(branch, Cached) and branch.cache == branch.reads:
                    raise ValueError(
                        f"steps.{index}: stage {branch.stage!r} is guarded by cache {branch.cache!r} and reads through it;"
                        " expected one use of a cache per call"
                    )
                if branch.vectors is not None:
                    if reads_vectors is not None:
                        raise ValueError(
                            f"steps.{index}: nearline vectors are already read at steps.{reads_vectors}; expected one such call"
                        )
                    reads_vectors = index
        return self

    @functools.cached_property
    def calls(self) -> list[Call]:
        """The stage calls the pipeline makes when nothing is cached, in order: a call's position is its slot."""
        return [call for step in self.steps for call in calls_of(step)]

    @functools.cached_property
    def stages(self) -> list[str]:
        """The stage of each slot."""
        return [call.stage for call in self.calls]

    @functools.cached_property
    def caches(self) -> list[str]:
        """The caches the pipeline consults, in order of first use."""
        names: list[str] = []
        for step in self.steps:
            for branch in branches_of(step):
                if isinstance(branch, Cached):
                    names.append(branch.cache)
                names.extend(call.reads for call in calls_of(branch) if call.reads)
        return list(dict.fromkeys(names))

    @functools.cached_property
    def lookups(self) -> list[Lookup]:
        """The pipeline's cache consultations in slot order (at one call, its guard first): a request's cache flags
        have one column per lookup."""
        out, slot = [], 0
        for step in self.steps:
            for branch in branches_of(step):
                if isinstance(branch, Cached):
                    out.append(Lookup(branch.cache, slot, True))
                if branch.reads is not None:
                    out.append(Lookup(branch.reads, slot, False))
                slot += 1
        return out

    @functools.cached_property
    def lookup_labels(self) -> list[str]:
        """A name for each lookup: its cache's, or `CACHE@STAGE` for a cache the pipeline consults at several calls."""
        counts = {name: sum(lookup.cache == name for lookup in self.lookups) for name in self.caches}
        return [lookup.cache if counts[lookup.cache] == 1 else f"{lookup.cache}@{self.stages[lookup.slot]}" for lookup in self.lookups]

    @functools.cached_property
    def step_slots(self) -> list[list[int]]:
        """For each step, the slots of the stages it calls: one, or a parallel group's."""
        groups, slot = [], 0
        for step in self.steps:
            calls = len(calls_of(step))
            groups.append(list(range(slot, slot + calls)))
            slot += calls
        return groups

    @functools.cached_property
    def vector_stores(self) -> list[str]:
        """The nearline stores the pipeline reads vectors from."""
        return sorted({call.vectors for call in self.calls if call.vectors})

    @functools.cached_property
    def model_output_caches(self) -> list[str]:
        """Caches guarding a stage whose result is model output (`MODEL_OUTPUT_STAGES`): versioned by default."""
        guards = [branch for step in self.steps for branch in branches_of(step) if isinstance(branch, Cached)]
        return list(dict.fromkeys(branch.cache for branch in guards if branch.stage in MODEL_OUTPUT_STAGES))

    @functools.cached_property
    def guarded_stages(self) -> list[str]:
        """Stages a cache hit skips."""
        return [branch.stage for step in self.steps for branch in branches_of(step) if isinstance(branch, Cached)]

    def without_caches(self, caches: set[str]) -> Pipeline:
        """The same flow without the given caches: a call they guard is always made, a read through them is a plain
        call."""

        def strip(branch: Call | Cached) -> dict[str, Any]:
            fields = {"stage": branch.stage, "reads": None if branch.reads in caches else branch.reads, "vectors": branch.vectors}
            if isinstance(branch, Cached) and branch.cache not in caches:
                fields["cached"] = branch.cache
            return fields

        steps = [{"parallel": [strip(b) for b in step.branches]} if isinstance(step, Parallel) else strip(step) for step in self.steps]
        return Pipeline.model_validate({"name": self.name, "steps": steps})


@functools.cache
def shipped_designs() -> dict[str, Pipeline]:
    """The shipped designs (`designs.yaml`) by name, each with every cache it can consult."""
    designs = [Pipeline.model_validate(design) for design in yaml.safe_load(DESIGNS_FILE.read_text())]
    return {design.name: design for design in designs}
