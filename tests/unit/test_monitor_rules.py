"""Hysteresis of the alert rules: consecutive breaching windows before firing, cooldown, resolution, and
windows no rule could judge."""

from __future__ import annotations

from typing import Any

import numpy as np

from mlops.monitor.drift import NumericReference, dataset_drift, numeric_drift
from mlops.monitor.results import WindowSummary
from mlops.monitor.rules import Observation, RuleState, observe, step
from mlops.recipe.monitor import MonitorConfig

HOUR = 3600.0


def _run(breaches: list[bool | None], consecutive: int = 2, cooldown: float = 6 * HOUR,
         spacing: float = HOUR) -> list[str | None]:
    state = RuleState()
    out = []
    for i, b in enumerate(breaches):
        state, transition = step(state, Observation("drift", 0.0, 0.5, b), (i + 1) * spacing, consecutive, cooldown)
        out.append(transition)
    return out


def test_fires_only_after_consecutive_breaches() -> None:
    assert _run([True, False, True, False, True, True, True]) == [None, None, None, None, None, "fired", None]


def test_fires_once_while_breaching_and_resolves_on_the_first_good_window() -> None:
    assert _run([True, True, True, True, False, False]) == [None, "fired", None, None, "resolved", None]


def test_cooldown_holds_a_second_firing_until_it_has_passed() -> None:
    # fired at hour 2, resolved at hour 3; breaching again at hours 4-6 is within 6 h of hour 2: quiet;
    # at hour 8 (6 h after) it may fire again
    out = _run([True, True, False, True, True, True, True, True])
    assert out == [None, "fired", "resolved", None, None, None, None, "fired"]


def test_windows_not_judged_neither_count_nor_reset() -> None:
    assert _run([True, None, True]) == [None, None, "fired"]
    assert _run([True, True, None, False]) == [None, "fired", None, "resolved"]


def test_consecutive_one_fires_on_the_first_breach() -> None:
    assert _run([False, True], consecutive=1) == [None, "fired"]


def _summary(**over: Any) -> WindowSummary:
    base = {"rows": 1000, "judged": True,
            "drift": {"columns": [{"column": "age", "drift": True}, {"column": "city", "drift": False}],
                      "dataset": {"columns": 2, "drifted": 1, "share": 0.5, "drift": True},
                      "predictions": [{"column": "prediction.label", "drift": False}]},
            "schema": {"violation_rate": 0.0, "violating_rows": 0, "problems": [],
                       "missing": {"columns": [], "max_increase": 0.0, "worst_column": "age"}},
            "quality": {"labelled": 10, "metrics": {"accuracy": 0.5}},
            "operations": {"latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 250.0}, "requests": 1000}}
    return WindowSummary(index=0, start_ts=0.0, end_ts=HOUR, start_iso="", end_iso="", start_rowid=1, end_rowid=1000,
                         versions=["1"], **base | over)


def test_observe_judges_each_rule_against_its_threshold() -> None:
    cfg = MonitorConfig.model_validate({"accuracy": {"min_labels": 5}, "latency": {"sla_ms": 100}})
    by_rule = {o.rule: o for o in observe(_summary(), cfg, "binary", {"metric": "accuracy", "value": 0.9,
                                                                     "direction": "higher"})}
    assert by_rule["drift"].breach is True and by_rule["drift"].value == 0.5
    assert by_rule["prediction_drift"].breach is False
    assert by_rule["schema"].breach is False
    assert by_rule["accuracy_drop"].breach is True and abs(by_rule["accuracy_drop"].value - 0.4) < 1e-12
    assert by_rule["latency"].breach is True and by_rule["latency"].value == 250.0
    assert by_rule["error_rate"].breach is None  # no metrics_url


def test_a_small_window_is_judged_by_no_rule() -> None:
    cfg = MonitorConfig()
    obs = observe(_summary(rows=10, judged=False), cfg, "binary", {"metric": "accuracy", "value": 0.9})
    assert all(o.breach is None for o in obs)


def test_a_key_feature_fires_drift_below_the_share() -> None:
    summary = _summary()
    assert summary.drift is not None
    summary.drift["dataset"] |= {"share": 0.5, "drift": False}
    cfg = MonitorConfig.model_validate({"drift": {"share": 0.9}})
    assert next(o for o in observe(summary, cfg, "binary", {}) if o.rule == "drift").breach is False
    cfg = MonitorConfig.model_validate({"drift": {"share": 0.9, "features": {"age": {"key": True}}}})
    drift = next(o for o in observe(summary, cfg, "binary", {}) if o.rule == "drift")
    assert drift.breach is True and drift.detail["key_features"] == ["age"]


def _thirteen_features(shift: float) -> WindowSummary:
    """13 numeric features judged by PSI on 2,000 rows each; only `f0` is shifted by `shift` deviations."""
    rng = np.random.default_rng(0)
    columns = []
    for i in range(13):
        ref = NumericReference.of(rng.normal(size=2000))
        cur = rng.normal(size=2000) + (shift if i == 0 else 0.0)
        columns.append(numeric_drift(f"f{i}", ref, cur, "psi", 0.1))
    summary = _summary()
    summary.drift = {"columns": [c.as_dict() for c in columns], "dataset": dataset_drift(columns, 0.5),
                     "predictions": []}
    return summary


def test_one_severely_drifted_feature_of_thirteen_fires_drift_under_the_default_share() -> None:
    summary = _thirteen_features(shift=1.5)
    assert summary.drift is not None
    assert summary.drift["dataset"]["drift"] is False  # 1 of 13 is far below share 0.5
    f0 = summary.drift["columns"][0]
    assert f0["score"] > 1.0
    drift = next(o for o in observe(summary, MonitorConfig(), "binary", {}) if o.rule == "drift")
    assert drift.breach is True and drift.detail["severe_features"] == ["f0"]
    assert "severe: f0 (psi" in (drift.reason or "")
    # the same window with severity off, or a feature threshold above its score, is judged by the share alone
    off = MonitorConfig.model_validate({"drift": {"severe": {"enabled": False}}})
    assert next(o for o in observe(summary, off, "binary", {}) if o.rule == "drift").breach is False
    high = MonitorConfig.model_validate({"drift": {"features": {"f0": {"severe": 50.0}}}})
    assert next(o for o in observe(summary, high, "binary", {}) if o.rule == "drift").breach is False


def test_a_mild_drift_of_one_feature_is_not_severe() -> None:
    summary = _thirteen_features(shift=0.35)
    assert summary.drift is not None
    f0 = summary.drift["columns"][0]
    assert f0["drift"] and 0.1 <= f0["score"] < 0.25
    drift = next(o for o in observe(summary, MonitorConfig(), "binary", {}) if o.rule == "drift")
    assert drift.breach is False and drift.detail["severe_features"] == []


def test_p_value_methods_have_no_default_severity() -> None:
    cfg = MonitorConfig()
    assert cfg.drift.severe.threshold("ks") is None and cfg.drift.severe.threshold("chi2") is None
    assert cfg.drift.severe.threshold("ks", 1e-9) == 1e-9
