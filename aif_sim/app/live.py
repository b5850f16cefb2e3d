"""A live run as the application runs it: the live engine (`aif_sim.live`) behind the same interface as the DES."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aif_sim.core.latency import Sampler
from aif_sim.live.run import check_live, run_live
from aif_sim.metrics.recorder import Recorder, RequestSink
from aif_sim.scenario import Scenario

LiveEngine = Callable[..., tuple[dict[str, Recorder], dict[str, dict[str, Any]]]]


def live_engine(scenario: Scenario, source: str, trace: float = 0.0) -> LiveEngine:
    """The live engine for this scenario (checked first: InputError when it cannot run it), keeping the timelines of a
    `trace` share of the requests."""
    check_live(scenario, source)

    def engine(
        scenario: Scenario,
        samplers: dict[str, Sampler],
        sink: RequestSink | None,
        advance: Callable[[str, float], None],
        stop: Callable[[], bool],
    ) -> tuple[dict[str, Recorder], dict[str, dict[str, Any]]]:
        def progress(label: str, done: float, total: float) -> None:
            if label in scenario.pipelines:
                advance(label, done)

        return run_live(scenario, samplers, sink, progress, stop, timelines=trace)

    return engine
