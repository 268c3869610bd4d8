"""Data refresh: the recipe's own data plus labelled production rows, as one new data file.

Production rows are the served predictions of the last `window_days` joined with their latest feedback
(`mlops.improve.feedback`), one per prediction id, that pass the quality filters, newest first, up to
`max_production_share` of the result. The file is Parquet (types and missing values survive), named by its
content fingerprint under `.mlops/improve/data/<model>/`, with a lineage file beside it that lists every
production id it holds. A retrain runs the recipe on it with `data.path=<file>`, so the run's data
fingerprint is the file's and its lineage is one lookup away.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops.core.atomic import write_bytes, write_json
from mlops.core.predlog_store import log_exists, log_name, log_target
from mlops.core.workspace import workspace
from mlops.data.descriptors import SEPARATOR
from mlops.data.fingerprint import fingerprint_bytes
from mlops.data.schema import infer_task
from mlops.data.sources import load_frame, source_name
from mlops.improve.feedback import read_joined
from mlops.package.predictor import DESCRIPTORS
from mlops.recipe import LoadedRecipe
from mlops.recipe.improve import ImproveConfig

if TYPE_CHECKING:
    import pandas as pd

    from mlops.improve.feedback import Joined


@dataclass
class Refresh:
    path: Path | None  # the refreshed data file; None when there was not enough to learn from
    fingerprint: str | None
    reference_rows: int
    production_rows: int
    ids: list[str]
    by_source: dict[str, int]  # production rows per kind of truth: label, value, thumbs, outcome
    dropped: dict[str, int]  # production rows left out, by reason
    log: str | None
    since: float | None
    lineage: Path | None = None
    overrides: list[str] = field(default_factory=list)

    def summary(self) -> RefreshSummary:
        return RefreshSummary(str(self.path) if self.path else None, self.fingerprint, self.reference_rows,
                              self.production_rows, self.by_source, self.dropped, self.log, self.since,
                              str(self.lineage) if self.lineage else None)


@dataclass(frozen=True)
class RefreshSummary:
    """A refresh as the audit log's evidence and a retrain's outcome show it: counts and files, not the ids
    (the lineage file lists them; they can be many thousands)."""

    path: str | None
    fingerprint: str | None
    reference_rows: int
    production_rows: int
    by_source: dict[str, int]
    dropped: dict[str, int]
    log: str | None
    since: float | None
    lineage: str | None


def production_log(loaded: LoadedRecipe) -> str | Path:
    """The prediction log a retrain learns from and its live stages watch: `improve.refresh.log`, else the
    workspace's log of the model."""
    configured = loaded.recipe.improve.refresh.log
    if configured:
        target = log_target(configured)  # a file, or a postgresql:// URL
        return target.expanduser() if isinstance(target, Path) else target
    return workspace().prediction_log(loaded.recipe.model_name)


def refresh_data(loaded: LoadedRecipe, now: float, out_root: Path | None = None) -> Refresh:
    """Build (or find, when the same content exists) the refreshed data file for `loaded`'s recipe."""
    import pandas as pd

    r = loaded.recipe
    cfg: ImproveConfig = r.improve
    reference, _ = load_frame(r.data, loaded.path)
    target = r.data.target
    task = infer_task(reference[target].dropna(), r.data.task)
    log = production_log(loaded)
    since = now - cfg.refresh.window_days * 86400
    production = pd.DataFrame(columns=reference.columns)
    ids: list[str] = []
    dropped: dict[str, int] = {}
    by_source: dict[str, int] = {}
    if cfg.refresh.production and log_exists(log):
        production, ids, dropped, by_source = production_frame(
            log, r.model_name, reference, target, task, cfg, since,
            n_reference=len(reference) if cfg.refresh.reference else 0)
    base = reference if cfg.refresh.reference else reference.iloc[0:0]
    result = Refresh(path=None, fingerprint=None, reference_rows=len(base), production_rows=len(production),
                     ids=ids, by_source=by_source, dropped=dropped, log=log_name(log), since=since)
    if cfg.refresh.production and len(production) < cfg.refresh.min_production_rows:
        return result
    frames = [f for f in (base, production) if len(f)]
    if not frames:
        return result
    combined = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    raw = parquet_bytes(combined)
    fingerprint = fingerprint_bytes(raw)
    folder = (out_root or workspace().refreshed_data) / r.model_name
    folder.mkdir(parents=True, exist_ok=True)
    stem = fingerprint.split(":", 1)[1][:16]
    path = folder / f"{stem}.parquet"
    if not path.is_file():
        write_bytes(path, raw)
    lineage = folder / f"{stem}.lineage.json"
    result.path, result.fingerprint, result.lineage = path, fingerprint, lineage
    write_json(lineage, {
        "fingerprint": fingerprint, "path": str(path), "model": r.model_name,
        "reference": {"source": source_name(r.data), "rows": len(base)},
        "production": {"log": log_name(log), "window_days": cfg.refresh.window_days, "since": since,
                       "rows": len(production), "by_source": by_source, "dropped": dropped, "ids": ids},
    })
    result.overrides = data_overrides(loaded, path)
    return result


def data_overrides(loaded: LoadedRecipe, path: Path) -> list[str]:
    """Hydra overrides that point the recipe at `path` (exactly one source: no built-in data set)."""
    out = []
    if loaded.recipe.data.dataset is not None:
        out.append("++data.dataset=null")
    return [*out, f"++data.path='{path}'", "++data.format=parquet"]


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def production_frame(log: Path, model: str, reference: pd.DataFrame, target: str, task: str, cfg: ImproveConfig,
                     since: float, n_reference: int) -> tuple[pd.DataFrame, list[str], dict[str, int], dict[str, int]]:
    """Labelled production rows shaped like `reference`, newest first; their ids; drops and sources counted."""
    import pandas as pd

    classification = task != "regression"
    originals = {str(v): v for v in reference[target].dropna().unique()} if classification else {}
    labels = sorted(originals) if classification else None
    joined = read_joined(log, model, since=since, feedback=cfg.feedback, labels=labels)
    dropped: dict[str, int] = {}

    def drop(reason: str) -> None:
        dropped[reason] = dropped.get(reason, 0) + 1

    features = [c for c in reference.columns if c != target]
    numeric = {c for c in features if pd.api.types.is_numeric_dtype(reference[c])}
    # image columns hold encoded bytes: a production row brings its image back only where the log kept it
    # (monitor.payloads.image_sample), a text only where it kept the text
    images = {c for c in features if c not in numeric and reference[c].map(lambda v: isinstance(v, bytes)).any()}
    mean = reference[list(numeric)].mean() if numeric else None
    std = reference[list(numeric)].std() if numeric else None
    kept: list[tuple[Joined, dict[str, Any]]] = []
    for j in sorted(joined, key=lambda j: j.ts, reverse=True):  # newest first: they win the share cap
        if j.truth is None:
            drop("no_label")
            continue
        row = _row(j, features, numeric, images)
        described = j.inputs.get(DESCRIPTORS) or {}
        if any(row.get(c) is None and (c in images or f"{c}{SEPARATOR}chars" in described) for c in features):
            drop("payload_not_kept")
            continue
        if classification:
            if str(j.truth) not in originals:
                drop("unknown_label")
                continue
            row[target] = originals[str(j.truth)]
        else:
            try:
                value = float(j.truth)
            except (TypeError, ValueError):
                drop("unknown_label")
                continue
            if not math.isfinite(value):
                drop("unknown_label")
                continue
            row[target] = value
        missing = sum(1 for c in features if _missing(row.get(c)))
        if features and missing / len(features) > cfg.refresh.quality.max_missing_share:
            drop("too_many_missing")
            continue
        if cfg.refresh.quality.max_abs_z is not None and _outlier(row, numeric, mean, std, cfg.refresh.quality.max_abs_z):
            drop("outlier")
            continue
        kept.append((j, row))
    share = cfg.refresh.max_production_share
    if n_reference and share < 1:
        cap = math.floor(share / (1 - share) * n_reference)
        if len(kept) > cap:
            dropped["over_share"] = len(kept) - cap
            kept = kept[:cap]
    by_source: dict[str, int] = {}
    for j, _ in kept:
        by_source[str(j.source)] = by_source.get(str(j.source), 0) + 1
    frame = pd.DataFrame([row for _, row in kept], columns=list(reference.columns))
    for c in reference.columns:  # the reference's types, so the refreshed file reads like the original
        if c == target and classification:
            frame[c] = frame[c].astype(reference[c].dtype)
        elif c in numeric or c == target:
            values = pd.to_numeric(frame[c], errors="coerce")
            whole = (pd.api.types.is_integer_dtype(reference[c]) and not values.isna().any()
                     and bool((values % 1 == 0).all()))
            frame[c] = values.astype(reference[c].dtype if whole else "float64")
        else:
            frame[c] = frame[c].astype(object)
    return frame, [j.id for j, _ in kept], dropped, by_source


def _row(j: Joined, features: list[str], numeric: set[str], images: set[str]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for c in features:
        v = j.inputs.get(c)
        if c in images:
            kept = v.get("b64") if isinstance(v, dict) else None
            row[c] = base64.b64decode(kept) if isinstance(kept, str) else None
        elif c in numeric:
            try:
                row[c] = float(v) if v is not None and not isinstance(v, bool) else math.nan
            except (TypeError, ValueError):
                row[c] = math.nan  # a value the model could not have taken as a number: missing
        else:
            row[c] = None if v is None else str(v)
    return row


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _outlier(row: dict[str, Any], numeric: set[str], mean: Any, std: Any, max_abs_z: float) -> bool:
    for c in numeric:
        v, s = row.get(c), float(std[c]) if std is not None else 0.0
        if not _missing(v) and s > 0 and abs((float(v) - float(mean[c])) / s) > max_abs_z:
            return True
    return False
