"""Simulator speed and memory against a bare simpy model of the same AIF fork–join pipeline.

Each measurement runs in its own process so that peak RSS belongs to it alone:

    python bench/bench_sim.py                       # 10^6 requests, 10^4 candidates per request
    python bench/bench_sim.py --requests 100000 1000000 10000000

Prints simulated requests per wall-second of aif-sim and of the bare model (measured in the same
run), their ratio (target >= 0.5) and each one's peak RSS (target: flat in the request count).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import simpy
from rich.console import Console
from rich.table import Table

QPS = 2000.0
CANDIDATES = 10_000
STAGES = {  # servers, mean service (ms): exponential, the same in both models
    "merger": (64, 0.5),
    "retrieval": (256, 10.0),
    "user_inference": (32, 5.0),
    "item_fetch": (128, 1.5),
    "rtp": (32, 3.0),
}


def scenario_dict(requests: int) -> dict:
    return {
        "name": "bench",
        "seed": 1,
        "duration_s": requests / QPS,
        "warmup_s": 0.0,
        "pipelines": ["aif"],
        "traffic": {"arrival": {"kind": "poisson", "qps": QPS}, "candidates": CANDIDATES},
        "stages": {
            name: {"servers": servers, "latency": {"dist": "exponential", "mean_ms": mean}}
            for name, (servers, mean) in STAGES.items()
        },
    }


def run_aif_sim(requests: int) -> int:
    from aif_sim.runner import build_samplers, simulate
    from aif_sim.scenario import validate_scenario

    scenario = validate_scenario(scenario_dict(requests), "bench")
    metrics = simulate(scenario, build_samplers(scenario, "bench"))["aif"]
    return metrics.completed


def run_bare_simpy(requests: int) -> int:
    """The same pipeline written directly in simpy, draws vectorised per chunk, no bookkeeping."""
    rng = np.random.default_rng(1)
    env = simpy.Environment()
    pools = {name: simpy.Resource(env, servers) for name, (servers, _) in STAGES.items()}
    done = [0]

    def visit(name: str, service_s: float):
        with pools[name].request() as claim:
            yield claim
            yield env.timeout(service_s)

    def handle(service: list[float]):
        yield from visit("merger", service[0])
        retrieval = env.process(visit("retrieval", service[1]))
        user = env.process(visit("user_inference", service[2]))
        yield retrieval & user
        yield from visit("item_fetch", service[3])
        yield from visit("rtp", service[4])
        done[0] += 1

    def arrivals():
        left = requests
        while left:
            n = min(left, 8192)
            gaps = rng.exponential(1 / QPS, n).tolist()
            services = np.column_stack([rng.exponential(mean / 1000, n) for _, mean in STAGES.values()]).tolist()
            for gap, service in zip(gaps, services):
                yield env.timeout(gap)
                env.process(handle(service))
            left -= n

    env.process(arrivals())
    env.run()
    return done[0]


def child(model: str, requests: int) -> None:
    start = time.perf_counter()
    completed = (run_aif_sim if model == "aif-sim" else run_bare_simpy)(requests)
    wall = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"model": model, "requests": requests, "completed": completed, "wall_s": wall, "peak_rss_mib": peak_mib}))


def measure(model: str, requests: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", model, "--requests", str(requests)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--child", choices=("aif-sim", "bare-simpy"))
    args = parser.parse_args()
    if args.child:
        child(args.child, args.requests[0])
        return
    table = Table(title=f"aif pipeline, {CANDIDATES:,} candidates/request, {QPS:,.0f} QPS offered")
    for column in ("requests", "aif-sim req/s", "bare simpy req/s", "ratio", "aif-sim peak RSS MiB", "bare peak RSS MiB"):
        table.add_column(column, justify="right")
    console = Console()
    for requests in args.requests:
        with console.status(f"simulating {requests:,} requests"):
            ours, bare = measure("aif-sim", requests), measure("bare-simpy", requests)
        ours_rate, bare_rate = ours["completed"] / ours["wall_s"], bare["completed"] / bare["wall_s"]
        table.add_row(
            f"{requests:,}", f"{ours_rate:,.0f}", f"{bare_rate:,.0f}", f"{ours_rate / bare_rate:.2f}×",
            f"{ours['peak_rss_mib']:,.0f}", f"{bare['peak_rss_mib']:,.0f}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
