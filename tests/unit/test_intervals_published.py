"""The A/B readout's statistics against published worked examples and an independent implementation:
Newcombe (1998) "Interval estimation for the difference between independent proportions" (Stat Med 17:873,
Table II, method 10) and "Two-sided confidence intervals for the single proportion" (Stat Med 17:857,
Table I, method 3); Welch's interval against statsmodels' CompareMeans; the per-arm sample size against
the textbook normal formula."""

from __future__ import annotations

import math
import random
from statistics import NormalDist

import pytest

from mlops.improve.intervals import (
    detectable_effect,
    mean_difference,
    proportion_difference,
    required_per_arm,
    wilson,
)

# (k_b, n_b, k_a, n_a) -> the published 95% interval of p_b - p_a, four decimals
NEWCOMBE_1998_DIFF = [
    ((56, 70, 48, 80), (0.0524, 0.3339)),
    ((9, 10, 3, 10), (0.1705, 0.8090)),
    ((6, 7, 2, 7), (0.0582, 0.8062)),
    ((5, 56, 0, 29), (-0.0381, 0.1926)),
    ((0, 10, 0, 20), (-0.1611, 0.2775)),
    ((0, 10, 0, 10), (-0.2775, 0.2775)),
    ((10, 10, 0, 20), (0.6791, 1.0000)),
    ((10, 10, 0, 10), (0.6075, 1.0000)),
]
NEWCOMBE_1998_SINGLE = [((81, 263), (0.2553, 0.3662)), ((15, 148), (0.0624, 0.1605)), ((0, 20), (0.0, 0.1611)),
                        ((1, 29), (0.0061, 0.1718))]


@pytest.mark.parametrize(("counts", "published"), NEWCOMBE_1998_DIFF)
def test_the_difference_interval_is_newcombes_published_one(counts: tuple[int, int, int, int],
                                                            published: tuple[float, float]) -> None:
    lo, hi = proportion_difference(*counts)["ci"]
    assert (round(lo, 4), round(hi, 4)) == published


@pytest.mark.parametrize(("counts", "published"), NEWCOMBE_1998_SINGLE)
def test_the_wilson_interval_is_the_published_one(counts: tuple[int, int], published: tuple[float, float]) -> None:
    lo, hi = wilson(*counts)
    assert (round(lo, 4), round(hi, 4)) == published


def _z(q: float) -> float:
    return NormalDist().inv_cdf(q)


def _score(k: int, n: int, q: float) -> tuple[float, float]:
    p = k / n
    centre, half = (p + q * q / (2 * n)), q * math.sqrt(p * (1 - p) / n + q * q / (4 * n * n))
    return (centre - half) / (1 + q * q / n), (centre + half) / (1 + q * q / n)


def test_the_intervals_equal_the_closed_forms_and_statsmodels_to_1e9() -> None:
    from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

    rng = random.Random(7)
    for _ in range(200):
        n, m = rng.randint(1, 400), rng.randint(1, 400)
        k, j = rng.randint(0, n), rng.randint(0, m)
        alpha = rng.choice([0.01, 0.05, 0.1])
        # Wilson's score interval written out (Newcombe 1998a, eq. 3), and Newcombe's method 10 from it
        q = _z(1 - alpha / 2)
        (l1, u1), (l2, u2) = _score(k, n, q), _score(j, m, q)
        d = k / n - j / m
        expected = (d - math.sqrt((k / n - l1) ** 2 + (u2 - j / m) ** 2),
                    d + math.sqrt((u1 - k / n) ** 2 + (j / m - l2) ** 2))
        assert proportion_difference(k, n, j, m, alpha)["ci"] == pytest.approx(expected, abs=1e-9)
        assert wilson(k, n, alpha) == pytest.approx((max(l1, 0) if k else 0.0, min(u1, 1) if k < n else 1.0),
                                                    abs=1e-9)
        b = [rng.gauss(1.0, 2.0) for _ in range(rng.randint(2, 60))]
        a = [rng.gauss(0.0, 1.0) for _ in range(rng.randint(2, 60))]
        cm = CompareMeans(DescrStatsW(b), DescrStatsW(a))
        got = mean_difference(b, a, alpha)
        assert got["ci"] == pytest.approx(list(cm.tconfint_diff(alpha=alpha, usevar="unequal")), abs=1e-9)
        assert got["p_value"] == pytest.approx(cm.ttest_ind(usevar="unequal")[1], abs=1e-9)


def test_the_sample_size_is_the_textbook_normal_formula() -> None:
    # sd 1 in both arms, difference 0.5, alpha 0.05, power 0.8: (1.96 + 0.8416)^2 * 2 / 0.25 = 62.8 -> 63
    assert required_per_arm(1.0, 1.0, 0.5, 0.05, 0.8) == 63
    rng = random.Random(3)
    for _ in range(100):
        va, vb, eff = rng.uniform(0.01, 1), rng.uniform(0.01, 1), rng.uniform(0.005, 0.5)
        alpha, power = rng.choice([0.01, 0.05]), rng.choice([0.8, 0.9])
        zz = _z(1 - alpha / 2) + _z(power)
        assert required_per_arm(va, vb, eff, alpha, power) == max(2, math.ceil(zz * zz * (va + vb) / eff ** 2))
        na, nb = rng.randint(2, 5000), rng.randint(2, 5000)
        # the effect detectable now needs exactly the sample we have: the two functions invert each other
        assert detectable_effect(va, vb, na, nb, alpha, power) == pytest.approx(
            zz * math.sqrt(va / na + vb / nb), rel=1e-9)
    assert detectable_effect(0.2, 0.2, 0, 10, 0.05, 0.8) == math.inf
