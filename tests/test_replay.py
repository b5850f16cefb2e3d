"""A DES replaying a service-time trace (`core.replay`) serves the trace's arrivals for the trace's service times:
on both DES engines, its latencies equal a FIFO schedule computed by hand from the trace alone.

- One FIFO server: Lindley's recursion, start = max(arrival, previous end), end = start + service.
- Three single-thread nodes behind p2c: at each arrival the balancer draws two distinct nodes from the stage's own
  stream of uniforms (`balance:<stage>`, two per pick) and takes the one with fewer requests outstanding (queued or
  in service, from the hand schedule; a tie keeps the first drawn); each node is then a FIFO server as above.
"""

from __future__ import annotations

import numpy as np
import pytest

from aif_sim.app.run import build_samplers, simulate
from aif_sim.core.replay import ServiceTrace
from aif_sim.core.traffic import CHUNK, stream
from aif_sim.scenario import Scenario
from aif_sim.scenario.pipelines import shipped_designs
from tests.simtools import RowSink, make_scenario, negligible

ENGINES = ["simpy", "compiled"]
REQUESTS = 400
QPS = 150.0
SEED = 5
PRERANK = shipped_designs()["sequential"].stages.index("prerank")
STEPS = shipped_designs()["sequential"].step_slots  # one slot per step: merger, retrieval, feature_fetch, prerank


def _trace(rng: np.random.Generator, mean_service_s: float, requests: int = REQUESTS) -> ServiceTrace:
    """Poisson arrivals at QPS; every visit traced: 0 at the stages before prerank, exponential at prerank."""
    arrival = np.cumsum(rng.exponential(1 / QPS, requests))
    service = np.zeros((requests, len(shipped_designs()["sequential"].stages)))
    service[:, PRERANK] = rng.exponential(mean_service_s, requests)
    return ServiceTrace.of(STEPS, arrival, service)


def _scenario(prerank: dict, trace: ServiceTrace) -> Scenario:
    """The sequential pipeline, prerank as given, the other stages negligible; the draws it would make are far from
    the trace's (a constant 50 ms), so a draw used in place of a traced time shows."""
    stages = {"merger": negligible(), "retrieval": negligible(), "feature_fetch": negligible(), "prerank": prerank}
    return make_scenario(stages, pipelines=["sequential"], duration_s=float(trace.arrival_s[-1]) + 0.001, drain_s=10.0, seed=SEED)


def _replayed(scenario: Scenario, trace: ServiceTrace, engine: str) -> tuple[np.ndarray, np.ndarray]:
    """Request ids and latencies (s) of the replay, in id order."""
    sink = RowSink()
    simulate(scenario, build_samplers(scenario, "<test>"), sink, engine=engine, traces={"sequential": trace})
    rows = sorted(sink.rows, key=lambda row: row[1])
    return np.array([row[1] for row in rows]), np.array([row[3] for row in rows]) / 1000


def fifo_ends(arrival: np.ndarray, service: np.ndarray) -> np.ndarray:
    """End times of a single FIFO server (Lindley's recursion)."""
    ends = np.empty(len(arrival))
    free = -np.inf
    for i, (a, s) in enumerate(zip(arrival, service)):
        free = max(a, free) + s
        ends[i] = free
    return ends


def p2c_ends(arrival: np.ndarray, service: np.ndarray, nodes: int, uniforms: np.ndarray) -> np.ndarray:
    """End times on `nodes` single-thread FIFO nodes behind p2c, with these uniforms (two per pick)."""
    ends = np.empty(len(arrival))
    at_node: list[list[float]] = [[] for _ in range(nodes)]  # the end times of each node's visits so far
    for i, (a, s) in enumerate(zip(arrival, service)):
        outstanding = [sum(end > a for end in node) for node in at_node]
        first = int(uniforms[2 * i] * nodes)
        second = int(uniforms[2 * i + 1] * (nodes - 1))
        second += second >= first
        node = second if outstanding[second] < outstanding[first] else first
        free = at_node[node][-1] if at_node[node] else -np.inf
        ends[i] = max(a, free) + s
        at_node[node].append(ends[i])
    return ends


@pytest.mark.parametrize("engine", ENGINES)
def test_replay_of_one_fifo_server_equals_lindleys_recursion(engine):
    trace = _trace(np.random.default_rng(1), mean_service_s=0.005)  # 75% busy: long busy periods
    scenario = _scenario({"servers": 1, "latency": {"dist": "constant", "ms": 50}}, trace)
    ids, latency = _replayed(scenario, trace, engine)
    assert ids.tolist() == list(range(REQUESTS))
    expected = fifo_ends(trace.arrival_s, trace.service_s[:, PRERANK]) - trace.arrival_s
    assert latency == pytest.approx(expected, abs=1e-9)
    assert expected.max() > 5 * 0.005  # queueing happened: the check is not of services alone


@pytest.mark.parametrize("engine", ENGINES)
def test_replay_of_nodes_behind_p2c_equals_the_hand_schedule(engine):
    nodes = 3
    trace = _trace(np.random.default_rng(2), mean_service_s=0.016)  # 80% busy over the three nodes
    prerank = {"servers": nodes, "nodes": nodes, "balance": "p2c", "latency": {"dist": "constant", "ms": 50}}
    scenario = _scenario(prerank, trace)
    ids, latency = _replayed(scenario, trace, engine)
    assert ids.tolist() == list(range(REQUESTS))
    uniforms = stream(SEED, "balance:prerank").random(2 * REQUESTS)  # the balancer's stream (drawn a block at a time)
    expected = p2c_ends(trace.arrival_s, trace.service_s[:, PRERANK], nodes, uniforms) - trace.arrival_s
    assert latency == pytest.approx(expected, abs=1e-9)
    alone = fifo_ends(trace.arrival_s, trace.service_s[:, PRERANK]) - trace.arrival_s
    assert not np.allclose(expected, alone)  # the nodes, not one server, decide the waits


@pytest.mark.parametrize("engine", ENGINES)
def test_a_batch_takes_its_members_mean_traced_time(engine):
    """Requests arriving together at a batching stage that waits long enough for all of them form one batch, which
    ends for every member at the batch's start plus its members' mean traced time."""
    arrival = np.array([0.010, 0.0101, 0.0102, 0.0103])
    service = np.zeros((4, len(shipped_designs()["sequential"].stages)))
    service[:, PRERANK] = [0.002, 0.007, 0.003, 0.001]
    trace = ServiceTrace.of(STEPS, arrival, service)
    prerank = {"servers": 1, "latency": {"dist": "constant", "ms": 50}, "batch": {"max_size": 4, "max_wait_ms": 5}}
    _, latency = _replayed(_scenario(prerank, trace), trace, engine)
    started = arrival[-1]  # the fourth member fills the batch
    assert latency == pytest.approx(started + 0.00325 - arrival, abs=1e-9)


def test_a_sharded_stage_replays_each_shards_traced_time():
    """Two shards per visit on two single-thread nodes: p2c picks the first shard's node (two uniforms), the second
    shard goes to the other (two uniforms taken all the same); each node serves its shards FIFO for their traced
    times and the visit ends with its last shard. (Shards run on simpy: the compiled engine does not model them.)"""
    rng = np.random.default_rng(3)
    trace = _trace(rng, mean_service_s=0.004)
    shards = rng.exponential(0.004, (REQUESTS, 2))
    trace = ServiceTrace.of(STEPS, trace.arrival_s, trace.service_s, {PRERANK: shards})
    prerank = {"servers": 2, "nodes": 2, "shards": 2, "latency": {"dist": "constant", "ms": 50}}
    _, latency = _replayed(_scenario(prerank, trace), trace, "simpy")
    uniforms = stream(SEED, "balance:prerank").random(4 * REQUESTS)
    free = [-np.inf, -np.inf]  # each node's last end
    ends = [[], []]
    expected = np.empty(REQUESTS)
    for i, a in enumerate(trace.arrival_s):
        outstanding = [sum(end > a for end in node) for node in ends]
        first = int(uniforms[4 * i] * 2)
        second = 1 - first
        node = second if outstanding[second] < outstanding[first] else first
        finish = []
        for shard, at in enumerate((node, 1 - node)):
            free[at] = max(a, free[at]) + shards[i, shard]
            ends[at].append(free[at])
            finish.append(free[at])
        expected[i] = max(finish) - a
    assert latency == pytest.approx(expected, abs=1e-9)


def test_untraced_visits_keep_their_draws_and_arrivals_come_in_chunks():
    """A NaN in the trace leaves the draw (here a constant 50 ms); the arrivals are cut as the traffic's are."""
    arrival = np.arange(1, CHUNK + 3) * 1e-4
    service = np.zeros((len(arrival), len(shipped_designs()["sequential"].stages)))
    service[::2, PRERANK] = np.nan
    trace = ServiceTrace.of(STEPS, arrival, service)
    assert [len(chunk) for chunk in trace.arrivals(1.0)] == [CHUNK, 2]
    assert sum(len(chunk) for chunk in trace.arrivals(arrival[9])) == 9
    small = ServiceTrace.of(STEPS, arrival[:6], service[:6])
    scenario = _scenario({"servers": 100, "latency": {"dist": "constant", "ms": 50}}, small)
    _, latency = _replayed(scenario, small, "simpy")
    assert latency == pytest.approx([0.05, 0.0, 0.05, 0.0, 0.05, 0.0], abs=1e-9)


def test_a_trace_records_arrivals_and_the_visits_that_ended():
    """What an engine records: the arrival of each issued request, and the service of each visit it ended."""
    from aif_sim.core.request import Request

    trace = ServiceTrace([[0], [1]], shards={0: 2}, capacity=1)
    requests = [Request(i, 0.1 * i, 0, 10, True, [0.0, 0.0]) for i in range(3)]
    trace.arrive(requests)
    done = requests[1]
    done.service_s = [0.004, 0.009]
    done.shard_s = {0: [0.003, 0.004]}
    done.times = [0.1, 0.1, 0.104, float("nan"), float("nan"), float("nan")]  # the second visit never ended
    trace.record(done)
    assert trace.arrival_s.tolist() == [0.0, 0.1, 0.2]
    assert np.isnan(trace.service_s[[0, 2]]).all() and np.isnan(trace.shard_s(0)[[0, 2]]).all()
    assert trace.service_s[1, 0] == 0.004 and np.isnan(trace.service_s[1, 1]) and trace.shard_s(0)[1].tolist() == [0.003, 0.004]
    # the pause before its first step: from its arrival (0.1) to its first visit (0.1); it never finished the second
    assert trace.hop_s[1, 0] == 0.0 and np.isnan(trace.hop_s[1, 1]) and np.isnan(trace.hop_s[0]).all()


def test_a_trace_records_the_pauses_between_steps_outside_any_stage():
    """aif's steps: merger, (retrieval || user_inference), item_fetch, rtp. A step's pause runs from the end of the
    one before (its last visit's; for the first, the arrival) to its first visit's entry."""
    from aif_sim.core.request import Request

    steps = shipped_designs()["aif"].step_slots
    trace = ServiceTrace(steps)
    request = Request(0, 1.0, 0, 10, True, [0.0] * 5)
    trace.arrive([request])
    nan = float("nan")
    visits = [(1.002, 1.002, 1.003), (1.0035, 1.004, 1.020), (1.0034, 1.0034, 1.010), (1.0211, 1.0211, 1.023), (1.024, 1.024, 1.030)]
    request.times = [t for visit in visits for t in visit]
    trace.record(request)
    assert trace.hop_s[0] == pytest.approx([0.002, 0.0004, 0.0011, 0.001])
    skipped = Request(1, 2.0, 0, 10, True, [0.0] * 5)  # a user-vector hit: no user_inference visit
    trace.arrive([skipped])
    skipped.times = [2.0, 2.0, 2.001, 2.001, 2.001, 2.002, nan, nan, nan, 2.0025, 2.0025, 2.003, 2.003, 2.003, 2.004]
    trace.record(skipped)
    assert trace.hop_s[1] == pytest.approx([0.0, 0.0, 0.0005, 0.0])


@pytest.mark.parametrize("engine", ENGINES)
def test_pauses_between_steps_delay_the_arrival_at_the_next_stage(engine):
    """A pause before the first step and one before prerank: the request reaches prerank at arrival + both pauses,
    queues there FIFO in order of that time, and its latency counts the pauses from its arrival."""
    rng = np.random.default_rng(4)
    base = _trace(rng, mean_service_s=0.005)
    hops = np.zeros((REQUESTS, len(STEPS)))
    hops[:, 0], hops[:, PRERANK] = rng.exponential(0.003, REQUESTS), rng.exponential(0.002, REQUESTS)
    trace = ServiceTrace.of(STEPS, base.arrival_s, base.service_s, hop_s=hops)
    _, latency = _replayed(_scenario({"servers": 1, "latency": {"dist": "constant", "ms": 50}}, trace), trace, engine)
    reach = trace.arrival_s + hops[:, 0] + hops[:, PRERANK]
    order = np.argsort(reach, kind="stable")
    ends = np.empty(REQUESTS)
    ends[order] = fifo_ends(reach[order], trace.service_s[order, PRERANK])
    assert latency == pytest.approx(ends - trace.arrival_s, abs=1e-9)
    with pytest.raises(ValueError, match="ascending"):
        ServiceTrace.of([[0]], np.array([0.2, 0.1]), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="hop_s"):
        ServiceTrace.of([[0]], np.array([0.1, 0.2]), np.zeros((2, 1)), hop_s=np.array([[0.0], [-1.0]]))


def test_both_engines_replay_a_full_trace_of_aif_alike():
    """AIF with its caches, a fleet, a batching user side and a parallel step, replayed from a trace of random
    services at every slot and random pauses before every step (some visits untraced: drawn): the two DES engines
    give every request the same latency."""
    from tests.simtools import small_stages

    stages = small_stages({"servers": 4, "latency": {"dist": "gamma", "mean_ms": 4, "cv": 0.5}})
    stages["retrieval"] |= {"servers": 8, "nodes": 4, "balance": "p2c"}
    caches = {
        "user_vector": {"capacity": 200, "ttl_s": 2},
        "sim_features": {"capacity": 300, "miss_latency": {"dist": "exponential", "mean_ms": 2}},
    }
    rng = np.random.default_rng(6)
    steps, slots = shipped_designs()["aif"].step_slots, len(shipped_designs()["aif"].stages)
    arrival = np.cumsum(rng.exponential(1 / 400, 3000))
    service = rng.gamma(2.0, 0.002, (len(arrival), slots))
    service[rng.random(service.shape) < 0.1] = np.nan  # untraced: the draw stands
    hops = rng.exponential(0.0005, (len(arrival), len(steps)))
    trace = ServiceTrace.of(steps, arrival, service, hop_s=hops)
    scenario = make_scenario(stages, pipelines=["aif"], duration_s=float(arrival[-1]) + 0.001, warmup_s=0.5, seed=SEED, caches=caches)
    samplers = build_samplers(scenario, "<test>")
    rows = {}
    for engine in ENGINES:
        sink = RowSink()
        simulate(scenario, samplers, sink, engine=engine, traces={"aif": trace})
        rows[engine] = {row[1]: row[3] for row in sink.rows}
    assert rows["simpy"].keys() == rows["compiled"].keys() and len(rows["simpy"]) > 2000
    ids = sorted(rows["simpy"])
    assert [rows["compiled"][i] for i in ids] == pytest.approx([rows["simpy"][i] for i in ids], abs=1e-9)
