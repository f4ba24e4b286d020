"""Training-report plots (matplotlib, Agg backend): learning curves, confusion matrix, ROC curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(history: dict[str, list[float]], path: Path) -> Path:
    """Training and validation loss and match accuracy per epoch."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = np.arange(1, len(history["loss"]) + 1)
    for key, label in (("loss", "train"), ("val_loss", "validation")):
        if key in history:
            ax_loss.plot(epochs, history[key], marker="o", label=label)
    acc_key = "score_accuracy" if "score_accuracy" in history else "accuracy"
    for key, label in ((acc_key, "train"), ("val_" + acc_key, "validation")):
        if key in history:
            ax_acc.plot(epochs, history[key], marker="o", label=label)
    ax_loss.set(title="loss (weighted, all heads)", xlabel="epoch")
    ax_acc.set(title="match accuracy", xlabel="epoch")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion_matrix(confusion: list[list[int]], path: Path, title: str = "held-out pairs") -> Path:
    """2x2 match confusion matrix ``[[tn, fp], [fn, tp]]`` with counts in the cells."""
    plt = _pyplot()
    matrix = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    labels = ["no match", "match"]
    ax.set_xticks([0, 1], labels)
    ax.set_yticks([0, 1], labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for (row, col), value in np.ndenumerate(matrix):
        colour = "white" if value > matrix.max() / 2 else "black"
        ax.text(col, row, str(value), ha="center", va="center", color=colour)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def roc(labels: np.ndarray, scores: np.ndarray, path: Path) -> Path:
    from digitmatch.model.metrics import roc_auc, roc_curve

    plt = _pyplot()
    fpr, tpr = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(fpr, tpr, label=f"AUC = {roc_auc(labels, scores):.4f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC, held-out pairs")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_training_report(directory: Path, history: dict, raw: dict, threshold: float) -> list[Path]:
    """``learning_curves.png``, ``confusion_matrix.png``, ``roc.png`` in ``directory``."""
    from digitmatch.model.metrics import binary_metrics

    directory = Path(directory)
    confusion = binary_metrics(raw["label"], raw["score"], threshold)["confusion"]
    return [
        learning_curves(history, directory / "learning_curves.png"),
        confusion_matrix(confusion, directory / "confusion_matrix.png"),
        roc(raw["label"], raw["score"], directory / "roc.png"),
    ]
