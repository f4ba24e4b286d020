"""The numpy metrics against definitions computed the slow, obvious way."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from digitmatch.model.metrics import binary_metrics, digit_accuracy, digit_confusion, roc_auc, roc_curve


def _pairwise_auc(labels, scores):
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=2, max_size=60))
def test_roc_auc_equals_pairwise_definition_with_ties(rows):
    labels = np.array([r[0] for r in rows])
    scores = np.array([r[1] for r in rows], dtype=float) / 6
    if labels.min() == labels.max():
        assert np.isnan(roc_auc(labels, scores))
    else:
        assert roc_auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores))


def test_roc_curve_ends_and_area():
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    fpr, tpr = roc_curve(labels, scores)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(labels, scores))


def test_binary_metrics_confusion_and_rates():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    scores = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.4, 0.05])
    m = binary_metrics(labels, scores, threshold=0.5)
    assert m["confusion"] == [[4, 1], [1, 2]]
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["pairs"] == 8 and m["matches"] == 3


def test_digit_accuracy_and_confusion():
    probs = np.eye(10)[[1, 2, 3, 3]]
    digits = np.array([1, 2, 3, 4])
    assert digit_accuracy(probs, digits) == 0.75
    confusion = np.array(digit_confusion(probs, digits))
    assert confusion.sum() == 4 and confusion[4, 3] == 1 and confusion[3, 3] == 1
