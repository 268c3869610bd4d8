"""ONNX with preprocessing inside, a parity check against the trained module, and the bundle."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

import mlops
from mlops.data.preprocess import Preprocessor
from mlops.data.schema import DataSchema
from mlops.engine.results import EvaluateResult, ExportResult, LoadDataResult, PreprocessResult
from mlops.engine.steps.common import RunContext, frames
from mlops.engine.steps.trained import load_module
from mlops.package.bundle import write_bundle
from mlops.package.export import check_parity, export_network
from mlops.package.graph import assemble, io_description, postprocessing_graph, preprocessing_graph


def export(ctx: RunContext, out: Path) -> ExportResult:
    r = ctx.loaded.recipe
    prep = ctx.result("preprocess", PreprocessResult)
    pre = Preprocessor.model_validate_json((ctx.dir("preprocess") / "preprocessor.json").read_text())
    schema = DataSchema.model_validate_json((ctx.dir("preprocess") / "schema.json").read_text())
    module = load_module(ctx)
    net = export_network(module, prep.n_features, r.export.opset)
    scale = prep.target_scale
    n_out = 1 if prep.task == "regression" else len(prep.labels or [])
    full = assemble(preprocessing_graph(pre, r.export.opset, net.ir_version), net,
                    postprocessing_graph(prep.task, n_out, prep.labels, scale, r.export.opset, net.ir_version))
    model_bytes = full.SerializeToString()
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    parity = check_parity(session, module, frames(ctx)["test"], pre, prep.task, scale,
                          r.export.parity_batch_sizes, r.export.parity_atol)
    inputs = [{"name": s.name, "kind": "numeric", "dtype": "float32"} for s in pre.numeric]
    inputs += [{"name": c.name, "kind": "categorical", "dtype": "string"} for c in pre.categorical]
    meta = write_bundle(out / "bundle", model_bytes, {
        "name": r.model_name, "task": prep.task, "inputs": inputs, "outputs": io_description(full)["outputs"],
        "labels": prep.labels, "recipe_hash": ctx.loaded.model_hash,
        "data_fingerprint": ctx.result("load_data", LoadDataResult).fingerprint,
        "metrics": ctx.result("evaluate", EvaluateResult).metrics, "data_schema": schema.model_dump(),
        "parity": parity,
        "mlops_version": mlops.__version__,
    })
    return ExportResult.model_validate({"bundle": "bundle", "parity": parity, "onnx_sha256": meta.onnx_sha256,
                                        "onnx_bytes": len(model_bytes)})
