"""Windows cut by the database (`read_windows`: `window_bounds` and fields extracted by SQLite's JSON functions)
against the Python path (every row's JSON parsed, windows cut by `count_windows`/`time_windows`): the same
windows, rows and values, type errors and unknown columns included, on a generated log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlops.core.predlog import LogFilter, LogReader
from mlops.monitor.logstream import (
    LATE_GRACE_S,
    Rows,
    count_windows,
    read_chunks,
    read_windows,
    time_windows,
)
from tests.logwindow_fixtures import (
    COLUMNS,
    generated_feedback,
    generated_rows,
    rows_differ,
    windows_differ,
    write_log,
)

pytestmark = pytest.mark.skipif(not LogReader.reads_fields, reason="SQLite before 3.38 has no -> operator")
N = 1500


@pytest.fixture(scope="module", params=["binary", "regression"])
def log(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[tuple]]:
    task = request.param
    path = tmp_path_factory.mktemp("sqlwin") / "log.sqlite"
    rows = generated_rows(N, seed=3, task=task)
    write_log(path, rows, generated_feedback(rows))
    return path, task, rows


FILTERS = [LogFilter("toy"), LogFilter("toy", version="1"), LogFilter("toy", variants=("champion",)),
           LogFilter("toy", since=1_767_225_600.0 + 2000, until=1_767_225_600.0 + 8000)]


@pytest.mark.parametrize("flt", FILTERS, ids=["all", "version", "variant", "since-until"])
@pytest.mark.parametrize(("size", "after"), [(100, 0), (37, 0), (150, 611)])
def test_count_windows_are_the_python_paths(log: tuple[Path, str, list[tuple]], flt: LogFilter, size: int,
                                            after: int) -> None:
    path, task, _ = log
    old = list(count_windows(read_chunks(path, flt, COLUMNS, task, after, chunk_rows=64, in_sql=False), size))
    new = read_windows(path, flt, COLUMNS, task, after, size=size, chunk_rows=45)
    windows = list(new)
    assert old  # something to compare
    assert windows_differ(old, windows) == []
    # every row after the cursor is counted, those waiting for the next window too
    total = sum(len(c) for c in read_chunks(path, flt, COLUMNS, task, after, in_sql=False))
    assert new.rows == total and total - len(old) * size < size


@pytest.mark.parametrize("flt", FILTERS[:2], ids=["all", "version"])
@pytest.mark.parametrize(("duration", "after", "key_offset"), [(600.0, 0, None), (1800.0, 0, None),
                                                               (600.0, 400, 3)])
def test_time_windows_are_the_python_paths(log: tuple[Path, str, list[tuple]], flt: LogFilter, duration: float,
                                           after: int, key_offset: int | None) -> None:
    path, task, rows = log
    last_ts = max(r[1] for r in rows)
    after_key = None if key_offset is None else int(rows[0][1] // duration) + key_offset
    # now: the last window still open, then closed
    for now in (last_ts + 1.0, (last_ts // duration + 1) * duration + LATE_GRACE_S):
        old = list(time_windows(read_chunks(path, flt, COLUMNS, task, after, chunk_rows=50, in_sql=False), duration,
                                after_key, now=now))
        new = list(read_windows(path, flt, COLUMNS, task, after, duration=duration, after_key=after_key, now=now,
                                chunk_rows=33))
        assert len(old) >= 3
        assert windows_differ(old, new) == []
    # late rows (every 37th is logged 400 s early) joined the window being filled instead of reopening one
    assert any(bool((w.rows.ts < w.start_ts).any()) for w in new)


def test_extracted_fields_hold_every_problem_the_python_path_sees(log: tuple[Path, str, list[tuple]]) -> None:
    path, task, _ = log
    old = Rows.concat(list(read_chunks(path, LogFilter("toy"), COLUMNS, task, in_sql=False)))
    new = Rows.concat(list(read_chunks(path, LogFilter("toy"), COLUMNS, task, chunk_rows=128)))
    assert rows_differ(old, new) == []
    # the generated log has what the comparison must cover: type errors, unknown columns, truth, embeddings
    assert {"age", "city"} <= set(new.bad_values) and {"extra", "other"} <= set(new.unknown)
    assert sum(v is not None for v in new.bad_values["age"]) > 10
    assert new.embedding is not None and np.isfinite(new.embedding).all(axis=1).sum() > 10
    assert (new.truth_label != None).sum() > 100  # noqa: E711 - an object array, compared per element
    if task == "regression":
        assert new.prediction is not None and np.isfinite(new.prediction).all()
    else:
        assert new.proba is not None and "1" in set(new.label.tolist())  # a label logged as a number


@pytest.mark.parametrize("in_sql", [True, False], ids=["fields in SQL", "rows parsed in Python"])
def test_a_window_is_read_without_the_rows_after_it(log: tuple[Path, str, list[tuple]],
                                                    monkeypatch: pytest.MonkeyPatch, in_sql: bool) -> None:
    """Memory follows the window: no query asks for more rows than the window (or a chunk of it) holds."""
    path, task, _ = log
    asked: list[int] = []
    method = "chunk_fields" if in_sql else "chunk"
    read = getattr(LogReader, method)

    def spy(self: LogReader, flt: LogFilter, after: int, limit: int, *args: object, **kw: object) -> list[tuple]:
        asked.append(limit)
        return read(self, flt, after, limit, *args, **kw)  # type: ignore[no-any-return]

    monkeypatch.setattr(LogReader, method, spy)
    windows = list(read_windows(path, LogFilter("toy"), COLUMNS, task, size=120, chunk_rows=50, in_sql=in_sql))
    assert len(windows) >= 5 and max(asked) == 50 and sum(asked) == 120 * len(windows)
