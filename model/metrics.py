"""Binary-classification metrics in numpy (no scikit-learn): the numbers ``evaluate`` and
``train`` report."""

from __future__ import annotations

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum (Mann-Whitney U) identity; ties get mean ranks.

    ``nan`` when only one class is present.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # mean rank (1-based) for each run of equal scores
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    mean_rank = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, counts)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) over every distinct threshold, from (0, 0)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last_of_run = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = np.cumsum(y)[last_of_run]
    fp = np.cumsum(~y)[last_of_run]
    tpr = np.r_[0.0, tp / max(int(y.sum()), 1)]
    fpr = np.r_[0.0, fp / max(int((~y).sum()), 1)]
    return fpr, tpr


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict:
    """Accuracy, balanced accuracy, precision, recall, F1, ROC AUC and the confusion matrix
    ``[[tn, fp], [fn, tp]]`` of ``scores >= threshold`` against 0/1 ``labels``."""
    labels = np.asarray(labels).astype(bool)
    predicted = np.asarray(scores) >= threshold
    tp = int(np.sum(predicted & labels))
    tn = int(np.sum(~predicted & ~labels))
    fp = int(np.sum(predicted & ~labels))
    fn = int(np.sum(~predicted & labels))
    recall = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    precision = _ratio(tp, tp + fp)
    return {
        "pairs": int(labels.size),
        "matches": int(labels.sum()),
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, labels.size),
        "balanced_accuracy": (recall + specificity) / 2.0,
        "precision": precision,
        "recall": recall,
        "specificity": specificity,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "roc_auc": roc_auc(labels, scores),
        "confusion": [[tn, fp], [fn, tp]],
    }


def digit_accuracy(probs: np.ndarray, digits: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, axis=1) == np.asarray(digits)))


def digit_confusion(probs: np.ndarray, digits: np.ndarray) -> list[list[int]]:
    """10x10 counts: row = true digit, column = predicted digit."""
    out = np.zeros((10, 10), dtype=np.int64)
    np.add.at(out, (np.asarray(digits), np.argmax(probs, axis=1)), 1)
    return out.tolist()
