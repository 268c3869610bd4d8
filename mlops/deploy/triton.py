"""The Triton model repository of one model version, for KServe's stock `kserve-tritonserver` runtime:
`<name>/config.pbtxt` and `<name>/1/model.onnx`, to be copied to `<storage_uri>/<name>/v<version>`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mlops.core.atomic import publishing
from mlops.core.refs import ModelVersion
from mlops.deploy.render import render
from mlops.package.bundle import read_bundle

TRITON_TYPES = {"float32": "TYPE_FP32", "float64": "TYPE_FP64", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
                "string": "TYPE_STRING", "bool": "TYPE_BOOL"}


def config_pbtxt(meta: Any, version: str) -> str:
    """Triton's config for the bundle's graph: every input [-1, 1]; outputs as the bundle describes them."""
    inputs = [{"name": i.name, "data_type": TRITON_TYPES[i.dtype]} for i in meta.inputs]
    outputs = [{"name": o["name"], "data_type": TRITON_TYPES[o["dtype"]],
                "dims": [-1 if not isinstance(d, int) else d for d in o["shape"]]} for o in meta.outputs]
    return render("triton_config.pbtxt.j2", name=meta.name, version=version, inputs=inputs, outputs=outputs)


def build_repository(dest: Path, bundle_dir: Path, mv: ModelVersion) -> Path:
    """Write the repository at `dest` atomically; returns `dest`."""

    meta = read_bundle(bundle_dir)
    with publishing(dest) as tmp:
        (tmp / meta.name / "1").mkdir(parents=True)
        shutil.copy2(bundle_dir / "model.onnx", tmp / meta.name / "1" / "model.onnx")
        (tmp / meta.name / "config.pbtxt").write_text(config_pbtxt(meta, mv.version))
    return dest
