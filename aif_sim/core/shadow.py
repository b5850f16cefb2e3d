"""What shadow scoring needs of one simulated request: who asked, when, which candidates, and the time and
model version of the item vectors the simulated system read for them (engine-neutral; the real model
scores these after the run, in `aif_sim.app.quality`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ShadowSample:
    user: int  # simulated user rank
    t_s: float  # simulated time the item vectors were read
    items: np.ndarray  # simulated item ranks of the candidates scored
    made_s: np.ndarray  # when each candidate's vector was made
    versions: np.ndarray  # the model version that made it
    serving_version: int  # the version serving the user side and real time
    user_vector_s: float | None = None  # when the cached user vector it used was made (None: computed for it)
