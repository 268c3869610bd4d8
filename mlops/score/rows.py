"""Judge and score rows offline with the serving code: one verdict for a row, whether it arrives in a request,
a file or a stream.

Every value goes through `Predictor.column`, the check the server applies to each column of a request, so a
row the server would refuse with a 400 is refused here too, with the same message, and a row it accepts is fed
to ONNX Runtime exactly as the server feeds it. What differs is the outcome: the server refuses a request,
batch and stream scoring keep going and report each bad row with the column at fault.

Files and streams carry no JSON types, so their cells are first turned into the values a request would hold:
`from_text` for text (CSV, Redis fields), `from_typed` for typed data (Parquet, Arrow). A text column's cells are
its texts, as they are (no missing-value tokens: "NA" may be a review). An image column's cells are the encoded
images (Parquet binary), their base64, or the paths of image files (a name ending in an image suffix), relative
to the input file's directory or absolute: `image_cell` reads the file, and a file that cannot be read fails its
row, like any bad value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlops.data.media import ImageSpec, is_image_path
from mlops.package.bundle import BundleInput
from mlops.package.predictor import (
    EMBEDDING,
    RAW_TEXT,
    SENT_BYTES,
    SENT_SIZE,
    Predictor,
    RequestError,
    join_feeds,
)

if TYPE_CHECKING:
    import pandas as pd

    from mlops.package.bundle import BundleMeta

# pandas' default `na_values`: the cells training's `read_csv` took for missing values
NA_TEXT = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                     "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})
_INT = re.compile(r"\s*[+-]?\d+\s*")
MAX_SHOWN = 40  # characters of an offending value quoted in an error


def from_text(cell: str | None, numeric: bool) -> Any:
    """A text cell as the JSON value a request would carry: NA tokens -> null; in a numeric column a number
    (an integer stays an int, so the server's lossless-FP32 check applies) or, when it is not one, the text
    itself, which the column check then refuses by name."""
    if cell is None or cell in NA_TEXT:
        return None
    if not numeric:
        return cell
    try:
        value = float(cell)
    except ValueError:
        return cell
    if "_" in cell:  # float() takes "1_000"; read_csv does not
        return cell
    if value.is_integer() and _INT.fullmatch(cell):
        return int(cell)
    return value


def from_typed(value: Any) -> Any:
    """A typed cell (numpy/pandas scalar) as a plain Python value; NaN, NaT and NA are missing."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return from_typed(value.item())
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return None
    except ImportError:  # pragma: no cover - pandas is a core dependency
        pass
    return value


@dataclass
class Judged:
    """The verdict on n rows: feeds for the rows that passed (in order) and, per row, what failed."""

    feeds: dict[str, np.ndarray]
    ok: np.ndarray  # bool [n]
    problems: list[list[tuple[str, str]]]  # per row: (column, message) for each failing column

    @property
    def rows(self) -> int:
        return len(self.ok)

    def error(self, i: int) -> str | None:
        """Row i's error as one line naming each column at fault, or None."""
        return "; ".join(f"{field}: {message}" for field, message in self.problems[i]) or None


def judge(predictor: Predictor, columns: dict[str, Sequence[Any]], n: int,
          row_problems: Sequence[tuple[str, str] | None] | None = None) -> Judged:
    """Check `columns` (every input of the bundle, n plain values each) with the server's column check.

    A column that passes as a whole costs one call; one that fails is checked again in runs split at each bad
    value, so every bad row is found, not only the first. `row_problems` marks rows already known to be bad
    (a missing id). The feeds hold what the server's do: a text's token ids and the texts beside them.
    """
    problems: list[list[tuple[str, str]]] = [[] for _ in range(n)]
    for i, p in enumerate(row_problems or ()):
        if p is not None:
            problems[i].append(p)
    feeds: dict[str, np.ndarray] = {}
    for name, spec in predictor.columns.items():
        values = list(columns[name])
        try:
            feeds |= predictor.column_feeds(name, values, name)
            continue
        except RequestError:
            pass
        feeds |= _column_by_parts(predictor, spec, values, problems)
    ok = np.array([not p for p in problems], dtype=bool)
    if not ok.all():
        feeds = {k: v[ok] for k, v in feeds.items()}
    return Judged(feeds, ok, problems)


def _column_by_parts(predictor: Predictor, spec: BundleInput, values: list[Any],
                     problems: list[list[tuple[str, str]]]) -> dict[str, np.ndarray]:
    """A column with bad values: check it in runs, each ending at the next value the check refuses (its index
    is in the error's field, `name[i]`), so k bad values cost k + 1 calls, not one per value."""
    name = spec.name
    parts: list[dict[str, np.ndarray]] = []
    start = 0
    while start < len(values):
        try:
            parts.append(predictor.column_feeds(name, values[start:], name))
            break
        except RequestError as exc:
            bad = start + _index(exc.field, name)
            if not start <= bad < len(values):  # unexpected field shape: fall back to one value at a time
                bad = start + next(i for i, v in enumerate(values[start:]) if not _passes(predictor, name, v))
            if bad > start:
                parts.append(predictor.column_feeds(name, values[start:bad], name))
            problems[bad].append((name, _problem(exc.message, values[bad], spec)))
            parts.append(_placeholder(spec))
            start = bad + 1
    if not parts:
        parts.append({k: v[:0] for k, v in _placeholder(spec).items()})
    return join_feeds(parts)


def _placeholder(spec: BundleInput) -> dict[str, np.ndarray]:
    """One row's feeds standing in for a refused value (the row is dropped before the model runs)."""
    if spec.image is not None:
        return {spec.name: np.zeros((1, *spec.image.shape), dtype=np.uint8),
                spec.name + SENT_SIZE: np.zeros((1, 2), dtype=np.int64), spec.name + SENT_BYTES: np.full(1, None)}
    if spec.text is not None:
        return {spec.name: np.zeros((1, spec.text.max_length), dtype=np.int64),
                spec.name + RAW_TEXT: np.asarray([""], dtype=object)}
    if spec.dtype == "string":
        return {spec.name: np.asarray([[""]], dtype=object)}
    return {spec.name: np.asarray([[np.nan]], dtype=np.float32)}


def _problem(message: str, value: Any, spec: BundleInput) -> str:
    """The check's message, with the value at fault when that helps: an image's file, never its bytes."""
    if isinstance(value, Unreadable):
        return value.message
    if isinstance(value, ImageFile):
        return f"{message} (file {value.path})"
    if spec.image is not None or repr(value) in message:
        return message
    return f"{message} (value {_shown(value)})"


def _index(field: str, name: str) -> int:
    """i from the field `name[i]` of a refused value; -1 when the field has another shape."""
    if field.startswith(name + "[") and field.endswith("]") and field[len(name) + 1:-1].isdigit():
        return int(field[len(name) + 1:-1])
    return -1


def _passes(predictor: Predictor, name: str, value: Any) -> bool:
    try:
        predictor.column_feeds(name, [value], name)
        return True
    except RequestError:
        return False


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


class ImageFile(bytes):
    """An image file's bytes, with its path for the error that says it is not a readable image."""

    path: str

    def __new__(cls, data: bytes, path: str) -> ImageFile:
        out = super().__new__(cls, data)
        out.path = path
        return out


@dataclass(frozen=True)
class Unreadable:
    """An image file that could not be read: the column check refuses it (it is no image) and its row reports
    `message`."""

    message: str


def image_cell(value: Any, spec: ImageSpec, base: Path | None) -> Any:
    """An image column's cell as a request's value: the bytes of the file it names (a path, relative to `base`),
    or the cell itself (encoded bytes, base64, anything else the check then refuses)."""
    if not is_image_path(value):
        return value
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    try:
        size = path.stat().st_size
        if size > spec.max_bytes:  # refused unread, as a request over the limit would be
            return Unreadable(f"the image is {size:,} bytes, over the limit of {spec.max_bytes:,} (file {value})")
        return ImageFile(path.read_bytes(), value)
    except FileNotFoundError:
        return Unreadable(f"image file not found: {path}")
    except OSError as exc:
        return Unreadable(f"cannot read the image file {path}: {exc.strerror or exc}")


def frame_columns(predictor: Predictor, frame: pd.DataFrame, text: bool,
                  integers: frozenset[str] = frozenset(), base: Path | None = None) -> dict[str, list[Any]]:
    """The bundle's input columns of `frame` as plain values: parsed from text (CSV) or from typed cells;
    `integers` names integer-typed columns whose values pandas may hold as floats (when a null is near). Texts
    stay as they are; image paths are read relative to `base` (see `image_cell`)."""
    out: dict[str, list[Any]] = {}
    for name, spec in predictor.columns.items():
        numeric = spec.dtype != "string"
        cells = frame[name].tolist()
        if spec.image is not None:  # as texts are: an empty CSV cell is empty, whichever engine read it
            out[name] = [image_cell("" if text and c is None else from_typed(c), spec.image, base) for c in cells]
        elif spec.text is not None:
            # a CSV cell is a text as it is ("NA" too), and an empty one is empty (Spark reads it as null)
            out[name] = ["" if c is None else c for c in cells] if text else [from_typed(c) for c in cells]
        elif text:
            out[name] = [from_text(c, numeric) for c in cells]
        elif name in integers:
            out[name] = [int(v) if isinstance(v, float) else v for v in map(from_typed, cells)]
        else:
            out[name] = [from_typed(c) for c in cells]
    return out


# --- outputs -----------------------------------------------------------------------------------------------

ARROW_TYPES = {"string": "string", "float32": "float32", "float64": "float64", "int64": "int64", "int32": "int32",
               "bool": "bool"}


def output_fields(meta: BundleMeta) -> list[tuple[str, str, bool]]:
    """(name, element dtype, is a list per row) for each model output, from bundle.json: `label` (string),
    `probabilities` (float32 list), `prediction` (float32)."""
    fields = []
    for o in meta.outputs:
        if o["name"] == EMBEDDING:  # for monitoring, never part of an answer
            continue
        dtype = str(o.get("dtype", "float32"))
        if dtype not in ARROW_TYPES:
            raise ValueError(f"model output '{o['name']}' has dtype {dtype}, which batch scoring cannot store")
        fields.append((str(o["name"]), dtype, len(o.get("shape", ["N"])) > 1))
    return fields


def declared_ids(cells: Sequence[Any]) -> list[str | None]:
    """An id column's cells as the ids of their rows: text, None where missing (null, NaN or empty)."""
    ids = [from_typed(v) for v in cells]
    return [None if v is None or v == "" else str(v) for v in ids]


def score_frame(predictor: Predictor, frame: pd.DataFrame, text: bool, first_row: int, source: str,
                id_column: str | None, model_version: str | None, fields: list[tuple[str, str, bool]],
                integers: frozenset[str] = frozenset(), base: Path | None = None,
                unseen: dict[str, int] | None = None) -> pd.DataFrame:
    """Judge and score one chunk whose first row is row `first_row` of the input: one output row per input row,
    in order. Columns: id, row, model, version, each model output (null on a failed row), error (null on a
    scored row). The id is the `id_column` value (a row without one fails), else `<source>:<row>`. Image paths
    are relative to `base` (the input file's directory). The scored rows' categories never seen in training are
    added to `unseen`, by column (under data.categories.unseen `error` they are failed rows instead)."""
    import pandas as pd

    n = len(frame)
    rows = np.arange(first_row, first_row + n, dtype=np.int64)
    generated = [f"{source}:{r}" for r in rows.tolist()]
    row_problems: list[tuple[str, str] | None] = []
    ids = generated
    if id_column is not None:
        declared = declared_ids(frame[id_column].tolist())
        row_problems = [None if v is not None else (id_column, "missing id") for v in declared]
        ids = [v if v is not None else g for v, g in zip(declared, generated, strict=True)]
    judged = judge(predictor, frame_columns(predictor, frame, text, integers, base), n, row_problems)
    out: dict[str, Any] = {
        "id": pd.Series(ids, dtype=object),
        "row": rows,
        "model": pd.Series([predictor.name] * n, dtype=object),
        "version": pd.Series([model_version] * n, dtype=object),
    }
    outputs = predictor.predict(judged.feeds).outputs if judged.ok.any() else {}
    if unseen is not None and judged.ok.any():
        for column, at in predictor.unseen(judged.feeds).items():
            unseen[column] = unseen.get(column, 0) + len(at)
    where = np.flatnonzero(judged.ok)
    for name, dtype, is_list in fields:
        column = np.full(n, None, dtype=object)  # object even when empty: Arrow then takes the schema's type
        if name in outputs:
            values = outputs[name]
            if is_list:  # one array per row (assigning them at once would broadcast them as a 2-D block)
                for i, v in zip(where.tolist(), values.astype(dtype), strict=True):
                    column[i] = v
            else:
                column[where] = values.tolist()
        out[name] = pd.Series(column, dtype=object)
    out["error"] = pd.Series([judged.error(i) if judged.problems[i] else None for i in range(n)], dtype=object)
    return pd.DataFrame(out)


def arrow_schema(fields: list[tuple[str, str, bool]]) -> Any:
    import pyarrow as pa

    cols = [pa.field("id", pa.string(), nullable=False), pa.field("row", pa.int64(), nullable=False),
            pa.field("model", pa.string(), nullable=False), pa.field("version", pa.string())]
    for name, dtype, is_list in fields:
        t = pa.type_for_alias(ARROW_TYPES[dtype])
        cols.append(pa.field(name, pa.list_(t) if is_list else t))
    cols.append(pa.field("error", pa.string()))
    return pa.schema(cols)
