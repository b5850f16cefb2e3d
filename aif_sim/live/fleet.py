"""A stage of several nodes in wall-clock time, with the DES's rules (`sim.fleet`): machines, each a pool with its
own FIFO queue, queue limit, timeout and batching (`live.pools`), behind the stage's balancer (`core.balance`, drawing
from the same stream as the DES, so both engines make the same random choices).

A visit goes to the node the balancer picks from every live node's outstanding count (queued and in service). A
sharded stage splits the visit into its shards, each sent at once to a distinct node (picked in turn among the nodes
not holding another of its shards), where it takes its own drawn service (`Request.shard_s`): an awaited stage
awaits it; a model stage runs the model on the shard's candidates. Then, as in the DES:
- hedging (`hedge_after_ms`): a visit or shard unfinished that long after it was sent is sent again to another live
  node not holding a shard or copy of it: an awaited stage's copy takes a service drawn anew from the stage's
  `copies:<stage>` stream, a model stage's copy runs the model again on the same candidates. The first copy to
  complete wins; the other is cancelled: it leaves its queue or, if running, finishes as wasted work;
- retries (`retries`): a visit or shard rejected, timed out or lost with its node is sent again to another node
  (the same work: an awaited stage's same drawn service), at most that many times;
- node loss (`lose`): the nodes' queued and running visits fail at once (and are retried where allowed); the
  balancer skips the nodes until they return.
Each send is a view of its shard (or of the whole visit): the request's payload, with its arrays along the
candidates (`PER_CANDIDATE`) cut to the shard's slice, and the visit's cache-miss latency (as in the DES, every shard
waits for it). The copy that completes gives its shard its times and what it made; when every shard has completed,
the arrays along the candidates are joined back in candidate order (the shards' scores become the request's) and any
other value a shard made is the first shard's. The visit ends with its last shard, with the largest of their
outcomes; its times are (sent, the last shard's start and end), its service the slowest shard's: the measured
service of the copy that completed, or, for an awaited stage that sent a copy, the DES's no-contention time from the
drawn services, min(X1, d + X2) when X1 > d (a model stage's copies do the same work: X1 = X2, the measured one).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from aif_sim.core.fleet import FleetPolicy, last_shard
from aif_sim.core.latency import Sampler
from aif_sim.core.request import Outcome, Request
from aif_sim.core.system import shard_sizes
from aif_sim.live.loop import Clock
from aif_sim.live.pools import LivePool, Work
from aif_sim.metrics.recorder import Recorder
from aif_sim.scenario.schema import Stage

COMPLETED = Outcome.COMPLETED
PER_CANDIDATE = ("candidates", "items", "scores")  # payload arrays with one row per candidate, in candidate order


class LiveFleet:
    """`nodes` pools (of one stage slot, sharing its work) behind the stage `name`'s balancer. `sampler` draws an
    awaited stage's hedge copies; None for a model stage, whose copies run the model again."""

    def __init__(
        self,
        clock: Clock,
        name: str,
        config: Stage,
        nodes: list[LivePool],
        seed: int,
        recorder: Recorder,
        sampler: Sampler | None = None,
    ) -> None:
        self.clock, self.nodes, self.recorder = clock, nodes, recorder
        self.slot = nodes[0].slot
        self.policy = FleetPolicy(name, config, seed, sampler)

    @property
    def work(self) -> Work:
        """The stage's work, which every node does."""
        return self.nodes[0].work

    async def lose(self, count: int, duration_s: float) -> None:
        """Nodes 0..count-1 go down for `duration_s`: what they hold fails, and no visit is sent to them."""
        lost = self.policy.down(count)
        for node in lost:
            self.nodes[node].lose()
        await asyncio.sleep(duration_s)
        self.policy.up(lost)

    def _outstanding(self) -> list[int]:
        return [node.outstanding for node in self.nodes]

    async def serve(self, request: Request) -> Outcome:
        sent = self.clock()
        sharded = request.shard_s is not None and self.slot in request.shard_s
        parts = self._shards(request, request.shard_s[self.slot]) if sharded else [self._view(request)]  # type: ignore[index]
        first, holding = self.policy.first_nodes(self._outstanding(), len(parts))  # holding: the nodes a shard or copy is at
        if len(parts) == 1:
            outcome = await self._deliver(parts[0], first[0], holding)
        else:
            outcome = max(await asyncio.gather(*(self._deliver(part, node, holding) for part, node in zip(parts, first))))
        if outcome is COMPLETED:
            base = 3 * self.slot
            index, skew_s = last_shard([part.times[base + 2] for part in parts])
            last = parts[index]
            request.times[base : base + 3] = (sent, last.times[base + 1], last.times[base + 2])
            request.service_s[self.slot] = max(part.service_s[self.slot] for part in parts)  # the slowest shard
            if sharded:
                request.shard_s[self.slot] = [part.service_s[self.slot] for part in parts]  # type: ignore[index]
            self._join(request, parts)
            if request.measured and len(parts) > 1:
                self.recorder.shard_skew(self.slot, skew_s)
        return outcome

    async def _deliver(self, part: Request, node: int | None, holding: list[int]) -> Outcome:
        """A shard (or the whole visit) sent to `node`, hedged, and sent again on failure where the policy says."""
        outcome = Outcome.REJECTED if node is None else await self._hedged(part, node, holding)
        retried = 0
        while (node := self.policy.retry_to(outcome, retried, self._outstanding(), holding)) is not None:
            retried += 1
            self.recorder.retry(self.slot)
            outcome = await self._hedged(part, node, holding)
        return outcome

    async def _hedged(self, part: Request, node: int, holding: list[int]) -> Outcome:
        """The part on `node` and, unfinished after the hedge delay, a copy on another node: the first to complete
        gives the part its results; the other is cancelled (it leaves its queue, or finishes as wasted work)."""
        first = self._view(part)
        if self.policy.hedge_s is None:
            return self._won(part, first, await self.nodes[node].serve(first), None)
        loop = asyncio.get_running_loop()
        primary = loop.create_task(self.nodes[node].serve(first))
        sends = {primary: first}
        try:
            await asyncio.wait((primary,), timeout=self.policy.hedge_s)
            spare = self.policy.hedge_to(primary.done(), self._outstanding(), holding)
            if spare is None:
                return self._won(part, first, await primary, None)
            self.recorder.hedge(self.slot)
            drawn_s = self.policy.draw_copy(part.candidates) if self.policy.sampler is not None else None
            copy = self._view(part, drawn_s)
            second = loop.create_task(self.nodes[spare].serve(copy))
            sends[second] = copy
            done, _ = await asyncio.wait(sends, return_when=asyncio.FIRST_COMPLETED)
            ended = primary if primary in done else second
            if ended.result() is not COMPLETED:
                ended = second if ended is primary else primary
                await asyncio.wait((ended,))
            return self._won(part, sends[ended], ended.result(), drawn_s)
        finally:
            for send in sends:
                send.cancel()

    def _won(self, part: Request, send: Request, outcome: Outcome, copy_s: float | None) -> Outcome:
        """The part's results from the send that completed: its times, what it made, and its service alone (see the
        module docstring; `copy_s`: an awaited stage's copy's drawn service, when one was sent)."""
        if outcome is COMPLETED:
            base, slot = 3 * self.slot, self.slot
            part.times[base : base + 3] = send.times[base : base + 3]
            part.payload = send.payload
            if copy_s is None:
                part.service_s[slot] = send.service_s[slot]  # measured
            else:
                part.service_s[slot] = self.policy.alone(part.service_s[slot], copy_s)
        return outcome

    def _shards(self, request: Request, services: list[float]) -> list[Request]:
        """The request's shards at this slot: each with its drawn service and its slice of the candidates."""
        sizes = shard_sizes(np.array([request.candidates]), len(services))[0]
        payload: dict[str, Any] = request.payload
        cuts = np.cumsum(sizes)[:-1]
        split = {key: np.split(payload[key], cuts) for key in PER_CANDIDATE if key in payload}
        miss_s = request.miss_s[self.slot] if request.miss_s is not None else 0.0
        shards = []
        for i, (service, size) in enumerate(zip(services, sizes.tolist())):
            shard = self._view(request, service + miss_s, size)
            shard.payload.update({key: parts[i] for key, parts in split.items()})
            shards.append(shard)
        return shards

    def _join(self, request: Request, parts: list[Request]) -> None:
        """What the shards made, back into the request's payload (see the module docstring)."""
        made = parts[0].payload
        request.payload.update(made)
        if len(parts) > 1:
            request.payload.update({key: np.concatenate([part.payload[key] for part in parts]) for key in PER_CANDIDATE if key in made})

    def _view(self, request: Request, service_s: float | None = None, candidates: int | None = None) -> Request:
        """The request, a shard or a copy of its visit as a request of its own: its own payload, service and stage
        times, so that what one send makes or measures never reaches another (`service_s`: its service here, where
        it differs from the request's: a shard's, an awaited stage's copy's)."""
        count = request.candidates if candidates is None else candidates
        view = Request(request.id, request.arrival_s, request.user, count, request.measured, list(request.service_s))
        if service_s is not None:
            view.service_s[self.slot] = service_s
        view.miss_s = request.miss_s
        view.payload = dict(request.payload)
        return view

    def close(self) -> list[asyncio.Task[Any]]:
        """Stop every node's tasks (the run is over); the tasks stopped, to await."""
        return [task for node in self.nodes for task in node.close()]
