"""Group fairness of a classifier over sensitive columns, computed by fairlearn.

The classifier is reduced to "positive class or not": y_true = (y == positive), y_pred = (pred ==
positive). Groups are labelled the way slices are (`mlops.evaluate.slices.slice_labels`), so a group
and the slice of the same rows carry the same name.

Rates that do not exist are None, not NaN (the report is written as JSON): a group's true positive
rate when it has no positives, its false positive rate when it has no negatives. fairlearn would call
those rates 0, which would make a group that merely lacks positives look maximally unfair, so the
equal opportunity and equalized odds differences are taken over the groups where the rates exist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlops.core.errors import MlopsError
from mlops.evaluate.slices import slice_labels

if TYPE_CHECKING:
    from mlops.evaluate.scored import Scored
    from mlops.recipe.schema import FairnessConfig

MAX_GROUPS = 10  # a numeric sensitive column with more distinct values is cut into cfg.bins quantile bins


def fairness_report(frame: pd.DataFrame, scored: Scored, cfg: FairnessConfig) -> dict[str, dict[str, Any]]:
    """Per sensitive column: per-group rates and the four disparity measures.

    {"positive_label", "groups": [{"group", "count", "selection_rate", "true_positive_rate",
    "false_positive_rate", "accuracy"}], "demographic_parity_diff", "demographic_parity_ratio",
    "equal_opportunity_diff", "equalized_odds_diff"}. A disparity that does not exist is None: the
    ratio when no group is ever selected, the equal opportunity difference when no row is positive.
    """
    if not scored.classification:
        raise MlopsError("fairness needs a classifier; this model is a regression (remove evaluate.fairness)")
    if len(frame) != len(scored):
        raise ValueError(f"fairness_report: {len(frame)} frame rows but {len(scored)} scored rows")
    missing = [c for c in cfg.sensitive if c not in frame.columns]
    if missing:
        raise MlopsError(f"evaluate.fairness.sensitive: column(s) {', '.join(map(repr, missing))} not in the "
                         f"test data (columns: {', '.join(map(str, frame.columns))})")
    pos_index, pos_label = _positive(scored, cfg.positive_label)
    y_true = np.asarray(scored.y) == pos_index
    y_pred = np.asarray(scored.pred) == pos_index
    report: dict[str, dict[str, Any]] = {}
    for column in cfg.sensitive:
        groups, order = slice_labels(frame[column], None, max_values=MAX_GROUPS, default_bins=cfg.bins,
                                     column=column)
        present = set(groups.tolist())
        order = [g for g in order if g in present]  # an empty quantile bin is no group
        accuracy = _accuracy(scored, groups)
        report[column] = {"positive_label": pos_label, **_disparities(y_true, y_pred, groups, order, accuracy)}
    return report


def _positive(scored: Scored, positive_label: str | None) -> tuple[int, str]:
    labels = scored.labels
    n_classes = scored.out.shape[1]
    if positive_label is None:
        if scored.task == "multiclass":
            raise MlopsError("fairness on a multiclass model needs the favourable class: set "
                             "evaluate.fairness.positive_label to one of "
                             f"{', '.join(labels or map(str, range(n_classes)))}")
        return 1, labels[1] if labels else "1"
    names = labels if labels is not None else [str(i) for i in range(n_classes)]
    if positive_label not in names:
        raise MlopsError(f"evaluate.fairness.positive_label '{positive_label}' is not a class of the model "
                         f"(classes: {', '.join(names)})")
    return names.index(positive_label), positive_label


def _accuracy(scored: Scored, groups: np.ndarray) -> pd.Series:
    """Per-group accuracy over the model's own classes (for multiclass, not of the positive-or-not reduction)."""
    from fairlearn.metrics import MetricFrame
    from sklearn.metrics import accuracy_score

    return MetricFrame(metrics=accuracy_score, y_true=scored.y, y_pred=scored.pred,
                       sensitive_features=pd.Series(groups, name="group")).by_group


def _disparities(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, order: list[str],
                 accuracy: pd.Series) -> dict[str, Any]:
    from fairlearn.metrics import (
        MetricFrame,
        count,
        demographic_parity_difference,
        demographic_parity_ratio,
        equal_opportunity_difference,
        false_positive_rate,
        false_positive_rate_difference,
        selection_rate,
        true_positive_rate,
    )
    per_group = MetricFrame(
        metrics={"count": count, "selection_rate": selection_rate, "true_positive_rate": true_positive_rate,
                 "false_positive_rate": false_positive_rate},
        y_true=y_true, y_pred=y_pred, sensitive_features=pd.Series(groups, name="group"),
    ).by_group
    positives = pd.Series(y_true).groupby(groups).sum()
    negatives = pd.Series(~y_true).groupby(groups).sum()
    rows = []
    for g in order:
        r = per_group.loc[g]
        rows.append({
            "group": g,
            "count": int(r["count"]),
            "selection_rate": float(r["selection_rate"]),
            "true_positive_rate": float(r["true_positive_rate"]) if positives[g] else None,
            "false_positive_rate": float(r["false_positive_rate"]) if negatives[g] else None,
            "accuracy": float(accuracy[g]),
        })

    # A group's TPR reads only its positive rows and its FPR only its negative rows, so dropping the
    # groups where a rate does not exist leaves every other group's rate as it was.
    with_pos = np.isin(groups, positives.index[positives > 0])
    with_neg = np.isin(groups, negatives.index[negatives > 0])
    tpr_diff = _value(equal_opportunity_difference, y_true, y_pred, groups, with_pos)
    fpr_diff = _value(false_positive_rate_difference, y_true, y_pred, groups, with_neg)
    defined = [d for d in (tpr_diff, fpr_diff) if d is not None]
    everyone = np.ones(len(groups), dtype=bool)
    return {
        "groups": rows,
        "demographic_parity_diff": _value(demographic_parity_difference, y_true, y_pred, groups, everyone),
        "demographic_parity_ratio": _value(demographic_parity_ratio, y_true, y_pred, groups, everyone),
        "equal_opportunity_diff": tpr_diff,
        # fairlearn's equalized_odds_difference (worst case) is the larger of these two differences
        "equalized_odds_diff": max(defined) if defined else None,
    }


def _value(fn: Any, y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, rows: np.ndarray) -> float | None:
    if not rows.any():
        return None
    value = float(fn(y_true[rows], y_pred[rows], sensitive_features=groups[rows]))
    return value if np.isfinite(value) else None
