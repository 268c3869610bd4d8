"""Intervals and sample sizes for two independent groups (A/B arms, canary vs champion traffic, error slices).

The paired tests of `mlops.evaluate.stats` need both models scored on the same rows; A/B arms answer
different requests, so their difference is an unpaired one:

* proportions (accuracy, error rate, conversion): Wilson score interval per arm, Newcombe's hybrid score
  interval for the difference (good coverage at small n and near 0 or 1, unlike the Wald interval);
* means (absolute error, revenue): Welch's interval;
* power: the per-arm sample size that detects a difference `min_effect` with probability `power` at level
  `alpha` (two-sided, normal approximation), and the smallest effect the current sample would detect.

The arithmetic is statsmodels' and scipy's (`proportion_confint`, `confint_proportions_2indep`,
`proportions_ztest`, `ttest_ind`, `normal_sample_size_one_tail`); this module only adapts their edge cases (an empty
group, no variance) and names the results. Both are imported inside the functions: `mlops --help` and the
readout's argument parsing do not pay for them.
"""

from __future__ import annotations

import math
import warnings
from typing import Any


def wilson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Two-sided (1 - alpha) Wilson score interval of a proportion k/n; (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(k, n, alpha=alpha, method="wilson")
    lo, hi = max(0.0, float(lo)), min(1.0, float(hi))
    return (0.0 if k == 0 else lo), (1.0 if k == n else hi)  # exact at the ends, not 1e-17 off


def proportion_difference(k_b: int, n_b: int, k_a: int, n_a: int, alpha: float = 0.05) -> dict[str, Any]:
    """p_b - p_a with Newcombe's hybrid score interval and a two-sided z-test p-value (pooled)."""
    if n_a == 0 or n_b == 0:
        raise ValueError(f"both groups need rows (got {n_a} and {n_b})")
    from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

    p_a, p_b = k_a / n_a, k_b / n_b
    lo, hi = confint_proportions_2indep(k_b, n_b, k_a, n_a, method="newcomb", compare="diff", alpha=alpha)
    pooled = (k_a + k_b) / (n_a + n_b)
    if pooled in (0.0, 1.0):  # every row the same in both arms: no evidence of a difference (statsmodels: nan)
        p_value = 1.0
    else:
        p_value = float(proportions_ztest([k_b, k_a], [n_b, n_a], value=0, alternative="two-sided",
                                          prop_var=False)[1])
    return {"a": p_a, "b": p_b, "difference": p_b - p_a, "ci": [float(lo), float(hi)], "p_value": p_value,
            "n_a": n_a, "n_b": n_b, "method": "Newcombe hybrid score interval; pooled two-proportion z-test"}


def mean_difference(b: list[float], a: list[float], alpha: float = 0.05) -> dict[str, Any]:
    """mean(b) - mean(a) with Welch's t interval and p-value."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"both groups need at least 2 rows (got {len(a)} and {len(b)})")
    import numpy as np
    from scipy import stats

    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    m_a, m_b = float(xa.mean()), float(xb.mean())
    d = m_b - m_a
    if xa.var(ddof=1) == 0 and xb.var(ddof=1) == 0:  # scipy answers nan: the difference is known exactly
        return {"a": m_a, "b": m_b, "difference": d, "ci": [d, d], "p_value": 1.0 if d == 0 else 0.0,
                "n_a": len(a), "n_b": len(b), "method": "Welch t (no variance)"}
    with warnings.catch_warnings():  # one constant arm: scipy warns of precision loss, the result is exact
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(xb, xa, equal_var=False)
    ci = res.confidence_interval(1 - alpha)
    return {"a": m_a, "b": m_b, "difference": d, "ci": [float(ci.low), float(ci.high)],
            "p_value": float(res.pvalue), "n_a": len(a), "n_b": len(b), "method": "Welch t interval and test"}


def required_per_arm(variance_a: float, variance_b: float, min_effect: float, alpha: float, power: float) -> int:
    """Rows per arm for a two-sided test at `alpha` to detect `min_effect` with probability `power`.

    statsmodels' explicit normal sample size (alpha / 2 in one tail: the other tail's power is negligible
    at any useful power, and the closed form needs no root finder, which strays at extreme effects); the
    standard deviation of one row of each arm, so the result is rows per arm."""
    from statsmodels.stats.power import normal_sample_size_one_tail

    n = normal_sample_size_one_tail(abs(min_effect), power, alpha / 2, std_null=math.sqrt(variance_a + variance_b))
    return max(2, math.ceil(float(n)))


def detectable_effect(variance_a: float, variance_b: float, n_a: int, n_b: int, alpha: float, power: float) -> float:
    """The smallest difference the current arms detect with probability `power` (two-sided, level `alpha`)."""
    if n_a == 0 or n_b == 0:
        return math.inf
    from statsmodels.stats.power import normal_sample_size_one_tail

    # the same identity solved for the difference: with the standard error of the difference as the
    # standard deviation, one "row" is the whole sample, so n(diff=1) = mde ** 2
    se = math.sqrt(variance_a / n_a + variance_b / n_b)
    return math.sqrt(float(normal_sample_size_one_tail(1.0, power, alpha / 2, std_null=se)))
