"""Request timelines in the Chrome trace-event format (`trace.json`, opened by ui.perfetto.dev or chrome://tracing).

A run traced with `--trace FRACTION` keeps the timeline of the requests whose id hashes into the fraction
(`core.sampling.sampled`: the same requests in every pipeline; tracing draws nothing, so the run's results do not
change). Per pipeline, one process (`pid`); per sampled request, one track (`tid`) holding a slice from its arrival
to its end and, nested in it, a slice per stage visit with its queue wait and its service as child slices; a
parallel branch, a shard, a hedge copy and a retry each get a track of their own, named after the request. Cache
lookups are instant events where they happen. Every event of a request carries `args.request_id` and
`args.pipeline`. The pipeline's faults, its nearline passes and model rollouts, and its per-second gauges (refresh
backlog, two index buffers held) are tracks of their own. Times are simulated (or, live, wall-clock) seconds from
the run's start, written in microseconds.

Engines report, from their visit handlers, what the request's stage times (`Request.times`, accounted by the
recorder) do not hold: how a visit to a pool ended (`visit`: kept when it failed) and the parts of a visit to a
stage of several nodes (`part`: a shard, a hedge copy, a retry, each on its node). Work that runs on after its request ended (a losing hedge copy, a visit cut off by the
request's deadline) is drawn up to the request's end, with `args.wasted_until_us` where it really ended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aif_sim.core.nearline import NearlineStore
from aif_sim.core.request import Outcome
from aif_sim.core.sampling import sampled
from aif_sim.scenario.pipelines import Pipeline

US = 1e6  # trace timestamps are microseconds
OUTCOMES = {int(o): o.name.lower() for o in Outcome}
STORE_TRACKS = {"items": "nearline item vectors", "users": "nearline user vectors"}


def _us(seconds: float) -> float:
    return round(seconds * US, 3)


@dataclass(frozen=True)
class PartRecord:
    """A part of a visit to a stage of several nodes: `label` (`visit`, `shard K`, `hedge copy`), its node, when it was
    sent, started service (NaN: never) and ended, and its outcome (`abandoned` when the request left it)."""

    slot: int
    label: str
    node: int
    sent_s: float
    started_s: float
    ended_s: float
    outcome: str


@dataclass
class _Lanes:
    """The tracks of one request: lane 0 its own, then one per parallel branch and per part."""

    names: list[str] = field(default_factory=list)

    def lane(self, name: str) -> int:
        self.names.append(name)
        return len(self.names) - 1


class RequestTrace:
    """The sampled requests' timelines of one pipeline run, and its background tracks."""

    def __init__(self, pipeline: Pipeline, fraction: float) -> None:
        self.pipeline, self.stages, self.groups, self.fraction = pipeline.name, pipeline.stages, pipeline.step_slots, fraction
        lookups = {(lookup.slot, lookup.guard): i for i, lookup in enumerate(pipeline.lookups)}
        # per stage slot, the flag columns of the lookup that guards its call and of the one it reads through
        self.cache_slots = [(lookups.get((slot, True)), lookups.get((slot, False))) for slot in range(len(pipeline.stages))]
        self.cache_names = [lookup.cache for lookup in pipeline.lookups]
        self.parts: dict[int, list[PartRecord]] = {}  # by request id, until the request is accounted
        self.failures: dict[int, list[tuple[int, float, float, str]]] = {}  # slot, entered, left, outcome
        self.requests: list[dict[str, Any]] = []  # finished sampled requests, their events built
        self.stores: dict[str, NearlineStore] = {}  # the run's nearline stores (their passes and rollouts)

    def wants(self, request_id: int) -> bool:
        """Whether this request's timeline is kept."""
        return bool(sampled(np.array([request_id]), self.fraction)[0])

    # --- what the engines report --------------------------------------------------------------------
    def visit(self, request_id: int, slot: int, entered_s: float, left_s: float, outcome: Outcome | None) -> None:
        """A visit to a stage of one pool ended (`outcome` None: its request left it, at its deadline): kept when it
        failed, for a sampled request (a completed visit's times are the request's own)."""
        if outcome is not Outcome.COMPLETED and self.wants(request_id):
            how = "abandoned" if outcome is None else OUTCOMES[outcome]
            self.failures.setdefault(request_id, []).append((slot, entered_s, left_s, how))

    def part(
        self,
        request_id: int,
        slot: int,
        label: str,
        node: int,
        times: tuple[float, float, float],
        outcome: Outcome | None,
    ) -> None:
        """A part of a visit to a stage of several nodes ended on `node`: its (sent, started, ended) times, NaN
        started when it never did; `outcome` None when its request left it (it then runs on to its end if in
        service). Kept for a sampled request."""
        if self.wants(request_id):
            how = "abandoned" if outcome is None else OUTCOMES[outcome]
            self.parts.setdefault(request_id, []).append(PartRecord(slot, label, node, *times, how))

    # --- what the recorder accounts -------------------------------------------------------------------
    def finished(
        self,
        ids: np.ndarray,
        arrival_s: np.ndarray,
        users: np.ndarray,
        candidates: np.ndarray,
        measured: np.ndarray,
        times: np.ndarray,
        outcome: np.ndarray,
        end_s: np.ndarray,
        cache_hit: np.ndarray,
    ) -> None:
        """Finished requests as the recorder accounts them (columns); the sampled ones' events are built."""
        for i in np.flatnonzero(sampled(ids, self.fraction)).tolist():
            rid = int(ids[i])
            self.requests.append(
                self._request(
                    rid,
                    float(arrival_s[i]),
                    float(end_s[i]),
                    int(outcome[i]),
                    times[i],
                    cache_hit[i],
                    {"user": int(users[i]), "candidates": int(candidates[i]), "measured": bool(measured[i])},
                )
            )
            self.parts.pop(rid, None)
            self.failures.pop(rid, None)

    def _request(
        self, rid: int, arrival: float, end: float, outcome: int, times: np.ndarray, flags: np.ndarray, extra: dict[str, Any]
    ) -> dict[str, Any]:
        """One request's events, on lanes to be numbered when the file is written."""
        base = {"request_id": rid, "pipeline": self.pipeline}
        lanes = _Lanes()
        main = lanes.lane(f"request {rid}")
        events: list[tuple[int, dict[str, Any]]] = []

        def slice_(lane: int, name: str, cat: str, start: float, stop: float, **args: Any) -> None:
            clipped = min(stop, end)
            if clipped < stop:
                args["wasted_until_us"] = _us(stop)
            event = {"name": name, "cat": cat, "ph": "X", "ts": _us(start), "dur": max(0.0, _us(clipped) - _us(start))}
            events.append((lane, event | {"args": base | args}))

        def instant(lane: int, name: str, at: float, **args: Any) -> None:
            events.append((lane, {"name": name, "cat": "cache", "ph": "i", "s": "t", "ts": _us(at), "args": base | args}))

        latency = {"latency_ms": (end - arrival) * 1000} if outcome == Outcome.COMPLETED else {}
        slice_(main, f"request {rid}", "request", arrival, end, outcome=OUTCOMES[outcome], **latency, **extra)
        parts = self.parts.get(rid, [])
        failures = {slot: (entered, left, how) for slot, entered, left, how in self.failures.get(rid, [])}
        step_start = arrival
        for group in self.groups:
            step_end = step_start
            for position, slot in enumerate(group):
                stage = self.stages[slot]
                lane = main if position == 0 else lanes.lane(f"request {rid} ∥ {stage}")
                guard, reads = self.cache_slots[slot]
                if guard is not None and flags[guard] == flags[guard]:
                    hit = flags[guard] == 1.0
                    instant(lane, f"{self.cache_names[guard]} {'hit' if hit else 'miss'}", step_start, stage=stage)
                enter, start, stop = times[slot]
                mine = [p for p in parts if p.slot == slot]
                single = mine[0] if len(mine) == 1 and mine[0].label == "visit" else None  # one node, no copy, no retry
                node = {"node": single.node} if single is not None else {}
                if stop == stop:  # visited, and completed
                    wait = {"wait_ms": (start - enter) * 1000, "service_ms": (stop - start) * 1000}
                    slice_(lane, stage, "visit", enter, stop, stage=stage, outcome="completed", **wait, **node)
                elif slot in failures:
                    enter, stop, how = failures[slot]
                    slice_(lane, stage, "visit", enter, stop, stage=stage, outcome=how)
                elif mine:  # a fleet visit that failed: from its first send to its last part's end
                    enter, stop = min(p.sent_s for p in mine), max(p.ended_s for p in mine)
                    how = next((o for o in ("timed_out", "rejected") if any(p.outcome == o for p in mine)), "abandoned")
                    slice_(lane, stage, "visit", enter, stop, stage=stage, outcome=how, **node)
                else:
                    continue
                if reads is not None and flags[reads] == flags[reads]:
                    instant(lane, f"{self.cache_names[reads]} {'hit' if flags[reads] == 1.0 else 'miss'}", enter, stage=stage)
                if single is not None:
                    _part_slices(lane, stage, single, slice_)
                elif mine:
                    self._parts(rid, stage, mine, lanes, slice_)
                elif start == start:
                    if start > enter:
                        slice_(lane, "queue", "wait", enter, start, stage=stage)
                    slice_(lane, "service", "service", start, stop, stage=stage)
                elif slot in failures and stop > enter:
                    slice_(lane, "queue", "wait", enter, stop, stage=stage)
                step_end = max(step_end, stop)
            step_start = step_end
        return {"arrival": arrival, "lanes": lanes.names, "events": events}

    def _parts(self, rid: int, stage: str, parts: list[PartRecord], lanes: _Lanes, slice_: Any) -> None:
        """A fleet visit's parts, each on a lane of its own; a part sent again after a failure is a retry."""
        tries: dict[str, int] = {}
        for part in parts:
            tries[part.label] = tries.get(part.label, 0) + 1
            label = part.label if tries[part.label] == 1 else f"{part.label} retry {tries[part.label] - 1}"
            lane = lanes.lane(f"request {rid} · {stage} {label} on node {part.node}")
            name = f"{stage} {label}"
            slice_(lane, name, "part", part.sent_s, part.ended_s, stage=stage, node=part.node, part=label, outcome=part.outcome)
            _part_slices(lane, stage, part, slice_)

    # --- the file ------------------------------------------------------------------------------------
    def events(
        self, pid: int, faults: list[tuple[dict[str, Any], float, float]], gauges: dict[str, list[tuple[float, float]]]
    ) -> list[dict]:
        """This pipeline's events for `trace.json`, as process `pid`: metadata naming the process and its tracks,
        the background tracks (faults, nearline passes and rollouts, gauges as counters) and the requests'."""
        out: list[dict[str, Any]] = [_meta("process_name", pid, None, self.pipeline), _meta("process_sort_index", pid, None, pid)]
        base = {"pipeline": self.pipeline}
        tid = 1
        if faults:
            out += [_meta("thread_name", pid, tid, "faults"), _meta("thread_sort_index", pid, tid, tid)]
            for fields, at_s, end_s in faults:
                name = fields["kind"]
                event = {"name": name, "cat": "fault", "pid": pid, "tid": tid, "ts": _us(at_s), "args": base | fields}
                out.append(event | ({"ph": "X", "dur": _us(end_s) - _us(at_s)} if end_s > at_s else {"ph": "i", "s": "t"}))
            tid += 1
        for store, nearline in self.stores.items():
            out += [
                _meta("thread_name", pid, tid, STORE_TRACKS.get(store, f"nearline store {store}")),
                _meta("thread_sort_index", pid, tid, tid),
            ]
            running = [(nearline.sweep, nearline.sweep.end_s)] if nearline.sweep is not None else []
            for sweep, end_s in [*nearline.history, *running]:
                name = f"rollout of model version {sweep.version}" if sweep.rollout else "refresh pass"
                args = base | {"version": sweep.version, "entities": sweep.count, "per_s": sweep.rate}
                out.append({"name": name, "cat": "nearline", "ph": "X", "pid": pid, "tid": tid} | _span(sweep.start_s, end_s, args))
            tid += 1
        for name, readings in gauges.items():
            out += [{"name": name, "cat": "gauge", "ph": "C", "pid": pid, "ts": _us(t), "args": {name: v}} for t, v in readings]
        for request in sorted(self.requests, key=lambda r: r["arrival"]):
            first = tid
            for lane, name in enumerate(request["lanes"]):
                out += [_meta("thread_name", pid, first + lane, name), _meta("thread_sort_index", pid, first + lane, first + lane)]
            out += [event | {"pid": pid, "tid": first + lane} for lane, event in request["events"]]
            tid += len(request["lanes"])
        return out


def _part_slices(lane: int, stage: str, part: PartRecord, slice_: Any) -> None:
    """A part's queue wait and service (a part that never started waited until it ended)."""
    if part.started_s == part.started_s:
        if part.started_s > part.sent_s:
            slice_(lane, "queue", "wait", part.sent_s, part.started_s, stage=stage, node=part.node)
        slice_(lane, "service", "service", part.started_s, part.ended_s, stage=stage, node=part.node)
    elif part.ended_s > part.sent_s:
        slice_(lane, "queue", "wait", part.sent_s, part.ended_s, stage=stage, node=part.node)


def _span(start_s: float, end_s: float, args: dict[str, Any]) -> dict[str, Any]:
    end_s = end_s if math.isfinite(end_s) else start_s
    return {"ts": _us(start_s), "dur": _us(end_s) - _us(start_s), "args": args}


def _meta(name: str, pid: int, tid: int | None, value: Any) -> dict[str, Any]:
    """A metadata event: a process's or a track's name or sort index."""
    key = "sort_index" if name.endswith("sort_index") else "name"
    event = {"name": name, "ph": "M", "pid": pid, "args": {key: value}}
    return event if tid is None else event | {"tid": tid}


def trace_document(events: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON Object Format of the trace-event format: the events, displayed in milliseconds, and the run's facts."""
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": meta}
