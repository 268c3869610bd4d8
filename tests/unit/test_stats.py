"""Challenger vs champion tests on simulated models whose true quality is known.

Every simulation is seeded, so each assertion is deterministic; the sample sizes are chosen so that the
expected outcome holds with a wide margin, not by luck of the seed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlops.evaluate.metrics import CLASSIFICATION_FNS, REGRESSION_FNS
from mlops.evaluate.scored import Scored
from mlops.evaluate.stats import compare

ACCURACY = CLASSIFICATION_FNS["accuracy"]
AUROC = CLASSIFICATION_FNS["auroc"]
TESTS = ("paired_bootstrap", "permutation", "mcnemar")


def classifier(y: np.ndarray, accuracy: float, seed: int, n_classes: int = 2) -> Scored:
    """Probabilities of a model that is right on each row with probability `accuracy`."""
    rng = np.random.default_rng(seed)
    n = len(y)
    right = rng.random(n) < accuracy
    pred = np.where(right, y, (y + rng.integers(1, n_classes, n)) % n_classes)
    conf = rng.uniform(0.55, 0.95, n)
    out = np.repeat(((1 - conf) / (n_classes - 1))[:, None], n_classes, axis=1)
    out[np.arange(n), pred] = conf
    return Scored("binary" if n_classes == 2 else "multiclass", y, out)


def ranker(y: np.ndarray, signal: float, seed: int) -> Scored:
    """Binary probabilities whose separation of the classes (AUROC) grows with `signal`."""
    rng = np.random.default_rng(seed)
    p1 = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(size=len(y)))))
    return Scored("binary", y, np.column_stack([1 - p1, p1]))


def labels(n: int, seed: int = 0, n_classes: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_classes, n)


def run(challenger: Scored, champion: Scored, test: str, metric=ACCURACY, **kw) -> dict:
    args = {"higher_is_better": True, "max_drop": 0.0, "alpha": 0.05, "n_resamples": 1000, "seed": 7} | kw
    return compare(metric, challenger, champion, test=test, **args)


@pytest.mark.parametrize("test", TESTS)
def test_same_model_passes_with_zero_difference(test: str) -> None:
    y = labels(300)
    model = classifier(y, 0.8, seed=1)
    result = run(model, model, test)
    assert result["passed"] is True
    assert result["estimate"] == 0.0
    assert result["ci"] == [0.0, 0.0]
    assert result["p_value"] == 1.0
    assert result["n"] == 300


@pytest.mark.parametrize("test", TESTS)
def test_independent_model_of_equal_quality_passes(test: str) -> None:
    y = labels(400)
    result = run(classifier(y, 0.85, seed=11), classifier(y, 0.85, seed=12), test, max_drop=0.02)
    assert result["passed"] is True, result
    assert result["ci"][0] < 0.02 and result["ci"][1] > -0.02  # the interval covers "no difference"


@pytest.mark.parametrize("test", TESTS)
def test_clearly_worse_challenger_fails(test: str) -> None:
    y = labels(400)
    result = run(classifier(y, 0.75, seed=2), classifier(y, 0.95, seed=3), test, max_drop=0.02)
    assert result["passed"] is False, result
    assert result["p_value"] < 0.05
    assert result["estimate"] < -0.1
    assert result["ci"][1] < -0.02
    assert result["challenger"] < result["champion"]


@pytest.mark.parametrize("test", ["paired_bootstrap", "permutation"])
def test_clearly_lower_auroc_fails(test: str) -> None:
    y = labels(400)
    champion, challenger = ranker(y, 2.0, seed=4), ranker(y, 0.4, seed=5)
    result = run(challenger, champion, test, metric=AUROC, max_drop=0.02)
    assert result["challenger"] < result["champion"] - 0.1
    assert result["passed"] is False, result


@pytest.mark.parametrize("test", TESTS)
def test_slightly_worse_within_generous_margin_passes(test: str) -> None:
    y = labels(400)
    result = run(classifier(y, 0.87, seed=21), classifier(y, 0.90, seed=22), test, max_drop=0.10)
    assert result["estimate"] < 0  # truly (slightly) worse ...
    assert result["passed"] is True, result  # ... but within the tolerated drop
    # the same drop against no margin at all is caught on these rows
    clear_drop = run(classifier(y, 0.80, seed=21), classifier(y, 0.90, seed=22), test, max_drop=0.0)
    assert clear_drop["passed"] is False


@pytest.mark.parametrize("test", TESTS)
def test_strict_equal_challenger_shows_non_inferiority(test: str) -> None:
    y = labels(1000)
    result = run(classifier(y, 0.85, seed=31), classifier(y, 0.85, seed=32), test, max_drop=0.05, strict=True)
    assert result["strict"] is True
    assert result["passed"] is True, result
    assert result["p_value"] < 0.05


@pytest.mark.parametrize("test", TESTS)
def test_strict_worse_challenger_fails(test: str) -> None:
    y = labels(1000)
    result = run(classifier(y, 0.75, seed=33), classifier(y, 0.95, seed=34), test, max_drop=0.05, strict=True)
    assert result["passed"] is False, result
    assert result["p_value"] >= 0.05


@pytest.mark.parametrize("test", TESTS)
def test_strict_fails_where_the_default_passes_on_too_little_data(test: str) -> None:
    """Equal quality on 40 rows: nothing shows it worse (default passes) nor not worse (strict fails)."""
    y = labels(40)
    challenger, champion = classifier(y, 0.8, seed=41), classifier(y, 0.8, seed=42)
    assert run(challenger, champion, test, max_drop=0.02)["passed"] is True
    assert run(challenger, champion, test, max_drop=0.02, strict=True)["passed"] is False


@pytest.mark.parametrize("test", TESTS)
def test_strict_same_model_without_margin_cannot_pass(test: str) -> None:
    y = labels(200)
    model = classifier(y, 0.8, seed=1)
    assert run(model, model, test, strict=True)["passed"] is False
    assert run(model, model, test, strict=True, max_drop=0.05)["passed"] is True


def test_lower_is_better_metric_is_oriented() -> None:
    rng = np.random.default_rng(3)
    y = rng.normal(size=400)
    good = Scored("regression", y, y + rng.normal(scale=0.3, size=400))
    bad = Scored("regression", y, y + rng.normal(scale=1.0, size=400))
    mse = REGRESSION_FNS["mse"]
    for test in ("paired_bootstrap", "permutation"):
        worse = run(bad, good, test, metric=mse, higher_is_better=False, max_drop=0.05)
        assert worse["estimate"] > 0.5  # raw difference: the challenger's error is higher
        assert worse["passed"] is False, worse
        better = run(good, bad, test, metric=mse, higher_is_better=False, max_drop=0.0, strict=True)
        assert better["passed"] is True, better


def test_mcnemar_refuses_regression() -> None:
    y = np.linspace(0, 1, 50)
    s = Scored("regression", y, y)
    with pytest.raises(ValueError, match="classification"):
        compare(REGRESSION_FNS["mse"], s, s, test="mcnemar", higher_is_better=False, max_drop=0.0, alpha=0.05,
                n_resamples=100, seed=0)


def test_different_rows_are_refused() -> None:
    a = classifier(labels(100, seed=1), 0.8, seed=1)
    b = classifier(labels(100, seed=2), 0.8, seed=2)
    with pytest.raises(ValueError, match="same rows"):
        run(a, b, "paired_bootstrap")
    with pytest.raises(ValueError, match="same rows"):
        run(a, a.take(np.arange(90)), "paired_bootstrap")
    with pytest.raises(ValueError, match="unknown test"):
        run(a, a, "t_test")


@pytest.mark.parametrize("test", TESTS)
def test_deterministic_given_seed(test: str) -> None:
    y = labels(200)
    a, b = classifier(y, 0.85, seed=51), classifier(y, 0.8, seed=52)
    first, again = run(a, b, test, seed=123), run(a, b, test, seed=123)
    assert first == again
    assert json.loads(json.dumps(first, allow_nan=False)) == first  # plain JSON, no numpy scalars
    assert run(a, b, test, seed=124)["ci"] != first["ci"]  # the seed does drive the resampling


@pytest.mark.parametrize(("metric", "task"), [("accuracy", "multiclass"), ("auroc", "binary"),
                                              ("auroc", "multiclass"), ("mse", "regression"),
                                              ("r2", "regression"), ("mape", "regression")])
@pytest.mark.parametrize("test", ["paired_bootstrap", "permutation"])
def test_vectorised_metrics_match_the_metric_functions(metric: str, task: str, test: str) -> None:
    """Known metrics are resampled in bulk; wrapping one in a lambda forces the per-resample path."""
    if task == "regression":
        rng = np.random.default_rng(5)
        y = rng.normal(size=120)
        a = Scored(task, y, y + rng.normal(scale=0.5, size=120))
        b = Scored(task, y, y + rng.normal(scale=0.7, size=120))
        fn = REGRESSION_FNS[metric]
    else:
        k = 2 if task == "binary" else 3
        y = labels(120, n_classes=k)
        a, b = classifier(y, 0.8, seed=61, n_classes=k), classifier(y, 0.7, seed=62, n_classes=k)
        fn = CLASSIFICATION_FNS[metric]
    fast = run(a, b, test, metric=fn, n_resamples=200, max_drop=0.01)
    slow = run(a, b, test, metric=lambda s: fn(s), n_resamples=200, max_drop=0.01)
    assert fast["p_value"] == slow["p_value"]
    np.testing.assert_allclose(fast["ci"], slow["ci"], rtol=1e-9, atol=1e-12)


def test_resamples_where_the_metric_is_undefined_are_skipped() -> None:
    """AUROC on 12 rows with 2 positives: many resamples lack a positive and are left out, not NaN."""
    y = np.array([1, 1] + [0] * 10)
    a, b = ranker(y, 2.0, seed=1), ranker(y, 1.0, seed=2)
    result = run(a, b, "paired_bootstrap", metric=lambda s: AUROC(s), n_resamples=300)
    assert all(np.isfinite(result["ci"])) and 0 < result["p_value"] <= 1
