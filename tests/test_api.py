"""The Python API (`aif_sim.run`, `sweep`, `plan`): the same results as the command line, which is a layer over it."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import aif_sim
from aif_sim.cli import main
from tests.simtools import scenario_dict, small_stages, write_yaml

ROOT = Path(__file__).resolve().parent.parent


def _data(**extra) -> dict:
    stages = small_stages({"servers": 8, "latency": {"dist": "gamma", "mean_ms": 6, "cv": 0.5}})
    return scenario_dict(stages, pipelines=["sequential", "aif"], qps=200, duration_s=2.0, warmup_s=0.5, slo={"p99_ms": 40}, **extra)


def test_the_readme_example_runs():
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"^## Python API\n(.*?)(?=^## )", readme, re.S | re.M)
    assert section, "README has no Python API section"
    (code,) = re.findall(r"```python\n(.*?)```", section.group(1), re.S)
    printed = io.StringIO()
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})
    assert "aif" in printed.getvalue()


def test_the_api_summary_equals_the_cli_summary(tmp_path):
    path = write_yaml(tmp_path / "s.yaml", _data())
    argv = [str(path), "--out", str(tmp_path / "cli"), "--quiet", "--engine", "simpy", "--seed", "4", "--set", "traffic.arrival.qps=150"]
    assert main(argv) == 0
    result = aif_sim.run(path, seed=4, set={"traffic.arrival.qps": 150}, engine="simpy", out=tmp_path / "api")
    assert result.summary == json.loads((tmp_path / "cli" / "summary.json").read_text())
    cli_rows = pq.read_table(tmp_path / "cli" / "requests.parquet").to_pandas()
    assert result.requests.equals(cli_rows) and len(cli_rows) == result.summary["pipelines"]["sequential"]["requests"]["completed"] * 2
    assert list(result.timeseries["pipeline"].unique()) == ["sequential", "aif"]
    assert result.out == tmp_path / "api" and (result.out / "report.html").exists()


def test_a_scenario_given_as_a_mapping_runs_as_its_file_does(tmp_path):
    data = _data()
    from_file = aif_sim.run(write_yaml(tmp_path / "s.yaml", data), engine="simpy", pipelines=["aif"])
    from_mapping = aif_sim.run(data, engine="simpy", pipelines=["aif"])
    assert from_mapping.summary == from_file.summary
    assert list(from_mapping.summary["pipelines"]) == ["aif"]


def test_bad_input_raises_one_line_and_writes_nothing(tmp_path):
    data = _data()
    data["trafic"] = data.pop("traffic")
    with pytest.raises(aif_sim.InputError, match=r"^scenario: trafic: unknown key; did you mean traffic\?"):
        aif_sim.run(data, out=tmp_path / "o")
    with pytest.raises(aif_sim.InputError, match=r"^set traffic\.arrival\.qps=-5: traffic\.arrival\.qps: "):
        aif_sim.run(_data(), set={"traffic.arrival.qps": -5}, out=tmp_path / "o")
    with pytest.raises(aif_sim.InputError, match="--trace"):
        aif_sim.run(_data(), trace=1.5, out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_without_out_the_files_live_as_long_as_the_result(tmp_path):
    result = aif_sim.run(_data(), engine="simpy", requests_sample=0.5, format="csv")
    folder = result.out
    assert (folder / "requests.csv").exists() and len(result.requests) < result.summary["pipelines"]["aif"]["requests"]["completed"] * 2
    del result
    gc.collect()
    assert not folder.exists()


def test_sweep_and_plan_return_tables(tmp_path):
    path = write_yaml(tmp_path / "s.yaml", _data())
    curve = aif_sim.sweep(path, param="traffic.arrival.qps", values=[100, 200], engine="simpy", jobs=2, set=["duration_s=1.5"])
    assert list(zip(curve["value"], curve["pipeline"])) == [(100, "sequential"), (100, "aif"), (200, "sequential"), (200, "aif")]
    assert curve.attrs["sweep"]["capacity_qps"].keys() == {"sequential", "aif"}
    assert (curve["throughput_qps"] > 0).all() and curve["slo_met"].dtype == bool
    plan = aif_sim.plan(path, qps=100, pipelines=["aif"], replications=1, engine="simpy", jobs=2, out=tmp_path / "plan")
    design = json.loads((tmp_path / "plan" / "plan.json").read_text())["pipelines"]["aif"]
    assert plan.attrs["plan"]["pipelines"]["aif"] == design and design["feasible"]
    assert dict(zip(plan["stage"], plan["servers"])) == design["servers"]
    assert (plan["cost_per_hour"] == design["cost_per_hour"]).all()


def test_importing_aif_sim_loads_no_simulator_model_or_dataframes():
    code = (
        "import sys, aif_sim; heavy = {'torch', 'simpy', 'numba', 'pandas', 'matplotlib'} & set(sys.modules); "
        "assert not heavy, heavy; assert callable(aif_sim.run) and 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
