"""Sweeps: replications with 95% confidence intervals, and the capacity search against queueing theory."""

from __future__ import annotations

import csv
import json
import math
import statistics

import pytest
import yaml
from scipy.stats import t as student_t

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
    assert capacity == low and (high - low) <= 0.02 * low
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
