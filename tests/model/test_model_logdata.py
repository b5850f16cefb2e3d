"""An interaction log as the models' world: features strictly from the past, sampled-negative requests, bad input
refused in one line, train / evaluate / sweep-model on a log, and MovieLens 100K read in place (with the extra)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest

from aif_sim.cli import main
from aif_sim.model.logdata import MOVIELENS_100K, POPULARITY_WINDOW_S, LogConfig, LogWorld, read_log

DAY = 86400.0


def _log(seed: int = 0, users: int = 40, items: int = 300, rows: int = 4000) -> pd.DataFrame:
    """A small log: Zipf-popular items, 60 days, a label that depends on the user's taste (even or odd items)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, items + 1)
    frame = pd.DataFrame(
        {
            "user": rng.integers(0, users, rows),
            "item": rng.choice(items, rows, p=weights / weights.sum()),
            "timestamp": np.sort(rng.uniform(0, 60 * DAY, rows)).round(),
        }
    )
    likes = (frame["item"] % 2) == (frame["user"] % 2)
    frame["label"] = (rng.random(rows) < np.where(likes, 0.7, 0.1)).astype(int)
    frame["category"] = frame["item"] % 5
    return frame


@pytest.fixture(scope="module")
def log_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("log") / "log.csv"
    _log().to_csv(path, index=False)
    return path


def test_features_come_from_the_log_strictly_before_each_moment(log_file):
    frame = read_log(str(log_file))
    world = LogWorld(LogConfig(data=str(log_file), short_len=5, long_len=8))
    times = frame["timestamp"].to_numpy() - frame["timestamp"].iloc[0]
    items = pd.factorize(frame["item"], sort=True)[0]
    users = pd.factorize(frame["user"], sort=True)[0]
    for row in (100, 2000, 3999):
        t, item, user = times[row], items[row], users[row]
        seen = (items == item) & (times < t) & (times >= t - POPULARITY_WINDOW_S)
        assert world.popularity(np.array([item]), t)[0] == seen.sum()  # the interaction at t itself not counted
        history = items[(users == user) & (times < t)]
        expected = np.concatenate([np.full(max(0, 5 - len(history)), world.cfg.n_items), history[-5:]])
        np.testing.assert_array_equal(world._history(np.array([user]), t, 5)[0], expected)
    features = world.user_features(users[:3], times[:3])
    assert features.long_mm.shape == (3, 8, world.cfg.mm_dim) and not features.long_mm[0].any()  # no history at the start
    assert world.cfg.n_categories == 5 and world.cfg.n_brands == 1  # category given, brand absent: one bucket


def test_requests_are_positives_with_distinct_popular_negatives(log_file):
    world = LogWorld(LogConfig(data=str(log_file), candidates=50))
    train, test = world.requests("train"), world.requests("test")
    assert train.times.max() < world.cfg.train_end_s <= test.times.min()
    for requests in (train, test):
        assert (requests.labels[:, 0] == 1).all() and requests.labels[:, 1:].sum() == 0
        assert all(len(np.unique(row)) == 50 for row in requests.items)
        assert not np.isfinite(requests.probs).any()  # a log has no true click probabilities
    negatives = test.items[:, 1:].ravel()
    popular = np.argsort(-world.popularity(np.arange(world.cfg.n_items), world.cfg.train_end_s))[: world.cfg.n_items // 10]
    assert np.isin(negatives, popular).mean() > 0.2  # drawn by popularity: the top tenth gives far more than a tenth


def test_train_evaluate_and_model_age_on_a_log(log_file, tmp_path):
    out = tmp_path / "aif"
    assert main(["train", "--model", "aif", "--data", str(log_file), "--epochs", "2", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["gauc"] > 0.6 and "oracle_gauc" not in metrics  # the taste in the labels is learnable
    again = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--data", str(log_file), "--out", str(again)]) == 0
    assert json.loads((again / "metrics.json").read_text())["gauc"] == metrics["gauc"]
    sweep = tmp_path / "age"
    args = ["sweep-model", "--param", "model_age", "--checkpoint", str(out / "checkpoint.pt"), "--values", "0,86400", "--out", str(sweep)]
    assert main(args) == 0
    rows = pd.read_csv(sweep / "sweep.csv")
    assert list(rows["model_age_s"]) == [0, 86400] and (rows["requests"] > 0).all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns="label"), "column label: missing"),
        (lambda f: f.iloc[::-1], "column timestamp: data row 2 is earlier than the row before it"),
        (lambda f: f.assign(label=f["label"] * 2), "column label: expected 0 or 1"),
        (lambda f: f.assign(gender=3), "column gender: expected integers from 0 to 1"),
    ],
)
def test_bad_logs_are_refused_in_one_line(tmp_path, capsys, change, message):
    path = tmp_path / "bad.csv"
    change(_log(rows=500)).to_csv(path, index=False)
    out = tmp_path / "out"
    assert main(["train", "--model", "aif", "--data", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{path}: {message}" in err and len(err.splitlines()) == 1 and not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("neighbors") is None, reason="MovieLens 100K needs the optional extra aif-sim[movielens]")
def test_movielens_100k_is_read_in_place():
    """MovieLens 100K's published counts: 100,000 ratings of 1,682 films by 943 users, 55,375 of them 4 or 5."""
    frame = read_log(MOVIELENS_100K)
    assert len(frame) == 100_000 and frame["user"].nunique() == 943 and frame["item"].nunique() == 1682
    assert frame["label"].sum() == 55_375 and frame["timestamp"].is_monotonic_increasing
