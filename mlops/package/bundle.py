"""The model bundle: `model.onnx` + `bundle.json`. Everything serving needs, and nothing else:
no MLflow, no torch, no pickle."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mlops.core.atomic import publishing
from mlops.core.errors import MlopsError
from mlops.data.schema import DataSchema

FORMAT = "mlops-bundle/1"


class BundleInput(BaseModel):
    name: str
    kind: str  # numeric | categorical
    dtype: str  # what the graph takes: float32 | string
    nullable: bool = True  # missing values are imputed inside the graph


class BundleMeta(BaseModel):
    format: str = FORMAT
    name: str
    task: str
    inputs: list[BundleInput]
    outputs: list[dict[str, Any]]
    labels: list[str] | None
    recipe_hash: str
    data_fingerprint: str
    metrics: dict[str, float]
    data_schema: DataSchema
    parity: dict[str, Any]
    onnx_sha256: str
    mlops_version: str


def write_bundle(dest: Path, model_bytes: bytes, meta: dict[str, Any]) -> BundleMeta:
    """Write atomically: a crash leaves either the old bundle or the new one, never half of one."""
    full = BundleMeta.model_validate(meta | {"onnx_sha256": hashlib.sha256(model_bytes).hexdigest()})
    with publishing(dest) as tmp:
        (tmp / "model.onnx").write_bytes(model_bytes)
        (tmp / "bundle.json").write_text(full.model_dump_json(indent=2))
    return full


def read_bundle(path: Path) -> BundleMeta:
    meta_file = path / "bundle.json"
    if not meta_file.is_file() or not (path / "model.onnx").is_file():
        raise MlopsError(f"{path} is not a model bundle (needs model.onnx and bundle.json)")
    meta = BundleMeta.model_validate(json.loads(meta_file.read_text()))
    if hashlib.sha256((path / "model.onnx").read_bytes()).hexdigest() != meta.onnx_sha256:
        raise MlopsError(f"{path}/model.onnx does not match the checksum in bundle.json: the bundle was altered")
    return meta
