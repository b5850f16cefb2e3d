"""A stage of several nodes: machines, each a pool with its own FIFO queue, behind a load balancer.

`Fleet.serve(request)` picks a node with the stage's balancer (`core.balance`) from every node's outstanding
count (the requests at the node, queued and in service), then serves the visit there; the node's queue limit,
timeout and batching are its own. A sharded stage splits the visit into its shards (`Request.shard_s`), each
sent at once to a distinct node (picked in turn among the nodes not holding another of its shards); the visit ends
when its last shard ends, with the largest of their outcomes (as a parallel step joins). Its times are (sent,
the last shard's start, the last shard's end). A stage of one node is a plain pool (`sim.pools`), with no
fleet around it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np
import simpy

from aif_sim.core.balance import BALANCERS, Uniforms
from aif_sim.core.request import Outcome, Request
from aif_sim.core.traffic import stream
from aif_sim.metrics.recorder import Recorder
from aif_sim.sim.pools import Part, StagePool

Spawn = Callable[[Request, Generator[simpy.Event, Any, Outcome]], simpy.Process]


class Outstanding(Sequence[int]):
    """Each node's outstanding requests, read when a balancer looks."""

    def __init__(self, nodes: list[StagePool]) -> None:
        self.nodes = nodes

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, node: int) -> int:  # type: ignore[override]
        return self.nodes[node].outstanding


class Fleet:
    """`nodes` pools behind the stage's balancer; `slowdown` (a stage_slowdown fault) applies to every node.
    `spawn` starts a process for a request (the engine keeps them, to abandon them at the request's deadline)."""

    def __init__(
        self, env: simpy.Environment, name: str, nodes: list[StagePool], balance: str, seed: int, recorder: Recorder, spawn: Spawn
    ) -> None:
        self.env, self.nodes, self.recorder, self.spawn = env, nodes, recorder, spawn
        self.slot = nodes[0].slot
        self.outstanding = Outstanding(nodes)
        self.live = list(range(len(nodes)))
        self.balancer = BALANCERS[balance](len(nodes), Uniforms(stream(seed, f"balance:{name}")))

    @property
    def slowdown(self) -> float:
        return self.nodes[0].slowdown

    @slowdown.setter
    def slowdown(self, factor: float) -> None:
        for node in self.nodes:
            node.slowdown = factor

    def serve(self, request: Request) -> Generator[simpy.Event, Any, Outcome]:
        if request.shard_s is not None and self.slot in request.shard_s:
            return (yield from self._sharded(request, request.shard_s[self.slot]))
        node = self.balancer.choose(self.outstanding, self.live)
        return (yield from self.nodes[node].serve(request))

    def _sharded(self, request: Request, services: list[float]) -> Generator[simpy.Event, Any, Outcome]:
        sent = self.env.now
        parts = [Part(service) for service in services]
        nodes: list[int] = []
        for _ in parts:
            nodes.append(self.balancer.choose(self.outstanding, [n for n in self.live if n not in nodes]))
        others = [self.spawn(request, self.nodes[node].serve(request, part)) for node, part in zip(nodes[:-1], parts[:-1])]
        outcome = yield from self.nodes[nodes[-1]].serve(request, parts[-1])  # the last shard runs in this process
        for other in others:
            outcome = max(outcome, (yield other))
        if outcome is Outcome.COMPLETED:
            last = max(parts, key=lambda part: part.ended)
            request.times[3 * self.slot : 3 * self.slot + 3] = (sent, last.started, last.ended)
            request.service_s[self.slot] = max(part.service for part in parts)  # the slowest shard, with no waiting
            if request.measured:
                self.recorder.shard_skew(self.slot, last.ended - float(np.median([part.ended for part in parts])))
        return outcome
