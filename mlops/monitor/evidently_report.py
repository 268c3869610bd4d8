"""Evidently reports for people: data drift (`DataDriftPreset`, the same methods and thresholds as the fast
path) and, where ground truth exists, the classification or regression preset. HTML and JSON.

Evidently 0.7's new API: `Report([...]).run(current, reference)`, current first. Its per-column verdicts
are read back from the report's tests, so the fast path can be checked against them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops.core.atomic import replacing
from mlops.monitor.drift import EVIDENTLY_NAME

if TYPE_CHECKING:
    import pandas as pd

TARGET, PREDICTION = "__target__", "__prediction__"


def drift_preset(methods: dict[str, tuple[str, float]], share: float) -> Any:
    """`DataDriftPreset` over exactly these columns, each with its method and threshold spelled out."""
    from evidently.presets import DataDriftPreset

    return DataDriftPreset(columns=list(methods), drift_share=share,
                           per_column_method={c: EVIDENTLY_NAME[m] for c, (m, _) in methods.items()},
                           per_column_threshold={c: float(t) for c, (_, t) in methods.items()})


def run_drift(reference: pd.DataFrame, current: pd.DataFrame, numeric: list[str], categorical: list[str],
              methods: dict[str, tuple[str, float]], share: float) -> Any:
    """Run `DataDriftPreset` on frames whose numeric columns are float64 and categorical ones strings (None
    for missing)."""
    from evidently import DataDefinition, Dataset, Report

    dd = DataDefinition(numerical_columns=list(numeric), categorical_columns=list(categorical))
    report = Report([drift_preset(methods, share)], include_tests=True)
    return report.run(Dataset.from_pandas(current, data_definition=dd), Dataset.from_pandas(reference, data_definition=dd))


def verdicts(snapshot: Any) -> dict[str, dict[str, Any]]:
    """Per column: Evidently's method, threshold, score and verdict (its test fails when the column drifts)."""
    out: dict[str, dict[str, Any]] = {}
    data = snapshot.dict()
    scores = {}
    for metric in data["metrics"]:
        config = metric.get("config") or {}
        if config.get("type", "").endswith(":ValueDrift"):
            scores[metric["id"]] = (config["column"], config.get("method"), config.get("threshold"), metric["value"])
    for test in data["tests"]:
        metric_id = (test.get("metric_config") or {}).get("metric_id")
        if metric_id in scores:
            column, method, threshold, value = scores[metric_id]
            out[column] = {"method": method, "threshold": threshold, "score": float(value),
                           "drift": test["status"] == "FAIL"}
    return out


def dataset_verdict(snapshot: Any) -> bool | None:
    """Evidently's dataset drift: its share-of-drifted-columns test fails."""
    for test in snapshot.dict()["tests"]:
        params = ((test.get("metric_config") or {}).get("params") or {})
        if params.get("type", "").endswith(":DriftedColumnsCount"):
            return test["status"] == "FAIL"
    return None


def save(snapshot: Any, out_dir: Path, stem: str = "evidently") -> dict[str, str]:
    """`<stem>.html` and `<stem>.json` under `out_dir`, each written to a temporary file and renamed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind in ("html", "json"):
        final = out_dir / f"{stem}.{kind}"
        with replacing(final) as tmp:
            (snapshot.save_html if kind == "html" else snapshot.save_json)(str(tmp))
        paths[kind] = str(final)
    return paths
