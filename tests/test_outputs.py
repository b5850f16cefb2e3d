"""Output folders are written atomically and never shared; Ctrl-C and SIGTERM leave valid partial results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from aif_sim import api
from aif_sim.app.outputs import MARKER
from aif_sim.cli import main
from tests.simtools import negligible, scenario_dict, small_stages, write_yaml

ROOT = Path(__file__).resolve().parent.parent


def _tiny(tmp_path: Path, duration_s: float = 2.0) -> Path:
    stages = small_stages({"servers": 16, "latency": {"dist": "gamma", "mean_ms": 10, "cv": 0.3}})
    data = scenario_dict(stages, pipelines=["sequential", "aif"], qps=200, duration_s=duration_s, warmup_s=0.5)
    return write_yaml(tmp_path / "tiny.yaml", data)


def test_runs_started_in_the_same_second_never_share_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(api, "default_folder", lambda name: Path("results") / name / "20260101T000000Z")
    scenario = _tiny(tmp_path)
    assert main([str(scenario), "--quiet"]) == 0
    assert main([str(scenario), "--quiet", "--seed", "2"]) == 0
    runs = sorted((tmp_path / "results" / "test").iterdir())
    assert [p.name for p in runs] == ["20260101T000000Z", "20260101T000000Z-2"]
    seeds = [json.loads((run / "summary.json").read_text())["seed"] for run in runs]
    assert seeds == [1, 2]


def test_reusing_out_keeps_no_file_of_the_older_run(tmp_path):
    out = tmp_path / "out"
    assert main([str(_tiny(tmp_path)), "--out", str(out), "--quiet", "--format", "csv"]) == 0
    (out / "from_an_older_run.txt").write_text("old")
    assert main([str(_tiny(tmp_path)), "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        MARKER,
        "latency_cdf.png",
        "report.html",
        "requests.parquet",
        "stage_breakdown.png",
        "summary.json",
        "timeseries.csv",
        "timeseries.png",
    ]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left beside it


def test_out_refuses_a_folder_aif_sim_did_not_write(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    assert main([str(_tiny(tmp_path)), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "notes.txt" in err and "--force" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "my notes"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert main([str(_tiny(tmp_path)), "--out", str(out), "--quiet", "--force"]) == 0
    assert not (out / "notes.txt").exists() and (out / "summary.json").exists() and (out / MARKER).exists()


def test_out_takes_an_empty_folder(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert main([str(_tiny(tmp_path)), "--out", str(out), "--quiet"]) == 0
    assert (out / "summary.json").exists()


@pytest.mark.parametrize("out", [".", "..", "sub/.."])
def test_out_refuses_the_current_folder_and_its_parents(tmp_path, monkeypatch, capsys, out):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    monkeypatch.chdir(work)
    scenario = _tiny(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir()), sorted(p.name for p in work.iterdir())
    assert main([str(scenario), "--out", out, "--quiet", "--force"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "current folder" in err
    assert (sorted(p.name for p in tmp_path.iterdir()), sorted(p.name for p in work.iterdir())) == before


def test_bad_input_creates_no_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([str(_tiny(tmp_path)), "--quiet", "--set", "duration_s=-1"]) == 2
    assert not (tmp_path / "results").exists()


def test_a_pipeline_that_completes_nothing_is_reported(tmp_path, capsys):
    stages = {
        "merger": negligible(),
        "retrieval": negligible(),
        "feature_fetch": negligible(),
        "prerank": {"servers": 1, "latency": {"dist": "constant", "ms": 60_000}, "queue_limit": 0},
    }
    scenario = write_yaml(tmp_path / "stuck.yaml", scenario_dict(stages, qps=50, duration_s=2.0, drain_s=1.0))
    out = tmp_path / "out"
    assert main([str(scenario), "--out", str(out)]) == 0
    metrics = json.loads((out / "summary.json").read_text())["pipelines"]["sequential"]
    assert metrics["requests"]["completed"] == 0 and metrics["requests"]["rejected"] > 0
    assert metrics["latency_ms"]["p99"] is None and metrics["throughput_qps"] == 0
    assert "sequential completed no request" in capsys.readouterr().out
    assert (out / "latency_cdf.png").stat().st_size > 0 and (out / "stage_breakdown.png").stat().st_size > 0


def _long_scenario(tmp_path: Path) -> Path:
    """A day of simulated traffic: far longer than the test waits."""
    return _tiny(tmp_path, duration_s=86_400.0).rename(tmp_path / "long.yaml")


def _interrupt(argv: list[str], signum: int, after_s: float, cwd: Path) -> tuple[int, float, str]:
    process = subprocess.Popen([sys.executable, str(ROOT / "run_sim.py"), *argv], cwd=cwd, stderr=subprocess.PIPE, text=True)
    time.sleep(after_s)
    sent = time.monotonic()
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    return process.returncode, time.monotonic() - sent, err


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupted_run_writes_a_valid_partial_summary(tmp_path, signum, code):
    out = tmp_path / "out"
    rc, stopped_in, err = _interrupt([str(_long_scenario(tmp_path)), "--out", str(out), "--quiet"], signum, 4.0, tmp_path)
    assert rc == code, err
    assert stopped_in < 10, stopped_in
    assert "partial results" in err and "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["partial"] is True
    metrics = summary["pipelines"]["sequential"]
    assert metrics["partial"] is True
    req = metrics["requests"]
    assert req["offered"] == req["completed"] + req["rejected"] + req["timed_out"] + req["in_flight_at_end"] > 0
    assert 0 < metrics["throughput_qps"] < 400  # over the part of the window that ran
    assert pq.read_table(out / "requests.parquet").num_rows == req["completed"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_interrupted_sweep_writes_the_finished_points(tmp_path):
    scenario = _long_scenario(tmp_path)
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        str(scenario),
        "--param",
        "traffic.arrival.qps",
        "--values",
        "100,200,300",
        "--jobs",
        "2",
        "--out",
        str(out),
        "--quiet",
        "--no-cache",
    ]
    rc, stopped_in, err = _interrupt(argv, signal.SIGTERM, 3.0, tmp_path)
    assert rc == 143, err
    assert stopped_in < 10
    document = json.loads((out / "sweep.json").read_text())
    assert document["partial"] is True
    assert (out / "sweep.csv").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]
