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
import sqlite3
import time
from pathlib import Path
from typing import Any

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
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(SCHEMA)

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


def _alert(row: sqlite3.Row) -> dict[str, Any]:
    out = json.loads(row["payload"])
    out["id"] = row["id"]
    out["created"] = row["created"]
    out["delivery"] = json.loads(row["delivery"]) if row["delivery"] else None
    return out


def _json_default(v: Any) -> Any:
    if hasattr(v, "tolist"):
        return v.tolist()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


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
    out = []
    for row in rows:
        record = dict(row)
        try:
            payload = json.loads(record.pop("payload", None) or "{}")
        except ValueError:
            payload = {}
        merged = (payload if isinstance(payload, dict) else {}) | record
        if record.get("created") is not None:  # the row's own time, not a time inside its payload
            merged["ts"] = record["created"]
        out.append(merged)
    return out


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
