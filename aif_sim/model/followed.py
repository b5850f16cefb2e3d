"""The scored world's users behaving at the simulator's user events (shadow scoring of UIC's user-interest vectors).

A simulated user rank r is, up to `after_s`, its world user w (`World.users_by_rank`): w's profile, long-term
behaviours, interests and behaviour history. From `after_s` on it behaves exactly at the simulator's user events
for rank r (`core.changes.user_changes`), and only then: each event appends one item to its short sequence,
drawn near w's interest current at that moment by the world's own rule (`World.behaviour_items`), from a
random stream of (world seed, `seed`, r). Several simulated ranks share a world user when the simulated user base
is larger than the world's; each keeps its own events, so a rank's features change exactly when the simulator
changes that rank. Ground truth (taste, interests, the current interest) is w's.

Every feature that changes is in the short sequence, so a user-interest vector made at t0 differs from one made
at t1 > t0 exactly when the rank has an event in (t0, t1].
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from aif_sim.core.changes import ChangeChunk
from aif_sim.model.world import UserFeatures, World

BEHAVIOUR_STREAM = 8  # the world's random streams: the followed users' behaviour items


class FollowedUsers:
    """Simulated user ranks of a population of `population` (the ranks `follow` was given), their world users and,
    in world time, their events after `after_s`."""

    def __init__(self, world: World, population: int, after_s: float, seed: int) -> None:
        self.world, self.population, self.after_s, self.seed = world, int(population), float(after_s), int(seed)
        self._times: dict[int, np.ndarray] = {}  # rank -> its event times (world seconds, sorted)
        self._sequence: dict[int, np.ndarray] = {}  # rank -> its short sequence at after_s, then one item per event

    @property
    def ranks(self) -> list[int]:
        """The ranks followed so far."""
        return sorted(self._times)

    def follow(self, ranks: Iterable[int], chunks: Iterable[ChangeChunk], offset_s: float) -> None:
        """Follow these ranks: take their events from the simulator's user events `chunks` (simulated times; world time
        = `offset_s` + simulated time, each after `after_s`). Ranks already followed keep their events."""
        wanted = np.unique(np.fromiter((int(r) for r in ranks if int(r) not in self._times), dtype=np.int64))
        if not len(wanted):
            return
        if wanted[0] < 0 or wanted[-1] >= self.population:
            raise ValueError(f"user rank outside 0..{self.population - 1} (population {self.population})")
        which, times = [], []
        for chunk in chunks:
            lo = np.searchsorted(wanted, np.asarray(chunk.first, dtype=np.int64))
            hi = np.searchsorted(wanted, np.asarray(chunk.stop, dtype=np.int64))
            count = hi - lo
            change = np.repeat(np.arange(len(count)), count)
            which.append(np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count) + lo[change])
            times.append(offset_s + np.asarray(chunk.times_s, dtype=np.float64)[change])
        which_all = np.concatenate(which) if which else np.empty(0, np.int64)
        times_all = np.concatenate(times) if times else np.empty(0)
        if len(times_all) and times_all.min() <= self.after_s:
            raise ValueError(f"followed users: events must come after {self.after_s:g} s")
        order = np.argsort(which_all, kind="stable")  # chunks come in time order: each rank's events stay sorted
        which_all, times_all = which_all[order], times_all[order]
        bounds = np.searchsorted(which_all, np.arange(len(wanted) + 1))
        users = self.world.users_by_rank(wanted, self.population)
        history = self.world.short_items(users, self.after_s)
        for k, (rank, user) in enumerate(zip(wanted.tolist(), users.tolist())):
            when = times_all[bounds[k] : bounds[k + 1]]
            uniforms = np.random.default_rng([self.world.cfg.seed, BEHAVIOUR_STREAM, self.seed, rank]).random(len(when))
            self._times[rank] = when
            self._sequence[rank] = np.concatenate([history[k], self.world.behaviour_items(user, when, uniforms)])

    def _times_of(self, rank: int) -> np.ndarray:
        try:
            return self._times[int(rank)]
        except KeyError:
            raise ValueError(f"user rank {rank} is not followed; follow it first") from None

    def events(self, rank: int) -> np.ndarray:
        """The rank's event times (world seconds, sorted)."""
        return self._times_of(rank).copy()

    def short_items(self, rank: int, t: float) -> np.ndarray:
        """The rank's short sequence [short_len] at world time t >= after_s: its latest behaviours, oldest first."""
        count = int(np.searchsorted(self._times_of(rank), t, side="right"))
        return self._sequence[int(rank)][count : count + self.world.cfg.short_len]

    def features(self, rank: int, t: float) -> UserFeatures:
        """The rank's features at world time t >= after_s (a batch of one)."""
        user = self.world.users_by_rank(np.array([rank]), self.population)
        return self.world.sequence_features(user, self.short_items(rank, t)[None, :])

    def changed_between(self, rank: int, t0: float, t1: float) -> bool:
        """Whether the rank's features changed in (t0, t1] (world times)."""
        times = self._times_of(rank)
        return bool(np.searchsorted(times, t1, side="right") > np.searchsorted(times, t0, side="right"))
