"""aif-sim's speed and memory, as users run it, against a lean bare-simpy model of the same system.

    python bench/bench_sim.py                              # 10^6 requests
    python bench/bench_sim.py --requests 100000 1000000 --repeat 3
    python bench/bench_sim.py --requests 10000000 --fleet  # every pool as machines behind p2c, rtp sharded (aif-sim's side)
    python bench/bench_sim.py --requests 10000000 --fleet --only "compiled no rows" lean  # those two alone

The system: the aif pipeline, merger -> (retrieval || user_inference) -> item_fetch -> rtp, every
stage a pool of servers behind one FIFO queue with exponential service times (STAGES), Poisson
arrivals at 2000 QPS, 10^4 candidates per request. Every figure comes from its own process, so its
peak RSS (the child's maximum resident set, from os.wait4) belongs to it alone:

- aif-sim CLI (compiled and simpy engines, `--engine`): `python run_sim.py scenario.yaml --quiet --out DIR` end to end, timed around the
  subprocess: interpreter start-up, imports, scenario loading, simulation, metrics, summary.json,
  the per-request file (all rows, the default), timeseries.csv and both plots.
- no rows: the same CLI run with `--requests-sample 0`, which writes no per-request rows.
  Writing every row cost 15-30% of the CLI's time and ~70 MiB of RSS at 10^6 requests, hence both.
- aif-sim engine: `simulate()` called in-process, timed around the call alone (no start-up,
  imports or output files): what the simulator's bookkeeping costs on top of the lean model.
- lean simpy: the same system written directly in simpy with the engine's own tricks (see
  `run_lean_simpy`) and no bookkeeping beyond a completion count and a latency sum: the baseline.

Rates are completed requests per wall-second (aif-sim's Poisson arrivals over requests / QPS
seconds give about, not exactly, the requested count). With --repeat K each measurement runs K
times and the median wall time and median peak RSS are reported (the machine may be shared).
Targets: CLI / lean >= 0.7, and peak RSS flat in the request count. The mean latency columns
show that both models simulate the same system: they use different random streams, so they agree
within sampling noise (about 0.05 ms at 10^5 requests), near the no-queueing value of 16.67 ms.
The "fixed cost" line is a 100-request CLI run: the start-up and output overhead of any run.

With --fleet, aif-sim's runs make every pool a fleet of machines, each with its own queue, behind p2c
(FLEET_NODES), and score rtp's candidates in 4 shards on distinct machines (FLEET_SHARDS); the lean model stays
the shared-queue system without shards, the reference for speed (the mean latencies then differ by what
balancing and sharding add: rtp's visit takes its slowest of 4 shards, each drawn at the whole visit's mean).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np
import simpy
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "run_sim.py"
QPS = 2000.0
CANDIDATES = 10_000
CHUNK = 8192  # arrivals drawn at once by the lean model (the engine's chunk too)
STAGES = {  # servers, mean service (ms): exponential, the same in both models
    "merger": (64, 0.5),
    "retrieval": (256, 10.0),
    "user_inference": (32, 5.0),
    "item_fetch": (128, 1.5),
    "rtp": (32, 3.0),
}
FLEET_NODES = {"merger": 4, "retrieval": 16, "user_inference": 4, "item_fetch": 8, "rtp": 4}  # machines, with --fleet
FLEET_SHARDS = {"rtp": 4}  # with --fleet: a visit's candidates scored in this many shards, on distinct machines
FIXED_COST_REQUESTS = 100


def scenario_dict(requests: int, fleet: bool = False) -> dict:
    """The bench's scenario; with `fleet`, every pool as FLEET_NODES machines behind p2c, rtp sharded (FLEET_SHARDS)."""
    machines, shards = (FLEET_NODES, FLEET_SHARDS) if fleet else ({}, {})
    return {
        "name": "bench",
        "seed": 1,
        "duration_s": requests / QPS,
        "warmup_s": 0.0,
        "pipelines": ["aif"],
        "traffic": {"arrival": {"kind": "poisson", "qps": QPS}, "candidates": CANDIDATES},
        "stages": {
            name: {
                "servers": servers,
                "nodes": machines.get(name, 1),
                "shards": shards.get(name, 1),
                "balance": "p2c",
                "latency": {"dist": "exponential", "mean_ms": mean},
            }
            for name, (servers, mean) in STAGES.items()
        },
    }


# --- aif-sim in-process ----------------------------------------------------------------------------
def engine_api():
    """validate_scenario, build_samplers, simulate, summary_document: the one place that knows module paths."""
    sys.path.insert(0, str(ROOT))  # the package of this tree, like run_sim.py
    from aif_sim.scenario import validate_scenario

    try:
        from aif_sim.app.run import build_samplers, simulate, summary_document
    except ImportError:  # the layout before aif_sim.app
        from aif_sim.runner import build_samplers, simulate, summary_document
    return validate_scenario, build_samplers, simulate, summary_document


def run_engine(requests: int, engine: str, fleet: bool = False) -> dict:
    validate_scenario, build_samplers, simulate, summary_document = engine_api()
    scenario = validate_scenario(scenario_dict(requests, fleet), "bench")
    samplers = build_samplers(scenario, "bench")
    if engine == "compiled":  # compile (or load numba's on-disk cache) before the clock starts
        simulate(validate_scenario(scenario_dict(1000, fleet), "bench"), samplers, engine=engine)
    start = time.perf_counter()
    results = simulate(scenario, samplers, engine=engine)
    wall = time.perf_counter() - start
    summary = summary_document(scenario, results)["pipelines"]["aif"]
    return {"wall_s": wall, "completed": summary["requests"]["completed"], "mean_latency_ms": summary["latency_ms"]["mean"]}


# --- the lean reference ----------------------------------------------------------------------------
class Pool:
    """`servers` servers behind a FIFO queue; the waiters are events, each fired when handed a server."""

    __slots__ = ("busy", "servers", "waiters")

    def __init__(self, servers: int) -> None:
        self.servers, self.busy, self.waiters = servers, 0, deque()


def run_lean_simpy(requests: int) -> dict:
    """The system in plain simpy, as lean as the engine's tricks allow.

    A request finding a free server takes it by counting, without an event; one finding none waits
    on an event in the pool's deque, and a finishing server is handed straight to the first waiter.
    Of the parallel step only retrieval gets its own process; user_inference runs in the request's
    process. Arrivals and service times are drawn per chunk with numpy. The visits are written out
    in `handle` rather than called through `visit`: it measured 2-5% faster than `yield from visit`.
    """
    rng = np.random.default_rng(1)
    env = simpy.Environment()
    event, timeout, process = env.event, env.timeout, env.process
    merger, retrieval, user, fetch, rtp = (Pool(servers) for servers, _ in STAGES.values())
    completed, latency_sum = 0, 0.0

    def queue(pool: Pool) -> simpy.Event:
        waiter = event()
        pool.waiters.append(waiter)
        return waiter

    def visit(pool: Pool, service: float):
        if pool.busy < pool.servers:
            pool.busy += 1
        else:
            yield queue(pool)
        yield timeout(service)
        if pool.waiters:
            pool.waiters.popleft().succeed()
        else:
            pool.busy -= 1

    def handle(arrival: float, service: list[float]):
        nonlocal completed, latency_sum
        if merger.busy < merger.servers:
            merger.busy += 1
        else:
            yield queue(merger)
        yield timeout(service[0])
        if merger.waiters:
            merger.waiters.popleft().succeed()
        else:
            merger.busy -= 1

        branch = process(visit(retrieval, service[1]))
        if user.busy < user.servers:
            user.busy += 1
        else:
            yield queue(user)
        yield timeout(service[2])
        if user.waiters:
            user.waiters.popleft().succeed()
        else:
            user.busy -= 1
        yield branch

        if fetch.busy < fetch.servers:
            fetch.busy += 1
        else:
            yield queue(fetch)
        yield timeout(service[3])
        if fetch.waiters:
            fetch.waiters.popleft().succeed()
        else:
            fetch.busy -= 1

        if rtp.busy < rtp.servers:
            rtp.busy += 1
        else:
            yield queue(rtp)
        yield timeout(service[4])
        if rtp.waiters:
            rtp.waiters.popleft().succeed()
        else:
            rtp.busy -= 1
        completed += 1
        latency_sum += env.now - arrival

    def arrivals():
        left, last = requests, 0.0
        while left:
            n = min(left, CHUNK)
            times = last + np.cumsum(rng.exponential(1 / QPS, n))
            last = float(times[-1])
            services = np.column_stack([rng.exponential(mean / 1000, n) for _, mean in STAGES.values()]).tolist()
            for arrival, service in zip(times.tolist(), services):
                yield timeout(arrival - env.now)
                process(handle(arrival, service))
            left -= n

    start = time.perf_counter()
    process(arrivals())
    env.run()
    wall = time.perf_counter() - start
    return {"wall_s": wall, "completed": completed, "mean_latency_ms": 1000 * latency_sum / completed}


def child(model: str, requests: int, fleet: bool) -> None:
    try:
        result = run_lean_simpy(requests) if model == "lean" else run_engine(requests, model, fleet)
    except ImportError as exc:  # the package is being moved around: report, let the rest run
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result))


# --- measuring in child processes --------------------------------------------------------------------
def spawn(command: list[str]) -> tuple[str, float, float]:
    """Run `command`; its stdout, wall seconds and peak RSS (MiB), from os.wait4 on that child alone."""
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.stdout.close()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            errors.seek(0)
            tail = errors.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{' '.join(command)} exited with {proc.returncode}:\n{tail}")
    return out, wall, usage.ru_maxrss / 1024  # Linux reports KiB


def measure_child(model: str, requests: int, fleet: bool = False) -> dict:
    out, _, peak = spawn([sys.executable, __file__, "--child", model, "--requests", str(requests), *(["--fleet"] if fleet else [])])
    return json.loads(out.strip().splitlines()[-1]) | {"peak_rss_mib": peak}


def measure_cli(requests: int, engine: str, sample: float | None = None, fleet: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        scenario = Path(tmp) / "scenario.yaml"
        scenario.write_text(yaml.safe_dump(scenario_dict(requests, fleet), sort_keys=False))
        out = Path(tmp) / "out"
        command = [sys.executable, str(CLI), str(scenario), "--quiet", "--out", str(out), "--engine", engine]
        if sample is not None:
            command += ["--requests-sample", str(sample)]
        _, wall, peak = spawn(command)
        summary = json.loads((out / "summary.json").read_text())["pipelines"]["aif"]
    return {
        "wall_s": wall,
        "completed": summary["requests"]["completed"],
        "mean_latency_ms": summary["latency_ms"]["mean"],
        "peak_rss_mib": peak,
    }


def median_of(runs: list[dict]) -> dict:
    """The first run's counts with the median wall time and peak RSS."""
    if "error" in runs[0]:
        return runs[0]
    return runs[0] | {key: statistics.median(run[key] for run in runs) for key in ("wall_s", "peak_rss_mib")}


# --- report ------------------------------------------------------------------------------------------
MEASURED = ("compiled CLI", "compiled no rows", "compiled engine", "simpy CLI", "simpy engine", "lean")


def speed_row(requests: int, results: dict[str, dict]) -> list[str]:
    """requests, then req/s of each measurement, then each aif-sim rate over the lean one (n/a: not measured)."""
    rates = {name: r["completed"] / r["wall_s"] if "error" not in r else None for name, r in results.items()}
    rate = {name: rates.get(name) for name in MEASURED}
    cells = [f"{requests:,}"] + [f"{rate[name]:,.0f}" if rate[name] else "n/a" for name in MEASURED]
    return cells + [f"{rate[name] / rate['lean']:.2f}" if rate[name] and rate["lean"] else "n/a" for name in MEASURED[:-1]]


def memory_row(requests: int, results: dict[str, dict]) -> list[str]:
    """requests, then peak RSS of each measurement, then the mean latency of aif-sim and of the lean model."""
    got = {name: results.get(name, {}) for name in MEASURED}
    cells = [f"{requests:,}"] + [f"{got[name]['peak_rss_mib']:,.0f}" if "peak_rss_mib" in got[name] else "n/a" for name in MEASURED]
    means = ("compiled CLI", "simpy CLI", "lean")
    return cells + [f"{got[name]['mean_latency_ms']:.3f}" if "mean_latency_ms" in got[name] else "n/a" for name in means]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, nargs="+", default=[1_000_000], metavar="N", help="request counts (default 10^6)")
    parser.add_argument("--repeat", type=int, default=1, metavar="K", help="runs per measurement; the median is reported (default 1)")
    parser.add_argument("--fleet", action="store_true", help="aif-sim's pools as machines behind p2c (FLEET_NODES), rtp sharded")
    parser.add_argument(
        "--only", nargs="+", choices=MEASURED, default=list(MEASURED), metavar="NAME", help=f"measure only these (of {', '.join(MEASURED)})"
    )
    parser.add_argument("--child", choices=("compiled", "simpy", "lean"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.requests[0], args.fleet)
        return

    from rich.console import Console
    from rich.table import Table

    fleet = args.fleet
    measure = {
        "compiled CLI": lambda n: measure_cli(n, "compiled", fleet=fleet),
        "compiled no rows": lambda n: measure_cli(n, "compiled", 0.0, fleet),
        "compiled engine": lambda n: measure_child("compiled", n, fleet),
        "simpy CLI": lambda n: measure_cli(n, "simpy", fleet=fleet),
        "simpy engine": lambda n: measure_child("simpy", n, fleet),
        "lean": lambda n: measure_child("lean", n),
    }
    console = Console(width=max(Console().width, 150))  # the tables are wide: never folded into unreadable columns
    machines = ", pools as machines behind p2c, " + ", ".join(f"{name} in {n} shards" for name, n in FLEET_SHARDS.items())
    system = f"aif pipeline{machines if fleet else ''}, {CANDIDATES:,} candidates/request, {QPS:,.0f} QPS"
    runs = f"median of {args.repeat} runs" if args.repeat > 1 else "1 run each"
    speed = Table(title=f"Simulated requests per wall-second: {system} ({runs})")
    short = ("compiled\nCLI", "compiled\nno rows", "compiled\nengine", "simpy\nCLI", "simpy\nengine")
    for header in ("requests", *short, "lean", *(f"{h}\n÷ lean" for h in short)):
        speed.add_column(header, justify="right")
    memory = Table(title="Peak RSS (MiB) and mean latency (ms)")
    for header in ("requests", *short, "lean", "compiled ms", "simpy ms", "lean ms"):
        memory.add_column(header, justify="right")

    with console.status("CLI fixed cost"):
        fixed = median_of([measure_cli(FIXED_COST_REQUESTS, "compiled") for _ in range(args.repeat)])
    errors = set()
    for requests in args.requests:
        results = {}
        for name in args.only:
            with console.status(f"{name}: {requests:,} requests"):
                results[name] = median_of([measure[name](requests) for _ in range(args.repeat)])
            if "error" in results[name]:
                errors.add(f"{name}: {results[name]['error']}")
        speed.add_row(*speed_row(requests, results))
        memory.add_row(*memory_row(requests, results))
    console.print(speed, memory)
    console.print(
        f"CLI: the full run (default: every request row written); no rows: the same with --requests-sample 0. "
        f"Both include the fixed cost: a {FIXED_COST_REQUESTS}-request CLI run (compiled engine) takes {fixed['wall_s']:.2f} s "
        f"and peaks at {fixed['peak_rss_mib']:,.0f} MiB. engine and lean time the simulation alone (the compiled engine "
        f"after a warm-up run). Targets: compiled CLI >= 10x lean (>= 1 M requests/s at 10^7), simpy CLI >= 0.7x lean"
        + ("; with --fleet, compiled no rows >= 5x lean and >= 0.5 M requests/s at 10^7." if fleet else ".")
    )
    for error in sorted(errors):
        console.print(f"[yellow]not measured[/] {error}")


if __name__ == "__main__":
    main()
