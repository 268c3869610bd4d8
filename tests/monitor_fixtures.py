"""Monitoring fixtures: a real model of a real data set without torch, and production traffic written to a real
prediction log through the serving code (`Predictor` + `PredictionLog`), with timestamps the test chooses.

The model is scikit-learn's logistic regression fitted on the quickstart recipe's own training split of the
breast cancer data (the split `mlops run` uses), exported as the bundle's ONNX graph: the same preprocessing
graph as every bundle, a linear layer, softmax and labels. Its test metrics are measured on the test split
through ONNX Runtime, as a run records them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from onnx import TensorProto, helper, numpy_helper

from mlops.core.predlog import PredictionLog
from mlops.data.fingerprint import fingerprint_frame
from mlops.data.preprocess import fit_preprocessor
from mlops.data.schema import infer_schema
from mlops.data.sources import load_builtin
from mlops.data.split import split_indices
from mlops.package.bundle import write_bundle
from mlops.package.graph import ML_OPSET, assemble, io_description, postprocessing_graph, preprocessing_graph
from mlops.package.predictor import Predictor
from mlops.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


def quickstart_split() -> dict[str, pd.DataFrame]:
    """The breast cancer rows of each split, exactly as the quickstart recipe splits them."""
    r = load_recipe(str(QUICKSTART)).recipe
    frame = load_builtin("breast_cancer")
    parts = split_indices(frame, r.data.target, r.data.split, r.split_seed, classification=True)
    return {name: frame.iloc[idx].reset_index(drop=True) for name, idx in parts.items()}


def build_breast_cancer_bundle(dest: Path, name: str = "quickstart") -> Path:
    from sklearn.linear_model import LogisticRegression

    from mlops.evaluate.metrics import compute_metrics
    from mlops.evaluate.scored import score_bundle

    r = load_recipe(str(QUICKSTART)).recipe
    parts = quickstart_split()
    train = parts["train"]
    schema = infer_schema(r.data.model_copy(update={"task": "binary"}), train)
    pre = fit_preprocessor(schema, train)
    y = train[r.data.target].astype(int).to_numpy()
    clf = LogisticRegression(max_iter=2000).fit(pre.transform(train), y)
    weights = np.zeros((pre.n_features, 2), dtype=np.float32)
    weights[:, 1] = clf.coef_[0]
    bias = np.array([0.0, clf.intercept_[0]], dtype=np.float32)
    net_graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"])], "net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", pre.n_features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        initializer=[numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")])
    net = helper.make_model(net_graph, opset_imports=[helper.make_opsetid("", 18),
                                                      helper.make_opsetid("ai.onnx.ml", ML_OPSET)])
    net.ir_version = 10
    full = assemble(preprocessing_graph(pre, 18, 10), net, postprocessing_graph("binary", 2, schema.labels, None, 18, 10))
    inputs = [{"name": s.name, "kind": "numeric", "dtype": "float32"} for s in pre.numeric]
    meta = {"name": name, "task": "binary", "inputs": inputs, "outputs": io_description(full)["outputs"],
            "labels": schema.labels, "recipe_hash": "test", "metrics": {},
            "data_fingerprint": fingerprint_frame(load_builtin("breast_cancer")),
            "data_schema": schema.model_dump(), "parity": {}, "mlops_version": "test"}
    write_bundle(dest, full.SerializeToString(), meta)
    scored = score_bundle(dest, parts["test"], r.data.target)
    write_bundle(dest, full.SerializeToString(), meta | {"metrics": compute_metrics(scored, "test")})
    return dest


def log_traffic(log_path: Path, bundle: Path, frame: pd.DataFrame, ts: Sequence[float], *,
                latency_ms: float | Sequence[float] = 2.0, version: str | None = None, variant: str = "champion",
                ids: Sequence[str] | None = None) -> list[str]:
    """Score `frame`'s rows one request each with the bundle's Predictor (what `mlops serve` runs) and write
    them to the prediction log through PredictionLog, as the server does, at the given times. Returns the ids."""
    predictor = Predictor(bundle, max_batch=max(len(frame), 1))
    columns = [i.name for i in predictor.meta.inputs]
    instances = [{c: _json_value(row[c]) for c in columns} for row in frame[columns].to_dict("records")]
    feeds = predictor.feeds_from_rows(instances)
    outputs = predictor.predict(feeds).log_instances()
    raw = predictor.log_rows(feeds)
    ids = list(ids) if ids is not None else [uuid.uuid4().hex for _ in instances]
    lat = [float(latency_ms)] * len(ids) if isinstance(latency_ms, int | float) else list(latency_ms)
    rows = [(i, float(t), predictor.name, version, variant, json.dumps(inp), json.dumps(out), latency)
            for i, t, inp, out, latency in zip(ids, ts, raw, outputs, lat, strict=True)]
    log = PredictionLog(log_path)
    try:
        log.submit("predictions", rows).result(timeout=60)
    finally:
        log.close()
    return ids


def log_feedback(log_path: Path, labels: dict[str, Any]) -> None:
    """Ground truth by prediction id, through the log's own feedback rows (what POST /v1/feedback writes)."""
    from mlops.core.predlog import feedback_row

    log = PredictionLog(log_path)
    try:
        log.submit("feedback", [feedback_row({"id": i, "label": str(v)}) for i, v in labels.items()]).result(60)
    finally:
        log.close()


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and v != v:
        return None
    return v.item() if hasattr(v, "item") else v


def hourly(n: int, start: float, per_hour: int) -> np.ndarray:
    """`n` timestamps, `per_hour` of them spread through each hour from `start` (an hour boundary)."""
    k = np.arange(n)
    return start + (k // per_hour) * 3600.0 + (k % per_hour) * (3000.0 / per_hour) + 1.0
