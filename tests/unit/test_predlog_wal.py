"""The prediction log's WAL bound: a log past its bound is rewound (a RESTART checkpoint): the next commit writes
from the file's start, so the file stops growing, and every row stays readable; readers in other processes opening
the log all the while do not upset the writing one (a bound read from SQLite's `-shm` file did: closing a
descriptor of that file dropped SQLite's locks on it, another process reset the wal-index, SIGBUS)."""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mlops.core import predlog
from mlops.core.loglimits import LogLimits
from mlops.core.predlog import LogReader, LoopCommits, PredictionLog, prediction_rows, wal_path
from tests.polling import until

INPUTS = {f"feature_{i}": 1000.0 + i / 7 for i in range(30)}


def write(log: PredictionLog, first: int, n: int) -> None:
    for k in range(first, first + n):
        log.submit("predictions", prediction_rows([f"p{k}"], "m", "1", "champion", [INPUTS], [{"label": "yes"}],
                                                  0.5)).result(timeout=30)


def test_a_log_past_its_wal_bound_is_rewound_and_its_file_stops_growing(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    bound = 256 * 1024
    log = PredictionLog(path, limits=LogLimits(wal_max_bytes=bound))
    try:
        write(log, 0, 400)  # several bounds' worth: each commit appends at least a page or two
        db = sqlite3.connect(path)
        log._checkpoint(db)  # what the log thread does every CHECKPOINT_EVERY_S while writes come, made now
        db.close()
        assert log.wal_truncations >= 1, (log.wal_truncations, log.wal_truncations_busy)
        size = wal_path(path).stat().st_size
        write(log, 400, 50)  # far less than the bound: written at the file's start again, over the old frames
        with sqlite3.connect(path) as check:
            (_, frames, _) = check.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            (page,) = check.execute("PRAGMA page_size").fetchone()
        assert 0 < frames * (page + 24) < size
        assert wal_path(path).stat().st_size == size  # reused, not grown (nor shrunk, until the log closes)
    finally:
        log.close()
    with LogReader(path) as reader:
        assert len(reader.predictions(("champion",), model="m")) == 450
    assert wal_path(path).stat().st_size == 0  # the clean stop truncates it


class _RecordingQueue(queue.Queue):  # type: ignore[type-arg]
    """The log thread's queue, noting how long each of its waits may last."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[float | None] = []

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        self.timeouts.append(timeout)
        return super().get(block, timeout)


@pytest.mark.parametrize("bound", [None, 64 * 1024 * 1024])
@pytest.mark.parametrize("through", ["the loop", "the log thread"])
def test_writes_are_checkpointed_as_they_come_and_an_idle_log_thread_rests(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bound: int | None, through: str) -> None:
    # a rest longer than the test: a checkpoint that waited for the rest to end would never come
    monkeypatch.setattr(predlog, "REST_S", 600.0)
    monkeypatch.setattr(predlog, "queue", SimpleNamespace(Queue=_RecordingQueue, Empty=queue.Empty))
    path = tmp_path / "log.sqlite"
    log = PredictionLog(path, limits=LogLimits(wal_max_bytes=bound))
    waits = log._queue.timeouts  # type: ignore[attr-defined]
    commits = LoopCommits(log)
    try:
        until(lambda: bool(waits) and waits[-1] == 600.0, "nothing was written, yet the log thread kept waking to checkpoint",
              20, interval=0.01)
        empty = path.stat().st_size
        rows = [prediction_rows([f"p{k}-{j}" for j in range(50)], "m", "1", "champion", [INPUTS] * 50,
                                [{"label": "yes"}] * 50, 0.5) for k in range(20)]
        if through == "the loop":
            async def serve() -> None:  # as the app does: rows written and committed on the event loop
                for r in rows:
                    await commits.write("predictions", r)

            asyncio.run(serve())
        else:  # as the shadow runner and feedback do
            for r in rows:
                log.submit("predictions", r).result(timeout=30)
        # only a checkpoint copies the WAL's pages into the database file
        until(lambda: path.stat().st_size > empty, "the writes stayed in the WAL: no checkpoint came",
              20, interval=0.01)
        until(lambda: bool(waits) and waits[-1] == 600.0, "the log thread did not rest again once the writes stopped",
              20, interval=0.01)
    finally:
        commits.close()
        log.close()
    with LogReader(path) as reader:
        assert len(reader.predictions(("champion",), model="m")) == 1000


def test_a_checkpoint_a_reader_held_back_is_tried_again_until_it_is_done(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(predlog, "REST_S", 600.0)
    monkeypatch.setattr(predlog, "queue", SimpleNamespace(Queue=_RecordingQueue, Empty=queue.Empty))
    path = tmp_path / "log.sqlite"
    log = PredictionLog(path)
    waits = log._queue.timeouts  # type: ignore[attr-defined]
    try:
        write(log, 0, 1)
        until(lambda: bool(waits) and waits[-1] == 600.0, "the log thread did not rest after its first write",
              20, interval=0.01)
        reader = sqlite3.connect(path)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM predictions").fetchone()  # a snapshot: later frames stay in the WAL
        size = path.stat().st_size
        write(log, 1, 200)
        ticks = len(waits)
        until(lambda: len(waits) > ticks + 5, "the log thread rested with frames it could not copy yet",
              20, interval=0.01)
        assert path.stat().st_size == size and waits[-1] != 600.0
        reader.rollback()  # the reader lets go: the next try copies them, without another write
        reader.close()
        until(lambda: path.stat().st_size > size, "the frames a reader held back were never copied",
              20, interval=0.01)
    finally:
        log.close()


def test_a_commit_made_during_a_checkpoint_gets_one_of_its_own(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(predlog, "REST_S", 600.0)  # a checkpoint that waited for the rest would never come
    calls: list[int] = []
    checkpoint = PredictionLog._checkpoint

    def with_a_commit_meanwhile(self: PredictionLog, db: sqlite3.Connection) -> bool:
        calls.append(1)
        done = checkpoint(self, db)
        if len(calls) == 1:
            self.note_commit()  # as the loop's commit does while the checkpoint runs: the thread is not resting
        return done

    monkeypatch.setattr(PredictionLog, "_checkpoint", with_a_commit_meanwhile)
    log = PredictionLog(tmp_path / "log.sqlite")
    try:
        write(log, 0, 1)
        until(lambda: len(calls) >= 2, "the commit made during the checkpoint was left for the next write",
              20, interval=0.01)
    finally:
        log.close()


WRITER = textwrap.dedent("""
    import sys
    ROWS = int(sys.argv[2])
    from mlops.core.loglimits import LogLimits
    from mlops.core.predlog import PredictionLog, prediction_rows
    log = PredictionLog(sys.argv[1], limits=LogLimits(wal_max_bytes=64 * 1024))
    print("ready", flush=True)
    inputs = {f"feature_{i}": 1000.0 + i / 7 for i in range(30)}
    for k in range(ROWS):
        log.submit("predictions", prediction_rows([f"p{k}"], "m", "1", "champion", [inputs], [{"label": "yes"}],
                                                  0.5)).result(timeout=30)
    print(log.wal_truncations, log.wal_truncations_busy)
    log.close()
""")


def test_readers_in_other_processes_while_the_wal_is_rewound(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "20000"], stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
    reads = 0
    while writer.poll() is None:
        with LogReader(path) as reader:  # a fresh connection each time: it maps the wal-index anew
            reader.predictions(("champion",), model="m")
        reads += 1
    out = writer.stdout.read()
    assert writer.returncode == 0, writer.returncode  # -7 was the SIGBUS
    done, busy = map(int, out.split())
    assert done + busy >= 3 and reads > 10, (out, reads)
    with LogReader(path) as reader:
        assert len(reader.predictions(("champion",), model="m")) == 20000
