"""The model bundle: `model.onnx` + `bundle.json` (+ `packed.onnx` for a tabular model, + a text input's
tokenizer). Everything serving needs, and nothing else: no MLflow, no torch, no pickle."""

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
PACKED_FILE = "packed.onnx"


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


class PackedGraph(BaseModel):
    """model.onnx with its numeric columns as one [N, K] input (mlops.package.graph.packed_graph): what the
    bundle's Predictor runs. Same weights, same answers (its parity is checked at export like model.onnx's)."""

    file: str = PACKED_FILE
    sha256: str
    input: str  # the packed input's name
    columns: list[str]  # its columns, in order


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
    packed: PackedGraph | None = None  # None: a model with images or text, or a bundle from before packing


def write_bundle(dest: Path, model_bytes: bytes, meta: dict[str, Any],
                 assets: dict[str, str] | None = None, packed: tuple[bytes, str, list[str]] | None = None
                 ) -> BundleMeta:
    """Write atomically: a crash leaves either the old bundle or the new one, never half of one. `assets` are
    text files the inputs' preprocessing reads (a tokenizer's JSON), by their name in the bundle. `packed`:
    packed.onnx's bytes, its packed input's name and columns."""
    # what is written is described: meta read from another bundle never keeps a packed.onnx not written here
    extra: dict[str, Any] = {"onnx_sha256": hashlib.sha256(model_bytes).hexdigest(), "packed": None}
    if packed is not None:
        extra["packed"] = {"sha256": hashlib.sha256(packed[0]).hexdigest(), "input": packed[1], "columns": packed[2]}
    full = BundleMeta.model_validate(meta | extra)
    with publishing(dest) as tmp:
        (tmp / "model.onnx").write_bytes(model_bytes)
        if packed is not None:
            (tmp / PACKED_FILE).write_bytes(packed[0])
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
    if meta.packed is not None:
        packed = path / meta.packed.file
        if not packed.is_file() or hashlib.sha256(packed.read_bytes()).hexdigest() != meta.packed.sha256:
            raise MlopsError(f"{packed} is missing or does not match the checksum in bundle.json: the bundle was "
                             "altered")
    return meta


def bundle_files(meta: BundleMeta) -> list[str]:
    """Every file of the bundle, by name: what travels with it into an image or a Spark job."""
    return ["model.onnx", "bundle.json", *([meta.packed.file] if meta.packed else []),
            *(i.text.tokenizer for i in meta.inputs if i.text is not None)]
