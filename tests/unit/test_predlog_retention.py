"""The prediction log's retention: rows past `max_age`, or the oldest while the database passes `max_bytes`,
leave SQLite for Parquet files beside it (or are deleted), and every reader of the log (the monitor's stream,
error analysis and refresh's join, the rollout's checks) still reads the archived rows with the live ones."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from mlops.core.predlog import (
    RETENTION_LOW,
    LogFilter,
    LogLimits,
    LogReader,
    PredictionLog,
    apply_retention,
    feedback_row,
    log_sizes,
)
from mlops.core.workspace import Workspace
from mlops.improve.feedback import read_joined
from mlops.monitor.logstream import read_chunks
from mlops.recipe.monitor import MonitorConfig
from mlops.serve.metrics import ServeMetrics

DAY = 86_400.0
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
COLUMNS = {"age": "numeric", "city": "categorical"}


def _row(i: int, ts: float) -> tuple:
    return (f"r{i}", ts, "toy", "1", "champion", json.dumps({"age": float(i), "city": "abc"[i % 3]}),
            json.dumps({"label": "yes", "probabilities": [0.2, 0.8]}), 1.0)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """100 predictions 40 days old, then 20 of today; feedback for an old one and a new one."""
    path = tmp_path / "toy.sqlite"
    writer = PredictionLog(path)
    try:
        writer.submit("predictions", [_row(i, NOW - 40 * DAY + i) for i in range(100)]
                      + [_row(100 + i, NOW - 60 + i) for i in range(20)]).result(timeout=30)
        writer.submit("feedback", [feedback_row({"id": "r3", "label": "no"}, NOW - 39 * DAY),
                                   feedback_row({"id": "r110", "label": "no"}, NOW - 10)]).result(timeout=30)
    finally:
        writer.close()
    return path


def _retain(path: Path, limits: LogLimits) -> dict[str, int]:
    db = sqlite3.connect(path)
    try:
        return apply_retention(db, path, limits, now=NOW)
    finally:
        db.close()


def _live_ids(path: Path, table: str = "predictions") -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [r[0] for r in db.execute(f"SELECT id FROM {table} ORDER BY rowid")]
    finally:
        db.close()


def test_rows_past_max_age_move_to_parquet_and_every_reader_still_reads_them(log: Path) -> None:
    moved = _retain(log, LogLimits(max_age_s=30 * DAY))

    assert moved == {"predictions": 100, "feedback": 1}
    assert _live_ids(log) == [f"r{100 + i}" for i in range(20)] and _live_ids(log, "feedback") == ["r110"]
    archive = Workspace.prediction_archive(log)
    assert sorted(f.name.split("-")[0] for f in archive.glob("*.parquet")) == ["feedback", "predictions"]
    assert log_sizes(log)["archive"] > 0
    # the monitor's stream: every row in log order, the archived one with its ground truth
    chunks = list(read_chunks(log, LogFilter("toy"), COLUMNS, "binary", chunk_rows=7))
    rowids = [int(r) for c in chunks for r in c.rowid]
    assert rowids == list(range(1, 121))
    truth = {i: t for c in chunks for i, t in zip(c.ids, c.truth_label, strict=True) if t is not None}
    assert truth == {"r3": "no", "r110": "no"}
    # error analysis and refresh: the same rows, joined
    joined = read_joined(log, "toy")
    assert len(joined) == 120 and {j.id: j.truth for j in joined if j.truth is not None} == truth
    with LogReader(log, archive=False) as live:  # the server's feedback look-up reads the live rows only
        assert live.known_ids(["r3", "r110"]) == {"r110"}


def test_a_row_both_archived_and_live_counts_once(log: Path) -> None:
    """A crash between writing an archive file and deleting its rows leaves them in both places."""
    _retain(log, LogLimits(max_age_s=30 * DAY))
    archive = Workspace.prediction_archive(log)
    kept = log.with_name("kept.sqlite")
    shutil.copy(log, kept)  # the live rows as they were before a second retention pass...
    _retain(log, LogLimits(max_age_s=30))  # ...which archives all but the newest of today's rows too
    shutil.copy(kept, log)  # and "crashes" before its delete: those rows are live again, and archived

    with LogReader(log) as reader:
        rows = reader.predictions(("champion",), model="toy")
    assert len(list(archive.glob("predictions-*.parquet"))) == 2
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(120)]


def test_delete_drops_old_rows_without_an_archive(log: Path) -> None:
    moved = _retain(log, LogLimits(max_age_s=30 * DAY, archive=False))

    assert moved == {"predictions": 100, "feedback": 1}
    assert not Workspace.prediction_archive(log).exists()
    with LogReader(log) as reader:
        assert [r["id"] for r in reader.predictions(("champion",))] == [f"r{100 + i}" for i in range(20)]


def test_the_size_bound_moves_the_oldest_rows_and_keeps_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "toy.sqlite"
    writer = PredictionLog(path)
    try:
        writer.submit("predictions", [_row(i, NOW + i) for i in range(3000)]).result(timeout=30)
    finally:
        writer.close()
    db = sqlite3.connect(path)
    used = db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    max_bytes = used // 2

    moved = _retain(path, LogLimits(max_bytes=max_bytes))  # no age limit: only the size bound moves rows

    live = _live_ids(path)
    assert moved["predictions"] == 3000 - len(live) and live[-1] == "r2999"
    assert live == [f"r{i}" for i in range(3000 - len(live), 3000)]  # the oldest went
    db = sqlite3.connect(path)
    pages, free, size = (db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count",
                                                                             "page_size"))
    db.close()
    assert (pages - free) * size <= RETENTION_LOW * max_bytes
    with LogReader(path) as reader:
        assert len(reader.predictions(("champion",))) == 3000


def test_retention_keeps_the_newest_row_so_rowids_are_never_reused(log: Path) -> None:
    _retain(log, LogLimits(max_age_s=1.0))  # every row is older than that

    assert _live_ids(log) == ["r119"] and _live_ids(log, "feedback") == ["r110"]


def test_metrics_export_the_log_size_by_part(log: Path) -> None:
    _retain(log, LogLimits(max_age_s=30 * DAY))
    writer = PredictionLog(log)
    metrics = ServeMetrics()
    metrics.watch_log("toy", writer)
    try:
        text = metrics.render()[0].decode()
        sizes = log_sizes(log)
    finally:
        writer.close()

    assert sizes["archive"] > 0
    for part in ("db", "wal", "archive"):
        assert f'mlops_prediction_log_bytes{{model="toy",part="{part}"}} {float(sizes[part])}' in text
    assert 'mlops_prediction_log_wal_truncations_total{model="toy",outcome="done"} 0.0' in text


def test_the_recipe_declares_the_limits_the_log_follows() -> None:
    cfg = MonitorConfig.model_validate({"log_limits": {"wal_max_bytes": "16MiB", "retention": {
        "max_age": "7d", "max_bytes": "2GB", "archive": "delete"}}})

    assert cfg.log_limits.limits() == LogLimits(wal_max_bytes=16 * 2**20, max_age_s=7 * DAY, max_bytes=2 * 10**9,
                                                archive=False)
    assert MonitorConfig().log_limits.limits() == LogLimits(wal_max_bytes=64 * 10**6, max_age_s=30 * DAY,
                                                            max_bytes=5 * 10**9, archive=True)


def _steps_of_a_pass_moving_nothing(path: Path, rows: int) -> int:
    """SQLite VM steps (progress-handler calls, one per 100 instructions) of a retention pass over a log of
    `rows` recent predictions and one feedback item, none due."""
    writer = PredictionLog(path)
    try:
        writer.submit("predictions", [_row(i, NOW - 3600 + i * 0.01) for i in range(rows)]).result(timeout=60)
        writer.submit("feedback", [feedback_row({"id": "r1", "label": "no"}, NOW - 10)]).result(timeout=30)
    finally:
        writer.close()
    db = sqlite3.connect(path)
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    db.set_progress_handler(count, 100)
    try:
        moved = apply_retention(db, path, LogLimits(max_age_s=30 * DAY, max_bytes=5 * 10**9), now=NOW)
    finally:
        db.close()
    assert moved == {"predictions": 0, "feedback": 0}
    return steps[0]


def test_a_pass_with_nothing_to_move_reads_no_more_of_a_larger_log(tmp_path: Path) -> None:
    # it runs every minute on the server's log thread: reading the oldest file's worth of rows to look at their
    # times (as it once did) stalled the served requests of a busy log each time
    small = _steps_of_a_pass_moving_nothing(tmp_path / "small.sqlite", 500)
    large = _steps_of_a_pass_moving_nothing(tmp_path / "large.sqlite", 20_000)
    assert large <= small + 5, (small, large)


def test_rows_another_pass_moved_in_between_are_not_moved_again(log: Path) -> None:
    # two processes applying retention to one file: the other one's pass commits between this pass's finding
    # the rows due and reading them, which then returns fewer rows than it found
    other = sqlite3.connect(log)
    db = sqlite3.connect(log)
    raced = []

    class Racing:
        def __getattr__(self, name: str) -> object:
            return getattr(db, name)

        def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
            if sql.startswith("SELECT rowid, id") and not raced:  # the rows' full read: the other pass came first
                raced.append(sql)
                other.execute("DELETE FROM predictions WHERE rowid <= 30")
                other.commit()
            return db.execute(sql, *args)

    try:
        moved = apply_retention(Racing(), log, LogLimits(max_age_s=30 * DAY, archive=False),  # type: ignore[arg-type]
                                now=NOW)
    finally:
        db.close()
        other.close()
    assert raced and moved["predictions"] == 70  # the 100 old rows, less the 30 the other pass took
    with sqlite3.connect(log) as check:
        assert check.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 20


def test_an_archive_file_is_written_a_chunk_at_a_time_with_its_columns_types(log: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq

    import mlops.core.predlog as predlog

    before = sqlite3.connect(log)
    rows = before.execute("SELECT rowid, * FROM predictions WHERE rowid <= 100 ORDER BY rowid").fetchall()
    before.close()
    monkeypatch.setattr(predlog, "ARCHIVE_CHUNK_ROWS", 7)  # 100 rows: 15 conversions, one file
    assert _retain(log, LogLimits(max_age_s=30 * DAY)) == {"predictions": 100, "feedback": 1}
    archive = Workspace.prediction_archive(log)
    (file,) = archive.glob("predictions-*.parquet")
    data = pq.read_table(file)
    assert [tuple(r.values()) for r in data.to_pylist()] == rows  # every row, in order, as SQLite held it
    assert {f.name: str(f.type) for f in data.schema} == {
        "rowid": "int64", "id": "string", "ts": "double", "model": "string", "version": "string",
        "variant": "string", "inputs": "string", "outputs": "string", "latency_ms": "double"}
    # a column whose values are all missing keeps its type (inferred, it was Arrow's null type)
    (feedback,) = archive.glob("feedback-*.parquet")
    assert str(pq.read_schema(feedback).field("value").type) == "double"
