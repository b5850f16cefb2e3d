"""Shadow scoring: the real model scores simulated requests with the item vectors the system really had.

A simulator samples a request (user, time, candidates) and knows, for each candidate, when its stored item
vector was made. `ShadowScorer.score` makes each item's vector from the item's features at that moment
(stale) and scores; passing the request time instead gives the fresh score. Labels come from the world's
true click probability at the request time, so quality with and without staleness can be compared with
`aif_sim.model.evaluate.ranking_metrics`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from aif_sim.model.factory import item_inputs, user_inputs
from aif_sim.model.train import load_checkpoint
from aif_sim.model.world import Requests, World


class ShadowScorer:
    """A trained checkpoint and the world it was trained on."""

    def __init__(self, checkpoint: str | Path) -> None:
        ckpt = load_checkpoint(checkpoint)
        self.model = ckpt.model
        self.model_version = ckpt.version
        self.world = World(ckpt.world_config)

    def sample_request(self, rng: np.random.Generator, t: float, n_candidates: int) -> tuple[int, np.ndarray]:
        """A random user and its retrieved candidates at world time t (seconds; the world spans its horizon_s)."""
        user = int(rng.integers(0, self.world.cfg.n_users))
        return user, self.world.retrieve(rng, user, t, n_candidates)

    @torch.inference_mode()
    def score(self, user: int, t: float, items: np.ndarray, item_times: np.ndarray | float) -> np.ndarray:
        """Click probabilities [C] of `items` for `user` at time t, each item's vector made from its features at
        `item_times` (per item, or one time for all; t itself gives fresh vectors)."""
        users = user_inputs(self.world.user_features(np.array([user])))
        items_at = item_inputs(self.world.item_features(items[None, :], np.broadcast_to(item_times, items.shape)[None, :]))
        return torch.sigmoid(self.model(users, items_at))[0].double().numpy()

    def label(self, rng: np.random.Generator, users: np.ndarray, times: np.ndarray, items: np.ndarray) -> Requests:
        """Requests [R] with candidates [R, C] labelled by the world's true click probabilities at their times."""
        probs = self.world.click_prob(users, items, times)
        return Requests(users, times, items, probs, (rng.random(items.shape) < probs).astype(np.int8))
