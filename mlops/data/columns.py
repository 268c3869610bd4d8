"""Which kind each column is (numeric, categorical, image, text): as the recipe declares it in `data.columns`,
or as its values imply. Every phase that reads rows asks here, so loading, checking, the schema and the
preprocess step agree on what a column is.

Inference: numbers are numeric (booleans categorical), bytes are encoded images, strings that all name image
files (by suffix) are images, other strings categorical. Text is never inferred: a column of free text looks
like a categorical one with many levels, so the recipe says so (`kind: text`). `data.categorical` forces
categorical, as it always has.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from mlops.data.media import ImageSpec, TextSpec, is_image_path
from mlops.recipe.schema import DataConfig, ImageColumn, TextColumn

if TYPE_CHECKING:
    import pandas as pd

Kind = Literal["numeric", "categorical", "image", "text"]
MEDIA_KINDS = ("image", "text")


def declared_kind(data: DataConfig, name: str) -> Kind | None:
    if name in (data.categorical or []):
        return "categorical"
    column = data.columns.get(name)
    return column.kind if column is not None else None


def inferred_kind(series: pd.Series) -> Kind:
    import pandas as pd

    if pd.api.types.is_bool_dtype(series):
        return "categorical"
    if pd.api.types.is_numeric_dtype(series):
        return "numeric"
    found = pd.api.types.infer_dtype(series, skipna=True)
    if found == "bytes":
        return "image"
    if found == "string" and series.notna().any() and all(is_image_path(v) for v in series.dropna().tolist()):
        return "image"
    return "categorical"


def column_kind(data: DataConfig, name: str, series: pd.Series) -> Kind:
    return declared_kind(data, name) or inferred_kind(series)


def column_kinds(data: DataConfig, frame: pd.DataFrame) -> dict[str, Kind]:
    return {str(name): column_kind(data, str(name), frame[name]) for name in frame.columns}


def image_spec(data: DataConfig, name: str) -> ImageSpec:
    """The column's ImageColumn settings as the transform takes them; the defaults for an inferred column."""
    column = data.columns.get(name)
    if isinstance(column, ImageColumn):
        return ImageSpec(size=column.size, channels=column.channels, max_bytes=column.max_bytes,
                         max_pixels=column.max_pixels)
    return ImageSpec()


def text_column(data: DataConfig, name: str) -> TextColumn:
    column = data.columns.get(name)
    return column if isinstance(column, TextColumn) else TextColumn(kind="text")


def text_spec(data: DataConfig, name: str, max_length: int, vocab_size: int = 0) -> TextSpec:
    column = text_column(data, name)
    return TextSpec(tokenizer=tokenizer_file(name), max_length=max_length, max_chars=column.max_chars,
                    allow_empty=column.allow_empty, vocab_size=vocab_size)


def tokenizer_file(name: str) -> str:
    """The file a text column's tokenizer is saved in (in the preprocess step's directory and the bundle):
    characters a file name cannot safely hold become '_'."""
    return f"tokenizer-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.json"


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return value != value
    import pandas as pd

    return value is pd.NA or value is pd.NaT


def text_values(series: pd.Series) -> list[str]:
    """A text column's values as strings: missing as "" (a CSV reads an empty field as missing), a number
    that a CSV parsed as one back to its text."""
    out = []
    for v in series.tolist():
        if is_missing(v):
            out.append("")
        elif isinstance(v, str):
            out.append(v)
        elif isinstance(v, bytes | bytearray):
            out.append(bytes(v).decode("utf-8", errors="replace"))
        elif isinstance(v, float) and v.is_integer():
            out.append(str(int(v)))
        else:
            out.append(str(v))
    return out
