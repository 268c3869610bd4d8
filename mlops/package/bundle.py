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
from mlops.data.media import ImageSpec, TextSpec
from mlops.data.schema import DataSchema
from mlops.recipe.monitor import LogLimitsConfig, PayloadsConfig
from mlops.recipe.schema import CategoriesConfig

FORMAT = "mlops-bundle/1"


class BundleInput(BaseModel):
    name: str
    kind: str  # numeric | categorical | image | text
    dtype: str  # what the graph takes: float32 | string | uint8 (pixels [N,H,W,C]) | int64 (token ids [N,L])
    nullable: bool = True  # missing values are imputed inside the graph (scalar columns only)
    image: ImageSpec | None = None  # how an image becomes the graph's pixels (mlops.data.media)
    text: TextSpec | None = None  # how a text becomes the graph's token ids (mlops.data.media)

    @property
    def scalar(self) -> bool:
        return self.kind in ("numeric", "categorical")


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
    payloads: PayloadsConfig = PayloadsConfig()  # what the prediction log keeps of image and text inputs
    log_limits: LogLimitsConfig = LogLimitsConfig()  # how large the server's prediction log may grow
    # how categories are read (whitespace) and what an unseen one gets (data.categories). None: a bundle written
    # before the policies, served as then: categories as sent, an unseen one encoded as missing, silently
    categories: CategoriesConfig | None = None


def write_bundle(dest: Path, model_bytes: bytes, meta: dict[str, Any],
                 assets: dict[str, str] | None = None) -> BundleMeta:
    """Write atomically: a crash leaves either the old bundle or the new one, never half of one. `assets` are
    text files the inputs' preprocessing reads (a tokenizer's JSON), by their name in the bundle."""
    full = BundleMeta.model_validate(meta | {"onnx_sha256": hashlib.sha256(model_bytes).hexdigest()})
    with publishing(dest) as tmp:
        (tmp / "model.onnx").write_bytes(model_bytes)
        (tmp / "bundle.json").write_text(full.model_dump_json(indent=2))
        for name, text in (assets or {}).items():
            (tmp / name).write_text(text)
    return full


def read_bundle(path: Path) -> BundleMeta:
    meta_file = path / "bundle.json"
    if not meta_file.is_file() or not (path / "model.onnx").is_file():
        raise MlopsError(f"{path} is not a model bundle (needs model.onnx and bundle.json)")
    meta = BundleMeta.model_validate(json.loads(meta_file.read_text()))
    if hashlib.sha256((path / "model.onnx").read_bytes()).hexdigest() != meta.onnx_sha256:
        raise MlopsError(f"{path}/model.onnx does not match the checksum in bundle.json: the bundle was altered")
    return meta
