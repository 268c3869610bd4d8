"""The model bundle: `model.onnx` + `bundle.json` (+ `packed.onnx` for a tabular model, + a text input's
tokenizer). Everything serving needs, and nothing else: no MLflow, no torch, no pickle."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

import mlops
from mlops.core.atomic import publishing
from mlops.core.errors import MlopsError
from mlops.core.refs import BUNDLE_FILE, bundle_json
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
    meta_file = path / BUNDLE_FILE
    if not meta_file.is_file() or not (path / "model.onnx").is_file():
        raise MlopsError(f"{path} is not a model bundle (needs model.onnx and bundle.json)")
    meta = _checked_meta(path)
    if hashlib.sha256((path / "model.onnx").read_bytes()).hexdigest() != meta.onnx_sha256:
        raise MlopsError(f"{path}/model.onnx does not match the checksum in bundle.json: the bundle was altered")
    if meta.packed is not None:
        packed = path / meta.packed.file
        if not packed.is_file() or hashlib.sha256(packed.read_bytes()).hexdigest() != meta.packed.sha256:
            raise MlopsError(f"{packed} is missing or does not match the checksum in bundle.json: the bundle was "
                             "altered")
    return meta


def _checked_meta(path: Path) -> BundleMeta:
    """The bundle's bundle.json read and checked: a file cut short, edited by hand or of another format is
    refused naming it and each key at fault (MlopsError), never with the JSON or pydantic error's traceback."""
    meta_file = path / BUNDLE_FILE
    data = bundle_json(path)
    # the format first: a later one may name its keys otherwise, and its problems would only hide this one
    found = data.get("format", FORMAT)
    if found != FORMAT:
        raise MlopsError(f"{meta_file}: format {found!r} is not one this mlops ({mlops.__version__}) reads (it "
                         f"reads {FORMAT!r}): export the model again with this mlops, or use the mlops that wrote "
                         "the bundle")
    try:
        return BundleMeta.model_validate(data)
    except ValidationError as exc:
        lines = dict.fromkeys(f"{meta_file}: {_key(e['loc'])}: {_problem(e)}" for e in exc.errors(include_url=False))
        raise MlopsError("\n".join([*lines, "(the bundle was altered: restore it, or export the model again)"])
                         ) from None


def _key(loc: tuple[Any, ...]) -> str:
    """pydantic's location as the key is written: inputs[0].name."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "(top level)"


def _problem(error: Any) -> str:
    if error["type"] == "missing":
        return "required key missing"
    if error["type"] == "model_type":
        return f"expected an object, got {_shown(error.get('input'))}"
    return f"{error['msg'].removeprefix('Value error, ')}, got {_shown(error.get('input'))}"


def _shown(value: Any) -> str:
    text = "null" if value is None else json.dumps(value) if isinstance(value, (str, bool)) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def bundle_files(meta: BundleMeta) -> list[str]:
    """Every file of the bundle, by name: what travels with it into an image or a Spark job."""
    return ["model.onnx", "bundle.json", *([meta.packed.file] if meta.packed else []),
            *(i.text.tokenizer for i in meta.inputs if i.text is not None)]
