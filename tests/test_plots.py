"""The plots, read back from their matplotlib Figures: what is drawn, where, and how it is labelled."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aif_sim.app import run as run_module
from aif_sim.app.run import build_samplers, simulate, summary_document, write_run
from aif_sim.core.request import Window
from aif_sim.metrics.recorder import Recorder
from aif_sim.metrics.summary import NUMERIC
from aif_sim.report import plots
from aif_sim.scenario.pipelines import shipped_designs
from aif_sim.scenario.schema import CacheFlush, StageSlowdown
from tests.simtools import single_queue_scenario

METRIC = {metric.key: metric for metric in NUMERIC}


# --- helpers ---------------------------------------------------------------------------------------------
def _recorder(
    pipeline: str,
    latency_ms: np.ndarray,
    no_contention_ms: np.ndarray | None = None,
    warmup_s: float = 5.0,
    duration_s: float = 60.0,
    offered: int = 0,
    slo_ms: float | None = 50.0,
    p99_ms: np.ndarray | None = None,
    drain_s: int = 3,
) -> Recorder:
    """A recorder of `pipeline` holding the given latencies and one time-series row per second (warm-up and
    drain included) with the given per-second p99."""
    recorder = Recorder(
        shipped_designs()[pipeline], {name: (1, False) for name in shipped_designs()[pipeline].stages}, Window(warmup_s, duration_s), slo_ms
    )
    recorder.latency.add(latency_ms)
    recorder.no_contention.add(latency_ms if no_contention_ms is None else no_contention_ms)
    recorder.offered = offered
    seconds = int(duration_s) + drain_s
    p99 = np.full(seconds, 30.0) if p99_ms is None else p99_ms
    timeseries = recorder.timeseries
    timeseries.rows = [
        {"t_s": t, "phase": timeseries.phase(t), "offered": 120, "completed": 100, "p50_ms": p99[t] / 2, "p99_ms": float(p99[t])}
        for t in range(seconds)
    ]
    return recorder


def _draw(fig: Any) -> None:
    fig.canvas.draw()


def _tick_labels(axis: Any) -> list[str]:
    """The labels of the ticks inside the view, major and minor."""
    low, high = sorted(axis.get_view_interval())
    ticks = [*axis.get_major_ticks(), *axis.get_minor_ticks()]
    return [t.label1.get_text() for t in ticks if t.label1.get_visible() and t.label1.get_text() and low <= t.get_loc() <= high]


def _legend_texts(ax: Any) -> list[str]:
    legend = ax.get_legend()
    return [text.get_text() for text in legend.get_texts()] if legend else []


def _spans(ax: Any, color: str | None = None) -> list[tuple[float, float]]:
    """The x extents of the vertical spans (axvspan) on an axis, optionally of one colour."""
    from matplotlib.colors import same_color
    from matplotlib.patches import Rectangle

    return [
        (round(p.get_x(), 6), round(p.get_x() + p.get_width(), 6))
        for p in ax.patches
        if isinstance(p, Rectangle) and (color is None or same_color(p.get_facecolor()[:3], color))
    ]


def _vertical_lines(ax: Any) -> list[float]:
    return [float(line.get_xdata()[0]) for line in ax.lines if len(set(map(float, line.get_xdata()))) == 1 and len(line.get_xdata()) == 2]


def _sweep_rows(key: str, values: list[float], means: list[float], pipeline: str = "aif", **extra: Any) -> list[dict[str, Any]]:
    return [{"shed_share": 0.0, "value": v, "pipeline": pipeline, key: m, **extra} for v, m in zip(values, means)]


# --- latency_cdf.png --------------------------------------------------------------------------------------
def _two_pipelines(rng: np.random.Generator) -> dict[str, Recorder]:
    base = rng.lognormal(np.log(20), 0.5, 20_000)
    return {
        "aif": _recorder("aif", base, offered=1826 * 55),
        "uic": _recorder("uic", base * 1.01, offered=1826 * 55),  # p99.9 a hair above aif's
    }


def test_latency_cdf_draws_the_no_contention_line_thin_dashed_and_above_the_simulated_one(tmp_path):
    fig = plots.plot_latency_cdf(tmp_path / "cdf.png", _two_pipelines(np.random.default_rng(1)), 50.0, "t")
    lines = {line.get_label(): line for line in fig.axes[0].lines}
    for pipeline in ("aif", "uic"):
        simulated = next(line for label, line in lines.items() if label.startswith(f"{pipeline} simulated"))
        free = lines[f"{pipeline} no contention"]
        assert simulated.get_linestyle() == "-" and free.get_linestyle() == "--"
        assert free.get_zorder() > simulated.get_zorder() and free.get_linewidth() < simulated.get_linewidth()
        assert (simulated.get_alpha() or 1.0) < 1.0  # the line beneath shows through where the two coincide


def test_latency_cdf_gives_the_marked_percentiles_in_the_legend_instead_of_labels_that_can_overlap(tmp_path):
    fig = plots.plot_latency_cdf(tmp_path / "cdf.png", _two_pipelines(np.random.default_rng(2)), 50.0, "t")
    ax = fig.axes[0]
    assert len(ax.texts) == 0
    legend = _legend_texts(ax)
    assert any(text.startswith("aif simulated: p50 ") and ", p99.9 " in text for text in legend)
    assert any(text.startswith("uic simulated: p50 ") and ", p99.9 " in text for text in legend)


def test_latency_cdf_labels_the_log_axis_at_1_2_and_5_of_each_decade_as_plain_numbers(tmp_path):
    recorder = _recorder("aif", np.geomspace(3, 300, 10_000))
    fig = plots.plot_latency_cdf(tmp_path / "cdf.png", {"aif": recorder}, None, "t")
    _draw(fig)
    labels = _tick_labels(fig.axes[0].yaxis)
    assert {"5", "10", "20", "50", "100", "200"} <= set(labels)
    assert not any("$" in label or "times" in label for label in labels)


def test_latency_cdf_ticks_a_deep_tail_without_crowding_its_first_labels(tmp_path):
    shallow = plots.plot_latency_cdf(tmp_path / "cdf.png", {"aif": _recorder("aif", np.geomspace(3, 300, 10_000))}, None, "t")
    assert [t.get_text() for t in shallow.axes[0].get_xticklabels()] == ["0%", "50%", "90%", "99%", "99.9%", "99.99%"]
    deep = plots.plot_latency_cdf(tmp_path / "cdf.png", {"aif": _recorder("aif", np.geomspace(3, 300, 1_000_000))}, None, "t")
    assert [t.get_text() for t in deep.axes[0].get_xticklabels()] == ["50%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"]


def test_latency_cdf_title_gives_the_offered_rate_the_run_measured(tmp_path):
    fig = plots.plot_latency_cdf(tmp_path / "cdf.png", _two_pipelines(np.random.default_rng(3)), 50.0, "default: bursty arrivals, seed 7")
    assert "at 1,826 QPS offered" in fig.axes[0].get_title()


def test_the_run_plots_give_the_offered_rate_not_the_nominal_one(tmp_path, monkeypatch):
    scenario = single_queue_scenario({"dist": "gamma", "mean_ms": 5, "cv": 0.5}, servers=4, qps=200, duration_s=3, warmup_s=1)
    results = simulate(scenario, build_samplers(scenario, "<test>"), engine="simpy")
    figures: dict[str, Any] = {}
    for name in ("plot_latency_cdf", "plot_timeseries", "plot_stage_breakdown"):
        original = getattr(run_module, name)
        monkeypatch.setattr(run_module, name, lambda *args, _draw=original, _name=name: figures.setdefault(_name, _draw(*args)))
    write_run(tmp_path, scenario, results, summary_document(scenario, results))
    offered = round(results["sequential"].offered / 2)
    titles = [
        figures["plot_latency_cdf"].axes[0].get_title(),
        figures["plot_timeseries"].get_suptitle(),
        figures["plot_stage_breakdown"].get_suptitle(),
    ]
    for title in titles:
        assert f"at {offered:,} QPS offered" in title and "200 QPS" not in title


# --- timeseries.png ---------------------------------------------------------------------------------------
def _panel(fig: Any, label: str) -> Any:
    return next(ax for ax in fig.axes if ax.get_ylabel().startswith(label))


def test_timeseries_draws_the_slo_on_the_p99_panel(tmp_path):
    fig = plots.plot_timeseries(tmp_path / "ts.png", {"aif": _recorder("aif", np.full(10, 30.0))}, [], "t")
    ax = _panel(fig, "p99 latency")
    assert any(list(line.get_ydata()) == [50.0, 50.0] and "SLO" in line.get_label() for line in ax.lines)
    assert not any("SLO" in line.get_label() for line in _panel(fig, "requests per second").lines)


def test_timeseries_draws_the_offered_load_beside_the_completions(tmp_path):
    fig = plots.plot_timeseries(tmp_path / "ts.png", {"aif": _recorder("aif", np.full(10, 30.0))}, [], "t")
    lines = {line.get_label(): list(line.get_ydata()) for line in _panel(fig, "requests per second").lines}
    assert set(lines["offered (arrivals)"]) == {120} and set(lines["aif completed"]) == {100}


def test_timeseries_shades_the_warm_up_and_the_drain(tmp_path):
    recorder = _recorder("aif", np.full(10, 30.0), warmup_s=5, duration_s=60, drain_s=3)
    fig = plots.plot_timeseries(tmp_path / "ts.png", {"aif": recorder}, [], "t")
    for ax in fig.axes:
        assert _spans(ax) == [(0.0, 5.0), (60.0, 63.0)]
    assert "not measured" in " ".join(_legend_texts(fig.axes[0]))


def test_timeseries_legends_sit_outside_the_panels(tmp_path):
    fig = plots.plot_timeseries(tmp_path / "ts.png", {"aif": _recorder("aif", np.full(10, 30.0))}, [], "t")
    _draw(fig)
    for ax in fig.axes:
        assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1


def test_timeseries_ticks_are_plain_numbers(tmp_path):
    p99 = np.linspace(28, 70, 63)  # less than a decade: matplotlib would write 3×10¹, 6×10¹
    fig = plots.plot_timeseries(tmp_path / "ts.png", {"aif": _recorder("aif", np.full(10, 30.0), p99_ms=p99)}, [], "t")
    _draw(fig)
    for ax in fig.axes:
        labels = _tick_labels(ax.yaxis) + _tick_labels(ax.xaxis)
        assert labels and not any("$" in label or "times" in label or "e+" in label for label in labels)
    assert {"30", "40", "50", "60"} <= set(_tick_labels(_panel(fig, "p99 latency").yaxis))


def test_timeseries_shades_a_fault_for_its_duration_and_names_every_fault(tmp_path):
    faults = [
        StageSlowdown(kind="stage_slowdown", at_s=20, stage="rtp", factor=3, duration_s=10),
        CacheFlush(kind="cache_flush", at_s=40, cache="sim_features"),
    ]
    fig = plots.plot_timeseries(tmp_path / "ts.png", {"aif": _recorder("aif", np.full(10, 30.0))}, faults, "t")
    for ax in fig.axes:
        assert _spans(ax, "red") == [(20.0, 30.0)]
        assert 40.0 in _vertical_lines(ax)
    names = [text.get_text() for text in fig.axes[0].texts]
    assert names == ["stage_slowdown rtp", "cache_flush sim_features"]


def test_a_long_timeseries_is_drawn_per_minute_against_hours(tmp_path):
    seconds = 3 * 3600
    p99 = np.full(seconds + 3, 30.0)
    p99[3601] = 400.0  # one bad second in the minute starting at 1 h
    recorder = _recorder("aif", np.full(10, 30.0), warmup_s=600, duration_s=seconds, p99_ms=p99)
    fig = plots.plot_timeseries(tmp_path / "ts.png", {"aif": recorder}, [], "t")
    assert fig.axes[-1].get_xlabel() == "simulated time (h)" and fig.get_suptitle().startswith("Per minute")
    ax = _panel(fig, "p99 latency")
    (line,) = [line for line in ax.lines if line.get_label() == "aif"]
    x, y = line.get_xdata(), line.get_ydata()
    assert len(x) == 181 and x[0] == pytest.approx(30 / 3600) and x[-1] == pytest.approx((seconds + 30) / 3600)
    assert y[60] == 400.0 and y[59] == 30.0  # the worst second of each minute
    assert "worst second of each minute" in ax.get_ylabel()
    assert "mean of each minute" in _panel(fig, "requests per second").get_ylabel()
    assert _spans(ax) == [(0.0, round(600 / 3600, 6)), (3.0, round((seconds + 3) / 3600, 6))]


# --- sweep plots ------------------------------------------------------------------------------------------
def test_sweep_marks_each_capacity_found(tmp_path):
    loads = [1000.0, 2000.0, 3000.0, 4000.0]
    rows = _sweep_rows("p99_ms", loads, [20, 25, 40, 300]) + _sweep_rows("p99_ms", loads, [30, 60, 200, 900], pipeline="uic")
    fig = plots.plot_sweep(
        tmp_path / "s.png", rows, "value", "offered load (QPS)", METRIC["p99_ms"], 50.0, "t", {"aif": 3000.0, "uic": None}
    )
    ax = fig.axes[0]
    assert _vertical_lines(ax) == [3000.0]
    assert "aif capacity: 3,000 QPS offered" in _legend_texts(ax)
    assert any(line.get_marker() == "*" and list(line.get_xdata()) == [3000.0] and list(line.get_ydata()) == [40] for line in ax.lines)


def test_compute_per_request_is_labelled_per_completed_request(tmp_path):
    rows = _sweep_rows("compute_ms_per_request", [1.0, 2.0], [10.0, 20.0])
    fig = plots.plot_sweep(tmp_path / "s.png", rows, "value", "x", METRIC["compute_ms_per_request"], None, "t")
    assert fig.axes[0].get_ylabel() == "compute per completed request (ms)"


def test_the_busiest_pool_plot_names_the_pools(tmp_path):
    rows = _sweep_rows("bottleneck_utilization", [1.0, 2.0, 3.0], [0.5, 0.7, 0.9])
    for row, pool in zip(rows, ("rtp", "rtp", "user_inference")):
        row["bottleneck"] = pool
    fig = plots.plot_sweep(tmp_path / "s.png", rows, "value", "x", METRIC["bottleneck_utilization"], None, "t")
    ax = fig.axes[0]
    assert "aif: rtp → user_inference" in _legend_texts(ax)
    assert [(text.get_text(), text.xy) for text in ax.texts] == [("user_inference", (3.0, 0.9))]


def test_an_integer_parameter_gets_integer_ticks(tmp_path):
    rows = _sweep_rows("p99_ms", [2, 3, 4, 5], [40.0, 30.0, 25.0, 24.0])
    fig = plots.plot_sweep(tmp_path / "s.png", rows, "value", "servers", METRIC["p99_ms"], None, "t")
    _draw(fig)
    assert _tick_labels(fig.axes[0].xaxis) == ["2", "3", "4", "5"]


def test_a_symlog_axis_keeps_zero_a_decade_away_from_the_first_tick(tmp_path):
    rows = _sweep_rows("p99_ms", [0.0, 30.0, 300.0, 30_000.0], [20.0, 21.0, 22.0, 23.0])
    fig = plots.plot_sweep(tmp_path / "s.png", rows, "value", "interval (s)", METRIC["p99_ms"], None, "t")
    _draw(fig)
    ax = fig.axes[0]
    assert ax.get_xscale() == "symlog"
    assert _tick_labels(ax.xaxis)[:4] == ["0", "10", "100", "1,000"]
    at = [ax.transData.transform((v, 1.0))[0] for v in (0.0, 10.0, 100.0)]
    assert at[1] - at[0] >= 0.9 * (at[2] - at[1])


def test_a_share_axis_runs_from_zero_to_at_least_one_percent(tmp_path):
    rows = _sweep_rows("shed_share", [1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    fig = plots.plot_sweep(tmp_path / "s.png", rows, "value", "x", METRIC["shed_share"], None, "t")
    low, high = fig.axes[0].get_ylim()
    assert low == 0.0 and 0.01 <= high <= 0.02
    rows = _sweep_rows("shed_share", [1.0, 2.0], [0.2, 0.5])
    assert plots.plot_sweep(tmp_path / "s.png", rows, "value", "x", METRIC["shed_share"], None, "t").axes[0].get_ylim() == (0.0, 0.55)


def _bar_ends(ax: Any) -> list[tuple[float, float]]:
    (container,) = ax.containers
    (bars,) = container.lines[2]
    return [(round(float(s[0][1]), 6), round(float(s[1][1]), 6)) for s in bars.get_segments()]


def test_error_bars_end_at_the_rows_bounds_of_the_interval(tmp_path):
    # a p99 of 30 ± 20 ms whose no-contention p99 is 28 ms: the interval is [28, 50], not [10, 50]
    rows = _sweep_rows("p99_ms", [1.0, 2.0], [30.0, 60.0], p99_ms_ci95=20.0)
    rows[0] |= {"p99_ms_lo": 28.0, "p99_ms_hi": 50.0}
    rows[1] |= {"p99_ms_lo": 40.0, "p99_ms_hi": 80.0}
    fig = plots.plot_sweep(tmp_path / "s.png", rows, "value", "x", METRIC["p99_ms"], None, "t")
    assert _bar_ends(fig.axes[0]) == [(28.0, 50.0), (40.0, 80.0)]
    # a share of 0.2% ± 1%: [0, 1.2%]
    rows = _sweep_rows("shed_share", [1.0], [0.002], shed_share_ci95=0.01, shed_share_lo=0.0, shed_share_hi=0.012)
    fig = plots.plot_sweep(tmp_path / "s.png", rows, "value", "x", METRIC["shed_share"], None, "t")
    assert _bar_ends(fig.axes[0]) == [(0.0, 0.012)]


# --- validate_cdf.png -------------------------------------------------------------------------------------
def test_validate_cdf_title_gives_the_loads_of_its_panels(tmp_path):
    rng = np.random.default_rng(4)
    curves = [
        {"qps": qps, "live": {"aif": [rng.lognormal(3, 0.3, 500)]}, "des": {"aif": [rng.lognormal(3, 0.3, 500)]}}
        for qps in (24.9, 49.9, 99.8)
    ]
    fig = plots.plot_validate_cdf(tmp_path / "v.png", curves, "validate: poisson arrivals, seed 11")
    title = fig.get_suptitle()
    assert "at 24.9, 49.9 and 99.8 QPS" in title and "60 QPS" not in title
    assert [ax.get_title() for ax in fig.axes] == ["24.9 QPS", "49.9 QPS", "99.8 QPS"]


# --- sweep-model's sweep.png ------------------------------------------------------------------------------
def test_model_sweep_puts_lags_on_a_numeric_axis(tmp_path):
    lags = [0.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 43200.0]
    rows = [{"item_lag_s": lag, "gauc": 0.7 - lag / 1e6, "auc": 0.8, "oracle_gauc": 0.75, "oracle_auc": 0.85} for lag in lags]
    fig = plots.plot_model_sweep(tmp_path / "m.png", rows, "item_lag_s")
    _draw(fig)
    ax = fig.axes[0]
    assert all(list(line.get_xdata()) == lags for line in ax.lines)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "10 min", "30 min", "1 h", "2 h", "4 h", "8 h", "12 h"]
    at = [ax.transData.transform((lag, 0.7))[0] for lag in lags]
    gaps = np.diff(at)
    assert gaps[3] == pytest.approx(gaps[4]) == pytest.approx(gaps[5])  # each doubling of the lag the same step
    assert gaps[0] > 0 and not math.isclose(gaps[0], gaps[1])


def test_model_sweep_keeps_categories_for_named_values(tmp_path):
    rows = [{"lsh_mode": mode, "gauc": 0.7, "auc": 0.8, "oracle_gauc": 0.75, "oracle_auc": 0.85} for mode in ("bit1", "bit2", "dense")]
    fig = plots.plot_model_sweep(tmp_path / "m.png", rows, "lsh_mode")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["bit1", "bit2", "dense"]
    assert Path(tmp_path / "m.png").stat().st_size > 0
