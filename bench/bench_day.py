"""Where a run's time goes: the CPU seconds of each part of a compiled run, thread by thread.

    python bench/bench_day.py scenarios/staleness_day.yaml --set duration_s=3600 --set warmup_s=60
    python bench/bench_day.py scenarios/staleness_day.yaml --requests-sample 0.0001      # the whole day
    python bench/bench_day.py scenarios/staleness_sweep.yaml --set model.checkpoint=... # shadow scoring

It runs `python run_sim.py ARGS --quiet` in this process (any `run` arguments; `--out` defaults to a temporary
folder) with the simulator's parts wrapped, each adding the CPU time of the thread that runs it
(`time.thread_time`, immune to other processes on a shared host) to its row:

- the main thread: the run's start (imports, scenario, samplers), the pools' kernel (`kernels.advance`), the fleets'
  per-node accounting, the nearline reads (the refresh pools' background events, the read kernel, the shadow reads
  with their candidate draws), the flush of finished requests (the recorder's stage visits, completed requests,
  vector ages and time series, and the request rows), building the shadow-scored world, shadow scoring, and the
  summary and output files;
- the draw thread: the blocks of request draws (arrivals, users, candidate counts, service times), of which the
  candidates whose vectors are measured (`nearline.staleness_sample`);
- the process: CPU time (user + system) and wall time.

Nested rows are part of the row above them (indented). A row's share is of the process's CPU time.
Staleness accounting is the nearline reads, the vector ages and the measured candidates' draws, plus its part of
the flush not listed on its own (its columns, and the vector-age means of the time series); compare a run with
`--set nearline=null` for the whole of it.
"""

from __future__ import annotations

import argparse
import functools
import resource
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (row, depth, module, attribute path): the parts timed, in the order printed
PARTS = [
    ("pools (kernels.advance)", 0, "aif_sim.compiled.engine", "_Pools.advance"),
    ("fleets' per-node accounting", 0, "aif_sim.compiled.fleets", "FleetState.emit"),
    ("nearline reads", 0, "aif_sim.compiled.engine", "_Vectors.read"),
    ("refresh pools' events", 1, "aif_sim.compiled.nearline", "_Driver.step"),
    ("read kernel", 1, "aif_sim.compiled.nearline", "CompiledNearline._read_batch"),
    ("shadow reads", 1, "aif_sim.compiled.engine", "_Vectors._shadow_read"),
    ("nearline to the block's end", 0, "aif_sim.compiled.nearline", "CompiledNearline.advance"),
    ("flush", 0, "aif_sim.compiled.engine", "_flush"),
    ("stage visits", 1, "aif_sim.metrics.recorder", "Recorder._visits"),
    ("completed requests", 1, "aif_sim.metrics.recorder", "Recorder._completed"),
    ("vector ages", 1, "aif_sim.metrics.recorder", "Recorder._vector_ages"),
    ("time series", 1, "aif_sim.metrics.timeseries", "Timeseries.add"),
    ("request rows", 1, "aif_sim.metrics.requests_log", "RequestLog.write"),
    ("shadow-scored world", 0, "aif_sim.app.quality", "shadow_scorer"),
    ("shadow scoring", 0, "aif_sim.app.quality", "score_shadow_samples"),
    ("summary", 0, "aif_sim.app.run", "summary_document"),
    ("output files", 0, "aif_sim.app.run", "write_run"),
]
DRAWS = ("draw thread: request draws", "aif_sim.core.system", "RequestSource.draws")
SAMPLE = "measured candidates' draws"


class Clock:
    """CPU seconds per row, each call timed by the thread that makes it (a recursive call counts once)."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self._active: set[tuple[int, str]] = set()

    def wrap(self, row: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            key = (threading.get_ident(), row)
            if key in self._active:
                return function(*args, **kwargs)
            self._active.add(key)
            start = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.cpu[row] += time.thread_time() - start
                self._active.discard(key)

        return timed

    def wrap_generator(self, row: str, function: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            items = function(*args, **kwargs)
            while True:
                start = time.thread_time()
                try:
                    item = next(items)
                except StopIteration:
                    return
                finally:
                    self.cpu[row] += time.thread_time() - start
                yield item

        return timed


def _install(clock: Clock) -> None:
    """Wrap every part that exists in this version of the simulator (a part it lacks is skipped)."""
    import importlib

    from aif_sim.core import traffic

    for row, _, module_name, path in PARTS:
        owner: Any = importlib.import_module(module_name)
        *owners, name = path.split(".")
        for attribute in owners:
            owner = getattr(owner, attribute, None)
        if owner is None or not hasattr(owner, name):
            continue
        raw = owner.__dict__.get(name) if isinstance(owner, type) else None
        original = getattr(owner, name)
        if isinstance(raw, staticmethod):
            setattr(owner, name, staticmethod(clock.wrap(row, raw.__func__)))
            continue
        setattr(owner, name, clock.wrap(row, original))
        for module in list(sys.modules.values()):  # a function imported by name into another module
            if module is not None and module.__name__.startswith("aif_sim") and getattr(module, name, None) is original:
                setattr(module, name, getattr(owner, name))
    system = importlib.import_module(DRAWS[1])
    system.RequestSource.draws = clock.wrap_generator(DRAWS[0], system.RequestSource.draws)
    sample = traffic.ZipfSampler.sample

    def measured_sample(self: Any, rng: Any, size: int) -> Any:  # the candidate sample is drawn in `draws` itself
        if sys._getframe(1).f_code.co_name != "draws":
            return sample(self, rng, size)
        return clock.wrap(SAMPLE, sample)(self, rng, size)

    traffic.ZipfSampler.sample = measured_sample


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs=argparse.REMAINDER, help="the arguments of `python run_sim.py` (a run)")
    args = parser.parse_args(argv)
    run_args = list(args.run)
    start_wall, start = time.perf_counter(), time.thread_time()
    clock = Clock()
    with tempfile.TemporaryDirectory() as folder:
        if "--out" not in run_args:
            run_args += ["--out", str(Path(folder) / "out")]
        from aif_sim import cli

        _install(clock)
        clock.cpu["start (imports)"] = time.thread_time() - start
        code = cli.main([*run_args, "--quiet"])
    main_thread = time.thread_time() - start
    wall = time.perf_counter() - start_wall
    usage = resource.getrusage(resource.RUSAGE_SELF)
    total = usage.ru_utime + usage.ru_stime
    if code != 0:
        return code
    print(f"{' '.join(run_args[:1])}: {total:.1f} s CPU, {wall:.1f} s wall, peak RSS {usage.ru_maxrss / 1024:.0f} MiB")
    print(f"{'part':<44} {'CPU s':>8} {'share':>7}")
    parts = sum(clock.cpu[row] for row, depth, _, _ in PARTS if depth == 0) + clock.cpu["start (imports)"]
    clock.cpu["main thread"] = main_thread
    clock.cpu["the rest (scenario, samplers, run loop)"] = main_thread - parts
    rows = [("main thread", 0), ("start (imports)", 1)] + [(row, depth + 1) for row, depth, _, _ in PARTS]
    rows += [("the rest (scenario, samplers, run loop)", 1), (DRAWS[0], 0), (SAMPLE, 1)]
    for row, depth in rows:
        if row in clock.cpu:
            seconds = clock.cpu[row]
            print(f"{'  ' * depth + row:<44} {seconds:8.2f} {seconds / total:7.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
