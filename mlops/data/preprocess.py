"""Preprocessing fitted on the training split: impute, scale, one-hot for scalar columns; for image columns
the decoded pixels and their statistics, for text columns a tokenizer learnt from the training texts.

`transform` is what training sees; `mlops.package.graph` builds the same arithmetic into the ONNX
graph in float32, op for op, so serving computes exactly what training did. Images and texts go through
`mlops.data.media`, the transform serving uses too.

A category's whitespace is trimmed (`data.categories.trim`) by `category_text`, before the graph: ONNX has no
string op that strips (StringSplit, opset 20, also splits inside the string, and the network's opset is 18 by
default). The bundle's Predictor, which every request, batch file and stream message goes through, calls the
same function on what it is sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from pydantic import BaseModel

from mlops.core.errors import DataError
from mlops.data.columns import text_values
from mlops.data.media import ImageSpec, MediaError, PixelStats, decode_images, encode_texts
from mlops.data.schema import DataSchema

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from tokenizers import Tokenizer

PIXEL_CHUNK = 256  # images per chunk when summing pixels in float64: memory stays bounded


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
    # strip categories' whitespace (data.categories.trim); False in a preprocessor.json from before the policy
    trim: bool = False

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
            codes = category_codes(frame[c.name], c.levels, self.trim)
            blocks.append((codes[:, None] == np.arange(len(c.levels))[None, :]).astype(np.float32))
        return np.concatenate(blocks, axis=1).astype(np.float32) if blocks else np.zeros((len(frame), 0), np.float32)


def fit_preprocessor(schema: DataSchema, train: pd.DataFrame, *, trim: bool = True) -> Preprocessor:
    """`trim`: data.categories.trim, as the schema was inferred with (its categories are trimmed already)."""
    import numpy as np

    numeric = []
    for name in schema.of_kind("numeric"):
        x = numeric_column(train[name])
        mean = float(np.nanmean(x)) if np.isfinite(x).any() else 0.0
        std = float(np.nanstd(x)) if np.isfinite(x).any() else 1.0
        numeric.append(NumericStats(name=name, mean=mean, std=std if std > 1e-12 else 1.0))
    categorical = [CategoricalLevels(name=c, levels=schema.column(c).categories or []) for c in schema.of_kind("categorical")]
    return Preprocessor(numeric=numeric, categorical=categorical, trim=trim)


def numeric_column(series: pd.Series) -> np.ndarray:
    import pandas as pd

    return pd.to_numeric(series, errors="coerce").to_numpy(dtype="float32", na_value=float("nan"))


def category_strings(series: pd.Series, trim: bool = False) -> np.ndarray:
    """Categorical values as strings, with missing as "" (ONNX string tensors have no null); with `trim` as the
    model reads them (`category_text`). Without, as the data holds them (slices, reports)."""
    import numpy as np

    out = []
    for v in series.tolist():
        if v is None or (isinstance(v, float) and v != v):
            out.append("")
        elif isinstance(v, float) and v.is_integer():
            out.append(str(int(v)))
        else:
            out.append(category_text(str(v), trim))
    return np.asarray(out, dtype=object)


def category_text(value: str, trim: bool) -> str:
    """A category as the model reads it: with `trim`, without leading and trailing whitespace (a blank one is
    then "", missing). Training's rows and serving's requests both come through here."""
    return value.strip() if trim else value


def category_codes(series: pd.Series, levels: list[str], trim: bool) -> np.ndarray:
    import numpy as np

    index = {name: i for i, name in enumerate(levels)}
    return np.asarray([index.get(v, -1) for v in category_strings(series, trim)], dtype=np.int64)


def image_pixels(values: pd.Series, spec: ImageSpec, column: str, split: str) -> np.ndarray:
    """An image column's encoded images -> uint8 [N, H, W, C] (check_data has refused what cannot decode;
    this names the split's row all the same)."""
    images = values.tolist()
    missing = [i for i, v in enumerate(images) if not isinstance(v, bytes | bytearray)]
    if missing:
        raise DataError(f"column '{column}': {split} split row {missing[0]} holds no encoded image")
    try:
        return decode_images(images, spec)
    except MediaError as exc:
        raise DataError(f"column '{column}': {split} split row {exc}") from None


def pixel_stats(pixels: np.ndarray) -> PixelStats:
    """Per-channel mean and standard deviation of uint8 [N, H, W, C] pixels scaled to [0, 1], in float64 a
    chunk of images at a time, in two passes (the mean, then the squared deviations from it: a constant
    channel's std is exactly 0, then 1, as for a constant scalar column)."""
    import numpy as np

    channels = pixels.shape[-1]
    count = max(int(np.prod(pixels.shape[:-1])), 1)

    def chunks() -> Iterator[np.ndarray]:
        for start in range(0, len(pixels), PIXEL_CHUNK):
            yield pixels[start:start + PIXEL_CHUNK].reshape(-1, channels).astype(np.float64) / 255.0

    mean = sum((c.sum(axis=0) for c in chunks()), np.zeros(channels)) / count
    var = sum((np.square(c - mean).sum(axis=0) for c in chunks()), np.zeros(channels)) / count
    std = np.sqrt(var)
    return PixelStats(mean=[float(m) for m in mean], std=[float(s) if s > 1e-12 else 1.0 for s in std])


def token_ids(tokenizer: Tokenizer, values: pd.Series, max_length: int) -> np.ndarray:
    """A text column -> int64 token ids [N, max_length] (missing texts as empty ones)."""
    return encode_texts(tokenizer, text_values(values), max_length)
