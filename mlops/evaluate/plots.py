"""PNG plots logged with each run: a confusion matrix or a residual plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix_png(y: np.ndarray, pred: np.ndarray, labels: list[str], path: Path) -> Path:
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4 + 0.3 * len(labels), 4 + 0.3 * len(labels)))
    ConfusionMatrixDisplay.from_predictions(y, pred, labels=list(range(len(labels))), display_labels=labels, ax=ax,
                                            colorbar=False)
    ax.set_title("test confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def residual_png(y: np.ndarray, pred: np.ndarray, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(pred, y - pred, s=8, alpha=0.6)
    ax.axhline(0, color="grey", lw=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual - predicted")
    ax.set_title("test residuals")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
