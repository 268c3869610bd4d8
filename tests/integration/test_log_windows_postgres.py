"""Windows cut by PostgreSQL (`window_bounds`, fields extracted from jsonb) against the Python path on the same
database and against SQLite's answers for the same rows, on a real server (tests/postgres.py: skipped without
one, failed under CI=true)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlops.core.predlog import LogFilter, LogReader
from mlops.monitor.logstream import count_windows, read_chunks, read_windows, time_windows
from tests.logwindow_fixtures import COLUMNS, generated_feedback, generated_rows, windows_differ, write_log
from tests.postgres import throwaway_url

pytestmark = pytest.mark.integration
N = 1200


@pytest.fixture(scope="module", params=["binary", "regression"])
def logs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """The same rows in PostgreSQL and in SQLite: (postgresql URL, SQLite path, task)."""
    task = request.param
    rows = generated_rows(N, seed=5, task=task)
    feedback = generated_feedback(rows)
    sqlite = str(tmp_path_factory.mktemp("pgwin") / "log.sqlite")
    with throwaway_url("mlops_logwin") as url:
        write_log(url, rows, feedback)
        write_log(sqlite, rows, feedback)
        yield url, sqlite, task


@pytest.mark.parametrize("flt", [LogFilter("toy"), LogFilter("toy", version="2", variants=("challenger",))],
                         ids=["all", "version-variant"])
def test_count_windows_on_postgresql(logs: tuple[str, str, str], flt: LogFilter) -> None:
    url, sqlite, task = logs
    old = list(count_windows(read_chunks(url, flt, COLUMNS, task, 100, chunk_rows=70, in_sql=False), 90))
    new = read_windows(url, flt, COLUMNS, task, 100, size=90, chunk_rows=40)
    windows = list(new)
    assert old and windows_differ(old, windows) == []
    if LogReader.reads_fields:
        here = read_windows(sqlite, flt, COLUMNS, task, 100, size=90)
        assert windows_differ(windows, list(here)) == [] and here.rows == new.rows


def test_time_windows_on_postgresql(logs: tuple[str, str, str]) -> None:
    url, sqlite, task = logs
    flt = LogFilter("toy")
    duration = 900.0
    old = list(time_windows(read_chunks(url, flt, COLUMNS, task, chunk_rows=64, in_sql=False), duration))
    new = list(read_windows(url, flt, COLUMNS, task, duration=duration))
    assert len(old) >= 3 and windows_differ(old, new) == []
    key = new[1].key
    resumed = list(read_windows(url, flt, COLUMNS, task, new[1].end_rowid, duration=duration, after_key=key))
    assert resumed[0].key == key + 1 and windows_differ(new[2:], resumed) != []  # renumbered from 0
    assert [w.rows.rowid.tolist() for w in resumed] == [w.rows.rowid.tolist() for w in new[2:]]
    if LogReader.reads_fields:
        assert windows_differ(new, list(read_windows(Path(sqlite), flt, COLUMNS, task, duration=duration))) == []


def test_a_nul_in_a_string_does_not_stop_the_read(tmp_path: Path) -> None:
    """With the fields extracted in SQL, jsonb refuses the escape \\u0000, which JSON allows (a client may send a
    NUL in a category): that row's value reads as U+FFFD, and the window around it is read."""
    rows = generated_rows(40, seed=2)
    rows[7] = (*rows[7][:5], json.dumps({"age": 30.0, "income": 5, "city": "a\x00b", "plan": "x"}), *rows[7][6:])
    with throwaway_url("mlops_lognul") as url:
        write_log(url, rows, [])
        flt = LogFilter("toy", variants=())
        window = next(iter(read_windows(url, flt, COLUMNS, "binary", size=20, in_sql=True)))
    assert window.rows.ids[7] == "r7" and window.rows.categorical["city"][7] == "a\ufffdb"
    assert window.rows.numeric["age"][7] == 30.0
