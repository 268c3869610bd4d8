"""A registered version's signature and input example, from a bundle's description alone (no store)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mlops.package.bundle import read_bundle
from mlops.package.registry import example_row, signature_of
from tests.serve_fixtures import build_bundle, training_frame


def test_a_mixed_tabular_bundle_signs_its_raw_columns(tmp_path: Path) -> None:
    meta = read_bundle(build_bundle(tmp_path / "bundle"))
    signature = signature_of(meta)
    assert [(c.name, c.type.name, c.required) for c in signature.inputs.inputs] == [
        (i.name, "double" if i.kind == "numeric" else "string", False) for i in meta.inputs]
    assert {i.kind for i in meta.inputs} == {"numeric", "categorical"}
    assert signature.outputs.input_names() == ["label", "probabilities"]

    frame = training_frame()
    frame.loc[0, "age"] = np.nan  # a missing value stays missing: the graph imputes it
    example = example_row(meta, frame)
    assert example is not None and list(example.columns) == [i.name for i in meta.inputs] and len(example) == 1
    assert pd.isna(example["age"].iloc[0]) and isinstance(example["city"].iloc[0], str)
    assert example_row(meta, frame.iloc[:0]) is None


def test_a_regression_bundle_answers_one_number_and_never_its_embedding(tmp_path: Path) -> None:
    meta = read_bundle(build_bundle(tmp_path / "bundle"))
    meta = meta.model_copy(update={"task": "regression", "labels": None, "outputs": [
        {"name": "prediction", "dtype": "float32", "shape": ["N"]},
        {"name": "embedding", "dtype": "float32", "shape": ["N", 8]}]})
    outputs = signature_of(meta).outputs.inputs
    assert [(c.name, c.type.name) for c in outputs] == [("prediction", "float")]
