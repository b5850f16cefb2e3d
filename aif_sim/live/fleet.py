"""A stage of several nodes in wall-clock time, with the DES's rules (`sim.fleet`): machines, each a pool with its
own FIFO queue, queue limit, timeout and batching (`live.pools`), behind the stage's balancer (`core.balance`, drawing
from the same stream as the DES, so both engines make the same random choices).

A visit goes to the node the balancer picks from every live node's outstanding count (queued and in service). A
sharded stage splits the visit into its shards, each sent at once to a distinct node (picked in turn among the nodes
not holding another of its shards), where it takes its own drawn service (`Request.shard_s`): an awaited stage
awaits it; a model stage runs the model on the shard's candidates. The visit ends with its last shard, with the
largest of their outcomes; its times are (sent, the last shard's start and end), its service the slowest shard's.
A shard is a view of its request: the request's payload, with its arrays along the candidates (`PER_CANDIDATE`)
cut to the shard's slice, and the visit's cache-miss latency (as in the DES, every shard waits for it); when every
shard has completed, those arrays are joined back in candidate order (the shards' scores become the request's)
and any other value a shard made is the first shard's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from aif_sim.core.balance import BALANCERS, Uniforms
from aif_sim.core.request import Outcome, Request
from aif_sim.core.system import shard_sizes
from aif_sim.core.traffic import stream
from aif_sim.live.loop import Clock
from aif_sim.live.pools import LivePool, Work
from aif_sim.metrics.recorder import Recorder
from aif_sim.scenario.schema import Stage

COMPLETED = Outcome.COMPLETED
PER_CANDIDATE = ("candidates", "items", "scores")  # payload arrays with one row per candidate, in candidate order


class LiveFleet:
    """`nodes` pools (of one stage slot, sharing its work) behind the stage `name`'s balancer."""

    def __init__(self, clock: Clock, name: str, config: Stage, nodes: list[LivePool], seed: int, recorder: Recorder) -> None:
        self.clock, self.nodes, self.recorder = clock, nodes, recorder
        self.slot = nodes[0].slot
        self.live = list(range(len(nodes)))
        self.balancer = BALANCERS[config.balance](len(nodes), Uniforms(stream(seed, f"balance:{name}")))

    @property
    def work(self) -> Work:
        """The stage's work, which every node does."""
        return self.nodes[0].work

    def _pick(self, holding: list[int]) -> int:
        """A live node not holding another shard of the visit."""
        eligible = [n for n in self.live if n not in holding]
        return self.balancer.choose([node.outstanding for node in self.nodes], eligible)

    async def serve(self, request: Request) -> Outcome:
        if request.shard_s is None or self.slot not in request.shard_s:
            return await self.nodes[self._pick([])].serve(request)
        sent = self.clock()
        holding: list[int] = []
        for _ in request.shard_s[self.slot]:
            holding.append(self._pick(holding))
        shards = self._shards(request, request.shard_s[self.slot])
        outcome = max(await asyncio.gather(*(self.nodes[node].serve(shard) for node, shard in zip(holding, shards))))
        if outcome is COMPLETED:
            base = 3 * self.slot
            ends = [shard.times[base + 2] for shard in shards]
            last = shards[int(np.argmax(ends))]
            request.times[base : base + 3] = (sent, last.times[base + 1], last.times[base + 2])
            request.service_s[self.slot] = max(shard.service_s[self.slot] for shard in shards)  # the slowest shard, measured
            self._join(request, shards)
            if request.measured:
                self.recorder.shard_skew(self.slot, max(ends) - float(np.median(ends)))
        return outcome

    def _shards(self, request: Request, services: list[float]) -> list[Request]:
        """The request's shards at this slot: each with its drawn service and its slice of the candidates."""
        sizes = shard_sizes(np.array([request.candidates]), len(services))[0]
        payload: dict[str, Any] = request.payload
        cuts = np.cumsum(sizes)[:-1]
        split = {key: np.split(payload[key], cuts) for key in PER_CANDIDATE if key in payload}
        shards = []
        miss_s = request.miss_s[self.slot] if request.miss_s is not None else 0.0
        for i, (service, size) in enumerate(zip(services, sizes.tolist())):
            service_s = list(request.service_s)
            service_s[self.slot] = service + miss_s
            shard = Request(request.id, request.arrival_s, request.user, size, request.measured, service_s)
            shard.miss_s = request.miss_s
            shard.payload = payload | {key: parts[i] for key, parts in split.items()}
            shards.append(shard)
        return shards

    def _join(self, request: Request, shards: list[Request]) -> None:
        """What the shards made, back into the request's payload (see the module docstring)."""
        made = shards[0].payload
        request.payload.update(made)
        request.payload.update({key: np.concatenate([shard.payload[key] for shard in shards]) for key in PER_CANDIDATE if key in made})

    def close(self) -> list[asyncio.Task[Any]]:
        """Stop every node's tasks (the run is over); the tasks stopped, to await."""
        return [task for node in self.nodes for task in node.close()]
