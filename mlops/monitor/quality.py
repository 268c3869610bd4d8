"""Live model quality from ground truth joined by prediction id: the same metric functions as the test
metrics recorded at training time (so a drop is a drop, not a change of definition), a confusion matrix,
error rates per class and per value of each categorical input, and calibration."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from mlops.evaluate.metrics import CLASSIFICATION_FNS, REGRESSION_FNS
from mlops.evaluate.scored import Scored
from mlops.monitor.logstream import Rows
from mlops.recipe.monitor import LIVE_METRICS

SLICE_VALUES = 10  # most frequent values per categorical column in "errors by slice"


def live_quality(rows: Rows, task: str, labels: list[str] | None) -> dict[str, Any]:
    if task == "regression":
        return _regression(rows)
    return _classification(rows, task, labels or [])


def _classification(rows: Rows, task: str, labels: list[str]) -> dict[str, Any]:
    truth = rows.truth_label if rows.truth_label is not None else np.full(len(rows), None, dtype=object)
    index = {name: i for i, name in enumerate(labels)}
    has = np.fromiter((t is not None for t in truth), bool, len(rows))
    known = np.fromiter((t in index for t in truth), bool, len(rows))
    out: dict[str, Any] = {"labelled": int(has.sum()), "unknown_labels": int((has & ~known).sum()),
                           "label_coverage": float(has.mean()) if len(rows) else 0.0, "metrics": {}}
    sel = known & (rows.proba is not None)
    if not sel.any() or rows.proba is None:
        return out
    y = np.fromiter((index[t] for t in truth[sel]), np.int64, int(sel.sum()))
    scored = Scored(task, y, rows.proba[sel], labels)
    pred = scored.pred
    for name in LIVE_METRICS[task]:
        value = _ece(scored.out, y) if name == "calibration_error" else CLASSIFICATION_FNS[name](scored)
        if np.isfinite(value):
            out["metrics"][name] = float(value)
    k = len(labels)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    out["confusion"] = {"labels": labels, "matrix": confusion.tolist()}  # rows: true class; columns: predicted
    per_class = confusion.sum(axis=1)
    out["error_rate_by_class"] = {labels[i]: float(1 - confusion[i, i] / per_class[i])
                                  for i in range(k) if per_class[i]}
    wrong = pred != y
    slices: dict[str, dict[str, dict[str, float]]] = {}
    for name, values in rows.categorical.items():
        vals = values[sel]
        top = Counter(v for v in vals.tolist() if v is not None).most_common(SLICE_VALUES)
        slices[name] = {str(v): {"rows": int(c), "error_rate": float(wrong[vals == v].mean())} for v, c in top}
    out["errors_by_slice"] = slices
    return out


def _ece(proba: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error as the training-time metric computes it (torchmetrics, 15 equal-width bins,
    L1): of the positive class's probability for a binary model, of the top class otherwise."""
    if proba.shape[1] == 2:
        confidence, hit = proba[:, 1], (y == 1).astype(np.float64)
    else:
        confidence, hit = proba.max(axis=1), (proba.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            total += in_bin.mean() * abs(hit[in_bin].mean() - confidence[in_bin].mean())
    return float(total)


def _regression(rows: Rows) -> dict[str, Any]:
    truth = rows.truth_value if rows.truth_value is not None else np.full(len(rows), np.nan)
    pred = rows.prediction if rows.prediction is not None else np.full(len(rows), np.nan)
    sel = np.isfinite(truth) & np.isfinite(pred)
    out: dict[str, Any] = {"labelled": int(np.isfinite(truth).sum()), "unknown_labels": 0,
                           "label_coverage": float(np.isfinite(truth).mean()) if len(rows) else 0.0, "metrics": {}}
    if not sel.any():
        return out
    scored = Scored("regression", truth[sel], pred[sel])
    for name in LIVE_METRICS["regression"]:
        value = REGRESSION_FNS[name](scored)
        if np.isfinite(value):
            out["metrics"][name] = float(value)
    err = np.abs(pred[sel] - truth[sel])
    slices: dict[str, dict[str, dict[str, float]]] = {}
    for name, values in rows.categorical.items():
        vals = values[sel]
        top = Counter(v for v in vals.tolist() if v is not None).most_common(SLICE_VALUES)
        slices[name] = {str(v): {"rows": int(c), "mae": float(err[vals == v].mean())} for v, c in top}
    out["errors_by_slice"] = slices
    return out
