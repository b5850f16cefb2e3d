"""The command line: run, compare, sweep, their output files and options; the shipped scenarios."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from aif_sim.app.outputs import MARKER
from aif_sim.app.run import build_samplers
from aif_sim.cli import main
from aif_sim.core.sampling import sampled
from aif_sim.scenario import load_scenario
from tests.simtools import scenario_dict, small_stages, write_yaml

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"

# 4 servers at 10 ms: capacity 400/s, so 400 QPS breaks the SLO and 200 QPS meets it
STAGES = {
    **small_stages({"servers": 4, "latency": {"dist": "exponential", "mean_ms": 10}}),
    "light_prerank": {"servers": 8, "latency": {"dist": "gamma", "mean_ms": 4, "cv": 0.3}},
}
METRIC_KEYS = ("mean", "p50", "p90", "p99", "p999", "max")


@pytest.fixture
def tiny(tmp_path) -> Path:
    data = scenario_dict(STAGES, pipelines=["sequential", "aif"], qps=300, duration_s=3.0, warmup_s=0.5, seed=7, slo={"p99_ms": 100})
    data["name"] = "tiny"
    return write_yaml(tmp_path / "tiny.yaml", data)


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_default_run_writes_every_output(tiny, tmp_path):
    out = tmp_path / "out"
    assert main([str(tiny), "--out", str(out), "--quiet"]) == 0
    for name in ("summary.json", "requests.parquet", "timeseries.csv", "latency_cdf.png", "stage_breakdown.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in ("latency_cdf.png", "stage_breakdown.png"):
        assert (out / name).read_bytes()[:8] == PNG
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [MARKER]  # no temporary files left, only the marker

    summary = _summary(out)
    assert summary["scenario"] == "tiny" and summary["seed"] == 7 and isinstance(summary["aif_sim_version"], str)
    assert set(summary["pipelines"]) == {"sequential", "aif"}
    for metrics in summary["pipelines"].values():
        req = metrics["requests"]
        assert set(req) >= {"offered", "completed", "rejected", "timed_out", "in_flight_at_end"}
        assert req["offered"] == req["completed"] + req["rejected"] + req["timed_out"] + req["in_flight_at_end"]
        # ~300/s over the 2.5 s window
        assert abs(req["offered"] - 750) < 4 * math.sqrt(750)
        assert metrics["offered_qps"] == pytest.approx(req["offered"] / 2.5)
        assert abs(metrics["throughput_qps"] * 2.5 - req["completed"]) < 20  # completions inside the window
        assert set(metrics["latency_ms"]) >= set(METRIC_KEYS)
        lat = metrics["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"]
        for stage, stats in metrics["stages"].items():
            assert set(stats["latency_ms"]) >= set(METRIC_KEYS) and set(stats["wait_ms"]) >= set(METRIC_KEYS)
            assert 0 <= stats["utilization"] <= 1
            assert set(metrics["compute"][stage]) >= {"busy_s", "ms_per_request"}
        assert metrics["slo"]["p99_ms"] == 100

    table = pq.read_table(out / "requests.parquet").to_pydict()
    assert {"request_id", "pipeline", "arrival_s", "latency_ms", "prerank_ms", "rtp_ms"} <= set(table)
    for pipeline, metrics in summary["pipelines"].items():
        assert table["pipeline"].count(pipeline) == metrics["requests"]["completed"]
    assert min(table["arrival_s"]) >= 0.5

    with open(out / "timeseries.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {"t_s", "pipeline", "completed", "p50_ms", "p99_ms"} <= set(rows[0])
    for pipeline in ("sequential", "aif"):
        mine = [r for r in rows if r["pipeline"] == pipeline]
        assert [int(r["t_s"]) for r in mine] == list(range(len(mine))) and len(mine) >= 3
        # every completion (warm-up included) is in some second: at least the measured ones
        assert sum(int(r["completed"]) for r in mine) >= summary["pipelines"][pipeline]["requests"]["completed"]


def test_csv_format(tiny, tmp_path):
    out = tmp_path / "out"
    assert main([str(tiny), "--out", str(out), "--quiet", "--format", "csv"]) == 0
    assert not (out / "requests.parquet").exists()
    with open(out / "requests.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    summary = _summary(out)
    assert len(rows) == sum(m["requests"]["completed"] for m in summary["pipelines"].values())
    assert {"request_id", "pipeline", "arrival_s", "latency_ms", "merger_ms"} <= set(rows[0])
    seq = [r for r in rows if r["pipeline"] == "sequential"]
    assert all(r["rtp_ms"] == "" or math.isnan(float(r["rtp_ms"])) for r in seq)
    assert all(float(r["latency_ms"]) > 0 for r in rows)


def test_requests_sample_keeps_a_tenth_and_the_same_ids(tiny, tmp_path):
    out = tmp_path / "out"
    # no losses here (no queue limits or timeouts), so every pipeline completes the same requests
    assert main([str(tiny), "--out", str(out), "--quiet", "--requests-sample", "0.1", "--set", "duration_s=6"]) == 0
    summary = _summary(out)
    table = pq.read_table(out / "requests.parquet").to_pydict()
    ids = {p: sorted(rid for rid, pp in zip(table["request_id"], table["pipeline"]) if pp == p) for p in ("sequential", "aif")}
    assert ids["sequential"] == ids["aif"]
    completed = summary["pipelines"]["sequential"]["requests"]["completed"]
    assert completed == summary["pipelines"]["aif"]["requests"]["completed"]
    kept = len(ids["sequential"])
    assert abs(kept - 0.1 * completed) < 4 * math.sqrt(completed * 0.1 * 0.9), (kept, completed)
    # full output: all ids; the sampled ones are a subset of them
    full = tmp_path / "full"
    assert main([str(tiny), "--out", str(full), "--quiet", "--set", "duration_s=6"]) == 0
    all_ids = set(pq.read_table(full / "requests.parquet").column("request_id").to_pylist())
    assert set(ids["sequential"]) < all_ids
    assert len(all_ids) == completed
    # sampling 0 keeps nothing but the file is still written
    none = tmp_path / "none"
    assert main([str(tiny), "--out", str(none), "--quiet", "--requests-sample", "0"]) == 0
    assert pq.read_table(none / "requests.parquet").num_rows == 0


def test_sampling_is_a_per_id_hash():
    ids = np.arange(100_000)
    kept = set(ids[sampled(ids, 0.1)].tolist())
    assert abs(len(kept) - 10_000) < 4 * math.sqrt(100_000 * 0.09)
    assert sampled(ids, 1.0).all() and not sampled(ids, 0.0).any()
    assert kept >= set(ids[sampled(ids, 0.05)].tolist())  # nested fractions
    # the hash, not the id order: kept ids are spread over the whole range
    assert min(kept) < 1000 and max(kept) > 99_000


def test_compare_three_pipelines(tiny, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(tiny), "--pipelines", "sequential,aif,uic", "--out", str(out)]) == 0
    summary = _summary(out)
    assert list(summary["pipelines"]) == ["sequential", "aif", "uic"]
    offered = {m["requests"]["offered"] for m in summary["pipelines"].values()}
    assert len(offered) == 1
    printed = capsys.readouterr().out
    assert "uic/seq" in printed and "aif/seq" in printed
    assert "light_prerank" in summary["pipelines"]["uic"]["stages"]


def test_sweep_writes_table_json_plots_and_capacity(tiny, tmp_path):
    out = tmp_path / "sweep"
    assert (
        main(
            [
                "sweep",
                str(tiny),
                "--param",
                "traffic.arrival.qps",
                "--values",
                "200,400",
                "--jobs",
                "2",
                "--out",
                str(out),
                "--quiet",
                "--no-cache",
            ]
        )
        == 0
    )
    for name in (
        "sweep.csv",
        "sweep.json",
        "latency_throughput.png",
        "sweep_p99_ms.png",
        "sweep_p50_ms.png",
        "sweep_throughput_qps.png",
        "sweep_compute_ms_per_request.png",
    ):
        assert (out / name).is_file(), name
    assert (out / "latency_throughput.png").read_bytes()[:8] == PNG
    with open(out / "sweep.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((float(r["value"]), r["pipeline"]) for r in rows) == [
        (200.0, "aif"),
        (200.0, "sequential"),
        (400.0, "aif"),
        (400.0, "sequential"),
    ]
    document = json.loads((out / "sweep.json").read_text())
    assert document["param"] == "traffic.arrival.qps" and document["values"] == [200, 400]
    by_point = {(p["value"], p["pipeline"]): p["metrics"] for p in document["points"]}
    for (value, _), metrics in by_point.items():
        assert metrics["offered_qps"] == pytest.approx(value, rel=4 / math.sqrt(value * 2.5))
    # the sequential prerank (4 x 10 ms, capacity 400/s) meets p99 <= 100 ms at 200 QPS, not at 400;
    # AIF has no such bottleneck
    assert by_point[(200, "sequential")]["slo"]["valid"] and not by_point[(400, "sequential")]["slo"]["valid"]
    assert document["capacity_qps"] == {"sequential": 200, "aif": 400}


def test_set_and_seed_override(tiny, tmp_path):
    out = tmp_path / "o"
    assert (
        main(
            [
                str(tiny),
                "--out",
                str(out),
                "--quiet",
                "--set",
                "traffic.arrival.qps=100",
                "--set",
                "pipelines=[aif]",
                "--set",
                "stages.rtp.batch.max_size=1",
                "--seed",
                "99",
            ]
        )
        == 0
    )
    summary = _summary(out)
    assert summary["seed"] == 99 and list(summary["pipelines"]) == ["aif"]
    assert summary["pipelines"]["aif"]["offered_qps"] == pytest.approx(100, rel=4 / math.sqrt(250))
    # --set of a nested list item and of a dotted path that creates a mapping
    out2 = tmp_path / "o2"
    assert main([str(tiny), "--out", str(out2), "--quiet", "--set", "pipelines.1=uic", "--set", "slo.p99_ms=5"]) == 0
    summary2 = _summary(out2)
    assert list(summary2["pipelines"]) == ["sequential", "uic"]
    assert summary2["pipelines"]["uic"]["slo"]["p99_ms"] == 5
    assert summary2["seed"] == 7


def test_default_output_folder_and_explicit_run_command(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(tiny), "--quiet", "--set", "duration_s=1"]) == 0
    runs = list((tmp_path / "results" / "tiny").iterdir())
    assert len(runs) == 1 and (runs[0] / "summary.json").is_file()


def test_exit_code_of_the_script(tmp_path):
    """`python run_sim.py` exits with 2 on bad input and prints one line."""
    missing = tmp_path / "nope.yaml"
    proc = subprocess.run(
        [sys.executable, str(REPO / "run_sim.py"), str(missing), "--quiet"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and str(missing) in proc.stderr


SHIPPED = sorted((REPO / "scenarios").glob("*.yaml"))


def test_there_are_shipped_scenarios():
    assert any(p.name == "default.yaml" for p in SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_scenarios_validate(path):
    scenario = load_scenario(path)
    assert scenario.pipelines
    samplers = build_samplers(scenario, str(path))
    assert {name for name in samplers if ":" not in name} == set(scenario.stages)


def test_a_copied_scenario_finds_the_shipped_profile(tmp_path, monkeypatch):
    """Scenarios name `profiles/cpu.json`; copied elsewhere and run from elsewhere, it resolves to the
    profile installed with the package."""
    copy = tmp_path / "mine" / "taobao.yaml"
    copy.parent.mkdir()
    copy.write_text((REPO / "scenarios" / "taobao_prerank.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    scenario = load_scenario(copy)
    assert scenario.stages["prerank"].latency.path == (REPO / "aif_sim" / "data" / "profiles" / "cpu.json").resolve()
    assert main([str(copy), "--quiet", "--out", str(tmp_path / "out"), "--set", "duration_s=1", "--set", "warmup_s=0"]) == 0


def test_model_commands_are_the_registered_ones():
    """The CLI skips importing the model for simulator commands, so its list of model commands must be
    exactly the commands the model registers."""
    from aif_sim.cli import MODEL_COMMANDS, build_parser

    def listed(parser) -> set[str]:
        return set(re.search(r"\{([^}]*)\}", parser.format_usage()).group(1).split(","))

    assert listed(build_parser(with_model=True)) - listed(build_parser(with_model=False)) == set(MODEL_COMMANDS)


def test_the_engine_option_runs_the_compiled_engine_where_it_can_and_says_so(tiny, tmp_path, capsys):
    """tiny's aif batches at rtp; timed per batch by candidates (a profile measured by candidates), its batch
    services cannot be drawn ahead: auto runs sequential compiled and aif on simpy, and says why; --engine
    compiled refuses the run (one line, exit 2); the compiled and simpy engines give the same summary."""
    auto, simpy = tmp_path / "auto", tmp_path / "simpy"
    by_candidates = ["--set", "stages.rtp.latency={dist: profile, path: profiles/cpu.json, op: realtime}"]
    assert main([str(tiny), "--out", str(auto), *by_candidates]) == 0
    printed = capsys.readouterr().out
    reason = "the compiled engine does not model batching stages timed by candidates or by empirical samples (rtp)"
    assert "sequential: compiled engine" in printed and f"aif: simpy engine ({reason})" in printed
    assert _summary(auto)["engines"] == {"sequential": "compiled", "aif": "simpy"}
    assert main([str(tiny), "--out", str(simpy), "--quiet", "--engine", "simpy", *by_candidates]) == 0
    assert _summary(simpy)["engines"] == {"sequential": "simpy", "aif": "simpy"}
    assert _summary(auto)["pipelines"] == _summary(simpy)["pipelines"]
    assert main([str(tiny), "--quiet", "--engine", "compiled", "--out", str(tmp_path / "no"), *by_candidates]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"aif-sim: error: --engine compiled: aif: {reason}"
    assert not (tmp_path / "no").exists()
