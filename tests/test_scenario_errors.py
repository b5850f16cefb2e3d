"""Every class of bad input through the CLI: exit code 2 and one line on stderr naming the file and the field."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from aif_sim.app.outputs import MARKER
from aif_sim.cli import main
from tests.simtools import scenario_dict, small_stages, write_yaml

TINY_STAGES = small_stages({"servers": 16, "latency": {"dist": "gamma", "mean_ms": 10, "cv": 0.3}, "queue_limit": 100, "timeout_ms": 100})


def base() -> dict:
    return scenario_dict(TINY_STAGES, pipelines=["sequential", "aif"], qps=200, duration_s=1.0, warmup_s=0.2)


def run_bad(capsys, argv: list[str]) -> str:
    """Run the CLI on bad input; return its one stderr line after checking the exit code and shape."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse-level errors (a non-number where a number is expected)
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.endswith("\n") and err.count("\n") == 1, f"expected one line, got {err!r}"
    assert "Traceback" not in err
    return err.strip()


def _assert_names(line: str, *parts: str) -> None:
    for part in parts:
        assert part in line, f"{part!r} not in {line!r}"


def _mutate(fn: Callable[[dict], None]) -> dict:
    data = base()
    fn(data)
    return data


def _del(path: str) -> Callable[[dict], None]:
    def apply(data: dict) -> None:
        node = data
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]

    return apply


def _set(path: str, value) -> Callable[[dict], None]:
    def apply(data: dict) -> None:
        node = data
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return apply


SCHEMA_CASES = {
    "unknown key": (_set("stages.prerank.replicas", 3), ["stages.prerank.replicas", "unknown"]),
    "unknown top-level key": (_set("durations", 3), ["durations", "unknown"]),
    "wrong type": (_set("traffic.arrival.qps", "fast"), ["traffic.arrival.qps", "fast"]),
    "wrong type list": (_set("pipelines", "sequential"), ["pipelines"]),
    "negative servers": (_set("stages.prerank.servers", -1), ["stages.prerank.servers"]),
    "negative latency": (_set("stages.prerank.latency", {"dist": "gamma", "mean_ms": -3, "cv": 0.3}), ["stages.prerank.latency.mean_ms"]),
    "negative timeout": (_set("stages.prerank.timeout_ms", -5), ["stages.prerank.timeout_ms"]),
    "negative duration": (_set("duration_s", -1), ["duration_s"]),
    "zero qps": (_set("traffic.arrival.qps", 0), ["traffic.arrival.qps"]),
    "missing duration": (_del("duration_s"), ["duration_s", "missing"]),
    "missing servers": (_del("stages.prerank.servers"), ["stages.prerank.servers", "missing"]),
    "missing latency field": (_set("stages.prerank.latency", {"dist": "gamma", "mean_ms": 3}), ["stages.prerank.latency.cv", "missing"]),
    "unknown distribution": (_set("stages.prerank.latency", {"dist": "weibull", "ms": 3}), ["stages.prerank.latency", "weibull"]),
    "unknown arrival kind": (_set("traffic.arrival", {"kind": "uniform", "qps": 3}), ["traffic.arrival", "uniform"]),
    "unknown stage name": (_set("stages.reranker", {"servers": 1}), ["stages: unknown stage 'reranker'", "no pipeline calls it"]),
    "unknown pipeline": (_set("pipelines", ["sequential", "turbo"]), ["pipelines", "turbo"]),
    "pipeline twice": (_set("pipelines", ["aif", "aif"]), ["pipelines"]),
    "pipeline uses missing stage": (_del("stages.user_inference"), ["stages", "user_inference", "aif"]),
    "lognormal p99 below median": (
        _set("stages.retrieval.latency", {"dist": "lognormal", "median_ms": 10, "p99_ms": 10}),
        ["stages.retrieval.latency.p99_ms", "median"],
    ),
    "warmup equal duration": (_set("warmup_s", 1.0), ["warmup_s", "duration_s"]),
    "warmup above duration": (_set("warmup_s", 5.0), ["warmup_s", "duration_s"]),
    "zipf negative": (_set("traffic.items", {"count": 10, "zipf_s": -1}), ["traffic.items.zipf_s"]),
    "batch size zero": (_set("stages.rtp.batch", {"max_size": 0}), ["stages.rtp.batch.max_size"]),
    "missing trace file": (_set("traffic.arrival", {"kind": "trace", "path": "no/such/trace.csv"}), ["traffic.arrival.path", "trace.csv"]),
    "missing empirical file": (
        _set("stages.prerank.latency", {"dist": "empirical", "path": "nope.csv"}),
        ["stages.prerank.latency.path", "nope.csv"],
    ),
    "missing profile file": (
        _set("stages.prerank.latency", {"dist": "profile", "path": "cpu.json", "op": "sequential_prerank"}),
        ["stages.prerank.latency.path", "cpu.json"],
    ),
    "shadow scoring without checkpoint": (_set("model", {"shadow_rate": 0.5}), ["model", "checkpoint"]),
    "fewer checkpoints than versions": (
        lambda d: d.update(model={"checkpoint": "bad.yaml", "shadow_rate": 0.5}, nearline={"model_publish_interval_s": 0.5}),
        ["model.checkpoint", "model versions", "continue-from"],
    ),
    "world updates without a world": (_set("nearline", {"updates_from": "world"}), ["nearline.updates_from", "model.checkpoint"]),
    "missing checkpoint file": (_set("model", {"checkpoint": "no/such.pt", "shadow_rate": 0.5}), ["model.checkpoint", "such.pt"]),
    "unknown fault kind": (_set("faults", [{"at_s": 0.5, "kind": "meteor"}]), ["faults.0", "meteor"]),
    "fault field of another kind": (
        _set("faults", [{"at_s": 0.5, "kind": "cache_flush", "cache": "sim_features", "factor": 2}]),
        ["faults.0.factor", "unknown key"],
    ),
    "flush of an unknown cache": (_set("faults", [{"at_s": 0.5, "kind": "cache_flush", "cache": "l2"}]), ["faults.0.cache", "l2"]),
    "periodic refresh without interval": (_set("nearline", {"refresh": {"mode": "periodic"}}), ["nearline.refresh", "interval_s"]),
    "negative cache capacity": (_set("caches", {"user_vector": {"capacity": -1}}), ["caches.user_vector.capacity"]),
    "misspelt cache field": (_set("caches", {"user_vector": {"capacty": 5}}), ["caches.user_vector.capacty", "did you mean capacity?"]),
    "request-keyed cache with a capacity": (
        _set("caches", {"user_vector": {"capacity": 100}, "sim_features": {"key": "request", "capacity": 5}}),
        ["caches.sim_features", "capacity: a request-keyed cache holds each request's entry until the request ends"],
    ),
    "user-keyed cache without a capacity": (
        _set("caches", {"user_vector": {"ttl_s": 5}}),
        ["caches.user_vector", "capacity: expected the entries a user-keyed cache holds"],
    ),
    "unknown cache key": (
        _set("caches", {"user_vector": {"capacity": 5, "key": "session"}}),
        ["caches.user_vector.key", "user", "request"],
    ),
    "flush of a request-keyed cache": (
        lambda data: data.update(
            caches={"user_vector": {"capacity": 100}, "sim_features": {"key": "request"}},
            faults=[{"at_s": 0.5, "kind": "cache_flush", "cache": "sim_features"}],
        ),
        ["faults.0.cache", "keyed by request", "expected a cache keyed by user"],
    ),
    "misspelt caches field": (_set("caches", {"backnd": "redis"}), ["caches.backnd: a cache is a mapping", "did you mean backend?"]),
    "negative seed": (_set("seed", -1), ["seed", "greater than or equal to 0"]),
    "arrival written without its kind": (
        _set("traffic.arrival", {"poisson": {"qps": 2000}}),
        ["traffic.arrival: kind: required key is missing", "poisson, diurnal, bursty, trace", "{kind: poisson, qps: 2000}"],
    ),
    "latency written without its dist": (
        _set("stages.merger.latency", {"constant": {"ms": 0.5}}),
        ["stages.merger.latency: dist: required key is missing", "constant, exponential", "{dist: constant, ms: 0.5}"],
    ),
    "fault without its kind": (_set("faults", [{"at_s": 0.5}]), ["faults.0: kind: required key is missing", "cache_flush"]),
}


def _own(*steps: object) -> Callable[[dict], None]:
    """The base scenario with a pipeline of its own, `mine`, of these steps, and both caches configured."""

    def apply(data: dict) -> None:
        data["pipelines"] = ["aif", {"name": "mine", "steps": list(steps)}]
        data["caches"] = {"user_vector": {"capacity": 100}, "sim_features": {"capacity": 100}}

    return apply


PIPELINE_CASES = {
    "unknown stage": (_own("merger", "retreival"), ["pipelines.1.steps.1.stage", "'retreival'", "did you mean retrieval?"]),
    "unknown stage in a group": (
        _own({"parallel": ["retrieval", "user_infrence"]}),
        ["pipelines.1.steps.0.parallel.1.stage", "did you mean user_inference?"],
    ),
    "empty parallel group": (_own("merger", {"parallel": []}, "rtp"), ["pipelines.1.steps.1.parallel", "empty parallel group"]),
    "cache not configured": (
        _own({"cached": "user_vectors", "stage": "user_inference"}),
        ["pipelines.1.steps.0.cached", "'user_vectors'", "did you mean user_vector?"],
    ),
    "read-through cache not configured": (_own({"stage": "feature_fetch", "reads": "sim"}), ["pipelines.1.steps.0.reads", "'sim'"]),
    "vector store nothing refreshes": (
        _own({"stage": "item_fetch", "vectors": "item_vectors"}),
        ["pipelines.1.steps.0.vectors", "'item_vectors'", "nothing refreshes"],
    ),
    "a call guarded by and reading one cache": (
        _own({"cached": "sim_features", "stage": "feature_fetch", "reads": "sim_features"}),
        ["pipelines.1.steps.0", "guarded by cache 'sim_features' and reads through it"],
    ),
    "stage called twice": (_own("merger", "rtp", "merger"), ["pipelines.1.steps.2", "'merger' is already called at steps.0"]),
    "misspelt step key": (_own({"stage": "rtp", "read": "sim_features"}), ["pipelines.1.steps.0.read: unknown key; did you mean reads?"]),
    "unknown design": (_set("pipelines", ["aif", "seqential"]), ["pipelines.1", "'seqential'", "did you mean sequential?"]),
    "a design's stage missing": (_del("stages.rtp"), ["pipelines.1.steps.3.stage", "pipeline aif", "'rtp'"]),
}


@pytest.mark.parametrize("case", [*SCHEMA_CASES, *PIPELINE_CASES])
def test_bad_scenario_field(case, tmp_path, capsys):
    """One line naming the file, the field (for a pipeline, the step's place) and what was expected; exit 2."""
    mutate, expected = {**SCHEMA_CASES, **PIPELINE_CASES}[case]
    path = write_yaml(tmp_path / "bad.yaml", _mutate(mutate))
    line = run_bad(capsys, [str(path), "--out", str(tmp_path / "out"), "--quiet"])
    _assert_names(line, str(path), *expected)
    assert not (tmp_path / "out" / "summary.json").exists()


def test_profile_without_the_operator(tmp_path, capsys):
    profile = tmp_path / "cpu.json"
    profile.write_text(json.dumps({"hardware": "x", "ops": {"user_side": [{"batch": 1, "median_ms": 1, "p99_ms": 2}]}}))
    data = base()
    data["stages"]["prerank"]["latency"] = {"dist": "profile", "path": "cpu.json", "op": "sequential_prerank"}
    path = write_yaml(tmp_path / "bad.yaml", data)
    line = run_bad(capsys, [str(path), "--out", str(tmp_path / "out"), "--quiet"])
    _assert_names(line, str(path), "stages.prerank.latency.op", "sequential_prerank", "user_side")


def test_bad_yaml_syntax(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nstages: {merger: [1, 2\nseed: 3\n")
    line = run_bad(capsys, [str(path), "--quiet"])
    _assert_names(line, str(path), "YAML", "line")


def test_non_mapping_top_level(tmp_path, capsys):
    path = tmp_path / "list.yaml"
    path.write_text("- name: x\n- seed: 3\n")
    _assert_names(run_bad(capsys, [str(path), "--quiet"]), str(path), "mapping")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    _assert_names(run_bad(capsys, [str(empty), "--quiet"]), str(empty))


def test_nonexistent_scenario_file(tmp_path, capsys):
    path = tmp_path / "missing.yaml"
    _assert_names(run_bad(capsys, [str(path), "--quiet"]), str(path))
    # a directory is not a scenario file either
    _assert_names(run_bad(capsys, [str(tmp_path), "--quiet"]), str(tmp_path))


SET_CASES = {
    "unknown path": (["--set", "traffic.arrival.rate=5"], ["--set traffic.arrival.rate=5", "traffic.arrival.rate", "unknown key"]),
    "unknown stage via set": (["--set", "stages.ranker.servers=5"], ["--set stages.ranker.servers=5", "stages", "ranker"]),
    "bad value": (["--set", "traffic.arrival.qps=abc"], ["--set traffic.arrival.qps=abc", "traffic.arrival.qps", "abc"]),
    "negative value": (["--set", "stages.prerank.servers=-4"], ["--set stages.prerank.servers=-4", "stages.prerank.servers"]),
    "no equals sign": (["--set", "traffic.arrival.qps"], ["--set", "traffic.arrival.qps"]),
    "empty path": (["--set", "=3"], ["--set"]),
    "bad yaml value": (["--set", "pipelines=[sequential"], ["--set", "pipelines"]),
    "index past list": (["--set", "pipelines.5=aif"], ["--set", "pipelines"]),
    "shadow scoring without checkpoint": (["--set", "model.shadow_rate=0.5"], ["--set model.shadow_rate=0.5", "checkpoint"]),
    "seed not a number": (["--seed", "abc"], ["--seed"]),
    "negative seed": (["--seed", "-1"], ["--seed -1", "seed"]),
    "unknown stage with fields": (["--set", "stages.foo.servers=3"], ["--set stages.foo.servers=3", "stages: unknown stage 'foo'"]),
    "misspelt stage": (["--set", "stages.retreival.servers=3"], ["unknown stage 'retreival'; did you mean retrieval?"]),
    "requests sample above 1": (["--requests-sample", "1.5"], ["--requests-sample"]),
    "requests sample negative": (["--requests-sample", "-0.1"], ["--requests-sample"]),
    "requests sample not a number": (["--requests-sample", "half"], ["--requests-sample"]),
    "format unknown": (["--format", "xlsx"], ["--format"]),
}


@pytest.mark.parametrize("case", list(SET_CASES))
def test_bad_command_line(case, tmp_path, capsys):
    args, expected = SET_CASES[case]
    path = write_yaml(tmp_path / "ok.yaml", base())
    line = run_bad(capsys, [str(path), "--out", str(tmp_path / "out"), "--quiet", *args])
    _assert_names(line, *expected)
    assert str(path) not in line  # an error in an option names the option, not the file


def test_bad_compare_and_sweep_arguments(tmp_path, capsys):
    path = write_yaml(tmp_path / "ok.yaml", base())
    out = str(tmp_path / "out")
    _assert_names(run_bad(capsys, ["compare", str(path), "--pipelines", "sequential,warp", "--out", out, "--quiet"]), "--pipelines", "warp")
    _assert_names(
        run_bad(capsys, ["compare", str(path), "--pipelines", "uic", "--out", out, "--quiet"]), "--pipelines uic", "light_prerank"
    )
    _assert_names(
        run_bad(capsys, ["sweep", str(path), "--param", "traffic.arrival.qps", "--values", "100,-5", "--out", out, "--quiet"]),
        "--param traffic.arrival.qps=-5",
        "traffic.arrival.qps",
    )
    _assert_names(
        run_bad(capsys, ["sweep", str(path), "--param", "traffic.arrival.speed", "--values", "1,2", "--out", out, "--quiet"]),
        "--param traffic.arrival.speed=1",
        "unknown key",
    )
    _assert_names(
        run_bad(capsys, ["sweep", str(path), "--param", "seed", "--values", "1,2", "--jobs", "0", "--out", out, "--quiet"]), "--jobs"
    )
    _assert_names(run_bad(capsys, ["sweep", str(path), "--param", "seed", "--values", "1,-2", "--out", out, "--quiet"]), "--param seed=-2")
    _assert_names(
        run_bad(capsys, ["sweep", str(path), "--seed", "-1", "--param", "traffic.arrival.qps", "--values", "1", "--out", out, "--quiet"]),
        "--seed -1",
    )
    assert not Path(out).exists()  # nothing is created for bad input


def _bad_trace_scenario(tmp_path: Path) -> Path:
    trace = tmp_path / "trace.csv"
    trace.write_text("t\n0.1\n0.2\nsoon\n")
    data = base()
    data["traffic"]["arrival"] = {"kind": "trace", "path": "trace.csv"}
    return write_yaml(tmp_path / "trace.yaml", data)


def test_bad_data_file_contents(tmp_path, capsys):
    trace_scenario = _bad_trace_scenario(tmp_path)
    _assert_names(run_bad(capsys, [str(trace_scenario), "--out", str(tmp_path / "o1"), "--quiet"]), "trace.csv")
    samples = tmp_path / "samples.csv"
    samples.write_text("ms\n1.0\n-2.0\n")
    data = base()
    data["stages"]["prerank"]["latency"] = {"dist": "empirical", "path": "samples.csv"}
    _assert_names(run_bad(capsys, [str(write_yaml(tmp_path / "emp.yaml", data)), "--quiet", "--out", str(tmp_path / "o2")]), "samples.csv")
    data["stages"]["prerank"]["latency"] = {"dist": "empirical", "path": "samples.csv", "column": "latency"}
    _assert_names(
        run_bad(capsys, [str(write_yaml(tmp_path / "emp2.yaml", data)), "--quiet", "--out", str(tmp_path / "o3")]), "samples.csv", "latency"
    )


def test_bad_input_leaves_existing_output_untouched(tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    kept = {name: out / name for name in (MARKER, "summary.json", "requests.parquet", "notes.txt")}  # an earlier run's folder
    for i, file in enumerate(kept.values()):
        file.write_bytes(f"earlier run {i}\n".encode())
        os.utime(file, (1_000_000_000, 1_000_000_000))
    before = {name: (file.read_bytes(), file.stat().st_mtime_ns) for name, file in kept.items()}
    good = write_yaml(tmp_path / "ok.yaml", base())
    bad_field = write_yaml(tmp_path / "bad.yaml", _mutate(_set("stages.prerank.servers", 0)))
    attempts = [
        [str(bad_field), "--out", str(out), "--quiet"],
        [str(good), "--out", str(out), "--quiet", "--set", "traffic.arrival.qps=-1"],
        [str(good), "--out", str(out), "--quiet", "--requests-sample", "2"],
        [str(good), "--out", str(out), "--quiet", "--set", "model.shadow_rate=0.5"],  # no checkpoint
        [str(_bad_trace_scenario(tmp_path)), "--out", str(out), "--quiet"],  # fails mid-simulation
        ["sweep", str(good), "--param", "traffic.arrival.qps", "--values", "100,0", "--out", str(out), "--quiet"],
    ]
    for argv in attempts:
        run_bad(capsys, argv)
        after = {name: (file.read_bytes(), file.stat().st_mtime_ns) for name, file in kept.items()}
        assert after == before, argv
        assert sorted(p.name for p in out.iterdir()) == sorted(kept), argv  # no partial or temporary files


def test_unknown_key_is_named_with_the_closest_valid_name(tmp_path, capsys):
    data = base()
    data["trafic"] = data.pop("traffic")  # the misspelt key displaces a required one: the unknown key is what is reported
    line = run_bad(capsys, [str(write_yaml(tmp_path / "typo.yaml", data)), "--quiet"])
    _assert_names(line, "typo.yaml", "trafic: unknown key; did you mean traffic?")
    data = base()
    data["stages"]["prerank"]["queue_limt"] = 3
    line = run_bad(capsys, [str(write_yaml(tmp_path / "typo2.yaml", data)), "--quiet"])
    _assert_names(line, "stages.prerank.queue_limt: unknown key; did you mean queue_limit?")
    data = base()
    data["traffic"]["arrival"]["qsp"] = 3  # inside a union member, chosen by its tag
    line = run_bad(capsys, [str(write_yaml(tmp_path / "typo3.yaml", data)), "--quiet"])
    _assert_names(line, "traffic.arrival.qsp: unknown key; did you mean qps?")


def test_missing_data_file_lists_where_it_looked(tmp_path, capsys, monkeypatch):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    data = base()
    data["stages"]["prerank"]["latency"] = {"dist": "profile", "path": "profiles/gpu.json", "op": "sequential_prerank"}
    line = run_bad(capsys, [str(write_yaml(tmp_path / "p.yaml", data)), "--quiet"])
    _assert_names(line, "stages.prerank.latency.path", str(tmp_path / "profiles/gpu.json"), str(elsewhere / "profiles/gpu.json"), "aif_sim")


def test_a_missing_data_file_names_each_place_once(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the scenario's folder is the current folder
    data = base()
    data["stages"]["prerank"]["latency"] = {"dist": "profile", "path": "gpu.json", "op": "sequential_prerank"}
    line = run_bad(capsys, [str(write_yaml(tmp_path / "p.yaml", data)), "--quiet"])
    assert line.count(str(tmp_path / "gpu.json")) == 1, line


def test_candidates_distribution_is_validated(tmp_path, capsys):
    data = base()
    data["traffic"]["candidates"] = {"dist": "lognormal", "median": 5000, "p99": 4000, "max": 10000}
    _assert_names(run_bad(capsys, [str(write_yaml(tmp_path / "c.yaml", data)), "--quiet"]), "traffic.candidates", "p99 > median")
    data["traffic"]["candidates"] = 0
    _assert_names(run_bad(capsys, [str(write_yaml(tmp_path / "c2.yaml", data)), "--quiet"]), "traffic.candidates")
