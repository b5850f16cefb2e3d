"""What shadow scoring needs of one request: who asked, when, which candidates, and the time and model version
of the vectors the system read for them (engine-neutral; the real model scores these after the run, in
`aif_sim.app.quality`), and which requests it takes.

A pipeline that reads item vectors (AIF) is sampled where it reads them: the candidates' item vectors, and the
user vector it took from a cache, if any. One that reads only user-interest vectors (UIC) is sampled where it
reads the user's: that vector's time and version; its candidates' features are read then (UIC fetches them
online), so their "vectors" are made at the read by the serving version."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from aif_sim.core.nearline import NearlineStore
from aif_sim.core.request import Request
from aif_sim.core.sampling import sampled

Retrieval = Callable[[int, float, np.random.Generator], np.ndarray]
"""The scored world's retrieval: (simulated user rank, simulated time, generator) -> the candidates' simulated item ranks."""


@dataclass(frozen=True)
class ShadowSample:
    user: int  # simulated user rank
    t_s: float  # simulated time the vectors were read
    items: np.ndarray  # simulated item ranks of the candidates scored
    made_s: np.ndarray  # when each candidate's vector was made
    versions: np.ndarray  # the model version that made it
    serving_version: int  # the version serving the user side and real time
    user_vector_s: float | None = None  # when the user vector it used was made (None: computed for it)
    user_vector_version: int | None = None  # the version that made it (None: the serving one)
    store: str = "items"  # the nearline store the sample was read from: items (AIF) or users (UIC)


Read = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""A store's read now: entities -> when their vectors were made and by which model version."""


@dataclass
class ShadowSampling:
    """Which requests shadow scoring takes (a per-id hash at `rate`, at most `limit` measured ones) at their reads
    of `store` (items, or users for a pipeline that reads no item vectors), and their candidates, drawn as the
    scored world's retrieval draws them (relevant and popular, without replacement); `samples` collects what
    they read."""

    rate: float
    limit: int
    retrieve: Retrieval
    rng: np.random.Generator
    store: str = "items"
    samples: list[ShadowSample] = field(default_factory=list)

    def wants(self, request: Request) -> bool:
        return request.measured and len(self.samples) < self.limit and bool(sampled(np.array([request.id]), self.rate)[0])

    def candidates(self, user: int, now: float) -> np.ndarray:
        """The candidates (simulated item ranks) of a request of `user` whose item vectors are read at `now`."""
        return self.retrieve(user, now, self.rng)

    def take(self, user: int, now: float, read: Read, store: NearlineStore, user_vector_s: float | None) -> None:
        """Record the sample of a request of `user` that read `store` at `now` (`read`: that store's read at `now`;
        `user_vector_s`: when the cached user vector the request used was made, None when computed for it)."""
        items = self.candidates(user, now)
        if self.store == "items":
            made, versions = read(items)
            sample = ShadowSample(user, now, items, made, versions.astype(np.int32), store.serving_version, user_vector_s)
        else:
            made, versions = read(np.array([user]))
            serving = store.serving_version
            fresh = np.full(len(items), now), np.full(len(items), serving, dtype=np.int32)
            sample = ShadowSample(user, now, items, *fresh, serving, float(made[0]), int(versions[0]), "users")
        self.samples.append(sample)
