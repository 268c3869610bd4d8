"""Slice metrics and fairness reports against values worked out by hand on tiny hand-made data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mlops.core.errors import MlopsError
from mlops.evaluate.fairness import fairness_report
from mlops.evaluate.scored import Scored
from mlops.evaluate.slices import slice_metrics
from mlops.recipe.metrics import BINARY
from mlops.recipe.schema import FairnessConfig, SliceConfig


def binary(y: list[int], pred: list[int]) -> Scored:
    """A binary Scored whose predicted class is `pred` (probability 0.8 on it)."""
    p = np.asarray(pred)
    out = np.where(p[:, None] == 1, [[0.2, 0.8]], [[0.8, 0.2]])
    return Scored("binary", np.asarray(y), out, ["no", "yes"])


# 12 rows: group A is always predicted positive, group B only twice.
Y = [1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0]
PRED = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
FRAME = pd.DataFrame({
    "group": ["A"] * 6 + ["B"] * 6,
    "city": ["x", "x", "y", "y", "y", None, "z", "z", "z", "x", "x", "y"],
    "n": [10.0, 2.0, 1.0] * 4,
    "age": np.arange(1, 13, dtype=float),
})


def by_slice(rows: list[dict]) -> dict[str, dict]:
    return {r["slice"]: r for r in rows}


# --- slices ---------------------------------------------------------------------------------------


def test_one_slice_per_value_with_counts_and_accuracy() -> None:
    rows = slice_metrics(FRAME, binary(Y, PRED), [SliceConfig(column="group")])

    assert [(r["column"], r["slice"], r["count"]) for r in rows] == [("group", "A", 6), ("group", "B", 6)]
    # A: 3 of 6 right (its negatives are all predicted positive); B: 5 of 6 (row 8 missed)
    assert rows[0]["metrics"]["accuracy"] == pytest.approx(3 / 6)
    assert rows[1]["metrics"]["accuracy"] == pytest.approx(5 / 6)
    # B: predicted positives rows 6, 7 are both right; 2 of its 3 positives found
    assert rows[1]["metrics"]["precision"] == pytest.approx(1.0)
    assert rows[1]["metrics"]["recall"] == pytest.approx(2 / 3)
    assert set(rows[0]["metrics"]) == set(BINARY)  # every metric, named without a prefix


def test_values_as_category_strings_sorted_numerically_and_missing_last() -> None:
    rows = slice_metrics(FRAME, binary(Y, PRED), [SliceConfig(column="n"), SliceConfig(column="city")])

    assert [(r["column"], r["slice"], r["count"]) for r in rows] == [
        ("n", "1", 4), ("n", "2", 4), ("n", "10", 4),  # 1.0 -> "1"; "10" after "2"
        ("city", "x", 4), ("city", "y", 4), ("city", "z", 3), ("city", "(missing)", 1),
    ]
    city = by_slice(rows[3:])
    # x: rows 0, 1, 9, 10 all right; y: rows 2, 3, 4, 11 -> 2 right; missing: row 5 wrong
    assert city["x"]["metrics"]["accuracy"] == pytest.approx(1.0)
    assert city["y"]["metrics"]["accuracy"] == pytest.approx(0.5)
    assert city["(missing)"]["metrics"]["accuracy"] == pytest.approx(0.0)


def test_metrics_undefined_on_a_one_class_slice_are_left_out() -> None:
    rows = by_slice(slice_metrics(FRAME, binary(Y, PRED), [SliceConfig(column="city")]))

    z = rows["z"]["metrics"]  # rows 6, 7, 8: positives only
    assert "auroc" not in z and "pr_auc" not in z
    assert z["accuracy"] == pytest.approx(2 / 3)
    assert z["recall"] == pytest.approx(2 / 3)
    assert "auroc" in rows["x"]["metrics"]  # both classes: defined, and here perfectly ranked
    assert rows["x"]["metrics"]["auroc"] == pytest.approx(1.0)


def test_quantile_bins_are_labelled_by_their_edges() -> None:
    rows = slice_metrics(FRAME, binary(Y, PRED), [SliceConfig(column="age", bins=4)])

    # quartiles of 1..12: 1 + 11 * (0.25, 0.5, 0.75) = 3.75, 6.5, 9.25; the last bin is closed
    assert [(r["slice"], r["count"]) for r in rows] == [
        ("[1, 3.75)", 3), ("[3.75, 6.5)", 3), ("[6.5, 9.25)", 3), ("[9.25, 12]", 3),
    ]
    # ages 4-6 are rows 3-5: negatives predicted positive
    assert rows[1]["metrics"]["accuracy"] == pytest.approx(0.0)
    assert rows[2]["metrics"]["accuracy"] == pytest.approx(2 / 3)


def test_explicit_edges_list_every_bin_and_put_the_rest_outside() -> None:
    frame = FRAME.assign(age=[*range(1, 12), None])
    rows = slice_metrics(frame, binary(Y, PRED), [SliceConfig(column="age", bins=[-10, 0, 4, 8])])

    assert [(r["slice"], r["count"]) for r in rows] == [
        ("[-10, 0)", 0), ("[0, 4)", 3), ("[4, 8]", 5), ("(outside)", 3), ("(missing)", 1),
    ]
    assert rows[0]["metrics"] == {}
    assert rows[2]["metrics"]["accuracy"] == pytest.approx(2 / 5)  # ages 4-8 = rows 3-7: rows 6, 7 right


def test_many_valued_numeric_column_gets_four_quantile_bins_by_default() -> None:
    frame = pd.DataFrame({"v": np.arange(24, dtype=float), "w": np.arange(24) % 20})
    scored = binary([0, 1] * 12, [0, 1] * 12)

    rows = slice_metrics(frame, scored, [SliceConfig(column="v"), SliceConfig(column="w")])

    v = [(r["slice"], r["count"]) for r in rows if r["column"] == "v"]
    # 23 * (0.25, 0.5, 0.75) = 5.75, 11.5, 17.25
    assert v == [("[0, 5.75)", 6), ("[5.75, 11.5)", 6), ("[11.5, 17.25)", 6), ("[17.25, 23]", 6)]
    w = [r["slice"] for r in rows if r["column"] == "w"]
    assert w == [str(i) for i in range(20)]  # 20 distinct values: still one slice per value


def test_custom_metric_is_computed_per_slice() -> None:
    def positives(s: Scored) -> float:
        return float(np.sum(s.y))

    rows = slice_metrics(FRAME, binary(Y, PRED), [SliceConfig(column="group")], custom={"positives": positives})

    assert [r["metrics"]["positives"] for r in rows] == [3.0, 3.0]


def test_slice_on_a_missing_column_or_binned_text_is_a_user_error() -> None:
    with pytest.raises(MlopsError, match="'nope' is not in the test data"):
        slice_metrics(FRAME, binary(Y, PRED), [SliceConfig(column="nope")])
    with pytest.raises(MlopsError, match="'city' has bins but is not numeric"):
        slice_metrics(FRAME, binary(Y, PRED), [SliceConfig(column="city", bins=2)])


# --- fairness -------------------------------------------------------------------------------------


def test_disparity_of_a_predictor_that_favours_one_group() -> None:
    report = fairness_report(FRAME, binary(Y, PRED), FairnessConfig(sensitive=["group"]))

    g = report["group"]
    assert g["positive_label"] == "yes"
    assert g["groups"] == [
        # A: all 6 selected; TPR 3/3, FPR 3/3, 3 of 6 right
        {"group": "A", "count": 6, "selection_rate": 1.0, "true_positive_rate": 1.0,
         "false_positive_rate": 1.0, "accuracy": 0.5},
        # B: 2 of 6 selected, both positives; TPR 2/3, FPR 0/3, 5 of 6 right
        {"group": "B", "count": 6, "selection_rate": pytest.approx(1 / 3), "true_positive_rate": pytest.approx(2 / 3),
         "false_positive_rate": 0.0, "accuracy": pytest.approx(5 / 6)},
    ]
    assert g["demographic_parity_diff"] == pytest.approx(1 - 1 / 3)
    assert g["demographic_parity_ratio"] == pytest.approx((1 / 3) / 1)
    assert g["equal_opportunity_diff"] == pytest.approx(1 - 2 / 3)
    assert g["equalized_odds_diff"] == pytest.approx(max(1 - 2 / 3, 1 - 0))


def test_equalized_odds_matches_fairlearn_when_every_group_has_both_classes() -> None:
    from fairlearn.metrics import equalized_odds_difference

    pred = [1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0]
    report = fairness_report(FRAME, binary(Y, pred), FairnessConfig(sensitive=["group"]))

    y_true, y_pred = np.asarray(Y) == 1, np.asarray(pred) == 1
    expected = equalized_odds_difference(y_true, y_pred, sensitive_features=FRAME["group"])
    # by hand: TPR A 2/3, B 3/3 (differ by 1/3); FPR A 0/3, B 2/3 (differ by 2/3): the larger counts
    assert report["group"]["equal_opportunity_diff"] == pytest.approx(1 / 3)
    assert report["group"]["equalized_odds_diff"] == pytest.approx(2 / 3)
    assert report["group"]["equalized_odds_diff"] == pytest.approx(float(expected))


def test_a_perfectly_fair_predictor() -> None:
    report = fairness_report(FRAME, binary(Y, Y), FairnessConfig(sensitive=["group"]))

    g = report["group"]
    assert [grp["selection_rate"] for grp in g["groups"]] == [0.5, 0.5]
    assert g["demographic_parity_diff"] == 0.0
    assert g["demographic_parity_ratio"] == 1.0
    assert g["equal_opportunity_diff"] == 0.0
    assert g["equalized_odds_diff"] == 0.0


def test_a_group_without_positives_has_no_true_positive_rate_and_does_not_count_in_equal_opportunity() -> None:
    from fairlearn.metrics import equal_opportunity_difference

    frame = pd.DataFrame({"group": ["A"] * 6 + ["B"] * 6 + ["C"] * 3})
    y, pred = [*Y, 0, 0, 0], [*PRED, 0, 0, 0]
    report = fairness_report(frame, binary(y, pred), FairnessConfig(sensitive=["group"]))

    g = report["group"]
    c = g["groups"][2]
    assert c == {"group": "C", "count": 3, "selection_rate": 0.0, "true_positive_rate": None,
                 "false_positive_rate": 0.0, "accuracy": 1.0}
    assert g["equal_opportunity_diff"] == pytest.approx(1 - 2 / 3)  # A vs B only
    # fairlearn alone would score C's missing TPR as 0: the exclusion is what makes the value 1/3
    raw = equal_opportunity_difference(np.asarray(y) == 1, np.asarray(pred) == 1, sensitive_features=frame["group"])
    assert raw == pytest.approx(1.0)
    assert g["demographic_parity_diff"] == pytest.approx(1.0)  # A selects all, C none
    assert g["demographic_parity_ratio"] == pytest.approx(0.0)
    assert g["equalized_odds_diff"] == pytest.approx(1.0)  # FPR A 1 vs B, C 0
    json.dumps(report, allow_nan=False)  # None, not NaN; Python floats only


def test_numeric_sensitive_columns_are_binned_above_ten_values_and_kept_below() -> None:
    report = fairness_report(FRAME, binary(Y, PRED), FairnessConfig(sensitive=["age", "n"], bins=2))

    assert [(g["group"], g["count"]) for g in report["age"]["groups"]] == [("[1, 6.5)", 6), ("[6.5, 12]", 6)]
    assert report["age"]["demographic_parity_diff"] == pytest.approx(1 - 1 / 3)  # ages split exactly as A, B
    assert [(g["group"], g["count"]) for g in report["n"]["groups"]] == [("1", 4), ("2", 4), ("10", 4)]
    json.dumps(report, allow_nan=False)


def test_multiclass_reduces_to_the_positive_label_and_reports_real_accuracy() -> None:
    y, pred = np.array([1, 1, 0, 1, 2, 2]), np.array([1, 1, 1, 2, 0, 2])
    out = np.eye(3)[pred] * 0.7 + 0.1
    scored = Scored("multiclass", y, out, ["a", "b", "c"])
    frame = pd.DataFrame({"group": ["A"] * 3 + ["B"] * 3})

    g = fairness_report(frame, scored, FairnessConfig(sensitive=["group"], positive_label="b"))["group"]

    # "b" or not: A y [1,1,0] pred [1,1,1]; B y [1,0,0] pred [0,0,0]
    assert g["positive_label"] == "b"
    assert [grp["selection_rate"] for grp in g["groups"]] == [1.0, 0.0]
    assert [grp["true_positive_rate"] for grp in g["groups"]] == [1.0, 0.0]
    assert [grp["false_positive_rate"] for grp in g["groups"]] == [1.0, 0.0]
    # accuracy over a/b/c: A 2 of 3 right, B only the last row (the reduction alone would say 2/3)
    assert [grp["accuracy"] for grp in g["groups"]] == [pytest.approx(2 / 3), pytest.approx(1 / 3)]
    assert (g["demographic_parity_diff"], g["demographic_parity_ratio"]) == (1.0, 0.0)
    assert (g["equal_opportunity_diff"], g["equalized_odds_diff"]) == (1.0, 1.0)


def test_positive_label_picks_the_class_in_a_binary_task() -> None:
    g = fairness_report(FRAME, binary(Y, PRED), FairnessConfig(sensitive=["group"], positive_label="no"))["group"]

    # "no" is favourable now: A selects nobody "no", B selects 4 of 6 "no"
    assert g["positive_label"] == "no"
    assert [grp["selection_rate"] for grp in g["groups"]] == [0.0, pytest.approx(4 / 6)]
    assert g["demographic_parity_diff"] == pytest.approx(4 / 6)


def test_fairness_errors_a_user_can_fix() -> None:
    regression = Scored("regression", np.arange(12.0), np.arange(12.0))
    with pytest.raises(MlopsError, match="fairness needs a classifier"):
        fairness_report(FRAME, regression, FairnessConfig(sensitive=["group"]))

    multiclass = Scored("multiclass", np.array([0, 1, 2] * 4), np.eye(3)[[0, 1, 2] * 4], ["a", "b", "c"])
    with pytest.raises(MlopsError, match=r"set evaluate\.fairness\.positive_label to one of a, b, c"):
        fairness_report(FRAME, multiclass, FairnessConfig(sensitive=["group"]))

    with pytest.raises(MlopsError, match=r"'maybe' is not a class of the model \(classes: no, yes\)"):
        fairness_report(FRAME, binary(Y, PRED), FairnessConfig(sensitive=["group"], positive_label="maybe"))

    with pytest.raises(MlopsError, match="'gender'"):
        fairness_report(FRAME, binary(Y, PRED), FairnessConfig(sensitive=["group", "gender"]))
