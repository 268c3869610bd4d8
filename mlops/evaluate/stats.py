"""Challenger vs champion on the same rows: a paired test of one metric against a tolerated drop.

The oriented difference d = m(challenger) - m(champion) (negated for lower-is-better metrics) is positive
when the challenger is better; `max_drop` is the margin. Two questions can be asked of it:

* default: fail only when the data show the challenger worse by more than the margin
  (H0: d >= -max_drop; passed = p >= alpha), so a small or noisy test set does not block a promotion;
* strict (non-inferiority): pass only when the data show it is not worse by more than the margin
  (H0: d <= -max_drop; passed = p < alpha).

Every result carries a paired-bootstrap confidence interval of the raw difference, whatever the test.
Common metrics (accuracy, AUROC, MSE, ...) are evaluated on all resamples at once; any other metric
function is called once per resample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from mlops.evaluate.metrics import CLASSIFICATION_FNS, REGRESSION_FNS
from mlops.evaluate.scored import Scored

TESTS = ("paired_bootstrap", "permutation", "mcnemar")
# Differences are compared with the margin after float arithmetic (0.70 - 0.75 != -0.05 exactly): a
# resample within this of the boundary counts as on it, and the boundary belongs to H0 in both modes.
_TIE = 1e-12
# Elements of one resampled block (resamples x rows x classes): bounds memory on large test sets.
_BLOCK = 4_000_000

BatchFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # y [B, n], out [B, n(, C)] -> metric [B]


def compare(metric: Callable[[Scored], float], challenger: Scored, champion: Scored, *, test: str,
            higher_is_better: bool, max_drop: float, alpha: float, n_resamples: int, seed: int,
            strict: bool = False) -> dict[str, Any]:
    """Test challenger vs champion on one metric. JSON-serialisable result; deterministic given `seed`.

    `mcnemar` tests per-row correctness, so for it every number reported (values, estimate, CI) is
    accuracy, whatever `metric` is, and `higher_is_better` is ignored: estimate, interval and p-value
    then describe the same quantity. Raises ValueError for rows that differ between the two, an unknown
    test, mcnemar on regression, or a metric that is undefined on these rows.
    """
    _check(challenger, champion, test=test, max_drop=max_drop, alpha=alpha, n_resamples=n_resamples)
    rng = np.random.default_rng(seed)
    if test == "mcnemar":
        metric, higher_is_better = _accuracy, True
    sign = 1.0 if higher_is_better else -1.0
    m_ch, m_cp = float(metric(challenger)), float(metric(champion))
    if not (np.isfinite(m_ch) and np.isfinite(m_cp)):
        raise ValueError(f"the metric is undefined on these rows (challenger {m_ch}, champion {m_cp})")
    estimate = m_ch - m_cp
    d_obs = sign * estimate

    boot = _bootstrap_diffs(metric, challenger, champion, n_resamples, rng)
    boot = boot[np.isfinite(boot)]  # a resample may lack a class the metric needs
    if boot.size == 0:
        raise ValueError("the metric is undefined on every bootstrap resample of these rows")
    lo, hi = np.percentile(boot, [100 * alpha, 100 * (1 - alpha)])

    if test == "paired_bootstrap":
        d_star = sign * boot
        hits = d_star <= -max_drop + _TIE if strict else d_star >= -max_drop - _TIE
        p_value = (1 + int(hits.sum())) / (boot.size + 1)
    elif test == "permutation":
        null = sign * _permutation_diffs(metric, challenger, champion, n_resamples, rng)
        null = null[np.isfinite(null)]
        if null.size == 0:
            raise ValueError("the metric is undefined on every permutation of these rows")
        shifted = d_obs + max_drop  # the null is centred at 0; the boundary of H0 is d = -max_drop
        hits = null >= shifted - _TIE if strict else null <= shifted + _TIE
        p_value = (1 + int(hits.sum())) / (null.size + 1)
    else:
        p_value = _mcnemar_p(challenger, champion, max_drop, strict)

    passed = p_value < alpha if strict else p_value >= alpha
    return {
        "test": test,
        "challenger": m_ch,
        "champion": m_cp,
        "estimate": float(estimate),
        "ci": [float(lo), float(hi)],
        "p_value": float(p_value),
        "passed": bool(passed),
        "max_drop": float(max_drop),
        "alpha": float(alpha),
        "strict": bool(strict),
        "n": len(challenger),
        "hypothesis": _hypothesis(test, higher_is_better, max_drop, alpha, strict),
    }


def _check(challenger: Scored, champion: Scored, *, test: str, max_drop: float, alpha: float,
           n_resamples: int) -> None:
    if test not in TESTS:
        raise ValueError(f"unknown test '{test}': expected one of {', '.join(TESTS)}")
    if challenger.task != champion.task:
        raise ValueError(f"challenger task '{challenger.task}' differs from champion task '{champion.task}'")
    if test == "mcnemar" and not challenger.classification:
        raise ValueError("mcnemar compares per-row correctness: it needs a classification task, not "
                         "regression")
    if len(challenger) != len(champion) or not np.array_equal(challenger.y, champion.y):
        raise ValueError(f"challenger and champion must be scored on the same rows (same targets); got "
                         f"{len(challenger)} and {len(champion)} rows" + (
                             " with different targets" if len(challenger) == len(champion) else ""))
    if challenger.out.shape != champion.out.shape:
        raise ValueError(f"output shapes differ: {challenger.out.shape} vs {champion.out.shape}")
    if len(challenger) == 0:
        raise ValueError("no rows to compare")
    if max_drop < 0 or not 0 < alpha < 1 or n_resamples < 1:
        raise ValueError(f"need max_drop >= 0, 0 < alpha < 1, n_resamples >= 1; got {max_drop}, {alpha}, "
                         f"{n_resamples}")


def _hypothesis(test: str, higher_is_better: bool, max_drop: float, alpha: float, strict: bool) -> str:
    what = "accuracy (per-row correctness)" if test == "mcnemar" else (
        "metric (higher is better)" if higher_is_better else "metric (lower is better)")
    bound = f"-{max_drop:g}" if max_drop else "0"
    if strict:
        return (f"{test}: pass only if the data show the challenger's {what} is not worse than the "
                f"champion's by more than {max_drop:g} (H0: d <= {bound}, rejected at alpha {alpha:g})")
    return (f"{test}: fail only if the data show the challenger's {what} is worse than the champion's "
            f"by more than {max_drop:g} (H0: d >= {bound}, rejected at alpha {alpha:g})")


# --- resampling -------------------------------------------------------------------------------------------


def _blocks(n_resamples: int, n: int, width: int) -> Iterator[int]:
    size = max(1, _BLOCK // max(1, n * width))
    for start in range(0, n_resamples, size):
        yield min(size, n_resamples - start)


def _bootstrap_diffs(metric: Callable[[Scored], float], ch: Scored, cp: Scored, n_resamples: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Raw differences m(ch*) - m(cp*) over row resamples drawn with replacement, the same rows for both."""
    n, width = len(ch), _width(ch)
    batch = _batch_fn(metric, ch)
    parts = []
    for size in _blocks(n_resamples, n, width):
        idx = rng.integers(0, n, size=(size, n))
        if batch is not None:
            y = ch.y[idx]
            parts.append(batch(y, ch.out[idx]) - batch(y, cp.out[idx]))
        else:
            parts.append(np.array([metric(ch.take(i)) - metric(cp.take(i)) for i in idx], dtype=np.float64))
    return np.concatenate(parts)


def _permutation_diffs(metric: Callable[[Scored], float], ch: Scored, cp: Scored, n_resamples: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Raw differences after swapping the two models' outputs on each row with probability 1/2."""
    n, width = len(ch), _width(ch)
    batch = _batch_fn(metric, ch)
    extra = (None,) * (ch.out.ndim - 1)  # broadcast the per-row swap over the class axis
    parts = []
    for size in _blocks(n_resamples, n, width):
        swap = rng.random((size, n)) < 0.5
        mask = swap[(..., *extra)]
        a, b = np.where(mask, cp.out, ch.out), np.where(mask, ch.out, cp.out)
        if batch is not None:
            y = np.broadcast_to(ch.y, (size, n))
            parts.append(batch(y, a) - batch(y, b))
        else:
            parts.append(np.array([metric(Scored(ch.task, ch.y, a[k], ch.labels))
                                   - metric(Scored(ch.task, ch.y, b[k], ch.labels)) for k in range(size)],
                                  dtype=np.float64))
    return np.concatenate(parts)


def _width(s: Scored) -> int:
    return s.out.shape[1] if s.out.ndim == 2 else 1


# --- McNemar ----------------------------------------------------------------------------------------------


def _accuracy(s: Scored) -> float:
    return float(np.mean(s.pred == s.y))


def _mcnemar_p(ch: Scored, cp: Scored, max_drop: float, strict: bool) -> float:
    from scipy import stats

    right_ch, right_cp = ch.pred == ch.y, cp.pred == cp.y
    b = int(np.sum(right_ch & ~right_cp))  # only the challenger right
    c = int(np.sum(~right_ch & right_cp))  # only the champion right
    n = len(ch)
    d = (b - c) / n  # accuracy difference, challenger - champion
    if max_drop == 0:
        if b + c == 0:  # identical correctness: no evidence either way, so H0 stands
            return 1.0
        # exact conditional test: b ~ Binomial(b + c, 1/2) on the boundary d = 0
        return float(stats.binomtest(b, b + c, 0.5, alternative="greater" if strict else "less").pvalue)
    se = np.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n
    if se == 0:  # no variability in the paired difference (e.g. identical correctness): d is known exactly
        if strict:
            return 0.0 if d > -max_drop else 1.0
        return 1.0 if d >= -max_drop else 0.0
    z = (d + max_drop) / se
    return float(stats.norm.sf(z) if strict else stats.norm.cdf(z))


# --- vectorised metrics -----------------------------------------------------------------------------------


def _batch_fn(metric: Callable[[Scored], float], s: Scored) -> BatchFn | None:
    """The vectorised twin of a known metric function, or None (then it is called per resample)."""

    if metric is _accuracy:
        return _batch_accuracy
    table = CLASSIFICATION_FNS if s.classification else REGRESSION_FNS
    fast = _CLASSIFICATION_BATCH if s.classification else _REGRESSION_BATCH
    for name, fn in fast.items():
        if table.get(name) is metric:
            return fn
    return None


def _batch_accuracy(y: np.ndarray, out: np.ndarray) -> np.ndarray:
    return (out.argmax(axis=-1) == y).mean(axis=-1)


def _auc(positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Row-wise binary ROC AUC by the Mann-Whitney statistic (average ranks count ties as 1/2, as sklearn)."""
    from scipy.stats import rankdata

    ranks = rankdata(score, axis=-1)
    n_pos = positive.sum(axis=-1)
    n_neg = positive.shape[-1] - n_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = ((ranks * positive).sum(axis=-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def _batch_auroc(y: np.ndarray, out: np.ndarray) -> np.ndarray:
    n_classes = out.shape[-1]
    if n_classes == 2:
        return _auc(y == 1, out[..., 1])
    # macro one-vs-rest, undefined when a class is absent (as metrics._auroc)
    return np.mean([_auc(y == k, out[..., k]) for k in range(n_classes)], axis=0)


def _batch_r2(y: np.ndarray, out: np.ndarray) -> np.ndarray:
    ss_res = ((y - out) ** 2).sum(axis=-1)
    ss_tot = ((y - y.mean(axis=-1, keepdims=True)) ** 2).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = 1 - ss_res / ss_tot
    # sklearn's force_finite: a constant target scores 1 when predicted exactly, else 0
    r2 = np.where(ss_tot == 0, np.where(ss_res == 0, 1.0, 0.0), r2)
    return r2 if y.shape[-1] > 1 else np.full(y.shape[:-1], np.nan)


_EPS = np.finfo(np.float64).eps
_CLASSIFICATION_BATCH: dict[str, BatchFn] = {"accuracy": _batch_accuracy, "auroc": _batch_auroc}
_REGRESSION_BATCH: dict[str, BatchFn] = {
    "mse": lambda y, o: ((y - o) ** 2).mean(axis=-1),
    "rmse": lambda y, o: np.sqrt(((y - o) ** 2).mean(axis=-1)),
    "mae": lambda y, o: np.abs(y - o).mean(axis=-1),
    "r2": _batch_r2,
    "mape": lambda y, o: (np.abs(y - o) / np.maximum(np.abs(y), _EPS)).mean(axis=-1),
}
