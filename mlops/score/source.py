"""The file a batch scores: CSV or Parquet, read in chunks of exactly `chunk_rows` rows (the last may be short),
so chunk k always holds rows [k * chunk_rows, (k + 1) * chunk_rows) and a resumed run finds the same chunks.

CSV is read as text, every cell a string, and parsed by `mlops.score.rows.from_text` (the Spark engine reads
the same file as text and parses it with the same function). Parquet keeps its types.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops.core.errors import DataError, MlopsError
from mlops.score.rows import declared_ids

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("csv", "parquet")
ID_CHUNK_ROWS = 100_000  # ids read at a time by the duplicate check (one column: small)
SHOWN_DUPLICATES = 5  # duplicated ids quoted in the error, and rows quoted for each


@dataclass(frozen=True)
class InputFile:
    path: Path
    format: str  # csv | parquet
    columns: list[str]
    # integer-typed Parquet columns: pandas turns them into floats when they hold nulls, and both engines turn
    # those back into ints, so a row is judged as the integer it is (the server's lossless-FP32 check)
    integer_columns: frozenset[str] = frozenset()

    @property
    def text(self) -> bool:
        """True when cells are text to parse (CSV), False when typed (Parquet)."""
        return self.format == "csv"

    def identity(self) -> dict[str, Any]:
        """What tells this file from another, or from itself after an edit, without reading it all."""
        st = self.path.stat()
        return {"path": str(self.path), "format": self.format, "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def count_rows(self) -> int | None:
        """Rows in the file: exact for Parquet (its footer); for CSV the line count, a close estimate (a quoted
        field may span lines) that only sizes the progress bar."""
        if self.format == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(self.path).metadata.num_rows)
        lines, last = 0, b"\n"
        with open(self.path, "rb") as f:
            while block := f.read(1 << 20):
                lines += block.count(b"\n")
                last = block[-1:]
        return max(lines - 1 + (last != b"\n"), 0)  # less the header, plus an unterminated last line

    def chunks(self, chunk_rows: int, columns: list[str], as_text: str | None = None) -> Iterator[pd.DataFrame]:
        """Consecutive chunks of `chunk_rows` rows holding only `columns` (CSV: str; Parquet: typed, except
        `as_text`, cast to strings as Spark casts it: an integer id stays "123" even with nulls around)."""
        try:
            if self.format == "csv":
                yield from self._csv_chunks(chunk_rows, columns)
            else:
                yield from self._parquet_chunks(chunk_rows, columns, as_text)
        except MlopsError:
            raise
        except Exception as exc:  # a malformed file is the user's to fix; say where
            raise DataError(f"cannot read {self.path} as {self.format}: {exc}") from None

    def _csv_chunks(self, chunk_rows: int, columns: list[str]) -> Iterator[pd.DataFrame]:
        import pandas as pd

        # text only: no type guessing per chunk (a column would change type between chunks), no NA guessing
        # (from_text decides, as the Spark engine does)
        reader = pd.read_csv(self.path, dtype=str, keep_default_na=False, na_filter=False, usecols=columns,
                             chunksize=chunk_rows)
        with reader:
            yield from reader

    def _parquet_chunks(self, chunk_rows: int, columns: list[str], as_text: str | None) -> Iterator[pd.DataFrame]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pending: list[pa.RecordBatch] = []
        held = 0
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=chunk_rows, columns=columns):
            if as_text is not None:
                k = batch.schema.get_field_index(as_text)
                batch = batch.set_column(k, as_text, batch.column(k).cast(pa.string()))
            # without pandas' metadata, as Spark converts: Arrow types decide the pandas dtypes in both engines
            pending.append(batch.replace_schema_metadata(None))
            held += batch.num_rows
            while held >= chunk_rows:  # batches may stop at row-group ends: re-cut to exact chunks
                table = pa.Table.from_batches(pending)
                yield table.slice(0, chunk_rows).to_pandas()
                rest = table.slice(chunk_rows)
                pending, held = rest.to_batches(), rest.num_rows
        if held:
            yield pa.Table.from_batches(pending).to_pandas()


def open_input(path: str | Path, fmt: str | None = None) -> InputFile:
    """The input file and its column names; a missing file or an unknown format is the user's to fix."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise DataError(f"input file not found: {p}")
    if fmt is None:
        suffix = p.suffix.lower()
        fmt = "csv" if suffix == ".csv" else "parquet" if suffix in (".parquet", ".pq") else None
        if fmt is None:
            raise DataError(f"cannot tell the format of {p} from its suffix: pass --format csv or --format parquet")
    if fmt not in FORMATS:
        raise DataError(f"unknown input format '{fmt}' (use csv or parquet)")
    try:
        if fmt == "csv":
            import pandas as pd

            columns = [str(c) for c in pd.read_csv(p, nrows=0).columns]
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pq.read_schema(p)
            columns = list(schema.names)
            integers = frozenset(f.name for f in schema if pa.types.is_integer(f.type))
    except Exception as exc:
        raise DataError(f"cannot read {p} as {fmt}: {exc}") from None
    return InputFile(p, fmt, columns, integers if fmt == "parquet" else frozenset())


def check_columns(inp: InputFile, needed: list[str], id_column: str | None) -> None:
    """Every model input (and the id column) must be in the file: a whole-file problem, not a row's."""
    missing = [c for c in needed if c not in inp.columns]
    if missing:
        raise DataError(f"{inp.path} lacks the model's input column{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(missing)} (it has: {', '.join(inp.columns)})")
    if id_column is not None and id_column not in inp.columns:
        raise DataError(f"--id-column '{id_column}' is not a column of {inp.path} (it has: {', '.join(inp.columns)})")


def check_unique_ids(inp: InputFile, id_column: str, as_text: bool) -> None:
    """Every id of `id_column` names one row, read as the scoring reads it (`as_text`: cast to strings, for an id
    column that is no model input). An id is a row's key in the output: the key a user joins predictions to
    their inputs and to the ground truth they record by; two rows under one id make that join ambiguous, so a
    file with duplicates is refused before anything is scored. A missing id is the row's own error, not a
    duplicate.

    The file is scored in chunks so that its size is not bounded by memory; this check keeps that: a first pass
    holds one 64-bit hash per row (8 bytes, where a set of the ids themselves would take ten times that), and
    only when two hashes agree does a second pass look at the ids behind them, to name the rows."""
    import numpy as np

    hashes = [_id_hashes(ids) for ids in _id_chunks(inp, id_column, as_text)]
    ordered = np.sort(np.concatenate(hashes)) if hashes else np.empty(0, dtype=np.uint64)
    suspects = set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
    if not suspects:
        return
    first: dict[str, int] = {}
    repeated: dict[str, list[int]] = {}
    row = 0
    for ids in _id_chunks(inp, id_column, as_text):
        for pid, h in zip(ids, _id_hashes(ids, keep_missing=True).tolist(), strict=True):
            if pid is not None and h in suspects:
                seen = first.setdefault(pid, row)
                if seen != row:
                    repeated.setdefault(pid, [seen]).append(row)
            row += 1
    if not repeated:  # only the hashes collided
        return
    rows = sum(len(r) for r in repeated.values())
    shown = "; ".join(f"{pid[:40]!r} at rows {_rows_text(r)}" for pid, r in list(repeated.items())[:SHOWN_DUPLICATES])
    more = f"; and {len(repeated) - SHOWN_DUPLICATES} more" if len(repeated) > SHOWN_DUPLICATES else ""
    ids = f"{len(repeated)} id{'s' if len(repeated) > 1 else ''}"
    raise DataError(f"--id-column '{id_column}' of {inp.path}: {ids} appear{'' if len(repeated) > 1 else 's'} on "
                    f"more than one row ({rows} rows in all): {shown}{more} (rows counted from 0, as the output's "
                    "`row` column counts them). An id keys its row's prediction in the output; make the ids "
                    "unique, or leave out --id-column to key each row by <file name>:<row>")


def _id_chunks(inp: InputFile, id_column: str, as_text: bool) -> Iterator[list[str | None]]:
    for frame in inp.chunks(ID_CHUNK_ROWS, [id_column], as_text=id_column if as_text else None):
        yield declared_ids(frame[id_column].tolist())


def _id_hashes(ids: list[str | None], keep_missing: bool = False) -> Any:
    """One uint64 per id (pandas' vectorised hash of the text); a missing id is left out, or with `keep_missing`
    kept as a hash of its own so that the result lines up with `ids`."""
    import numpy as np
    import pandas as pd

    present = ids if keep_missing else [i for i in ids if i is not None]
    return pd.util.hash_array(np.array(present, dtype=object)) if present else np.empty(0, dtype=np.uint64)


def _rows_text(rows: list[int]) -> str:
    listed = [str(r) for r in rows[:SHOWN_DUPLICATES]]
    if len(rows) > SHOWN_DUPLICATES:
        return f"{', '.join(listed)} and {len(rows) - SHOWN_DUPLICATES} more"
    return f"{', '.join(listed[:-1])} and {listed[-1]}"
