"""The improvement audit log: one JSON object per line, append-only, at `.mlops/improve/audit.jsonl`.

Every decision of the improvement loop lands here with who or what made it (`by`: `policy:auto`, `gates`,
`limits`, `user:alice`, `rollout:shadow`, ...) and the evidence it was made on. Limits (cooldown, retrains per
day) are read back from it, so it is the one place that knows what happened.

Appends are atomic: each record is one `write()` of one line to a file opened with O_APPEND, under an
exclusive `flock` of a lock file beside it, then fsynced. `locked()` holds that lock across a read and an
append, so two retrains triggered at once cannot both pass the cooldown check.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlops.core import state_pg, timespec
from mlops.core.workspace import workspace

# events (the `event` field)
SKIPPED = "retrain_skipped"
STARTED = "retrain_started"
REFRESHED = "data_refreshed"
TRAINED = "trained"
DECISION = "decision"
STAGE = "stage"
PROMOTED = "promoted"
ROLLED_BACK = "rolled_back"
FAILED = "failed"


def default_path() -> Path:
    return workspace().audit_log


def iso(ts: float) -> str:
    """A record's `time`: UTC to the microsecond (the log's format; messages use `timespec.iso`, to the second)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AuditLog:
    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self._depth = 0  # re-entrant within one AuditLog: append() inside locked() must not wait on itself
        self._mutex = threading.RLock()

    @contextmanager
    def locked(self) -> Iterator[AuditLog]:
        """Hold the log's exclusive lock (across processes) for a read-decide-append sequence."""
        with self._mutex:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            with self._hold():
                self._depth = 1
                try:
                    yield self
                finally:
                    self._depth = 0

    @contextmanager
    def _hold(self) -> Iterator[None]:
        """The lock across processes: an exclusive `flock` of the lock file beside the log."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Record one event; `ts` and `time` are added. Returns the record as written."""
        now = fields.pop("ts", None) or time.time()
        record = {"ts": now, "time": iso(now), "event": event} | fields
        line = (json.dumps(record, default=str, sort_keys=False) + "\n").encode()
        with self.locked():
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn line from a crash: end it first
                    line = b"\n" + line
                os.write(fd, line)  # one write of one line: never interleaved with another appender's
                os.fsync(fd)
            finally:
                os.close(fd)
        return record

    def records(self, model: str | None = None) -> list[dict[str, Any]]:
        """Every record (of one model), oldest first. A torn last line (a crash mid-write) is skipped."""
        if not self.path.is_file():
            return []
        out = []
        with open(self.path, encoding="utf-8") as f:
            for text in f:
                if not text.endswith("\n"):
                    break
                try:
                    record = json.loads(text)
                except ValueError:
                    continue
                if isinstance(record, dict) and (model is None or record.get("model") == model):
                    out.append(record)
        return out

    def history(self, run_id: str) -> list[dict[str, Any]]:
        """Every record about one retrain's training run."""
        return [r for r in self.records() if r.get("run_id") == run_id]


def brief(record: dict[str, Any]) -> str:
    """A record in a few words: the model version, what happened and when."""
    what = str(record.get("event")) + (f" ({record['decision']})" if record.get("decision") else "")
    return f"{record.get('model')}/{record.get('version') or '-'}  {what}  {record.get('time')}"


def limit_refusal(records: list[dict[str, Any]], cooldown_minutes: float, max_per_day: int,
                  now: float) -> str | None:
    """Why a new retrain may not start now (cooldown, or too many in 24 hours), or None when it may."""
    started = sorted(float(r["ts"]) for r in records if r.get("event") == STARTED)
    if started and now - started[-1] < cooldown_minutes * 60:
        last = started[-1]
        return (f"cooldown: the last retrain started at {timespec.iso(last)}, {(now - last) / 60:.0f} min ago; "
                f"the next may start after {timespec.iso(last + cooldown_minutes * 60)} "
                f"(improve.limits.cooldown_minutes={cooldown_minutes:g})")
    in_day = [t for t in started if now - t < 86400]
    if len(in_day) >= max_per_day:
        return (f"limit: {len(in_day)} retrains started in the last 24 hours (improve.limits.max_per_day="
                f"{max_per_day}); the next may start after {timespec.iso(in_day[-max_per_day] + 86400)}")
    return None


_AUDIT_PRESENT = "SELECT to_regclass('mlops_audit') IS NOT NULL"
_AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS mlops_audit (
    seq BIGSERIAL PRIMARY KEY,
    ts DOUBLE PRECISION NOT NULL,
    model TEXT,
    run_id TEXT,
    record JSONB NOT NULL
);
CREATE INDEX IF NOT EXISTS mlops_audit_model ON mlops_audit (model, seq);
"""


class PgAuditLog(AuditLog):
    """The audit log in the prediction log's PostgreSQL database (table `mlops_audit`): same records, same
    interface; `locked()` is a transaction holding an advisory lock, so two retrains triggered at once (on any
    host) cannot both pass the cooldown check."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = Path(state_pg.redacted(url))  # for messages only
        self._db: Any = None
        self._depth = 0
        self._mutex = threading.RLock()

    def _conn(self) -> Any:
        if self._db is None or self._db.closed:
            self._db = state_pg.connect(self.url)
            state_pg.ensure_schema(self._db, _AUDIT_PRESENT, _AUDIT_SCHEMA)
        return self._db

    @contextmanager
    def _hold(self) -> Iterator[None]:
        """The lock across hosts: a transaction holding the audit's advisory lock."""
        with state_pg.xact_lock(self._conn(), _AUDIT_KEY):
            yield

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        now = fields.pop("ts", None) or time.time()
        record = {"ts": now, "time": iso(now), "event": event} | fields
        payload = json.dumps(record, default=str)
        with self.locked(), self._db.cursor() as cur:
            cur.execute("INSERT INTO mlops_audit (ts, model, run_id, record) VALUES (%s, %s, %s, %s)",
                        (now, record.get("model"), record.get("run_id"), payload))
        return json.loads(payload)

    def records(self, model: str | None = None) -> list[dict[str, Any]]:
        db = self._conn()
        with db.cursor() as cur:
            if model is None:
                cur.execute("SELECT record::text FROM mlops_audit ORDER BY seq")
            else:
                cur.execute("SELECT record::text FROM mlops_audit WHERE model = %s ORDER BY seq", (model,))
            rows = cur.fetchall()
        if not self._depth:
            db.commit()  # end the read's transaction: no idle-in-transaction connection
        return [json.loads(r[0]) for r in rows]


_AUDIT_KEY = state_pg.advisory_key("mlops", "audit")


def open_audit(log: str | None = None) -> AuditLog:
    """The audit log that follows the prediction log: in its PostgreSQL database when LOG is a postgresql:// URL,
    else the local JSONL file (the default, unchanged)."""
    return PgAuditLog(log) if state_pg.is_postgres(log) else AuditLog()
