"""The recorder: the only code that changes a counter of a pipeline run.

Engines call it when a request arrives, when a stage visit ends, when a server's busy period ends
and when a request finishes; it keeps the counts, histograms and time series, and writes the METRICS
block of summary.json. Nothing is kept per finished request.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from aif_sim.core.pipelines import PIPELINES, calls_of, critical_path, stages_of
from aif_sim.core.request import Outcome, Request, Window
from aif_sim.metrics.histogram import LogHistogram
from aif_sim.metrics.timeseries import Timeseries

SLO_MISS_BUDGET = 0.01  # a run meets its SLO when at most 1% of offered requests miss it


class RequestSink(Protocol):
    """Receives finished measured requests (the per-request output file)."""

    def add(self, pipeline: str, request: Request, latency_ms: float, stages: list[str]) -> None: ...


class StageRecord:
    """One stage pool in one pipeline run."""

    def __init__(self, servers: int) -> None:
        self.servers = servers
        self.latency = LogHistogram()
        self.wait = LogHistogram()
        self.busy_window_s = 0.0  # server-seconds busy inside the measurement window
        self.compute_s = 0.0  # service time spent on measured requests (a batch's time split evenly)
        self.critical_ms = 0.0  # time this stage was on the critical path of completed measured requests


class Recorder:
    """Counts, latencies and stage statistics of one pipeline over one run."""

    def __init__(
        self,
        pipeline: str,
        servers: dict[str, int],
        window: Window,
        slo_ms: float | None,
        sink: RequestSink | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.stage_names = stages_of(pipeline)
        self.window = window
        self.slo_ms = slo_ms
        self.sink = sink
        self.stages = [StageRecord(servers[name]) for name in self.stage_names]
        slot = {name: i for i, name in enumerate(self.stage_names)}
        self._no_contention: Callable[[Sequence[float]], float] = critical_path(pipeline, slot)
        self._groups = [tuple(slot[call.stage] for call in calls_of(step)) for step in PIPELINES[pipeline]]
        self.offered = self.completed = self.rejected = self.timed_out = 0
        self.in_flight = 0  # measured requests that arrived and have not finished
        self.live = 0  # every request in the system, warm-up included
        self.completed_in_window = 0
        self.over_slo = 0
        self.partial = False
        self.latency = LogHistogram()
        self.no_contention = LogHistogram()
        self.timeseries = Timeseries(window)

    # --- events --------------------------------------------------------------------------------------
    def arrival(self, request: Request) -> None:
        self.live += 1
        if request.measured:
            self.offered += 1
            self.in_flight += 1

    def visit(self, slot: int, request: Request, arrived_s: float, started_s: float, now_s: float, compute_s: float) -> None:
        """A stage visit ended: its time on the request; latency, wait and compute on the stage."""
        latency_ms = (now_s - arrived_s) * 1000
        request.stage_ms[slot] = latency_ms
        if request.measured:
            stage = self.stages[slot]
            stage.compute_s += compute_s
            stage.latency.add(latency_ms)
            stage.wait.add((started_s - arrived_s) * 1000)

    def busy(self, slot: int, started_s: float, service_s: float) -> None:
        """A server of the stage was busy from `started_s` for `service_s`."""
        self.stages[slot].busy_window_s += self.window.overlap(started_s, started_s + service_s)

    def finish(self, request: Request, outcome: Outcome, now_s: float) -> None:
        """The request left the system."""
        self.live -= 1
        if outcome is not Outcome.COMPLETED:
            if request.measured:
                self.in_flight -= 1
                if outcome is Outcome.REJECTED:
                    self.rejected += 1
                else:
                    self.timed_out += 1
            return
        latency_ms = (now_s - request.arrival_s) * 1000
        self.timeseries.add(now_s, latency_ms)
        if self.window.contains(now_s):
            self.completed_in_window += 1
        if not request.measured:
            return
        self.in_flight -= 1
        self.completed += 1
        self.latency.add(latency_ms)
        self.no_contention.add(1000 * self._no_contention(request.service_s))
        times = request.stage_ms
        for group in self._groups:
            slot = group[0] if len(group) == 1 else max(group, key=times.__getitem__)
            self.stages[slot].critical_ms += times[slot]
        if self.slo_ms is not None and latency_ms > self.slo_ms:
            self.over_slo += 1
        if self.sink is not None:
            self.sink.add(self.pipeline, request, latency_ms, self.stage_names)

    # --- results -------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Move buffered values into the histograms (keeps the buffers bounded)."""
        self.latency.flush()
        self.no_contention.flush()
        for stage in self.stages:
            stage.latency.flush()
            stage.wait.flush()

    def stop(self, now_s: float) -> None:
        """The run was interrupted at `now_s`: the window ends there and the results are partial."""
        self.partial = True
        self.window = Window(self.window.start_s, max(self.window.start_s, min(self.window.end_s, now_s)))

    def close(self, end_s: float) -> None:
        """The run ended at `end_s` (simulated): close the time series and the buffers."""
        self.timeseries.close_until(math.ceil(end_s))
        self.flush()

    def summary(self) -> dict[str, Any]:
        """The METRICS block of summary.json."""
        self.flush()
        window_s = self.window.length_s
        per_s = 1 / window_s if window_s > 0 else math.nan
        critical_total = sum(stage.critical_ms for stage in self.stages)
        stages = {
            name: {
                "latency_ms": stage.latency.summary(),
                "wait_ms": stage.wait.summary(),
                "utilization": stage.busy_window_s / stage.servers * per_s,
                "visits": stage.latency.count,
                "critical_path_share": stage.critical_ms / critical_total if critical_total else math.nan,
            }
            for name, stage in zip(self.stage_names, self.stages)
        }
        nc = self.no_contention.summary()
        out: dict[str, Any] = {
            "requests": {
                "offered": self.offered,
                "completed": self.completed,
                "rejected": self.rejected,
                "timed_out": self.timed_out,
                "in_flight_at_end": self.in_flight,
            },
            "partial": self.partial,
            "offered_qps": self.offered * per_s,
            "throughput_qps": self.completed_in_window * per_s,
            "latency_ms": self.latency.summary(),
            "no_contention_ms": {key: nc[key] for key in ("mean", "p50", "p99")},
            "stages": stages,
            "compute": {
                name: {"busy_s": stage.compute_s, "ms_per_request": 1000 * stage.compute_s / self.completed if self.completed else math.nan}
                for name, stage in zip(self.stage_names, self.stages)
            },
            "bottleneck": max(stages, key=lambda name: stages[name]["utilization"]),
            "critical_stage": max(stages, key=lambda n: stages[n]["critical_path_share"]) if critical_total else None,
        }
        if self.slo_ms is not None:
            missed = self.offered - self.completed + self.over_slo
            share = missed / self.offered if self.offered else 0.0
            out["slo"] = {"p99_ms": self.slo_ms, "missed_share": share, "valid": bool(self.offered) and share <= SLO_MISS_BUDGET}
        return out
