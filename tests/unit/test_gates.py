"""Gates: each kind passing and failing, a missing metric never passing, the champion comparison."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops.core.errors import ExpectationError
from mlops.data.expectations import check_expectations, violations
from mlops.evaluate.gates import GateVerdict, evaluate_gates, failure_lines, outcome
from mlops.evaluate.scored import Scored
from mlops.recipe.schema import ExpectationsConfig, Gate

RESULTS = {
    "metrics": {"test/auroc": 0.97, "perf/latency_p99_ms": 3.2, "robustness/failed_checks": 0.0},
    "slices": [{"column": "plan", "slice": "basic", "count": 40, "metrics": {"auroc": 0.81}}],
    "fairness": {"sex": {"demographic_parity_diff": 0.18, "demographic_parity_ratio": 0.7}},
}


def verdict(gate: dict, results: dict = RESULTS, **kw: object) -> GateVerdict:
    return evaluate_gates([Gate.model_validate(gate)], results, kw.get("challenger", {}), kw.get("champion"),  # type: ignore[arg-type]
                          "m/1" if kw.get("champion") else None, {}, {}, seed=0)[0]


@pytest.mark.parametrize(("gate", "status"), [
    ({"metric": "test/auroc", "min": 0.95}, "passed"),
    ({"metric": "test/auroc", "min": 0.98}, "failed"),
    ({"metric": "perf/latency_p99_ms", "max": 5}, "passed"),
    ({"metric": "perf/latency_p99_ms", "max": 3}, "failed"),
    ({"metric": "test/auroc", "min": 0.9, "max": 0.96}, "failed"),
    ({"metric": "fairness/demographic_parity_diff", "max": 0.2, "slice": "sex"}, "passed"),
    ({"metric": "fairness/demographic_parity_diff", "max": 0.1}, "failed"),  # the only sensitive column
    ({"metric": "test/auroc", "min": 0.8, "slice": "plan=basic"}, "passed"),
    ({"metric": "test/auroc", "min": 0.85, "slice": "plan=basic"}, "failed"),
    ({"metric": "robustness/failed_checks", "max": 0}, "passed"),
])
def test_absolute_gates_pass_and_fail_on_their_bounds(gate: dict, status: str) -> None:
    v = verdict(gate)
    assert v.status == status, v
    assert v.value is not None


def test_a_failed_gate_says_which_gate_the_value_and_the_threshold() -> None:
    v = verdict({"metric": "test/auroc", "min": 0.98})
    line = failure_lines([v])[0]
    assert "test/auroc" in line and ">= 0.98" in line and "0.97" in line and "FAILED" in line
    assert outcome([v]) == "failed"


@pytest.mark.parametrize("gate", [
    {"metric": "test/f1", "min": 0.5},  # never computed: an error, not a pass
    {"metric": "test/auroc", "min": 0.5, "slice": "plan=premium"},
    {"metric": "fairness/equal_opportunity_diff", "max": 0.5, "slice": "sex"},
    {"metric": "fairness/demographic_parity_diff", "max": 0.5, "slice": "race"},
])
def test_a_metric_that_is_not_there_is_an_error_and_fails_the_model(gate: dict) -> None:
    v = verdict(gate)
    assert v.status == "error" and v.detail
    assert outcome([v]) == "failed"


def _scored(correct_rate: float, seed: int, n: int = 400) -> Scored:
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], n // 2)
    right = rng.random(n) < correct_rate
    p = np.where(right == (y == 1), 0.8, 0.2) + rng.normal(0, 0.05, n)
    p = np.clip(p, 0.01, 0.99)
    return Scored("binary", y, np.c_[1 - p, p], ["0", "1"])


def test_champion_gate_skips_without_a_champion_and_decides_with_one() -> None:
    gate = {"metric": "test/accuracy", "vs": "champion", "max_drop": 0.01}
    ours = {"test": _scored(0.9, 1)}
    skipped = verdict(gate, challenger=ours)
    assert skipped.status == "skipped" and outcome([skipped]) == "passed"

    same = verdict(gate, challenger=ours, champion={"test": ours["test"]})
    assert same.status == "passed"
    assert same.comparison["estimate"] == 0 and "p =" in same.detail

    better_champion = {"test": _scored(0.99, 2)}
    worse = verdict(gate, challenger=ours, champion=better_champion)
    assert worse.status == "failed"
    lo, hi = worse.comparison["ci"]
    assert hi < 0 and worse.comparison["p_value"] < 0.05


def test_champion_with_other_labels_is_not_comparable() -> None:
    ours = {"test": _scored(0.9, 1)}
    other = Scored("binary", ours["test"].y, ours["test"].out, ["no", "yes"])
    v = verdict({"metric": "test/accuracy", "vs": "champion"}, challenger=ours, champion={"test": other})
    assert v.status == "error" and "not comparable" in v.detail


def test_expectations_name_column_rule_and_rows() -> None:
    frame = pd.DataFrame({"age": [30, -1, 45, None, 200], "plan": ["a", "b", "zz", "a", "a"]})
    cfg = ExpectationsConfig.model_validate({"min_rows": 3, "columns": {
        "age": {"min": 0, "max": 120, "max_missing": 0.1}, "plan": {"allowed": ["a", "b"]}}})
    found = {(v["column"], v["rule"]): v["rows"] for v in violations(frame, cfg)}
    assert found == {("age", "max_missing"): [3], ("age", "min"): [1], ("age", "max"): [4], ("plan", "allowed"): [2]}
    with pytest.raises(ExpectationError) as info:
        check_expectations(frame, cfg, "people.csv")
    message = str(info.value)
    assert "column 'age': min: values below 0 (worst -1); rows (0-based) 1" in message
    assert "column 'plan': allowed" in message and "zz" in message


def test_expectations_that_hold_pass_and_numbers_match_yaml_categories() -> None:
    frame = pd.DataFrame({"code": [1, 2, 1], "x": [0.5, 0.7, 0.9]})
    cfg = ExpectationsConfig.model_validate({"min_rows": 3, "max_rows": 3, "columns": {
        "code": {"allowed": ["1", "2"]}, "x": {"min": 0, "max": 1, "max_missing": 0}}})
    assert check_expectations(frame, cfg, "f.csv") == {"rows": 3, "checked": 4}
    too_few = ExpectationsConfig(min_rows=10)
    assert [v["rule"] for v in violations(frame, too_few)] == ["min_rows"]
