"""What a visit to a stage does in the live engine, while its pool holds a server.

- A model stage (`live.model.MODEL_OPS`: user_inference, rtp, prerank, light_prerank, online_prerank) runs the real
  operator in the executor, after the cache-miss latency its requests drew, if they missed (and after
  fetching the nearline vectors the step reads, if it reads any).
- Any other stage stands for an external service (merger, retrieval, feature and item fetch): it takes
  the request's drawn service time (the DES's draw, miss latency included), measured from the visit's
  start. A stage that reads nearline vectors really fetches them from their storage within that time
  (the visit ends when both the fetch and the drawn time are over); a stage that reads through a cache (the
  SIM features) takes the user's long-term behaviours from the feature source when the cache missed.
A batching stage serves a batch: a model operator over all of it; an external one for the batch's drawn
time, as the DES draws it. `slowdown` stretches the visit (a stage_slowdown fault).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

import numpy as np

from aif_sim.core.latency import Sampler
from aif_sim.core.request import Request
from aif_sim.live.index import VectorStore
from aif_sim.live.loop import Clock
from aif_sim.live.model import MODEL_OPS, LiveModel
from aif_sim.live.nearline import FirstRead
from aif_sim.scenario.pipelines import Call

BEHAVIOUR_OPS = ("user_side", "sequential_prerank", "aif_online")  # operators that read the user's long-term behaviours


class LiveStage:
    """The work of one stage slot of a pipeline (see the module docstring)."""

    def __init__(
        self,
        clock: Clock,
        slot: int,
        call: Call,
        sampler: Sampler,
        rng: np.random.Generator,
        model: LiveModel,
        executor: Executor,
        vectors: VectorStore | FirstRead | None,
        per_candidate_us: float = 0.0,
        entities: str = "items",
    ) -> None:
        self.clock, self.slot, self.call, self.sampler, self.rng = clock, slot, call, sampler, rng
        self.per_candidate_s = per_candidate_us / 1e6
        self.model, self.executor, self.vectors = model, executor, vectors
        self.entities = entities  # what the vectors it reads are of: items or users
        self.op = MODEL_OPS.get(call.stage)
        self.needs_behaviour = call.reads is not None or self.op in BEHAVIOUR_OPS
        self.slowdown = 1.0

    async def __call__(self, requests: list[Request]) -> None:
        started = self.clock()
        if self.vectors is not None:
            for request in requests:
                await self._fetch(request)
        if self.op is not None:
            await self._model(requests, started)
            return
        if self.needs_behaviour:
            self._behaviours(requests)
        await self.clock.until(started + self._drawn_s(requests) * self.slowdown)

    def _drawn_s(self, requests: list[Request]) -> float:
        """The visit's drawn time: the request's own draw, or a batch's, drawn at its size as the DES does."""
        if len(requests) == 1:
            return requests[0].service_s[self.slot]
        candidates = sum(r.candidates for r in requests)
        work = len(requests) if self.sampler.work_key == "batch" else candidates
        drawn_s = float(self.sampler.sample(self.rng, 1, work)[0]) / 1000 + self.per_candidate_s * candidates
        return drawn_s + self._miss_s(requests)

    def _miss_s(self, requests: list[Request]) -> float:
        """The cache-miss latency the visit waits for (a batch waits for its slowest miss)."""
        if requests[0].miss_s is None:
            return 0.0
        return max(request.miss_s[self.slot] for request in requests)

    def _behaviours(self, requests: list[Request]) -> None:
        """Long-term behaviours of the users whose SIM features were not cached (the feature source's read)."""
        for request in requests:
            if "behaviour" not in request.payload:
                request.payload["behaviour"] = self.model.features.long_behaviour(request.user)

    async def _fetch(self, request: Request) -> None:
        """The nearline vectors the request reads: its candidates' item vectors, or its user-interest vector."""
        assert self.vectors is not None
        payload = request.payload
        if self.entities == "items":
            payload["items"], _ = await self.vectors.get_many(payload["candidates"])
        else:
            payload["interest"] = await self.vectors.get(request.user)

    async def _model(self, requests: list[Request], started: float) -> None:
        miss_s = self._miss_s(requests)
        if miss_s > 0:
            await asyncio.sleep(miss_s)
        if self.needs_behaviour:
            self._behaviours(requests)
        payloads = [request.payload for request in requests]
        await self.clock.loop.run_in_executor(self.executor, self.model.run, self.op, payloads)
        if self.slowdown != 1.0:
            await asyncio.sleep((self.slowdown - 1.0) * (self.clock() - started))
