"""What shadow scoring needs of one request: who asked, when, which candidates, and the time and model version
of the item vectors the system read for them (engine-neutral; the real model scores these after the run, in
`aif_sim.app.quality`), and which requests it takes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from aif_sim.core.request import Request
from aif_sim.core.sampling import sampled

Retrieval = Callable[[int, float, np.random.Generator], np.ndarray]
"""The scored world's retrieval: (simulated user rank, simulated time, generator) -> the candidates' simulated item ranks."""


@dataclass(frozen=True)
class ShadowSample:
    user: int  # simulated user rank
    t_s: float  # simulated time the item vectors were read
    items: np.ndarray  # simulated item ranks of the candidates scored
    made_s: np.ndarray  # when each candidate's vector was made
    versions: np.ndarray  # the model version that made it
    serving_version: int  # the version serving the user side and real time
    user_vector_s: float | None = None  # when the cached user vector it used was made (None: computed for it)


@dataclass
class ShadowSampling:
    """Which requests shadow scoring takes (a per-id hash at `rate`, at most `limit` measured ones) and their
    candidates, drawn as the scored world's retrieval draws them (relevant and popular, without replacement);
    `samples` collects what they read."""

    rate: float
    limit: int
    retrieve: Retrieval
    rng: np.random.Generator
    samples: list[ShadowSample] = field(default_factory=list)

    def wants(self, request: Request) -> bool:
        return request.measured and len(self.samples) < self.limit and bool(sampled(np.array([request.id]), self.rate)[0])

    def candidates(self, user: int, now: float) -> np.ndarray:
        """The candidates (simulated item ranks) of a request of `user` whose item vectors are read at `now`."""
        return self.retrieve(user, now, self.rng)
