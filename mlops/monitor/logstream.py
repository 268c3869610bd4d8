"""The prediction log, read as a stream of windows with bounded memory.

The database cuts the windows (`read_windows`): by count or by time, it returns only each window's last rowid
and size. Each window's rows are then read by rowid in chunks (keyset pagination: each chunk is its own short
query, so a live server keeps writing meanwhile) with the monitored fields taken out of the JSON by the
database (`LogReader.chunk_fields`: SQLite's JSON functions, PostgreSQL's jsonb), so that neither the documents
nor their parsing come to Python, and turned into compact columns (float64 per numeric value, one object per
category). Ground truth is joined by prediction id in the same query (the latest feedback for an id wins). Only
one window's columns are held at a time, never the log.

An image or text model's rows are still parsed whole in Python (`parse_rows`): their payloads (a base64 image,
the start of a text) and descriptors are kept as the row holds them. So is every row where SQLite lacks `->`
(before 3.38) or a column's name holds a quote (no JSON path can name it).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlops.core.predlog import LogField, LogFilter, LogReader, Traffic, sql_extractable
from mlops.core.predlog_pg import PgLogReader
from mlops.core.predlog_store import open_reader
from mlops.data.descriptors import described_input, descriptor_columns
from mlops.package.bundle import BundleMeta
from mlops.package.predictor import DESCRIPTORS, EMBEDDING

CHUNK_ROWS = 10_000
# Whether the monitored fields are extracted by the database (json_extract, jsonb) or each window's rows are
# parsed whole by orjson. Measured on 1,000,000 rows (2 cores, 2026-12-04): the databases' JSON parsing is slower
# than orjson here (count windows of 1,000: SQLite 9.6 s vs 7.9 s, PostgreSQL 21.4 s vs 10.6 s), with the same
# peak memory; it sends 2-3x fewer bytes, which pays only over a slow link to a remote database. The windows'
# bounds are cut by the database either way, so memory follows the window.
FIELDS_IN_SQL = False
EXAMPLE_CHARS = 500  # of a text, what the monitor keeps to show
LATE_GRACE_S = 2.0  # a time window is complete once its end is this far in the past (writes in flight)

try:  # several times faster than json on the log's many small objects; a Prefect and KServe dependency
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - the json module is always there
    from json import loads as _loads


@dataclass
class Rows:
    """A run of log rows as columns. Numeric inputs are float64 with NaN for missing; categorical ones are
    strings or None; `label`/`proba` (classification) or `prediction` (regression) are the model's outputs;
    `truth_label`/`truth_value` the joined ground truth (None / NaN where none arrived)."""

    rowid: np.ndarray
    ids: np.ndarray
    ts: np.ndarray
    latency_ms: np.ndarray
    versions: np.ndarray
    numeric: dict[str, np.ndarray]
    categorical: dict[str, np.ndarray]
    label: np.ndarray | None = None
    proba: np.ndarray | None = None
    prediction: np.ndarray | None = None
    truth_label: np.ndarray | None = None
    truth_value: np.ndarray | None = None
    # row-aligned problems: per column, the raw value where it had the wrong type (None elsewhere); per
    # unknown column, which rows carried it
    bad_values: dict[str, np.ndarray] = field(default_factory=dict)
    unknown: dict[str, np.ndarray] = field(default_factory=dict)
    # an image or text model's logged embeddings [N, k] (NaN rows where a row has none), else None
    embedding: np.ndarray | None = None
    # per image or text input, the payload the log kept (base64 image, or the text's start), None elsewhere:
    # what a drifted window shows of its inputs
    payloads: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.rowid.size)

    @property
    def confidence(self) -> np.ndarray | None:
        return None if self.proba is None or self.proba.size == 0 else self.proba.max(axis=1)

    def take(self, sel: slice) -> Rows:
        def cut(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[sel]

        return Rows(self.rowid[sel], self.ids[sel], self.ts[sel], self.latency_ms[sel], self.versions[sel],
                    {k: v[sel] for k, v in self.numeric.items()}, {k: v[sel] for k, v in self.categorical.items()},
                    cut(self.label), cut(self.proba), cut(self.prediction), cut(self.truth_label),
                    cut(self.truth_value), {k: v[sel] for k, v in self.bad_values.items()},
                    {k: v[sel] for k, v in self.unknown.items()}, cut(self.embedding),
                    {k: v[sel] for k, v in self.payloads.items()})

    @staticmethod
    def concat(parts: list[Rows]) -> Rows:
        def cat(arrays: list[np.ndarray | None]) -> np.ndarray | None:
            present = [a for a in arrays if a is not None]
            return np.concatenate(present) if present else None

        def sparse(name: str, attr: str, empty: Any) -> np.ndarray:
            """A row-aligned problem column that only some parts have: the others contribute `empty`."""
            return np.concatenate([getattr(p, attr).get(name, np.full(len(p), empty)) for p in parts])

        first = parts[0]
        return Rows(cat([p.rowid for p in parts]), cat([p.ids for p in parts]), cat([p.ts for p in parts]),
                    cat([p.latency_ms for p in parts]), cat([p.versions for p in parts]),
                    {k: np.concatenate([p.numeric[k] for p in parts]) for k in first.numeric},
                    {k: np.concatenate([p.categorical[k] for p in parts]) for k in first.categorical},
                    cat([p.label for p in parts]), cat([p.proba for p in parts]), cat([p.prediction for p in parts]),
                    cat([p.truth_label for p in parts]), cat([p.truth_value for p in parts]),
                    {k: sparse(k, "bad_values", None) for k in set().union(*(p.bad_values for p in parts))},
                    {k: sparse(k, "unknown", False) for k in set().union(*(p.unknown for p in parts))},
                    stack_embeddings([(len(p), p.embedding) for p in parts]),
                    {k: sparse(k, "payloads", None) for k in set().union(*(p.payloads for p in parts))})


def stack_embeddings(parts: list[tuple[int, np.ndarray | None]]) -> np.ndarray | None:
    """Row-aligned embeddings of consecutive parts; a part without any (or a narrower one, from another model
    version) is padded with NaN rows, which the drift statistics leave out."""
    widths = [e.shape[1] for _, e in parts if e is not None]
    if not widths:
        return None
    width = max(widths)
    out = np.full((sum(n for n, _ in parts), width), np.nan, dtype=np.float32)
    start = 0
    for n, e in parts:
        if e is not None:
            out[start:start + n, :e.shape[1]] = e
        start += n
    return out


@dataclass
class Window:
    index: int  # 0-based within this read
    rows: Rows
    start_ts: float  # nominal bounds: by time, the aligned window; by count, first and last row
    end_ts: float
    key: int | None = None  # by time: floor(start / duration)

    @property
    def start_rowid(self) -> int:
        return int(self.rows.rowid[0])

    @property
    def end_rowid(self) -> int:
        return int(self.rows.rowid[-1])


def read_chunks(path: str | Path, flt: LogFilter, columns: dict[str, str], task: str, after_rowid: int = 0,
                chunk_rows: int = CHUNK_ROWS, in_sql: bool = FIELDS_IN_SQL) -> Iterator[Rows]:
    """Parsed chunks of the model's rows after `after_rowid`, in log order. `columns`: name -> kind.
    `in_sql` False: every row's whole JSON parsed in Python (what media inputs take anyway)."""
    with open_reader(path) as reader:
        yield from _chunks(reader, flt, columns, task, after_rowid, chunk_rows, None, in_sql)


def _chunks(reader: LogReader | PgLogReader, flt: LogFilter, columns: dict[str, str], task: str, after_rowid: int,
            chunk_rows: int, total: int | None, in_sql: bool = FIELDS_IN_SQL, through: int | None = None
            ) -> Iterator[Rows]:
    """Chunks of at most `chunk_rows` rows after `after_rowid` (`total` rows in all, None: to the end), up to rowid
    `through` when given (a window's last: without it, a planner that misjudges the filter, as PostgreSQL does on
    a table not yet analysed, reads every later row for each chunk)."""
    fields = row_fields(columns, task) if in_sql and reader.reads_fields else None
    known = (*columns, DESCRIPTORS)  # the descriptors' key is the server's own, never an unknown column
    last, left = after_rowid, total
    while left is None or left > 0:
        limit = chunk_rows if left is None else min(chunk_rows, left)
        if fields is None:
            raw = reader.chunk(flt, last, limit, through)
        else:
            raw = reader.chunk_fields(flt, last, limit, fields, known, through)
        if not raw:
            return
        last = raw[-1][0]
        yield parse_rows(raw, columns, task) if fields is None else parse_fields(raw, columns, task)
        if left is not None:
            left -= len(raw)
        if len(raw) < limit:
            return


class LogWindows:
    """The complete windows of the filter's rows after rowid `after_rowid`, cut by the database
    (`window_bounds`: by `size` rows, or by `duration` seconds after window `after_key`); each one's rows are
    read when it is reached. `rows` (known once iteration starts): every row after the cursor, in a complete
    window or waiting for the next one. By time, the last window is complete once its end is LATE_GRACE_S in
    the past (`now`)."""

    def __init__(self, path: str | Path, flt: LogFilter, columns: dict[str, str], task: str, after_rowid: int = 0,
                 *, size: int | None = None, duration: float | None = None, after_key: int | None = None,
                 now: float | None = None, chunk_rows: int = CHUNK_ROWS, in_sql: bool = FIELDS_IN_SQL) -> None:
        if (size is None) == (duration is None):
            raise ValueError("windows by count (size) or by time (duration)")
        self.path, self.flt, self.columns, self.task = path, flt, columns, task
        self.after_rowid, self.size, self.duration, self.after_key = after_rowid, size, duration, after_key
        self.now, self.chunk_rows, self.in_sql = now, chunk_rows, in_sql
        self.rows = 0

    def __iter__(self) -> Iterator[Window]:
        with open_reader(self.path) as reader:
            bounds = reader.window_bounds(self.flt, self.after_rowid, size=self.size, duration=self.duration,
                                          after_key=self.after_key)
            self.rows = sum(int(n) for _, _, n in bounds)
            after = self.after_rowid
            for index, (end, key, n) in enumerate(self._complete(bounds)):
                # the window's rows only (in chunks of chunk_rows at most), never a row of the next one
                parts = list(_chunks(reader, self.flt, self.columns, self.task, after, self.chunk_rows, n,
                                     self.in_sql, end))
                if not parts:  # rows gone since the bounds were read (a retention pass): the next run goes on
                    return
                rows = Rows.concat(parts)
                if self.duration is None:
                    yield Window(index, rows, float(rows.ts.min()), float(rows.ts.max()))
                else:
                    yield Window(index, rows, key * self.duration, (key + 1) * self.duration, key)
                after = end

    def _complete(self, bounds: list[tuple[int, int | None, int]]) -> list[tuple[int, int | None, int]]:
        if self.duration is None:
            return [b for b in bounds if b[2] == self.size]
        now = time.time() if self.now is None else self.now
        # every window but the last is closed (a later row began the next one); the last once its end has passed
        if bounds and (int(bounds[-1][1]) + 1) * self.duration + LATE_GRACE_S > now:  # type: ignore[arg-type]
            return bounds[:-1]
        return bounds


def read_windows(path: str | Path, flt: LogFilter, columns: dict[str, str], task: str, after_rowid: int = 0, *,
                 size: int | None = None, duration: float | None = None, after_key: int | None = None,
                 now: float | None = None, chunk_rows: int = CHUNK_ROWS, in_sql: bool = FIELDS_IN_SQL) -> LogWindows:
    """The model's complete windows after `after_rowid`: every `size` rows, or aligned to multiples of
    `duration` seconds after window `after_key` (a late row joins the window being filled). `in_sql` False:
    the windows' rows parsed whole in Python (the bounds still come from the database)."""
    return LogWindows(path, flt, columns, task, after_rowid, size=size, duration=duration, after_key=after_key,
                      now=now, chunk_rows=chunk_rows, in_sql=in_sql)


def other_traffic(path: str | Path, flt: LogFilter, after_rowid: int) -> dict[Traffic, int]:
    """Rows after `after_rowid` that the filter left out, by model, version and variant: what to tell a user
    whose filter matched nothing (the wrong version, a shadow-only model...)."""
    with open_reader(path) as reader:
        return reader.traffic(after_rowid)


NUMERIC_KINDS = ("numeric",)
EMBEDDING_COLUMN = EMBEDDING  # the embedding's drift is judged as one more feature, by this name
MEDIA_KINDS = ("image", "text")  # known inputs, not profiled themselves: their descriptors and embedding are


def row_fields(columns: dict[str, str], task: str) -> list[LogField] | None:
    """What `parse_fields` reads of each row, in its order: each monitored input, the outputs, the embedding.
    None where some column must be parsed in Python (media inputs, or a name no SQLite JSON path can hold)."""
    if any(kind in MEDIA_KINDS for kind in columns.values()) or not all(map(sql_extractable, columns)):
        return None
    outputs = ("prediction",) if task == "regression" else ("label", "probabilities")
    return [*(LogField("inputs", (name,)) for name in columns),
            *(LogField("outputs", (name,)) for name in (*outputs, EMBEDDING))]


def monitored_columns(meta: BundleMeta) -> dict[str, str]:
    """Each input by its kind, as the monitor reads it from the log: numeric and categorical values as they
    are; an image or a text is known (a row that sends it is not an unknown column) and profiled through its
    descriptors (`image.brightness`, `review.chars`, ... numeric or categorical columns of their own, see
    mlops.data.descriptors) and the model's embedding (judged apart, see mlops.monitor.embedding)."""
    out = {}
    for i in meta.inputs:
        out[i.name] = i.kind
        out |= descriptor_columns(i.name, i.kind, i.image.channels if i.image is not None else 1)
    return out


def parse_rows(raw: list[tuple[Any, ...]], columns: dict[str, str], task: str) -> Rows:
    n = len(raw)
    rowid = np.fromiter((r[0] for r in raw), np.int64, n)
    ids = np.asarray([r[1] for r in raw], dtype=object)
    ts = np.fromiter((r[2] for r in raw), np.float64, n)
    canon: dict[Any, Any] = {}
    versions = np.asarray([canon.setdefault(r[3], r[3]) for r in raw], dtype=object)
    latency = np.fromiter((r[6] for r in raw), np.float64, n)
    inputs = [_loads(r[4]) for r in raw]
    outputs = [_loads(r[5]) for r in raw]
    rows = Rows(rowid, ids, ts, latency, versions, {}, {})
    inputs = [d if isinstance(d, dict) else {} for d in inputs]
    described = [d.pop(DESCRIPTORS, None) for d in inputs]
    described = [d if isinstance(d, dict) else {} for d in described]
    for name, kind in columns.items():
        if kind in MEDIA_KINDS:
            rows.payloads[name] = _payloads([d.get(name) for d in inputs], kind)
            continue
        source = described if columns.get(described_input(name)) in MEDIA_KINDS else inputs
        values = [d.get(name) for d in source]
        parse = _numeric if kind in NUMERIC_KINDS else _categorical
        rows_values, bad = parse(values)
        (rows.numeric if kind in NUMERIC_KINDS else rows.categorical)[name] = rows_values
        if bad is not None:
            rows.bad_values[name] = bad
    for extra in set().union(*(d.keys() for d in inputs)) - set(columns):  # descriptors were popped above
        rows.unknown[extra] = np.fromiter((extra in d for d in inputs), bool, n)
    if task == "regression":
        rows.prediction = np.asarray([_scalar(o.get("prediction")) for o in outputs], dtype=np.float64)
    else:
        rows.label = np.asarray([None if o.get("label") is None else str(o.get("label")) for o in outputs],
                                dtype=object)
        probas = [o.get("probabilities") for o in outputs]
        if all(isinstance(p, list) for p in probas) and probas:
            rows.proba = np.asarray(probas, dtype=np.float64)
    rows.embedding = _embeddings(outputs)
    rows.truth_label = np.asarray([r[7] for r in raw], dtype=object)
    rows.truth_value = np.asarray([np.nan if r[8] is None else r[8] for r in raw], dtype=np.float64)
    return rows


def parse_fields(raw: list[tuple[Any, ...]], columns: dict[str, str], task: str) -> Rows:
    """`parse_rows` for rows whose fields the database took out of their JSON (`chunk_fields` with
    `row_fields`): the same columns, from one parse of the chunk's small arrays of values."""
    n = len(raw)
    cols: list[tuple[Any, ...]] = list(zip(*raw, strict=True)) if raw else [() for _ in range(10)]
    rowid = np.fromiter(cols[0], np.int64, n)
    ids = np.asarray(cols[1], dtype=object) if n else np.empty(0, dtype=object)
    ts = np.fromiter(cols[2], np.float64, n)
    canon: dict[Any, Any] = {}
    versions = np.asarray([canon.setdefault(v, v) for v in cols[3]], dtype=object)
    latency = np.fromiter(cols[4], np.float64, n)
    rows = Rows(rowid, ids, ts, latency, versions, {}, {})
    rows.truth_label = np.asarray(cols[5], dtype=object) if n else np.empty(0, dtype=object)
    rows.truth_value = np.asarray([np.nan if v is None else v for v in cols[6]], dtype=np.float64)
    for i, others in enumerate(cols[7]):
        if others and others != "{}":
            extra = _loads(others)
            for key in extra if isinstance(extra, dict) else ():  # a document that is no object has no column
                rows.unknown.setdefault(key, np.zeros(n, dtype=bool))[i] = True
    inputs, outputs = (_transposed(texts, width) for texts, width in (
        (cols[8], len(columns)), (cols[9], 2 if task == "regression" else 3)))
    for (name, kind), values in zip(columns.items(), inputs, strict=True):
        parse = _numeric if kind in NUMERIC_KINDS else _categorical
        rows_values, bad = parse(values)
        (rows.numeric if kind in NUMERIC_KINDS else rows.categorical)[name] = rows_values
        if bad is not None:
            rows.bad_values[name] = bad
    if task == "regression":
        rows.prediction = np.asarray([_scalar(v) for v in outputs[0]], dtype=np.float64)
    else:
        rows.label = np.asarray([None if v is None else str(v) for v in outputs[0]], dtype=object)
        probas = outputs[1]
        if all(isinstance(p, list) for p in probas) and probas:
            rows.proba = np.asarray(probas, dtype=np.float64)
    rows.embedding = _embedding_matrix(outputs[-1])
    return rows


def _transposed(texts: tuple[str, ...], width: int) -> list[list[Any]]:
    """Each row's JSON array of values, parsed in one call for the whole chunk, as `width` columns."""
    if not texts:
        return [[] for _ in range(width)]
    return [list(c) for c in zip(*_loads("[" + ",".join(texts) + "]"), strict=True)]


def _payloads(values: list[Any], kind: str) -> np.ndarray:
    out = np.full(len(values), None, dtype=object)
    for i, v in enumerate(values):
        payload = v.get("b64") if kind == "image" and isinstance(v, dict) else v if kind == "text" else None
        if isinstance(payload, str) and payload:
            out[i] = payload[:EXAMPLE_CHARS] if kind == "text" else payload
    return out


def _embeddings(outputs: list[dict[str, Any]]) -> np.ndarray | None:
    return _embedding_matrix([o.get(EMBEDDING) for o in outputs])


def _embedding_matrix(vectors: list[Any]) -> np.ndarray | None:
    first = next((v for v in vectors if isinstance(v, list) and v), None)
    if first is None:
        return None
    width = len(first)
    out = np.full((len(vectors), width), np.nan, dtype=np.float32)
    for i, v in enumerate(vectors):
        if isinstance(v, list) and len(v) == width:
            try:
                out[i] = v
            except (TypeError, ValueError):  # a hand-edited log row: left out, as a missing one is
                pass
    return out


def _scalar(v: Any) -> float:
    while isinstance(v, list) and len(v) == 1:
        v = v[0]
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan


_NUMERIC_OK = {float, int, type(None)}


def _numeric(values: list[Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """float64 with NaN for missing; and the raw values of a wrong type (a string, a bool...), if any."""
    if set(map(type, values)) <= _NUMERIC_OK:  # the usual case, converted in one go (None -> NaN)
        return np.asarray(values, dtype=np.float64), None
    out = np.empty(len(values), dtype=np.float64)
    bad = np.full(len(values), None, dtype=object)
    for i, v in enumerate(values):
        if type(v) in _NUMERIC_OK:
            out[i] = math.nan if v is None else v
        else:  # a type error is no value
            out[i] = math.nan
            bad[i] = v
    return out, bad


def _categorical(values: list[Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """Strings, None for missing (and ""); a number where a category belongs is a type error, kept as its
    string for the distributions."""
    if set(map(type, values)) <= {str, type(None)}:
        # one object per distinct category, not one per row: a window of a million rows holds pointers only
        canon: dict[str, str] = {}
        return np.asarray([canon.setdefault(v, v) if v else None for v in values], dtype=object), None
    out = np.empty(len(values), dtype=object)
    bad = np.full(len(values), None, dtype=object)
    for i, v in enumerate(values):
        if v is None or isinstance(v, str):
            out[i] = v or None
        else:
            bad[i] = v
            out[i] = str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
    return out, bad


# --- windows -------------------------------------------------------------------------------------------------


def count_windows(chunks: Iterator[Rows], size: int) -> Iterator[Window]:
    """Every `size` rows a window; a trailing partial window is not yielded (it is not complete yet)."""
    parts: list[Rows] = []
    held = 0
    index = 0
    for chunk in chunks:
        start = 0
        while start < len(chunk):
            take = min(size - held, len(chunk) - start)
            parts.append(chunk.take(slice(start, start + take)))
            held += take
            start += take
            if held == size:
                rows = Rows.concat(parts)
                yield Window(index, rows, float(rows.ts.min()), float(rows.ts.max()))
                index += 1
                parts, held = [], 0


def time_windows(chunks: Iterator[Rows], duration: float, after_key: int | None = None,
                 now: float | None = None) -> Iterator[Window]:
    """Windows aligned to multiples of `duration` (unix time), in log order. A row older than the window being
    filled (a late write) joins it; the last window is yielded only once its end has passed. `after_key`: the
    last window already judged; later rows never reopen it."""
    now = time.time() if now is None else now
    parts: list[Rows] = []
    key: int | None = None
    index = 0
    for chunk in chunks:
        keys = np.floor(chunk.ts / duration).astype(np.int64)
        if after_key is not None:
            keys = np.maximum(keys, after_key + 1)
        start = 0
        while start < len(chunk):
            if key is None:
                key = int(keys[start])
            # rows up to the first one that belongs to a later window stay in this one
            later = np.nonzero(keys[start:] > key)[0]
            stop = start + int(later[0]) if later.size else len(chunk)
            if stop > start:
                parts.append(chunk.take(slice(start, stop)))
            if later.size:
                yield Window(index, Rows.concat(parts), key * duration, (key + 1) * duration, key)
                index += 1
                parts, key = [], int(keys[stop])
            start = stop
    if parts and key is not None and (key + 1) * duration + LATE_GRACE_S <= now:
        yield Window(index, Rows.concat(parts), key * duration, (key + 1) * duration, key)
