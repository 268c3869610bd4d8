"""Intervals and sample sizes for two independent groups (A/B arms, canary vs champion traffic, error slices).

The paired tests of `mlops.evaluate.stats` need both models scored on the same rows; A/B arms answer
different requests, so their difference is an unpaired one:

* proportions (accuracy, error rate, conversion): Wilson score interval per arm, Newcombe's hybrid score
  interval for the difference (good coverage at small n and near 0 or 1, unlike the Wald interval);
* means (absolute error, revenue): Welch's interval;
* power: the per-arm sample size that detects a difference `min_effect` with probability `power` at level
  `alpha` (two-sided, normal approximation), and the smallest effect the current sample would detect.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

_Z = NormalDist()


def z(q: float) -> float:
    return _Z.inv_cdf(q)


def wilson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Two-sided (1 - alpha) Wilson score interval of a proportion k/n; (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    q = z(1 - alpha / 2)
    p = k / n
    centre = (p + q * q / (2 * n)) / (1 + q * q / n)
    half = q * math.sqrt(p * (1 - p) / n + q * q / (4 * n * n)) / (1 + q * q / n)
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if k == 0 else lo), (1.0 if k == n else hi)  # exact at the ends, not 1e-17 off


def proportion_difference(k_b: int, n_b: int, k_a: int, n_a: int, alpha: float = 0.05) -> dict[str, Any]:
    """p_b - p_a with Newcombe's hybrid score interval and a two-sided z-test p-value (pooled)."""
    if n_a == 0 or n_b == 0:
        raise ValueError(f"both groups need rows (got {n_a} and {n_b})")
    p_a, p_b = k_a / n_a, k_b / n_b
    lo_a, hi_a = wilson(k_a, n_a, alpha)
    lo_b, hi_b = wilson(k_b, n_b, alpha)
    d = p_b - p_a
    lo = d - math.sqrt((p_b - lo_b) ** 2 + (hi_a - p_a) ** 2)
    hi = d + math.sqrt((hi_b - p_b) ** 2 + (p_a - lo_a) ** 2)
    pooled = (k_a + k_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    p_value = 1.0 if se == 0 else 2 * (1 - _Z.cdf(abs(d) / se))
    return {"a": p_a, "b": p_b, "difference": d, "ci": [lo, hi], "p_value": p_value, "n_a": n_a, "n_b": n_b,
            "method": "Newcombe hybrid score interval; pooled two-proportion z-test"}


def mean_difference(b: list[float], a: list[float], alpha: float = 0.05) -> dict[str, Any]:
    """mean(b) - mean(a) with Welch's t interval and p-value."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"both groups need at least 2 rows (got {len(a)} and {len(b)})")
    from scipy import stats

    m_a, m_b = sum(a) / len(a), sum(b) / len(b)
    v_a = sum((x - m_a) ** 2 for x in a) / (len(a) - 1)
    v_b = sum((x - m_b) ** 2 for x in b) / (len(b) - 1)
    se2 = v_a / len(a) + v_b / len(b)
    d = m_b - m_a
    if se2 == 0:
        return {"a": m_a, "b": m_b, "difference": d, "ci": [d, d], "p_value": 1.0 if d == 0 else 0.0,
                "n_a": len(a), "n_b": len(b), "method": "Welch t (no variance)"}
    dof = se2 ** 2 / ((v_a / len(a)) ** 2 / (len(a) - 1) + (v_b / len(b)) ** 2 / (len(b) - 1))
    q = float(stats.t.ppf(1 - alpha / 2, dof))
    se = math.sqrt(se2)
    p_value = float(2 * stats.t.sf(abs(d) / se, dof))
    return {"a": m_a, "b": m_b, "difference": d, "ci": [d - q * se, d + q * se], "p_value": p_value,
            "n_a": len(a), "n_b": len(b), "method": "Welch t interval and test"}


def required_per_arm(variance_a: float, variance_b: float, min_effect: float, alpha: float, power: float) -> int:
    """Rows per arm for a two-sided test at `alpha` to detect `min_effect` with probability `power`."""
    q = z(1 - alpha / 2) + z(power)
    return max(2, math.ceil(q * q * (variance_a + variance_b) / (min_effect * min_effect)))


def detectable_effect(variance_a: float, variance_b: float, n_a: int, n_b: int, alpha: float, power: float) -> float:
    """The smallest difference the current arms detect with probability `power` (two-sided, level `alpha`)."""
    if n_a == 0 or n_b == 0:
        return math.inf
    return (z(1 - alpha / 2) + z(power)) * math.sqrt(variance_a / n_a + variance_b / n_b)
