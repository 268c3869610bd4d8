"""Feedback reaching the training data: explicit labels, thumbs and implicit outcomes from the prediction log
become labelled rows of a refreshed data file (window, dedup by id, quality filters, share cap), with its own
fingerprint and the lineage of the production ids it holds. And the audit log's atomic appends."""

from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest

from mlops.engine.validate import load_validated
from mlops.improve.audit import AuditLog
from mlops.improve.feedback import read_joined
from mlops.improve.refresh import refresh_data
from tests.improve_fixtures import log_feedback, log_predictions, toy_recipe

NOW = time.time()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    return tmp_path


@pytest.fixture
def log(home: Path) -> Path:
    return home / ".mlops" / "predictions" / "toy.sqlite"


def refreshed(home: Path, *overrides: str, extra: str = "") -> tuple[dict, pd.DataFrame, list[str]]:
    loaded = load_validated(toy_recipe(home / "project", extra), list(overrides))
    r = refresh_data(loaded, NOW)
    frame = pd.read_parquet(r.path) if r.path else pd.DataFrame()
    return asdict(r.summary()) | {"overrides": r.overrides}, frame, r.ids


def production(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.iloc[200:].reset_index(drop=True)  # the toy reference has 200 rows, first


def test_each_kind_of_feedback_becomes_a_label(home: Path, log: Path) -> None:
    inputs = [{"age": 60.0 + i, "income": 10.0 * i, "city": "c"} for i in range(6)]
    log_predictions(log, [f"p{i}" for i in range(6)], label="no", inputs=inputs)
    log_feedback(log, [
        {"id": "p0", "label": "yes"},  # a corrected label
        {"id": "p1", "thumbs": "up"},  # served "no" was right
        {"id": "p2", "thumbs": "down"},  # binary: the other class
        {"id": "p3", "converted": True},  # implicit, mapped below
        {"id": "p4", "outcome": {"converted": False}},  # implicit, nested
        {"id": "p5", "comment": "no label here"},
    ])
    outcome = "improve:\n  feedback:\n    outcome: {field: converted, labels: {'true': 'yes', 'false': 'no'}}\n"
    summary, frame, ids = refreshed(home, extra=outcome)
    rows = production(frame)
    assert ids == ["p0", "p1", "p2", "p3", "p4"]  # newest first; one batch shares its time: log order
    truth = dict(zip(ids, rows["y"], strict=True))
    assert truth == {"p0": "yes", "p1": "no", "p2": "yes", "p3": "yes", "p4": "no"}
    by_id = {i: rows.iloc[k] for k, i in enumerate(ids)}
    assert by_id["p3"]["age"] == 63.0 and by_id["p3"]["income"] == 30.0 and by_id["p3"]["city"] == "c"
    assert summary["by_source"] == {"label": 1, "thumbs": 2, "outcome": 2}
    assert summary["dropped"] == {"no_label": 1}
    lineage = json.loads(Path(summary["lineage"]).read_text())
    assert sorted(lineage["production"]["ids"]) == ["p0", "p1", "p2", "p3", "p4"]
    assert lineage["fingerprint"] == summary["fingerprint"] and lineage["reference"]["rows"] == 200
    assert summary["overrides"] == [f"++data.path='{summary['path']}'", "++data.format=parquet"]


def test_thumbs_and_outcomes_can_be_turned_off(home: Path, log: Path) -> None:
    log_predictions(log, ["p1", "p2"], label="no")
    log_feedback(log, [{"id": "p1", "thumbs": "up"}, {"id": "p2", "converted": True}])
    summary, _, ids = refreshed(home, "improve.feedback.thumbs=false", "improve.refresh.min_production_rows=0")
    assert ids == [] and summary["dropped"] == {"no_label": 2}


def test_the_refreshed_file_has_a_new_fingerprint_that_follows_the_feedback(home: Path, log: Path) -> None:
    log_predictions(log, ["p1", "p2"], label="no")
    log_feedback(log, [{"id": "p1", "label": "yes"}])
    first, _, _ = refreshed(home)
    again, _, _ = refreshed(home)
    assert again["fingerprint"] == first["fingerprint"] and again["path"] == first["path"]  # same rows, same file
    from mlops.data.fingerprint import fingerprint_bytes

    assert fingerprint_bytes(Path(first["path"]).read_bytes()) == first["fingerprint"]
    log_feedback(log, [{"id": "p2", "label": "yes"}])
    more, frame, ids = refreshed(home)
    assert more["fingerprint"] != first["fingerprint"] and sorted(ids) == ["p1", "p2"]
    reference = pd.read_csv(home / "project" / "toy.csv")
    pd.testing.assert_frame_equal(frame.iloc[:200].reset_index(drop=True), reference, check_dtype=False)


def test_dedup_by_id_latest_answer_and_latest_feedback_and_never_shadow_rows(home: Path, log: Path) -> None:
    log_predictions(log, ["p1"], label="no", inputs=[{"age": 1.0, "income": 1.0, "city": "a"}], ts=NOW - 100)
    log_predictions(log, ["p1"], label="no", inputs=[{"age": 2.0, "income": 2.0, "city": "a"}], ts=NOW - 50)  # re-sent
    log_predictions(log, ["p1"], label="yes", variant="shadow", version="2", inputs=[{"age": 9.0, "income": 9.0,
                                                                                       "city": "a"}], ts=NOW - 50)
    log_feedback(log, [{"id": "p1", "label": "no"}], ts=NOW - 40)
    log_feedback(log, [{"id": "p1", "label": "yes"}], ts=NOW - 30)  # a correction of the correction
    _, frame, ids = refreshed(home)
    rows = production(frame)
    assert ids == ["p1"] and len(rows) == 1
    assert (rows["age"][0], rows["y"][0]) == (2.0, "yes")


def test_only_predictions_inside_the_window_are_used(home: Path, log: Path) -> None:
    log_predictions(log, ["old"], ts=NOW - 10 * 86400)
    log_predictions(log, ["new"], ts=NOW - 86400)
    log_feedback(log, [{"id": "old", "label": "yes"}, {"id": "new", "label": "yes"}])
    assert refreshed(home, "improve.refresh.window_days=7")[2] == ["new"]
    assert sorted(refreshed(home, "improve.refresh.window_days=30")[2]) == ["new", "old"]


def test_quality_filters_drop_and_count_rows(home: Path, log: Path) -> None:
    inputs = [{"age": None, "income": None, "city": "a"},  # 2 of 3 features missing
              {"age": 40.0, "income": 5000.0, "city": "b"},  # income far out of the reference's range
              {"age": 41.0, "income": 50.0, "city": "b"},  # a label the model never had
              {"age": "forty", "income": 50.0, "city": "b"},  # a non-number becomes missing, and is kept
              {"age": 42.0, "income": 51.0, "city": "a"}]
    log_predictions(log, ["miss", "far", "alien", "text", "good"], inputs=inputs)
    log_feedback(log, [{"id": "miss", "label": "yes"}, {"id": "far", "label": "yes"}, {"id": "alien", "label": "maybe"},
                       {"id": "text", "label": "no"}, {"id": "good", "label": "no"}])
    summary, frame, ids = refreshed(home, "improve.refresh.quality.max_abs_z=6")
    assert sorted(ids) == ["good", "text"]
    assert summary["dropped"] == {"too_many_missing": 1, "outlier": 1, "unknown_label": 1}
    rows = production(frame).set_index(pd.Index(ids))
    assert pd.isna(rows.loc["text", "age"]) and rows.loc["good", "income"] == 51.0
    kept_far = refreshed(home)[2]  # max_abs_z is off by default: drifted rows are what retraining is for
    assert "far" in kept_far


def test_production_rows_are_capped_to_their_share_newest_first(home: Path, log: Path) -> None:
    ids = [f"p{i:03d}" for i in range(150)]
    for k, i in enumerate(ids):
        log_predictions(log, [i], ts=NOW - 1000 + k)
    log_feedback(log, [{"id": i, "label": "yes"} for i in ids])
    summary, frame, kept = refreshed(home, "improve.refresh.max_production_share=0.2")
    assert len(kept) == 50 and summary["dropped"] == {"over_share": 100}  # 50 / (200 + 50) = 0.2
    assert kept == ids[::-1][:50]
    assert len(frame) == 250


def test_too_few_labelled_rows_give_no_file(home: Path, log: Path) -> None:
    log_predictions(log, ["p1", "p2"])
    log_feedback(log, [{"id": "p1", "label": "yes"}])
    summary, frame, _ = refreshed(home, "improve.refresh.min_production_rows=2")
    assert summary["path"] is None and summary["production_rows"] == 1 and frame.empty


def test_the_joined_rows_carry_truth_and_correctness(log: Path) -> None:
    log_predictions(log, ["a", "b", "c"], label="no")
    log_feedback(log, [{"id": "a", "label": "no"}, {"id": "b", "thumbs": "down"}])
    rows = {j.id: j for j in read_joined(log, "toy", labels=["no", "yes"])}
    assert (rows["a"].truth, rows["a"].correct, rows["a"].source) == ("no", True, "label")
    assert (rows["b"].truth, rows["b"].correct, rows["b"].source) == ("yes", False, "thumbs")
    assert (rows["c"].truth, rows["c"].correct) == (None, None)
    multiclass = {j.id: j for j in read_joined(log, "toy", labels=["no", "maybe", "yes"])}
    assert (multiclass["b"].truth, multiclass["b"].correct) == (None, False)  # wrong, truth unknown


# --- the audit log -------------------------------------------------------------------------------------------


def _append_many(path: str, worker: int) -> None:
    audit = AuditLog(path)
    for i in range(200):
        audit.append("decision", model="m", worker=worker, i=i, evidence={"pad": "x" * (i * 7)})


def test_concurrent_appends_from_processes_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("fork")  # separate processes, separate file descriptions
    procs = [ctx.Process(target=_append_many, args=(str(path), w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    lines = path.read_text().splitlines()
    assert len(lines) == 600
    records = [json.loads(line) for line in lines]  # every line whole
    for w in range(3):
        assert [r["i"] for r in records if r["worker"] == w] == list(range(200))


def test_a_torn_last_line_is_skipped_and_later_appends_still_read(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.append("retrain_started", model="m")
    with open(audit.path, "a") as f:
        f.write('{"event": "retrain_sta')  # a crash mid-write
    assert [r["event"] for r in audit.records()] == ["retrain_started"]
    audit.append("retrain_skipped", model="m")
    assert [r["event"] for r in audit.records()] == ["retrain_started", "retrain_skipped"]
    assert audit.records("other") == []
