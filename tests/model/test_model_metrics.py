"""Ranking metrics against brute-force definitions."""

from __future__ import annotations

import itertools

import numpy as np

from aif_sim.model.evaluate import auc, gauc, hit_rate, logloss


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
