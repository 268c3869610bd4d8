"""Feedback may name a label the model does not have ('7', 'weird label'): `mlops monitor` judges the window on
the rest, leaves those rows out of Evidently's quality report and says how many and which, instead of ending in
Evidently's "Cannot compute TPR" traceback. Evidently's warnings about a class the window lacks are not printed."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from mlops.cli.output import jsonable
from mlops.monitor.run import monitor_recipe
from tests.monitor_fixtures import (
    QUICKSTART,
    build_breast_cancer_bundle,
    log_feedback,
    log_traffic,
    quickstart_split,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_breast_cancer_bundle(tmp_path_factory.mktemp("bc") / "bundle")


def traffic(bundle: Path, log: Path) -> tuple[list[str], list[str]]:
    """One window (the default 1000 rows) of the training split's rows: their ids and true labels."""
    train = quickstart_split()["train"]
    frame = train.iloc[np.random.default_rng(0).integers(0, len(train), 1000)].reset_index(drop=True)
    ids = log_traffic(log, bundle, frame, T0 + np.arange(len(frame), dtype=np.float64))
    return ids, [str(int(t)) for t in frame["target"]]


def test_labels_outside_the_models_classes_are_left_out_and_named(
        bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    log = tmp_path / "log.sqlite"
    ids, truth = traffic(bundle, log)
    labels = dict(zip(ids, truth, strict=True)) | dict.fromkeys(ids[:30], "7") | dict.fromkeys(ids[30:40], "weird label")
    log_feedback(log, labels)

    result = jsonable(monitor_recipe(str(QUICKSTART), [], str(bundle), log=str(log)))

    window = result["windows"][-1]
    assert window["judged"] and window["metrics"]["accuracy"] > 0.9
    report = result["evidently"]
    assert Path(report["quality"]["html"]).is_file()
    assert report["unknown_labels"] == {"7": 30, "weird label": 10}
    out = capsys.readouterr().out
    assert "40 labelled rows of window 0 have a label that is no class of the model ('7' 30, 'weird label' 10; " \
           "its classes: 0, 1)" in out


def test_a_window_whose_truth_lacks_a_class_prints_no_metric_warnings(
        bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    log = tmp_path / "log.sqlite"
    ids, _ = traffic(bundle, log)
    log_feedback(log, dict.fromkeys(ids[:100], "1"))  # recall of class 0 is ill-defined: no true 0 at all

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = jsonable(monitor_recipe(str(QUICKSTART), [], str(bundle), log=str(log)))

    assert Path(result["evidently"]["quality"]["html"]).is_file()
    shown = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning | UserWarning)
             and ("ill-defined" in str(w.message) or "encountered" in str(w.message))]
    assert shown == []
