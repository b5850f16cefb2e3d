"""The queue of a batching stage, shared by both engines: waiting requests in FIFO order, some of which may
have left (timed out) and are skipped; batches are taken oldest first. Engines add their own signals to
`Waiting` (a simpy event, an asyncio future) and raise them."""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

from aif_sim.core.request import Request


class Waiting:
    """A request waiting in a batching queue since `arrived`."""

    __slots__ = ("request", "arrived", "abandoned")

    def __init__(self, request: Request, arrived: float) -> None:
        self.request, self.arrived, self.abandoned = request, arrived, False


W = TypeVar("W", bound=Waiting)


class BatchQueue(Generic[W]):
    """FIFO of `Waiting` entries (an engine's subclass); `live` counts those that have not left."""

    def __init__(self) -> None:
        self.entries: deque[W] = deque()
        self.live = 0

    def add(self, waiting: W) -> None:
        self.entries.append(waiting)
        self.live += 1

    def abandon(self, waiting: W) -> None:
        """The request left the queue (it stays in the deque until skipped)."""
        waiting.abandoned = True
        self.live -= 1

    def oldest(self) -> W:
        """The longest-waiting entry still there (the queue must have one)."""
        while self.entries[0].abandoned:
            self.entries.popleft()
        return self.entries[0]

    def take(self, max_size: int) -> list[W]:
        """Up to `max_size` entries still there, oldest first, out of the queue."""
        batch: list[W] = []
        while self.entries and len(batch) < max_size:
            waiting = self.entries.popleft()
            if not waiting.abandoned:
                batch.append(waiting)
        self.live -= len(batch)
        return batch
