"""Read the rows and fingerprint their bytes."""

from __future__ import annotations

from pathlib import Path

from mlops.data.fingerprint import dvc_revision, fingerprint_bytes, fingerprint_frame
from mlops.data.sources import data_path, load_frame, source_name
from mlops.engine.results import LoadDataResult
from mlops.engine.steps.common import RunContext


def load_data(ctx: RunContext, out: Path) -> LoadDataResult:
    data = ctx.loaded.recipe.data
    frame, raw = load_frame(data, ctx.loaded.path)
    fingerprint = fingerprint_bytes(raw) if raw is not None else fingerprint_frame(frame)
    dvc = dvc_revision(data_path(data, ctx.loaded.path)) if data.path else None
    frame.to_parquet(out / "data.parquet", index=False)
    source = source_name(data)
    return LoadDataResult(fingerprint=fingerprint, dvc=dvc, source=source, rows=len(frame),
                          columns=[str(c) for c in frame.columns])
