"""Shadow scoring: the real AIF model scores simulated requests with the item vectors the system really had.

The simulator knows, for a sampled request (user rank, simulated time t, candidate item ranks), when each
candidate's stored item vector was made and by which model version. `ShadowScorer.score` scores the
candidates twice with the serving version's user side and real-time part:
- stale: each item vector made by its own version from the item's features as they were at its vector time;
- fresh: every item vector made at t by the serving version;
and draws labels from the world's true click probabilities at t. `shadow_quality` turns scored requests into
AUC, GAUC and HR@100 of both (the summary's `quality` section).

Ids: simulated ranks map onto world users and items by popularity rank (`World.users_by_rank`,
`World.items_by_rank`: rank r of a population P is world rank r * n // P when P exceeds the world's n, rank r
otherwise). Candidates are drawn as the world's retrieval draws them (`candidates`), and each world item stands
for one simulated rank, the lowest that maps onto it. Time: world time = `world_start_s` + simulated time (by
default the first version's training data end, so serving starts where training stopped).

One change process: given the simulator's item changes (`item_changes`), the scored world's items change at
exactly those times, world item w whenever the simulated rank it stands for changes, by the world's own change
dynamics; before `world_start_s` the world is the one the models were trained on. A candidate's vector is then
stale in the scored world exactly when it is stale in the simulator.

UIC's user-interest vectors (`score_user_interest`): the light model (`light`) scores a request's candidates
with its user-interest vector made when the system read the user's features (by its version) and with one made
at t; the candidates' features are read at t in both (UIC fetches them online). The user's features follow the
simulator's user events (`user_changes`; `model.followed`): a stored vector is stale exactly when the simulator
says so. The AIF user side keeps the world's own behaviours.

Work per request: the user side once (serving version), the item side once per distinct item state for the
fresh vectors, and again only for candidates whose stale vector differs (another state or another version),
grouped by version; real time once for all candidates and once more for the candidates that differ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from aif_sim.core.changes import ChangeChunk
from aif_sim.errors import InputError
from aif_sim.model.aif_model import AIFModel, ItemState
from aif_sim.model.baselines import LightPrerankModel
from aif_sim.model.evaluate import paired_gauc_difference, ragged_metrics
from aif_sim.model.factory import item_inputs, user_inputs
from aif_sim.model.followed import FollowedUsers
from aif_sim.model.threads import set_threads
from aif_sim.model.train import Checkpoint, load_checkpoint
from aif_sim.model.world import World

QUALITY_K = 100  # HR@K of the summary's quality section


@dataclass
class ScoredRequest:
    """One shadow-scored request: candidates in the order given, stale and fresh click probabilities, the truth."""

    user_rank: int
    user: int  # world user
    t: float  # simulated time (seconds from the run's start)
    item_ranks: np.ndarray  # [C]
    items: np.ndarray  # [C] world items
    stale: np.ndarray  # [C] with the item vectors the system had
    fresh: np.ndarray  # [C] with item vectors made at t by the serving version
    probs: np.ndarray  # [C] true click probabilities at t
    labels: np.ndarray  # [C] 0/1 draws from probs
    stale_fraction: float  # share of candidates whose features changed after their vector time
    version_mismatch_fraction: float  # share of candidates whose vector was made by another version than the serving one
    user_stale: bool = False  # the user's features changed after its (cached or stored) user vector was made
    user_vector_age_s: float = 0.0  # t minus when the user vector scored was made (0: made for the request)


def _concat(states: Sequence[ItemState]) -> ItemState:
    return ItemState(*(torch.cat([getattr(s, f.name) for s in states]) for f in fields(ItemState)))


Versions = Sequence[str | Path | Checkpoint] | Mapping[int, str | Path | Checkpoint]


def _versions(checkpoints: Versions, name: str, model: type) -> dict[int, Checkpoint]:
    """Checkpoints by model version (a list: versions 0, 1, ... in order), each of model `name`, all of one model
    config; InputError otherwise."""
    items = checkpoints.items() if isinstance(checkpoints, Mapping) else enumerate(checkpoints)
    loaded = {int(v): c if isinstance(c, Checkpoint) else load_checkpoint(c) for v, c in items}
    for version, ckpt in loaded.items():
        if ckpt.name != name or not isinstance(ckpt.model, model):
            raise InputError(f"shadow scoring: {name} version {version} is a {ckpt.name} model; expected {name} checkpoints")
        if ckpt.model_config != loaded[min(loaded)].model_config:
            raise InputError(f"shadow scoring: {name} version {version} has another model config than version {min(loaded)}")
    return loaded


class ShadowScorer:
    """Model versions (AIF checkpoints of one model config, light ones of another) and the world all were trained on.

    `checkpoints`: AIF checkpoint paths (or `Checkpoint`s), versions 0, 1, ... in that order, or a mapping
    version -> checkpoint; the simulator's model version numbers are these keys. `light`: the light (UIC-style)
    pre-ranker's versions, likewise (a single checkpoint: version 0). At least one checkpoint is needed.
    `n_users`, `n_items`: the simulated populations whose ranks are mapped onto the world (default: the world's).
    `world_start_s`: world time of simulated time 0 (default: the training end of the earliest AIF version, or of
    the earliest light one when there is no AIF checkpoint).
    `item_changes`: the simulator's item changes (`core.changes.ChangeChunk`s: simulated times and rank ranges);
    the scored world's items change at those times instead of at its own (None: the world's own changes).
    `user_changes`: a function that returns the simulator's user events (as `core.changes.user_changes`) anew: the
    user-interest vectors' users behave at those events only (None: no event after `world_start_s`).
    `seed`: the label draws' generator; `threads`: torch / BLAS threads (None: leave as they are).
    """

    def __init__(
        self,
        checkpoints: Versions = (),
        *,
        light: str | Path | Checkpoint | Versions | None = None,
        n_users: int | None = None,
        n_items: int | None = None,
        world_start_s: float | None = None,
        item_changes: Iterable[ChangeChunk] | None = None,
        user_changes: Callable[[], Iterable[ChangeChunk]] | None = None,
        seed: int = 0,
        threads: int | None = 1,
    ) -> None:
        if threads is not None:
            set_threads(threads)
        loaded = _versions(checkpoints, "aif", AIFModel)
        light_versions = [] if light is None else [light] if isinstance(light, str | Path | Checkpoint) else light
        light_loaded = _versions(light_versions, "light", LightPrerankModel)
        if not loaded and not light_loaded:
            raise InputError("shadow scoring: no checkpoint given")
        first = loaded[min(loaded)] if loaded else light_loaded[min(light_loaded)]
        for name, versions in (("aif", loaded), ("light", light_loaded)):
            for version, ckpt in versions.items():
                if ckpt.world_config != first.world_config:
                    raise InputError(f"shadow scoring: {name} version {version} was trained on another world than {first.name} version 0")
        self.checkpoints = loaded
        self.models: dict[int, AIFModel] = {v: c.model.eval() for v, c in loaded.items()}
        self.light_models: dict[int, LightPrerankModel] = {v: c.model.eval() for v, c in light_loaded.items()}
        cfg = first.world_config
        self.world = World(cfg)
        self.n_users = cfg.n_users if n_users is None else int(n_users)
        self.n_items = cfg.n_items if n_items is None else int(n_items)
        self.world_start_s = float(first.trained_until_s if world_start_s is None else world_start_s)
        self.rng = np.random.default_rng(seed)
        if item_changes is not None:
            items, times = self._world_changes(item_changes)
            self.world = self.world.following(items, self.world_time(times), self.world_start_s, seed)
        self._item_rank_of = np.empty(cfg.n_items, dtype=np.int64)
        self._item_rank_of[self.world.item_order] = np.arange(cfg.n_items)
        self._user_changes = user_changes
        self.users = FollowedUsers(self.world, self.n_users, self.world_start_s, seed)

    def follow_users(self, user_ranks: Iterable[int]) -> None:
        """Take the simulator's user events of these simulated user ranks (one pass over them), so that their
        user-interest vectors can be scored (`score_user_interest`)."""
        chunks = self._user_changes() if self._user_changes is not None else ()
        self.users.follow(user_ranks, chunks, self.world_start_s)

    def user_changed(self, user_rank: int, t0: float, t1: float) -> bool:
        """Whether a followed user's features changed in (t0, t1] (simulated times)."""
        return self.users.changed_between(user_rank, float(self.world_time(t0)), float(self.world_time(t1)))

    def _world_changes(self, chunks: Iterable[ChangeChunk]) -> tuple[np.ndarray, np.ndarray]:
        """World items and simulated times of the simulator's changes that touch a rank a world item stands for."""
        n, population = self.world.cfg.n_items, self.n_items
        if population < n:
            raise ValueError(f"shadow scoring: the simulated catalogue ({population} items) is smaller than the world's ({n})")
        items, times = [], []
        for chunk in chunks:
            lo, hi = self._first_world_rank(chunk.first), self._first_world_rank(chunk.stop)  # world ranks lo..hi-1 touched
            count = np.maximum(hi - lo, 0)
            change = np.repeat(np.arange(len(count)), count)
            ranks = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count) + lo[change]
            keep = ranks < n
            items.append(self.world.item_order[ranks[keep]])
            times.append(np.asarray(chunk.times_s, dtype=np.float64)[change[keep]])
        return (np.concatenate(items), np.concatenate(times)) if items else (np.empty(0, np.int64), np.empty(0))

    def _first_world_rank(self, ranks: np.ndarray) -> np.ndarray:
        """The first world rank whose representative simulated rank (the lowest mapped onto it, `candidates`) is at
        least `ranks`: ceil(w * P / n) >= r  <=>  w >= floor((r - 1) * n / P) + 1."""
        ranks = np.asarray(ranks, dtype=np.int64)
        return (ranks - 1) * self.world.cfg.n_items // self.n_items + 1

    @property
    def horizon_s(self) -> float:
        """Simulated seconds the world covers: its users' behaviours and interests end at its horizon."""
        return self.world.cfg.horizon_s - self.world_start_s

    @property
    def versions(self) -> list[int]:
        """The model version numbers this scorer holds."""
        return sorted(self.models)

    # ids and time
    def world_users(self, user_ranks: np.ndarray | int) -> np.ndarray:
        """World users of simulated user ranks (0 = most active)."""
        return self.world.users_by_rank(np.asarray(user_ranks), self.n_users)

    def world_items(self, item_ranks: np.ndarray) -> np.ndarray:
        """World items of simulated item ranks (0 = most popular)."""
        return self.world.items_by_rank(np.asarray(item_ranks), self.n_items)

    def world_time(self, t: np.ndarray | float) -> np.ndarray:
        """World time of simulated time(s) t."""
        return self.world_start_s + np.asarray(t, dtype=np.float64)

    def candidates(self, user_rank: int, t: float, n: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """n distinct candidates (simulated item ranks) retrieved by the world for the user at simulated time t: half
        by relevance to the user, the rest by popularity. n may be at most the world's n_items; the simulated
        catalogue must be at least as large as the world's (each world item is returned as its lowest rank)."""
        if self.n_items < self.world.cfg.n_items:
            raise ValueError(
                f"candidates: the simulated catalogue ({self.n_items} items) is smaller than the world's ({self.world.cfg.n_items})"
            )
        if n > self.world.cfg.n_items:
            raise ValueError(
                f"candidates: {n} requested, the world has {self.world.cfg.n_items} items; "
                "use a scenario with at most that many candidates or a larger preset"
            )
        user = int(self.world_users(user_rank))
        items = self.world.retrieve(rng or self.rng, user, float(self.world_time(t)), n)
        world_rank = self._item_rank_of[items]
        return -((-world_rank * self.n_items) // self.world.cfg.n_items)  # ceil(w * P / n): the lowest rank mapped onto w

    def item_changed(self, item_ranks: np.ndarray, t0: np.ndarray | float, t1: np.ndarray | float) -> np.ndarray:
        """Whether the items' world features changed in (t0, t1] (simulated times)."""
        return self.world.changed_between(self.world_items(item_ranks), self.world_time(t0), self.world_time(t1))

    # scoring
    def _model(self, version: int) -> AIFModel:
        try:
            return self.models[int(version)]
        except KeyError:
            raise ValueError(f"model version {version} unknown: this scorer holds versions {self.versions}") from None

    def _light(self, version: int) -> LightPrerankModel:
        try:
            return self.light_models[int(version)]
        except KeyError:
            raise ValueError(f"light model version {version} unknown: this scorer holds versions {sorted(self.light_models)}") from None

    def _item_states(self, version: int, items: np.ndarray, states: np.ndarray) -> tuple[ItemState, np.ndarray]:
        """Item-side results of `version` for each distinct state, and the index of each row's state among them."""
        distinct, first, inverse = np.unique(states, return_index=True, return_inverse=True)
        features = self.world.state_features(items[first], distinct)
        return self._model(version).item_side(item_inputs(features)), inverse.ravel()

    @torch.inference_mode()
    def score(
        self,
        user_rank: int,
        t: float,
        item_ranks: np.ndarray,
        vector_times: np.ndarray | float,
        vector_versions: np.ndarray | int,
        serving_version: int,
        user_vector_time: float | None = None,
        user_vector_version: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> ScoredRequest:
        """Score one request at simulated time t: candidates `item_ranks` [C], their vectors made at `vector_times`
        [C] (simulated seconds, or one time for all) by `vector_versions` [C] (or one version), the user side and
        real time run by `serving_version`. A cached user vector can be given by `user_vector_time` (and
        `user_vector_version`, default the serving one): the stale scores then use it too. Labels are drawn
        with `rng` (default: the scorer's generator)."""
        item_ranks = np.asarray(item_ranks, dtype=np.int64).ravel()
        n = len(item_ranks)
        serving = self._model(serving_version)
        user = int(self.world_users(int(user_rank)))
        now = float(self.world_time(t))
        items = self.world_items(item_ranks)
        times = np.broadcast_to(self.world_time(vector_times), (n,))
        if not (np.isfinite(now) and np.isfinite(times).all()):
            raise ValueError("shadow scoring: the request time and every vector time must be finite numbers of seconds")
        versions = np.broadcast_to(np.asarray(vector_versions, dtype=np.int64), (n,))
        for v in np.unique(versions):
            self._model(int(v))
        fresh_state = self.world.item_state(items, now)
        stale_state = self.world.item_state(items, times)

        user_state = serving.user_side(user_inputs(self.world.user_features(np.array([user]), now)))
        states, index = self._item_states(serving_version, items, fresh_state)
        fresh_items = states.take(torch.from_numpy(index))
        fresh_logits = serving.realtime(user_state, ItemState(*(x[None] for x in _fields(fresh_items))))[0]

        differs = (stale_state != fresh_state) | (versions != int(serving_version))
        stale_user, when = user_state, now
        if user_vector_time is not None or user_vector_version is not None:
            when = now if user_vector_time is None else float(self.world_time(user_vector_time))
            by = self._model(serving_version if user_vector_version is None else user_vector_version)
            cached = by.user_side(user_inputs(self.world.user_features(np.array([user]), when)))
            stale_user = cached
        rows = np.arange(n) if stale_user is not user_state else np.flatnonzero(differs)
        stale_logits = fresh_logits.clone()
        if len(rows):
            parts, order = [], []
            for v in np.unique(versions[rows]):
                group = rows[versions[rows] == v]
                diff = group[differs[group]]
                same = group[~differs[group]]
                if len(diff):
                    s, i = self._item_states(int(v), items[diff], stale_state[diff])
                    parts.append(s.take(torch.from_numpy(i)))
                    order.append(diff)
                if len(same):
                    parts.append(fresh_items.take(torch.from_numpy(same)))
                    order.append(same)
            picked = np.concatenate(order)
            stale_items = _concat(parts)
            stale_logits[torch.from_numpy(picked)] = serving.realtime(stale_user, ItemState(*(x[None] for x in _fields(stale_items))))[0]

        behaved = self.world.behaviours.count(np.array([user, user]), np.array([when, now]))
        return self._scored(
            int(user_rank),
            item_ranks,
            t,
            stale_logits,
            fresh_logits,
            rng,
            stale_fraction=float(np.mean(stale_state < fresh_state)) if n else 0.0,
            version_mismatch_fraction=float(np.mean(versions != int(serving_version))) if n else 0.0,
            user_stale=bool(behaved[1] > behaved[0]),
            user_vector_age_s=now - when,
        )

    def _scored(
        self,
        user_rank: int,
        item_ranks: np.ndarray,
        t: float,
        stale: torch.Tensor,
        fresh: torch.Tensor,
        rng: np.random.Generator | None,
        **shares: float | bool,
    ) -> ScoredRequest:
        """The scored request from its stale and fresh logits [C], with the world's true click probabilities at t and
        labels drawn from them with `rng` (default: the scorer's generator); `shares`: its staleness fields."""
        user, items = int(self.world_users(user_rank)), self.world_items(item_ranks)
        probs = self.world.click_prob(np.array([user]), items[None, :], np.array([float(self.world_time(t))]))[0]
        labels = ((rng or self.rng).random(len(items)) < probs).astype(np.int8)
        return ScoredRequest(
            user_rank,
            user,
            float(t),
            item_ranks,
            items,
            stale=torch.sigmoid(stale).double().numpy(),
            fresh=torch.sigmoid(fresh).double().numpy(),
            probs=probs,
            labels=labels,
            **shares,  # type: ignore[arg-type]
        )

    @torch.inference_mode()
    def score_user_interest(
        self,
        user_rank: int,
        t: float,
        item_ranks: np.ndarray,
        vector_time: float,
        vector_version: int,
        serving_version: int,
        rng: np.random.Generator | None = None,
    ) -> ScoredRequest:
        """Score one UIC request at simulated time t with the light model: candidates `item_ranks` [C] (their features
        read at t), the user-interest vector the system had (made at `vector_time` by `vector_version` from the user's
        features then) and one made at t by `serving_version`, whose head scores both. The user must be followed
        (`follow_users`). Labels are drawn with `rng` (default: the scorer's generator)."""
        item_ranks = np.asarray(item_ranks, dtype=np.int64).ravel()
        now, made = float(self.world_time(t)), float(self.world_time(vector_time))
        if not (np.isfinite(now) and np.isfinite(made)):
            raise ValueError("shadow scoring: the request time and the vector time must be finite numbers of seconds")
        serving, by = self._light(serving_version), self._light(vector_version)
        candidates = item_inputs(self.world.item_features(self.world_items(item_ranks)[None, :], now))
        fresh_vector = serving.user_tower(user_inputs(self.users.features(user_rank, now)))[0]
        changed = self.users.changed_between(user_rank, made, now)
        fresh = serving.online(fresh_vector, candidates)[0]
        stale = fresh
        if changed or int(vector_version) != int(serving_version):
            stale_vector = by.user_tower(user_inputs(self.users.features(user_rank, made)))[0]
            stale = serving.online(stale_vector, candidates)[0]
        return self._scored(
            int(user_rank),
            item_ranks,
            t,
            stale,
            fresh,
            rng,
            stale_fraction=0.0,  # the candidates' features are read at t
            version_mismatch_fraction=float(int(vector_version) != int(serving_version)),
            user_stale=changed,
            user_vector_age_s=now - made,
        )


def _fields(state: ItemState) -> list[torch.Tensor]:
    return [getattr(state, f.name) for f in fields(ItemState)]


def shadow_quality(scored: Sequence[ScoredRequest], rng: np.random.Generator, k: int = QUALITY_K) -> dict:
    """The summary's `quality` section over scored requests: `scored_requests`, `scored_candidates`,
    `stale_fraction` (the share of scored candidates whose world item changed after its vector was made),
    `stale` and `fresh` ({"auc", "gauc", "hr_at_100"}: GAUC groups by simulated user rank; AUC pools all
    candidates; HR@k is the share of clicked candidates in their request's top k; nan when the labels have one
    class only), `gauc_loss` (fresh - stale GAUC with its paired bootstrap interval `lo`, `hi`, standard error
    `se` and the smallest loss the run could detect, `detectable`: `paired_gauc_difference`, drawn with `rng`),
    `user_stale_fraction` (the share of scored requests whose user's features changed after the user vector
    scored was made) and `user_vector_age_s` (`mean`, `p50`, `p99`, `max` of that vector's age; 0 for a vector
    made for the request)."""
    groups = [r.user_rank for r in scored]
    labels = [r.labels for r in scored]
    sizes = np.array([len(r.labels) for r in scored], dtype=np.int64)
    flat = {name: np.concatenate([getattr(r, name) for r in scored]) if scored else np.empty(0) for name in ("labels", "stale", "fresh")}
    stale_share = np.array([r.stale_fraction for r in scored])
    ages = np.array([r.user_vector_age_s for r in scored], dtype=np.float64)
    return {
        "scored_requests": len(scored),
        "scored_candidates": int(sizes.sum()),
        "stale_fraction": float((stale_share * sizes).sum() / sizes.sum()) if sizes.sum() else float("nan"),
        "stale": ragged_metrics(groups, labels, [r.stale for r in scored], k),
        "fresh": ragged_metrics(groups, labels, [r.fresh for r in scored], k),
        "gauc_loss": paired_gauc_difference(np.repeat(groups, sizes), flat["labels"], flat["fresh"], flat["stale"], rng),
        "user_stale_fraction": float(np.mean([r.user_stale for r in scored])) if scored else float("nan"),
        "user_vector_age_s": _age_summary(ages),
    }


def _age_summary(ages: np.ndarray) -> dict[str, float]:
    """`mean`, `p50`, `p99` and `max` of ages (s; nan when there are none)."""
    if not len(ages):
        return dict.fromkeys(("mean", "p50", "p99", "max"), float("nan"))
    p50, p99 = np.quantile(ages, [0.5, 0.99])
    return {"mean": float(ages.mean()), "p50": float(p50), "p99": float(p99), "max": float(ages.max())}


def world_item_changes(checkpoint: str | Path, population: int, duration_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The world's item changes during a simulated run of `duration_s`, for a simulator whose item updates follow
    the world: change times in simulated seconds (sorted; world time minus the checkpoint's training end, the
    shadow scorer's default start) and, per change, the range [first, stop) of simulated item ranks that map onto
    the changed world item (the rule of `World.items_by_rank`)."""
    ckpt = load_checkpoint(checkpoint)
    world = World(ckpt.world_config)
    start = float(ckpt.trained_until_s)
    timeline = world.changes
    inside = (timeline.times > start) & (timeline.times <= start + duration_s)
    order = np.argsort(timeline.times[inside], kind="stable")
    times = timeline.times[inside][order] - start
    world_rank = np.empty(len(world.item_order), dtype=np.int64)
    world_rank[world.item_order] = np.arange(len(world.item_order))
    ranks = world_rank[timeline.ids[inside][order]]
    n = len(world.item_order)
    if population > n:  # rank r maps to world rank r * n // population
        first, stop = -(-ranks * population // n), -(-(ranks + 1) * population // n)
    else:
        keep = ranks < population
        times, ranks = times[keep], ranks[keep]
        first, stop = ranks, ranks + 1
    return times, first, stop
