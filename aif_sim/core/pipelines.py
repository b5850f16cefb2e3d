"""Pipelines as data: ordered, typed steps over named stages, interpreted by every engine.

- `Call(stage)`: one visit to a stage's pool.
- `Parallel(branches)`: the branches start together; the step ends when all of them have ended
  (the join rule for branches that end differently is in `core.request`).
- `Cached(cache, call)`: the call is guarded by a cache: a hit skips it. A scenario without that
  cache always takes the call.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Call:
    stage: str


@dataclass(frozen=True)
class Cached:
    cache: str
    call: Call


@dataclass(frozen=True)
class Parallel:
    branches: tuple[Call | Cached, ...]


Step = Call | Cached | Parallel

PIPELINES: dict[str, tuple[Step, ...]] = {
    # retrieval returns candidates, then their features are fetched and the whole model runs.
    "sequential": (Call("merger"), Call("retrieval"), Call("feature_fetch"), Call("prerank")),
    # the user side runs while retrieval runs (skipped on a user-vector cache hit); item vectors come
    # from the nearline index; only the interaction-dependent real-time part runs online.
    "aif": (
        Call("merger"),
        Parallel((Call("retrieval"), Cached("user_vector", Call("user_inference")))),
        Call("item_fetch"),
        Call("rtp"),
    ),
    # the user-interest embedding is precomputed on behaviour events and fetched with the features.
    "uic": (Call("merger"), Call("retrieval"), Call("feature_fetch"), Call("light_prerank")),
}


def calls_of(step: Step) -> tuple[Call, ...]:
    """The stage calls a step makes when nothing is cached."""
    if isinstance(step, Call):
        return (step,)
    if isinstance(step, Cached):
        return (step.call,)
    return tuple(call for branch in step.branches for call in calls_of(branch))


def stages_of(pipeline: str) -> list[str]:
    """Stage names a pipeline visits, in order of first use."""
    return [call.stage for step in PIPELINES[pipeline] for call in calls_of(step)]


def step_slots(pipeline: str) -> list[list[int]]:
    """For each step, the slots (positions in `stages_of`) of the stages it calls: one, or a parallel group's."""
    groups, slot = [], 0
    for step in PIPELINES[pipeline]:
        calls = len(calls_of(step))
        groups.append(list(range(slot, slot + calls)))
        slot += calls
    return groups
