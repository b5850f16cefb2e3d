"""Hedged stages of several nodes in the compiled engine (`hedge_after_ms`): `sim.fleet.Fleet._hedged` as an event
loop over arrays, one per hedged stage.

A losing copy still queued leaves its node's queue when the winner completes, a time known only once the winner
runs, and that moves the start of every visit queued behind it: start times cannot be fixed at arrival, as the
other fleet stages fix them (`fleets`). So a hedged stage keeps each node's waiters in an explicit FIFO queue and
runs its events in time order, ties in the order they were scheduled (`seq`), up to each arrival at the stage and,
once the step's arrivals before the block limit are in, up to that limit (`run_until`); a visit ended meanwhile
ends its request's wait there (`batching.visit_ended`), as a batch does.

Per hedged stage h (`HedgeState.state`, one tuple the kernels take; `hedge_of[slot]` the stage of a slot, -1 none):
- events, a min-heap by (time, seq): a copy's service END, a copy's queue TIMEOUT, a part's hedge TIMER, the
  RELEASE of a server running a losing copy to its end (when simpy's `_release_at` fires), and the SETTLE of a copy
  rejected by a full queue (deferred, as simpy ends its process after the other parts' copies have joined);
- copies (rows of `copy_int` / `copy_f`, shared by the stages): a part's primary or hedge copy on a node, queued,
  running or done; every event names a copy or a part attempt by its row and a serial number, so an event left
  by a copy that was cancelled (its row since reused) is recognised and skipped;
- visits (rows of `visit_int`, `part_int`, `part_f`): the request, the nodes holding its parts (`holding`), and per
  part (a shard, or the whole visit) its node, outcome, start and end, its time alone (`fleets.parts_over`'s
  columns), its own service, the hedge copy's time alone, its phase, copies, attempt and retries;
- per node (row `fleets` row_at[f] + node): its busy servers, its live waiters (`fleets`' `queued`, so that
  `fleets.pick` counts them) and the FIFO list of its waiting copies (`head`, `tail`, a copy's `next`), where
  copies that left (timed out, or lost the race) are skipped when reached; its servers' busy-until times are its
  region of the kernels' `free` (a server running a losing copy is busy until its release), as `pick` reads them.

Hedge copies' services come from the stage's `copies:` stream, drawn ahead (`draws`, `taken`) as
`core.fleet.FleetPolicy.draw_copy` draws them one at a time, so only samplers whose draws do not depend on the
copy's candidates (`support.batch_draws_ahead`). Sent hedges are recorded with their time (`sent`) for
`Recorder.hedge`; losing copies that ran go to the deadline records (`deadlines.wasted`) at the instant they lost.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from aif_sim.compiled.batching import draw_table, slowdown_at, visit_ended
from aif_sim.compiled.caches import insert
from aif_sim.compiled.deadlines import wasted
from aif_sim.compiled.fleets import ROWS as FLEET_ROWS
from aif_sim.compiled.fleets import heap_pop, heap_push, parts_over, pick, retried, served_at_node
from aif_sim.core.latency import Sampler
from aif_sim.core.traffic import stream
from aif_sim.metrics.recorder import Recorder
from aif_sim.scenario.schema import Scenario

COMPLETED, REJECTED, TIMED_OUT = 0, 1, 2  # core.request.Outcome
END, TIMEOUT, TIMER, RELEASE, SETTLE = range(5)  # event kinds
QUEUED, RUNNING, DONE, LEFT = range(4)  # a copy's state (LEFT: left its queue, still in the node's list)
ALONE_PHASE, BOTH, OTHER, NO_SPARE, OVER = range(5)  # a part's phase: primary only before the timer, both copies
# out, the first to end failed (the other awaited), the timer found no node left, settled
ROWS = 4096  # copy services drawn at a time
# copy_int columns: visit, part, node, state, next in its node's list, serial, server (its index in `free`), whether
# it is the hedge copy (1) or the part's primary (0)
C_VISIT, C_PART, C_NODE, C_STATE, C_NEXT, C_SERIAL, C_SERVER, C_HEDGE = range(8)
# part_int columns: primary copy, hedge copy (-1: none, or failed), phase, attempt serial, retries so far
P_PRIMARY, P_SECOND, P_PHASE, P_ATTEMPT, P_RETRIED = range(5)
# part_f columns: `fleets.parts_over`'s (node, outcome, start, end, time alone, a sorted end), own service, the hedge
# copy's time alone, candidates
F_NODE, F_OUTCOME, F_START, F_END, F_ALONE, F_SORTED, F_SERVICE, F_COPY_ALONE, F_CANDIDATES = range(9)
# visit_int columns: request, stage, parts unsettled, step
V_REQUEST, V_STAGE, V_LEFT, V_STEP = range(4)


class HedgeState:
    """The hedged stages of a pipeline (`hedge_of[slot]`) and their state (see the module)."""

    def __init__(self, scenario: Scenario, pipeline: str, samplers: dict[str, Sampler]) -> None:
        names = scenario.pipeline(pipeline).stages
        slots = [slot for slot, name in enumerate(names) if scenario.stages[name].nodes > 1 and scenario.stages[name].hedge_after_ms]
        configs = [scenario.stages[names[slot]] for slot in slots]
        fleets = [slot for slot, name in enumerate(names) if scenario.stages[name].nodes > 1]
        self.hedge_of = np.full(len(names), -1, np.int64)
        self.hedge_of[slots] = np.arange(len(slots))
        self.samplers = [samplers[names[slot]] for slot in slots]
        self.rngs = [stream(scenario.seed, f"copies:{names[slot]}") for slot in slots]
        self.drawn = [np.empty(0) for _ in slots]  # copy services (ms) drawn, not yet taken
        self.attempts = np.array([config.shards * (1 + config.retries) for config in configs], np.int64)  # per visit
        rows = sum(scenario.stages[names[slot]].nodes for slot in fleets)  # node rows of every fleet (`fleets`)
        nodes, shards = max((c.nodes for c in configs), default=1), max((c.shards for c in configs), default=1)
        self.state = (
            self.hedge_of,
            np.array([fleets.index(slot) for slot in slots], np.int64),  # fleet
            np.array([config.hedge_after_ms / 1000 for config in configs if config.hedge_after_ms is not None]),
            np.array([config.per_candidate_us / 1e6 for config in configs]),
            np.empty((len(slots), 0)),  # draws
            np.zeros(len(slots), np.int64),  # taken
            np.empty((len(slots), 0)),  # ev_t: per stage, a heap of event times (`fleets.heap_push`, with ev_key, ev_value)
            np.empty((len(slots), 0), np.int64),  # ev_id: with them, the order pushed and the event's row
            np.zeros(len(slots), np.int64),  # ev_n: events per stage
            np.zeros(1, np.int64),  # events pushed so far
            np.empty((len(slots), 0, 3), np.int64),  # ev_data: per stage and row, an event's kind, what, serial
            np.empty((len(slots), 0), np.int64),  # ev_stack: per stage, its free rows of `ev_data`
            np.zeros(len(slots), np.int64),  # ev_free: free rows per stage
            np.zeros(1, np.int64),  # serials given so far
            np.empty((0, 8), np.int64),  # copy_int
            np.empty((0, 2)),  # copy_f: service, start
            np.empty(0, np.int64),  # copy stack of free rows
            np.zeros(1, np.int64),  # free copy rows
            np.empty((0, 4), np.int64),  # visit_int
            np.empty(0),  # visit sent
            np.zeros((0, nodes), np.bool_),  # holding
            np.empty((0, shards, 5), np.int64),  # part_int
            np.empty((0, shards, 9)),  # part_f
            np.empty(0, np.int64),  # visit stack of free rows
            np.zeros(1, np.int64),  # free visit rows
            np.zeros(max(1, rows), np.int64),  # busy, per node row
            np.full(max(1, rows), -1, np.int64),  # head
            np.full(max(1, rows), -1, np.int64),  # tail
            np.empty((64, 2)),  # sent: (slot, time) of each hedge sent
            np.zeros(1, np.int64),  # sent_n
            np.zeros((len(slots), 0), np.int64),  # ev_key: the events' heap keys (all 0: by time, then in order pushed)
            np.zeros((len(slots), 0), np.int64),  # ev_value: the events' heap values (unused: an event's row is in its id)
        )

    @property
    def wasted_per_request(self) -> int:
        """The most losing copies a request's visits can leave running (each part's each attempt one)."""
        return int(self.attempts.sum())

    def prepare(self, arrivals: int) -> None:
        """Room for `arrivals` more visits per hedged stage, their copies, events and hedge records, and their copy
        services drawn."""
        if not len(self.attempts):
            return
        state = list(self.state)
        draws, taken = state[4:6]
        ev_t, ev_id, ev_data, ev_stack, ev_free = state[6], state[7], state[10], state[11], state[12]
        copy_int, copy_f, copy_stack, copy_free = state[14:18]
        visit_int, visit_t, holding, part_int, part_f, visit_stack, visit_free = state[18:25]
        sent, sent_n = state[28], state[29]
        attempts = arrivals * self.attempts
        for h in range(len(self.attempts)):
            self.drawn[h] = self.drawn[h][taken[h] :]
            while len(self.drawn[h]) < attempts[h]:  # whole blocks, each as one call of the stage's sampler
                self.drawn[h] = np.concatenate([self.drawn[h], draw_table(self.samplers[h], self.rngs[h], ROWS, 1)[:, 0]])
        taken[:] = 0
        draws = np.zeros((len(self.drawn), max(len(drawn) for drawn in self.drawn)))
        for h, drawn in enumerate(self.drawn):
            draws[h, : len(drawn)] = drawn
        width = ev_t.shape[1]
        grown = width - int((ev_free - 6 * attempts).min())  # a timer, two copies' ends and timeouts, a release per try
        if grown > width:
            ev_t = np.concatenate([ev_t, np.empty((len(ev_t), grown - width))], axis=1)
            ev_id = np.concatenate([ev_id, np.empty((len(ev_id), grown - width), np.int64)], axis=1)
            state[30], state[31] = (np.zeros((len(ev_id), grown), np.int64) for _ in range(2))  # every key and value 0
            ev_data = np.concatenate([ev_data, np.empty((len(ev_data), grown - width, 3), np.int64)], axis=1)
            stack = np.empty((len(ev_stack), grown), np.int64)
            for h in range(len(ev_stack)):
                stack[h, : ev_free[h]] = ev_stack[h, : ev_free[h]]
                stack[h, ev_free[h] : ev_free[h] + grown - width] = np.arange(grown - 1, width - 1, -1)
            ev_stack = stack
            ev_free += grown - width
            assert grown < FLEET_ROWS
        (copy_int, copy_f), copy_stack = _rows((copy_int, copy_f), copy_stack, copy_free, 2 * int(attempts.sum()))
        (visit_int, visit_t, holding, part_int, part_f), visit_stack = _rows(
            (visit_int, visit_t, holding, part_int, part_f), visit_stack, visit_free, arrivals * len(self.attempts)
        )
        need = int(sent_n[0]) + int(attempts.sum())
        if need > len(sent):
            more = np.empty((max(need, 2 * len(sent)), 2))
            more[: sent_n[0]] = sent[: sent_n[0]]
            sent = more
        state[4:6] = draws, taken
        state[6], state[7], state[10], state[11] = ev_t, ev_id, ev_data, ev_stack
        state[14:18] = copy_int, copy_f, copy_stack, copy_free
        state[18:25] = visit_int, visit_t, holding, part_int, part_f, visit_stack, visit_free
        state[28] = sent
        self.state = tuple(state)

    def remap(self, new_index: np.ndarray) -> None:
        """The requests were compacted (`new_index[old]`): the visits in progress follow."""
        visit_int, visit_stack, visit_free = self.state[18], self.state[23], self.state[24]
        used = np.ones(len(visit_int), np.bool_)
        used[visit_stack[: visit_free[0]]] = False
        visit_int[used, V_REQUEST] = new_index[visit_int[used, V_REQUEST]]

    def emit(self, recorder: Recorder, before: float) -> None:
        """Account the hedges sent before `before` (`Recorder.hedge`) and drop them."""
        sent, sent_n = self.state[28], self.state[29]
        rows = sent[: sent_n[0]]
        done = rows[:, 1] < before
        for slot in rows[done, 0].astype(np.int64).tolist():
            recorder.hedge(slot)
        kept = rows[~done]
        sent[: len(kept)] = kept
        sent_n[0] = len(kept)


def _rows(tables: tuple, stack: np.ndarray, free: np.ndarray, need: int) -> tuple:
    """`tables` (arrays of rows, taken from a stack of free rows), grown so that `need` rows are free; with the stack."""
    if int(free[0]) >= need:
        return tables, stack
    rows = len(tables[0])
    more = max(rows, need)
    grown = tuple(np.concatenate([table, np.zeros((more, *table.shape[1:]), table.dtype)]) for table in tables)
    free_rows = np.concatenate([stack[: free[0]], np.arange(rows + more - 1, rows - 1, -1, dtype=np.int64)])
    stack = np.empty(rows + more, np.int64)
    stack[: len(free_rows)] = free_rows
    free[0] = len(free_rows)
    return grown, stack


# --- the event heap --------------------------------------------------------------------------------------
@njit(cache=True, _nrt=False)
def _schedule(hs: tuple, h: int, at: float, kind: int, what: int, serial: int) -> None:
    """An event of `kind` for `what` (a copy, a part `visit * shards + part`, a server) at `at`, after those
    scheduled before it at the same time; its `kind, what, serial` kept in a row of `ev_data`."""
    pushed, ev_data, ev_stack, ev_free = hs[9:13]
    ev_free[h] -= 1
    row = ev_stack[h, ev_free[h]]
    ev_data[h, row, 0], ev_data[h, row, 1], ev_data[h, row, 2] = kind, what, serial
    heap_push(_events(hs), h, at, 0, pushed[0] * FLEET_ROWS + row, 0)
    pushed[0] += 1


@njit(cache=True, _nrt=False)
def _next_event(hs: tuple, h: int) -> tuple[float, int, int, int]:
    """The first event taken out: (time, kind, what, serial)."""
    ev_data, ev_stack, ev_free = hs[10], hs[11], hs[12]
    at, entry, _ = heap_pop(_events(hs), h)
    row = entry % FLEET_ROWS
    ev_stack[h, ev_free[h]] = row
    ev_free[h] += 1
    return at, ev_data[h, row, 0], ev_data[h, row, 1], ev_data[h, row, 2]


@njit(cache=True, _nrt=False)
def _events(hs: tuple) -> tuple:
    """The event heap (`fleets.heap_push`): ev_t, ev_id, ev_key, ev_value, ev_n."""
    return hs[6], hs[7], hs[30], hs[31], hs[8]


# --- rows ------------------------------------------------------------------------------------------------
@njit(cache=True, _nrt=False)
def _take(stack: np.ndarray, free: np.ndarray) -> int:
    free[0] -= 1
    return stack[free[0]]


@njit(cache=True, _nrt=False)
def _give(stack: np.ndarray, free: np.ndarray, row: int) -> None:
    stack[free[0]] = row
    free[0] += 1


# --- the stage -------------------------------------------------------------------------------------------
@njit(cache=True, _nrt=False)
def send_visit(h: int, i: int, slot: int, t: float, k: int, miss_s: float, base: int, threads: int, free: np.ndarray, ctx: tuple) -> None:
    """Request i's visit sent at t to hedged stage h at its step k (`sim.fleet.Fleet.serve`): a node picked for each
    of its parts (shards, or the visit), every pick from the counts before any part joins, then each part's primary
    copy sent, the last part's first, then the others in order; `miss_s`: the cache miss each shard waits for."""
    hs, fleets, batches, shard_s, service, candidates = ctx[0], ctx[1], ctx[2], ctx[3], ctx[4], ctx[5]
    visit_int, visit_t, holding, part_int, part_f, visit_stack, visit_free = hs[18:25]
    f = hs[1][h]
    shards, shard_at, scratch = fleets[10][f], fleets[11][f], fleets[14]
    v = _take(visit_stack, visit_free)
    visit_int[v, V_REQUEST], visit_int[v, V_STAGE], visit_int[v, V_LEFT], visit_int[v, V_STEP] = i, h, shards, k
    visit_t[v] = t
    for j in range(shards):
        node = pick(f, t, base, threads, free, fleets, j, -1, batches)
        scratch[node] = True
        part_f[v, j, F_NODE] = node
    for node in range(fleets[0][f]):
        holding[v, node] = scratch[node]
        scratch[node] = False
    share, extra = divmod(candidates[i], shards)  # `core.system.shard_sizes`
    for j in range(shards):
        part_int[v, j, P_RETRIED] = 0
        part_f[v, j, F_SERVICE] = service[i, slot] if shards == 1 else shard_s[i, shard_at + j] + miss_s
        part_f[v, j, F_ALONE] = part_f[v, j, F_SERVICE]
        part_f[v, j, F_CANDIDATES] = share + (j < extra)
    for q in range(shards):
        j = shards - 1 if q == 0 else q - 1
        _attempt(h, v, j, int(part_f[v, j, F_NODE]), t, slot, base, threads, free, ctx)


@njit(cache=True, _nrt=False)
def _attempt(h: int, v: int, j: int, node: int, x: float, slot: int, base: int, threads: int, free: np.ndarray, ctx: tuple) -> None:
    """Part j of visit v sent at x to `node` (`Fleet._hedged`): its hedge timer set, then its primary copy joins."""
    hs = ctx[0]
    part_int, part_f, counters = hs[21], hs[22], hs[13]
    serial = counters[0]
    counters[0] += 1
    part_int[v, j, P_ATTEMPT], part_int[v, j, P_PHASE], part_int[v, j, P_SECOND] = serial, ALONE_PHASE, -1
    _schedule(hs, h, x + hs[2][h], TIMER, v * part_int.shape[1] + j, serial)
    part_int[v, j, P_PRIMARY] = _copy(h, v, j, node, part_f[v, j, F_SERVICE], False, x, slot, base, threads, free, ctx)


@njit(cache=True, _nrt=False)
def _copy(
    h: int, v: int, j: int, node: int, s: float, hedge: bool, x: float, slot: int, base: int, threads: int, free: np.ndarray, ctx: tuple
) -> int:
    """A copy of part j of visit v (its primary, or its `hedge` copy), of service s, joins `node` at x (`sim.pools.StagePool.serve`): served at once by
    a free server, rejected by a full queue (settled by an event after the copies sent now have joined), or queued,
    timing out `timeout` later; its row."""
    hs, fleets, limits = ctx[0], ctx[1], ctx[6]
    copy_int, copy_f, copy_stack, copy_free, counters = hs[14], hs[15], hs[16], hs[17], hs[13]
    busy, head, tail = hs[25], hs[26], hs[27]
    queued, waits = fleets[7], fleets[6]
    c = _take(copy_stack, copy_free)
    copy_int[c, C_VISIT], copy_int[c, C_PART], copy_int[c, C_NODE], copy_int[c, C_NEXT] = v, j, node, -1
    copy_int[c, C_SERIAL], copy_int[c, C_HEDGE] = counters[0], hedge
    counters[0] += 1
    copy_f[c, 0] = s
    f = hs[1][h]
    row = fleets[5][f] + node
    at = base + node * threads
    if busy[row] < threads:
        busy[row] += 1
        server = at
        while server < at + threads - 1 and free[server] > x:  # an idle server: one freed by x
            server += 1
        _start(h, c, server, x, slot, free, ctx)
    elif limits[0] >= 0 and queued[row] >= limits[0]:
        copy_int[c, C_STATE] = DONE
        _schedule(hs, h, x, SETTLE, c, copy_int[c, C_SERIAL])
    else:
        copy_int[c, C_STATE] = QUEUED
        if tail[row] >= 0:
            copy_int[tail[row], C_NEXT] = c
        else:
            head[row] = c
        tail[row] = c
        queued[row] += 1
        waits[row, 0] = math.inf  # `fleets.pick` reads `queued` as the node's waiters: none leaves by itself
        if limits[1] < math.inf:
            _schedule(hs, h, x + limits[1], TIMEOUT, c, copy_int[c, C_SERIAL])
    return c


@njit(cache=True, _nrt=False)
def _start(h: int, c: int, server: int, x: float, slot: int, free: np.ndarray, ctx: tuple) -> None:
    """Copy c starts at x on `server` (its index in `free`): slowed down as the stage is then (a primary's service
    and time alone, or the hedge copy's time alone, written back as `sim.pools` does), its busy time recorded."""
    hs, fleets, slow, measured = ctx[0], ctx[1], ctx[7], ctx[8]
    copy_int, copy_f, visit_int, part_f = hs[14], hs[15], hs[18], hs[22]
    v, j = copy_int[c, C_VISIT], copy_int[c, C_PART]
    s = copy_f[c, 0]
    factor = slowdown_at(slot, x, slow[0], slow[1], slow[2])
    if factor != 1.0:
        s *= factor
        if copy_int[c, C_HEDGE]:
            part_f[v, j, F_COPY_ALONE] = s
        else:
            part_f[v, j, F_SERVICE] = part_f[v, j, F_ALONE] = s
    copy_f[c, 0], copy_f[c, 1] = s, x
    copy_int[c, C_STATE], copy_int[c, C_SERVER] = RUNNING, server
    free[server] = x + s
    served_at_node(hs[1][h], copy_int[c, C_NODE], slot, x, s, measured[visit_int[v, V_REQUEST]], fleets)
    _schedule(hs, h, x + s, END, c, copy_int[c, C_SERIAL])


@njit(cache=True, _nrt=False)
def _release(h: int, node: int, server: int, x: float, slot: int, free: np.ndarray, ctx: tuple) -> None:
    """A server of `node` frees at x (`sim.pools.ServerPool.release`): the first copy still queued takes it (the
    copies that left the queue, reached first, are dropped from its list), else it idles."""
    hs, fleets = ctx[0], ctx[1]
    copy_int, copy_stack, copy_free, busy, head, tail = hs[14], hs[16], hs[17], hs[25], hs[26], hs[27]
    row = fleets[5][hs[1][h]] + node
    while head[row] >= 0:
        c = head[row]
        head[row] = copy_int[c, C_NEXT]
        if head[row] < 0:
            tail[row] = -1
        if copy_int[c, C_STATE] == QUEUED:
            fleets[7][row] -= 1
            _start(h, c, server, x, slot, free, ctx)
            return
        _give(copy_stack, copy_free, c)
    busy[row] -= 1


@njit(cache=True, _nrt=False)
def _cancel(h: int, c: int, x: float, slot: int, free: np.ndarray, ctx: tuple) -> None:
    """The losing copy c is interrupted at x: queued, it leaves its queue; running, it runs to its end as wasted
    work, its server freed when simpy's `_release_at` fires."""
    hs, fleets, dropped, ids = ctx[0], ctx[1], ctx[9], ctx[10]
    copy_int, copy_f, copy_stack, copy_free, visit_int = hs[14], hs[15], hs[16], hs[17], hs[18]
    row = fleets[5][hs[1][h]] + copy_int[c, C_NODE]
    if copy_int[c, C_STATE] == QUEUED:
        copy_int[c, C_STATE] = LEFT
        fleets[7][row] -= 1
    elif copy_int[c, C_STATE] == RUNNING:
        start, s, server = copy_f[c, 1], copy_f[c, 0], copy_int[c, C_SERVER]
        wasted(dropped, slot, x, ids[visit_int[copy_int[c, C_VISIT], V_REQUEST]], 0, start, s, copy_int[c, C_NODE])
        free[server] = x + ((start + s) - x)
        _schedule(hs, h, free[server], RELEASE, copy_int[c, C_NODE], server)
        copy_int[c, C_STATE] = DONE
        _give(copy_stack, copy_free, c)  # its end, still scheduled, no longer names it


@njit(cache=True, _nrt=False)
def _settled(h: int, c: int, o: int, x: float, slot: int, base: int, threads: int, free: np.ndarray, ctx: tuple) -> None:
    """Copy c ended at x with outcome o: its part's attempt is over (`Fleet._hedged`: it completed, or it was the
    only copy or the last one out), or, the first of two to fail, the other is awaited."""
    hs = ctx[0]
    copy_int, copy_f, part_int, part_f = hs[14], hs[15], hs[21], hs[22]
    v, j = copy_int[c, C_VISIT], copy_int[c, C_PART]
    phase = part_int[v, j, P_PHASE]
    if o == COMPLETED:
        part_f[v, j, F_START] = copy_f[c, 1]
    if phase == BOTH:
        other = part_int[v, j, P_PRIMARY] if copy_int[c, C_HEDGE] else part_int[v, j, P_SECOND]
        if o != COMPLETED:
            part_int[v, j, P_PHASE] = OTHER
            return
        _cancel(h, other, x, slot, free, ctx)
    hedged = phase == BOTH or phase == OTHER
    if hedged:  # `FleetPolicy.alone`
        first, hedge_s = part_f[v, j, F_ALONE], hs[2][h]
        if first > hedge_s:
            part_f[v, j, F_ALONE] = min(first, hedge_s + part_f[v, j, F_COPY_ALONE])
    part_f[v, j, F_OUTCOME], part_f[v, j, F_END] = o, x
    part_int[v, j, P_PHASE] = OVER
    _after(h, v, j, o, x, slot, base, threads, free, ctx)


@njit(cache=True, _nrt=False)
def _after(h: int, v: int, j: int, o: int, x: float, slot: int, base: int, threads: int, free: np.ndarray, ctx: tuple) -> None:
    """Part j's attempt ended at x with outcome o (`Fleet._deliver`): failed with a retry left and a node not holding
    a part of the visit, it is sent there at once; else it is settled, and the visit ends with its last part."""
    hs, fleets, batches = ctx[0], ctx[1], ctx[2]
    visit_int, holding, part_int = hs[18], hs[20], hs[21]
    f = hs[1][h]
    nodes, scratch = fleets[0][f], fleets[14]
    if o != COMPLETED and part_int[v, j, P_RETRIED] < fleets[16][f]:
        held = 0
        for node in range(nodes):
            scratch[node] = holding[v, node]
            held += holding[v, node]
        if held < nodes:
            node = pick(f, x, base, threads, free, fleets, held, -1, batches)
            scratch[:] = False
            holding[v, node] = True
            part_int[v, j, P_RETRIED] += 1
            retried(f, slot, x, fleets)
            _attempt(h, v, j, node, x, slot, base, threads, free, ctx)
            return
        scratch[:] = False
    visit_int[v, V_LEFT] -= 1
    if visit_int[v, V_LEFT] == 0:
        _visit_over(h, v, slot, ctx)


@njit(cache=True, _nrt=False)
def _visit_over(h: int, v: int, slot: int, ctx: tuple) -> None:
    """Visit v's last part settled: its outcome and end (`fleets.parts_over`), its cache inserts, and its step's wait
    for it is over (`batching.visit_ended`); its row goes back."""
    hs, fleets, service, times, steps, req, visits, ends = ctx[0], ctx[1], ctx[4], ctx[11], ctx[12], ctx[13], ctx[14], ctx[15]
    visit_int, visit_t, part_f, visit_stack, visit_free = hs[18], hs[19], hs[22], hs[23], hs[24]
    i, k, t = visit_int[v, V_REQUEST], visit_int[v, V_STEP], visit_t[v]
    parts = fleets[15]
    for j in range(fleets[10][hs[1][h]]):
        for column in range(F_SORTED + 1):
            parts[j, column] = part_f[v, j, column]
    cache_hit, users, measured = visits[2], visits[3], visits[4]
    o, e = parts_over(hs[1][h], i, slot, t, math.inf, service, times, measured[i], fleets)
    guard, reads, inserts, until = ends
    if o == COMPLETED:
        g, r = (guard[slot], reads[slot]) if t < until else (-1, -1)
        if r >= 0 and cache_hit[i, r] == 0.0:  # its read missed: the entry goes in when the visit ends
            insert(inserts, r, i, k, e, users[i])
        if g >= 0:
            insert(inserts, g, i, k, e, users[i])
    _give(visit_stack, visit_free, v)
    visit_ended(i, o, e, k, steps, req)


@njit(cache=True, _nrt=False)
def _hedge(h: int, v: int, j: int, x: float, slot: int, base: int, threads: int, free: np.ndarray, ctx: tuple) -> None:
    """Part j's hedge timer fired at x with its primary copy out: a copy, its service drawn anew, sent to a node not
    holding a part of the visit (`FleetPolicy.hedge_to`, `draw_copy`), or none when no node is left."""
    hs, fleets, batches = ctx[0], ctx[1], ctx[2]
    holding, part_int, part_f, draws, taken, sent, sent_n = hs[20], hs[21], hs[22], hs[4], hs[5], hs[28], hs[29]
    f = hs[1][h]
    nodes, scratch = fleets[0][f], fleets[14]
    held = 0
    for node in range(nodes):
        scratch[node] = holding[v, node]
        held += holding[v, node]
    if held == nodes:
        scratch[:] = False
        part_int[v, j, P_PHASE] = NO_SPARE
        return
    node = pick(f, x, base, threads, free, fleets, held, -1, batches)
    scratch[:] = False
    holding[v, node] = True
    m = sent_n[0]
    sent[m, 0], sent[m, 1] = slot, x
    sent_n[0] = m + 1
    s = draws[h, taken[h]] / 1000 + hs[3][h] * part_f[v, j, F_CANDIDATES]
    taken[h] += 1
    part_f[v, j, F_COPY_ALONE] = s
    part_int[v, j, P_PHASE] = BOTH
    part_int[v, j, P_SECOND] = _copy(h, v, j, node, s, True, x, slot, base, threads, free, ctx)


@njit(cache=True, _nrt=False)
def run_until(h: int, x: float, slot: int, base: int, threads: int, free: np.ndarray, ctx: tuple) -> None:
    """Hedged stage h's events before x, in time order, ties in the order they were scheduled."""
    hs = ctx[0]
    ev_t, ev_n, copy_int, copy_stack, copy_free, part_int = hs[6], hs[8], hs[14], hs[16], hs[17], hs[21]
    shards = part_int.shape[1]
    while ev_n[h] > 0 and ev_t[h, 0] < x:
        at, kind, what, serial = _next_event(hs, h)
        if kind == RELEASE:
            _release(h, what, serial, at, slot, free, ctx)
        elif kind == TIMER:
            v, j = what // shards, what % shards
            if part_int[v, j, P_ATTEMPT] == serial and part_int[v, j, P_PHASE] == ALONE_PHASE:
                _hedge(h, v, j, at, slot, base, threads, free, ctx)
        elif copy_int[what, C_SERIAL] == serial:
            c = what
            if kind == END and copy_int[c, C_STATE] == RUNNING:
                copy_int[c, C_STATE] = DONE
                _release(h, copy_int[c, C_NODE], copy_int[c, C_SERVER], at, slot, free, ctx)
                _settled(h, c, COMPLETED, at, slot, base, threads, free, ctx)
                _give(copy_stack, copy_free, c)
            elif kind == TIMEOUT and copy_int[c, C_STATE] == QUEUED:
                copy_int[c, C_STATE] = LEFT
                fleets = ctx[1]
                fleets[7][fleets[5][hs[1][h]] + copy_int[c, C_NODE]] -= 1
                _settled(h, c, TIMED_OUT, at, slot, base, threads, free, ctx)
            elif kind == SETTLE:
                _settled(h, c, REJECTED, at, slot, base, threads, free, ctx)
                _give(copy_stack, copy_free, c)


# --- the sweep's hooks (`kernels.advance`) ---------------------------------------------------------------
@njit(cache=True, _nrt=False)
def _context(
    slot: int, pools: tuple, hedging: tuple, fleets: tuple, batches: tuple, shard_s: np.ndarray, slow: tuple, more: tuple
) -> tuple:
    """What the stage's kernels take (`ctx`), for the hedged stage in `slot`; `more`: the deadline records, the
    pipeline's steps, the requests (`req`), their visits and the cache inserts (`kernels.advance`)."""
    dropped, steps, req, visits, ends = more
    queue_limit, timeout_s = pools[2], pools[3]
    limits = (queue_limit[slot], timeout_s[slot])
    return (
        hedging[0],
        fleets,
        batches,
        shard_s,
        visits[5],
        hedging[1],
        limits,
        slow,
        visits[4],
        dropped,
        req[11],
        visits[0],
        steps,
        req,
        visits,
        ends,
    )


@njit(cache=True, _nrt=False)
def _where(slot: int, pools: tuple, hedging: tuple, fleets: tuple) -> tuple[int, int, int]:
    """The hedged stage of `slot`, its servers' first index in `free` and its threads per node."""
    free_at = pools[0]
    h = hedging[0][0][slot]
    base = free_at[slot]
    return h, base, (free_at[slot + 1] - base) // fleets[0][hedging[0][1][h]]


@njit(cache=True, _nrt=False)
def stage_until(
    slot: int, x: float, pools: tuple, hedging: tuple, fleets: tuple, batches: tuple, shard_s: np.ndarray, slow: tuple, more: tuple
) -> None:
    """`run_until` x for the hedged stage in `slot` (`pools`: the stages' `free_at`, `free`, `queue_limit`, `timeout_s`)."""
    h, base, threads = _where(slot, pools, hedging, fleets)
    run_until(h, x, slot, base, threads, pools[1], _context(slot, pools, hedging, fleets, batches, shard_s, slow, more))


@njit(cache=True, _nrt=False)
def stage_send(
    slot: int,
    i: int,
    t: float,
    k: int,
    miss_s: float,
    pools: tuple,
    hedging: tuple,
    fleets: tuple,
    batches: tuple,
    shard_s: np.ndarray,
    slow: tuple,
    more: tuple,
) -> None:
    """`send_visit` of request i at its step k to the hedged stage in `slot`."""
    h, base, threads = _where(slot, pools, hedging, fleets)
    send_visit(h, i, slot, t, k, miss_s, base, threads, pools[1], _context(slot, pools, hedging, fleets, batches, shard_s, slow, more))
