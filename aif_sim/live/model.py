"""The real models the live engine runs, and their outputs as fixed-size records a cache can store.

The AIF model (the scenario's first checkpoint, or a fresh one of the small world's sizes), the sequential
pre-ranker and the UIC-style light pre-ranker. Every method here is CPU work meant for an executor thread:
it runs under `torch.inference_mode` and returns numpy arrays. Which stage runs which operator is
`MODEL_OPS`; the operators are those `calibrate` times.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from aif_sim.errors import InputError
from aif_sim.live.inputs import FeatureTable, ItemRows
from aif_sim.model.aif_model import AIFModel, ItemState, UserState
from aif_sim.model.baselines import LightPrerankModel, SequentialModel
from aif_sim.model.factory import model_config
from aif_sim.model.inputs import ItemInputs, UserInputs
from aif_sim.model.threads import set_threads
from aif_sim.model.train import load_checkpoint
from aif_sim.model.world import WorldConfig

MODEL_OPS = {
    "user_inference": "user_side",
    "rtp": "realtime",
    "prerank": "sequential_prerank",
    "light_prerank": "light_prerank",
    "online_prerank": "aif_online",
}
OUTPUTS = {"user_side": "user_vector"}  # the per-user value an operator makes (what a cache guarding its stage holds)
State = TypeVar("State", UserState, ItemState)


def record_dtype(state: UserState | ItemState) -> np.dtype:
    """The record of one row of a state (its fields, with their dtypes and per-row shapes)."""
    return np.dtype([(f.name, getattr(state, f.name).numpy().dtype, tuple(getattr(state, f.name).shape[1:])) for f in fields(state)])


def to_records(state: UserState | ItemState, dtype: np.dtype) -> np.ndarray:
    """The state's rows as records [B]."""
    records = np.empty(len(state.vec), dtype)
    for f in fields(state):
        records[f.name] = getattr(state, f.name).numpy()
    return records


def from_records(kind: type[State], records: np.ndarray) -> State:
    """A state from records of any leading shape."""
    return kind(*(torch.from_numpy(np.ascontiguousarray(records[f.name])) for f in fields(kind)))


def _item_inputs(rows: ItemRows) -> ItemInputs:
    return ItemInputs(*(torch.from_numpy(np.ascontiguousarray(getattr(rows, f.name))) for f in fields(ItemInputs)))


class LiveModel:
    """The models and the synthetic features they read (`live.inputs`), for `items` items."""

    def __init__(self, checkpoint: Path | None, items: int, seed: int) -> None:
        set_threads(1)  # a profile describes one server: one intra-op thread per call
        if checkpoint is not None:
            trained = load_checkpoint(checkpoint)
            if not isinstance(trained.model, AIFModel):
                raise InputError(f"{checkpoint}: model.checkpoint: a {trained.name} model; expected an AIF checkpoint (train --model aif)")
            world, cfg, aif = trained.world_config, trained.model_config, trained.model
        else:
            world = WorldConfig(seed=seed)
            cfg = model_config(world)
            torch.manual_seed(seed)
            aif = AIFModel(cfg)
        self.world = world
        self.aif = aif.eval()
        self.sequential = SequentialModel(cfg).eval()
        self.light = LightPrerankModel(cfg).eval()
        self.features = FeatureTable(world, items, seed)
        probe_items = self.item_side(np.zeros(1, dtype=np.int64))
        self.item_dtype = probe_items.dtype
        with torch.inference_mode():
            self.user_dtype = record_dtype(self.aif.user_side(self._user_inputs([0], [self.features.long_behaviour(0)])))
        self.behaviour_dtype = np.dtype((np.int32, (world.long_len,)))
        self.interest_dtype = np.dtype((np.float32, (cfg.dim,)))

    def _user_inputs(self, users: list[int], behaviours: list[np.ndarray]) -> UserInputs:
        profiles, shorts = zip(*(self.features.user(user) for user in users))
        short = _item_inputs(self.features.items(np.stack(shorts)))
        long_mm = torch.from_numpy(self.features.mm[np.stack(behaviours)])
        return UserInputs(torch.from_numpy(np.stack(profiles)), short, long_mm)

    def _candidates(self, ids: np.ndarray) -> ItemInputs:
        return _item_inputs(self.features.items(ids[None]))

    # --- operators (executor threads) -----------------------------------------------------------------
    @torch.inference_mode()
    def user_side(self, users: list[int], behaviours: list[np.ndarray]) -> np.ndarray:
        """AIF user side of a batch of users: user records [B]."""
        state = self.aif.user_side(self._user_inputs(users, behaviours))
        return to_records(state, record_dtype(state))

    @torch.inference_mode()
    def item_side(self, ids: np.ndarray) -> np.ndarray:
        """AIF item side of items `ids`: item records [n] (the nearline index's vectors)."""
        state = self.aif.item_side(_item_inputs(self.features.items(ids)))
        return to_records(state, record_dtype(state))

    @torch.inference_mode()
    def realtime(self, user: np.ndarray, items: np.ndarray) -> np.ndarray:
        """AIF real-time scores of one request: its user record [1] and its candidates' item records [C]."""
        scores = self.aif.realtime(from_records(UserState, user.reshape(1)), from_records(ItemState, items[None]))
        return scores.numpy()[0]

    @torch.inference_mode()
    def sequential_prerank(self, user: int, behaviour: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """The sequential model over one request's candidates, everything computed online."""
        return self.sequential(self._user_inputs([user], [behaviour]), self._candidates(candidates)).numpy()[0]

    @torch.inference_mode()
    def aif_online(self, user: int, behaviour: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """The AIF model over one request's candidates, everything computed online (no stored user or item side)."""
        return self.aif(self._user_inputs([user], [behaviour]), self._candidates(candidates)).numpy()[0]

    @torch.inference_mode()
    def user_interest(self, users: list[int]) -> np.ndarray:
        """UIC user-interest vectors [B, dim] (made nearline, on behaviour events)."""
        behaviours = [self.features.long_behaviour(user) for user in users]
        return self.light.user_tower(self._user_inputs(users, behaviours))[0].numpy()

    @torch.inference_mode()
    def light_prerank(self, interest: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """The light pre-ranker over one request's candidates from its stored user-interest vector."""
        return self.light.online(torch.from_numpy(np.ascontiguousarray(interest))[None], self._candidates(candidates)).numpy()[0]

    def _inputs(self, op: str, payload: dict[str, Any]) -> None:
        """What an operator reads that no earlier stage of the request's pipeline gave (a pipeline of the user's own
        without the user side before the real-time part, or without the item vectors' fetch), computed here, within
        the operator's own time: the long-term behaviours, the user side, the item side, the user-interest vector."""
        user_side = op == "realtime" and "user_vector" not in payload
        if (op in ("user_side", "sequential_prerank") or user_side) and "behaviour" not in payload:
            payload["behaviour"] = self.features.long_behaviour(payload["user"])
        if user_side:
            payload["user_vector"] = self.user_side([payload["user"]], [payload["behaviour"]])[0:1].reshape(())
        if op == "realtime" and "items" not in payload:
            payload["items"] = self.item_side(payload["candidates"])
        if op == "light_prerank" and "interest" not in payload:
            payload["interest"] = self.user_interest([payload["user"]])[0]

    def warm_up(self, candidates: int) -> None:
        """Run every operator twice at this many candidates, so that one-off costs (compilation of the LSH
        popcount, allocator growth) are paid before the clock starts."""
        ids = np.arange(candidates) % self.features.rows
        behaviour = self.features.long_behaviour(0)
        for _ in range(2):
            payload: dict[str, Any] = {"user": 0, "behaviour": behaviour, "candidates": ids, "items": self.item_side(ids)}
            payload["interest"] = self.user_interest([0])[0]
            for op in ("user_side", "realtime", "sequential_prerank", "aif_online", "light_prerank"):
                self.run(op, [payload])

    def run(self, op: str, payloads: list[dict[str, Any]]) -> None:
        """Run a stage's operator for a batch of requests' payloads, writing each one's result into it."""
        for payload in payloads:
            self._inputs(op, payload)
        if op == "user_side":
            records = self.user_side([p["user"] for p in payloads], [p["behaviour"] for p in payloads])
            for i, payload in enumerate(payloads):
                payload["user_vector"] = records[i : i + 1].reshape(())
        elif op == "realtime":
            for p in payloads:
                p["scores"] = self.realtime(p["user_vector"], p["items"])
        elif op in ("sequential_prerank", "aif_online"):
            model = self.sequential_prerank if op == "sequential_prerank" else self.aif_online
            for p in payloads:
                p["scores"] = model(p["user"], p["behaviour"], p["candidates"])
        elif op == "light_prerank":
            for p in payloads:
                p["scores"] = self.light_prerank(p["interest"], p["candidates"])
        else:
            raise ValueError(f"unknown model operator {op!r}")
