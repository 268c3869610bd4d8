"""The data schema inferred from training rows: saved with the model so later phases validate and
compare production inputs against it (types, ranges, categories, missing rates)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from mlops.core.errors import DataError
from mlops.recipe.schema import DataConfig

if TYPE_CHECKING:
    import pandas as pd

MAX_CLASSES = 50


class ColumnSchema(BaseModel):
    name: str
    kind: Literal["numeric", "categorical"]
    dtype: str
    missing_rate: float
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    categories: list[str] | None = None


class DataSchema(BaseModel):
    columns: list[ColumnSchema]
    target: str
    task: Literal["binary", "multiclass", "regression"]
    labels: list[str] | None = None
    n_rows: int

    def column(self, name: str) -> ColumnSchema:
        return next(c for c in self.columns if c.name == name)

    @property
    def numeric(self) -> list[str]:
        return [c.name for c in self.columns if c.kind == "numeric"]

    @property
    def categorical(self) -> list[str]:
        return [c.name for c in self.columns if c.kind == "categorical"]


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
    forced = set(data.categorical or [])
    columns = [_column(train[name], name in forced) for name in feature_columns(data, train)]
    labels = label_names(train[data.target]) if task != "regression" else None
    if labels is not None and task == "binary" and len(labels) != 2:
        raise DataError(f"task is binary but the target has {len(labels)} classes: {labels[:10]}")
    return DataSchema(columns=columns, target=data.target, task=task, labels=labels, n_rows=len(train))


def _column(series: pd.Series, forced: bool) -> ColumnSchema:
    missing = float(series.isna().mean())
    if is_categorical(series, forced):
        cats = sorted({_label_str(v) for v in series.dropna().tolist()})
        return ColumnSchema(name=str(series.name), kind="categorical", dtype=str(series.dtype), missing_rate=missing, categories=cats)
    values = series.astype("float64")
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


def _f(v: Any) -> float | None:
    import math

    v = float(v)
    return None if math.isnan(v) else v
