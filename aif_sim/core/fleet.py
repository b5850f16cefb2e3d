"""What every engine's fleet decides the same way (`stages.NAME.nodes` > 1): the live nodes, which of them a send
goes to (the stage's balancer, drawing from the stage's own stream), whether, when and where a visit is hedged,
whether and where a failed send is retried, a hedge copy's drawn service (from the stage's `copies:` stream), a
hedged visit's time alone, and which shard a sharded visit ends with. Each engine keeps only its waiting."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aif_sim.core.balance import BALANCERS, Uniforms
from aif_sim.core.latency import Sampler
from aif_sim.core.request import Outcome
from aif_sim.core.traffic import stream
from aif_sim.scenario.schema import Stage


class FleetPolicy:
    """One fleet stage's choices; `live` lists the nodes up, ascending."""

    def __init__(self, name: str, config: Stage, seed: int, sampler: Sampler | None) -> None:
        self.live = list(range(config.nodes))
        self.balancer = BALANCERS[config.balance](config.nodes, Uniforms(stream(seed, f"balance:{name}")))
        self.hedge_s = config.hedge_after_ms / 1000 if config.hedge_after_ms is not None else None
        self.retries = config.retries
        self.sampler, self.copies = sampler, stream(seed, f"copies:{name}")
        self.per_candidate_s = config.per_candidate_us / 1e6

    def pick(self, outstanding: Sequence[int], holding: list[int]) -> int | None:
        """A live node not holding another shard or copy of the visit (None: there is none)."""
        eligible = [n for n in self.live if n not in holding]
        return self.balancer.choose(outstanding, eligible) if eligible else None

    def first_nodes(self, outstanding: Sequence[int], parts: int) -> tuple[list[int | None], list[int]]:
        """The nodes a visit's parts (its shards, or itself) are first sent to, picked in turn among distinct live
        nodes (None: none was left), and the list of the nodes holding them (which later picks avoid)."""
        first: list[int | None] = []
        holding: list[int] = []
        for _ in range(parts):
            node = self.pick(outstanding, holding)
            first.append(node)
            if node is not None:
                holding.append(node)
        return first, holding

    def retry_to(self, outcome: Outcome, retried: int, outstanding: Sequence[int], holding: list[int]) -> int | None:
        """Where a part (a shard, or the whole visit) whose send ended with `outcome`, after `retried` retries, is sent
        next: another live node, added to `holding`; None when it is over (completed, out of retries, or no node
        left)."""
        if outcome is Outcome.COMPLETED or retried >= self.retries:
            return None
        return self._claim(outstanding, holding)

    def hedge_to(self, finished: bool, outstanding: Sequence[int], holding: list[int]) -> int | None:
        """Where a copy of a part goes once the hedge delay has passed: None if the part has `finished` or no node is
        left, else another live node, added to `holding`."""
        return None if finished else self._claim(outstanding, holding)

    def _claim(self, outstanding: Sequence[int], holding: list[int]) -> int | None:
        node = self.pick(outstanding, holding)
        if node is not None:
            holding.append(node)
        return node

    def down(self, count: int) -> range:
        """Nodes 0..count-1 go down: no send goes to them until `up`."""
        lost = range(count)
        self.live = [n for n in self.live if n not in lost]
        return lost

    def up(self, lost: range) -> None:
        self.live = sorted({*self.live, *lost})

    def draw_copy(self, candidates: int) -> float:
        """A hedge copy's service (s), drawn anew at the part's candidates, as the request's own draws are made."""
        assert self.sampler is not None
        work = 1.0 if self.sampler.work_key == "batch" else float(candidates)
        return float(self.sampler.sample(self.copies, 1, work)[0]) / 1000 + self.per_candidate_s * candidates

    def alone(self, first_s: float, copy_s: float) -> float:
        """A hedged visit's time with no waiting: its first copy's, or the copy's after the delay if that ends first."""
        assert self.hedge_s is not None
        return min(first_s, self.hedge_s + copy_s) if first_s > self.hedge_s else first_s


def last_shard(ends: Sequence[float]) -> tuple[int, float]:
    """The shard a sharded visit ends with (the first of those that ended last), and its skew: the gap between its
    end and the median shard's."""
    last = int(np.argmax(ends))
    return last, ends[last] - float(np.median(ends))
