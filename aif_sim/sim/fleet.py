"""A stage of several nodes: machines, each a pool with its own FIFO queue, behind a load balancer.

`Fleet.serve(request)` sends the visit to a node its balancer (`core.balance`) picks from every live node's
outstanding count (queued and in service); the node's queue limit, timeout and batching are its own. Then:
- shards: a sharded stage splits the visit into its shards (`Request.shard_s`), each sent at once to a
  distinct node (picked in turn among the nodes not holding another of its shards); the visit ends when its
  last shard ends, with the largest of their outcomes (as a parallel step joins);
- hedging (`hedge_after_ms`): a visit or shard unfinished that long after it was sent is sent again to another
  node, with a service drawn anew; the first copy to complete wins, the other leaves its queue or, if running,
  finishes as wasted work. Without waiting, a hedged visit takes min(X1, d + X2) when X1 > d: its no-contention
  time;
- retries (`retries`): a visit or shard rejected, timed out or lost with its node is sent again to another node
  (the same work, so the same service time), at most that many times;
- node loss (`lose`): the nodes' queued and running visits fail at once (and are retried where allowed); the
  balancer skips the nodes until they return.
The visit's times are (sent, the start and end of the copy that completed last among its shards). A stage of
one node is a plain pool (`sim.pools`), with no fleet around it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np
import simpy

from aif_sim.core.fleet import FleetPolicy, last_shard
from aif_sim.core.latency import Sampler
from aif_sim.core.request import Outcome, Request
from aif_sim.core.system import shard_sizes
from aif_sim.metrics.recorder import Recorder
from aif_sim.scenario.schema import Stage
from aif_sim.sim.pools import Part, StagePool, cancellable

COMPLETED = Outcome.COMPLETED
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
        self,
        env: simpy.Environment,
        name: str,
        config: Stage,
        nodes: list[StagePool],
        sampler: Sampler,
        seed: int,
        recorder: Recorder,
        spawn: Spawn,
    ) -> None:
        self.env, self.nodes, self.recorder, self.spawn = env, nodes, recorder, spawn
        self.slot = nodes[0].slot
        self.outstanding = Outstanding(nodes)
        self.policy = FleetPolicy(name, config, seed, sampler)

    @property
    def slowdown(self) -> float:
        return self.nodes[0].slowdown

    @slowdown.setter
    def slowdown(self, factor: float) -> None:
        for node in self.nodes:
            node.slowdown = factor

    def lose(self, count: int, duration_s: float) -> Generator[simpy.Event, Any, None]:
        """Nodes 0..count-1 go down for `duration_s`: what they hold fails, and no visit is sent to them."""
        lost = self.policy.down(count)
        for node in lost:
            self.nodes[node].lose()
        yield self.env.timeout(duration_s)
        self.policy.up(lost)

    def serve(self, request: Request) -> Generator[simpy.Event, Any, Outcome]:
        sent = self.env.now
        sharded = request.shard_s is not None and self.slot in request.shard_s
        if sharded:  # every shard waits for the visit's cache miss, if it had one
            miss_s = request.miss_s[self.slot] if request.miss_s is not None else 0.0
            services = [service + miss_s for service in request.shard_s[self.slot]]  # type: ignore[index]
        else:
            services = [request.service_s[self.slot]]
        sizes = shard_sizes(np.array([request.candidates]), len(services))[0].tolist()
        parts = [Part(service, candidates) for service, candidates in zip(services, sizes)]
        first, holding = self.policy.first_nodes(self.outstanding, len(parts))  # holding: the nodes a shard or copy is at
        others = [self.spawn(request, cancellable(self._deliver(request, p, n, holding))) for p, n in zip(parts[:-1], first[:-1])]
        outcome = yield from self._deliver(request, parts[-1], first[-1], holding)  # the last shard runs in this process
        for other in others:
            outcome = max(outcome, (yield other))
        if outcome is COMPLETED:
            index, skew_s = last_shard([part.ended for part in parts])
            last = parts[index]
            request.times[3 * self.slot : 3 * self.slot + 3] = (sent, last.started, last.ended)
            request.service_s[self.slot] = max(part.alone for part in parts)  # the slowest shard, with no waiting
            if request.measured and len(parts) > 1:
                self.recorder.shard_skew(self.slot, skew_s)
        return outcome

    def _deliver(self, request: Request, part: Part, node: int | None, holding: list[int]) -> Generator[simpy.Event, Any, Outcome]:
        """A shard (or the whole visit) sent to `node`, hedged, and sent again on failure where the policy says."""
        outcome = Outcome.REJECTED if node is None else (yield from self._hedged(request, part, node, holding))
        retried = 0
        while (node := self.policy.retry_to(outcome, retried, self.outstanding, holding)) is not None:
            retried += 1
            self.recorder.retry(self.slot)
            outcome = yield from self._hedged(request, part, node, holding)
        return outcome

    def _hedged(self, request: Request, part: Part, node: int, holding: list[int]) -> Generator[simpy.Event, Any, Outcome]:
        hedge_s = self.policy.hedge_s
        if hedge_s is None:
            return (yield from self.nodes[node].serve_part(request, part))
        primary = self.spawn(request, cancellable(self.nodes[node].serve_part(request, part)))
        yield primary | self.env.timeout(hedge_s)
        spare = self.policy.hedge_to(primary.triggered, self.outstanding, holding)
        if spare is None:
            return (yield primary)
        self.recorder.hedge(self.slot)
        copy = Part(self.policy.draw_copy(part.candidates), part.candidates)
        second = self.spawn(request, cancellable(self.nodes[spare].serve_part(request, copy)))
        yield primary | second
        ended, other = (primary, second) if primary.triggered else (second, primary)
        if ended.value is not COMPLETED:
            ended, other = other, ended
            yield ended
        if other.is_alive:
            other.interrupt()  # the losing copy leaves its queue, or finishes as wasted work
        if ended is second:
            part.started, part.ended = copy.started, copy.ended
        part.alone = self.policy.alone(part.alone, copy.alone)
        return ended.value
