"""Reading the prediction log as windows (streamed in chunks), joining ground truth, and what one window's
rows yield: schema problems, live quality, operational metrics. The log is written by the serving code's
own `PredictionLog`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlops.core.predlog import LogFilter, PredictionLog, Traffic, feedback_row, prediction_rows
from mlops.core.predlog_store import open_reader
from mlops.monitor.logstream import Rows, count_windows, read_chunks, time_windows
from mlops.monitor.operations import error_rate, operational
from mlops.monitor.quality import live_quality
from mlops.monitor.run import filter_miss_note
from mlops.monitor.schema_checks import check_schema
from mlops.package.bundle import read_bundle
from mlops.recipe.monitor import SchemaChecksConfig
from tests.serve_fixtures import build_bundle

COLUMNS = {"age": "numeric", "income": "numeric", "city": "categorical"}
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def _write(path: Path, rows: list[tuple], table: str = "predictions") -> None:
    log = PredictionLog(path)
    try:
        log.submit(table, rows).result(timeout=30)
    finally:
        log.close()


def _row(i: int, ts: float, inputs: dict, label: str = "yes", p: float = 0.8, latency: float = 1.0,
         variant: str = "champion", version: str | None = "1", model: str = "toy") -> tuple:
    out = {"label": label, "probabilities": [1 - p, p]}
    return (f"r{i}", ts, model, version, variant, json.dumps(inputs), json.dumps(out), latency)


def _inputs(i: int) -> dict:
    return {"age": 30.0 + i % 20, "income": 50.0 + (i % 7), "city": "abc"[i % 3]}


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "log.sqlite"
    _write(path, [_row(i, T0 + i, _inputs(i)) for i in range(103)])
    return path


def test_count_windows_do_not_depend_on_the_chunk_size(log: Path) -> None:
    def windows(chunk_rows: int) -> list[list[int]]:
        chunks = read_chunks(log, LogFilter("toy"), COLUMNS, "binary", chunk_rows=chunk_rows)
        return [w.rows.rowid.tolist() for w in count_windows(chunks, 25)]

    small, large = windows(7), windows(10_000)
    assert small == large
    assert len(large) == 4 and [len(w) for w in large] == [25] * 4  # the last 3 rows wait for a full window
    assert large[0][0] == 1 and large[-1][-1] == 100


def test_reading_resumes_after_a_rowid(log: Path) -> None:
    chunks = read_chunks(log, LogFilter("toy"), COLUMNS, "binary", after_rowid=50, chunk_rows=9)
    rowids = np.concatenate([c.rowid for c in chunks])
    assert rowids[0] == 51 and rowids[-1] == 103 and len(rowids) == 53


def test_time_windows_are_aligned_and_the_open_one_waits(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    ts = [T0 + 10, T0 + 3500, T0 + 3700, T0 + 3590, T0 + 7300, T0 + 7400]  # the 4th is a late write
    _write(path, [_row(i, t, _inputs(i)) for i, t in enumerate(ts)])

    def windows(now: float, after_key: int | None = None) -> list[tuple[float, list[str]]]:
        chunks = read_chunks(path, LogFilter("toy"), COLUMNS, "binary", chunk_rows=2)
        return [(w.start_ts, w.rows.ids.tolist()) for w in time_windows(chunks, 3600.0, after_key, now=now)]

    assert windows(now=T0 + 7500) == [(T0, ["r0", "r1"]), (T0 + 3600, ["r2", "r3"])]
    assert windows(now=T0 + 3 * 3600 + 60)[-1] == (T0 + 7200, ["r4", "r5"])
    key = int(T0 // 3600)
    # after the first hour was judged, nothing reopens it
    assert windows(now=T0 + 7500, after_key=key)[0][0] == T0 + 3600


def test_only_the_models_traffic_is_read(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    _write(path, [_row(0, T0, _inputs(0)), _row(1, T0 + 1, _inputs(1), variant="shadow"),
                  _row(2, T0 + 2, _inputs(2), version="2"), _row(3, T0 + 3, _inputs(3), model="other"),
                  _row(4, T0 + 4, _inputs(4), variant="challenger")])
    rows = Rows.concat(list(read_chunks(path, LogFilter("toy", version="1"), COLUMNS, "binary")))
    assert rows.ids.tolist() == ["r0", "r4"]
    since = Rows.concat(list(read_chunks(path, LogFilter("toy", since=T0 + 2), COLUMNS, "binary")))
    assert since.ids.tolist() == ["r2", "r4"]


def test_ground_truth_is_joined_by_id_and_the_latest_wins(log: Path) -> None:
    _write(log, [feedback_row({"id": "r1", "label": "no"}), feedback_row({"id": "r2", "label": "yes"}),
                 feedback_row({"id": "r1", "label": "yes"}), feedback_row({"id": "zzz", "label": "no"})], "feedback")
    rows = next(iter(read_chunks(log, LogFilter("toy"), COLUMNS, "binary", chunk_rows=5)))
    assert rows.truth_label.tolist() == [None, "yes", "yes", None, None]


def test_type_errors_unknown_columns_and_schema_problems(tmp_path: Path) -> None:
    bundle = build_bundle(tmp_path / "bundle")
    schema = read_bundle(bundle).data_schema
    age, city = schema.column("age"), schema.column("city")
    path = tmp_path / "log.sqlite"
    rows = [_row(i, T0 + i, {"age": age.mean, "income": 50.0, "city": "a"}) for i in range(80)]
    rows += [_row(80, T0, {"age": "forty", "income": 50.0, "city": "a"}),  # type error
             _row(81, T0, {"age": 40.0, "income": 50.0, "city": 3}),  # type error (kept as "3": unseen too)
             _row(82, T0, {"age": age.max + 0.5 * (age.max - age.min), "income": 50.0, "city": "a"}),  # out of range
             _row(83, T0, {"age": age.max + 0.01 * (age.max - age.min), "income": 50.0, "city": "a"}),  # in margin
             _row(84, T0, {"age": 40.0, "income": 50.0, "city": "zz", "extra": 1})]  # new category, unknown column
    rows += [_row(85 + i, T0, {"age": None, "income": 50.0, "city": None}) for i in range(15)]  # missing
    _write(path, rows)
    window = Rows.concat(list(read_chunks(path, LogFilter("toy"), COLUMNS, "binary", chunk_rows=33)))
    assert np.isnan(window.numeric["age"][80]) and window.categorical["city"][81] == "3"

    report = check_schema(window, schema, SchemaChecksConfig(range_margin=0.05, max_missing_increase=0.1))
    problems = {(p["column"], p["problem"]): p for p in report["problems"]}
    assert problems[("age", "type_error")]["examples"] == ["forty"]
    assert problems[("city", "type_error")]["examples"] == [3]
    assert problems[("age", "out_of_range")]["rows"] == 1
    assert problems[("city", "new_category")]["examples"] == ["zz"] and problems[("city", "new_category")]["rows"] == 1
    assert problems[("extra", "unknown_column")]["rows"] == 1
    assert report["violating_rows"] == 4 and report["violation_rate"] == pytest.approx(4 / 100)  # rows 80, 81, 82, 84
    missing = {m["column"]: m for m in report["missing"]["columns"]}
    assert set(missing) == {"age", "city"} and missing["city"]["rate"] == pytest.approx(0.15)
    assert city.missing_rate == 0.0


def test_live_quality_uses_the_training_metric_definitions() -> None:
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    rng = np.random.default_rng(0)
    n = 400
    p = rng.random(n)
    truth = np.where(rng.random(n) < p, "yes", "no").astype(object)
    truth[::10] = None  # not labelled yet
    rows = Rows(np.arange(n), np.asarray([str(i) for i in range(n)], dtype=object), np.arange(n, dtype=float),
                np.ones(n), np.full(n, "1", dtype=object), {}, {"city": np.asarray(list("ab") * (n // 2), dtype=object)},
                label=np.where(p > 0.5, "yes", "no").astype(object), proba=np.stack([1 - p, p], axis=1),
                truth_label=truth)
    q = live_quality(rows, "binary", ["no", "yes"])
    has = np.asarray([t is not None for t in truth])
    y = np.asarray([t == "yes" for t in truth[has]], dtype=int)
    pred = (p[has] > 0.5).astype(int)
    assert q["labelled"] == has.sum() == 360
    assert q["metrics"]["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert q["metrics"]["f1"] == pytest.approx(f1_score(y, pred))
    assert q["metrics"]["auroc"] == pytest.approx(roc_auc_score(y, p[has]))
    assert np.asarray(q["confusion"]["matrix"]).sum() == 360
    city = rows.categorical["city"][has]
    assert q["errors_by_slice"]["city"]["a"]["error_rate"] == pytest.approx(float((pred != y)[city == "a"].mean()))


def test_latency_is_per_request_not_per_row() -> None:
    # one batch request of 98 rows took 500 ms; two single-row requests took 1 and 3 ms
    ts = np.concatenate([np.full(98, 10.0), [11.0, 12.0]])
    lat = np.concatenate([np.full(98, 500.0), [1.0, 3.0]])
    rows = Rows(np.arange(100), np.asarray(["x"] * 100, dtype=object), ts, lat, np.full(100, None), {}, {})
    ops = operational(rows, 99)
    assert ops["requests"] == 3 and ops["rows"] == 100
    assert ops["latency_ms"]["p50"] == 3.0 and ops["rows_per_s"] == pytest.approx(50.0)


def test_error_rate_since_the_previous_scrape_survives_a_restart() -> None:
    first = error_rate(None, {"200": 90.0, "400": 5.0, "500": 5.0}, count_4xx=False)
    assert first["rate"] == pytest.approx(0.05) and first["requests"] == 100
    later = error_rate({"200": 90.0, "400": 5.0, "500": 5.0}, {"200": 180.0, "400": 15.0, "500": 5.0}, count_4xx=True)
    assert later["rate"] == pytest.approx(10 / 100)
    restarted = error_rate({"200": 180.0, "500": 5.0}, {"200": 10.0, "500": 2.0}, count_4xx=False)
    assert restarted["restarted"] and restarted["rate"] == pytest.approx(2 / 12)


def test_a_filter_that_misses_streamed_rows_names_the_override(tmp_path: Path) -> None:
    """A consumer's rows are variant `stream`; a monitor left at champion and challenger sees none of them, and
    its note says which override adds them (and suggests nothing for other models' or versions' rows)."""
    path = tmp_path / "log.sqlite"
    _write(path, prediction_rows(["a", "b"], "m", "3", "stream", [{}, {}], [{}, {}], 1.0)
           + prediction_rows(["c"], "m", "2", "canary", [{}], [{}], 1.0)
           + prediction_rows(["d"], "other", "3", "shadow", [{}], [{}], 1.0))
    with open_reader(path) as reader:
        others = reader.traffic(0)
    # (model, version, variant) as logged, busiest first: nothing to parse back out of a printed key
    assert list(others.items()) == [(Traffic("m", "3", "stream"), 2), (Traffic("m", "2", "canary"), 1),
                                    (Traffic("other", "3", "shadow"), 1)]
    note = filter_miss_note("m", "3", ("champion", "challenger"), path, others)
    assert note == (f"no new rows of model 'm' version 3 (champion, challenger) in {path}; it has 2 rows of model m "
                    "version 3 variant stream; 1 rows of model m version 2 variant canary; 1 rows of model other "
                    "version 3 variant shadow. To judge the stream rows too, list the variant in monitor.variants, "
                    "e.g. monitor.variants=[champion,challenger,stream]")
    assert "2 rows of model m version 3 variant stream" in note
    assert note.endswith("To judge the stream rows too, list the variant in monitor.variants, e.g. "
                         "monitor.variants=[champion,challenger,stream]")
    assert "canary" not in note.split(". To judge")[1] and "shadow" not in note.split(". To judge")[1]
    every_version = filter_miss_note("m", None, ("champion",), path, others)
    assert every_version.endswith("monitor.variants=[champion,canary,stream]")
    assert ". To judge" not in filter_miss_note("m", "3", ("stream",), path, others)


def test_a_version_that_reads_like_the_note_is_still_matched(tmp_path: Path) -> None:
    """A version is free text ("2 version 3"): the note matches the model's rows by the logged values, where
    reading them back out of "model M version V variant W" split it at the wrong " version "."""
    path = tmp_path / "log.sqlite"
    _write(path, prediction_rows(["a"], "m", "2 version 3", "stream", [{}], [{}], 1.0))
    with open_reader(path) as reader:
        others = reader.traffic(0)
    note = filter_miss_note("m", "2 version 3", ("champion",), path, others)
    assert "1 rows of model m version 2 version 3 variant stream" in note
    assert note.endswith("monitor.variants=[champion,stream]")
