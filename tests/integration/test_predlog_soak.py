"""The prediction log under sustained load stays bounded: its WAL and its database file.

A soak writes the way `mlops serve` does (the log's own writers: requests committed on the event loop through
`LoopCommits`, feedback through the log thread) from concurrent clients for a few seconds, while a reader pages
through the log as the monitor does. Passive checkpoints alone never rewind the WAL while writes keep coming:
the control soak, with no bound, shows it growing to many times the bound; the bounded one keeps it near the
bound, moves old rows to Parquet as the database passes its size bound, and reads back every row it wrote."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlops.core import predlog
from mlops.core.predlog import (
    LogFilter,
    LogLimits,
    LogReader,
    LoopCommits,
    PredictionLog,
    feedback_row,
    log_sizes,
    prediction_rows,
)

pytestmark = pytest.mark.integration

WAL_BOUND = 1_000_000
DB_BOUND = 3_000_000
SOAK_S = 6.0
CLIENTS = 8
INPUTS = {"age": 41.0, "city": "Lyon", "note": "x" * 400}  # about 0.5 KB a row, as a small tabular request


@dataclass
class Soak:
    rows: int  # predictions written
    wal_peak: int  # bytes, sampled every few milliseconds
    db_peak: int
    reader_rows: int  # what the monitor-like reader paged through meanwhile
    truncations: tuple[int, int]  # WAL truncations done, and given up (a reader or writer in the way)


def _soak(path: Path, limits: LogLimits | None) -> Soak:
    log = PredictionLog(path, limits=limits)
    writer = LoopCommits(log)
    deadline = time.monotonic() + SOAK_S
    peaks = {"wal": 0, "db": 0}
    seen = [0]

    def sample() -> None:
        while time.monotonic() < deadline:
            sizes = log_sizes(path)
            peaks["wal"], peaks["db"] = max(peaks["wal"], sizes["wal"]), max(peaks["db"], sizes["db"])
            time.sleep(0.005)

    def read() -> None:  # the monitor's keyset pagination: short queries, one after another
        after = 0
        while time.monotonic() < deadline:
            with LogReader(path, archive=False) as reader:
                chunk = reader.chunk(LogFilter("m"), after, 500)
            if chunk:
                after = chunk[-1][0]
                seen[0] += len(chunk)
            time.sleep(0.02)

    async def client(k: int) -> int:
        n = 0
        while time.monotonic() < deadline:
            await writer.write("predictions", prediction_rows([f"c{k}-{n}"], "m", "1", "champion", [INPUTS],
                                                              [{"label": "yes"}], 0.5))
            if n % 50 == 0:  # feedback arrives on the log thread's connection, a second writer
                await asyncio.wrap_future(log.submit("feedback", [feedback_row({"id": f"c{k}-{n}", "label": "no"})]))
            n += 1
            await asyncio.sleep(0.0005)
        return n

    async def clients() -> int:
        return sum(await asyncio.gather(*(client(k) for k in range(CLIENTS))))

    watchers = [threading.Thread(target=sample), threading.Thread(target=read)]
    for t in watchers:
        t.start()
    try:
        written = asyncio.run(clients())
    finally:
        for t in watchers:
            t.join()
        writer.close()
        log.close()
    return Soak(written, peaks["wal"], peaks["db"], seen[0], (log.wal_truncations, log.wal_truncations_busy))


def test_unbounded_wal_grows_without_reset_under_sustained_writes(tmp_path: Path) -> None:
    """The control: what every server did before the bound (passive checkpoints only). Without it the
    bounded soak below would prove nothing."""
    soak = _soak(tmp_path / "log.sqlite", None)

    assert soak.rows > 1000 and soak.reader_rows > 0
    assert soak.wal_peak > 20 * WAL_BOUND, f"the control soak did not grow the WAL ({soak})"


def test_bounded_log_keeps_wal_and_database_near_their_bounds(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(predlog, "RETENTION_EVERY_S", 0.5)  # a few passes within the soak, not one a minute
    path = tmp_path / "log.sqlite"
    soak = _soak(path, LogLimits(wal_max_bytes=WAL_BOUND, max_bytes=DB_BOUND, archive=True))

    assert soak.rows > 1000 and soak.reader_rows > 0
    # the log thread checks every 20 ms (and not while it moves rows out): the WAL passes the bound by what is
    # written meanwhile, a few bound's worth here, where the control grows by a hundred
    assert soak.wal_peak < 8 * WAL_BOUND, soak
    assert soak.truncations[0] > 0, soak
    assert soak.db_peak < 2 * DB_BOUND, soak
    sizes = log_sizes(path)
    assert sizes["archive"] > 0 and sizes["wal"] <= WAL_BOUND  # the clean stop truncates it
    with LogReader(path) as reader:  # every row written is still read: live or archived
        assert len(reader.predictions(("champion",), model="m")) == soak.rows
        assert len(reader.latest_feedback([f"c{k}-0" for k in range(CLIENTS)])) == CLIENTS
