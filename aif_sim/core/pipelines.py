"""Pipelines as data: ordered, typed steps over named stages, interpreted by every engine.

- `Call(stage, reads, vectors)`: one visit to a stage's pool; with `reads`, the stage reads through that
  cache: a miss adds the cache's miss latency to the visit's service, and the visit then inserts the
  entry; with `vectors` (`items` or `users`), the stage fetches nearline vectors of that store, whose
  age is measured when the visit ends.
- `Parallel(branches)`: the branches start together; the step ends when all of them have ended
  (the join rule for branches that end differently is in `core.request`).
- `Cached(cache, call)`: the call is guarded by a cache: a hit skips it; a miss makes the call, which
  inserts the entry when it finishes (a second request for the same key meanwhile misses too).
A scenario without the named cache always takes the call, at its plain service time.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Call:
    stage: str
    reads: str | None = None
    vectors: str | None = None


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
    # (the long-term behaviour features come from the SIM feature cache)
    "sequential": (Call("merger"), Call("retrieval"), Call("feature_fetch", reads="sim_features"), Call("prerank")),
    # the user side runs while retrieval runs (skipped on a user-vector cache hit); item vectors come
    # from the nearline index; only the interaction-dependent real-time part runs online.
    "aif": (
        Call("merger"),
        Parallel((Call("retrieval"), Cached("user_vector", Call("user_inference", reads="sim_features")))),
        Call("item_fetch", vectors="items"),
        Call("rtp"),
    ),
    # the user-interest embedding is precomputed on behaviour events and fetched with the features.
    "uic": (Call("merger"), Call("retrieval"), Call("feature_fetch", vectors="users"), Call("light_prerank")),
    # the like-for-like baseline of AIF: the sequential flow, its pre-ranker the AIF model computed online
    # (`online_prerank`), so that sequential -> aif_online is the model design's saving and aif_online -> aif the
    # framework's.
    "aif_online": (Call("merger"), Call("retrieval"), Call("feature_fetch", reads="sim_features"), Call("online_prerank")),
}


def calls_of(step: Step) -> tuple[Call, ...]:
    """The stage calls a step makes when nothing is cached."""
    if isinstance(step, Call):
        return (step,)
    if isinstance(step, Cached):
        return (step.call,)
    return tuple(call for branch in step.branches for call in calls_of(branch))


def caches_of(pipeline: str) -> list[str]:
    """The caches a pipeline consults, in order of first use."""
    names: list[str] = []
    for step in PIPELINES[pipeline]:
        branches = step.branches if isinstance(step, Parallel) else (step,)
        for branch in branches:
            if isinstance(branch, Cached):
                names.append(branch.cache)
            names.extend(call.reads for call in calls_of(branch) if call.reads)
    return list(dict.fromkeys(names))


def pipeline_calls(pipeline: str) -> list[Call]:
    """The stage calls a pipeline makes when nothing is cached, in order: a call's position is its slot."""
    return [call for step in PIPELINES[pipeline] for call in calls_of(step)]


def stages_of(pipeline: str) -> list[str]:
    """Stage names a pipeline visits, in order of first use."""
    return [call.stage for call in pipeline_calls(pipeline)]


def step_slots(pipeline: str) -> list[list[int]]:
    """For each step, the slots (positions in `stages_of`) of the stages it calls: one, or a parallel group's."""
    groups, slot = [], 0
    for step in PIPELINES[pipeline]:
        calls = len(calls_of(step))
        groups.append(list(range(slot, slot + calls)))
        slot += calls
    return groups
