"""Ranking metrics (AUC, GAUC, HR@K, logloss), scoring of requests, and the oracle ceiling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from aif_sim.model.sources import DataWorld
from aif_sim.model.train import batch
from aif_sim.model.world import Requests

HIT_RATE_KS = (10, 50, 100)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); nan when only one class is present."""
    labels = np.asarray(labels).ravel().astype(bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores).ravel())
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def gauc(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Impression-weighted mean of per-group AUC over groups that have both classes."""
    groups, labels, scores = (np.asarray(x).ravel() for x in (groups, labels, scores))
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.diff(groups[order])) + 1
    total = weight = 0.0
    for rows in np.split(order, bounds):
        value = auc(labels[rows], scores[rows])
        if not np.isnan(value):
            total += value * len(rows)
            weight += len(rows)
    return total / weight if weight else float("nan")


def hit_rate(labels: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Share of clicked candidates that rank in the top k of their request (labels, scores [R, C])."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    hits = np.take_along_axis(labels, top, axis=1).sum()
    return float(hits / max(labels.sum(), 1))


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities."""
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def ranking_metrics(requests: Requests, probs: np.ndarray, prefix: str = "") -> dict[str, float]:
    """AUC, GAUC (by user), HR@K and logloss of predicted click probabilities [R, C]."""
    labels = requests.labels
    users = np.broadcast_to(requests.users[:, None], labels.shape)
    out = {f"{prefix}auc": auc(labels, probs), f"{prefix}gauc": gauc(users, labels, probs)}
    out.update({f"{prefix}hr_at_{k}": hit_rate(labels, probs, k) for k in HIT_RATE_KS})
    out[f"{prefix}logloss"] = logloss(labels, probs)
    return out


@torch.inference_mode()
def score(
    model: nn.Module, world: DataWorld, requests: Requests, item_lag_s: float = 0.0, batch_requests: int = 32, user_lag_s: float = 0.0
) -> np.ndarray:
    """Click probabilities [R, C]; candidates' item-side inputs are those of `item_lag_s` before each request, the
    users' those of `user_lag_s` before it."""
    out = np.empty(requests.items.shape)
    for start in range(0, len(requests), batch_requests):
        rows = slice(start, start + batch_requests)
        users, items, _ = batch(world, requests.subset(rows), item_lag_s, user_lag_s)
        out[rows] = torch.sigmoid(model(users, items)).double().numpy()
    return out


def evaluate(model: nn.Module, world: DataWorld, requests: Requests, item_lag_s: float = 0.0, user_lag_s: float = 0.0) -> dict[str, float]:
    """The model's metrics, GAUC's standard error (`gauc_se`, by users) and the oracle's metrics (the true click
    probabilities) on the same labels, where the world knows them (a log does not)."""
    probs = score(model, world, requests, item_lag_s, user_lag_s=user_lag_s)
    metrics = ranking_metrics(requests, probs)
    users = np.broadcast_to(requests.users[:, None], requests.labels.shape)
    metrics["gauc_se"] = gauc_standard_error(users, requests.labels, probs, np.random.default_rng(0))
    if np.isfinite(requests.probs).all():
        metrics.update(ranking_metrics(requests, requests.probs, prefix="oracle_"))
    return metrics


def ragged_metrics(groups: Sequence[int], labels: Sequence[np.ndarray], scores: Sequence[np.ndarray], k: int = 100) -> dict[str, float]:
    """AUC, GAUC (by group) and HR@k of requests with any number of candidates each: per request its group (the
    user), labels [C_r] and scores [C_r]. For requests of equal length these are `ranking_metrics`'s values."""
    if not labels:
        return {"auc": float("nan"), "gauc": float("nan"), f"hr_at_{k}": float("nan")}
    flat_labels = np.concatenate([np.asarray(x).ravel() for x in labels])
    flat_scores = np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in scores])
    flat_groups = np.concatenate([np.full(len(x), g) for g, x in zip(groups, labels)])
    hits = sum(int(np.asarray(y)[np.argsort(-np.asarray(p), kind="stable")[:k]].sum()) for y, p in zip(labels, scores))
    return {
        "auc": auc(flat_labels, flat_scores),
        "gauc": gauc(flat_groups, flat_labels, flat_scores),
        f"hr_at_{k}": float(hits / max(int(flat_labels.sum()), 1)),
    }


DETECTABLE_Z = 1.959964 + 0.841621  # two-sided 5% test with 80% power: z_0.975 + z_0.8


def paired_gauc_difference(
    groups: np.ndarray, labels: np.ndarray, first: np.ndarray, second: np.ndarray, rng: np.random.Generator, resamples: int = 2000
) -> dict[str, float]:
    """GAUC(first) - GAUC(second) on the same labels, with its sampling error by a paired cluster bootstrap: the
    groups (users) are resampled with replacement, each with its impressions, and both GAUCs are recomputed on
    the same resample, so the label noise both scorings share cancels. GAUC is the impression-weighted mean of
    per-group AUCs, so the users are the independent units; candidates of one user are not. Returns `mean`, the
    95% percentile interval `lo`, `hi`, the standard error `se` and `detectable`, the smallest true difference
    a two-sided 5% test would find with 80% power ((z_0.975 + z_0.8) * se)."""
    groups, labels, first, second = (np.asarray(x).ravel() for x in (groups, labels, first, second))
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.diff(groups[order])) + 1
    weights, diffs = [], []
    for rows in np.split(order, bounds):
        a, b = auc(labels[rows], first[rows]), auc(labels[rows], second[rows])
        if not np.isnan(a):
            weights.append(len(rows))
            diffs.append(a - b)
    if not weights:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "se": float("nan"), "detectable": float("nan")}
    w, d = np.asarray(weights, dtype=np.float64), np.asarray(diffs)
    counts = rng.multinomial(len(w), np.full(len(w), 1.0 / len(w)), size=resamples).astype(np.float64)
    boot = (counts @ (w * d)) / (counts @ w)
    se = float(boot.std(ddof=1)) if resamples > 1 else float("nan")
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return {"mean": float((w * d).sum() / w.sum()), "lo": float(lo), "hi": float(hi), "se": se, "detectable": DETECTABLE_Z * se}


def gauc_standard_error(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray, rng: np.random.Generator) -> float:
    """The standard error of GAUC by the cluster bootstrap of `paired_gauc_difference`, against a constant score
    (whose AUC is 0.5 in every group, so the difference is GAUC - 0.5 and its error GAUC's)."""
    return paired_gauc_difference(groups, labels, scores, np.zeros(np.shape(scores)), rng)["se"]
