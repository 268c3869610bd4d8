"""Held-out metrics, each computed by scikit-learn or torchmetrics (no hand-written formulas).

A metric is a function of a `Scored` (targets and outputs of the same rows), so the same code scores
the whole test split, one slice of it, or a bootstrap resample.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mlops.core.errors import MlopsError
from mlops.evaluate.scored import Scored
from mlops.recipe.metrics import task_metrics

MetricFn = Callable[[Scored], float]


def _sk() -> Any:
    from sklearn import metrics

    return metrics


def _averaged(fn_name: str, average: str | None) -> MetricFn:
    def fn(s: Scored) -> float:
        labels = list(range(s.out.shape[1]))
        kwargs: dict[str, Any] = {"zero_division": 0, "labels": labels}
        kwargs["average"] = "binary" if average is None else average
        if average is None:
            kwargs.pop("labels")
        return float(getattr(_sk(), fn_name)(s.y, s.pred, **kwargs))

    return fn


def _auroc(s: Scored) -> float:
    if len(np.unique(s.y)) < 2:
        return float("nan")  # undefined on one class (a small slice)
    if s.out.shape[1] == 2:
        return float(_sk().roc_auc_score(s.y, s.out[:, 1]))
    if len(np.unique(s.y)) < s.out.shape[1]:
        return float("nan")
    return float(_sk().roc_auc_score(s.y, s.out, multi_class="ovr", labels=list(range(s.out.shape[1]))))


def _pr_auc(s: Scored) -> float:
    if len(np.unique(s.y)) < 2:
        return float("nan")
    if s.out.shape[1] == 2:
        return float(_sk().average_precision_score(s.y, s.out[:, 1]))
    onehot = np.eye(s.out.shape[1])[s.y]
    present = onehot.sum(axis=0) > 0  # macro over the classes that occur
    return float(_sk().average_precision_score(onehot[:, present], s.out[:, present], average="macro"))


def _log_loss(s: Scored) -> float:
    proba = np.clip(s.out, 1e-7, 1)
    return float(_sk().log_loss(s.y, proba / proba.sum(axis=1, keepdims=True), labels=list(range(s.out.shape[1]))))


def _calibration_error(s: Scored) -> float:
    """Expected calibration error (15 bins, L1), from torchmetrics."""
    import torch
    from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

    target = torch.from_numpy(np.asarray(s.y, dtype=np.int64))
    proba = torch.from_numpy(np.asarray(s.out, dtype=np.float32))
    if s.out.shape[1] == 2:
        return float(binary_calibration_error(proba[:, 1].contiguous(), target, n_bins=15))
    return float(multiclass_calibration_error(proba, target, num_classes=s.out.shape[1], n_bins=15))


CLASSIFICATION_FNS: dict[str, MetricFn] = {
    "accuracy": lambda s: float(_sk().accuracy_score(s.y, s.pred)),
    "precision": _averaged("precision_score", None),
    "recall": _averaged("recall_score", None),
    "f1": _averaged("f1_score", None),
    **{f"{m}_{avg}": _averaged(f"{m}_score", avg) for m in ("precision", "recall", "f1") for avg in ("macro", "weighted")},
    "auroc": _auroc,
    "pr_auc": _pr_auc,
    "log_loss": _log_loss,
    "calibration_error": _calibration_error,
}
REGRESSION_FNS: dict[str, MetricFn] = {
    "mse": lambda s: float(_sk().mean_squared_error(s.y, s.out)),
    "rmse": lambda s: float(_sk().root_mean_squared_error(s.y, s.out)),
    "mae": lambda s: float(_sk().mean_absolute_error(s.y, s.out)),
    "r2": lambda s: float(_sk().r2_score(s.y, s.out)) if len(s) > 1 else float("nan"),
    "mape": lambda s: float(_sk().mean_absolute_percentage_error(s.y, s.out)),
}


def metric_fns(task: str, custom: dict[str, MetricFn] | None = None) -> dict[str, MetricFn]:
    table = REGRESSION_FNS if task == "regression" else CLASSIFICATION_FNS
    return {name: table[name] for name in task_metrics(task)} | (custom or {})


def compute_metrics(scored: Scored, prefix: str = "", custom: dict[str, MetricFn] | None = None) -> dict[str, float]:
    """Every metric of the task (plus custom ones). Undefined values (one class in a slice) are left out."""
    out = {}
    for name, fn in metric_fns(scored.task, custom).items():
        value = fn(scored)
        if np.isfinite(value):
            out[f"{prefix}/{name}" if prefix else name] = value
    return out


def custom_metric_fns(specs: dict[str, Any]) -> dict[str, MetricFn]:
    """`evaluate.custom_metrics` -> functions of a Scored. The user's function gets (y_true, y_score)."""
    import importlib

    fns: dict[str, MetricFn] = {}
    for name, spec in specs.items():
        module, _, attr = spec.target.rpartition(".")
        try:
            user_fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise MlopsError(f"evaluate.custom_metrics.{name}: cannot import '{spec.target}': {exc}") from None
        fns[name] = _wrap_custom(name, user_fn, spec.input)
    return fns


def _wrap_custom(name: str, user_fn: Callable[..., Any], kind: str) -> MetricFn:
    def fn(s: Scored) -> float:
        y_score = s.pred if kind == "label" else s.out
        value = user_fn(s.y, y_score)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise MlopsError(f"custom metric '{name}' returned {value!r}, not a number") from None

    return fn


def classification_metrics(y: np.ndarray, proba: np.ndarray, prefix: str) -> dict[str, float]:
    task = "binary" if proba.shape[1] == 2 else "multiclass"
    return compute_metrics(Scored(task, y, proba), prefix)


def regression_metrics(y: np.ndarray, pred: np.ndarray, prefix: str) -> dict[str, float]:
    return compute_metrics(Scored("regression", y, pred), prefix)
