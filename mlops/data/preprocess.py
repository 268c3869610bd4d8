"""Preprocessing fitted on the training split: impute, scale, one-hot.

`transform` is what training sees; `mlops.package.graph` builds the same arithmetic into the ONNX
graph in float32, op for op, so serving computes exactly what training did.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel

from mlops.data.schema import DataSchema

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


class NumericStats(BaseModel):
    name: str
    mean: float  # imputation value and centre
    std: float  # scale; 1.0 for a constant column


class CategoricalLevels(BaseModel):
    name: str
    levels: list[str]  # one-hot order; missing and unseen values encode as all zeros


class Preprocessor(BaseModel):
    numeric: list[NumericStats]
    categorical: list[CategoricalLevels]

    @property
    def n_features(self) -> int:
        return len(self.numeric) + sum(len(c.levels) for c in self.categorical)

    @property
    def input_names(self) -> list[str]:
        return [c.name for c in self.numeric] + [c.name for c in self.categorical]

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        import numpy as np

        blocks = []
        for s in self.numeric:
            x = numeric_column(frame[s.name])
            mean, std = np.float32(s.mean), np.float32(s.std)
            blocks.append(((np.where(np.isnan(x), mean, x) - mean) / std)[:, None])
        for c in self.categorical:
            codes = category_codes(frame[c.name], c.levels)
            blocks.append((codes[:, None] == np.arange(len(c.levels))[None, :]).astype(np.float32))
        return np.concatenate(blocks, axis=1).astype(np.float32) if blocks else np.zeros((len(frame), 0), np.float32)


def fit_preprocessor(schema: DataSchema, train: pd.DataFrame) -> Preprocessor:
    import numpy as np

    numeric = []
    for name in schema.numeric:
        x = numeric_column(train[name])
        mean = float(np.nanmean(x)) if np.isfinite(x).any() else 0.0
        std = float(np.nanstd(x)) if np.isfinite(x).any() else 1.0
        numeric.append(NumericStats(name=name, mean=mean, std=std if std > 1e-12 else 1.0))
    categorical = [CategoricalLevels(name=c, levels=schema.column(c).categories or []) for c in schema.categorical]
    return Preprocessor(numeric=numeric, categorical=categorical)


def numeric_column(series: pd.Series) -> np.ndarray:
    import pandas as pd

    return pd.to_numeric(series, errors="coerce").to_numpy(dtype="float32", na_value=float("nan"))


def category_strings(series: pd.Series) -> np.ndarray:
    """Categorical values as strings, with missing as "" (ONNX string tensors have no null)."""
    import numpy as np

    out = []
    for v in series.tolist():
        if v is None or (isinstance(v, float) and v != v):
            out.append("")
        elif isinstance(v, float) and v.is_integer():
            out.append(str(int(v)))
        else:
            out.append(str(v))
    return np.asarray(out, dtype=object)


def category_codes(series: pd.Series, levels: list[str]) -> np.ndarray:
    import numpy as np

    index = {name: i for i, name in enumerate(levels)}
    return np.asarray([index.get(v, -1) for v in category_strings(series)], dtype=np.int64)
