"""The train / evaluate / calibrate commands through argparse, their files and their input errors."""

from __future__ import annotations

import argparse
import json

import pytest

from aif_sim.errors import InputError
from aif_sim.model.commands import register
from aif_sim.model.profile import calibrate
from aif_sim.model.world import preset

METRIC_KEYS = {"model", "auc", "gauc", "hr_at_10", "hr_at_50", "hr_at_100", "logloss", "oracle_auc", "oracle_gauc", "train_seconds"}


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
