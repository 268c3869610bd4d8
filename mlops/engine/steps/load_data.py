"""Read the rows and fingerprint their bytes. Image columns are stored as their encoded bytes, so the cached
`data.parquet` is the whole data set: every later step (and the monitor's reference) reads that one frame."""

from __future__ import annotations

import json
from pathlib import Path

from mlops.data.fingerprint import dvc_revision, fingerprint_bytes, fingerprint_frame
from mlops.data.sources import IMAGE_FILES, data_path, load_rows, source_name
from mlops.engine.results import LoadDataResult
from mlops.engine.steps.common import RunContext

DATASET_FILE = "dataset.json"


def load_data(ctx: RunContext, out: Path) -> LoadDataResult:
    data = ctx.loaded.recipe.data
    rows = load_rows(data, ctx.loaded.path)
    frame = rows.frame
    fingerprint = fingerprint_bytes(rows.raw) if rows.raw is not None else fingerprint_frame(frame)
    dvc = dvc_revision(data_path(data, ctx.loaded.path)) if data.path else None
    frame.to_parquet(out / "data.parquet", index=False)
    if rows.image_files:  # so that check_data can name the file of an image it refuses
        (out / IMAGE_FILES).write_text(json.dumps(rows.image_files))
    source = source_name(data)
    # where the rows came from, as the run's MLflow dataset names it: the data file's absolute path
    uri = str(data_path(data, ctx.loaded.path)) if data.path else source
    (out / DATASET_FILE).write_text(json.dumps({"name": Path(uri).name if data.path else str(data.dataset),
                                                "uri": uri, "target": data.target}))
    return LoadDataResult(fingerprint=fingerprint, dvc=dvc, source=source, rows=len(frame),
                          columns=[str(c) for c in frame.columns])
