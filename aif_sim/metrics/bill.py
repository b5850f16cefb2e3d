"""The whole bill of a design: the memory its caches and nearline indexes hold, in bytes, and its cost per hour.

A design pays for what it provisions, busy or not: every server of the stages it visits
(`stages.NAME.cost_per_server_hour` each), the refresh workers of the nearline stores it reads
(`nearline.refresh` / `user_refresh` / `stores.NAME.refresh`: `cost_per_server_hour` each) and the memory of its caches (capacity x
`entry_bytes`; a request-keyed cache, the entries it holds on average, those of the requests in flight, as a run
measures them) and indexes (entities x `nearline.vector_bytes`; twice that under the consistent version policy
when model versions are published: the rollout holds two buffers), at `cost_per_gb_hour` per GiB.
"""

from __future__ import annotations

from aif_sim.scenario.schema import DEFAULT_ENTRY_BYTES, OTHER_ENTRY_BYTES, Scenario

GIB = 2**30
DEFAULT_VECTOR_BYTES = 512  # one stored vector when the scenario has no nearline section


def memory_bytes(scenario: Scenario, pipeline: str, held: dict[str, float] | None = None) -> dict[str, int]:
    """Per cache (`cache:NAME`) and nearline index (`index:items`, `index:users`, `index:NAME`) the pipeline uses, its bytes at peak;
    a request-keyed cache's, its mean entries `held[NAME]` (0 when not given) times its entry bytes."""
    out: dict[str, int] = {}
    caches = scenario.caches
    for name in scenario.pipeline(pipeline).caches:
        spec = caches.get(name) if caches is not None else None
        if spec is not None:
            entries = (held or {}).get(name, 0.0) if spec.key == "request" else spec.capacity or 0
            out[f"cache:{name}"] = round(entries * (spec.entry_bytes or DEFAULT_ENTRY_BYTES.get(name, OTHER_ENTRY_BYTES)))
    nearline = scenario.nearline
    vector_bytes = nearline.vector_bytes if nearline is not None else DEFAULT_VECTOR_BYTES
    for store in scenario.pipeline(pipeline).vector_stores:
        buffers = 2 if scenario.store_entities(store) == "items" and _double_buffered(scenario) else 1
        out[f"index:{store}"] = scenario.store_count(store) * vector_bytes * buffers
    return out


def _double_buffered(scenario: Scenario) -> bool:
    nearline = scenario.nearline
    return nearline is not None and nearline.model_publish_interval_s is not None and nearline.version_policy == "consistent"


def refresh_workers(scenario: Scenario, pipeline: str) -> dict[str, tuple[int, float]]:
    """Per refresh pool of the stores the pipeline reads (`refresh:items`, `refresh:users`, `refresh:NAME`): workers, cost of one an hour."""
    nearline = scenario.nearline
    if nearline is None:
        return {}
    out = {}
    for store in scenario.pipeline(pipeline).vector_stores:
        refresh = nearline.refresh_of(store)
        if refresh is not None:
            out[f"refresh:{store}"] = (refresh.workers, refresh.cost_per_server_hour)
    return out


def fixed_cost_per_hour(scenario: Scenario, pipeline: str, held: dict[str, float] | None = None) -> dict[str, float]:
    """The cost an hour of what a design provisions besides its stages' servers: refresh workers and memory (`held`:
    as `memory_bytes`)."""
    refresh = sum(workers * cost for workers, cost in refresh_workers(scenario, pipeline).values())
    memory = sum(memory_bytes(scenario, pipeline, held).values()) / GIB * scenario.cost_per_gb_hour
    return {"refresh": float(refresh), "memory": float(memory)}


def cost_per_hour(scenario: Scenario, pipeline: str, held: dict[str, float] | None = None) -> dict[str, float]:
    """A design's cost an hour as the scenario provisions it: `stages`, `refresh`, `memory` and their `total` (`held`:
    as `memory_bytes`)."""
    stages = sum(scenario.stages[name].servers * scenario.stages[name].cost_per_server_hour for name in scenario.pipeline(pipeline).stages)
    out = {"stages": float(stages), **fixed_cost_per_hour(scenario, pipeline, held)}
    out["total"] = sum(out.values())
    return out
