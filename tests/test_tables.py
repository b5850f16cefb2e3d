"""Tables printed off a terminal (files, pipes, CI logs) are whole, and intervals say what they know."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console
from rich.table import Table

from aif_sim.report.fmt import interval
from aif_sim.report.tables import comparison_table, make_console, plan_table, schedule_table, stage_table, sweep_table, validate_table
from tests.simtools import make_scenario, overload_stages, run_summaries


@pytest.fixture(autouse=True)
def no_columns(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)


def _printed(table: Table) -> str:
    """The table as a console writing to a file (not a terminal) prints it."""
    out = io.StringIO()
    console = make_console(out)
    assert not console.is_terminal
    console.print(table)
    return out.getvalue()


def _row(value: float, pipeline: str, met: bool, p99: float, half: float | None, low: float | None = None, runs: int = 3) -> dict[str, Any]:
    high = None if half is None else p99 + half
    low = None if half is None else (p99 - half if low is None else low)
    return {
        "value": value,
        "pipeline": pipeline,
        "replications": runs,
        "throughput_qps": value,
        "p99_ms": p99,
        "p99_ms_ci95": half,
        "p99_ms_lo": low,
        "p99_ms_hi": high,
        "shed_share": 0.0123,
        "slo_met": met,
        "user_vector_hit_ratio": 0.61234,
        "user_vector_hit_ratio_ci95": 0.0412,
        "user_vector_hit_ratio_lo": 0.61234 - 0.0412,
        "user_vector_hit_ratio_hi": 0.61234 + 0.0412,
        "sim_features_hit_ratio": 0.4321,
        "sim_features_hit_ratio_ci95": 0.0234,
        "sim_features_hit_ratio_lo": 0.4321 - 0.0234,
        "sim_features_hit_ratio_hi": 0.4321 + 0.0234,
        "stale_fraction": 0.0345,
        "stale_fraction_ci95": 0.0012,
        "stale_fraction_lo": 0.0345 - 0.0012,
        "stale_fraction_hi": 0.0345 + 0.0012,
    }


def _document(rows: list[dict[str, Any]], capacity: dict[str, float | None], bound: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "param": "traffic.arrival.qps",
        "partial": False,
        "capacity_qps": capacity,
        "capacity_bound": bound,
        "warnings": [],
        "rows": rows,
        **extra,
    }


def _wide_sweep() -> dict[str, Any]:
    rows = [
        _row(1200.0, "sequential", True, 38.41, 2.13),
        _row(1200.0, "aif", True, 24.87, 1.71),
        _row(2400.0, "sequential", False, 242.93, 1280.1, low=28.0),
        _row(2400.0, "aif", True, 31.25, 0.0),
    ]
    return _document(rows, {"sequential": 1200.0, "aif": 2400.0}, {"sequential": "found", "aif": "at_least"})


def test_a_sweep_table_off_a_terminal_prints_every_column_and_word_whole():
    printed = _printed(sweep_table(_wide_sweep(), load=True))
    assert "…" not in printed
    assert "missed" in printed and printed.count(" met ") == 3
    for header in ("thru QPS", "p99 ms", "shed", "SLO", "user-vec hits", "SIM hits", "stale"):
        assert header in printed, header
    assert "38.41 ± 2.13" in printed and "61.2% ± 4.1%" in printed and "242.9 [28.00, 1,523.0]" in printed
    assert max(len(line) for line in printed.splitlines()) > 80


def test_off_a_terminal_columns_sets_the_width_and_cells_wrap_instead_of_being_cut(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    console = make_console(io.StringIO())
    assert console.width == 100
    printed = _printed(sweep_table(_wide_sweep(), load=True))
    assert max(len(line) for line in printed.splitlines()) <= 100
    assert "…" not in printed and "missed" in printed and "1,523.0]" in printed


def test_every_table_prints_whole_off_a_terminal():
    """Three pipelines side by side with their ratios, their stage tables, a plan, a validation and a schedule table:
    no cell cut, whatever their width."""
    scenario = make_scenario(overload_stages(), pipelines=["sequential", "aif", "uic"], qps=900, duration_s=2.0, slo={"p99_ms": 50})
    summary = {"pipelines": run_summaries(scenario)}
    printed = _printed(comparison_table(summary, "a scenario with a long enough name to need the width: 900 QPS poisson, seed 1"))
    assert "…" not in printed and "uic/seq" in printed and "no-contention p99" in printed and "MISSED" in printed
    for name, metrics in summary["pipelines"].items():
        assert "…" not in _printed(stage_table(name, metrics))
    design = {
        "feasible": True,
        "servers": {"retrieval_for_a_long_name": 1234, "prerank": 567},
        "cost_per_hour": 123456.7,
        "p99_ms": 48.7,
        "p99_ci95": 0.0,
        "p99_lo": 48.7,
        "p99_hi": 48.7,
        "utilization": {"retrieval_for_a_long_name": 0.71, "prerank": 0.83},
        "lower_bounds": {"retrieval_for_a_long_name": 1000, "prerank": 500},
        "evaluated": 17,
    }
    plan = {"qps": 120000, "slo_p99_ms": 50, "replications": 3, "pipelines": {"sequential": design, "aif": design, "uic": design}}
    printed = _printed(plan_table(plan, "a scenario with a long enough name to need the width"))
    assert "…" not in printed and "48.70 (all 3 agree)" in printed and "1234 (71%)" in printed
    point = {
        "pipeline": "sequential",
        "qps": 120000,
        "utilization": 0.83,
        "samples": 1234567,
        "des": {"p50_ms": 1234.5, "p99_ms": 5678.9},
        "live": {"p50_ms": 1234.5, "p99_ms": 5678.9},
        "error": {"p50": 0.0123, "p99": -0.0456},
        "ci95": {"error": {"p50": [0.001, 0.02], "p99": [-0.07, -0.02]}},
        "within_tolerance": {"p50": True, "p99": True},
    }
    point["live"]["wait_ms"] = {"prerank_with_a_long_name": 12.5}
    point["replay"] = {
        "p50_ms": 1230.5,
        "p99_ms": 5670.9,
        "wait_ms": {"prerank_with_a_long_name": 12.25},
        "error": {"p50": -0.003, "p99": -0.0014, "wait": {"prerank_with_a_long_name": -0.02}},
        "ci95": {"error": {"p50": [-0.01, 0.004], "p99": [-0.02, 0.02]}},
    }
    printed = _printed(validate_table([point] * 3, 0.1))
    assert "…" not in printed and printed.count("profile DES") == printed.count("replay DES") == printed.count("live  ") == 3
    assert "5678.9" in printed and "5670.9" in printed and "prerank_with_a_long_name 12.25/12.50 (-2%)" in printed
    live = {
        "scheduled_qps": 120000.0,
        "achieved_qps": 119876.5,
        "kept_schedule": False,
        "schedule_lag_ms": {"p50": 12.3, "p99": 456.7, "max": 7890.1},
    }
    printed = _printed(schedule_table({"pipelines": {"a_pipeline_with_a_long_name": {"live": live}}}))
    assert "…" not in printed and "NOT KEPT" in printed and "7,890.1" in printed


@pytest.mark.parametrize(
    ("bound", "capacity", "said"),
    [
        ("at_least", 2400.0, "aif ≥ 2,400 (the highest load tried)"),
        ("found", 1200.0, "aif 1,200"),
        ("none", None, "aif < 1,200 (the lowest load tried)"),
        ("unknown", None, "aif unknown (interrupted)"),
    ],
)
def test_the_capacity_says_how_the_loads_tried_bound_it(bound, capacity, said):
    document = _wide_sweep()
    document["capacity_qps"]["aif"], document["capacity_bound"]["aif"] = capacity, bound
    assert said in _printed(sweep_table(document, load=True))


def test_intervals_wider_than_their_means_are_named_in_the_caption():
    document = _wide_sweep()
    for row in document["rows"]:
        row["replications"] = 2
    document["warnings"] = [
        {
            "kind": "wide_interval",
            "value": 2400.0,
            "pipeline": "sequential",
            "metric": "p99_ms",
            "replications": 2,
            "mean": 242.9,
            "ci95": 1280.1,
        }
    ]
    printed = " ".join(_printed(sweep_table(document, load=True)).split())
    assert "95% intervals wider than their means from 2 replications: 2,400 sequential: p99 ms" in printed
    assert "run 5 or more" in printed


def test_an_interval_says_when_the_runs_agreed_or_it_was_clipped():
    assert interval(30.89, "ms", 0.0, 30.89, 30.89, 3) == "30.89 (all 3 agree)"
    assert interval(242.93, "ms", 1280.1, 28.0, 242.93 + 1280.1, 2) == "242.9 [28.00, 1,523.0]"
    assert interval(0.0005, "share", 0.0012, 0.0, 0.0017, 2) == "0.1% [0.0%, 0.2%]"
    assert interval(38.41, "ms", 2.13, 38.41 - 2.13, 38.41 + 2.13, 3) == "38.41 ± 2.13"
    assert interval(5.0, "ms", 0.0012, 5.0 - 0.0012, 5.0 + 0.0012, 3) == "5.00 ± 0.001"  # not ± 0.00
    assert interval(0.5, "share", 0.00004, 0.49996, 0.50004, 3) == "50.0% ± 0.004%"
    assert interval(38.41, "ms", None, None, None, 1) == "38.41"
    document = _wide_sweep()
    printed = " ".join(_printed(sweep_table(document, load=True)).split())
    assert "31.25 (all 3 agree)" in printed and "(all N agree): the N replications gave the same value" in printed
    assert "[low, high]: the 95% interval clipped" in printed


def test_the_run_table_gives_the_tail_over_every_offered_request_when_some_failed():
    from aif_sim.report.tables import comparison_table
    from tests.simtools import make_scenario, negligible, run_summaries

    stages = {"merger": negligible(), "retrieval": negligible(), "feature_fetch": negligible()}
    stages["prerank"] = {"servers": 1, "latency": {"dist": "constant", "ms": 9.0}, "queue_limit": 0}  # about half rejected
    summary = {"pipelines": run_summaries(make_scenario(stages, qps=100, duration_s=5))}
    console = Console(width=300, record=True, file=io.StringIO())
    console.print(comparison_table(summary, "t"))
    rows = {line.split("  ")[0].strip(): line for line in console.export_text().splitlines() if "  " in line}
    assert "9.0" in rows["p99 ms"] and "failed" in rows["p99 ms, all offered"]
