"""The compiled engine: the simpy engine's results at millions of requests per second.

`run_compiled(scenario, pipeline, samplers, sink, progress, stop)` simulates one pipeline over the same
requests and draws as `sim.engine.PipelineSimulation` (`core.system.RequestSource`'s streams) and returns
a `Recorder` whose `summary()`, time series, per-request rows and shadow samples equal the simpy run's. It
covers plain and batching stage pools (servers, queue limits, timeouts, stage slowdowns), stages of several
nodes behind a balancer (shards, retries, node loss), caches and nearline stores; `support.unsupported(scenario,
pipeline)` names what stands in the way (batching stages whose batch services cannot be drawn ahead; hedges;
deadlines with batching stages; exact ties between events likely where their order matters) without importing
numba.

How (see `engine` and `kernels`): a FIFO pool of c servers with a queue limit and abandonment on timeout
is a sweep over its visits in order of arrival with a min-heap of the servers' free times and one of the
live waiters' leave times; a stage of several nodes is one such pool per node, the balancer picking a node
from their counts at each arrival (`fleets`); a batching pool is its dispatcher's state machine (`batching`); caches and
nearline reads are applied in time order within those sweeps (`caches`, `nearline`); the pipeline's steps
are swept in turn, a block of arrivals at a time, each stage's state carried from block to block. The float
arithmetic is simpy's (`now + delay` at every event), so times agree exactly, up to the order of events at
exactly equal times that simpy orders by when they were scheduled (probability zero with continuous service
and arrival distributions, except the members of one batch, which the engine orders as simpy does).

Numba caches compiled kernels on disk keyed by each function's own source file, not the files of the
functions it calls; the cache directory here is therefore one per version of this package's sources
(`NUMBA_CACHE_DIR`, unless already set), so a changed module never meets a stale caller.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path


def _cache_dir() -> str:
    sources = sorted(Path(__file__).parent.glob("*.py"))
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return str(base / "aif-sim" / "numba" / digest)


if "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = _cache_dir()
    if "numba" in sys.modules:  # read at numba's import: tell an imported numba too
        sys.modules["numba"].config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]


def kernels_cached() -> bool:
    """Whether this version's kernels are already compiled on disk (a first run compiles them: tens of seconds)."""
    folder = Path(os.environ["NUMBA_CACHE_DIR"])
    return folder.is_dir() and any(folder.rglob("*.nbi"))
