"""Per simulated second: completions and their p50/p99, with one second buffered at a time."""

from __future__ import annotations

import math

import numpy as np

from aif_sim.core.request import Window


class Timeseries:
    """Rows `t_s, phase, completed, p50_ms, p99_ms` for every second of a run, warm-up and drain included."""

    def __init__(self, window: Window) -> None:
        self.window = window
        self.rows: list[dict[str, float | str]] = []
        self._second = 0
        self._latencies: list[np.ndarray] = []  # of the open second

    def phase(self, second: int) -> str:
        """warmup, measured or drain: where a second falls against the measurement window."""
        if second < self.window.start_s:
            return "warmup"
        return "measured" if second < self.window.end_s else "drain"

    def add(self, end_s: np.ndarray, latency_ms: np.ndarray) -> None:
        """Completions in time order: when they ended (s) and their latency (ms)."""
        seconds = end_s.astype(np.int64)
        firsts = np.flatnonzero(np.diff(seconds, prepend=-1))
        for begin, stop in zip(firsts, [*firsts[1:], len(seconds)]):
            self.close_until(int(seconds[begin]))
            self._latencies.append(latency_ms[begin:stop])

    def close_until(self, second: int) -> None:
        """Emit rows for every second before `second`."""
        while self._second < second:
            values = np.concatenate(self._latencies) if self._latencies else np.empty(0)
            p50, p99 = np.percentile(values, [50, 99]) if len(values) else (math.nan, math.nan)
            self.rows.append(
                {
                    "t_s": self._second,
                    "phase": self.phase(self._second),
                    "completed": len(values),
                    "p50_ms": float(p50),
                    "p99_ms": float(p99),
                }
            )
            self._latencies.clear()
            self._second += 1
