"""The prediction log's WAL bound: the frame count read from SQLite's wal-index (mlops.core.predlog.wal_frames)
agrees with SQLite's own, and a log past its bound is rewound (a RESTART checkpoint): the next commit writes
from the file's start, so the file stops growing, and every row stays readable."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from mlops.core.loglimits import LogLimits
from mlops.core.predlog import LogReader, PredictionLog, prediction_rows, wal_frames, wal_path

INPUTS = {f"feature_{i}": 1000.0 + i / 7 for i in range(30)}


def write(log: PredictionLog, first: int, n: int) -> None:
    for k in range(first, first + n):
        log.submit("predictions", prediction_rows([f"p{k}"], "m", "1", "champion", [INPUTS], [{"label": "yes"}],
                                                  0.5)).result(timeout=30)


def test_the_wal_index_frame_count_is_sqlites(tmp_path: Path) -> None:
    path = tmp_path / "plain.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE t (x TEXT)")
    for k in range(50):
        db.execute("INSERT INTO t VALUES (?)", ("x" * 3000 + str(k),))
        db.commit()
    read = wal_frames(path)
    (_, frames, _) = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    (page,) = db.execute("PRAGMA page_size").fetchone()
    db.close()
    assert read == (frames, page + 24) and frames > 50
    assert wal_frames(tmp_path / "none.sqlite") is None  # no -shm file: the caller goes by the WAL's size


def test_a_log_past_its_wal_bound_is_rewound_and_its_file_stops_growing(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    bound = 256 * 1024
    log = PredictionLog(path, limits=LogLimits(wal_max_bytes=bound))
    try:
        write(log, 0, 400)  # several bounds' worth: each commit appends at least a page or two
        db = sqlite3.connect(path)
        log._bound_wal(db, bound)  # what the log thread does every 0.1 s, made now
        db.close()
        assert log.wal_truncations >= 1, (log.wal_truncations, log.wal_truncations_busy)
        size = wal_path(path).stat().st_size
        write(log, 400, 50)  # far less than the bound: written at the file's start again, over the old frames
        frames = wal_frames(path)
        assert frames is not None and frames[0] * frames[1] < size
        assert wal_path(path).stat().st_size == size  # reused, not grown (nor shrunk, until the log closes)
    finally:
        log.close()
    with LogReader(path) as reader:
        assert len(reader.predictions(("champion",), model="m")) == 450
    assert wal_path(path).stat().st_size == 0  # the clean stop truncates it
