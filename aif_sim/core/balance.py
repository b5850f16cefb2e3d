"""Load balancers: how a visit, a shard or a copy picks a live node of a stage (`stages.NAME.balance`).

Each balancer is one small class with one override point, `choose(outstanding, eligible)`: given every node's
outstanding count (queued and in service) and the nodes it may pick (live, and not already holding another
shard or copy of the same visit), the node it picks. Random draws come from the stage's own stream of uniforms
(`Uniforms`, `stream(seed, "balance:<stage>")`), a fixed number per pick (random 1, p2c 2, the others 0), so
every engine and every pipeline of a run make the same choices from the same state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

BLOCK = 4096


class Uniforms:
    """Uniform draws in [0, 1) from a stream, taken one at a time, drawn a block at a time."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.block = np.empty(0)
        self.next = 0

    def take(self) -> float:
        if self.next == len(self.block):
            self.block, self.next = self.rng.random(BLOCK), 0
        value = float(self.block[self.next])
        self.next += 1
        return value


class Balancer:
    """Picks one of `eligible` (node indices, ascending) for a visit, given each node's outstanding count."""

    name: ClassVar[str]
    draws: ClassVar[int] = 0  # uniforms taken per pick

    def __init__(self, nodes: int, uniforms: Uniforms) -> None:
        self.nodes, self.uniforms = nodes, uniforms

    def choose(self, outstanding: Sequence[int], eligible: Sequence[int]) -> int:
        raise NotImplementedError


class RandomBalancer(Balancer):
    """Uniformly at random among the eligible nodes."""

    name, draws = "random", 1

    def choose(self, outstanding: Sequence[int], eligible: Sequence[int]) -> int:
        return eligible[int(self.uniforms.take() * len(eligible))]


class RoundRobin(Balancer):
    """The eligible nodes in turn: the first eligible node after the one picked last."""

    name = "round_robin"

    def __init__(self, nodes: int, uniforms: Uniforms) -> None:
        super().__init__(nodes, uniforms)
        self.last = nodes - 1

    def choose(self, outstanding: Sequence[int], eligible: Sequence[int]) -> int:
        node = next((n for n in eligible if n > self.last), eligible[0])
        self.last = node
        return node


class LeastOutstanding(Balancer):
    """The node with the fewest outstanding requests (join the shortest queue); ties to the lowest index."""

    name = "least_outstanding"

    def choose(self, outstanding: Sequence[int], eligible: Sequence[int]) -> int:
        return min(eligible, key=lambda n: outstanding[n])


class PowerOfTwo(Balancer):
    """Two distinct eligible nodes drawn uniformly; the one with fewer outstanding, a tie keeping the first drawn
    (Mitzenmacher's power of two choices)."""

    name, draws = "p2c", 2

    def choose(self, outstanding: Sequence[int], eligible: Sequence[int]) -> int:
        count = len(eligible)
        u, v = self.uniforms.take(), self.uniforms.take()
        first = int(u * count)
        if count == 1:
            return eligible[0]
        second = int(v * (count - 1))
        second += second >= first  # the other nodes, uniformly
        a, b = eligible[first], eligible[second]
        return b if outstanding[b] < outstanding[a] else a


BALANCERS: dict[str, type[Balancer]] = {b.name: b for b in (RandomBalancer, RoundRobin, LeastOutstanding, PowerOfTwo)}
