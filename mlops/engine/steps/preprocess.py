"""Infer the data schema; fit imputation, scaling and one-hot encoding on the train split; decode every image
column and learn a tokenizer for every text column from the train split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mlops.core.errors import DataError
from mlops.data.columns import image_spec, text_spec, text_values, tokenizer_file
from mlops.data.media import TABULAR, ModelInputs, PixelStats, train_tokenizer
from mlops.data.preprocess import fit_preprocessor, image_pixels, pixel_stats, token_ids
from mlops.data.schema import DataSchema, encode_labels, infer_schema
from mlops.engine.results import PreprocessResult, SplitResult
from mlops.engine.steps.common import RunContext, frames
from mlops.recipe.schema import Recipe


def preprocess(ctx: RunContext, out: Path) -> PreprocessResult:
    r = ctx.loaded.recipe
    parts = frames(ctx)
    task = ctx.result("split", SplitResult).task
    schema = infer_schema(r.data.model_copy(update={"task": task}), parts["train"])
    pre = fit_preprocessor(schema, parts["train"], trim=r.data.categories.trim)
    arrays: dict[str, np.ndarray] = {}
    target_scale = None
    if schema.task == "regression":
        y_train = parts["train"][r.data.target].to_numpy(np.float32)
        target_scale = (float(y_train.mean()), float(y_train.std()) or 1.0)
    scalar_only = not schema.of_kind("image") and not schema.of_kind("text")
    for name, frame in parts.items():
        if pre.n_features or scalar_only:  # an images/text-only model has no tabular input
            arrays[ModelInputs.array_key(TABULAR, name)] = pre.transform(frame)
        if schema.task == "regression":
            assert target_scale is not None
            y = frame[r.data.target].to_numpy(np.float32)
            arrays[f"y_{name}"] = ((y - np.float32(target_scale[0])) / np.float32(target_scale[1])).astype(np.float32)
        else:
            arrays[f"y_{name}"] = encode_labels(frame[r.data.target], schema.labels or [])
    inputs, stats = _media_inputs(r, schema, parts, arrays, out, ModelInputs(tabular=pre.n_features))
    np.savez(out / "arrays.npz", **arrays)
    (out / "schema.json").write_text(schema.model_dump_json(indent=2))
    (out / "preprocessor.json").write_text(pre.model_dump_json(indent=2))
    return PreprocessResult(task=schema.task, n_features=pre.n_features, labels=schema.labels,
                            target_scale=target_scale, inputs=inputs,
                            pixel_stats=stats)


def _media_inputs(r: Recipe, schema: DataSchema, parts: dict[str, pd.DataFrame],
                  arrays: dict[str, np.ndarray], out: Path, inputs: ModelInputs) -> tuple[ModelInputs, dict[str, PixelStats]]:
    """Each image column's pixels and each text column's token ids, for every split, into `arrays`; each
    tokenizer into `out`. Returns `inputs` with every image and text input's spec added, and the image
    columns' training pixel statistics."""
    stats: dict[str, PixelStats] = {}
    files: dict[str, str] = {}
    for column in schema.of_kind("image") + schema.of_kind("text"):
        if column == TABULAR:
            raise DataError(f"an image or text column cannot be named '{TABULAR}': the network's scalar "
                            "input takes that name (rename the column)")
    for column in schema.of_kind("image"):
        spec = image_spec(r.data, column)
        for split, frame in parts.items():
            arrays[ModelInputs.array_key(column, split)] = image_pixels(frame[column], spec, column, split)
        stats[column] = pixel_stats(arrays[ModelInputs.array_key(column, "train")])
        inputs.images[column] = spec
    cfg = r.model.text
    for column in schema.of_kind("text"):
        file = tokenizer_file(column)
        if file in files:
            raise DataError(f"text columns '{files[file]}' and '{column}' would share the tokenizer file "
                            f"{file}: rename one")
        files[file] = column
        tokenizer = train_tokenizer(text_values(parts["train"][column]), cfg.vocab_size, cfg.tokenizer,
                                    cfg.lowercase)
        (out / file).write_text(tokenizer.to_str())
        for split, frame in parts.items():
            arrays[ModelInputs.array_key(column, split)] = token_ids(tokenizer, frame[column], cfg.max_length)
        inputs.texts[column] = text_spec(r.data, column, cfg.max_length, tokenizer.get_vocab_size())
    return inputs, stats
