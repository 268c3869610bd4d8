"""One window, summarised: drift per feature and of the predictions (the fast path), schema checks, live
quality from ground truth, operational metrics and the prediction distributions. The rules read the
`WindowSummary`; its record (plain JSON) is what the store keeps and the dashboard draws."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from mlops.core.errors import MlopsError
from mlops.core.timespec import iso
from mlops.data.descriptors import described_input
from mlops.monitor.drift import (
    CategoricalReference,
    ColumnDrift,
    categorical_drift,
    check_method,
    dataset_drift,
    numeric_drift,
    threshold_for,
)
from mlops.monitor.embedding import MIN_ROWS, embedding_drift
from mlops.monitor.logstream import (
    EMBEDDING_COLUMN,
    MEDIA_KINDS,
    NUMERIC_KINDS,
    Rows,
    Window,
    monitored_columns,
)
from mlops.monitor.operations import operational
from mlops.monitor.quality import live_quality
from mlops.monitor.reference import CONFIDENCE, LABEL, VALUE, Reference, outputs_of
from mlops.monitor.results import WindowSummary
from mlops.monitor.schema_checks import category_counts, check_schema
from mlops.recipe.monitor import MonitorConfig
from mlops.recipe.suggest import closest

EXAMPLES = 6  # inputs of a drifted window shown per image or text input

if TYPE_CHECKING:
    from mlops.package.bundle import BundleMeta


def drift_methods(cfg: MonitorConfig, columns: dict[str, str]) -> dict[str, tuple[str, float]]:
    """Each input column's (method, threshold): its own override, else the recipe's method for its kind."""
    d = cfg.drift
    unknown = sorted(set(d.features) - set(columns) - {EMBEDDING_COLUMN})
    if unknown:
        hints = [f"'{u}'" + (f" (did you mean '{h}'?)" if (h := closest(u, list(columns))) else "")
                 for u in unknown]
        raise MlopsError(f"monitor.drift.features names columns the model does not take: {', '.join(hints)}")
    out = {}
    if EMBEDDING_COLUMN in d.features and EMBEDDING_COLUMN not in columns:
        raise MlopsError("monitor.drift.features.embedding: the embedding's method, threshold and key are set in "
                         "monitor.drift.embedding")
    for name, kind in columns.items():
        if kind in MEDIA_KINDS:
            continue
        own = d.features.get(name)
        default = d.num_method if kind == "numeric" else d.cat_method
        method = own.method if own and own.method else default
        check_method(method, kind, name)
        kind_threshold = d.num_threshold if kind == "numeric" else d.cat_threshold
        threshold = own.threshold if own and own.threshold is not None else (
            kind_threshold if method == default else None)
        out[name] = (method, threshold_for(method, threshold))
    return out


def prediction_methods(cfg: MonitorConfig, task: str) -> dict[str, tuple[str, float]]:
    d = cfg.drift
    num = (d.num_method, threshold_for(d.num_method, d.num_threshold))
    if task == "regression":
        return {VALUE: num}
    return {LABEL: (d.cat_method, threshold_for(d.cat_method, d.cat_threshold)), CONFIDENCE: num}


class WindowJudge:
    def __init__(self, meta: BundleMeta, cfg: MonitorConfig) -> None:
        self.meta = meta
        self.cfg = cfg
        self.columns = monitored_columns(meta)
        self.methods = drift_methods(cfg, self.columns)
        self.prediction_methods = prediction_methods(cfg, meta.task)
        self.reference: Reference | None = None

    def judge(self, window: Window) -> WindowSummary:
        rows = window.rows
        counts = {c: category_counts(rows.categorical[c]) for c, k in self.columns.items() if k == "categorical"}
        summary = WindowSummary(
            index=window.index, start_ts=window.start_ts, end_ts=window.end_ts, start_iso=iso(window.start_ts),
            end_iso=iso(window.end_ts), start_rowid=window.start_rowid, end_rowid=window.end_rowid, rows=len(rows),
            judged=len(rows) >= self.cfg.window.min_samples, versions=sorted({str(v) for v in rows.versions.tolist()}))
        if self.cfg.drift.enabled and self.reference is not None:
            columns = self.feature_drift(rows, counts)
            predictions = self.prediction_drift(rows) if self.cfg.drift.predictions else []
            summary.drift = {"columns": [c.as_dict() for c in columns],
                             "dataset": dataset_drift(columns, self.cfg.drift.share),
                             "predictions": [p.as_dict() for p in predictions]}
            summary.examples = self.examples(rows, summary.drift["dataset"]["drifted_columns"])
        if self.cfg.schema_checks.enabled:
            summary.schema = check_schema(rows, self.meta.data_schema, self.cfg.schema_checks, counts)
        summary.quality = live_quality(rows, self.meta.task, self.meta.labels)
        summary.operations = operational(rows, self.cfg.latency.percentile)
        summary.distributions = distributions(rows, self.meta.task)
        return summary

    def feature_drift(self, rows: Rows, counts: dict[str, Any]) -> list[ColumnDrift]:
        assert self.reference is not None
        out = []
        for name, (method, threshold) in self.methods.items():  # every profiled input (images are not)
            ref = self.reference.profile(name)
            if self.columns[name] in NUMERIC_KINDS:
                out.append(numeric_drift(name, ref, rows.numeric[name], method, threshold))  # type: ignore[arg-type]
            else:
                out.append(categorical_drift(name, ref, counts[name], method, threshold))  # type: ignore[arg-type]
        embedded = self.reference.embedding_profile()
        cfg = self.cfg.drift.embedding
        if cfg.enabled and embedded is not None and rows.embedding is not None:
            current = rows.embedding[np.isfinite(rows.embedding).all(axis=1)]
            if len(current) >= MIN_ROWS and current.shape[1] == embedded.dims:  # else: too few to judge
                out.append(embedding_drift(EMBEDDING_COLUMN, embedded, current, cfg.method, cfg.threshold))
        return out

    def examples(self, rows: Rows, drifted: list[str]) -> list[dict[str, Any]] | None:
        """Kept inputs of a window whose embedding or an image's or text's descriptor drifted."""
        media = [n for n, k in self.columns.items() if k in MEDIA_KINDS]
        if not media or not any(c == EMBEDDING_COLUMN or described_input(c) in media for c in drifted):
            return None
        out = []
        for name in media:
            values = rows.payloads.get(name)
            kept = np.flatnonzero(values != None)[:EXAMPLES] if values is not None else []  # noqa: E711
            out += [{"column": name, "kind": self.columns[name], "rowid": int(rows.rowid[i]), "value": values[i],
                     "answered": None if rows.label is None else rows.label[i]} for i in kept]
        return out or None

    def prediction_drift(self, rows: Rows) -> list[ColumnDrift]:
        assert self.reference is not None
        current = outputs_of(rows, self.meta.task)
        out = []
        for name, (method, threshold) in self.prediction_methods.items():
            if name not in current or name not in self.reference.outputs:
                continue
            ref = self.reference.profile(name)
            if isinstance(ref, CategoricalReference):
                out.append(categorical_drift(name, ref, category_counts(current[name]), method, threshold))
            else:
                out.append(numeric_drift(name, ref, current[name], method, threshold))
        return out


def distributions(rows: Rows, task: str) -> dict[str, Any]:
    """How the predictions are spread: class shares and confidence quantiles, or the prediction's."""
    if len(rows) == 0:
        return {}
    if task == "regression":
        x = rows.prediction[np.isfinite(rows.prediction)] if rows.prediction is not None else np.empty(0)
        if x.size == 0:
            return {}
        return {"prediction": {"mean": float(x.mean()), "std": float(x.std()),
                               **{f"p{q}": float(np.percentile(x, q)) for q in (10, 50, 90)}}}
    out: dict[str, Any] = {}
    if rows.label is not None:
        counts = category_counts(rows.label)
        total = sum(counts.values()) or 1
        out["label_shares"] = {k: v / total for k, v in sorted(counts.items())}
    conf = rows.confidence
    if conf is not None and conf.size:
        out["confidence"] = {"mean": float(conf.mean()), **{f"p{q}": float(np.percentile(conf, q))
                                                           for q in (10, 50, 90)}}
    return out
