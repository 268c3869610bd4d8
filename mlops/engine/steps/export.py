"""ONNX with preprocessing inside, a parity check against the trained module, and the bundle."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import onnxruntime as ort

import mlops
from mlops.data.media import ModelInputs
from mlops.data.preprocess import Preprocessor
from mlops.data.schema import DataSchema
from mlops.engine.results import EvaluateResult, ExportResult, LoadDataResult, PreprocessResult
from mlops.engine.steps.common import RunContext, frames
from mlops.engine.steps.trained import dict_inputs, load_module, split_arrays
from mlops.package.bundle import write_bundle
from mlops.package.export import check_parity, compare_outputs, export_network, torch_dict_outputs
from mlops.package.graph import (
    PACKED_NUMERIC,
    assemble,
    assemble_inputs,
    io_description,
    packed_columns,
    packed_graph,
    postprocessing_graph,
    preprocessing_graph,
)
from mlops.package.predictor import Predictor


def export(ctx: RunContext, out: Path) -> ExportResult:
    r = ctx.loaded.recipe
    prep = ctx.result("preprocess", PreprocessResult)
    pre = Preprocessor.model_validate_json((ctx.dir("preprocess") / "preprocessor.json").read_text())
    schema = DataSchema.model_validate_json((ctx.dir("preprocess") / "schema.json").read_text())
    module = load_module(ctx)
    inputs = dict_inputs(ctx)
    scale = prep.target_scale
    n_out = 1 if prep.task == "regression" else len(prep.labels or [])
    opset = r.export.opset
    net = export_network(module, inputs if inputs is not None else prep.n_features, opset)
    post = postprocessing_graph(prep.task, n_out, prep.labels, scale, opset, net.ir_version)
    if inputs is None:
        full = assemble(preprocessing_graph(pre, opset, net.ir_version), net, post)
    else:
        full = assemble_inputs(preprocessing_graph(pre, opset, net.ir_version) if pre.n_features else None, net, post)
    model_bytes = full.SerializeToString()
    meta: dict[str, Any] = {
        "name": r.model_name, "task": prep.task, "inputs": _bundle_inputs(pre, prep.inputs),
        "outputs": io_description(full)["outputs"], "labels": prep.labels, "recipe_hash": ctx.loaded.model_hash,
        "data_fingerprint": ctx.result("load_data", LoadDataResult).fingerprint,
        "metrics": ctx.result("evaluate", EvaluateResult).metrics, "data_schema": schema.model_dump(),
        "parity": {}, "mlops_version": mlops.__version__, "payloads": r.monitor.payloads.model_dump(),
        "log_limits": r.monitor.log_limits.model_dump(),
        "categories": r.data.categories.model_dump(),
    }
    assets = {spec.tokenizer: (ctx.dir("preprocess") / spec.tokenizer).read_text()
              for spec in prep.inputs.texts.values()}
    packed = None
    if inputs is None:
        session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        parity = check_parity(session, module, frames(ctx)["test"], pre, prep.task, scale,
                              r.export.parity_batch_sizes, r.export.parity_atol)
        packed = _packed(full, module, frames(ctx)["test"], pre, prep.task, scale, r.export.parity_batch_sizes,
                         r.export.parity_atol)
    else:
        parity = _raw_input_parity(ctx, out, module, inputs, model_bytes, meta, assets)
    written = write_bundle(out / "bundle", model_bytes, meta | {"parity": parity}, assets, packed)
    return ExportResult.model_validate({"bundle": "bundle", "parity": parity, "onnx_sha256": written.onnx_sha256,
                                        "onnx_bytes": len(model_bytes)})


def _packed(full: Any, module: Any, test: Any, pre: Preprocessor, task: str, scale: tuple[float, float] | None,
            batch_sizes: list[int], atol: float) -> tuple[bytes, str, list[str]] | None:
    """packed.onnx (the numeric columns as one input, what the Predictor runs), its parity checked as
    model.onnx's was; None for a model without numeric columns."""
    packed = packed_graph(full)
    if packed is None:
        return None
    data = packed.SerializeToString()
    columns = packed_columns(full)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    check_parity(session, module, test, pre, task, scale, batch_sizes, atol, packed=(PACKED_NUMERIC, columns))
    return data, PACKED_NUMERIC, columns


def _bundle_inputs(pre: Preprocessor, inputs: ModelInputs) -> list[dict[str, Any]]:
    """What the bundle takes, by column: scalar columns as the graph's raw columns, images as uint8 pixels and
    texts as token ids, each with the spec the Predictor decodes or tokenizes by."""
    described: list[dict[str, Any]] = [{"name": s.name, "kind": "numeric", "dtype": "float32"} for s in pre.numeric]
    described += [{"name": c.name, "kind": "categorical", "dtype": "string"} for c in pre.categorical]
    described += [{"name": name, "kind": "image", "dtype": "uint8", "nullable": False, "image": spec.model_dump()}
                  for name, spec in inputs.images.items()]
    described += [{"name": name, "kind": "text", "dtype": "int64", "nullable": False, "text": spec.model_dump()}
                  for name, spec in inputs.texts.items()]
    return described


def _raw_input_parity(ctx: RunContext, out: Path, module: Any, inputs: ModelInputs, model_bytes: bytes,
                      meta: dict[str, Any], assets: dict[str, str]) -> dict[str, Any]:
    """The bundle as serving runs it (its Predictor decoding the raw test images and tokenizing the raw test
    texts) against the trained module on the arrays it was evaluated on. A staging bundle, removed after: only
    a bundle that passed is written where the registry looks."""
    r = ctx.loaded.recipe
    prep = ctx.result("preprocess", PreprocessResult)
    staging = out / "parity-staging"
    write_bundle(staging, model_bytes, meta, assets)
    try:
        predictor = Predictor(staging)
        feeds = predictor.graph_feeds(predictor.frame_feeds(frames(ctx)["test"]))
        expected = torch_dict_outputs(module, split_arrays(ctx, "test"), prep.task)[0]
        kinds = {"image"} if inputs.images else set()
        kinds |= {"text"} if inputs.texts else set()
        atol = max([r.export.parity_atol, *(r.export.parity_atol_per_kind.get(k, 0.0) for k in kinds)])
        return compare_outputs(predictor.session, feeds, expected, prep.task, prep.target_scale,
                               r.export.parity_batch_sizes, atol)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
