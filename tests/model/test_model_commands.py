"""The train / evaluate / calibrate commands through argparse, their files and their input errors."""

from __future__ import annotations

import argparse
import json

import pytest

from aif_sim.errors import InputError
from aif_sim.model.commands import register
from aif_sim.model.profile import calibrate
from aif_sim.model.train import load_checkpoint
from aif_sim.model.world import preset

METRIC_KEYS = {
    "model",
    "model_version",
    "version_number",
    "trained_until_s",
    "auc",
    "gauc",
    "hr_at_10",
    "hr_at_50",
    "hr_at_100",
    "logloss",
    "oracle_auc",
    "oracle_gauc",
    "train_seconds",
}


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_train_then_evaluate_with_item_lag(tmp_path, capsys):
    assert run("train", "--model", "two_tower", "--preset", "tiny", "--epochs", "1", "--out", str(tmp_path / "tt")) == 0
    metrics = json.loads((tmp_path / "tt" / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics) and metrics["model"] == "two_tower"
    assert 0.5 < metrics["auc"] < metrics["oracle_auc"]
    out = tmp_path / "lag"
    assert run("evaluate", "--checkpoint", str(tmp_path / "tt" / "checkpoint.pt"), "--item-lag-s", "7200", "--out", str(out)) == 0
    lagged = json.loads((out / "metrics.json").read_text())
    assert lagged["item_lag_s"] == 7200 and lagged["model_version"] == metrics["model_version"]
    assert lagged["oracle_gauc"] == metrics["oracle_gauc"]


def test_train_continue_from_writes_the_next_version_trained_on_later_data(tmp_path, capsys):
    base = tmp_path / "v0"
    assert run("train", "--model", "aif", "--preset", "tiny", "--epochs", "1", "--out", str(base)) == 0
    v0 = json.loads((base / "metrics.json").read_text())
    assert v0["version_number"] == 0 and v0["trained_until_s"] == 64800.0 and v0["train_window_s"] == [0.0, 64800.0]
    outs = {}
    for name, extra in (("a", []), ("b", []), ("c", ["--seed", "7"])):
        outs[name] = tmp_path / name
        argv = [
            "train",
            "--continue-from",
            str(base / "checkpoint.pt"),
            "--requests",
            "64",
            "--epochs",
            "1",
            *extra,
            "--out",
            str(outs[name]),
        ]
        assert run(*argv) == 0
    v1 = json.loads((outs["a"] / "metrics.json").read_text())
    assert v1["version_number"] == 1 and v1["parent_version"] == v0["model_version"] != v1["model_version"]
    assert v1["train_window_s"] == [64800.0, 68400.0] and v1["trained_until_s"] == 68400.0 and v1["eval_window_s"] == [68400.0, 72000.0]
    assert {"gauc", "parent_gauc", "oracle_gauc", "train_requests"} <= set(v1)
    assert json.loads((outs["b"] / "metrics.json").read_text())["model_version"] == v1["model_version"]  # deterministic
    assert json.loads((outs["c"] / "metrics.json").read_text())["model_version"] != v1["model_version"]  # another seed
    loaded = load_checkpoint(outs["a"] / "checkpoint.pt")
    assert (loaded.version_number, loaded.trained_until_s, loaded.parent_version) == (1, 68400.0, v0["model_version"])
    v2 = tmp_path / "v2"
    assert (
        run(
            "train",
            "--continue-from",
            str(outs["a"] / "checkpoint.pt"),
            "--requests",
            "32",
            "--epochs",
            "1",
            "--window-s",
            "1800",
            "--out",
            str(v2),
        )
        == 0
    )
    second = json.loads((v2 / "metrics.json").read_text())
    assert second["version_number"] == 2 and second["train_window_s"] == [68400.0, 70200.0]
    lagged = tmp_path / "lag"
    assert run("evaluate", "--checkpoint", str(v2 / "checkpoint.pt"), "--out", str(lagged)) == 0
    assert json.loads((lagged / "metrics.json").read_text())["gauc"] == second["gauc"]  # evaluated on the same held-out window
    with pytest.raises(InputError, match="--preset: not with --continue-from"):
        run("train", "--continue-from", str(base / "checkpoint.pt"), "--preset", "tiny", "--out", str(tmp_path / "x"))
    with pytest.raises(InputError, match="horizon"):
        run("train", "--continue-from", str(base / "checkpoint.pt"), "--window-s", "100000", "--out", str(tmp_path / "x"))
    with pytest.raises(InputError, match="--window-s: only with --continue-from"):
        run("train", "--model", "aif", "--window-s", "60", "--out", str(tmp_path / "x"))
    with pytest.raises(InputError, match="--model: required"):
        run("train", "--out", str(tmp_path / "x"))


def test_input_errors_name_the_argument(tmp_path):
    with pytest.raises(InputError, match="checkpoint: file not found"):
        run("evaluate", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path))
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    with pytest.raises(InputError, match="bad.pt: checkpoint: not a valid"):
        run("evaluate", "--checkpoint", str(tmp_path / "bad.pt"), "--out", str(tmp_path))
    with pytest.raises(InputError, match="--item-lag-s"):
        run("evaluate", "--checkpoint", str(tmp_path / "bad.pt"), "--item-lag-s", "-1", "--out", str(tmp_path))
    with pytest.raises(InputError, match="--values"):
        run("sweep-model", "--param", "bridges", "--values", "1,x", "--out", str(tmp_path))


def test_calibrate_cuda_without_cuda_is_a_one_line_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(InputError, match="--device: cuda: CUDA is not available") as err:
        run("calibrate", "--device", "cuda", "--out", str(tmp_path / "p.json"))
    assert "\n" not in str(err.value)


def test_profile_format_and_every_operator_grows_with_its_candidates():
    profile = calibrate(preset("tiny", 0), "cpu", quick=True, batches=(1, 4), candidates=(10, 3000))
    assert set(profile) == {"hardware", "torch", "threads", "device", "ops"}
    assert profile["threads"] == 1 and profile["device"] == "cpu"
    by_candidates = {"realtime", "aif_online", "sequential_prerank", "light_prerank", "lsh_popcount", "dense_similarity"}
    assert set(profile["ops"]) == {"user_side", "item_side"} | by_candidates
    for op, points in profile["ops"].items():
        key = "batch" if op in ("user_side", "item_side") else "candidates"
        assert [p[key] for p in points] == sorted(p[key] for p in points)
        for p in points:
            assert set(p) == {key, "median_ms", "p99_ms"} and 0 < p["median_ms"] <= p["p99_ms"]
        if op in by_candidates:
            assert points[0]["median_ms"] < points[-1]["median_ms"], op
