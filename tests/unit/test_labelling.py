"""`mlops label export` / `import` without a Label Studio server: which predictions are proposed and why (lowest
confidence, shadow disagreements, drifted windows), the tasks and labeling config written, and a Label Studio
export read back as feedback by prediction id (the latest annotation, cancelled and unknown ones left out).
tests/integration/test_label_studio.py makes the round trip through a real server."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from mlops.cli import main
from mlops.core.errors import MlopsError
from mlops.core.predlog import PredictionLog, prediction_rows
from mlops.improve.feedback import read_joined
from mlops.improve.labelling import export_tasks, import_annotations, read_label_studio_export
from mlops.monitor.store import MonitorStore
from mlops.package.predictor import DESCRIPTORS
from tests.improve_fixtures import MODEL, log_feedback, log_predictions

CONFIDENCE = {"p0": 0.95, "p1": 0.51, "p2": 0.9, "p3": 0.6, "p4": 0.99, "p5": 0.55}


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    return tmp_path / ".mlops" / "predictions" / f"{MODEL}.sqlite"


def log_answers(log: Path, answers: dict[str, float], variant: str = "champion", flip: bool = False) -> None:
    """One served classification per id, answering 'yes' with the given confidence ('no' with `flip`)."""
    ids = list(answers)
    inputs = [{"age": 20.0 + k, "income": 40.0, "city": "a"} for k in range(len(ids))]
    outputs = [{"label": "no" if flip else "yes", "probabilities": [1 - p, p] if not flip else [p, 1 - p]}
               for p in answers.values()]
    writer = PredictionLog(log)
    try:
        writer.submit("predictions", prediction_rows(ids, MODEL, "1", variant, inputs, outputs, 2.0)).result(30)
    finally:
        writer.close()


def drifted_window(home: Path, log: Path, first: int, last: int, drift: bool = True) -> Path:
    store = MonitorStore(home / "monitor" / f"{MODEL}.sqlite")
    db = sqlite3.connect(store.path)
    summary = {"drift": {"dataset": {"drift": drift, "drifted_columns": ["age"] if drift else []}}}
    db.execute("INSERT INTO windows (model, version, log, start_ts, end_ts, start_rowid, end_rowid, rows, judged, "
               "summary, created) VALUES (?, '1', ?, 0, 1, ?, ?, ?, 1, ?, ?)",
               (MODEL, str(log), first, last, last - first + 1, json.dumps(summary), time.time()))
    db.commit()
    db.close()
    return store.path


def test_export_takes_each_criterion_in_turn_and_skips_labelled_rows(log: Path, tmp_path: Path) -> None:
    log_answers(log, CONFIDENCE)  # rowids 1..6 in the order of CONFIDENCE
    log_answers(log, {"p4": 0.8}, variant="shadow", flip=True)  # the shadow says 'no' where the served said 'yes'
    log_answers(log, {"p2": 0.7}, variant="shadow")  # agrees: no disagreement
    log_feedback(log, [{"id": "p1", "label": "no"}])  # the least confident already has a label
    store = drifted_window(tmp_path / ".mlops", log, 1, 1)  # p0 (0.95) is the drifted window's only row
    drifted_window(tmp_path / ".mlops", log, 3, 3, drift=False)
    out = tmp_path / "tasks.json"
    result = export_tasks(log, MODEL, out, count=4, monitor_store=store)
    tasks = json.loads(out.read_text())
    ids = [t["data"]["prediction_id"] for t in tasks]
    assert ids == ["p5", "p4", "p0", "p3"]  # confidence, disagreement, drift, then confidence again
    assert result.ids == ids and result.tasks == 4 and result.considered == 5 and result.drift_windows == 1
    assert result.by_reason == {"confidence": 2, "disagreement": 1, "drift": 1}
    reasons = {t["data"]["prediction_id"]: t["data"]["mlops"]["reasons"] for t in tasks}
    assert reasons["p4"] == ["disagreement"] and reasons["p0"] == ["drift"]
    assert tasks[1]["data"]["mlops"]["shadow"]["label"] == "no"
    first = tasks[0]
    assert first["data"]["inputs"] == {"age": 25.0, "income": 40.0, "city": "a"}
    [prediction] = first["predictions"]
    assert prediction["score"] == pytest.approx(0.55) and prediction["model_version"] == f"{MODEL}/1"
    assert prediction["result"] == [{"from_name": "label", "to_name": "inputs", "type": "choices",
                                     "value": {"choices": ["yes"]}}]
    config = ET.fromstring(Path(result.config).read_text())
    choices = config.find("Choices")
    assert choices is not None and choices.get("toName") == "inputs" and choices.get("name") == "label"
    assert [c.get("value") for c in choices] == ["no", "yes"]  # answered by the shadow or told by feedback too
    assert config.find("Table").get("value") == "$inputs"  # type: ignore[union-attr]


def test_export_by_confidence_only_and_include_labelled(log: Path, tmp_path: Path) -> None:
    log_answers(log, CONFIDENCE)
    log_feedback(log, [{"id": "p1", "label": "no"}])
    result = export_tasks(log, MODEL, tmp_path / "t.json", count=3, criteria=("confidence",))
    assert result.ids == ["p5", "p3", "p2"]
    again = export_tasks(log, MODEL, tmp_path / "t.json", count=2, criteria=("confidence",), include_labelled=True)
    assert again.ids == ["p1", "p5"]


def test_regression_exports_a_number_and_imports_a_value(log: Path, tmp_path: Path) -> None:
    ids = ["r1", "r2"]
    writer = PredictionLog(log)
    writer.submit("predictions", prediction_rows(ids, MODEL, "1", "champion", [{"x": 1.0}, {"x": 2.0}],
                                                 [{"prediction": 3.5}, {"prediction": 7.0}], 1.0)).result(30)
    writer.submit("predictions", prediction_rows(["r2"], MODEL, "2", "shadow", [{"x": 2.0}],
                                                 [{"prediction": 9.0}], 1.0)).result(30)
    writer.close()
    result = export_tasks(log, MODEL, tmp_path / "t.json", count=5)
    assert result.task == "regression" and result.ids == ["r2"]  # no confidence; the shadow's gap
    config = ET.fromstring(Path(result.config).read_text())
    assert config.find("Number").get("name") == "value"  # type: ignore[union-attr]
    task = json.loads((tmp_path / "t.json").read_text())[0]
    assert task["predictions"][0]["result"][0]["value"] == {"number": 7.0}
    export = [{"id": 1, "data": task["data"], "annotations": [
        {"id": 1, "was_cancelled": False, "updated_at": "2026-01-01T00:00:00Z",
         "result": [{"from_name": "value", "to_name": "inputs", "type": "number", "value": {"number": 8.25}}]}]}]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    assert import_annotations(path, log).imported == 1
    joined = {j.id: j for j in read_joined(log, MODEL)}
    assert joined["r2"].truth == 8.25 and joined["r2"].source == "value" and joined["r1"].truth is None


def ls_task(pid: str, *annotations: dict[str, Any]) -> dict[str, Any]:
    return {"id": hash(pid) % 1000, "data": {"prediction_id": pid, "inputs": {}}, "annotations": list(annotations),
            "predictions": []}


def annotation(label: str, at: str, cancelled: bool = False, aid: int = 1) -> dict[str, Any]:
    return {"id": aid, "was_cancelled": cancelled, "created_at": at, "updated_at": at,
            "result": [] if cancelled else [{"from_name": "label", "to_name": "inputs", "type": "choices",
                                             "value": {"choices": [label]}}]}


def test_import_records_the_latest_annotation_per_task_and_counts_the_rest(log: Path, tmp_path: Path) -> None:
    log_predictions(log, ["a", "b", "c", "d"], label="no")
    export = [
        ls_task("a", annotation("no", "2026-01-01T10:00:00Z", aid=1), annotation("yes", "2026-01-02T10:00:00Z", aid=2)),
        ls_task("b", annotation("yes", "2026-01-01T10:00:00Z", cancelled=True)),
        ls_task("c"),
        ls_task("zz", annotation("yes", "2026-01-01T10:00:00Z")),
        ls_task("d", annotation("yes", "2026-01-01T10:00:00Z", aid=4), annotation("no", "2026-01-03T00:00:00Z",
                                                                               cancelled=True, aid=5)),
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    result = import_annotations(path, log)
    assert (result.tasks, result.imported) == (5, 2)
    assert result.skipped == {"cancelled": 1, "no_annotation": 1, "unknown_id": 1} and result.unknown_ids == ["zz"]
    joined = {j.id: j for j in read_joined(log, MODEL)}
    assert joined["a"].truth == "yes" and joined["a"].correct is False and joined["a"].source == "label"
    assert joined["d"].truth == "yes" and joined["b"].truth is None and joined["c"].truth is None


def test_json_min_exports_are_read_too(tmp_path: Path) -> None:
    path = tmp_path / "min.json"
    path.write_text(json.dumps([{"id": 1, "prediction_id": "a", "label": "yes"}, {"id": 2, "prediction_id": "b"}]))
    items, skipped, n = read_label_studio_export(path)
    assert items == [{"id": "a", "label": "yes"}] and skipped == {"no_annotation": 1} and n == 2


@pytest.mark.parametrize(("content", "said"), [
    ("id,label\na,yes\n", "not a Label Studio JSON export"),
    ('{"tasks": []}', "expected a list of tasks"),
    ('[{"id": 1, "text": "hello"}]', "no data.prediction_id"),
    ("[" * 100_000 + "]" * 100_000, r"not a Label Studio JSON export \(nested too deeply\)"),  # a RecursionError
])
def test_a_file_that_is_not_a_label_studio_export_is_refused(log: Path, tmp_path: Path, content: str,
                                                              said: str) -> None:
    log_predictions(log, ["a"])
    path = tmp_path / "export.json"
    path.write_text(content)
    with pytest.raises(MlopsError, match=said):
        import_annotations(path, log)


def test_an_export_without_annotations_or_of_another_log_says_what_to_do(log: Path, tmp_path: Path) -> None:
    log_predictions(log, ["a"])
    path = tmp_path / "export.json"
    path.write_text(json.dumps([ls_task("a")]))
    with pytest.raises(MlopsError, match="annotate in Label Studio"):
        import_annotations(path, log)
    path.write_text(json.dumps([ls_task("other", annotation("yes", "2026-01-01T00:00:00Z"))]))
    with pytest.raises(MlopsError, match="is it the right log"):
        import_annotations(path, log)


def test_unknown_model_empty_log_and_bad_criteria_are_user_errors(log: Path, tmp_path: Path) -> None:
    with pytest.raises(MlopsError, match="no prediction log"):
        export_tasks(log, MODEL, tmp_path / "t.json")
    PredictionLog(log).close()
    with pytest.raises(MlopsError, match="the log is empty"):
        export_tasks(log, MODEL, tmp_path / "t.json")
    log_predictions(log, ["a"])
    with pytest.raises(MlopsError, match=f"it holds {MODEL}"):
        export_tasks(log, "nope", tmp_path / "t.json")
    log_feedback(log, [{"id": "a", "label": "yes"}])
    with pytest.raises(MlopsError, match="every served prediction has feedback"):
        export_tasks(log, MODEL, tmp_path / "t.json")
    assert main(["label", "export", MODEL, "--log", str(log), "--by", "luck"]) == 2


def test_the_cli_round_trip(log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log_answers(log, CONFIDENCE)
    out = tmp_path / "tasks.json"
    assert main(["label", "export", MODEL, "--count", "2", "--by", "confidence", "-o", str(out), "--json"]) == 0
    exported = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert exported["ids"] == ["p1", "p5"] and Path(exported["config"]) == tmp_path / "tasks.config.xml"
    tasks = json.loads(out.read_text())
    export = [{"id": k, "data": t["data"], "annotations": [annotation("no", "2026-01-01T00:00:00Z")]}
              for k, t in enumerate(tasks)]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    assert main(["label", "import", str(path), "--model", MODEL, "--json"]) == 0
    imported = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert imported["imported"] == 2 and imported["skipped"] == {}
    truths = {j.id: j.truth for j in read_joined(log, MODEL) if j.truth is not None}
    assert truths == {"p1": "no", "p5": "no"}


def test_texts_and_images_are_shown_when_the_log_kept_them(log: Path, tmp_path: Path) -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(24)).decode("ascii")
    image = {"sha1": "0123456789abcdef", "shape": [8, 8, 3]}
    inputs = [{"review": "a fine film", "photo": image | {"b64": png}, "stars": 4.0,
               DESCRIPTORS: {"review.chars": 11.0, "photo.brightness": 0.5}},
              {"review": None, "photo": image | {"b64": png}, "stars": 2.0,  # the text was not sampled
               DESCRIPTORS: {"review.chars": 30.0, "photo.brightness": 0.4}}]
    outputs = [{"label": "good", "probabilities": [0.4, 0.6]}, {"label": "bad", "probabilities": [0.55, 0.45]}]
    writer = PredictionLog(log)
    writer.submit("predictions", prediction_rows(["t1", "t2"], MODEL, "1", "champion", inputs, outputs, 1.0)).result(30)
    writer.close()
    result = export_tasks(log, MODEL, tmp_path / "t.json", count=1)
    assert result.ids == ["t1"]  # t2 is less confident, but a person could not read its text: t1 takes its place
    [task] = json.loads((tmp_path / "t.json").read_text())
    assert task["data"]["review"] == "a fine film" and task["data"]["inputs"] == {"stars": 4.0}
    assert task["data"]["photo"] == f"data:image/png;base64,{png}"
    config = ET.fromstring(Path(result.config).read_text())
    assert config.find("Text").get("value") == "$review"  # type: ignore[union-attr]
    assert config.find("Image").get("value") == "$photo"  # type: ignore[union-attr]
    assert config.find("Choices").get("toName") == task["predictions"][0]["result"][0]["to_name"]  # type: ignore[union-attr]


def test_an_edited_export_with_values_the_log_cannot_hold_imports_the_rest(log: Path, tmp_path: Path) -> None:
    """A lone surrogate in an id (an AssertionError before) and a number past float's range (an OverflowError in
    math.isfinite) are counted and left out; the other tasks are imported."""
    log_predictions(log, ["a"])
    path = tmp_path / "min.json"
    path.write_text('[{"id": 1, "prediction_id": "a", "label": "yes"}, {"id": 2, "prediction_id": "\\ud800", '
                    '"label": "no"}, {"id": 3, "prediction_id": "a", "value": ' + "9" * 400 + "}]")
    result = import_annotations(path, log)
    assert (result.tasks, result.imported) == (3, 1) and result.skipped == {"invalid": 1, "no_annotation": 1}
    assert {j.id: j.truth for j in read_joined(log, MODEL)}["a"] == "yes"
