"""The evaluation report files and the plots embedded in them.

`sample_report` is also what tests/integration/test_report_render.py renders in a real browser.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlops.evaluate.plots import calibration_png, latency_histogram_png, roc_png
from mlops.evaluate.report import write_report
from mlops.evaluate.scored import Scored

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COMPARISON = {
    "test": "paired_bootstrap", "challenger": 0.912, "champion": 0.931, "estimate": -0.019,
    "ci": [-0.0412, 0.0123], "p_value": 0.0321, "passed": False, "max_drop": 0.0, "alpha": 0.05,
    "strict": False, "n": 400,
    "hypothesis": "paired_bootstrap: fail only if the data show the challenger's metric (higher is better) "
                  "is worse than the champion's by more than 0 (H0: d >= 0, rejected at alpha 0.05)",
}


def scored(task: str, n: int = 300, seed: int = 0) -> Scored:
    rng = np.random.default_rng(seed)
    k = 2 if task == "binary" else 3
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.5
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return Scored(task, y, proba, [f"class <{i}>" for i in range(k)])


def sample_report(tmp_path: Path) -> dict[str, Any]:
    """A report with every section: one failing and one passing gate, a champion comparison, plots."""
    roc = roc_png(scored("binary"), tmp_path / "roc.png")
    latencies = list(np.random.default_rng(1).gamma(4.0, 0.5, size=500))
    return {
        "model": {"name": "churn", "version": "7", "run_id": "abc123", "onnx_sha256": "f" * 64,
                  "task": "binary", "labels": ["stay", "leave"]},
        "recipe": "recipes/churn.yaml",
        "outcome": "failed",
        "metrics": {"test/accuracy": 0.912, "test/auroc": 0.955, "val/accuracy": np.float64(0.9),
                    "test/calibration_error": float("nan")},
        "gates": [
            {"metric": "test/auroc", "kind": "absolute", "slice": None, "threshold": ">= 0.9", "value": 0.955,
             "status": "passed", "detail": "0.955 >= 0.9", "comparison": None},
            {"metric": "test/accuracy", "kind": "champion", "slice": "region=<north>",
             "threshold": "max drop 0", "value": 0.912, "status": "failed",
             "detail": "worse than the champion <script>alert(1)</script>", "comparison": COMPARISON},
        ],
        "slices": [
            {"column": "region", "slice": "north", "count": 120, "metrics": {"accuracy": 0.9, "auroc": 0.94}},
            {"column": "region", "slice": "south", "count": 80, "metrics": {"accuracy": 0.93}},
        ],
        "fairness": {"gender": {
            "positive_label": "leave",
            "groups": [{"group": "f", "count": 150, "selection_rate": 0.31, "true_positive_rate": 0.8,
                        "false_positive_rate": 0.05, "accuracy": 0.91},
                       {"group": "m", "count": 250, "selection_rate": 0.27, "true_positive_rate": 0.78,
                        "false_positive_rate": 0.06, "accuracy": 0.92}],
            "demographic_parity_diff": 0.04, "demographic_parity_ratio": 0.87,
            "equal_opportunity_diff": 0.02, "equalized_odds_diff": 0.02}},
        "robustness": [
            {"name": "missing_age", "kind": "missing", "column": "age", "passed": True, "crashed": False,
             "finite": True, "value": 0.01, "detail": "flip rate 0.01 <= 0.05"},
            {"name": "unseen_region", "kind": "unseen_category", "column": "region", "passed": False,
             "crashed": True, "finite": False, "value": None, "detail": "RuntimeError: bad input"},
        ],
        "performance": {"onnx": {"latency_p50_ms": 1.8, "latency_p95_ms": 3.1, "latency_p99_ms": 4.2,
                                 "throughput_rps": 5400.0, "latencies_ms": latencies},
                        "torch": {"latency_p50_ms": 2.9, "latency_p95_ms": 4.4, "latency_p99_ms": 6.0,
                                  "throughput_rps": 3100.0}},
        "plots": {"roc": str(roc)},
    }


def test_json_keeps_paths_and_percentiles_not_images_or_samples(tmp_path: Path) -> None:
    report = sample_report(tmp_path)
    paths = write_report(report, tmp_path / "out")
    text = Path(paths["json"]).read_text()
    data = json.loads(text)  # strict JSON: the NaN metric became null
    assert "latencies_ms" not in text and "base64" not in text and "NaN" not in text
    assert data["performance"]["onnx"]["latency_p99_ms"] == 4.2
    assert data["performance"]["torch"]["throughput_rps"] == 3100.0
    assert data["metrics"]["test/calibration_error"] is None
    assert data["metrics"]["val/accuracy"] == 0.9
    assert data["gates"][1]["comparison"]["ci"] == [-0.0412, 0.0123]
    assert set(data["plots"]) == {"roc", "latency_histogram"}
    for path in data["plots"].values():
        assert Path(path).read_bytes().startswith(PNG_MAGIC)
    assert "latencies_ms" in report["performance"]["onnx"]  # the caller's dict is left as it was


def test_html_is_self_contained_and_escaped(tmp_path: Path) -> None:
    paths = write_report(sample_report(tmp_path), tmp_path / "out")
    html = Path(paths["html"]).read_text()
    assert not re.search(r"https?://", html)
    assert not re.search(r"<(script|link)\b", html)
    assert len(re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', html)) == 2  # roc + latency
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "region=&lt;north&gt;" in html
    assert 'id="gates"' in html and "90% CI [-0.0412, 0.0123]" in html and "p = 0.0321" in html
    for heading in ("Gates", "Metrics", "Slices", "Fairness", "Robustness", "Performance", "Plots"):
        assert f"<h2>{heading}</h2>" in html
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "evaluation.html", "evaluation.json", "latency_histogram.png"]  # no temporary files left behind


def test_missing_sections_are_omitted(tmp_path: Path) -> None:
    report = {"model": {"name": "m"}, "outcome": "passed", "metrics": {"test/accuracy": 1.0},
              "gates": [{"metric": "test/accuracy", "kind": "absolute", "threshold": ">= 0.5", "value": 1.0,
                         "status": "skipped", "detail": "no champion"}]}
    paths = write_report(report, tmp_path)
    html = Path(paths["html"]).read_text()
    assert "SKIPPED" in html and "<h2>Metrics</h2>" in html
    for heading in ("Slices", "Fairness", "Robustness", "Performance", "Plots"):
        assert f"<h2>{heading}</h2>" not in html
    assert json.loads(Path(paths["json"]).read_text()) == report
    assert not (tmp_path / "latency_histogram.png").exists()


def test_rewrite_replaces_the_previous_report(tmp_path: Path) -> None:
    base = {"model": {"name": "m"}, "metrics": {}, "gates": []}
    write_report(base | {"outcome": "failed"}, tmp_path)
    paths = write_report(base | {"outcome": "allowed"}, tmp_path)
    assert json.loads(Path(paths["json"]).read_text())["outcome"] == "allowed"
    assert "allowed" in Path(paths["html"]).read_text()


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_roc_and_calibration_plots(tmp_path: Path, task: str) -> None:
    s = scored(task)
    for fn in (roc_png, calibration_png):
        path = fn(s, tmp_path / f"{fn.__name__}.png")
        assert path.read_bytes().startswith(PNG_MAGIC)


def test_curves_refuse_regression(tmp_path: Path) -> None:
    s = Scored("regression", np.arange(10.0), np.arange(10.0))
    for fn in (roc_png, calibration_png):
        with pytest.raises(ValueError, match="probabilities"):
            fn(s, tmp_path / "x.png")


def test_latency_histogram(tmp_path: Path) -> None:
    path = latency_histogram_png([1.0, 2.0, 2.5, 3.0, float("nan")], tmp_path / "lat.png", "latency")
    assert path.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError):
        latency_histogram_png([], tmp_path / "empty.png", "latency")
