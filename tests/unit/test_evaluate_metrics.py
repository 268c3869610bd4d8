"""Each metric family against values worked out by hand on tiny inputs (not by calling the same library)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlops.evaluate.metrics import compute_metrics, custom_metric_fns
from mlops.evaluate.scored import Scored
from mlops.recipe.metrics import BINARY, MULTICLASS, REGRESSION
from mlops.recipe.schema import CustomMetricConfig

# 8 rows; positives are rows 0-3. Predicted positive (p >= 0.5): rows 0, 1, 2, 4 -> TP 3, FN 1, FP 1, TN 3
Y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
P1 = np.array([0.9, 0.8, 0.7, 0.4, 0.6, 0.3, 0.2, 0.1])
BIN = Scored("binary", Y, np.c_[1 - P1, P1], ["neg", "pos"])


def test_binary_classification_metrics_match_hand_computed_values() -> None:
    m = compute_metrics(BIN, "test")
    assert set(m) == {f"test/{k}" for k in BINARY}
    assert m["test/accuracy"] == pytest.approx(6 / 8)
    assert m["test/precision"] == pytest.approx(3 / 4) and m["test/recall"] == pytest.approx(3 / 4)
    assert m["test/f1"] == pytest.approx(3 / 4)
    # ranking: of the 16 (positive, negative) pairs only (0.4 vs 0.6) is mis-ordered
    assert m["test/auroc"] == pytest.approx(15 / 16)
    # average precision: precisions at each positive's rank (1, 2, 3, 5): 1, 1, 1, 4/5
    assert m["test/pr_auc"] == pytest.approx((1 + 1 + 1 + 0.8) / 4)
    expected_ll = -np.mean(np.log(np.where(Y == 1, P1, 1 - P1)))
    assert m["test/log_loss"] == pytest.approx(expected_ll)


def test_calibration_error_is_zero_when_confidence_equals_accuracy_and_grows_when_overconfident() -> None:
    # every row predicted positive with p = 0.75 and exactly 3 of 4 are positive: perfectly calibrated
    y = np.array([1, 1, 1, 0] * 5)
    calibrated = Scored("binary", y, np.tile([0.25, 0.75], (20, 1)))
    assert compute_metrics(calibrated)["calibration_error"] == pytest.approx(0.0, abs=1e-6)
    overconfident = Scored("binary", y, np.tile([0.01, 0.99], (20, 1)))
    assert compute_metrics(overconfident)["calibration_error"] == pytest.approx(0.99 - 0.75, abs=1e-6)


def test_multiclass_metrics_macro_and_weighted() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = np.array([[.8, .1, .1], [.2, .7, .1], [.1, .8, .1], [.1, .8, .1], [.1, .1, .8], [.1, .1, .8]])
    m = compute_metrics(Scored("multiclass", y, proba, ["a", "b", "c"]))
    assert set(m) == set(MULTICLASS)
    assert m["accuracy"] == pytest.approx(5 / 6)
    # class a: P 1/1 R 1/2; class b: P 2/3 R 1; class c: P 1 R 1
    assert m["precision_macro"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert m["recall_macro"] == pytest.approx((0.5 + 1 + 1) / 3)
    f1 = [2 * 1 * .5 / 1.5, 2 * (2 / 3) / (5 / 3), 1.0]
    assert m["f1_macro"] == pytest.approx(sum(f1) / 3)
    assert m["f1_weighted"] == pytest.approx(sum(f1) / 3)  # equal supports: weighted == macro here


def test_regression_metrics() -> None:
    y = np.array([1.0, 2.0, 4.0, 8.0])
    pred = np.array([2.0, 2.0, 3.0, 8.0])
    m = compute_metrics(Scored("regression", y, pred), "val")
    assert set(m) == {f"val/{k}" for k in REGRESSION}
    assert m["val/mse"] == pytest.approx((1 + 0 + 1 + 0) / 4)
    assert m["val/rmse"] == pytest.approx(math.sqrt(0.5))
    assert m["val/mae"] == pytest.approx(0.5)
    ss_tot = ((y - y.mean()) ** 2).sum()
    assert m["val/r2"] == pytest.approx(1 - 2.0 / ss_tot)
    assert m["val/mape"] == pytest.approx((1 / 1 + 0 + 1 / 4 + 0) / 4)


def test_metrics_undefined_on_one_class_are_left_out_not_nan() -> None:
    only_positives = BIN.take(np.array([0, 1, 2, 3]))
    m = compute_metrics(only_positives)
    assert "auroc" not in m and "pr_auc" not in m
    assert m["recall"] == pytest.approx(3 / 4)


def test_custom_metric_by_target_gets_labels_or_probabilities() -> None:
    fns = custom_metric_fns({"cost": CustomMetricConfig.model_validate(
        {"_target_": "tests.fixtures.custom_modules.false_negative_cost", "input": "label"})})
    m = compute_metrics(BIN, "test", fns)
    assert m["test/cost"] == pytest.approx((5 * 1 + 1 * 1) / 8)  # one missed positive, one false alarm
    proba_fn = custom_metric_fns({"mean_p": CustomMetricConfig.model_validate(
        {"_target_": "tests.fixtures.custom_modules.mean_positive_probability"})})
    assert compute_metrics(BIN, "", proba_fn)["mean_p"] == pytest.approx(P1.mean())
