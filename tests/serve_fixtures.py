"""A small real bundle built without torch: preprocessing graph + a linear layer + postprocessing."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from onnx import TensorProto, helper, numpy_helper

from mlops.data.preprocess import fit_preprocessor
from mlops.data.schema import infer_schema
from mlops.package.bundle import write_bundle
from mlops.package.graph import (
    ML_OPSET,
    PACKED_NUMERIC,
    assemble,
    io_description,
    packed_columns,
    packed_graph,
    postprocessing_graph,
    preprocessing_graph,
)
from mlops.recipe.schema import DataConfig
from mlops.serve import kserve_runtime


def training_frame(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"age": rng.normal(40, 10, n), "income": rng.normal(50, 15, n),
                       "city": rng.choice(["a", "b", "c"], n)})
    df["y"] = np.where(df["age"] + (df["city"] == "a") * 10 > 42, "yes", "no")
    return df


def build_bundle(dest: Path, name: str = "toy", weights_seed: int = 1, frame: pd.DataFrame | None = None,
                 data: dict[str, Any] | None = None) -> Path:
    """`weights_seed` draws the linear layer: another seed gives a model that answers differently. `frame`: the
    training rows (columns age, income, city, y by default); `data`: more of the recipe's data section. With
    data.categories its policies are written into the bundle; without, it is a bundle from before them."""
    frame = training_frame() if frame is None else frame
    data = data or {}
    cfg = DataConfig.model_validate({"path": "x.csv", "target": "y", "categories": {"trim": False}} | data)
    schema = infer_schema(cfg, frame)
    pre = fit_preprocessor(schema, frame, trim=cfg.categories.trim)
    weights = np.random.default_rng(weights_seed).normal(size=(pre.n_features, 2)).astype(np.float32)
    net_graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])], "net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", pre.n_features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        initializer=[numpy_helper.from_array(weights, "w")])
    net = helper.make_model(net_graph, opset_imports=[helper.make_opsetid("", 18),
                                                      helper.make_opsetid("ai.onnx.ml", ML_OPSET)])
    net.ir_version = 10
    full = assemble(preprocessing_graph(pre, 18, 10), net, postprocessing_graph("binary", 2, schema.labels, None, 18, 10))
    inputs = [{"name": s.name, "kind": "numeric", "dtype": "float32"} for s in pre.numeric]
    inputs += [{"name": c.name, "kind": "categorical", "dtype": "string"} for c in pre.categorical]
    packed = packed_graph(full)
    assert packed is not None
    write_bundle(dest, full.SerializeToString(), {
        "name": name, "task": "binary", "inputs": inputs, "outputs": io_description(full)["outputs"],
        "labels": schema.labels, "recipe_hash": "test", "data_fingerprint": "sha256:test", "metrics": {},
        "data_schema": schema.model_dump(), "parity": {}, "mlops_version": "test"}
        | ({"categories": cfg.categories.model_dump()} if "categories" in data else {}),
        packed=(packed.SerializeToString(), PACKED_NUMERIC, packed_columns(full)))
    return dest


HAS_KSERVE = importlib.util.find_spec("kserve") is not None


def kserve_app(bundle: Path, max_batch: int = 16) -> Any:
    """KServe's own REST app (its V1 and V2 routes, data plane and error handlers) over our `BundleModel`, with the
    handlers `serve_kserve` installs: what `mlops serve --runtime kserve` serves, without a socket."""
    from fastapi import FastAPI
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import RESTServer

    model = kserve_runtime.BundleModel(bundle, max_batch=max_batch, version="7")
    model.load()
    repository = ModelRepository()
    repository.update(model)
    rest = RESTServer("unused", DataPlane(model_registry=repository),
                      ModelRepositoryExtension(model_registry=repository), http_port=0)
    app = FastAPI()
    rest._register_endpoints(app)
    rest._add_exception_handlers(app)
    kserve_runtime.install_error_handlers(app)
    return app
