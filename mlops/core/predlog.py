"""The prediction log: every prediction and every piece of feedback, durably, in SQLite (WAL).

This module is the log's one home: its schema, its writers (the server's group commit, the stream consumer's
idempotent insert, feedback) and its one reader (`LogReader`), which every phase that reads the log uses.

Writes happen on one background thread that commits in groups. A request hands its record over and
waits for the commit of the group it landed in before its response goes out, so a 200 always means
"logged": after `kill -9` every id that got a 200 is in the log. Group commit keeps that cheap: many
concurrent requests share one commit. `synchronous=NORMAL` survives a process crash; set
`MLOPS_LOG_SYNC=FULL` to survive power loss too (one fsync per group).
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlops.core.errors import MlopsError
from mlops.core.refs import CHALLENGER, CHAMPION

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
  id TEXT NOT NULL, ts REAL NOT NULL, model TEXT NOT NULL, version TEXT, variant TEXT NOT NULL,
  inputs TEXT NOT NULL, outputs TEXT NOT NULL, latency_ms REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS predictions_id ON predictions(id);
CREATE TABLE IF NOT EXISTS feedback (
  id TEXT NOT NULL, ts REAL NOT NULL, label TEXT, value REAL, payload TEXT
);
CREATE INDEX IF NOT EXISTS feedback_id ON feedback(id);
"""

_STOP = object()
CHECKPOINT_EVERY_S = 1.0  # how often the log thread folds the WAL into the database file


class PredictionLog:
    def __init__(self, path: str | Path, max_group: int = 512) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_group = max_group
        self._queue: queue.Queue[Any] = queue.Queue()
        init = sqlite3.connect(self.path)
        init.execute("PRAGMA journal_mode=WAL")
        init.executescript(SCHEMA)
        init.commit()
        init.close()
        self._thread = threading.Thread(target=self._writer, name="prediction-log", daemon=True)
        self._thread.start()

    def _writer(self) -> None:
        db = sqlite3.connect(self.path, check_same_thread=False)
        db.execute(f"PRAGMA synchronous={_sync_mode()}")
        # checkpoints (WAL -> database file, with an fsync) happen here, between groups, never inside a commit
        # made on the event loop (LoopCommits), where one would stall every request for milliseconds
        db.execute("PRAGMA wal_autocheckpoint=0")
        last_checkpoint = time.monotonic()
        stopping = False
        while not stopping:
            try:
                first = self._queue.get(timeout=CHECKPOINT_EVERY_S)
            except queue.Empty:
                first = None
            if time.monotonic() - last_checkpoint >= CHECKPOINT_EVERY_S:
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")  # never waits for readers or writers
                except sqlite3.Error:
                    pass  # the next one catches up
                last_checkpoint = time.monotonic()
            if first is None:
                continue
            group = [first]
            while len(group) < self.max_group:  # everything already waiting joins this commit
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = any(item is _STOP for item in group)
            records = [item for item in group if item is not _STOP]
            try:
                for table, rows, _ in records:
                    db.executemany(_INSERT[table], rows)
                db.commit()
                error = None
            except sqlite3.Error as exc:  # reported to every waiting request: they answer 503, not 200
                db.rollback()
                error = exc
            for _, _, done in records:
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # leave a compact file behind on a clean stop
        except sqlite3.Error:
            pass
        db.close()

    def submit(self, table: str, rows: list[tuple[Any, ...]]) -> Future[None]:
        done: Future[None] = Future()
        self._queue.put((table, rows, done))
        return done

    async def write(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        """Queue rows and wait until they are committed (without blocking the event loop)."""
        await asyncio.wrap_future(self.submit(table, rows))

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=10)


class LoopCommits:
    """Prediction-log writes made on the event loop, committed on the loop.

    Every request whose rows arrive in one trip around the loop shares one commit, made right after that
    trip, and `write` returns once it is done, so the log's guarantee holds: a 200 means "committed". It
    skips the hand-off to the log thread and back (a queue put, a wake-up, a future resolved across
    threads), which cost more than the commit itself: without an fsync (synchronous=NORMAL or OFF) a WAL
    commit of a few rows takes tens of microseconds. With MLOPS_LOG_SYNC=FULL each commit fsyncs, so the
    app keeps that off the loop and writes through `PredictionLog.write` instead (see `loop_commits_ok`).
    Writes from other threads (the shadow runner, `mlops feedback`) still go through the log thread;
    SQLite serialises the two writers.
    """

    def __init__(self, log: PredictionLog) -> None:
        self.log = log
        self.db = sqlite3.connect(log.path, check_same_thread=False)
        self.db.execute(f"PRAGMA synchronous={_sync_mode()}")
        self.db.execute("PRAGMA busy_timeout=10000")  # the log thread may hold the write lock for a moment
        self.db.execute("PRAGMA wal_autocheckpoint=0")  # the log thread checkpoints, off the loop
        self._group: tuple[dict[str, list[tuple[Any, ...]]], list[asyncio.Future[None]]] | None = None

    async def write(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        loop = asyncio.get_running_loop()
        if self._group is None:
            self._group = ({}, [])
            loop.call_soon(self._commit)  # after every handler that is ready to run has added its rows
        tables, waiters = self._group
        tables.setdefault(table, []).extend(rows)
        done: asyncio.Future[None] = loop.create_future()
        waiters.append(done)
        await done  # a cancelled request cancels only its own future, never the group's commit

    def _commit(self) -> None:
        assert self._group is not None
        tables, waiters = self._group
        self._group = None
        error: BaseException | None = None
        try:
            for table, rows in tables.items():
                self.db.executemany(_INSERT[table], rows)
            self.db.commit()
        except sqlite3.Error as exc:  # every request of the group fails: none of them answers 200
            self.db.rollback()
            error = exc
        for waiter in waiters:
            if waiter.done():
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    def close(self) -> None:
        self.db.close()


def _sync_mode() -> str:
    mode = os.environ.get("MLOPS_LOG_SYNC", "NORMAL").upper()
    if mode not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise MlopsError(f"MLOPS_LOG_SYNC={mode}: expected NORMAL (survives a process crash, the default) or FULL "
                         "(survives power loss too)")
    return mode


def loop_commits_ok() -> bool:
    """Commits may run on the event loop when they do not fsync."""
    return _sync_mode() in ("OFF", "NORMAL")


try:  # the log's JSON columns and the answers: orjson when installed, the same text as json otherwise
    import orjson

    def dumps_json(value: Any) -> bytes:
        return orjson.dumps(value)
except ImportError:  # pragma: no cover - orjson comes with the serve extra
    def dumps_json(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()


_INSERT = {
    "predictions": "INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "feedback": "INSERT INTO feedback VALUES (?, ?, ?, ?, ?)",
}


def prediction_rows(ids: list[str], model: str, version: str | None, variant: str, inputs: list[dict[str, Any]],
                    outputs: list[dict[str, Any]], latency_ms: float) -> list[tuple[Any, ...]]:
    now = time.time()
    return [(i, now, model, version, variant, dumps_json(inp).decode(), dumps_json(out).decode(), latency_ms)
            for i, inp, out in zip(ids, inputs, outputs, strict=True)]


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute("SELECT * FROM predictions ORDER BY ts")]
    db.close()
    return rows


# --- feedback: ground truth by prediction id, from `POST /v1/feedback` and `mlops feedback FILE` ----------


class FeedbackError(ValueError):
    """One feedback item that cannot be recorded: the field at fault and why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def feedback_row(item: Any, now: float | None = None) -> tuple[Any, ...]:
    """One piece of ground truth for a prediction id -> a row. Explicit: a corrected `label`
    (classification) or `value` (regression), or `thumbs` (`up`: the served answer was right, `down`:
    wrong). Implicit: any other field, e.g. `{"converted": true}`, read as the outcome the recipe declares
    (`improve.feedback.outcome`). Everything is kept in the payload."""
    if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
        raise FeedbackError("id", "a prediction id (string) is required")
    label, value, thumbs = item.get("label"), item.get("value"), item.get("thumbs")
    if thumbs is not None and not isinstance(thumbs, bool) and thumbs not in ("up", "down"):
        raise FeedbackError("thumbs", "must be 'up' or 'down' (or true/false)")
    outcome = [k for k in item if k not in ("id", "label", "value", "thumbs")]
    if label is None and value is None and thumbs is None and not outcome:
        raise FeedbackError("label", "give 'label' (classification), 'value' (regression), 'thumbs' ('up'/'down') "
                            "or an outcome field (e.g. 'converted')")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)):
        raise FeedbackError("value", "must be a finite number")
    return (item["id"], time.time() if now is None else now, None if label is None else str(label), value,
            json.dumps(item))


def read_feedback_file(path: str | Path) -> list[tuple[Any, ...]]:
    """Feedback rows from a CSV file (header with `id` and any of `label`, `value`, `thumbs` or outcome
    columns; an empty cell is absent)
    or a JSONL file (`.jsonl`/`.ndjson`: one object per line, as `POST /v1/feedback` takes).

    The whole file is checked before anything is written; the first problem raises with its line and field.
    """
    path = Path(path)
    if not path.is_file():
        raise MlopsError(f"{path}: no such feedback file")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise MlopsError(f"{path}: unknown feedback format '{suffix}' (use .csv or .jsonl)")
    now = time.time()
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        for line, item in (_csv_items(path, f) if suffix == ".csv" else _jsonl_items(path, f)):
            try:
                rows.append(feedback_row(item, now))
            except FeedbackError as exc:
                raise MlopsError(f"{path}:{line}: {exc.field}: {exc.message}") from None
    if not rows:
        raise MlopsError(f"{path}: no feedback rows")
    return rows


def _csv_items(path: Path, f: Any) -> Any:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
        return
    header = [h.strip() for h in header]
    if "id" not in header:
        raise MlopsError(f"{path}:1: id: the header needs an 'id' column (and 'label', 'value', 'thumbs' or an "
                         f"outcome column), got {header}")
    if len(header) < 2:
        raise MlopsError(f"{path}:1: label: the header needs a 'label' (classification), 'value' (regression), "
                         f"'thumbs' or an outcome column besides 'id', got {header}")
    for cells in reader:
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise MlopsError(f"{path}:{reader.line_num}: row: expected {len(header)} fields ({', '.join(header)}), "
                             f"got {len(cells)}")
        item: dict[str, Any] = {h: c for h, c in zip(header, cells, strict=True) if c != ""}
        if "value" in item:
            try:
                item["value"] = float(item["value"])
            except ValueError:
                raise MlopsError(f"{path}:{reader.line_num}: value: not a number: {item['value']!r}") from None
        yield reader.line_num, item


def _jsonl_items(path: Path, f: Any) -> Any:
    for line, text in enumerate(f, start=1):
        if not text.strip():
            continue
        try:
            item = json.loads(text, parse_constant=_no_constant)
        except ValueError as exc:
            raise MlopsError(f"{path}:{line}: body: invalid JSON: {exc}") from None
        if not isinstance(item, dict):
            raise MlopsError(f"{path}:{line}: body: expected a JSON object with 'id' and 'label' or 'value'")
        yield line, item


def _no_constant(token: str) -> float:
    raise ValueError(f"{token} is not valid JSON")


def known_ids(path: str | Path, ids: list[str]) -> set[str]:
    """Which of `ids` have a prediction in the log at `path`."""
    with LogReader(path) as reader:
        return reader.known_ids(ids)


def record_feedback(log_path: str | Path, rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Record the rows whose id has a prediction in the log (through the same writer as the server);
    rows with an unknown id are counted and left out."""
    log_path = Path(log_path)
    if not log_path.is_file():
        raise MlopsError(f"no prediction log at {log_path} (give --log PATH, or --model NAME for the default)")
    found = known_ids(log_path, [r[0] for r in rows])
    matched = [r for r in rows if r[0] in found]
    unknown = [r[0] for r in rows if r[0] not in found]
    if matched:
        log = PredictionLog(log_path)
        try:
            log.submit("feedback", matched).result(timeout=60)
        finally:
            log.close()
    return {"log": str(log_path), "rows": len(rows), "matched": len(matched), "unknown": len(unknown),
            "unknown_ids": unknown[:5]}


class IdempotentLog:
    """The prediction log written so that a row whose (id, variant) is already there is skipped: check and
    insert share one transaction holding SQLite's write lock, so two stream consumers racing on a redelivered
    message still log it once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=60, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        self.db.execute(f"PRAGMA synchronous={_sync_mode()}")

    def write(self, rows: list[tuple[Any, ...]]) -> int:
        """Insert the rows not yet logged; return how many were already there."""
        if not rows:
            return 0
        self.db.execute("BEGIN IMMEDIATE")
        try:
            ids = sorted({r[0] for r in rows})
            present: set[tuple[str, str]] = set()
            for part in _chunks(ids):
                present.update(self.db.execute(
                    f"SELECT id, variant FROM predictions WHERE id IN ({_marks(part)})", part))
            new = [r for r in rows if (r[0], r[4]) not in present]
            self.db.executemany(_INSERT["predictions"], new)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return len(rows) - len(new)

    def close(self) -> None:
        self.db.close()


# --- reading ---------------------------------------------------------------------------------------------------

# the variants a row is logged under: the arms that answered (named after the aliases that chose them),
# and the shadow, which answered no request
SHADOW = "shadow"
SERVED = (CHAMPION, CHALLENGER)


@dataclass(frozen=True)
class LogFilter:
    """Which rows of the log are one model's traffic."""

    model: str
    version: str | None = None  # None: every version of the model
    variants: tuple[str, ...] = SERVED
    since: float | None = None  # unix seconds, inclusive
    until: float | None = None  # exclusive


def _chunks(values: list[Any], size: int = 500) -> Iterator[list[Any]]:
    """Within SQLite's limit on bound parameters."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _marks(values: list[Any] | tuple[Any, ...]) -> str:
    return ",".join("?" * len(values))


class LogReader:
    """A read-only view of a prediction log, beside a live server's writer (WAL lets both work at once).

    Opening it checks that the file is a prediction log, and says where logs come from when it is missing.
    """

    def __init__(self, path: str | Path, timeout: float = 30.0) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise MlopsError(f"no prediction log at {self.path}: `mlops serve` writes it (by default under "
                             ".mlops/predictions/<model>.sqlite); give --log PATH for another one")
        self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=timeout)
        try:
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise MlopsError(f"{self.path} is not a prediction log: {exc}") from None
        if not {"predictions", "feedback"} <= tables:
            self.db.close()
            raise MlopsError(f"{self.path} is not a prediction log (it has no predictions and feedback tables)")

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def chunk(self, flt: LogFilter, after_rowid: int, limit: int) -> list[tuple[Any, ...]]:
        """Up to `limit` rows of the filter's traffic after `after_rowid`, in log order (keyset pagination:
        each chunk is its own short query, so a live server keeps writing meanwhile), each as
        (rowid, id, ts, version, inputs, outputs, latency_ms, truth label, truth value): the truth of the
        latest feedback for the id, None when none arrived."""
        where = ["p.rowid > ?", "p.model = ?"]
        params: list[Any] = [after_rowid, flt.model]
        if flt.version is not None:
            where.append("p.version = ?")
            params.append(flt.version)
        if flt.variants:
            where.append(f"p.variant IN ({_marks(flt.variants)})")
            params.extend(flt.variants)
        if flt.since is not None:
            where.append("p.ts >= ?")
            params.append(flt.since)
        if flt.until is not None:
            where.append("p.ts < ?")
            params.append(flt.until)
        latest = "(SELECT f.{col} FROM feedback f WHERE f.id = p.id ORDER BY f.rowid DESC LIMIT 1)"
        sql = (f"SELECT p.rowid, p.id, p.ts, p.version, p.inputs, p.outputs, p.latency_ms, "
               f"{latest.format(col='label')}, {latest.format(col='value')} FROM predictions p "
               f"WHERE {' AND '.join(where)} ORDER BY p.rowid LIMIT ?")
        return self.db.execute(sql, [*params, limit]).fetchall()

    def traffic(self, after_rowid: int = 0, limit: int = 10) -> dict[str, int]:
        """Rows after `after_rowid` by model, version and variant, busiest first."""
        rows = self.db.execute("SELECT model, version, variant, COUNT(*) FROM predictions WHERE rowid > ? "
                               "GROUP BY model, version, variant ORDER BY COUNT(*) DESC LIMIT ?", (after_rowid, limit))
        return {f"model {m} version {v or '-'} variant {var}": int(n) for m, v, var, n in rows}

    def predictions(self, variants: tuple[str, ...], model: str | None = None, since: float | None = None,
                    version: str | None = None) -> list[dict[str, Any]]:
        """Every logged prediction of these variants (and model, version, since a time), oldest first; each a
        dict of the table's columns plus `rowid`."""
        where, args = [f"variant IN ({_marks(variants)})"], list(variants)
        for column, op, value in (("model", "=", model), ("ts", ">=", since), ("version", "=", version)):
            if value is not None:
                where.append(f"{column} {op} ?")
                args.append(value)
        cursor = self.db.execute(f"SELECT rowid, * FROM predictions WHERE {' AND '.join(where)} ORDER BY ts, rowid",
                                 args)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]

    def latest_feedback(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The latest feedback per id: {id: {"label", "value", "payload"}} (payload parsed; {} if unreadable)."""
        found: dict[str, dict[str, Any]] = {}
        for part in _chunks(sorted(set(ids))):
            for pid, label, value, payload in self.db.execute(
                    f"SELECT id, label, value, payload FROM feedback WHERE id IN ({_marks(part)}) "
                    "ORDER BY ts, rowid", part):
                found[pid] = {"label": label, "value": value, "payload": json_object(payload)}
        return found

    def known_ids(self, ids: list[str]) -> set[str]:
        """Which of `ids` have a prediction."""
        found: set[str] = set()
        for part in _chunks(sorted(set(ids))):
            found.update(r[0] for r in self.db.execute(
                f"SELECT DISTINCT id FROM predictions WHERE id IN ({_marks(part)})", part))
        return found

    def latencies(self, since: float, until: float, variant: str | None = None, model: str | None = None
                  ) -> list[float]:
        """Latencies of the requests answered in [since, until), by `variant` (None: every served variant)."""
        where = ["variant = ?" if variant else f"variant != '{SHADOW}'", "ts >= ?", "ts < ?"]
        params: list[Any] = ([variant] if variant else []) + [since, until]
        if model:
            where.append("model = ?")
            params.append(model)
        return [r[0] for r in self.db.execute(f"SELECT latency_ms FROM predictions WHERE {' AND '.join(where)}",
                                              params)]

    def shadow_pairs(self, since: float, until: float) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(shadow outputs, served outputs) of every request the shadow answered in [since, until)."""
        rows = self.db.execute(
            f"SELECT s.outputs, p.outputs FROM predictions s JOIN predictions p ON s.id = p.id "
            f"AND p.variant != '{SHADOW}' WHERE s.variant = '{SHADOW}' AND s.ts >= ? AND s.ts < ?", [since, until])
        return [(json_object(a), json_object(b)) for a, b in rows]


def json_object(text: str | bytes | None) -> dict[str, Any]:
    """A JSON column as a dict; {} when it is empty, unreadable or not an object."""
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
