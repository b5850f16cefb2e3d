"""Sweeps: replications with 95% confidence intervals, and the capacity search against queueing theory."""

from __future__ import annotations

import csv
import json
import math
import statistics

import pytest
import yaml
from scipy.stats import t as student_t

from aif_sim.app.sweep import aggregate, wide_intervals
from aif_sim.cli import main
from tests.simtools import negligible, scenario_dict, write_yaml


def _mm1(tmp_path, slo_ms: float = 10.0, duration_s: float = 20.0):
    """One exponential server of mean 1 ms behind stages that take no time, with a p99 SLO."""
    stages = {
        "merger": negligible(),
        "retrieval": negligible(),
        "feature_fetch": negligible(),
        "prerank": {"servers": 1, "latency": {"dist": "exponential", "mean_ms": 1.0}},
    }
    data = scenario_dict(stages, qps=300, duration_s=duration_s, warmup_s=2.0, seed=4, slo={"p99_ms": slo_ms})
    return write_yaml(tmp_path / "mm1.yaml", data)


def test_replications_give_means_and_student_t_half_widths(tmp_path):
    out = tmp_path / "sweep"
    argv = ["sweep", str(_mm1(tmp_path, duration_s=4.0)), "--param", "traffic.arrival.qps", "--values", "200,500"]
    assert main([*argv, "--replications", "3", "--jobs", "2", "--out", str(out), "--quiet", "--no-cache"]) == 0
    document = json.loads((out / "sweep.json").read_text())
    assert document["replications"] == 3 and document["partial"] is False
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert len(rows) == 2 and "p99_ms_ci95" in rows[0]
    for row in rows:
        points = [p for p in document["points"] if p["value"] == float(row["value"]) or p["value"] == int(float(row["value"]))]
        assert sorted(p["seed"] for p in points) == [4, 5, 6]
        p99s = [p["metrics"]["latency_ms"]["p99"] for p in points]
        assert float(row["p99_ms"]) == pytest.approx(statistics.fmean(p99s))
        half = student_t.ppf(0.975, 2) * statistics.stdev(p99s) / math.sqrt(3)
        assert float(row["p99_ms_ci95"]) == pytest.approx(half) and half > 0
        assert float(row["p99_ms_hi"]) == pytest.approx(float(row["p99_ms"]) + half)
        assert float(row["no_contention_p99_ms_lo"]) <= float(row["p99_ms_lo"]) <= float(row["p99_ms"])
    assert isinstance(document["warnings"], list)
    assert (out / "sweep_p99_ms.png").stat().st_size > 0 and (out / "latency_throughput.png").stat().st_size > 0


def test_find_capacity_matches_the_mm1_tail(tmp_path):
    """M/M/1 sojourn times are exponential with rate mu - lambda, so p99 <= S holds up to
    lambda* = mu - ln(100) / S: 539.5/s for mu = 1000/s and S = 10 ms."""
    out = tmp_path / "capacity"
    assert (
        main(["sweep", str(_mm1(tmp_path)), "--find-capacity", "100,950", "--jobs", "2", "--out", str(out), "--quiet", "--no-cache"]) == 0
    )
    document = json.loads((out / "sweep.json").read_text())
    capacity = document["capacity_qps"]["sequential"]
    assert capacity == pytest.approx(1000 - math.log(100) / 0.010, rel=0.08)
    low, high = document["capacity_search"]["bracket"]["sequential"]
    assert capacity == low and (high - low) <= 0.02 * low and document["capacity_bound"] == {"sequential": "found"}
    assert document["param"] == "traffic.arrival.qps" and len(document["values"]) >= 6


def test_find_capacity_needs_an_slo_and_a_range(tmp_path, capsys):
    path = _mm1(tmp_path)
    data = yaml.safe_load(path.read_text())
    del data["slo"]
    no_slo = write_yaml(tmp_path / "no_slo.yaml", data)
    assert main(["sweep", str(no_slo), "--find-capacity", "100,900", "--quiet"]) == 2
    assert "slo.p99_ms" in capsys.readouterr().err
    assert main(["sweep", str(path), "--find-capacity", "900,100", "--quiet"]) == 2
    assert "--find-capacity" in capsys.readouterr().err


def test_a_repeated_sweep_reruns_only_the_points_it_does_not_have(tmp_path, capsys):
    """Points are kept by a hash of the resolved scenario, its files and the simulator's code: a repeated sweep
    takes every point from the cache and writes the same results; a lost point is run again, and only it; a
    changed input is a new point."""
    scenario, cache = _mm1(tmp_path, duration_s=3.0), tmp_path / "cache"

    def sweep(out: str, *extra: str) -> dict:
        argv = ["sweep", str(scenario), "--param", "traffic.arrival.qps", "--values", "200,400", "--replications", "2"]
        assert main([*argv, "--jobs", "2", "--out", str(tmp_path / out), "--cache", str(cache), *extra]) == 0
        return json.loads((tmp_path / out / "sweep.json").read_text())

    first = sweep("first")
    assert len(list(cache.glob("*.json"))) == 4 and "taken from" not in capsys.readouterr().out
    again = sweep("again")
    assert "4 finished points taken from" in capsys.readouterr().out
    assert (
        again["points"] == first["points"]
        and (tmp_path / "first" / "sweep.csv").read_text() == (tmp_path / "again" / "sweep.csv").read_text()
    )
    next(iter(cache.glob("*.json"))).unlink()
    sweep("lost")
    assert "3 finished points taken from" in capsys.readouterr().out
    sweep("changed", "--set", "warmup_s=1.0")
    assert "taken from" not in capsys.readouterr().out and len(list(cache.glob("*.json"))) == 8


def test_a_sweep_on_ray_gives_the_process_pools_results(tmp_path):
    """`--backend ray` runs the same jobs on a local Ray instance: the same points, the same rows."""
    pytest.importorskip("ray", reason="Ray is the optional extra aif-sim[ray]; .ci/run installs it")
    scenario = _mm1(tmp_path, duration_s=3.0)
    documents = {}
    for backend in ("process", "ray"):
        argv = ["sweep", str(scenario), "--param", "traffic.arrival.qps", "--values", "200,400", "--jobs", "2", "--no-cache"]
        assert main([*argv, "--backend", backend, "--out", str(tmp_path / backend), "--quiet"]) == 0
        documents[backend] = json.loads((tmp_path / backend / "sweep.json").read_text())
    assert documents["ray"]["points"] == documents["process"]["points"] and documents["ray"]["rows"] == documents["process"]["rows"]


def test_a_capacity_at_the_highest_load_tried_is_a_lower_bound(tmp_path, capsys):
    """An M/M/1 of mean 1 ms meets a 10 ms p99 at 100 and 200 QPS (its p99 is 5.8 ms at 200): the capacity is at least
    200, not 200; the table printed to a file (not a terminal) says so and shows every column whole."""
    scenario = _mm1(tmp_path, duration_s=3.0)
    out = tmp_path / "grid"
    argv = ["sweep", str(scenario), "--param", "traffic.arrival.qps", "--values", "100,200", "--jobs", "2", "--no-cache"]
    assert main([*argv, "--out", str(out)]) == 0
    document = json.loads((out / "sweep.json").read_text())
    assert document["capacity_qps"] == {"sequential": 200} and document["capacity_bound"] == {"sequential": "at_least"}
    printed = capsys.readouterr().out
    assert "capacity under the SLO: sequential ≥ 200 (the highest load tried)" in " ".join(printed.split())
    assert "…" not in printed and printed.count(" met ") == 2 and "thru QPS" in printed and "p99 ms" in printed
    out = tmp_path / "search"
    assert main(["sweep", str(scenario), "--find-capacity", "100,200", "--jobs", "2", "--no-cache", "--quiet", "--out", str(out)]) == 0
    document = json.loads((out / "sweep.json").read_text())
    assert document["capacity_qps"] == {"sequential": 200} and document["capacity_bound"] == {"sequential": "at_least"}


def _metrics(p99: float, no_contention_p99: float, shed: float) -> dict:
    """A METRICS block with the fields the headline metrics read."""
    return {
        "offered_qps": 100.0,
        "throughput_qps": 100.0 * (1 - shed),
        "requests": {
            "offered": 1000,
            "completed": round(1000 * (1 - shed)),
            "rejected": round(1000 * shed),
            "timed_out": 0,
            "in_flight_at_end": 0,
        },
        "latency_ms": {"mean": p99 / 2, "p50": p99 / 2, "p90": p99 / 1.5, "p99": p99, "p999": p99, "max": p99},
        "no_contention_ms": {"mean": no_contention_p99 / 2, "p50": no_contention_p99 / 2, "p99": no_contention_p99},
        "compute": {"prerank": {"ms_per_request": 1.0}},
        "bottleneck": "prerank",
        "critical_stage": "prerank",
        "stages": {"prerank": {"utilization": 0.5}},
        "slo": {"missed_share": shed},
    }


def test_intervals_are_clipped_to_what_the_metric_can_be():
    """Two runs of a pool near saturation: the p99's t interval (12.7 x the spread at 2 runs) reaches far below the
    no-contention p99, and the shed share's below 0. The half-widths stay as computed; the bounds are clipped."""
    runs = [_metrics(30.0, 28.0, 0.0), _metrics(455.8, 29.0, 0.004)]
    row = aggregate(300, "sequential", runs, slo_ms=50.0)
    t = student_t.ppf(0.975, 1)
    assert row["p99_ms"] == pytest.approx(242.9) and row["p99_ms_ci95"] == pytest.approx(t * statistics.stdev([30.0, 455.8]) / math.sqrt(2))
    floor = 28.5 - t * statistics.stdev([28.0, 29.0]) / math.sqrt(2)  # the no-contention p99's lower bound
    assert row["p99_ms_lo"] == pytest.approx(floor) and row["p99_ms_hi"] == pytest.approx(row["p99_ms"] + row["p99_ms_ci95"])
    assert row["shed_share_ci95"] > row["shed_share"] and row["shed_share_lo"] == 0.0 and row["shed_share_hi"] < 1.0
    assert row["bottleneck_utilization_ci95"] == 0.0 and row["bottleneck_utilization_lo"] == row["bottleneck_utilization_hi"] == 0.5
    assert row["slo_met"] is False  # the upper bounds decide, as before
    single = aggregate(300, "sequential", runs[:1], slo_ms=50.0)
    assert single["p99_ms_ci95"] is None and single["p99_ms_lo"] is None and single["p99_ms_hi"] is None


def test_intervals_wider_than_their_means_from_fewer_than_5_replications_are_warned():
    wide = aggregate(300, "sequential", [_metrics(30.0, 28.0, 0.0), _metrics(455.8, 29.0, 0.004)], slo_ms=50.0)
    warnings = wide_intervals([wide])
    p99 = next(w for w in warnings if w["metric"] == "p99_ms")
    assert p99 == {
        "kind": "wide_interval",
        "value": 300,
        "pipeline": "sequential",
        "metric": "p99_ms",
        "replications": 2,
        "mean": wide["p99_ms"],
        "ci95": wide["p99_ms_ci95"],
    }
    metrics = {w["metric"] for w in warnings}
    assert {"p99_ms", "shed_share", "slo_missed_share"} <= metrics and not {"offered_qps", "no_contention_p99_ms"} & metrics
    many = aggregate(300, "sequential", [_metrics(p99, 28.0, 0.0) for p99 in (30.0, 455.8, 30.0, 455.8, 30.0)], slo_ms=50.0)
    assert many["p99_ms_ci95"] > many["p99_ms"] / 2 and wide_intervals([many]) == []
