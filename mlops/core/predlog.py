"""The prediction log: every prediction and every piece of feedback, durably, in SQLite (WAL).

This module is the log's one home: its schema, its writers (the server's group commit, the stream consumer's
idempotent insert, feedback) and its one reader (`LogReader`), which every phase that reads the log uses.

Writes happen on one background thread that commits in groups. A request hands its record over and
waits for the commit of the group it landed in before its response goes out, so a 200 always means
"logged": after `kill -9` every id that got a 200 is in the log. Group commit keeps that cheap: many
concurrent requests share one commit. `synchronous=NORMAL` survives a process crash; set
`MLOPS_LOG_SYNC=FULL` to survive power loss too (one fsync per group).

The log stays bounded under sustained traffic (`LogLimits`, from the recipe's `monitor.log_limits`, carried by
the bundle). The WAL: passive checkpoints copy it into the database file but never rewind it while writes keep
coming, so the log thread rewinds it (a RESTART checkpoint) once it holds more than `wal_max_bytes`. The rows: older
than `max_age`, or the oldest ones while the database holds more than `max_bytes`, are moved to Parquet files
beside the log (`Workspace.prediction_archive`), or deleted; `LogReader` reads the archived rows with the rest.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from mlops.core.atomic import output_problem, replacing
from mlops.core.errors import MlopsError
from mlops.core.loglimits import LogLimits
from mlops.core.refs import CHALLENGER, CHAMPION
from mlops.core.workspace import Workspace

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

STOP = object()  # what close() queues: the writer thread commits what came before it and ends
NUDGE = object()  # what a commit on another connection queues to wake a resting log thread (see note_commit)
# how often the log thread folds the WAL into the database file while writes come (a passive checkpoint, whose
# answer is also the WAL's frame count, compared with its bound). Often, so that each is small: a checkpoint ends
# with an fsync of what it copied, and while a large one flushes, the event loop's own commits (LoopCommits) stall
# in their writes to the WAL. Served V1 at 8 connections (benchmarks/serve.py's bundle, ~14 MB of log a second):
# p99 4.6-11 ms at 0.1-0.5 s, 1.5-1.8 ms at 10-20 ms, the median and the requests/s unchanged (docs/benchmarks.md)
CHECKPOINT_EVERY_S = 0.02
REST_S = 1.0  # the log thread's wake-ups once nothing was written since its last checkpoint
# how long the rewind's RESTART checkpoint retries for the write lock and for readers to leave the WAL: it holds
# the write lock while it waits for readers, so this bounds what a slow reader can add to the writers' wait
WAL_TRUNCATE_WAIT_MS = 2
WAL_FRAME_HEADER = 24  # bytes before each page in the WAL file
RETENTION_EVERY_S = 60.0  # how often it applies the retention policy
ARCHIVE_FILE_ROWS = 50_000  # rows per archived Parquet file: few files, a bounded memory to write one
ARCHIVE_CHUNK_ROWS = 1000  # rows converted to Arrow in one call (see _write_archive)
RETENTION_BATCH = 2000  # rows deleted per transaction: a server's writes wait for one batch's delete at most
# past HIGH x max_bytes of live rows, the oldest are moved out until LOW x max_bytes remain: the file (which SQLite
# never shrinks, it reuses the freed pages) stays under max_bytes, and a pass moves a sizeable share at once
RETENTION_HIGH, RETENTION_LOW = 0.9, 0.8
ARCHIVED_COLUMNS = {"predictions": ("id", "ts", "model", "version", "variant", "inputs", "outputs", "latency_ms"),
                    "feedback": ("id", "ts", "label", "value", "payload")}
REAL_COLUMNS = frozenset({"ts", "value", "latency_ms"})  # REAL in SCHEMA; the others are TEXT


class DeferredRows(Protocol):
    """Rows whose building waits for the commit that writes them.

    A server's request hands the log what it answered (its inputs as arrays, its outputs); the commit builds
    the log rows of every deferred item of one group together (`build`), so one vectorised pass serves many
    requests (an image's descriptors, the embedding's rounding), and the request's own path does none of it.
    Items build together when their `group_key()` and their type are the same."""

    def group_key(self) -> Hashable: ...

    @classmethod
    def build(cls, items: Sequence[Any]) -> list[list[tuple[Any, ...]]]:
        """Each item's rows, in the order of `items`."""
        ...


Rows = list[tuple[Any, ...]] | DeferredRows


def built_rows(items: Sequence[Rows]) -> list[list[tuple[Any, ...]] | BaseException]:
    """Each item's rows, deferred ones built by group; a group that failed to build gets its error instead
    (its requests fail, the others of the commit are written)."""
    out: list[list[tuple[Any, ...]] | BaseException] = [[] for _ in items]
    groups: dict[tuple[type, Hashable], list[int]] = {}
    for k, item in enumerate(items):
        if isinstance(item, list):
            out[k] = item
        else:
            groups.setdefault((type(item), item.group_key()), []).append(k)
    for (kind, _), ks in groups.items():
        try:
            built = kind.build([items[k] for k in ks])
        except Exception as exc:  # a bug in building: reported to those requests (503), never a lost commit
            built = [exc] * len(ks)  # type: ignore[list-item]
        for k, rows in zip(ks, built, strict=True):
            out[k] = rows
    return out


# what a group's commit can fail with: SQLite's errors, and a value it cannot bind (a str that is no UTF-8, an int
# past 64 bits). The servers refuse such values at the request, but a writer stopped by one would leave every later
# request waiting for a commit that never comes: the group fails instead (503) and the writer goes on
UNWRITABLE = (sqlite3.Error, ValueError, OverflowError)


def open_for_writing(path: Path, **connect: Any) -> sqlite3.Connection:
    """A connection to the log at `path` (`connect`: sqlite3.connect's options), made with its tables in WAL mode
    if it is new. A path that cannot be a log is the user's mistake, refused naming it (an MlopsError): a
    directory, a device, a file under a file, a file that is no SQLite database or one that holds other tables
    (another program's database, which the log's tables must not be written into)."""
    problem = output_problem(path)
    if problem is None and path.exists() and not path.is_file():
        problem = "is not a regular file (a prediction log is a SQLite file)"
    if problem:
        raise MlopsError(f"prediction log {path}: {problem}")
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, **connect)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "predictions" not in tables:
            raise MlopsError(f"{path} is not a prediction log: it is a database with other tables "
                             f"({', '.join(sorted(tables)[:5])}); give a new file or a log `mlops serve` wrote")
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)
        db.commit()
    except sqlite3.DatabaseError as exc:
        db.close()
        if exc.sqlite_errorname in ("SQLITE_BUSY", "SQLITE_LOCKED"):  # another writer, not a wrong path
            raise
        raise MlopsError(f"{path} is not a prediction log: {exc}") from None
    except BaseException:
        db.close()
        raise
    return db


class QueuedLog:
    """The hand-off every store of the log shares: rows queued to one writer thread (the store's `_writer`),
    each submit's future resolved once the group holding it is committed (or failed with its error)."""

    _queue: queue.Queue[Any]
    _thread: threading.Thread
    max_group: int

    def _start_writer(self, name: str) -> None:
        self._queue = queue.Queue()
        self._thread = threading.Thread(target=self._writer, name=name, daemon=True)
        self._thread.start()

    def _writer(self) -> None:
        raise NotImplementedError

    def _group(self, first: Any) -> tuple[bool, list[Any], list[Any]]:
        """`first` and everything already waiting (up to `max_group`), as one group: whether it holds STOP, its
        requests (table, rows, future), and their rows built (an exception in place of a request's that failed)."""
        group = [first]
        while len(group) < self.max_group:  # everything already waiting joins this commit
            try:
                group.append(self._queue.get_nowait())
            except queue.Empty:
                break
        records = [item for item in group if item is not STOP and item is not NUDGE]
        return any(item is STOP for item in group), records, built_rows([rows for _, rows, _ in records])

    @staticmethod
    def _settle(records: list[Any], built: list[Any], error: BaseException | None) -> None:
        """Resolve each request of a group: failed by its own rows' error, or by the group's, else done."""
        for (_, _, done), rows in zip(records, built, strict=True):
            failed = rows if isinstance(rows, BaseException) else error
            if failed is None:
                done.set_result(None)
            else:
                done.set_exception(failed)

    def submit(self, table: str, rows: Rows) -> Future[None]:
        done: Future[None] = Future()
        self._queue.put((table, rows, done))
        return done

    async def write(self, table: str, rows: Rows) -> None:
        """Queue rows and wait until they are committed (without blocking the event loop)."""
        await asyncio.wrap_future(self.submit(table, rows))

    def close(self) -> None:
        self._queue.put(STOP)
        self._thread.join(timeout=10)


class PredictionLog(QueuedLog):
    def __init__(self, path: str | Path, max_group: int = 512, limits: LogLimits | None = None) -> None:
        self.path = Path(path)
        self.max_group = max_group
        self.limits = limits or LogLimits()
        # RESTART checkpoints that rewound the WAL past its bound (and those that found it in use): the metrics
        # keep their first name, from when these were TRUNCATE checkpoints (see _checkpoint)
        self.wal_truncations = 0
        self.wal_truncations_busy = 0
        self._rewound_at: int | None = None  # the WAL's frame count when it was last rewound
        # written since the log thread's last checkpoint, and whether that thread rests (see note_commit)
        self._dirty = False
        self._resting = False
        self.wal_truncate_seconds = 0.0  # spent in them: about what writers waited (the write lock is held)
        init = open_for_writing(self.path)
        (page,) = init.execute("PRAGMA page_size").fetchone()
        self._frame_bytes = page + WAL_FRAME_HEADER  # a WAL frame: one page and its header
        init.close()
        self._start_writer("prediction-log")

    def _writer(self) -> None:
        db = sqlite3.connect(self.path, check_same_thread=False)
        db.execute(f"PRAGMA synchronous={_sync_mode()}")
        # checkpoints (WAL -> database file, with an fsync) happen here, between groups, never inside a commit
        # made on the event loop (LoopCommits), where one would stall every request for milliseconds
        db.execute("PRAGMA wal_autocheckpoint=0")
        last_checkpoint = last_retention = time.monotonic()
        stopping = False
        while not stopping:
            try:
                first = self._queue.get(timeout=REST_S if self._resting else CHECKPOINT_EVERY_S)
            except queue.Empty:
                first = None
            now = time.monotonic()
            if now - last_checkpoint >= CHECKPOINT_EVERY_S:
                # resting first, then the check: a commit that marks the log dirty after this sees the thread
                # resting and nudges it (note_commit), so no write waits REST_S for its checkpoint
                self._resting = True
                if self._dirty:
                    self._resting = self._dirty = False
                    # one a reader kept from finishing (or from rewinding) is tried again at the next tick; a
                    # commit made during it marked the log again, and that mark stays
                    if not self._checkpoint(db):
                        self._dirty = True
                last_checkpoint = now
            if now - last_retention >= RETENTION_EVERY_S and self.limits.retains:
                self._retain(db)
                self._dirty, self._resting = True, False  # its deletes are in the WAL too
                last_retention = now
            if first is None or first is NUDGE:
                continue
            stopping, records, built = self._group(first)
            try:
                for (table, _, _), rows in zip(records, built, strict=True):
                    if not isinstance(rows, BaseException):
                        db.executemany(_INSERT[table], rows)
                db.commit()
                error = None
            except UNWRITABLE as exc:  # reported to every waiting request: they answer 503, not 200
                db.rollback()
                error = exc
            self._dirty, self._resting = True, False  # its checkpoint is due in CHECKPOINT_EVERY_S, not REST_S
            self._settle(records, built, error)
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # leave a compact file behind on a clean stop
        except sqlite3.Error:
            pass
        db.close()

    def note_commit(self) -> None:
        """A commit made on another connection of this process (LoopCommits): the log thread's checkpoints keep
        pace with it, and a thread resting since the last write is woken."""
        self._dirty = True
        if self._resting:
            self._resting = False
            self._queue.put(NUDGE)

    def _checkpoint(self, db: sqlite3.Connection) -> bool:
        """Fold the WAL into the database file without waiting for anyone, and rewind it once what it holds since
        its last rewind passes `wal_max_bytes`. Whether that is done: every frame copied, the WAL within its bound.

        A passive checkpoint copies what it can without stopping anyone, and its answer says how many frames the
        WAL holds; past the bound a RESTART checkpoint then holds the write lock while it copies the rest, so that
        the next commit writes from the file's start again: the file stops growing at about `wal_max_bytes` and is
        reused, and is truncated when the log closes. (A TRUNCATE checkpoint here also shrank the file, but the
        truncation itself held the lock for 31-37 ms at a 64 MB bound on this machine, every request in flight
        waiting: benchmarks/predlog.py measures it.) The frame count comes from SQLite, not from reading its `-shm`
        file: closing any descriptor of that file would drop the POSIX locks SQLite holds on it, and another
        process could then reset the wal-index under the server's mapping (SIGBUS). The rewind hardly waits for a
        reader (WAL_TRUNCATE_WAIT_MS): a reader still on an older snapshot makes it give up until the next try."""
        try:
            (busy, frames, copied) = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()  # waits for nobody
        except sqlite3.Error:
            return False  # the next one catches up
        bound = self.limits.wal_max_bytes
        if bound is None or frames * self._frame_bytes <= bound:
            return not busy and frames == copied
        if frames == self._rewound_at:  # rewound, and nobody wrote since: the count is the old one still
            return True
        (patience,) = db.execute("PRAGMA busy_timeout").fetchone()
        started = time.perf_counter()
        try:
            db.execute(f"PRAGMA busy_timeout={WAL_TRUNCATE_WAIT_MS}")
            (busy, _, _) = db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        except sqlite3.Error:
            busy = 1
        finally:
            db.execute(f"PRAGMA busy_timeout={int(patience)}")
        self.wal_truncate_seconds += time.perf_counter() - started
        if busy:
            self.wal_truncations_busy += 1
            return False
        self.wal_truncations += 1
        self._rewound_at = frames
        return True

    def _retain(self, db: sqlite3.Connection) -> None:
        bound = self.limits.wal_max_bytes
        try:  # the deletes write to the WAL too: it is kept within its bound between them
            apply_retention(db, self.path, self.limits, between=None if bound is None else
                            lambda: self._checkpoint(db))
        # the log keeps answering; the rows wait for the next pass (the log's size alert says if that lasts).
        # ValueError and TypeError: Arrow's ArrowInvalid and ArrowTypeError, a value its column's type refuses
        except (sqlite3.Error, OSError, ValueError, TypeError):
            db.rollback()

    def sizes(self) -> dict[str, int]:
        """Bytes on disk: the database file, its WAL, and the archived Parquet files (the `mlops_prediction_log_bytes`
        gauge)."""
        return log_sizes(self.path)


def wal_path(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def log_sizes(path: Path) -> dict[str, int]:
    """Bytes of the log at `path` on disk, by part: db, wal, archive."""
    def size(p: Path) -> int:
        try:
            return p.stat().st_size
        except FileNotFoundError:
            return 0

    archive = Workspace.prediction_archive(path)
    archived = sum(size(f) for f in archive.glob("*.parquet")) if archive.is_dir() else 0
    return {"db": size(path), "wal": size(wal_path(path)), "archive": archived}


def apply_retention(db: sqlite3.Connection, path: Path, limits: LogLimits, now: float | None = None,
                    between: Callable[[], None] | None = None) -> dict[str, int]:
    """Move out of the log (to Parquet beside it, or nowhere) the rows older than `max_age`, and the oldest
    while its live rows take more than RETENTION_HIGH x `max_bytes`, until RETENTION_LOW x `max_bytes` remain.
    `db` is a connection that may write; `between` runs after each delete's commit. Returns the rows moved per
    table.

    Oldest first by rowid, up to ARCHIVE_FILE_ROWS per Parquet file, each file written before its rows are
    deleted (RETENTION_BATCH per transaction): a crash between the two leaves rows in both places, which the
    reader counts once. The newest row of each table always stays, so that SQLite never hands out a rowid again
    (the monitor's cursor is a rowid)."""
    now = time.time() if now is None else now
    age_cutoff = -math.inf if limits.max_age_s is None else now - limits.max_age_s
    moved = {"predictions": _move_rows(db, path, "predictions", age_cutoff, 0, limits.archive, between)}
    quota = _rows_over_size(db, limits.max_bytes, RETENTION_HIGH)
    for_size = 0
    while quota:  # a row's share of the file is an estimate (index pages free up later than table pages)
        n = _move_rows(db, path, "predictions", -math.inf, quota, limits.archive, between)
        for_size += n
        quota = _rows_over_size(db, limits.max_bytes, RETENTION_LOW) if n else 0
    moved["predictions"] += for_size
    # feedback follows: by its own age, and, when the size bound moved predictions, as far as the oldest one kept
    oldest_kept = db.execute("SELECT ts FROM predictions ORDER BY rowid LIMIT 1").fetchone() if for_size else None
    feedback_cutoff = max(age_cutoff, oldest_kept[0] if oldest_kept else -math.inf)
    moved["feedback"] = _move_rows(db, path, "feedback", feedback_cutoff, 0, limits.archive, between)
    return moved


def _rows_over_size(db: sqlite3.Connection, max_bytes: int | None, start: float) -> int:
    """How many of the oldest predictions to move so that the live rows fit in RETENTION_LOW x max_bytes
    (0 while they fit in `start` x max_bytes), estimated from the bytes a row takes on average."""
    if max_bytes is None:
        return 0
    (page_size,) = db.execute("PRAGMA page_size").fetchone()
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    (free,) = db.execute("PRAGMA freelist_count").fetchone()
    used = (pages - free) * page_size
    if used <= start * max_bytes:
        return 0
    low, high = db.execute("SELECT MIN(rowid), MAX(rowid) FROM predictions").fetchone()
    if high is None:
        return 0
    rows = high - low + 1  # dense: rows are only ever removed from the front
    return math.ceil(rows * (used - RETENTION_LOW * max_bytes) / used)


def _move_rows(db: sqlite3.Connection, path: Path, table: str, cutoff: float, quota: int, archive: bool,
               between: Callable[[], None] | None) -> int:
    """Move the oldest rows of `table` while they are older than `cutoff` or fewer than `quota` have moved."""
    columns = ARCHIVED_COLUMNS[table]
    (newest,) = db.execute(f"SELECT MAX(rowid) FROM {table}").fetchone()
    moved = 0
    while newest is not None:
        # the rows to move are found by rowid and time alone, read one by one until the first that stays: a
        # pass with nothing to move reads one row (reading a whole file's worth of rows to look at their times
        # cost the log thread 213 ms a minute on an 80,000-row log, CPU the event loop shares)
        head = db.execute(f"SELECT rowid, ts FROM {table} WHERE rowid < ? ORDER BY rowid LIMIT {ARCHIVE_FILE_ROWS}",
                          (newest,))
        take, last, full = 0, None, True
        for rowid, ts in head:
            if not (moved + take < quota or ts < cutoff):
                full = False
                break
            take, last = take + 1, rowid
        head.close()
        if not take:
            break
        # fewer than `take` when another process's retention pass on the same file moved some in between
        batch = db.execute(f"SELECT rowid, {', '.join(columns)} FROM {table} WHERE rowid <= ? ORDER BY rowid",
                           (last,)).fetchall()
        if not batch:
            break
        if archive:
            _write_archive(path, table, columns, batch)
        for start in range(0, len(batch), RETENTION_BATCH):
            part = batch[start:start + RETENTION_BATCH]
            db.execute(f"DELETE FROM {table} WHERE rowid BETWEEN ? AND ?", (part[0][0], part[-1][0]))
            db.commit()
            if between is not None:
                between()
        moved += len(batch)
        if not full:
            break
    return moved


def _write_archive(path: Path, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> Path:
    import pyarrow as pa  # here: the server imports this module, and most servers never archive
    import pyarrow.parquet as pq

    # the columns' types as SQLite's affinities store them, every file alike
    schema = pa.schema([("rowid", pa.int64()),
                        *((name, pa.float64() if name in REAL_COLUMNS else pa.string()) for name in columns)])
    # converted ARCHIVE_CHUNK_ROWS at a time: one conversion of a whole file's rows (50,000 JSON texts) holds the
    # GIL for hundreds of milliseconds in one call, which the server's event loop in the same process waits out
    batches = []
    for k in range(0, len(rows), ARCHIVE_CHUNK_ROWS):
        chunk = zip(*rows[k:k + ARCHIVE_CHUNK_ROWS], strict=True)  # the chunk's columns
        arrays = [pa.array(values, field.type) for values, field in zip(chunk, schema, strict=True)]
        batches.append(pa.RecordBatch.from_arrays(arrays, schema=schema))
    dest = Workspace.prediction_archive(path) / f"{table}-{rows[0][0]:012d}-{rows[-1][0]:012d}.parquet"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with replacing(dest, durable=True) as tmp:
        pq.write_table(pa.Table.from_batches(batches, schema), tmp, compression="zstd", row_group_size=len(rows))
    return dest


class LoopCommits:
    """Prediction-log writes made on the event loop, committed on the loop.

    A commit is made two trips around the loop after the write that opened it, and every request whose rows
    arrive before then shares it; `write` returns once it is done, so the log's guarantee holds: a 200 means
    "committed". The second trip is what fills the group: under load the requests come in cohorts (those answered
    together send their next ones together, and arrive while the loop is busy with another cohort), and a commit
    made right after the first trip took one cohort, about half the connections. Waiting one more trip, the next
    cohort joins (V1 at 8 connections: 4 -> 8 requests a commit, 40 -> 29 us of log per request, +15 % requests/s,
    a lower median latency; at 1 connection the extra trip costs nothing measurable). It
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
        self._group: list[tuple[str, Rows, asyncio.Future[None]]] | None = None

    async def write(self, table: str, rows: Rows) -> None:
        loop = asyncio.get_running_loop()
        if self._group is None:
            self._group = []
            loop.call_soon(loop.call_soon, self._commit)  # after the next trip's handlers too (see the class doc)
        done: asyncio.Future[None] = loop.create_future()
        self._group.append((table, rows, done))
        await done  # a cancelled request cancels only its own future, never the group's commit

    def _commit(self) -> None:
        assert self._group is not None
        group, self._group = self._group, None
        built = built_rows([rows for _, rows, _ in group])
        tables: dict[str, list[tuple[Any, ...]]] = {}
        for (table, _, _), rows in zip(group, built, strict=True):
            if not isinstance(rows, BaseException):
                tables.setdefault(table, []).extend(rows)
        error: BaseException | None = None
        try:
            for table, rows in tables.items():
                self.db.executemany(_INSERT[table], rows)
            self.db.commit()
        except UNWRITABLE as exc:  # every request of the group fails: none of them answers 200
            self.db.rollback()
            error = exc
        self.log.note_commit()
        for (_, _, waiter), rows in zip(group, built, strict=True):
            if waiter.done():
                continue
            failed = rows if isinstance(rows, BaseException) else error
            if failed is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(failed)

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

    def fp32_values(array: Any) -> list[Any]:
        """A float32 array's numbers as (nested) lists of floats, each the shortest decimal that reads back as
        the same float32 (17.99 where `tolist()` gives the widened 17.989999771118164), NaN and infinities as
        None. The log then holds the numbers a client sent, in about half the text; the model's float32 inputs
        are unchanged by the round trip. One C call each way for a whole block (orjson takes C order only)."""
        contiguous = array.astype("float32", order="C", copy=False)
        return orjson.loads(orjson.dumps(contiguous, option=orjson.OPT_SERIALIZE_NUMPY))
except ImportError:  # pragma: no cover - orjson comes with the serve extra
    def dumps_json(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    def fp32_values(array: Any) -> list[Any]:
        return [None if f != f or f in (math.inf, -math.inf) else f for f in array.tolist()] if array.ndim == 1 \
            else [fp32_values(row) for row in array]


_INSERT = {
    "predictions": "INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "feedback": "INSERT INTO feedback VALUES (?, ?, ?, ?, ?)",
}


def new_prediction_id() -> str:
    """A prediction's id when the request names none: 32 hex digits, the clock's nanoseconds then 64 random
    bits. Ids that grow with time are appended at the end of the log's id index instead of scattered through it
    as random ones are (measured: a SQLite row cost about half as much, 12 against 22 microseconds, at three
    rows a commit); the random half keeps them unique across processes and replicas, and unguessable."""
    return f"{time.time_ns():016x}{os.urandom(8).hex()}"


def prediction_ids(request_id: str | None, rows: int) -> list[str]:
    """One id per answered row: the request's own id (or a new one), with the row's number after it for a batch."""
    base = request_id or new_prediction_id()
    return [base] if rows == 1 else [f"{base}-{i}" for i in range(rows)]


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
    _check_text("id", item["id"])
    if isinstance(label, str):
        _check_text("label", label)
    if value is not None:
        value = _finite("value", value)
    return (item["id"], time.time() if now is None else now, None if label is None else str(label), value,
            json.dumps(item))


def _check_text(field: str, text: str) -> None:
    """A lone UTF-16 surrogate (JSON may escape one: "\\ud800") is no Unicode text: SQLite cannot store it."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise FeedbackError(field, "holds a lone UTF-16 surrogate (an escape from \\ud800 to \\udfff without "
                                       "its pair), which is no Unicode text") from None


def finite_float(value: Any) -> float | None:
    """A JSON number as a float; None for anything else: a bool, NaN, an infinity, or an integer past a float's
    range (JSON may hold 400 digits, and float() of one raises OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _finite(field: str, value: Any) -> float:
    """`value` as the log's REAL column holds it. An integer is converted here: past 64 bits it could not be
    stored, past a float's range (a 400-digit one) it is no finite number."""
    number = finite_float(value)
    if number is None:
        # float() of an int is never NaN or infinite: an int refused here overflowed
        past = ", got an integer past a float's range (about 1.8e308)" if type(value) is int else ""
        raise FeedbackError(field, f"must be a finite number{past}")
    return number


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
    with io.StringIO(_feedback_text(path), newline="") as f:
        for line, item in (_csv_items(path, f) if suffix == ".csv" else _jsonl_items(path, f)):
            try:
                rows.append(feedback_row(item, now))
            except FeedbackError as exc:
                raise MlopsError(f"{path}:{line}: {exc.field}: {exc.message}") from None
    if not rows:
        raise MlopsError(f"{path}: no feedback rows")
    return rows


def _feedback_text(path: Path) -> str:
    """The file's text (UTF-8, with or without a BOM); one that is not UTF-8 fails at the line that is not."""
    data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise MlopsError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}): save the file as UTF-8"
                         ) from None


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


class IdempotentLog:
    """The prediction log written so that a row whose (id, variant) is already there is skipped: check and
    insert share one transaction holding SQLite's write lock, so two stream consumers racing on a redelivered
    message still log it once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = open_for_writing(path, timeout=60, isolation_level=None)
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


class Traffic(NamedTuple):
    """Whose rows a count of the log's traffic is: a model's version (None where none was logged) and variant."""

    model: str
    version: str | None
    variant: str


@dataclass(frozen=True)
class LogField:
    """One value read out of every row's JSON by the database (`chunk_fields`), so that the whole document
    never travels, nor gets parsed in Python: `column` "inputs" or "outputs", `path` the object keys down to it."""

    column: str
    path: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.column not in ("inputs", "outputs") or not self.path:
            raise ValueError(f"not a log field: {self}")


def sql_extractable(key: str) -> bool:
    """Whether a key can be named in a SQLite JSON path (`$."key"` has no escape for a quote)."""
    return '"' not in key and "\\" not in key


def _chunks(values: list[Any], size: int = 500) -> Iterator[list[Any]]:
    """Within SQLite's limit on bound parameters."""
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _marks(values: list[Any] | tuple[Any, ...]) -> str:
    return ",".join("?" * len(values))


class LogReader:
    """A read-only view of a prediction log, beside a live server's writer (WAL lets both work at once), and of
    the rows its retention archived (read with the rest, see `_attach_archive`), as they were when it opened;
    `archive=False`: the live rows only (the server's look-up of feedback ids, which keeps a reader open).

    Opening it checks that the file is a prediction log, and says where logs come from when it is missing.
    """

    # whether `chunk_fields` can run: SQLite's `->` operator and built-in JSON functions came with 3.38
    reads_fields = sqlite3.sqlite_version_info >= (3, 38, 0)

    def __init__(self, path: str | Path, timeout: float = 30.0, archive: bool = True) -> None:
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
        if archive:
            self._attach_archive()

    def _attach_archive(self) -> None:
        """The rows retention moved to Parquet, joined to the live ones: a temporary view named after each table
        hides it from every query below, so each reads both. Archived rows keep their rowids, all below the
        live ones (the keyset cursor goes on across both, the view merges them in rowid order); a row in both
        places (a crash between archiving it and deleting it) counts once, as the live row."""
        archive = Workspace.prediction_archive(self.path)
        if not archive.is_dir():
            return
        import pyarrow.parquet as pq  # here: most logs have no archive

        for table, columns in ARCHIVED_COLUMNS.items():
            files = sorted(archive.glob(f"{table}-*.parquet"))
            if not files:
                continue
            names = ", ".join(columns)
            self.db.execute(f"CREATE TEMP TABLE archived_{table} (rid INTEGER PRIMARY KEY, {names})")
            for file in files:
                data = pq.read_table(file, columns=["rowid", *columns])
                self.db.executemany(f"INSERT OR IGNORE INTO temp.archived_{table} VALUES (?, {_marks(columns)})",
                                    zip(*(data.column(c).to_pylist() for c in data.column_names), strict=True))
            self.db.execute(f"CREATE INDEX temp.archived_{table}_id ON archived_{table}(id)")
            self.db.execute(f"CREATE TEMP VIEW {table} AS SELECT rowid AS rowid, {names} FROM main.{table} UNION ALL "
                            f"SELECT rid, {names} FROM temp.archived_{table} WHERE rid < "
                            f"COALESCE((SELECT MIN(rowid) FROM main.{table}), {2**63 - 1})")
        self.db.commit()  # an open transaction would hold a snapshot, and keep the server from resetting its WAL

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def chunk(self, flt: LogFilter, after_rowid: int, limit: int, through: int | None = None
              ) -> list[tuple[Any, ...]]:
        """Up to `limit` rows of the filter's traffic after `after_rowid`, in log order (keyset pagination:
        each chunk is its own short query, so a live server keeps writing meanwhile), each as
        (rowid, id, ts, version, inputs, outputs, latency_ms, truth label, truth value): the truth of the
        latest feedback for the id, None when none arrived."""
        where, params = filter_where(flt, after_rowid, through)
        sql = (f"SELECT p.rowid, p.id, p.ts, p.version, p.inputs, p.outputs, p.latency_ms, "
               f"{_LATEST.format(col='label')}, {_LATEST.format(col='value')} FROM predictions p "
               f"WHERE {where} ORDER BY p.rowid LIMIT ?")
        return self.db.execute(sql, [*params, limit]).fetchall()

    def chunk_fields(self, flt: LogFilter, after_rowid: int, limit: int, fields: Sequence[LogField],
                     known: Sequence[str] | None = None, through: int | None = None) -> list[tuple[Any, ...]]:
        """As `chunk`, with the JSON read by the database: each row (rowid, id, ts, version, latency_ms,
        truth label, truth value, others, inputs' values, outputs' values). The values: a JSON array per document
        of its fields' values in their order, each as the document holds it (null where missing). `others`, with
        `known`: the inputs document without the `known` keys ("{}" when it holds nothing else), else None.

        Each document is parsed once per row (one json_extract over every path: SQLite parses again for each
        call, so a call per field would cost several times more than parsing the row in Python)."""
        where, params = filter_where(flt, after_rowid, through)
        values = ", ".join(_sqlite_values(c, [f.path for f in fields if f.column == c]) for c in ("inputs", "outputs"))
        others = "NULL"
        if known is not None:
            others = "p.inputs"
            for start in range(0, len(known), _PATHS_PER_CALL):
                group = [_sqlite_path((k,)) for k in known[start:start + _PATHS_PER_CALL]]
                others = f"json_remove({others}, {_literals(group)})"
        sql = (f"SELECT p.rowid, p.id, p.ts, p.version, p.latency_ms, {_LATEST.format(col='label')}, "
               f"{_LATEST.format(col='value')}, {others}, {values} FROM predictions p "
               f"WHERE {where} ORDER BY p.rowid LIMIT ?")
        return self.db.execute(sql, [*params, limit]).fetchall()

    def window_bounds(self, flt: LogFilter, after_rowid: int, *, size: int | None = None,
                      duration: float | None = None, after_key: int | None = None) -> list[tuple[int, int | None, int]]:
        """The filter's rows after `after_rowid` cut into windows by the database, each as (last rowid, key,
        rows), in log order; only those numbers come back, never the rows.

        `size`: every `size` rows a window (key None); the last one may hold fewer (not complete yet).
        `duration`: windows aligned to multiples of `duration` seconds, key floor(ts / duration), taken in log
        order as the running maximum (a late row joins the window being filled) and at least `after_key` + 1
        (a window already judged is never reopened); the last one may still be open."""
        where, params = filter_where(flt, after_rowid)
        if (size is None) == (duration is None):
            raise ValueError("window_bounds takes a size or a duration")
        if size is not None:
            sql = ("SELECT MAX(rowid), NULL, COUNT(*) FROM (SELECT p.rowid AS rowid, (ROW_NUMBER() OVER "
                   f"(ORDER BY p.rowid) - 1) / ? AS g FROM predictions p WHERE {where}) GROUP BY g ORDER BY g")
            return self.db.execute(sql, [int(size), *params]).fetchall()
        # floor of a division by CAST (SQLite's floor() is an optional build feature): truncation, one less below 0
        ratio = "(p.ts / ?)"
        key = f"(CAST({ratio} AS INTEGER) - ({ratio} < CAST({ratio} AS INTEGER)))"
        lowest = -(2**62) if after_key is None else int(after_key) + 1
        sql = (f"SELECT MAX(rowid), k, COUNT(*) FROM (SELECT p.rowid AS rowid, MAX(MAX({key}, ?)) OVER "
               f"(ORDER BY p.rowid ROWS UNBOUNDED PRECEDING) AS k FROM predictions p WHERE {where}) "
               "GROUP BY k ORDER BY k")
        span = float(duration)  # type: ignore[arg-type]
        return self.db.execute(sql, [span, span, span, lowest, *params]).fetchall()

    def traffic(self, after_rowid: int = 0, limit: int = 10) -> dict[Traffic, int]:
        """Rows after `after_rowid` by model, version and variant, busiest first."""
        rows = self.db.execute("SELECT model, version, variant, COUNT(*) FROM predictions WHERE rowid > ? "
                               "GROUP BY model, version, variant ORDER BY COUNT(*) DESC LIMIT ?", (after_rowid, limit))
        return {Traffic(m, v, var): int(n) for m, v, var, n in rows}

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


_LATEST = "(SELECT f.{col} FROM feedback f WHERE f.id = p.id ORDER BY f.rowid DESC LIMIT 1)"
# at most this many paths per json_extract call (SQLite allows 127 arguments to a function by default)
_PATHS_PER_CALL = 100


def filter_where(flt: LogFilter, after_rowid: int, through: int | None = None, mark: str = "?"
                 ) -> tuple[str, list[Any]]:
    """The filter's WHERE clause over `predictions p` after a rowid (and up to `through`), and its parameters,
    with `mark` as the driver's placeholder (SQLite's `?`, psycopg2's `%s`)."""
    where = [f"p.rowid > {mark}", f"p.model = {mark}"]
    params: list[Any] = [after_rowid, flt.model]
    if through is not None:  # a window's rows: the primary key's range bounds the scan whatever the plan
        where.append(f"p.rowid <= {mark}")
        params.append(through)
    for clause, value in (("p.version = {}", flt.version), ("p.ts >= {}", flt.since), ("p.ts < {}", flt.until)):
        if value is not None:
            where.append(clause.format(mark))
            params.append(value)
    if flt.variants:
        where.append(f"p.variant IN ({','.join([mark] * len(flt.variants))})")
        params.extend(flt.variants)
    return " AND ".join(where), params


def _literals(values: Sequence[str]) -> str:
    """SQL string literals (quotes doubled): JSON paths of the bundle's own columns, inlined in the query."""
    return ",".join("'" + v.replace("'", "''") + "'" for v in values)


def _sqlite_path(path: tuple[str, ...]) -> str:
    if not all(sql_extractable(k) for k in path):
        raise ValueError(f"a JSON path cannot name {path!r} in SQLite: read the whole row (chunk) instead")
    return "$" + "".join(f'."{k}"' for k in path)


def _sqlite_values(column: str, paths: list[tuple[str, ...]]) -> str:
    """A JSON array of the values at `paths` in `p.column`: one json_extract (one parse) per 100 paths."""
    if not paths:
        return "'[]'"
    calls = []
    for start in range(0, len(paths), _PATHS_PER_CALL):
        group = [_sqlite_path(p) for p in paths[start:start + _PATHS_PER_CALL]]
        # json_extract with one path gives the bare value (true as 1): `->` gives its JSON, kept as JSON
        calls.append(f"json_array(p.{column} -> {_literals(group)})" if len(group) == 1 else
                     f"json_extract(p.{column}, {_literals(group)})")
    if len(calls) == 1:
        return calls[0]
    # over 100 fields, the arrays joined as text (SQLite has no array concatenation; each call runs twice here)
    inner = " || ',' || ".join(f"substr({c}, 2, length({c}) - 2)" for c in calls)
    return f"'[' || {inner} || ']'"


def json_object(text: str | bytes | None) -> dict[str, Any]:
    """A JSON column as a dict; {} when it is empty, unreadable or not an object."""
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
