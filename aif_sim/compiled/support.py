"""What the compiled engine supports, decided without importing numba (so a run that cannot use it never loads it)."""

from __future__ import annotations

from aif_sim.core.latency import Constant, Empirical, Exponential, Gamma, Lognormal, Profile, Sampler
from aif_sim.scenario.pipelines import calls_of
from aif_sim.scenario.schema import NodeLoss, Scenario, Stage, StageSlowdown, TraceArrival


def batch_draws_ahead(sampler: Sampler) -> bool:
    """Whether a batching stage's services can be drawn ahead exactly as `sim.pools.BatchingPool` draws them, one
    batch at a time: a sampler whose use of its stream does not depend on the batch (not one measured by
    candidates; not an empirical one, whose integer draws NumPy buffers within a call)."""
    if isinstance(sampler, Profile):
        return sampler.work_key == "batch"
    return isinstance(sampler, Constant | Exponential | Gamma | Lognormal)


def unsupported(scenario: Scenario, pipeline: str, samplers: dict[str, Sampler]) -> str | None:
    """Why the compiled engine cannot run this pipeline of the scenario with these stage samplers (one line), or
    None when it can."""
    if pipeline not in scenario.pipelines:
        return f"unknown pipeline {pipeline!r}"
    stages = scenario.pipeline(pipeline).stages
    hedged = _hedged(scenario, pipeline, samplers)
    if hedged is not None:
        return hedged
    lost = _loss_ties(scenario, pipeline, samplers)
    if lost:
        return lost
    shared = _shared_across_steps(scenario, pipeline)
    if shared:
        return f"the compiled engine does not model a user-keyed cache consulted at several steps ({', '.join(shared)})"
    batching = [name for name in stages if scenario.stages[name].batch is not None]
    per_candidate = [name for name in batching if scenario.stages[name].per_candidate_us]
    if per_candidate:
        return f"the compiled engine does not model per_candidate_us on batching stages ({', '.join(per_candidate)})"
    drawn_per_batch = [name for name in batching if not batch_draws_ahead(samplers[name])]
    if drawn_per_batch:
        return (
            f"the compiled engine does not model batching stages timed by candidates or by empirical samples ({', '.join(drawn_per_batch)})"
        )
    return _ties_likely(scenario, pipeline, samplers)


def _hedged(scenario: Scenario, pipeline: str, samplers: dict[str, Sampler]) -> str | None:
    """Why the compiled engine cannot run the pipeline's hedged stages (one line), or None: hedges with request
    deadlines or node loss, copies whose drawn service depends on their candidates (drawn ahead, they must
    not), and services of few values, whose ends can fall exactly at a hedge timer."""
    hedged = [
        name for name in scenario.pipeline(pipeline).stages if scenario.stages[name].nodes > 1 and scenario.stages[name].hedge_after_ms
    ]
    if not hedged:
        return None
    if scenario.deadline_ms is not None:
        return f"the compiled engine does not model request deadlines (deadline_ms) with hedged stages yet ({', '.join(hedged)})"
    lost = sorted({fault.stage for fault in scenario.faults if isinstance(fault, NodeLoss) and fault.stage in hedged})
    if lost:
        return f"the compiled engine does not model node loss on hedged stages yet ({', '.join(lost)})"
    by_candidates = [name for name in hedged if not batch_draws_ahead(samplers[name])]
    if by_candidates:
        return (
            "the compiled engine does not model hedge copies timed by candidates or by empirical samples, whose draws it "
            f"cannot make ahead ({', '.join(by_candidates)})"
        )
    discrete = [name for name in hedged if _few_values(samplers[name], scenario.stages[name].per_candidate_us)]
    if discrete:
        return (
            "the compiled engine may order events at equal times unlike simpy: a hedge timer can fall exactly at the end of "
            f"a constant service ({', '.join(discrete)})"
        )
    return None


def _loss_ties(scenario: Scenario, pipeline: str, samplers: dict[str, Sampler]) -> str | None:
    """Why a node loss may meet another event at exactly its time where their order matters (one line), or None.

    Simpy orders a node's loss or return against events at the same instant by when they were scheduled: arrivals
    from a trace (rounded times), another loss, return or slowdown change of the pipeline's stages, and, on the lost
    stage, the visits it sends again at the loss time, which start together there, so with constant or empirical
    services end together, and with a timeout time out together."""
    names = scenario.pipeline(pipeline).stages
    losses = [fault for fault in scenario.faults if isinstance(fault, NodeLoss) and fault.stage in names]
    if not losses:
        return None
    lost = sorted({fault.stage for fault in losses})
    ties = "the compiled engine may order events at equal times unlike simpy: "
    if isinstance(scenario.traffic.arrival, TraceArrival):
        return ties + f"trace arrivals can meet a node's loss or return ({', '.join(lost)})"
    changes = [fault for fault in scenario.faults if isinstance(fault, NodeLoss | StageSlowdown) and fault.stage in names]
    times = [t for fault in changes for t in (fault.at_s, fault.at_s + fault.duration_s)]
    if len(set(times)) < len(times):
        return ties + f"a node is lost or returns at the instant of another node loss, return or slowdown ({', '.join(lost)})"
    for name in lost:
        config = scenario.stages[name]
        if config.retries and config.timeout_ms is not None:
            return ties + f"the visits {name} sends again at a node's loss time out together"
        if config.retries and _few_values(samplers[name], config.per_candidate_us):
            return ties + f"the visits {name} sends again at a node's loss, of constant or empirical services, end together"
    return None


def _shared_across_steps(scenario: Scenario, pipeline: str) -> list[str]:
    """The user-keyed caches the pipeline consults at more than one step (the compiled engine sweeps a step at a time,
    so it can apply a shared cache's operations in time order only when one step makes them all)."""
    definition, caches = scenario.pipeline(pipeline), scenario.caches
    step_of = {slot: k for k, slots in enumerate(definition.step_slots) for slot in slots}
    steps: dict[str, set[int]] = {}
    for lookup in definition.lookups:
        spec = caches.get(lookup.cache) if caches is not None else None
        if spec is not None and spec.key == "user":
            steps.setdefault(lookup.cache, set()).add(step_of[lookup.slot])
    return [name for name, where in steps.items() if len(where) > 1]


def _ties_likely(scenario: Scenario, pipeline: str, samplers: dict[str, Sampler]) -> str | None:
    """Why events at exactly equal times are likely where their order changes the results (one line), or None.

    The compiled engine orders a visit leaving a stage before an arrival there at the same instant, and equal
    ends by its own rule; simpy orders them as they were scheduled. Exact ties need services that take few
    values (constant, empirical) meeting arrivals that do too: trace times (rounded, repeated), or, at a queueing
    stage (a queue limit, a timeout, batching, several nodes), the ends of an earlier step of such services or of
    batches (sums that coincide, members that end together); a sharded stage of such services ends the shards of
    a visit together, and the shards queued behind them on several nodes start at one instant; a request's
    deadline can fall exactly at the end of its own visits of such services, and at a batching stage's timer or timeout
    for a request that arrives there at once when the two are equal; and requests arriving together at a
    batching stage of several nodes wake several dispatchers at one instant, which draw from the stage's one stream,
    or at a sharded stage have their shards sent (and timed out) interleaved, or at a stage of several nodes that retries
    time out together and are sent again."""
    names = scenario.pipeline(pipeline).stages
    tiny = [name for name in names if isinstance(samplers[name], Gamma) and samplers[name].cv > 1]
    if tiny:
        return (
            "the compiled engine may order events at equal times unlike simpy: gamma services with cv above 1 often draw "
            f"times below the clock's resolution, so a visit ends at the instant it starts ({', '.join(tiny)})"
        )
    timers = [name for name in names if scenario.deadline_ms in _batch_timers(scenario.stages[name])]
    if timers:
        return (
            "the compiled engine may order events at equal times unlike simpy: a batching stage's max_wait_ms or timeout_ms "
            f"equals the request deadline, so a request that arrives there at once meets both at one instant ({', '.join(timers)})"
        )
    discrete = [name for name in names if _few_values(samplers[name], scenario.stages[name].per_candidate_us)]
    if discrete and scenario.deadline_ms is not None:
        return (
            "the compiled engine may order events at equal times unlike simpy: a request deadline meets constant or empirical "
            f"services, whose visits can end exactly at it ({', '.join(discrete)})"
        )
    sharded = [name for name in discrete if scenario.stages[name].shards > 1]
    if sharded:
        return (
            "the compiled engine may order events at equal times unlike simpy: sharded visits of constant or empirical services "
            f"end together on several nodes, starting the shards queued behind them at one instant ({', '.join(sharded)})"
        )
    if discrete and isinstance(scenario.traffic.arrival, TraceArrival):
        return f"the compiled engine may order events at equal times unlike simpy: trace arrivals into constant or empirical services ({', '.join(discrete)})"
    earlier: list[str] = []  # the stages of earlier steps whose ends can coincide
    batched: list[str] = []  # the batching stages of earlier steps
    for step in scenario.pipeline(pipeline).steps:
        stages = [call.stage for call in calls_of(step)]
        for name in stages:
            config = scenario.stages[name]
            queueing = config.queue_limit is not None or config.timeout_ms is not None or config.batch is not None or config.nodes > 1
            if earlier and queueing and name in discrete:
                return (
                    f"the compiled engine may order events at equal times unlike simpy: {name} queues with constant or empirical "
                    f"services after constant, empirical or batched services at {', '.join(earlier)}"
                )
            together = ", ".join(batched) if batched else "trace arrivals" if isinstance(scenario.traffic.arrival, TraceArrival) else ""
            if together and config.batch is not None and config.nodes > 1:
                return (
                    f"the compiled engine may order events at equal times unlike simpy: {name} batches on several nodes whose "
                    f"dispatchers, woken at one instant by requests arriving together (after {together}), draw the stage's batch "
                    "services in simpy's scheduling order"
                )
            if together and config.shards > 1:
                return (
                    f"the compiled engine may order events at equal times unlike simpy: {name} shards the visits of requests "
                    f"arriving together (after {together}), whose shards simpy sends, and times out, interleaved"
                )
            if together and config.nodes > 1 and config.retries and config.timeout_ms is not None:
                return (
                    f"the compiled engine may order events at equal times unlike simpy: {name} sends again the visits of requests "
                    f"arriving together (after {together}), which time out at one instant"
                )
        earlier += [name for name in stages if name in discrete or scenario.stages[name].batch is not None]
        batched += [name for name in stages if scenario.stages[name].batch is not None]  # members arrive on together
    return None


def _few_values(sampler: Sampler, per_candidate_us: float) -> bool:
    """Whether a stage's services take few distinct values, other than a stage that takes no time."""
    if isinstance(sampler, Constant):
        return sampler.ms > 0 or per_candidate_us > 0
    return isinstance(sampler, Empirical)


def _batch_timers(stage: Stage) -> set[float]:
    """The waits (ms) after which a batching stage acts on a request that joined it: its batch timer and its timeout."""
    if stage.batch is None:
        return set()
    return {stage.batch.max_wait_ms} | ({stage.timeout_ms} if stage.timeout_ms is not None else set())
