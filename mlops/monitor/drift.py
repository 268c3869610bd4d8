"""The fast path: drift statistics that decide alerts, vectorised with numpy and scipy.

Each method computes exactly what Evidently 0.7's stat test of the same name computes (same binning,
same zero filling, same verdict rule), so a verdict here is the verdict of Evidently's `DataDriftPreset`
for the same method and threshold; `tests/unit/test_monitor_drift.py` checks it method by method.
What makes it fast is what it leaves out (no plots, no correlations, each statistic once) and the
reference prepared once per run (sorted values, category counts), not a different formula.

Method      column kinds            score                             drift when
psi         numeric, categorical    population stability index        score >= threshold (default 0.1)
jensenshannon numeric, categorical  Jensen-Shannon distance (base e)  score >= threshold (default 0.1)
wasserstein numeric                 W1 / std(reference)               score >= threshold (default 0.1)
ks          numeric                 Kolmogorov-Smirnov p-value        p <= threshold (default 0.05)
chi2        categorical             chi-square p-value                p < threshold (default 0.05)

Numeric columns whose reference has at most 20 distinct values are binned per value for psi and
jensenshannon (Evidently's rule); others in Sturges bins over the reference and current together.
Missing and infinite values are left out of every statistic (the schema checks count them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlops.core.errors import MlopsError

NUMERIC_METHODS = ("psi", "ks", "wasserstein", "jensenshannon")
CATEGORICAL_METHODS = ("psi", "jensenshannon", "chi2")
DEFAULT_THRESHOLD = {"psi": 0.1, "ks": 0.05, "wasserstein": 0.1, "jensenshannon": 0.1, "chi2": 0.05}
P_VALUE_METHODS = ("ks", "chi2")
EVIDENTLY_NAME = {"psi": "psi", "ks": "ks", "wasserstein": "wasserstein", "jensenshannon": "jensenshannon",
                  "chi2": "chisquare"}
PER_VALUE_MAX_UNIQUE = 20  # Evidently bins a numeric column per value up to this many reference values


@dataclass
class NumericReference:
    """One numeric column of the reference, prepared once: finite values sorted, distinct values counted."""

    sorted: np.ndarray
    unique: np.ndarray
    unique_counts: np.ndarray
    std: float

    @classmethod
    def of(cls, values: np.ndarray) -> NumericReference:
        finite = np.sort(values[np.isfinite(values)].astype(np.float64))
        unique, counts = np.unique(finite, return_counts=True)
        return cls(finite, unique, counts, float(np.std(finite)) if finite.size else 0.0)

    @property
    def n(self) -> int:
        return int(self.sorted.size)


@dataclass
class CategoricalReference:
    """One categorical column of the reference: its category counts."""

    counts: dict[str, int]
    n: int = field(init=False)

    def __post_init__(self) -> None:
        self.n = int(sum(self.counts.values()))

    @classmethod
    def of(cls, values: np.ndarray) -> CategoricalReference:
        present = np.asarray([v for v in values if v is not None and v == v], dtype=object)  # v == v drops NaN
        cats, counts = np.unique(present.astype(str), return_counts=True) if present.size else ([], [])
        return cls({str(c): int(k) for c, k in zip(cats, counts, strict=True)})


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    kind: str  # numeric | categorical
    method: str
    threshold: float
    score: float | None  # None: no usable value in the window (or in the reference)
    drift: bool | None

    def as_dict(self) -> dict[str, Any]:
        score = None if self.score is None or not np.isfinite(self.score) else float(self.score)
        return {"column": self.column, "kind": self.kind, "method": self.method, "threshold": self.threshold,
                "score": score, "drift": self.drift}


def check_method(method: str, kind: str, column: str) -> None:
    allowed = NUMERIC_METHODS if kind == "numeric" else CATEGORICAL_METHODS
    if method not in allowed:
        raise MlopsError(f"drift method '{method}' does not apply to {kind} column '{column}' "
                         f"(use one of {', '.join(allowed)}; monitor.drift.features.{column}.method)")


def threshold_for(method: str, threshold: float | None) -> float:
    return DEFAULT_THRESHOLD[method] if threshold is None else float(threshold)


def drifted(method: str, score: float, threshold: float) -> bool:
    """Evidently's verdict rule per method: a distance at or above, a p-value at or below (chi2: below)."""
    if method == "ks":
        return bool(score <= threshold)
    if method == "chi2":
        return bool(score < threshold)
    return bool(score >= threshold)


# --- numeric -------------------------------------------------------------------------------------------------


def numeric_drift(column: str, ref: NumericReference, current: np.ndarray, method: str,
                  threshold: float) -> ColumnDrift:
    check_method(method, "numeric", column)
    cur = np.asarray(current, dtype=np.float64)
    cur = cur[np.isfinite(cur)]
    if cur.size == 0 or ref.n == 0:
        return ColumnDrift(column, "numeric", method, threshold, None, None)
    if method == "ks":
        from scipy.stats import ks_2samp

        score = float(ks_2samp(ref.sorted, cur)[1])
    elif method == "wasserstein":
        score = _wasserstein(ref.sorted, np.sort(cur)) / max(ref.std, 0.001)
    else:
        r, c = _numeric_shares(ref, cur, fill_zeroes=method == "psi")
        score = _psi(r, c) if method == "psi" else _jensenshannon(r, c)
    return ColumnDrift(column, "numeric", method, threshold, score, drifted(method, score, threshold))


def _numeric_shares(ref: NumericReference, cur: np.ndarray, fill_zeroes: bool) -> tuple[np.ndarray, np.ndarray]:
    if ref.unique.size > PER_VALUE_MAX_UNIQUE:
        lo = min(ref.sorted[0], cur.min())
        hi = max(ref.sorted[-1], cur.max())
        bins = sturges_bins(lo, hi, ref.n + cur.size)
        # np.histogram's equal-width path counts against the same edges as histogram_bin_edges(..., "sturges")
        r = np.histogram(ref.sorted, bins=bins, range=(lo, hi))[0] / ref.n
        c = np.histogram(cur, bins=bins, range=(lo, hi))[0] / cur.size
    else:
        cur_unique, cur_counts = np.unique(cur, return_counts=True)
        keys = np.union1d(ref.unique, cur_unique)
        r = _counts_at(keys, ref.unique, ref.unique_counts) / ref.n
        c = _counts_at(keys, cur_unique, cur_counts) / cur.size
    if fill_zeroes:
        r, c = _fill_zeroes(r), _fill_zeroes(c)
    return r, c


def sturges_bins(lo: float, hi: float, n: int) -> int:
    """The bin count numpy's `histogram_bin_edges(x, "sturges")` picks for `n` values spanning [lo, hi]."""
    lo, hi = np.float64(lo), np.float64(hi)
    if lo == hi:
        return 1
    width = (hi - lo) / (np.log2(n) + 1.0)
    return int(np.ceil((hi - lo) / width)) if width else 1


def _counts_at(keys: np.ndarray, values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    out = np.zeros(keys.size, dtype=np.float64)
    pos = np.searchsorted(keys, values)
    out[pos] = counts
    return out


def _wasserstein(u_sorted: np.ndarray, v_sorted: np.ndarray) -> float:
    """scipy.stats.wasserstein_distance on already sorted samples (the same steps, without re-sorting)."""
    all_values = np.concatenate((u_sorted, v_sorted))
    all_values.sort(kind="mergesort")
    deltas = np.diff(all_values)
    u_cdf = u_sorted.searchsorted(all_values[:-1], "right") / u_sorted.size
    v_cdf = v_sorted.searchsorted(all_values[:-1], "right") / v_sorted.size
    terms = np.abs(u_cdf - v_cdf)
    return float(np.vecdot(terms, deltas) if hasattr(np, "vecdot") else np.sum(terms * deltas))


# --- categorical ---------------------------------------------------------------------------------------------


def categorical_drift(column: str, ref: CategoricalReference, current: dict[str, int], method: str,
                      threshold: float) -> ColumnDrift:
    """`current` is the window's category counts (missing values left out)."""
    check_method(method, "categorical", column)
    n_cur = int(sum(current.values()))
    if n_cur == 0 or ref.n == 0:
        return ColumnDrift(column, "categorical", method, threshold, None, None)
    keys = sorted(set(ref.counts) | {k for k, v in current.items() if v > 0})
    rc = np.asarray([ref.counts.get(k, 0) for k in keys], dtype=np.float64)
    cc = np.asarray([current.get(k, 0) for k in keys], dtype=np.float64)
    if method == "chi2":
        score = _chi2_p(rc, cc, ref.n, n_cur)
    elif method == "psi":
        score = _psi(_fill_zeroes(rc / ref.n), _fill_zeroes(cc / n_cur))
    else:
        score = _jensenshannon(rc / ref.n, cc / n_cur)
    return ColumnDrift(column, "categorical", method, threshold, score, drifted(method, score, threshold))


def _chi2_p(ref_counts: np.ndarray, cur_counts: np.ndarray, n_ref: int, n_cur: int) -> float:
    import warnings

    from scipy.stats import chisquare

    expected = ref_counts * (n_cur / n_ref)
    with warnings.catch_warnings():  # a category the reference never saw: expected 0, p-value 0 (as Evidently)
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(chisquare(cur_counts, expected)[1])


# --- shared --------------------------------------------------------------------------------------------------


def _fill_zeroes(p: np.ndarray) -> np.ndarray:
    """Evidently's zero filling before PSI: empty bins get 1e-4, or the smallest share / 1e6 when smaller."""
    p = p.copy()
    smallest = p[p != 0].min()
    p[p == 0] = smallest / 10**6 if smallest <= 0.0001 else 0.0001
    return p


def _psi(r: np.ndarray, c: np.ndarray) -> float:
    return float(np.sum((r - c) * np.log(r / c)))


def _jensenshannon(r: np.ndarray, c: np.ndarray) -> float:
    from scipy.spatial import distance

    return float(distance.jensenshannon(r, c))


def dataset_drift(columns: list[ColumnDrift], share: float) -> dict[str, Any]:
    """Evidently's dataset verdict: drift when the share of drifted columns reaches `share`."""
    judged = [c for c in columns if c.drift is not None]
    n_drifted = sum(1 for c in judged if c.drift)
    frac = n_drifted / len(judged) if judged else 0.0
    return {"columns": len(judged), "drifted": n_drifted, "share": frac, "threshold": share,
            "drift": bool(judged) and frac >= share,
            "drifted_columns": [c.column for c in judged if c.drift]}
