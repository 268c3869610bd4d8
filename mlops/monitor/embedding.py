"""Embedding drift: has the distribution of an image or text model's `embedding` output (float [N, D]) moved?

The three embedding drift methods of Evidently 0.7.23 (`EmbeddingsDriftMetric` with `model()`, `mmd()` or
`ratio()` of `evidently.legacy.metrics.data_drift.embedding_drift_methods`), computed on numpy arrays with the
reference prepared once. Each is Evidently's statistic with Evidently's own seeds and verdict rule, so a
verdict here is Evidently's verdict on the same rows; `tests/unit/test_monitor_embedding.py` checks it
against `evidently_embedding_drift`, which runs Evidently itself.

Method  score                                                             drift when
model   ROC AUC of a classifier telling reference rows from window rows   score > threshold (default 0.55)
mmd     squared maximum mean discrepancy, RBF kernel, unbiased, >= 0      score > threshold (default 0.015)
ratio   share of components whose Wasserstein distance / std >= 0.1       score > threshold (default 0.2)

How each follows Evidently, and where a score may differ:
* model: the rows in Evidently's order (reference, labelled 1, then the window, 0), its split
  (`train_test_split(test_size=0.5, random_state=42)`), its classifier (`SGDClassifier(loss="log_loss",
  random_state=42)`) on the same dtype, ROC AUC on the held-out half. Evidently fits a DataFrame, we fit the
  array: the AUC agrees to about 1e-7 (BLAS rounding). This is the whole cost of the method (the classifier's
  epochs), so it is only a little faster than Evidently's own method; the time saved is what its metric adds.
* mmd: the kernel bandwidth from the same rows Evidently picks (pandas' `sample(min(n, 1000),
  random_state=0)` of each side: the median pairwise distance, squared), the same unbiased MMD^2, summed
  blockwise in float64 instead of Evidently's (m + n)^2 float32 kernel matrix (48 GB for 100,000 + 10,000 rows,
  which is why Evidently's mmd does not run at that size). Up to MMD_MAX_ROWS rows a side every pair is
  summed: Evidently's statistic to float rounding. Above, a seeded uniform sample of MMD_MAX_ROWS rows of that
  side: an unbiased estimate of the same MMD^2, so the verdict can differ only when the score is within its
  sampling error of the threshold. Measured on benchmarks/drift.py's 100,000 + 10,000 rows x 128: every
  pair 0.03362 for the shifted window, samples of 8 seeds 0.0337 with a standard deviation of 0.0004 (and
  0.00002 +- 0.00002 unshifted), against a threshold of 0.015.
* ratio: each component judged by the fast path's Wasserstein test (`drift.numeric_drift`: W1 / std of the
  reference, drift at or above 0.1, Evidently's `wasserstein` stat test and `ratio()`'s default), on the
  reference's per-component sorted values prepared once. Exact.

Not mirrored: the bootstrap variants (`bootstrap=True`, which `EmbeddingsDriftMetric` picks by itself when no
method is given and the reference has under 1,000 rows): here the threshold always decides; `pca_components`;
the `distance()` method.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import roc_auc_score
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from mlops.core.errors import MlopsError
from mlops.monitor.drift import ColumnDrift, NumericReference, numeric_drift, threshold_for

EMBEDDING_METHODS = ("model", "mmd", "ratio")
EMBEDDING_DEFAULT_THRESHOLD = {"model": 0.55, "mmd": 0.015, "ratio": 0.2}  # Evidently's model(), mmd(), ratio()
RATIO_COMPONENT_METHOD = "wasserstein"  # ratio()'s default component stat test; its threshold is drift.py's 0.1
MIN_ROWS = 20  # a side: the classifier needs both sides in each half; Evidently's t-SNE (perplexity 30) over 30 rows
MMD_MAX_ROWS = 5_000  # a side: every pair of 10,000 rows is 10^8 kernel values, a fraction of a second
BANDWIDTH_ROWS, BANDWIDTH_SEED = 1_000, 0  # Evidently's mmd(): x.sample(min(m, 1000), random_state=0), same for y
SPLIT_SEED = 42  # Evidently's model(): the random_state of its train/test split and of its classifier
_BLOCK = 1_024  # rows of the kernel matrix held at once: 1,024 x 5,000 float64 is 40 MB


@dataclass
class EmbeddingReference:
    """The reference embeddings, prepared once per run. What a method needs is computed on its first use (or
    at once for the `methods` given to `of`) and kept: the per-component sorted values (ratio), the bandwidth
    rows and the kernel sample with its squared norms (mmd). The model method uses every row as it is."""

    values: np.ndarray  # [m, D], the dtype as given: Evidently's frame would hold the same
    seed: int = 0  # draws the MMD sample of a side above MMD_MAX_ROWS rows

    @classmethod
    def of(cls, array: np.ndarray, seed: int = 0, methods: tuple[str, ...] = ()) -> EmbeddingReference:
        ref = cls(_embeddings(array, "the embedding reference"), seed)
        for method in methods:
            ref.prepare(method)
        return ref

    @property
    def n(self) -> int:
        return int(self.values.shape[0])

    @property
    def dims(self) -> int:
        return int(self.values.shape[1])

    def prepare(self, method: str) -> None:
        """Compute now what `method` needs, so that judging a window is only the window's work."""
        check_embedding_method(method, "reference")
        if method == "ratio":
            _ = self.components
        elif method == "mmd":
            _ = self.bandwidth_rows, self.kernel_rows, self.kernel_sq_norms

    @cached_property
    def components(self) -> list[NumericReference]:
        return [NumericReference.of(self.values[:, j]) for j in range(self.dims)]

    @cached_property
    def bandwidth_rows(self) -> np.ndarray:
        return self.values[_pandas_sample(self.n, BANDWIDTH_ROWS)]

    @cached_property
    def kernel_rows(self) -> np.ndarray:
        return _kernel_sample(self.values, self.seed)

    @cached_property
    def kernel_sq_norms(self) -> np.ndarray:
        return np.einsum("ij,ij->i", self.kernel_rows, self.kernel_rows)


def check_embedding_method(method: str, name: str) -> None:
    if method not in EMBEDDING_METHODS:
        raise MlopsError(f"embedding drift method '{method}' for '{name}' is unknown "
                         f"(use one of {', '.join(EMBEDDING_METHODS)})")


def embedding_threshold(method: str, threshold: float | None) -> float:
    return EMBEDDING_DEFAULT_THRESHOLD[method] if threshold is None else float(threshold)


def embedding_drift(name: str, ref: EmbeddingReference, current: np.ndarray, method: str,
                    threshold: float | None) -> ColumnDrift:
    """Evidently's verdict for `method` on the window's embeddings [n, D] against the prepared reference."""
    check_embedding_method(method, name)
    threshold = embedding_threshold(method, threshold)
    cur = _embeddings(current, f"the window of embedding '{name}'", ref.dims)
    if method == "model":
        score = _classifier_auc(ref, cur, name)
    elif method == "mmd":
        score = _mmd2u(ref, cur)
    else:
        score = _drifted_share(ref, cur, name)
    # all three of Evidently's embedding methods drift strictly above the threshold; mmd reports max(MMD^2, 0)
    # but compares the raw statistic, which can be negative
    drift = bool(score > threshold)
    return ColumnDrift(name, "embedding", method, threshold, max(score, 0.0) if method == "mmd" else score, drift)


def evidently_embedding_drift(reference: np.ndarray, current: np.ndarray, method: str, threshold: float | None,
                              seed: int = 0) -> tuple[float, bool]:
    """(score, drift) of Evidently itself: its legacy `Report` with `EmbeddingsDriftMetric` and the method's
    object with this threshold, the embeddings given as columns of a frame. `seed` seeds numpy's global
    generator for the run (restored after), which the metric's t-SNE picture draws from; the drift methods seed
    themselves. The t-SNE runs on one OpenMP thread: where the cores are shared (`pytest -n 2`, a busy host),
    libgomp's spinning threads make it 5-10x slower; the score and verdict do not depend on it."""
    # imported here: the fast path and the monitor's judge need none of Evidently (seconds to import)
    import pandas as pd
    from evidently.legacy.metrics import EmbeddingsDriftMetric
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import mmd, model, ratio
    from evidently.legacy.pipeline.column_mapping import ColumnMapping
    from evidently.legacy.report import Report

    check_embedding_method(method, "embedding")
    threshold = embedding_threshold(method, threshold)
    ref = _embeddings(reference, "the embedding reference")
    cur = _embeddings(current, "the embedding window", ref.shape[1])
    if method == "mmd":
        _check_evidently_kernel_fits(len(ref) + len(cur), np.result_type(ref, cur).itemsize)
    columns = [f"embedding_{j}" for j in range(ref.shape[1])]
    metric = EmbeddingsDriftMetric("embedding", drift_method={"model": model, "mmd": mmd, "ratio": ratio}[method](
        threshold=threshold))
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings(), threadpool_limits(1, user_api="openmp"):
            warnings.simplefilter("ignore")  # pandas and sklearn deprecations from inside Evidently
            Report(metrics=[metric]).run(reference_data=pd.DataFrame(ref, columns=columns),
                                         current_data=pd.DataFrame(cur, columns=columns),
                                         column_mapping=ColumnMapping(embeddings={"embedding": columns}))
    finally:
        np.random.set_state(state)
    result = metric.get_result()  # raises what the metric raised
    return float(result.drift_score), bool(result.drift_detected)


# --- the methods ------------------------------------------------------------------------------------------------


def _classifier_auc(ref: EmbeddingReference, cur: np.ndarray, name: str) -> float:
    x = np.concatenate((ref.values, cur))
    y = np.concatenate((np.ones(ref.n, dtype=np.int64), np.zeros(len(cur), dtype=np.int64)))
    # the split depends only on the row count: splitting row numbers draws the rows Evidently's split draws
    train, test = train_test_split(np.arange(len(x)), test_size=0.5, random_state=SPLIT_SEED, shuffle=True)
    if min(np.unique(y[train]).size, np.unique(y[test]).size) < 2:
        raise MlopsError(f"embedding '{name}': the classifier's halves do not both hold reference and window rows "
                         f"({ref.n} and {len(cur)} rows); the model method needs more rows")
    clf = SGDClassifier(loss="log_loss", random_state=SPLIT_SEED)
    clf.fit(x[train], y[train])
    return float(roc_auc_score(y[test], clf.predict_proba(x[test])[:, 1]))


def _mmd2u(ref: EmbeddingReference, cur: np.ndarray) -> float:
    """The unbiased MMD^2 of Evidently's `MMD2u`: within-side kernel means over distinct pairs, minus twice
    the cross-side mean. Negative when the sides are closer than chance."""
    y_bandwidth = cur[_pandas_sample(len(cur), BANDWIDTH_ROWS)]
    sigma2 = float(np.median(euclidean_distances(ref.bandwidth_rows, y_bandwidth))) ** 2
    gamma = 1.0 / sigma2
    x, x_sq = ref.kernel_rows, ref.kernel_sq_norms
    y = _kernel_sample(cur, ref.seed + 1)
    y_sq = np.einsum("ij,ij->i", y, y)
    m, n = len(x), len(y)
    kxx = _kernel_sum_distinct_pairs(x, x_sq, gamma)
    kyy = _kernel_sum_distinct_pairs(y, y_sq, gamma)
    kxy = sum(float(_rbf(x[a:a + _BLOCK], x_sq[a:a + _BLOCK], y, y_sq, gamma).sum()) for a in range(0, m, _BLOCK))
    return kxx / (m * (m - 1.0)) + kyy / (n * (n - 1.0)) - 2.0 * kxy / (m * n)


def _drifted_share(ref: EmbeddingReference, cur: np.ndarray, name: str) -> float:
    component_threshold = threshold_for(RATIO_COMPONENT_METHOD, None)
    columns = np.ascontiguousarray(cur.T, dtype=np.float64)  # one contiguous row per component
    drifted = sum(bool(numeric_drift(f"{name}[{j}]", comp, columns[j], RATIO_COMPONENT_METHOD,
                                     component_threshold).drift)
                  for j, comp in enumerate(ref.components))
    return drifted / ref.dims


# --- kernels and samples -----------------------------------------------------------------------------------------


def _pandas_sample(n: int, k: int) -> np.ndarray:
    """The rows `DataFrame.sample(min(n, k), random_state=0)` picks: pandas draws them with this call."""
    return np.random.RandomState(BANDWIDTH_SEED).choice(n, size=min(n, k), replace=False)


def _kernel_sample(values: np.ndarray, seed: int) -> np.ndarray:
    """The rows the MMD sums over, as float64: all up to MMD_MAX_ROWS, else a seeded uniform sample."""
    if len(values) > MMD_MAX_ROWS:
        values = values[np.sort(np.random.default_rng(seed).choice(len(values), MMD_MAX_ROWS, replace=False))]
    return np.asarray(values, dtype=np.float64)


def _rbf(a: np.ndarray, a_sq: np.ndarray, b: np.ndarray, b_sq: np.ndarray, gamma: float) -> np.ndarray:
    """exp(-gamma |a_i - b_j|^2), sklearn's `rbf_kernel` formula, in float64."""
    d2 = a @ b.T
    d2 *= -2.0
    d2 += a_sq[:, None]
    d2 += b_sq[None, :]
    np.maximum(d2, 0.0, out=d2)  # rounding can make a distance to itself slightly negative
    d2 *= -gamma
    return np.exp(d2, out=d2)


def _kernel_sum_distinct_pairs(x: np.ndarray, x_sq: np.ndarray, gamma: float) -> float:
    """Sum of k(x_i, x_j) over i != j: each block of rows against the rows from its own start on; the
    kernel is symmetric, so the part right of the block's diagonal square counts twice."""
    total = 0.0
    for a in range(0, len(x), _BLOCK):
        b = min(a + _BLOCK, len(x))
        k = _rbf(x[a:b], x_sq[a:b], x[a:], x_sq[a:], gamma)
        square = k[:, :b - a]
        total += float(square.sum() - np.trace(square)) + 2.0 * float(k[:, b - a:].sum())
    return total


def _check_evidently_kernel_fits(rows: int, itemsize: int) -> None:
    """Evidently's mmd holds a rows x rows kernel matrix: say so rather than have the machine swap or kill."""
    need = rows * rows * itemsize
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > available:
        raise MlopsError(f"Evidently's mmd needs a {rows:,} x {rows:,} kernel matrix ({need / 2**30:,.1f} GiB); "
                         f"{available / 2**30:,.1f} GiB of memory is free")


# --- input checks ------------------------------------------------------------------------------------------------


def _embeddings(array: np.ndarray, what: str, dims: int | None = None) -> np.ndarray:
    values = np.asarray(array)
    if values.ndim != 2:
        raise MlopsError(f"{what} must be a [rows, components] array, not one of shape {values.shape}")
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float64)
    if dims is not None and values.shape[1] != dims:
        raise MlopsError(f"{what} has {values.shape[1]} components, the reference {dims}: not the same embedding")
    if values.shape[0] < MIN_ROWS:
        raise MlopsError(f"{what} has {values.shape[0]} rows; embedding drift needs at least {MIN_ROWS}")
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values).all(axis=1)).sum())
        raise MlopsError(f"{what} has {bad} rows with NaN or infinite values; leave them out first")
    return values
