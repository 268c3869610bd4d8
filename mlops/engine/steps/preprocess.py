"""Infer the data schema; fit imputation, scaling and one-hot encoding on the train split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlops.data.preprocess import fit_preprocessor
from mlops.data.schema import encode_labels, infer_schema
from mlops.engine.results import PreprocessResult, SplitResult
from mlops.engine.steps.common import RunContext, frames


def preprocess(ctx: RunContext, out: Path) -> PreprocessResult:
    r = ctx.loaded.recipe
    parts = frames(ctx)
    task = ctx.result("split", SplitResult).task
    schema = infer_schema(r.data.model_copy(update={"task": task}), parts["train"])
    pre = fit_preprocessor(schema, parts["train"])
    arrays: dict[str, np.ndarray] = {}
    target_scale = None
    if schema.task == "regression":
        y_train = parts["train"][r.data.target].to_numpy(np.float32)
        target_scale = (float(y_train.mean()), float(y_train.std()) or 1.0)
    for name, frame in parts.items():
        arrays[f"x_{name}"] = pre.transform(frame)
        if schema.task == "regression":
            assert target_scale is not None
            y = frame[r.data.target].to_numpy(np.float32)
            arrays[f"y_{name}"] = ((y - np.float32(target_scale[0])) / np.float32(target_scale[1])).astype(np.float32)
        else:
            arrays[f"y_{name}"] = encode_labels(frame[r.data.target], schema.labels or [])
    np.savez(out / "arrays.npz", **arrays)
    (out / "schema.json").write_text(schema.model_dump_json(indent=2))
    (out / "preprocessor.json").write_text(pre.model_dump_json(indent=2))
    return PreprocessResult(task=schema.task, n_features=pre.n_features, labels=schema.labels,
                            target_scale=target_scale)
