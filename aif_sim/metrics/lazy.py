"""The recorder's compiled passes (`metrics.passes`), imported with numba and compiled (or loaded from numba's
cache) when the first recorder is made: importing the metrics stays light, and no run (a live one above all)
pays for them mid-way."""

from __future__ import annotations

import functools
from types import ModuleType


@functools.cache
def passes() -> ModuleType:
    """`metrics.passes`, its kernels ready."""
    from aif_sim.metrics import passes as module

    module.warm()
    return module
