"""Test metrics per slice of the test rows: per value of a column, or per bin of a numeric one.

Gates find a slice by its ("column", "slice") strings, so labels are a pure function of the column's
values and the slice settings:

- one slice per value: the value as `category_strings` writes it (1.0 -> "1"); missing -> "(missing)";
- bins: "[lo, hi)" with `%g` edges, the last bin closed "[lo, hi]"; missing -> "(missing)";
  values outside explicit edges -> "(outside)", so the slice counts always add up to the test rows.

Order: values ascending (numerically for a numeric column), bins by edge, then "(outside)", "(missing)".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlops.core.errors import MlopsError
from mlops.data.preprocess import category_strings
from mlops.evaluate.metrics import MetricFn, compute_metrics

if TYPE_CHECKING:
    from mlops.evaluate.scored import Scored
    from mlops.recipe.schema import SliceConfig

MISSING = "(missing)"
OUTSIDE = "(outside)"
MAX_VALUES = 20  # a numeric column with more distinct values than this is binned even without `bins`
DEFAULT_BINS = 4  # ... into this many quantile bins


def slice_metrics(frame: pd.DataFrame, scored: Scored, slices: list[SliceConfig],
                  custom: dict[str, MetricFn] | None = None) -> list[dict[str, Any]]:
    """One row per slice of every configured column: {"column", "slice", "count", "metrics"}.

    `frame` holds the raw test rows in the order of `scored`. A numeric column without `bins` and with
    more than 20 distinct values is cut into 4 quantile bins (one slice per value would be noise).
    Every bin is listed, an empty one with count 0 and no metrics, so the slices of explicit edges do
    not depend on the data; "(outside)" and "(missing)" appear only when they hold rows. Metrics that
    are undefined on a slice (AUROC on one class) are left out, as `compute_metrics` does.
    """
    if len(frame) != len(scored):
        raise ValueError(f"slice_metrics: {len(frame)} frame rows but {len(scored)} scored rows")
    rows: list[dict[str, Any]] = []
    for cfg in slices:
        if cfg.column not in frame.columns:
            raise MlopsError(f"evaluate.slices: column '{cfg.column}' is not in the test data "
                             f"(columns: {', '.join(map(str, frame.columns))})")
        labels, order = slice_labels(frame[cfg.column], cfg.bins, column=cfg.column)
        for label in order:
            mask = labels == label
            count = int(mask.sum())
            metrics = compute_metrics(scored.take(mask), custom=custom) if count else {}
            rows.append({"column": cfg.column, "slice": label, "count": count, "metrics": metrics})
    return rows


def slice_labels(series: pd.Series, bins: int | list[float] | None = None, *, max_values: int = MAX_VALUES,
                 default_bins: int = DEFAULT_BINS, column: str | None = None) -> tuple[np.ndarray, list[str]]:
    """The slice label of every row, and every slice label in order (bins listed even when empty).

    bins: an int = that many quantile bins; a list = bin edges; None = one slice per value, except a
    numeric column with more than `max_values` distinct values, which gets `default_bins` quantile bins.
    """
    name = column or str(series.name)
    if bins is None:
        if not _is_numeric(series) or series.nunique(dropna=True) <= max_values:
            return _value_labels(series)
        bins = default_bins
    x = _numbers(series, name)
    if isinstance(bins, int):
        present = x[~np.isnan(x)]
        # a column with fewer distinct values than bins gets fewer bins (duplicate edges dropped)
        edges = pd.qcut(present, bins, retbins=True, duplicates="drop")[1] if len(present) else np.array([])
    else:
        edges = np.asarray(bins, dtype=np.float64)
    return _binned_labels(x, edges)


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _numbers(series: pd.Series, column: str) -> np.ndarray:
    x = pd.to_numeric(series, errors="coerce")
    unparsed = x.isna() & series.notna()
    if unparsed.any():
        example = series[unparsed].iloc[0]
        raise MlopsError(f"column '{column}' has bins but is not numeric (value {example!r}); "
                         "leave bins out for one slice per value")
    return x.to_numpy(dtype=np.float64, na_value=np.nan)


def _value_labels(series: pd.Series) -> tuple[np.ndarray, list[str]]:
    labels = category_strings(series)
    labels[labels == ""] = MISSING  # category_strings writes missing as "" (ONNX string tensors have no null)
    seen = set(labels.tolist())
    values = sorted(seen - {MISSING}, key=float if _is_numeric(series) else None)  # numeric: "2" before "10"
    return labels, values + ([MISSING] if MISSING in seen else [])


def _binned_labels(x: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, list[str]]:
    labels = np.full(len(x), MISSING, dtype=object)
    present = ~np.isnan(x)
    if len(edges) == 0:
        return labels, [MISSING] if present.size else []
    if len(edges) == 1:  # every value the same: one closed bin
        names = [f"[{_fmt(edges[0], 6)}, {_fmt(edges[0], 6)}]"]
        idx = np.where(x == edges[0], 0, -1)
    else:
        names = _interval_names(edges)
        # [lo, hi) so the labels say what the bins hold; the top edge belongs to the last bin
        idx = np.searchsorted(edges, x, side="right") - 1
        idx[x == edges[-1]] = len(edges) - 2
        idx[(x < edges[0]) | (x > edges[-1])] = -1
    inside = present & (idx >= 0)
    labels[inside] = np.asarray(names, dtype=object)[idx[inside]]
    labels[present & ~inside] = OUTSIDE
    order = list(names)
    order += [OUTSIDE] if (present & ~inside).any() else []
    order += [MISSING] if (~present).any() else []
    return labels, order


def _interval_names(edges: np.ndarray) -> list[str]:
    # %g can print two close edges alike; more digits until every label is distinct
    for digits in (6, 10, 17):
        text = [_fmt(e, digits) for e in edges]
        if len(set(text)) == len(text):
            break
    last = len(edges) - 2
    return [f"[{text[i]}, {text[i + 1]}{']' if i == last else ')'}" for i in range(len(edges) - 1)]


def _fmt(value: float, digits: int) -> str:
    return f"{value:.{digits}g}"
