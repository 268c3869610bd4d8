"""The prediction log: every prediction and every piece of feedback, durably, in SQLite (WAL).

Writes happen on one background thread that commits in groups. A request hands its record over and
waits for the commit of the group it landed in before its response goes out, so a 200 always means
"logged": after `kill -9` every id that got a 200 is in the log. Group commit keeps that cheap: many
concurrent requests share one commit. `synchronous=NORMAL` survives a process crash; set
`MLOPS_LOG_SYNC=FULL` to survive power loss too (one fsync per group).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

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
        db.execute(f"PRAGMA synchronous={os.environ.get('MLOPS_LOG_SYNC', 'NORMAL')}")
        stopping = False
        while not stopping:
            first = self._queue.get()
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


_INSERT = {
    "predictions": "INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "feedback": "INSERT INTO feedback VALUES (?, ?, ?, ?, ?)",
}


def prediction_rows(ids: list[str], model: str, version: str | None, variant: str, inputs: list[dict[str, Any]],
                    outputs: list[dict[str, Any]], latency_ms: float) -> list[tuple[Any, ...]]:
    now = time.time()
    return [(i, now, model, version, variant, json.dumps(inp), json.dumps(out), latency_ms)
            for i, inp, out in zip(ids, inputs, outputs, strict=True)]


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute("SELECT * FROM predictions ORDER BY ts")]
    db.close()
    return rows
