"""The monitor's own durable record, one SQLite file per model (`.mlops/monitor/<model>.sqlite`):

- `windows`: every judged window (bounds in log time and rowids, rows, the whole summary as JSON);
- `alerts`: every firing and resolution (rule, window, value, threshold, state, payload, delivery);
- `rule_state`: hysteresis per rule (breaching windows in a row, firing or not, last firing), so
  `consecutive` and `cooldown` hold across `mlops monitor` runs;
- `cursor`: where in the prediction log the next run starts;
- `scrapes`: the server's request counters at the last run (for the error rate since).

A run writes all of it in one transaction, after checking that no other run moved the cursor meanwhile.
The retraining phase reads the alerts, read-only: `alert_records()` (every alert of a model) and `last_alert()`.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from mlops.core import state_pg
from mlops.core.errors import MlopsError
from mlops.core.workspace import Workspace, workspace
from mlops.monitor.results import AlertRecord, WindowSummary
from mlops.monitor.rules import RuleState

SCHEMA = """
CREATE TABLE IF NOT EXISTS windows (
  id INTEGER PRIMARY KEY, model TEXT NOT NULL, version TEXT NOT NULL, log TEXT NOT NULL, start_ts REAL NOT NULL,
  end_ts REAL NOT NULL, start_rowid INTEGER NOT NULL, end_rowid INTEGER NOT NULL, rows INTEGER NOT NULL,
  judged INTEGER NOT NULL, summary TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
  id INTEGER PRIMARY KEY, created REAL NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL, rule TEXT NOT NULL,
  event TEXT NOT NULL, state TEXT NOT NULL, window_id INTEGER, window_start REAL NOT NULL, window_end REAL NOT NULL,
  value REAL, threshold REAL, payload TEXT NOT NULL, delivery TEXT
);
CREATE INDEX IF NOT EXISTS alerts_rule ON alerts(model, rule, id);
CREATE TABLE IF NOT EXISTS rule_state (
  model TEXT NOT NULL, version TEXT NOT NULL, rule TEXT NOT NULL, consecutive INTEGER NOT NULL,
  firing INTEGER NOT NULL, last_fired REAL, PRIMARY KEY (model, version, rule)
);
CREATE TABLE IF NOT EXISTS cursor (
  model TEXT NOT NULL, version TEXT NOT NULL, log TEXT NOT NULL, last_rowid INTEGER NOT NULL, by TEXT NOT NULL,
  last_key INTEGER, PRIMARY KEY (model, version, log)
);
CREATE TABLE IF NOT EXISTS scrapes (url TEXT NOT NULL, model TEXT NOT NULL, ts REAL NOT NULL, counts TEXT NOT NULL,
  PRIMARY KEY (url, model));
"""




class MonitorStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)  # where the store is, as messages and results show it
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(SCHEMA)

    def close(self) -> None:
        """Nothing held between calls: each opens its own connection."""

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.row_factory = sqlite3.Row
        return db

    # --- reads ------------------------------------------------------------------------------------------

    def cursor(self, model: str, version: str | None, log: str, by: str) -> tuple[int, int | None]:
        """(last rowid judged, last time-window key) for this model, version and log; (0, None) at first."""
        with self._connect() as db:
            row = db.execute("SELECT last_rowid, by, last_key FROM cursor WHERE model = ? AND version = ? AND log = ?",
                             (model, version or "", log)).fetchone()
        if row is None:
            return 0, None
        return int(row["last_rowid"]), (row["last_key"] if row["by"] == by else None)

    def rule_states(self, model: str, version: str | None) -> dict[str, RuleState]:
        with self._connect() as db:
            rows = db.execute("SELECT rule, consecutive, firing, last_fired FROM rule_state WHERE model = ? AND "
                              "version = ?", (model, version or "")).fetchall()
        return {r["rule"]: RuleState(r["consecutive"], bool(r["firing"]), r["last_fired"]) for r in rows}

    def last_scrape(self, url: str, model: str) -> dict[str, float] | None:
        with self._connect() as db:
            row = db.execute("SELECT counts FROM scrapes WHERE url = ? AND model = ?", (url, model)).fetchone()
        return None if row is None else json.loads(row["counts"])

    def windows(self, model: str, limit: int) -> list[dict[str, Any]]:
        """The latest `limit` windows of the model, oldest first, each with its summary."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM windows WHERE model = ? ORDER BY id DESC LIMIT ?", (model, limit)).fetchall()
        return [dict(r) | {"summary": json.loads(r["summary"])} for r in reversed(rows)]

    def alerts(self, model: str, limit: int = 1000) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM alerts WHERE model = ? ORDER BY id DESC LIMIT ?", (model, limit)).fetchall()
        return [_alert(r) for r in reversed(rows)]

    # --- the one write of a run -------------------------------------------------------------------------

    def commit_run(self, model: str, version: str | None, log: str, by: str, expected_rowid: int,
                   windows: list[WindowSummary], alerts: list[AlertRecord], states: dict[str, RuleState],
                   new_cursor: tuple[int, int | None] | None, scrape: tuple[str, dict[str, float]] | None) -> None:
        """Windows, alerts (their `window_id` filled from the window index, their `id` set), rule states, cursor
        and scrape in one transaction. Refused when another run moved the cursor since this one read it."""
        v = version or ""
        now = time.time()
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT last_rowid FROM cursor WHERE model = ? AND version = ? AND log = ?",
                             (model, v, log)).fetchone()
            if (row["last_rowid"] if row else 0) != expected_rowid:
                raise MlopsError(f"another `mlops monitor` run judged windows of '{model}' meanwhile (cursor at row "
                                 f"{row['last_rowid'] if row else 0}, this run started at {expected_rowid}): run it "
                                 "again")
            ids: dict[int, int] = {}
            for w in windows:
                cur = db.execute(
                    "INSERT INTO windows (model, version, log, start_ts, end_ts, start_rowid, end_rowid, rows, judged, "
                    "summary, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (model, v, log, w.start_ts, w.end_ts, w.start_rowid, w.end_rowid, w.rows, int(w.judged),
                     json.dumps(w.record(), default=_json_default), now))
                ids[w.index] = int(cur.lastrowid or 0)
            for a in alerts:
                cur = db.execute(
                    "INSERT INTO alerts (created, model, version, rule, event, state, window_id, window_start, "
                    "window_end, value, threshold, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (now, model, v, a.rule, a.event, a.state, ids.get(a.window.index), a.window.start,
                     a.window.end, a.value, a.threshold, json.dumps(a.payload(), default=_json_default)))
                a.id = int(cur.lastrowid or 0)
            for rule, s in states.items():
                db.execute("INSERT OR REPLACE INTO rule_state VALUES (?, ?, ?, ?, ?, ?)",
                           (model, v, rule, s.consecutive, int(s.firing), s.last_fired))
            if new_cursor is not None:
                db.execute("INSERT OR REPLACE INTO cursor VALUES (?, ?, ?, ?, ?, ?)",
                           (model, v, log, new_cursor[0], by, new_cursor[1]))
            if scrape is not None:
                db.execute("INSERT OR REPLACE INTO scrapes VALUES (?, ?, ?, ?)",
                           (scrape[0], model, now, json.dumps(scrape[1])))
            db.commit()
        except BaseException:
            db.rollback()
            raise
        finally:
            db.close()

    def record_delivery(self, alert_id: int, delivery: dict[str, Any]) -> None:
        with self._connect() as db:
            db.execute("UPDATE alerts SET delivery = ? WHERE id = ?", (json.dumps(delivery), alert_id))

    def exclusive(self, model: str) -> Any:
        """One run's hold on the model (PostgreSQL: an advisory lock). Here nothing: `commit_run`'s cursor check
        refuses the second of two overlapping runs."""
        return nullcontext()


# the same tables in the prediction log's PostgreSQL database, prefixed (they share it with the log's tables)
PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS mlops_monitor_windows (
  id BIGSERIAL PRIMARY KEY, model TEXT NOT NULL, version TEXT NOT NULL, log TEXT NOT NULL,
  start_ts DOUBLE PRECISION NOT NULL, end_ts DOUBLE PRECISION NOT NULL, start_rowid BIGINT NOT NULL,
  end_rowid BIGINT NOT NULL, rows BIGINT NOT NULL, judged INTEGER NOT NULL, summary TEXT NOT NULL,
  created DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS mlops_monitor_alerts (
  id BIGSERIAL PRIMARY KEY, created DOUBLE PRECISION NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL,
  rule TEXT NOT NULL, event TEXT NOT NULL, state TEXT NOT NULL, window_id BIGINT,
  window_start DOUBLE PRECISION NOT NULL, window_end DOUBLE PRECISION NOT NULL, value DOUBLE PRECISION,
  threshold DOUBLE PRECISION, payload TEXT NOT NULL, delivery TEXT
);
CREATE INDEX IF NOT EXISTS mlops_monitor_alerts_rule ON mlops_monitor_alerts(model, rule, id);
CREATE TABLE IF NOT EXISTS mlops_monitor_rule_state (
  model TEXT NOT NULL, version TEXT NOT NULL, rule TEXT NOT NULL, consecutive INTEGER NOT NULL,
  firing INTEGER NOT NULL, last_fired DOUBLE PRECISION, PRIMARY KEY (model, version, rule)
);
CREATE TABLE IF NOT EXISTS mlops_monitor_cursor (
  model TEXT NOT NULL, version TEXT NOT NULL, log TEXT NOT NULL, last_rowid BIGINT NOT NULL, by TEXT NOT NULL,
  last_key BIGINT, PRIMARY KEY (model, version, log)
);
CREATE TABLE IF NOT EXISTS mlops_monitor_scrapes (url TEXT NOT NULL, model TEXT NOT NULL,
  ts DOUBLE PRECISION NOT NULL, counts TEXT NOT NULL, PRIMARY KEY (url, model));
CREATE TABLE IF NOT EXISTS mlops_monitor_holder (model TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL,
  since DOUBLE PRECISION NOT NULL);
"""
_PG_PRESENT = "SELECT to_regclass('mlops_monitor_holder') IS NOT NULL"


class PgMonitorStore(MonitorStore):
    """The monitor's record in the prediction log's PostgreSQL database (tables `mlops_monitor_*`): shared by every
    host that monitors the log. `exclusive()` holds a per-model advisory lock for a whole run; a second monitor of
    the same model refuses, naming the one that holds it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = state_pg.redacted(url)  # never Path(url), which squashes its //
        self._db = state_pg.connect(url)
        state_pg.ensure_schema(self._db, _PG_PRESENT, PG_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def _rows(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        with self._db.cursor() as cur:
            cur.execute(sql, params)
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        self._db.commit()
        return rows

    def cursor(self, model: str, version: str | None, log: str, by: str) -> tuple[int, int | None]:
        rows = self._rows("SELECT last_rowid, by, last_key FROM mlops_monitor_cursor WHERE model = %s AND "
                          "version = %s AND log = %s", (model, version or "", log))
        if not rows:
            return 0, None
        return int(rows[0]["last_rowid"]), (rows[0]["last_key"] if rows[0]["by"] == by else None)

    def rule_states(self, model: str, version: str | None) -> dict[str, RuleState]:
        rows = self._rows("SELECT rule, consecutive, firing, last_fired FROM mlops_monitor_rule_state WHERE "
                          "model = %s AND version = %s", (model, version or ""))
        return {r["rule"]: RuleState(r["consecutive"], bool(r["firing"]), r["last_fired"]) for r in rows}

    def last_scrape(self, url: str, model: str) -> dict[str, float] | None:
        rows = self._rows("SELECT counts FROM mlops_monitor_scrapes WHERE url = %s AND model = %s", (url, model))
        return json.loads(rows[0]["counts"]) if rows else None

    def windows(self, model: str, limit: int) -> list[dict[str, Any]]:
        rows = self._rows("SELECT * FROM mlops_monitor_windows WHERE model = %s ORDER BY id DESC LIMIT %s",
                          (model, limit))
        return [r | {"summary": json.loads(r["summary"])} for r in reversed(rows)]

    def alerts(self, model: str, limit: int = 1000) -> list[dict[str, Any]]:
        rows = self._rows("SELECT * FROM mlops_monitor_alerts WHERE model = %s ORDER BY id DESC LIMIT %s",
                          (model, limit))
        return [_alert(r) for r in reversed(rows)]

    def commit_run(self, model: str, version: str | None, log: str, by: str, expected_rowid: int,
                   windows: list[WindowSummary], alerts: list[AlertRecord], states: dict[str, RuleState],
                   new_cursor: tuple[int, int | None] | None, scrape: tuple[str, dict[str, float]] | None) -> None:
        v = version or ""
        now = time.time()
        with state_pg.xact_lock(self._db, state_pg.advisory_key("mlops", "monitor-commit", model)) as db, \
                db.cursor() as cur:
            cur.execute("SELECT last_rowid FROM mlops_monitor_cursor WHERE model = %s AND version = %s AND log = %s",
                        (model, v, log))
            row = cur.fetchone()
            if (row[0] if row else 0) != expected_rowid:
                raise MlopsError(f"another `mlops monitor` run judged windows of '{model}' meanwhile (cursor at row "
                                 f"{row[0] if row else 0}, this run started at {expected_rowid}): run it again")
            ids: dict[int, int] = {}
            for w in windows:
                cur.execute(
                    "INSERT INTO mlops_monitor_windows (model, version, log, start_ts, end_ts, start_rowid, end_rowid, "
                    "rows, judged, summary, created) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                    (model, v, log, w.start_ts, w.end_ts, w.start_rowid, w.end_rowid, w.rows, int(w.judged),
                     json.dumps(w.record(), default=_json_default), now))
                ids[w.index] = int(cur.fetchone()[0])
            for a in alerts:
                cur.execute(
                    "INSERT INTO mlops_monitor_alerts (created, model, version, rule, event, state, window_id, "
                    "window_start, window_end, value, threshold, payload) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, "
                    "%s, %s, %s, %s) RETURNING id",
                    (now, model, v, a.rule, a.event, a.state, ids.get(a.window.index), a.window.start,
                     a.window.end, a.value, a.threshold, json.dumps(a.payload(), default=_json_default)))
                a.id = int(cur.fetchone()[0])
            for rule, s in states.items():
                cur.execute("INSERT INTO mlops_monitor_rule_state VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT "
                            "(model, version, rule) DO UPDATE SET consecutive = EXCLUDED.consecutive, "
                            "firing = EXCLUDED.firing, last_fired = EXCLUDED.last_fired",
                            (model, v, rule, s.consecutive, int(s.firing), s.last_fired))
            if new_cursor is not None:
                cur.execute("INSERT INTO mlops_monitor_cursor VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT "
                            "(model, version, log) DO UPDATE SET last_rowid = EXCLUDED.last_rowid, by = EXCLUDED.by, "
                            "last_key = EXCLUDED.last_key", (model, v, log, new_cursor[0], by, new_cursor[1]))
            if scrape is not None:
                cur.execute("INSERT INTO mlops_monitor_scrapes VALUES (%s, %s, %s, %s) ON CONFLICT (url, model) DO "
                            "UPDATE SET ts = EXCLUDED.ts, counts = EXCLUDED.counts",
                            (scrape[0], model, now, json.dumps(scrape[1])))

    def record_delivery(self, alert_id: int, delivery: dict[str, Any]) -> None:
        self._rows("UPDATE mlops_monitor_alerts SET delivery = %s WHERE id = %s RETURNING id",
                   (json.dumps(delivery), alert_id))

    @contextmanager
    def exclusive(self, model: str) -> Iterator[None]:
        """Hold the model's monitor lock (a session advisory lock: a crashed run's ends with its connection) for a
        whole run, so its cursor is read and advanced by it alone; refuse when another monitor holds it."""
        key = state_pg.advisory_key("mlops", "monitor", model)
        with self._db.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
            got = cur.fetchone()[0]
        self._db.commit()
        if not got:
            held = self._holder(model)
            who = (f"{held[0]['host']} pid {held[0]['pid']}, since {time.strftime('%H:%M:%S', time.gmtime(held[0]['since']))}"
                   " UTC" if held else "another host")
            raise MlopsError(f"another `mlops monitor` of '{model}' is judging the log {self.name} ({who}): this one "
                             "stops without judging; run it again when that one ends")
        try:
            self._rows("INSERT INTO mlops_monitor_holder VALUES (%s, %s, %s, %s) ON CONFLICT (model) DO UPDATE SET "
                       "host = EXCLUDED.host, pid = EXCLUDED.pid, since = EXCLUDED.since RETURNING model",
                       (model, socket.gethostname(), os.getpid(), time.time()))
            yield
        finally:
            if not self._db.closed:  # a broken connection's session lock went with it
                self._db.rollback()  # a query that failed in the run left its transaction aborted: nothing runs until then
                with self._db.cursor() as cur:  # no holder row outlives its lock, so none names a finished monitor
                    cur.execute("DELETE FROM mlops_monitor_holder WHERE model = %s AND host = %s AND pid = %s",
                                (model, socket.gethostname(), os.getpid()))
                    cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
                self._db.commit()

    def _holder(self, model: str) -> list[dict[str, Any]]:
        """Who holds the model's lock: its row is written just after the lock is taken, so a monitor refused in
        between waits a moment for it."""
        for _ in range(20):
            held = self._rows("SELECT host, pid, since FROM mlops_monitor_holder WHERE model = %s", (model,))
            if held:
                return held
            time.sleep(0.1)
        return []


def open_store(path: Path, log: str | Path) -> MonitorStore:
    """The monitor's store, following the prediction log: in its PostgreSQL database when LOG is a postgresql://
    URL, else the SQLite file at PATH (the default, unchanged)."""
    return PgMonitorStore(str(log)) if state_pg.is_postgres(str(log)) else MonitorStore(path)


def _alert(row: Any) -> dict[str, Any]:
    out = json.loads(row["payload"])
    out["id"] = row["id"]
    out["created"] = row["created"]
    out["delivery"] = json.loads(row["delivery"]) if row["delivery"] else None
    return out


def _json_default(v: Any) -> Any:
    if hasattr(v, "tolist"):
        return v.tolist()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def shared_alert_records(log: str, model: str) -> list[dict[str, Any]]:
    """As `alert_records`, from the monitor's tables in the database of a PostgreSQL log (where the monitor keeps
    its state when the log is there): what a retrain on any machine answers."""
    store = PgMonitorStore(log)
    try:
        rows = store._rows("SELECT * FROM mlops_monitor_alerts WHERE model = %s ORDER BY id", (model,))
    finally:
        store.close()
    return [_merged(row) for row in rows]


def alert_records(path: Path, model: str) -> list[dict[str, Any]]:
    """Every alert of `model` in the store at `path`, read-only: its payload with the row's own
    columns on top and `ts` the time it was recorded. [] when `path` is not a monitor store (or another shape
    of one): the retraining phase reads whatever it finds in the monitor's directory."""
    try:
        db = _read_only(path)
    except sqlite3.Error:
        return []
    try:
        rows = db.execute("SELECT * FROM alerts WHERE model = ?", (model,)).fetchall()
    except sqlite3.Error:
        return []
    finally:
        db.close()
    return [_merged(dict(row)) for row in rows]


def _merged(record: dict[str, Any]) -> dict[str, Any]:
    """An alert row as the retraining phase reads it: its payload with the row's own columns on top, `ts` the
    time it was recorded."""
    try:
        payload = json.loads(record.pop("payload", None) or "{}")
    except ValueError:
        payload = {}
    merged = (payload if isinstance(payload, dict) else {}) | record
    if record.get("created") is not None:  # the row's own time, not a time inside its payload
        merged["ts"] = record["created"]
    return merged


def last_alert(model: str, rule: str = "drift", state: str | None = "fired",
               home: Path | None = None) -> dict[str, Any] | None:
    """The latest alert record of a rule for a model (`state` None: fired or resolved), or None.

    For the retraining phase: `last_alert("quickstart")["window"]["end"]` is when drift was last confirmed."""
    path = Workspace(home).monitor_store(model) if home else workspace().monitor_store(model)
    if not path.is_file():
        return None
    db = _read_only(path, timeout=5.0)
    try:
        sql = "SELECT * FROM alerts WHERE model = ? AND rule = ?" + (" AND state = ?" if state else "")
        params = (model, rule, state) if state else (model, rule)
        row = db.execute(sql + " ORDER BY id DESC LIMIT 1", params).fetchone()
    finally:
        db.close()
    return None if row is None else _alert(row)


def _read_only(path: Path, timeout: float = 10) -> sqlite3.Connection:
    """A reader never creates the store nor changes it (`MonitorStore` does both)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout)
    db.row_factory = sqlite3.Row
    return db
