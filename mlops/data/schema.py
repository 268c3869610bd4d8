"""The data schema inferred from training rows: saved with the model so later phases validate and
compare production inputs against it (types, ranges, categories, missing rates; for images the sizes and
modes seen, for texts their lengths)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import SerializerFunctionWrapHandler, model_serializer

from mlops.core.errors import DataError
from mlops.core.lazymodel import LazyModel
from mlops.data.columns import Kind, column_kind, is_missing, text_values
from mlops.data.media import MediaError, image_header
from mlops.recipe.schema import DataConfig

if TYPE_CHECKING:
    import pandas as pd

MAX_CLASSES = 50
MEDIA_STATS = ("min_width", "max_width", "min_height", "max_height", "modes", "min_chars", "mean_chars",
               "max_chars", "empty_rate")


class ColumnSchema(LazyModel):
    name: str
    kind: Kind
    dtype: str
    missing_rate: float
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    categories: list[str] | None = None
    # images: the encoded images' sizes and PIL modes seen (read from their headers)
    min_width: int | None = None
    max_width: int | None = None
    min_height: int | None = None
    max_height: int | None = None
    modes: list[str] | None = None
    # texts: lengths in characters, and the share of empty (missing or blank) ones
    min_chars: int | None = None
    mean_chars: float | None = None
    max_chars: int | None = None
    empty_rate: float | None = None

    @model_serializer(mode="wrap")
    def _omit_unused_stats(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The image and text statistics only where they apply: a numeric or categorical column's schema is
        written as it was before images and text, so tabular schemas (and the bundles holding them) stay the
        same."""
        out = handler(self)
        return {k: v for k, v in out.items() if not (k in MEDIA_STATS and v is None)}


class DataSchema(LazyModel):
    columns: list[ColumnSchema]
    target: str
    task: Literal["binary", "multiclass", "regression"]
    labels: list[str] | None = None
    n_rows: int

    def column(self, name: str) -> ColumnSchema:
        return next(c for c in self.columns if c.name == name)

    def of_kind(self, kind: Kind) -> list[str]:
        """The names of the columns of one kind, in schema order."""
        return [c.name for c in self.columns if c.kind == kind]


def feature_columns(data: DataConfig, frame: pd.DataFrame) -> list[str]:
    cols = data.features or [c for c in frame.columns if c != data.target]
    return [c for c in cols if c not in set(data.drop)]


def is_categorical(series: pd.Series, forced: bool) -> bool:
    import pandas as pd

    return forced or not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)


def infer_task(target: pd.Series, declared: str) -> str:
    import pandas as pd

    if declared != "auto":
        return declared
    if pd.api.types.is_float_dtype(target) and target.dropna().nunique() > MAX_CLASSES:
        return "regression"
    n = target.dropna().nunique()
    if is_categorical(target, False) or (pd.api.types.is_integer_dtype(target) and n <= MAX_CLASSES):
        return "binary" if n == 2 else "multiclass"
    return "regression"


def label_names(target: pd.Series) -> list[str]:
    """Class labels in a stable order: sorted by value, written as strings (what serving returns)."""
    values = sorted(target.dropna().unique().tolist())
    return [_label_str(v) for v in values]


def _label_str(v: Any) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def encode_labels(target: pd.Series, labels: list[str]) -> Any:
    import numpy as np

    index = {name: i for i, name in enumerate(labels)}
    codes = [index.get(_label_str(v), -1) for v in target.tolist()]
    if min(codes, default=0) < 0:
        raise DataError(f"target has values outside the training labels {labels}")
    return np.asarray(codes, dtype=np.int64)


def infer_schema(data: DataConfig, train: pd.DataFrame) -> DataSchema:
    """Infer the schema from the training split alone."""
    if train[data.target].isna().any():
        n = int(train[data.target].isna().sum())
        raise DataError(f"target column '{data.target}' has {n} missing values in the training rows")
    task = infer_task(train[data.target], data.task)
    columns = [_column(train[name], column_kind(data, name, train[name]), data.categories.trim)
               for name in feature_columns(data, train)]
    labels = label_names(train[data.target]) if task != "regression" else None
    if labels is not None and task == "binary" and len(labels) != 2:
        raise DataError(f"task is binary but the target has {len(labels)} classes: {labels[:10]}")
    return DataSchema(columns=columns, target=data.target, task=task, labels=labels, n_rows=len(train))


def _column(series: pd.Series, kind: Kind, trim: bool) -> ColumnSchema:
    missing = float(series.isna().mean())
    if kind == "image":
        return _image_column(series, missing)
    if kind == "text":
        return _text_column(series, missing)
    if kind == "categorical":
        cats = sorted({_label_str(v) for v in series.dropna().tolist()})
        if trim:  # as mlops.data.preprocess.category_strings reads them: a blank category is a missing one
            cats = sorted({c.strip() for c in cats} - {""})
        return ColumnSchema(name=str(series.name), kind="categorical", dtype=str(series.dtype), missing_rate=missing, categories=cats)
    values = _numbers(series)
    return ColumnSchema(
        name=str(series.name),
        kind="numeric",
        dtype=str(series.dtype),
        missing_rate=missing,
        min=_f(values.min()),
        max=_f(values.max()),
        mean=_f(values.mean()),
        std=_f(values.std(ddof=0)),
    )


def _numbers(series: pd.Series) -> pd.Series:
    """A numeric column as float64; a column declared numeric that holds other values is the user's to fix."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return series.astype("float64")
    values = pd.to_numeric(series, errors="coerce").astype("float64")
    bad = series.notna() & values.isna()
    if bad.any():
        examples = ", ".join(repr(v) for v in series[bad].unique().tolist()[:5])
        raise DataError(f"column '{series.name}' is declared numeric (data.columns) but holds values that are "
                        f"not numbers: {examples}")
    return values


def _image_column(series: pd.Series, missing: float) -> ColumnSchema:
    """Sizes and modes from each image's header; an unreadable image counts in none of them (check_data has
    refused it before the schema is inferred)."""
    widths, heights, modes = [], [], set()
    for v in series.tolist():
        if is_missing(v) or not isinstance(v, bytes | bytearray):
            continue
        try:
            width, height, mode = image_header(bytes(v))
        except MediaError:
            continue
        widths.append(width)
        heights.append(height)
        modes.add(mode)
    return ColumnSchema(name=str(series.name), kind="image", dtype=str(series.dtype), missing_rate=missing,
                        min_width=min(widths, default=None), max_width=max(widths, default=None),
                        min_height=min(heights, default=None), max_height=max(heights, default=None),
                        modes=sorted(modes))


def _text_column(series: pd.Series, missing: float) -> ColumnSchema:
    texts = text_values(series)
    lengths = [len(t) for t in texts]
    empty = sum(1 for t in texts if not t.strip())
    return ColumnSchema(name=str(series.name), kind="text", dtype=str(series.dtype), missing_rate=missing,
                        min_chars=min(lengths, default=None), max_chars=max(lengths, default=None),
                        mean_chars=sum(lengths) / len(lengths) if lengths else None,
                        empty_rate=empty / len(texts) if texts else None)


def _f(v: Any) -> float | None:
    import math

    v = float(v)
    return None if math.isnan(v) else v
