"""Held-out metrics computed with scikit-learn (no hand-written formulas)."""

from __future__ import annotations

import numpy as np


def classification_metrics(y: np.ndarray, proba: np.ndarray, prefix: str) -> dict[str, float]:
    from sklearn import metrics as m

    pred = proba.argmax(axis=1)
    labels = list(range(proba.shape[1]))
    out = {
        "accuracy": m.accuracy_score(y, pred),
        "log_loss": m.log_loss(y, np.clip(proba, 1e-7, 1), labels=labels),
    }
    if proba.shape[1] == 2:
        out |= {"f1": m.f1_score(y, pred), "precision": m.precision_score(y, pred, zero_division=0),
                "recall": m.recall_score(y, pred, zero_division=0)}
        if len(np.unique(y)) == 2:
            out["auroc"] = m.roc_auc_score(y, proba[:, 1])
    else:
        out |= {"f1_macro": m.f1_score(y, pred, average="macro"),
                "f1_weighted": m.f1_score(y, pred, average="weighted")}
        if len(np.unique(y)) == proba.shape[1]:
            out["auroc"] = m.roc_auc_score(y, proba, multi_class="ovr", labels=labels)
    return {f"{prefix}/{k}": float(v) for k, v in out.items()}


def regression_metrics(y: np.ndarray, pred: np.ndarray, prefix: str) -> dict[str, float]:
    from sklearn import metrics as m

    out = {
        "rmse": float(np.sqrt(m.mean_squared_error(y, pred))),
        "mae": m.mean_absolute_error(y, pred),
        "r2": m.r2_score(y, pred),
    }
    return {f"{prefix}/{k}": float(v) for k, v in out.items()}
