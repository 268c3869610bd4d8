"""Which kind each column is (numeric, categorical, image, text): as the recipe declares it in `data.columns`,
or as its values imply. Every phase that reads rows asks here, so loading, checking, the schema and the
preprocess step agree on what a column is.

Inference: numbers are numeric (booleans categorical), bytes are encoded images, strings that all name image
files (by suffix) are images, other strings categorical. Text is never inferred: a column of free text looks
like a categorical one with many levels, so the recipe says so (`kind: text`). `data.categorical` forces
categorical, as it always has.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Collection
from dataclasses import dataclass
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


def inferred_kind(series: pd.Series | Column) -> Kind:
    if isinstance(series, Column):
        return series.kind()
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


def column_kind(data: DataConfig, name: str, series: pd.Series | Column) -> Kind:
    return declared_kind(data, name) or inferred_kind(series)


def column_kinds(data: DataConfig, frame: pd.DataFrame | Table) -> dict[str, Kind]:
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


# --- A CSV file's rows without pandas -------------------------------------------------------------------------
# `mlops validate` and `plan` read a CSV recipe's file with the csv module into a Table that answers as the frame
# `pd.read_csv` gives would (its columns, each one's dtype, the values `tolist()` returns): importing pandas and
# numpy costs more CPU than everything else the two commands do (issue 19). Where the two could differ (quoting
# oddities, an encoding other than UTF-8, a value pandas may read as a number that the rules below do not) the
# reader raises Unsure and the caller reads the file with pandas instead: never a different answer.

# pandas' default missing-value spellings (`pandas._libs.parsers.STR_NA_VALUES`, a test compares them)
NA_VALUES = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                       "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})
TRUE_VALUES = frozenset({"True", "TRUE", "true"})
FALSE_VALUES = frozenset({"False", "FALSE", "false"})
INT = re.compile(r"[+-]?[0-9]+")
FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
DECIMAL = re.compile(r"[+-]?([0-9]*)\.?([0-9]*)(?:[eE]([+-]?[0-9]+))?")
INT64 = 2**63
Dtype = Literal["int", "float", "bool", "object"]
# the most of a file read this way: about 0.2 s of CPU a MiB here, where pandas costs about 0.3 s to import and
# 0.02 s a MiB (measured 2026-12-04, 2 cores AMD EPYC): beyond it pandas is the faster reader
LIGHT_BYTES = 2**20


class Unsure(Exception):
    """The light reader cannot tell that pandas would read the file the same way: read it with pandas."""


@dataclass(frozen=True)
class Column:
    """One column as pandas would hold it: `values` with None for missing, `dtype` as pandas would infer it
    (int64, float64, bool, or object: strings, or booleans when some are missing)."""

    name: str
    values: list[Any]
    dtype: Dtype
    # every number is the double pandas reads (None: not checked): its C parser (pandas 2) is not correctly
    # rounded, so a value with more digits than a double holds exactly, or a large exponent, may differ from
    # Python's float() in the last bit; validate reads a column it compares by value (the target, a sliced
    # column) with pandas then
    exact: bool | None = True

    def tolist(self) -> list[Any]:
        """As `Series.tolist()`: missing as NaN."""
        return [math.nan if v is None else v for v in self.values]

    def isna(self) -> list[bool]:
        return [v is None for v in self.values]

    def present(self) -> list[Any]:
        return [v for v in self.values if v is not None]

    def take(self, rows: list[int]) -> Column:
        return Column(self.name, [self.values[i] for i in rows], self.dtype, self.exact)

    @property
    def numeric(self) -> bool:
        return self.dtype in ("int", "float")

    def kind(self) -> Kind:
        """As `inferred_kind` answers for the pandas column."""
        if self.numeric:
            return "numeric"
        present = self.present()
        if present and all(isinstance(v, str) for v in present) and all(is_image_path(v) for v in present):
            return "image"
        return "categorical"

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class Table:
    """A CSV file's rows as Columns, in the header's order (the duck-typed part of a DataFrame that validate's
    checks use: `columns`, `frame[name]`, `len`)."""

    by_name: dict[str, Column]
    rows: int

    @property
    def columns(self) -> list[str]:
        return list(self.by_name)

    def __getitem__(self, name: str) -> Column:
        return self.by_name[name]

    def __len__(self) -> int:
        return self.rows

    def take(self, rows: list[int]) -> Table:
        return Table({n: c.take(rows) for n, c in self.by_name.items()}, len(rows))


def csv_text(raw: bytes) -> str:
    """A CSV file's bytes as text, as pandas decodes them (UTF-8, a leading BOM dropped); Unsure otherwise."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Unsure("not UTF-8") from None
    if "\0" in text or re.search(r"\r(?!\n)", text):  # NUL bytes, lone CR line ends: pandas' tokenizer differs
        raise Unsure("NUL byte or lone carriage return")
    return text


def csv_header(raw: bytes) -> list[str]:
    """The header's column names as pandas names them; Unsure where pandas renames them (duplicates, blanks)."""
    header = next(csv.reader(io.StringIO(csv_text(raw), newline="")), [])
    if not header or len(set(header)) != len(header) or any(not h or '"' in h or "\n" in h for h in header):
        raise Unsure("a header pandas would rename")
    return header


def read_table(raw: bytes, nrows: int | None = None, exact: Collection[str] = ()) -> Table:
    """The rows of a CSV file (the first `nrows` records of it) as `pd.read_csv` would read them. Every record
    must have the header's fields (the caller checks that first); Unsure where pandas might answer otherwise,
    and where a column named in `exact` has a number pandas may read a bit differently (`Column.exact`).
    The last table read is kept: `mlops plan` reads the same file for validate's checks and for its identity."""
    last = _LAST[0]
    if last is not None and last[1] == nrows and set(exact) <= last[2] and last[0] == raw:
        return last[3]
    header = csv_header(raw)
    reader = csv.reader(io.StringIO(csv_text(raw), newline=""))
    next(reader)
    records: list[list[str]] = []
    for fields in reader:
        if not fields:
            continue  # a blank line: pandas skips it too
        if nrows is not None and len(records) >= nrows:
            break
        if len(fields) != len(header):
            raise Unsure("a ragged line")
        for f in fields:
            if '"' in f or "\n" in f or "\r" in f:  # escaped quotes, line breaks in a field: rare, read by pandas
                raise Unsure("a quote or line break inside a field")
        records.append(fields)
    columns = {name: _column(name, [r[i] for r in records], name in exact) for i, name in enumerate(header)}
    if any(name in columns and columns[name].exact is False for name in exact):
        raise Unsure("a number compared by value that pandas may read differently in its last bit")
    table = Table(columns, len(records))
    _LAST[0] = (raw, nrows, frozenset(exact), table)
    return table


_LAST: list[tuple[bytes, int | None, frozenset[str], Table] | None] = [None]  # read_table's last answer


def _column(name: str, raw: list[str], check: bool = True) -> Column:
    """One column's strings typed as pandas' C parser types them (its default options); `check`: whether its
    numbers are checked for `Column.exact` (one more pattern match a value)."""
    present = [s for s in raw if s not in NA_VALUES]
    missing = len(present) < len(raw)
    if all(INT.fullmatch(s) for s in present):
        ints = [int(s) for s in present]
        if any(not -INT64 <= i < INT64 for i in ints):
            raise Unsure("an integer beyond int64")
        if not missing:
            return Column(name, ints, "int")
        return Column(name, [None if s in NA_VALUES else float(int(s)) for s in raw], "float",
                      all(_exact(s) for s in present) if check else None)
    if all(FLOAT.fullmatch(s) or INT.fullmatch(s) for s in present):
        return Column(name, [None if s in NA_VALUES else float(s) for s in raw], "float",
                      all(_exact(s) for s in present) if check else None)
    if all(s in TRUE_VALUES or s in FALSE_VALUES for s in present):
        values = [None if s in NA_VALUES else s in TRUE_VALUES for s in raw]
        return Column(name, values, "object" if missing else "bool")
    if all(_maybe_number(s) for s in present):
        raise Unsure("values pandas may read as numbers (inf, spaces, underscores)")
    return Column(name, [None if s in NA_VALUES else s for s in raw], "object")


def _exact(number: str) -> bool:
    """Whether pandas 2's parser reads the decimal as the correctly rounded double float() gives: its digits
    (at most 17, which it reads) make an integer below 2**53 and its power of ten is one exact double (|k| <= 22),
    so one multiplication or division rounds once, as float() does."""
    match = DECIMAL.fullmatch(number)
    if match is None:
        return False
    whole, fraction, exponent = match.groups()
    digits = whole + fraction
    mantissa = int(digits or "0")
    power = int(exponent or 0) - len(fraction)
    return mantissa == 0 or (len(digits) <= 17 and mantissa < 2**53 and -22 <= power <= 22)


def _maybe_number(value: str) -> bool:
    """Whether pandas might take the string for a number or a boolean (then the whole column's type is unsure)."""
    if value in TRUE_VALUES or value in FALSE_VALUES or FLOAT.fullmatch(value):
        return True
    try:
        float(value)
    except ValueError:
        return value.strip().lower().lstrip("+-") in ("inf", "infinity")
    return True
