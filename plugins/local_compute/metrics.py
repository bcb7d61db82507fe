"""Model quality metrics in numpy (the worker does not depend on scikit-learn)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

EPS = 1e-15


def accuracy(labels: npt.NDArray[Any], proba: npt.NDArray[Any]) -> float:
    """The share of rows whose most probable class is the true one."""
    return float(np.mean(np.argmax(proba, axis=1) == labels))


def log_loss(labels: npt.NDArray[Any], proba: npt.NDArray[Any]) -> float:
    """Mean negative log-likelihood of the true class (probabilities clipped to [1e-15, 1 - 1e-15])."""
    p = np.clip(proba.astype(np.float64), EPS, 1 - EPS)
    p = p / p.sum(axis=1, keepdims=True)
    return float(-np.mean(np.log(p[np.arange(len(labels)), labels])))


def _average_ranks(values: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Ranks from 1, ties sharing the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and ordered[end + 1] == ordered[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def roc_auc(positive: npt.NDArray[Any], score: npt.NDArray[Any]) -> float | None:
    """Area under the ROC curve for a binary problem (the Mann-Whitney U statistic, ties counted half);
    None when only one class is present."""
    positive = positive.astype(bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(np.asarray(score, dtype=np.float64))
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def regression(y: npt.NDArray[Any], prediction: npt.NDArray[Any]) -> dict[str, float]:
    """RMSE, MAE and R² (R² is 0 when the target does not vary)."""
    y = y.astype(np.float64)
    err = prediction.astype(np.float64) - y
    ss_tot = float(np.sum((y - y.mean()) ** 2)) if len(y) else 0.0
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "r2": 1.0 - float(np.sum(err**2)) / ss_tot if ss_tot > 0 else 0.0,
    }


def classification(labels: npt.NDArray[Any], proba: npt.NDArray[Any]) -> dict[str, float]:
    """Accuracy and log loss; ROC AUC too for two classes (the second class is the positive one)."""
    out = {"accuracy": accuracy(labels, proba), "log_loss": log_loss(labels, proba)}
    if proba.shape[1] == 2:
        auc = roc_auc(labels == 1, proba[:, 1])
        if auc is not None:
            out["roc_auc"] = auc
    return out
