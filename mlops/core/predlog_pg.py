"""The prediction log on PostgreSQL: one database that every replica of a server writes and every phase reads.

`mlops serve --log postgresql://USER@HOST:PORT/DATABASE` (or the recipe's log) selects it; `open_log` and
`open_reader` (`mlops.core.predlog_store`) choose between this store and the embedded SQLite one. The tables and
columns are SQLite's, plus an explicit `rowid` (BIGSERIAL) that keeps `LogReader`'s keyset paging (`after_rowid`)
working, and the readers' methods return what SQLite's return.

The guarantee is SQLite's: `submit` resolves its future only after the COMMIT that holds the rows returned, so a
200 means "durable" (synchronous_commit stays on: the commit waits for the server's WAL flush). One writer thread
per process commits in groups (up to `max_group` requests, one multi-row INSERT per table), so many concurrent
requests share one round trip and one flush.

Every write transaction takes one transaction-scoped advisory lock before it inserts. That serialises the
writers of all replicas, which costs little (each holds it for one group's insert and commit) and keeps `rowid`
order equal to commit order: without it a replica could commit rowid 7 after a reader has already paged past 8,
and the monitor's cursor would skip that row for good.

Retention and WAL bounds (`LogLimits`) are SQLite's file-size concerns: PostgreSQL's own tooling (partitioning,
VACUUM, a scheduled DELETE) owns them there, so they are not applied (a note says so once).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from mlops.core.errors import MlopsError
from mlops.core.log import say
from mlops.core.predlog import (
    SHADOW,
    LogField,
    LogFilter,
    LogLimits,
    QueuedLog,
    Rows,
    Traffic,
    filter_where,
    json_object,
)

SCHEMES = ("postgresql", "postgres")

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
  rowid BIGSERIAL PRIMARY KEY, id TEXT NOT NULL, ts DOUBLE PRECISION NOT NULL, model TEXT NOT NULL, version TEXT,
  variant TEXT NOT NULL, inputs TEXT NOT NULL, outputs TEXT NOT NULL, latency_ms DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS predictions_id ON predictions(id);
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions(ts);
CREATE TABLE IF NOT EXISTS feedback (
  rowid BIGSERIAL PRIMARY KEY, id TEXT NOT NULL, ts DOUBLE PRECISION NOT NULL, label TEXT, value DOUBLE PRECISION,
  payload TEXT
);
CREATE INDEX IF NOT EXISTS feedback_id ON feedback(id);
"""

_PRESENT = "SELECT to_regclass('predictions') IS NOT NULL AND to_regclass('feedback') IS NOT NULL"

# advisory lock keys (database-wide): creating the tables (two replicas starting together would otherwise race on
# CREATE TABLE IF NOT EXISTS, which is not atomic), and writing (see the module's docstring)
SCHEMA_LOCK = 0x6D6C6F7073_0001
WRITE_LOCK = 0x6D6C6F7073_0002

_INSERT = {
    "predictions": b"INSERT INTO predictions (id, ts, model, version, variant, inputs, outputs, latency_ms) VALUES ",
    "feedback": b"INSERT INTO feedback (id, ts, label, value, payload) VALUES ",
}
_VALUES = {"predictions": "(%s, %s, %s, %s, %s, %s, %s, %s)", "feedback": "(%s, %s, %s, %s, %s)"}
CONNECT_TIMEOUT_S = 10
_limits_noted = False


class LogWriteError(Exception):
    """A group's commit that PostgreSQL refused or that a broken connection left unknown: its requests answer 503
    (never 200), as a failed SQLite commit's do."""


def redacted(url: str) -> str:
    """The URL without its secrets, for messages and logs: the password of `USER:PASSWORD@HOST`, and the value of
    a query option that holds one (`?password=`, as libpq and redis-py take it; libpq's `?sslpassword=`).
    Everything else stays as written: the query is masked as text (a re-encoded one would read otherwise) and a
    port that is no number is shown, since the message is often about it."""
    head, mark, tail = url.partition("?")
    if mark:
        query, hash_, fragment = tail.partition("#")
        tail = "&".join(_masked_option(option) for option in query.split("&")) + hash_ + fragment
    parts = urlsplit(head)
    if parts.password is not None:
        # the port as written: `parts.port` raises ValueError on one that is no number, and this message says so
        port = parts.netloc.rpartition("@")[2].rpartition("]")[2].partition(":")[2]
        host = parts.hostname or ""
        netloc = f"{parts.username or ''}:***@{f'[{host}]' if ':' in host else host}" + (f":{port}" if port else "")
        head = urlunsplit(parts._replace(netloc=netloc))
    return head + mark + tail


def _masked_option(option: str) -> str:
    """`NAME=VALUE` with its value masked when NAME holds a password (any spelling `unquote_plus` reads as
    `password` or `...password`, whatever its case)."""
    name, equals, value = option.partition("=")
    if equals and value and unquote_plus(name).strip().lower().endswith("password"):
        return f"{name}=***"
    return option


def connect(url: str, timeout: float = CONNECT_TIMEOUT_S) -> Any:
    """A psycopg2 connection to the log's database; an unreachable or refused one is the user's to fix."""
    try:
        import psycopg2  # here: only a log on PostgreSQL needs the driver
    except ImportError:
        raise MlopsError(f"the prediction log {redacted(url)} is on PostgreSQL, which needs psycopg2: "
                         "pip install 'mlops[serve]' (or psycopg2-binary)") from None
    try:
        return psycopg2.connect(url, connect_timeout=max(1, int(timeout)), application_name="mlops prediction log")
    except psycopg2.Error as exc:
        raise MlopsError(f"cannot open the prediction log {redacted(url)}: {str(exc).strip()} (expected "
                         "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE of a reachable server)") from None


def create_schema(db: Any) -> None:
    """The log's tables and indexes, created if missing, one replica at a time. Tables already there are left
    alone, so a role with only INSERT and SELECT on them (no CREATE) can serve."""
    with db.cursor() as cur:
        cur.execute(_PRESENT)
        if not cur.fetchone()[0]:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            cur.execute(SCHEMA)
    db.commit()


def ensure_durable(db: Any) -> None:
    """A server (or role) configured with synchronous_commit=off would acknowledge commits it could still lose:
    this session turns it back on (any other setting already waits for at least the local flush). Then
    autocommit: the writers write their own BEGIN and COMMIT."""
    with db.cursor() as cur:
        cur.execute("SHOW synchronous_commit")
        (mode,) = cur.fetchone()
        if mode == "off":
            cur.execute("SET synchronous_commit = on")
    db.commit()
    db.autocommit = True


# SQLSTATE of "permission denied" (insufficient_privilege)
_NO_PRIVILEGE = "42501"


def open_writer(url: str) -> Any:
    """A connection that writes the log: its tables created if missing, its commits durable. Closed again if
    either fails; what PostgreSQL refused (a role that may not create the tables) is the user's to fix, so it is
    said as such, at startup, not as a traceback."""
    import psycopg2

    db = connect(url)  # a wrong URL fails here, at startup, not at the first write
    try:
        create_schema(db)
        ensure_durable(db)
    except psycopg2.Error as exc:
        db.close()
        hint = ""
        if exc.pgcode == _NO_PRIVILEGE:
            hint = (" (the tables predictions and feedback are missing and this role may not create them: create "
                    "them once with a role that may, e.g. start one server as the database's owner, then GRANT "
                    "SELECT, INSERT on them and USAGE on their rowid sequences to this role)")
        reason = exc.diag.message_primary or str(exc).strip()  # the first line, without the statement quoted
        raise MlopsError(f"cannot use the prediction log {redacted(url)}: {reason}{hint}") from None
    except BaseException:
        db.close()
        raise
    return db


def insert_values(cur: Any, table: str, rows: list[tuple[Any, ...]]) -> bytes:
    """One multi-row INSERT of `rows` into `table`, its values bound by the driver."""
    return _INSERT[table] + b",".join(cur.mogrify(_VALUES[table], r) for r in rows)


def rollback(db: Any) -> None:
    """End the open transaction, if the connection still can: a failed statement skips the rest of its query
    string, and leaves its transaction open and aborted."""
    import psycopg2

    try:
        with db.cursor() as cur:
            cur.execute("ROLLBACK")
    except psycopg2.Error:
        pass


def _note_limits(limits: LogLimits) -> None:
    global _limits_noted
    if (limits.retains or limits.wal_max_bytes is not None) and not _limits_noted:
        _limits_noted = True
        say("the log's limits (monitor.log_limits: retention, WAL bound) apply to SQLite only; on PostgreSQL "
            "bound the tables with its own tools (partitions, a scheduled DELETE)", "prediction log")


class PgPredictionLog(QueuedLog):
    """The prediction log's writer on PostgreSQL: `submit(table, rows)` returns a future resolved once the
    rows are committed (or failed with the error that kept them out: the server answers 503, not 200).
    The same interface as SQLite's `PredictionLog`; `path` is the URL."""

    # what the server's metrics read from SQLite's writer; nothing of the kind here
    wal_truncations = 0
    wal_truncations_busy = 0
    wal_truncate_seconds = 0.0

    def __init__(self, url: str, max_group: int = 512, limits: LogLimits | None = None) -> None:
        self.path = url
        self.max_group = max_group
        self.limits = limits or LogLimits()
        _note_limits(self.limits)
        self._db: Any = open_writer(url)
        self._start_writer("prediction-log-pg")

    def _writer(self) -> None:
        stopping = False
        while not stopping:
            stopping, records, built = self._group(self._queue.get())
            if not records:
                continue
            tables: dict[str, list[tuple[Any, ...]]] = {}
            for (table, _, _), rows in zip(records, built, strict=True):
                if not isinstance(rows, BaseException):
                    tables.setdefault(table, []).extend(rows)
            self._settle(records, built, self._commit(tables))
        if self._db is not None:
            self._db.close()

    def _commit(self, tables: dict[str, list[tuple[Any, ...]]]) -> LogWriteError | None:
        """Insert a group's rows in one transaction; the error that kept them out, or None once committed.

        The whole transaction (BEGIN, the lock, one INSERT per table, COMMIT) goes as one query string: one round
        trip instead of four, about a third of a commit's time on loopback (the WAL flush is the rest). The
        statement returns once COMMIT has returned, so the rows are durable when the futures resolve."""
        import psycopg2

        try:
            if self._db is None:  # the last connection broke (a restarted server): this group tries a new one
                self._db = connect(self.path)
                ensure_durable(self._db)
            with self._db.cursor() as cur:
                parts = [b"BEGIN", cur.mogrify("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))]
                for table, rows in tables.items():
                    if rows:
                        parts.append(insert_values(cur, table, rows))
                parts.append(b"COMMIT")
                cur.execute(b"; ".join(parts))
            return None
        # a value the driver cannot encode (ValueError, OverflowError) fails the group too, not the writer (see
        # mlops.core.predlog.UNWRITABLE)
        except (psycopg2.Error, MlopsError, ValueError, OverflowError) as exc:  # every waiting request answers 503
            self._discard_transaction()
            error = LogWriteError(f"{type(exc).__name__}: {str(exc).strip()}")
            error.__cause__ = exc
            return error

    def _discard_transaction(self) -> None:
        if self._db is None:
            return
        rollback(self._db)
        if self._db.closed:
            self._db = None

    def sizes(self) -> dict[str, int]:
        """Bytes on disk by part: none that this process can see (the server's own statistics tell them)."""
        return {}

    def submit(self, table: str, rows: Rows) -> Future[None]:
        if table not in _INSERT:
            raise ValueError(f"no table {table!r} in the prediction log")
        return super().submit(table, rows)


class PgIdempotentLog:
    """The log on PostgreSQL written as `mlops stream` needs it (SQLite's `IdempotentLog`, the same interface): a
    row whose (id, variant) is already there is skipped. The check and the insert share one transaction under the
    writers' advisory lock, the one the servers' groups take, so two consumers racing on a redelivered message
    still log it once, and `rowid` order stays commit order for the monitor's cursor."""

    def __init__(self, url: str) -> None:
        self.path = url
        self._db: Any = open_writer(url)  # an unreachable server fails here, before any message is read

    def write(self, rows: list[tuple[Any, ...]]) -> int:
        """Insert the rows not yet logged; return how many were already there. A connection that broke (the
        database restarted) is opened again and the write made once more: a commit whose answer was lost is
        then found by the check, so nothing is logged twice (and those rows count as already there)."""
        import psycopg2

        if not rows:
            return 0
        for attempt in (0, 1):
            try:
                return self._write(rows)
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                self.close()
                if attempt:
                    raise MlopsError(f"lost the prediction log {redacted(self.path)}: {str(exc).strip()}. The "
                                     "batch stays pending in the stream and is logged when a consumer starts "
                                     "again") from None
                self._db = open_writer(self.path)
            except psycopg2.Error as exc:  # refused (a role without INSERT, a full disk): the user's to fix
                rollback(self._db)
                raise MlopsError(f"the prediction log {redacted(self.path)} refused the batch: "
                                 f"{str(exc).strip()}") from None
        raise AssertionError("unreachable")

    def _write(self, rows: list[tuple[Any, ...]]) -> int:
        with self._db.cursor() as cur:
            # BEGIN, the lock and the check in one round trip: the answer is the last statement's
            cur.execute("BEGIN; SELECT pg_advisory_xact_lock(%s); "
                        "SELECT id, variant FROM predictions WHERE id = ANY(%s)",
                        (WRITE_LOCK, sorted({r[0] for r in rows})))
            present = set(cur.fetchall())
            new = [r for r in rows if (r[0], r[4]) not in present]
            cur.execute(b"; ".join([insert_values(cur, "predictions", new), b"COMMIT"] if new else [b"COMMIT"]))
        return len(rows) - len(new)

    def close(self) -> None:
        if not self._db.closed:
            self._db.close()


_LATEST = ("LEFT JOIN LATERAL (SELECT label, value FROM feedback WHERE feedback.id = p.id ORDER BY feedback.rowid "
           "DESC LIMIT 1) f ON true")


# a document as jsonb: jsonb refuses the escape \u0000 (a NUL in a string, which JSON allows and a client may
# send), so it is read as U+FFFD rather than failing the whole read
_JSONB = r"replace({}, '\u0000', '\ufffd')::jsonb"


class PgLogReader:
    """A read-only view of a prediction log on PostgreSQL, with `LogReader`'s methods and return shapes. Each
    query sees every commit made before it (autocommit: no snapshot is held between queries). `archive` is
    accepted for the same signature: nothing is archived on PostgreSQL."""

    reads_fields = True  # `chunk_fields` runs on every supported PostgreSQL

    def __init__(self, url: str, timeout: float = 30.0, archive: bool = True) -> None:
        self.path = url
        self.timeout = min(timeout, CONNECT_TIMEOUT_S)
        self.db = self._connect()
        ((present,),), _ = self._query(_PRESENT)
        if not present:
            self.db.close()
            raise MlopsError(f"no prediction log at {redacted(url)} (it has no predictions and feedback tables): "
                             "`mlops serve --log URL` creates them")

    def __enter__(self) -> PgLogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def _connect(self) -> Any:
        db = connect(self.path, timeout=self.timeout)
        db.set_session(readonly=True, autocommit=True)
        return db

    def _query(self, sql: str, params: Any = ()) -> tuple[list[tuple[Any, ...]], list[str]]:
        """The rows and column names of one query. A connection that broke since the last one (PostgreSQL
        restarted: a server keeps its reader open for feedback's id look-ups) is opened again, once."""
        import psycopg2

        for attempt in (0, 1):
            try:
                with self.db.cursor() as cur:
                    cur.execute(sql, params)
                    return cur.fetchall(), [d[0] for d in cur.description]
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                if attempt or not self.db.closed:
                    raise
                self.db = self._connect()
        raise AssertionError("unreachable")

    def _rows(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        return self._query(sql, params)[0]

    def chunk(self, flt: LogFilter, after_rowid: int, limit: int, through: int | None = None
              ) -> list[tuple[Any, ...]]:
        """As `LogReader.chunk`: (rowid, id, ts, version, inputs, outputs, latency_ms, truth label, truth value)."""
        where, params = filter_where(flt, after_rowid, through, "%s")
        sql = ("SELECT p.rowid, p.id, p.ts, p.version, p.inputs, p.outputs, p.latency_ms, f.label, f.value "
               f"FROM predictions p {_LATEST} WHERE {where} ORDER BY p.rowid LIMIT %s")
        return self._rows(sql, [*params, limit])

    def chunk_fields(self, flt: LogFilter, after_rowid: int, limit: int, fields: Sequence[LogField],
                     known: Sequence[str] | None = None, through: int | None = None) -> list[tuple[Any, ...]]:
        """As `LogReader.chunk_fields`: (rowid, id, ts, version, latency_ms, truth label, truth value, others,
        inputs' values, outputs' values). Each document is parsed once per row (to jsonb); only the fields
        travel."""
        where, params = filter_where(flt, after_rowid, through, "%s")
        values, paths = [], []
        for column in ("inputs", "outputs"):
            mine = [list(f.path) for f in fields if f.column == column]
            # an ARRAY, not jsonb_build_array: a function takes 100 arguments at most
            values.append("to_jsonb(ARRAY[" + ", ".join([f"j.{column[0]} #> %s"] * len(mine)) + "]::jsonb[])::text"
                          if mine else "'[]'")
            paths += mine
        others, known_params = "NULL", []
        if known is not None:
            # a document that is no object has no columns (and `-` refuses a scalar)
            others = "CASE WHEN jsonb_typeof(j.i) = 'object' THEN (j.i - %s::text[])::text END"
            known_params = [list(known)]
        # OFFSET 0 keeps the planner from inlining the casts into every use (one parse per row, not per field)
        sql = (f"SELECT p.rowid, p.id, p.ts, p.version, p.latency_ms, f.label, f.value, {others}, {values[0]}, "
               f"{values[1]} FROM predictions p CROSS JOIN LATERAL (SELECT {_JSONB.format('p.inputs')} AS i, "
               f"{_JSONB.format('p.outputs')} AS o OFFSET 0) j {_LATEST} WHERE {where} ORDER BY p.rowid LIMIT %s")
        return self._rows(sql, [*known_params, *paths, *params, limit])

    def window_bounds(self, flt: LogFilter, after_rowid: int, *, size: int | None = None,
                      duration: float | None = None, after_key: int | None = None) -> list[tuple[int, int | None, int]]:
        """As `LogReader.window_bounds`: (last rowid, key, rows) of each window, cut by the database."""
        where, params = filter_where(flt, after_rowid, mark="%s")
        if (size is None) == (duration is None):
            raise ValueError("window_bounds takes a size or a duration")
        if size is not None:
            sql = ("SELECT MAX(rowid), NULL::bigint, COUNT(*) FROM (SELECT p.rowid, (ROW_NUMBER() OVER "
                   f"(ORDER BY p.rowid) - 1) / %s AS g FROM predictions p WHERE {where}) w GROUP BY g ORDER BY g")
            return self._rows(sql, [int(size), *params])
        lowest = -(2**62) if after_key is None else int(after_key) + 1
        sql = ("SELECT MAX(rowid), k, COUNT(*) FROM (SELECT p.rowid, MAX(GREATEST(floor(p.ts / %s)::bigint, %s)) "
               f"OVER (ORDER BY p.rowid ROWS UNBOUNDED PRECEDING) AS k FROM predictions p WHERE {where}) w "
               "GROUP BY k ORDER BY k")
        return self._rows(sql, [float(duration), lowest, *params])  # type: ignore[arg-type]

    def traffic(self, after_rowid: int = 0, limit: int = 10) -> dict[Traffic, int]:
        """Rows after `after_rowid` by model, version and variant, busiest first."""
        rows = self._rows("SELECT model, version, variant, COUNT(*) FROM predictions WHERE rowid > %s "
                          # ties in SQLite's order (its GROUP BY sorts by the keys, bytewise, NULL first)
                          "GROUP BY model, version, variant ORDER BY COUNT(*) DESC, model COLLATE \"C\", "
                          "version COLLATE \"C\" NULLS FIRST, variant COLLATE \"C\" LIMIT %s", (after_rowid, limit))
        return {Traffic(m, v, var): int(n) for m, v, var, n in rows}

    def predictions(self, variants: tuple[str, ...], model: str | None = None, since: float | None = None,
                    version: str | None = None) -> list[dict[str, Any]]:
        """As `LogReader.predictions`: dicts of the table's columns plus `rowid`, oldest first."""
        where, args = ["variant = ANY(%s)"], [list(variants)]
        for column, op, value in (("model", "=", model), ("ts", ">=", since), ("version", "=", version)):
            if value is not None:
                where.append(f"{column} {op} %s")
                args.append(value)
        rows, names = self._query("SELECT rowid, id, ts, model, version, variant, inputs, outputs, latency_ms "
                                  f"FROM predictions WHERE {' AND '.join(where)} ORDER BY ts, rowid", args)
        return [dict(zip(names, r, strict=True)) for r in rows]

    def latest_feedback(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The latest feedback per id: {id: {"label", "value", "payload"}} (payload parsed; {} if unreadable)."""
        found: dict[str, dict[str, Any]] = {}
        for pid, label, value, payload in self._rows(
                "SELECT id, label, value, payload FROM feedback WHERE id = ANY(%s) ORDER BY ts, rowid",
                (sorted(set(ids)),)):
            found[pid] = {"label": label, "value": value, "payload": json_object(payload)}
        return found

    def known_ids(self, ids: list[str]) -> set[str]:
        """Which of `ids` have a prediction."""
        return {r[0] for r in self._rows("SELECT DISTINCT id FROM predictions WHERE id = ANY(%s)",
                                         (sorted(set(ids)),))}

    def latencies(self, since: float, until: float, variant: str | None = None, model: str | None = None
                  ) -> list[float]:
        """Latencies of the requests answered in [since, until), by `variant` (None: every served variant)."""
        where = ["variant = %s" if variant else "variant != %s", "ts >= %s", "ts < %s"]
        params: list[Any] = [variant or SHADOW, since, until]
        if model:
            where.append("model = %s")
            params.append(model)
        return [r[0] for r in self._rows(f"SELECT latency_ms FROM predictions WHERE {' AND '.join(where)}", params)]

    def shadow_pairs(self, since: float, until: float) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(shadow outputs, served outputs) of every request the shadow answered in [since, until)."""
        rows = self._rows("SELECT s.outputs, p.outputs FROM predictions s JOIN predictions p ON s.id = p.id "
                          "AND p.variant != %s WHERE s.variant = %s AND s.ts >= %s AND s.ts < %s",
                          (SHADOW, SHADOW, since, until))
        return [(json_object(a), json_object(b)) for a, b in rows]
