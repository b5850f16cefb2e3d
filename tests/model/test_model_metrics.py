"""Ranking metrics against brute-force definitions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from aif_sim.model.evaluate import auc, gauc, gauc_standard_error, hit_rate, logloss, paired_gauc_difference


def brute_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pairs = [(p, n) for p, n in itertools.product(scores[labels == 1], scores[labels == 0])]
    return float(np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs]))


def test_auc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = rng.integers(0, 20, 200).astype(float)
    assert abs(auc(labels, scores) - brute_auc(labels, scores)) < 1e-12
    assert np.isnan(auc(np.ones(5), np.arange(5)))


def test_gauc_weights_users_by_impressions_and_skips_one_class_users():
    groups = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    labels = np.array([1, 0, 0, 0, 1, 0, 1, 1])
    scores = np.array([0.9, 0.1, 0.2, 0.95, 0.1, 0.9, 0.5, 0.5])
    # user 0: AUC 2/3 over 4 impressions; user 1: AUC 0 over 2; user 2 has one class only
    assert abs(gauc(groups, labels, scores) - (4 * (2 / 3) + 2 * 0.0) / 6) < 1e-12


def test_hit_rate_counts_clicks_in_the_top_k_of_each_request():
    labels = np.array([[1, 0, 0, 1], [0, 0, 1, 0]])
    scores = np.array([[0.9, 0.8, 0.1, 0.2], [0.1, 0.2, 0.3, 0.4]])
    assert hit_rate(labels, scores, 1) == 1 / 3
    assert hit_rate(labels, scores, 2) == 2 / 3
    assert hit_rate(labels, scores, 4) == 1.0


def test_logloss_of_perfect_and_uninformed_predictions():
    labels = np.array([1, 0, 1, 0])
    assert logloss(labels, labels.astype(float)) < 1e-6
    assert abs(logloss(labels, np.full(4, 0.5)) - np.log(2)) < 1e-12


def test_gauc_bootstrap_error_matches_the_mann_whitney_null_variance():
    """Scores independent of the labels: each user's AUC has the Mann-Whitney null variance (n1 + n0 + 1) /
    (12 n1 n0), so GAUC's standard error is sqrt(sum w^2 var) / sum w; the cluster bootstrap finds it within 10%,
    and the detectable loss is (z_0.975 + z_0.8) times it."""
    rng = np.random.default_rng(0)
    users, candidates = 600, 100
    groups = np.repeat(np.arange(users), candidates)
    labels = (rng.random(users * candidates) < 0.1).astype(int)
    scores = rng.random(users * candidates)
    n1 = np.bincount(groups, weights=labels)
    n0 = candidates - n1
    both = (n1 > 0) & (n0 > 0)
    variance = (n1 + n0 + 1) / (12 * n1 * n0)
    theory = np.sqrt((candidates**2 * variance[both]).sum()) / (candidates * both.sum())
    assert gauc_standard_error(groups, labels, scores, np.random.default_rng(1)) == pytest.approx(theory, rel=0.1)
    difference = paired_gauc_difference(groups, labels, scores, rng.random(users * candidates), np.random.default_rng(2))
    assert difference["detectable"] == pytest.approx(2.8016 * difference["se"], rel=1e-4)
    assert difference["lo"] < difference["mean"] < difference["hi"]
    same = paired_gauc_difference(groups, labels, scores, scores, np.random.default_rng(3))
    assert same["mean"] == same["lo"] == same["hi"] == same["se"] == 0.0
